"""Secret scan of the workspace with detect-secrets.

Agent kernels read the whole workspace, so a credential a person left in a notebook or a file
there is one `open()` away from the agent. The server scans the workspace when an agent kernel
starts (a finding blocks the start unless a setting makes it a warning) and scans each file that
changes.

What is scanned:
- Text files, line by line, with detect-secrets' plugins (all those `detect-secrets scan` uses
  but IPPublicDetector) and its default heuristic filters but `is_swagger_file` (it drops every
  file whose path contains "swagger": a blind spot, not a heuristic about the secret).
- Notebooks (`.ipynb`) by content, not as raw JSON: JSON escaping (`\\n`, `\\"`, `\\u...`) both
  hides secrets from the plugins' regexes and makes line numbers meaningless. Each cell's source
  (code, markdown and raw cells), each output's text (stream, error traceback, and the textual
  MIME types of results: text/*, JSON, SVG; not base64 images, not JavaScript), cell metadata
  and notebook metadata. Outputs are scanned on purpose: an agent that printed `os.environ` or a
  token left it in the notebook, and the next kernel reads it there just as well. A notebook that
  is not valid JSON (for instance half-written) is scanned as plain text.
- Not scanned, and reported in `ScanReport.skipped` with a reason: binary files (a NUL byte in
  the first 8 KiB, or an extension detect-secrets treats as binary), files over `max_bytes`,
  lock files (their hashes are all high-entropy strings), symlinks and paths through one (never
  followed), special files, unreadable files. Notebook cell attachments (base64 images) are not
  scanned.
- Every read goes through `jupyter_qguard.workspace_io`: no link is followed on any component
  (a folder swapped for a link to `~/.aws` is refused, not read), only regular files are opened
  (O_NONBLOCK, fstat first: a FIFO cannot hang the scan), within `max_bytes`. The walk lists at
  most `max_entries` entries and enters at most MAX_DEPTH levels; beyond, the report is
  `truncated`.

Nothing here logs, and no secret value leaves this module: a `Finding` carries the location, the
detect-secrets type and a keyed fingerprint, never the value or the text of its line. An error
while scanning a file is recorded as the bare exception type (SCAN_ERROR), never its message.

Fingerprints: detect-secrets' own `hashed_secret` is an unkeyed SHA-1 of the value, so anyone who
sees it can confirm a guess of a low-entropy secret (a "Secret Keyword" such as a password)
offline. A finding's `fingerprint` is instead the first 12 hex digits of HMAC-SHA-256 under a key
that never leaves the server process: random per process unless the server installs a persistent
one with `set_fingerprint_key` (then fingerprints are stable across restarts, e.g. to acknowledge
a known finding). It tells "the same secret as before / as in that other file" and nothing else.

Speed: detect-secrets runs every plugin on every line through its dependency injection, about
0.4 ms a line (a 5 MB notebook of code: a minute). Text is scanned in memory, never through temp
files, and the plugins' own regexes first run over the whole text to find the few lines where
any of them can match (_candidate_lines); only those lines go through detect-secrets' line
pipeline (_scan_lines, its `_process_line_based_plugins` loop restricted to them). The result is
the same, line for line; the tests compare the two.

Thread safety: detect-secrets keeps its settings in a process-wide singleton, so every scan runs
under one module lock (a workspace scan holds it for its whole walk). Scans are CPU-bound and
blocking: call them from a worker thread, not the event loop.

detect-secrets has no public API to scan text held in memory (`scan_line` turns on eager,
unquoted high-entropy matching meant for ad-hoc strings and changes the global filter settings),
so this module uses detect_secrets.core.scan's `_scan_line` and `_is_filtered_out`: pin the
dependency to 1.5.x.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import warnings
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

try:  # the parse tree of a regex, for _required_literal; CPython 3.11+
    from re import _constants as _re_constants
    from re import _parser as _re_parser

    _REPEATS = (
        _re_constants.MAX_REPEAT,
        _re_constants.MIN_REPEAT,
        _re_constants.POSSESSIVE_REPEAT,
    )
except (ImportError, AttributeError):
    _re_parser = None

# Importing detect-secrets turns on logging.captureWarnings for the whole process (its logger
# module does so at import); the server's warnings are not ours to reroute, so undo it.
_showwarning = warnings.showwarning

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class  # noqa: E402
from detect_secrets.core.scan import _is_filtered_out, _scan_line  # noqa: E402
from detect_secrets.filters.heuristic import IGNORED_FILE_EXTENSIONS, is_lock_file  # noqa: E402
from detect_secrets.plugins.base import RegexBasedDetector  # noqa: E402
from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin  # noqa: E402
from detect_secrets.plugins.keyword import (  # noqa: E402
    DENYLIST,
    DENYLIST_REGEX,
    QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP,
    REGEX_BY_FILETYPE,
    KeywordDetector,
)
from detect_secrets.settings import get_plugins, transient_settings  # noqa: E402
from detect_secrets.util.code_snippet import get_code_snippet  # noqa: E402

if warnings.showwarning is not _showwarning:
    logging.captureWarnings(False)

from .. import workspace_io as wio  # noqa: E402
from .watcher import DEFAULT_IGNORE as WATCHER_DEFAULT_IGNORE  # noqa: E402

# Bytecode and git's internal state: the change feed shows them (a person's tools run them),
# but a workspace scan never walks them, whatever `ignore` says (the server passes the
# watcher's patterns): no text a person wrote is there, and a repository's objects would only
# use up `max_files` (then the scan is cut short and, in block mode, the kernel refused).
NOT_SCANNED: tuple[str, ...] = (
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    ".git/*",
    "*/.git/*",
)
# The watcher's defaults (editor scratch state), with its matching rules (_Ignore).
DEFAULT_IGNORE: tuple[str, ...] = (*WATCHER_DEFAULT_IGNORE, *NOT_SCANNED)
# Folders deeper than this are not entered (the report is then truncated).
MAX_DEPTH = 64

FINGERPRINT_HEX = 12

# Skip reasons (SkippedFile.reason): stable strings the UI and the tests can rely on.
BINARY = "binary"
TOO_LARGE = "too-large"
LOCK_FILE = "lock-file"
SYMLINK = "symlink"
OUTSIDE = "outside-workspace"
NOT_REGULAR = "not-regular"
MISSING = "missing"
UNREADABLE = "unreadable"
SCAN_ERROR = "scan-error"

# detect-secrets' default filters (Settings.clear) less is_swagger_file (see the module docstring)
# and the file-level ones: is_invalid_file checks the *name* against the current directory, which
# means nothing for text scanned in memory; lock files and binary extensions are handled here so
# they can be reported as skipped.
_LINE_FILTERS = (
    "detect_secrets.filters.allowlist.is_line_allowlisted",
    "detect_secrets.filters.heuristic.is_sequential_string",
    "detect_secrets.filters.heuristic.is_potential_uuid",
    "detect_secrets.filters.heuristic.is_likely_id_string",
    "detect_secrets.filters.heuristic.is_templated_secret",
    "detect_secrets.filters.heuristic.is_prefixed_with_dollar_sign",
    "detect_secrets.filters.heuristic.is_indirect_reference",
    "detect_secrets.filters.heuristic.is_not_alphanumeric_string",
)

# A public IP address is no credential, and the default filter is_not_alphanumeric_string drops
# every value this plugin finds anyway (an address has no letter): it would only cost time.
_EXCLUDED_PLUGINS = frozenset({"IPPublicDetector"})

_BINARY_SNIFF = 8192
# Colour codes in tracebacks and stream output: removed so that a secret printed in colour is
# still one word. Removing them never joins or splits lines.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
_NEWLINE = re.compile(r"\r\n|\r|\n")
# Output MIME types that carry text; the rest (image/png, application/pdf...) is base64 of bytes.
# JavaScript is left out, and <script> elements are cut out of HTML: plotting libraries embed
# whole minified bundles there, full of quoted hashes the high-entropy plugins flag (40 bundles
# of this venv, 7 MB: 205 findings, all webpack chunk hashes and identifiers). It is library
# code, not something a kernel printed.
_TEXT_MIME = re.compile(r"^(text/(?!javascript).*|application/(.*[+/])?(json|xml)|image/svg\+xml)$")
_SCRIPT = re.compile(r"<script\b.*?</script\s*>", re.IGNORECASE | re.DOTALL)
# detect-secrets picks the keyword rules by extension, and unquoted `KEY=value` is only caught
# with the config rules. Dotenv files are the classic place for exactly that.
_DOTENV = re.compile(r"^(\.env(\..*)?|.*\.env|\.envrc)$")

_LOCK = threading.RLock()
_depth = 0
_triggers: list[_Trigger] | None = None
_fingerprint_key = secrets.token_bytes(32)


def set_fingerprint_key(key: bytes) -> None:
    """Key the fingerprints with `key` (at least 16 bytes, kept secret by the server, e.g. in
    its state dir) instead of the per-process random key, so they stay stable across restarts."""
    global _fingerprint_key
    if len(key) < 16:
        raise ValueError("fingerprint key must be at least 16 bytes")
    with _LOCK:
        _fingerprint_key = bytes(key)


def _fingerprint(value: str) -> str:
    digest = hmac.new(_fingerprint_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return digest.hexdigest()[:FINGERPRINT_HEX]


@dataclass(frozen=True)
class Finding:
    """One potential secret. Never holds the value, nor the text of its line."""

    path: str  # relative to the workspace root, posix separators
    line: int  # 1-based, within the file, or within the cell's source/output/metadata text
    kind: str  # detect-secrets' secret type, e.g. "AWS Access Key"
    fingerprint: str  # keyed HMAC of the value, see the module docstring
    cell: int | None = None  # notebook cell index, 0-based; None for plain files
    cell_id: str | None = None  # the cell's id when the notebook has ids (nbformat >= 4.5)
    # Where in a notebook: "source", "output" (see `output`) or "metadata" (of the cell, or of
    # the notebook when `cell` is None); None for plain files and unparsable notebooks.
    part: str | None = None
    output: int | None = None  # index into the cell's outputs when part == "output"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """A sentence for a person: "demo.ipynb, cell 3 (id 7e25f8c3...), line 2: AWS Access
        Key". Cell numbers are the same 0-based indices as `cell`."""
        where = [self.path]
        if self.cell is not None:
            cell = f"cell {self.cell}"
            if self.cell_id:
                short = self.cell_id if len(self.cell_id) <= 12 else self.cell_id[:8] + "..."
                cell += f" (id {short})"
            where.append(cell)
            if self.part == "output":
                where.append(f"output {self.output}")
            elif self.part == "metadata":
                where.append("metadata")
        elif self.part == "metadata":
            where.append("notebook metadata")
        where.append(f"line {self.line}")
        return f"{', '.join(where)}: {self.kind}"


@dataclass(frozen=True)
class SkippedFile:
    """A file (or directory) not scanned, and why: `reason` is one of the module's constants
    (BINARY, TOO_LARGE, ...), `detail` a short explanation without file content."""

    path: str
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScanReport:
    """Result of `scan_file` (one path) or `scan_workspace`. `truncated` is true when the walk
    stopped at `max_files`: the workspace was then not fully checked."""

    findings: list[Finding] = field(default_factory=list)
    files_scanned: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    seconds: float = 0.0
    truncated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.as_dict() for f in self.findings],
            "files_scanned": self.files_scanned,
            "skipped": [s.as_dict() for s in self.skipped],
            "seconds": self.seconds,
            "truncated": self.truncated,
        }


@contextmanager
def _engine() -> Iterator[None]:
    """detect-secrets configured for this module, under the module lock. Re-entrant, so a
    workspace scan configures it once for all its files (entering costs a cache bust)."""
    global _depth, _triggers
    with _LOCK:
        if _depth:
            _depth += 1
            try:
                yield
            finally:
                _depth -= 1
            return
        plugins = [
            {"name": cls.__name__}
            for cls in get_mapping_from_secret_type_to_class().values()
            if cls.__name__ not in _EXCLUDED_PLUGINS
        ]
        config = {"plugins_used": plugins, "filters_used": [{"path": p} for p in _LINE_FILTERS]}
        with transient_settings(config) as settings:
            # Settings re-adds its DEFAULT_FILTERS; the file-level ones are handled here. Not
            # enabling is_ignored_due_to_verification_policies also keeps plugins from verifying
            # secrets over the network.
            settings.disable_filters(
                "detect_secrets.filters.common.is_invalid_file",
                "detect_secrets.filters.heuristic.is_non_text_file",
            )
            _triggers = _build_triggers(get_plugins())
            _depth = 1
            try:
                yield
            finally:
                _depth = 0


def _lines(text: str) -> list[str]:
    # Universal newlines, as detect-secrets reads files; not str.splitlines, which also splits
    # on form feeds and U+2028 and would disagree with an editor's line numbers. Stripped as
    # detect-secrets strips each line before its plugins see it.
    return [line.rstrip() for line in _NEWLINE.split(text)]


@dataclass(frozen=True)
class _Trigger:
    pattern: re.Pattern[str]
    # For the high-entropy plugins: a quoted string counts only above the plugin's limit, the
    # test its analyze_line applies before any filter.
    entropy: HighEntropyStringsPlugin | None = None
    # When set, `pattern` is the plugin's own regex, run on each line alone that the gate (a
    # case-sensitive regex of lower-case words) matches once folded (_fold), instead of once
    # over the whole text. See _gate.
    gate: re.Pattern[str] | None = None
    # Characters every match contains (see _required_literal): when the text (folded for a
    # case-insensitive regex) lacks them, the regex need not run.
    literal: str = ""
    folded: bool = False


# The keyword groups of build_assignment_regex (Cloudant, IBM Cloud IAM, IBM COS HMAC, SoftLayer)
# and of the AWS secret-key regex: each is its own gate where it is mandatory.
_ASSIGNMENT_GROUPS = (
    "(?:key|pwd|pw|password|pass|token)",
    "(?:key|pwd|password|pass|token)",
    "(?:secret[-_]?(?:access)?[-_]?key)",
)
_LOWER_WORDS = re.compile(r"[a-z_?ñ|()\[\]:\-]+")


def _gate(plugin: Any, pattern: re.Pattern[str]) -> re.Pattern[str] | None:
    """A regex of words that every match of `pattern` contains, when that can be read off its
    source; None otherwise. These are the case-insensitive regexes that start with an
    alternation of words: Python's re has no literal to skip ahead to and tries them at every
    offset (about 0.3 s per MB each, 90% of the scan time without gates)."""
    if isinstance(plugin, KeywordDetector):
        # Each of the keyword plugin's regexes contains DENYLIST_REGEX, the DENYLIST words.
        if DENYLIST_REGEX in pattern.pattern and all(_LOWER_WORDS.fullmatch(w) for w in DENYLIST):
            return re.compile("|".join(DENYLIST))
        return None
    for group in _ASSIGNMENT_GROUPS:
        at = pattern.pattern.find(group)
        # Only a group that is neither a branch of an alternation nor optional.
        before = pattern.pattern[at - 1 : at] if at > 0 else ""
        after = pattern.pattern[at + len(group) : at + len(group) + 1]
        if at >= 0 and before != "|" and after not in ("?", "*", "{", "|"):
            return re.compile(group)
    return None


def _fold(text: str) -> str:
    """Lower-case `text` the way re.IGNORECASE compares, one character for one, so offsets and
    line numbers carry over: IGNORECASE also equates "ı" and "İ" with "i", "ſ" with "s" and
    "K" (Kelvin) with "k"; lower() maps the last by itself, and only "İ" to two characters."""
    if "\u0130" in text:
        text = text.replace("\u0130", "i")
    return text.lower().replace("\u0131", "i").replace("\u017f", "s")


def _required_literal(pattern: re.Pattern[str]) -> str:
    """The longest run of characters that every match of `pattern` contains, read off its
    parse tree ("" when none is found). The regexes without a literal prefix (Artifactory's
    `(?:\\s|=|:|"|^)AKC...`, Mailchimp's `[0-9a-z]{32}-us...`, the case-insensitive URLs) are
    tried at every offset by re: 0.1 to 0.2 s per MB each; `in` skips them for most texts."""
    if _re_parser is None:
        return ""
    try:
        tree = _re_parser.parse(pattern.pattern, pattern.flags)
    except Exception:  # a parser of another Python version: no literal, only slower
        return ""
    runs: list[str] = []

    def walk(items: Any) -> None:
        run: list[str] = []
        for op, arg in items:
            if op == _re_constants.LITERAL:
                run.append(chr(arg))
                continue
            runs.append("".join(run))
            run = []
            # A group is matched whole (unless it sets its own flags); a repeat at least once.
            if op == _re_constants.SUBPATTERN and not arg[1] and not arg[2]:
                walk(arg[3])
            elif op in _REPEATS and arg[0] >= 1:
                walk(arg[2])
        runs.append("".join(run))

    walk(tree)
    literal = max(runs, key=len, default="")
    if pattern.flags & re.IGNORECASE:
        # _fold is exact for ASCII letters only.
        return literal.lower() if literal.isascii() else ""
    return literal


def _build_triggers(plugins: Sequence[Any]) -> list[_Trigger] | None:
    """Every regex any plugin matches a line with. Ungated ones are recompiled MULTILINE so
    that `^`/`$` still mean a line's ends when run over a whole text. None when a plugin is of
    an unknown shape: then every line goes through the full pipeline."""
    triggers = []
    for plugin in plugins:
        entropy = None
        if isinstance(plugin, HighEntropyStringsPlugin):
            patterns = [plugin.regex]
            entropy = plugin
        elif isinstance(plugin, KeywordDetector):
            # Every file type's rules, a superset of the ones analyze_line picks.
            tables = [QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP, *REGEX_BY_FILETYPE.values()]
            patterns = list(dict.fromkeys(p for table in tables for p in table))
        elif isinstance(plugin, RegexBasedDetector):
            patterns = list(plugin.denylist)
        else:
            return None
        for p in patterns:
            gate = _gate(plugin, p)
            if gate is not None:
                triggers.append(_Trigger(p, gate=gate))
            else:
                multiline = re.compile(p.pattern, p.flags | re.MULTILINE)
                literal = "" if entropy else _required_literal(p)
                folded = bool(p.flags & re.IGNORECASE)
                triggers.append(_Trigger(multiline, entropy, literal=literal, folded=folded))
    return triggers


def _candidate_lines(lines: list[str]) -> Iterable[int]:
    """Line numbers (1-based) where a plugin could report something. The per-line pipeline (26
    plugins through detect-secrets' dependency injection, about 0.4 ms a line) then runs on
    those lines only.

    Ungated triggers run once over the joined text, and every line a match touches is a
    candidate. Why that loses nothing: a regex that matches line L on its own also matches at
    the same offset in the joined text (line starts keep `^` via MULTILINE; a look-around at a
    line's end sees a newline, which none of the plugins' look-arounds takes for part of a
    secret), unless an earlier match already covers that offset, which makes L a candidate too.
    Matches in the joined text may span lines (`\\s`, `[^\\v...]`): that only adds candidates.
    Gated triggers run on single lines, exactly as the plugins do, on the lines their gate
    finds in the folded text; the gate's words are in every match, and folding makes the
    case-sensitive gate see what the case-insensitive regex sees. tests/watch/test_secrets.py
    checks the result against detect-secrets' own loop.
    """
    if _triggers is None:
        return range(1, len(lines) + 1)
    text = "\n".join(lines)
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def touched(match: re.Match[str]) -> range:
        first = bisect_right(starts, match.start())
        return range(first, bisect_right(starts, max(match.start(), match.end() - 1)) + 1)

    marked: set[int] = set()
    folded: str | None = None
    gated_lines: dict[re.Pattern[str], list[int]] = {}
    for trigger in _triggers:
        if trigger.gate is not None:
            numbers = gated_lines.get(trigger.gate)
            if numbers is None:
                if folded is None:
                    folded = _fold(text)
                # A gate's words hold no newline: a match is on the line it starts on.
                numbers = sorted(
                    {bisect_right(starts, m.start()) for m in trigger.gate.finditer(folded)}
                )
                gated_lines[trigger.gate] = numbers
            for n in numbers:
                if n not in marked and trigger.pattern.search(lines[n - 1]):
                    marked.add(n)
            continue
        if trigger.literal:
            if trigger.folded and folded is None:
                folded = _fold(text)
            if trigger.literal not in (folded if trigger.folded else text):
                continue
        plugin = trigger.entropy
        for match in trigger.pattern.finditer(text):
            if plugin is not None:
                # Shannon entropy is at most log2(len): a string shorter than 2**limit cannot
                # pass (at exactly 2**limit, rounding could), and most quoted strings in code
                # are that short.
                value = match.group(2)
                if len(value) < 2**plugin.entropy_limit or not (
                    plugin.calculate_shannon_entropy(value) > plugin.entropy_limit
                ):
                    continue
            marked.update(touched(match))
    return sorted(marked)


def _scan_lines(lines: list[str], numbers: Iterable[int], filename: str) -> Iterator[Any]:
    """detect_secrets.core.scan._process_line_based_plugins, line for line, on `numbers` only
    (it always walks every line). Yields detect-secrets' PotentialSecret objects."""
    plugins = get_plugins()
    for number in numbers:
        line = lines[number - 1]
        context = get_code_snippet(lines=lines, line_number=number)
        if _is_filtered_out(
            required_filter_parameters=["line"], filename=filename, line=line, context=context
        ):
            continue
        for plugin in plugins:
            for secret in _scan_line(
                plugin=plugin, filename=filename, line=line, line_number=number, context=context
            ):
                if not _is_filtered_out(
                    required_filter_parameters=["context"],
                    filename=secret.filename,
                    secret=secret.secret_value,
                    plugin=plugin,
                    line=line,
                    context=context,
                ):
                    yield secret


def _scan_text(text: str, filename: str) -> list[tuple[int, str, str]]:
    """(line, kind, fingerprint) of each potential secret in `text`. `filename` only picks
    detect-secrets' rules by extension."""
    if not text.strip():
        return []
    lines = _lines(text)
    found: list[tuple[int, str, str]] = []
    for secret in _scan_lines(lines, _candidate_lines(lines), filename):
        value = secret.secret_value or ""
        if secret.type == "Hex High Entropy String" and len(value) in _DIGEST_HEX_LENGTHS:
            continue
        found.append((secret.line_number, secret.type, _fingerprint(value)))
    return found


# Hex strings of exactly these lengths are identifiers and digests (uuid4().hex: qguard's job ids;
# SHA-1, SHA-256: approval digests, program and file hashes), which notebooks print all the time;
# credentials in hex (IBM Quantum's API token is 128 hex digits) have other lengths.
_DIGEST_HEX_LENGTHS = frozenset({32, 40, 64})


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(v for v in value if isinstance(v, str))
    return ""


def _output_texts(output: dict[str, Any]) -> list[str]:
    kind = output.get("output_type")
    if kind == "stream":
        return [_ANSI.sub("", _as_text(output.get("text")))]
    if kind == "error":
        traceback = output.get("traceback")
        if isinstance(traceback, list) and traceback:
            return [_ANSI.sub("", "\n".join(t for t in traceback if isinstance(t, str)))]
        return [f"{_as_text(output.get('ename'))}: {_as_text(output.get('evalue'))}"]
    data = output.get("data")
    if not isinstance(data, dict):
        return []
    texts = []
    # text/plain first: when several representations hold the same secret, its line is kept.
    for mime in sorted(data, key=lambda m: (m != "text/plain", m)):
        if not _TEXT_MIME.match(mime):
            continue
        value = data[mime]
        if isinstance(value, dict | int | float | bool) or value is None:
            texts.append(json.dumps(value, indent=1, ensure_ascii=False))
        elif mime == "text/html":
            # Newlines kept, so that line numbers after a script still hold.
            html = _as_text(value)
            texts.append(_SCRIPT.sub(lambda m: "\n" * m.group().count("\n"), html))
        else:
            texts.append(_ANSI.sub("", _as_text(value)))
    return texts


def _metadata_text(metadata: Any) -> str:
    if not isinstance(metadata, dict) or not metadata:
        return ""
    return json.dumps(metadata, indent=1, ensure_ascii=False)


def _scan_notebook(rel: str, text: str) -> list[Finding] | None:
    """Findings in a notebook by cell; None if `text` is not a v4 notebook."""
    try:
        nb = json.loads(text)
    except ValueError:
        return None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return None
    meta = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    lang_ext = (meta.get("language_info") or {}).get("file_extension")
    code_ext = lang_ext if isinstance(lang_ext, str) and re.fullmatch(r"\.\w+", lang_ext) else ".py"
    ext_by_type = {"code": code_ext, "markdown": ".md"}

    findings: list[Finding] = []
    for line, kind, fp in _scan_text(_metadata_text(meta), rel + ".json"):
        findings.append(Finding(rel, line, kind, fp, part="metadata"))
    for index, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            continue
        cell_id = cell.get("id") if isinstance(cell.get("id"), str) else None
        ext = ext_by_type.get(cell.get("cell_type"), ".txt")
        for line, kind, fp in _scan_text(_as_text(cell.get("source")), rel + ext):
            findings.append(Finding(rel, line, kind, fp, index, cell_id, "source"))
        outputs = cell.get("outputs")
        for out_index, output in enumerate(outputs if isinstance(outputs, list) else []):
            if not isinstance(output, dict):
                continue
            seen: set[tuple[str, str]] = set()
            for out_text in _output_texts(output):
                for line, kind, fp in _scan_text(out_text, rel + ".txt"):
                    if (kind, fp) not in seen:
                        seen.add((kind, fp))
                        findings.append(
                            Finding(rel, line, kind, fp, index, cell_id, "output", out_index)
                        )
        for line, kind, fp in _scan_text(_metadata_text(cell.get("metadata")), rel + ".json"):
            findings.append(Finding(rel, line, kind, fp, index, cell_id, "metadata"))
    return findings


def _text_filename(rel: str) -> str:
    name = PurePosixPath(rel).name
    return rel + ".ini" if _DOTENV.match(name) else rel


def _normalise(rel: str) -> str | None:
    parts = PurePosixPath(rel.replace(os.sep, "/")).parts
    if not parts or parts[0] == "/" or ".." in parts:
        return None
    return "/".join(p for p in parts if p != ".") or None


_SKIP_BY_CODE = {
    "symlink": (SYMLINK, "not followed"),
    "outside": (OUTSIDE, "not a path inside the workspace"),
    "not_regular": (NOT_REGULAR, ""),
    "missing": (MISSING, ""),
}


def _read(rfd: int, rel: str, max_bytes: int, report: ScanReport) -> bytes | None:
    """The file's bytes, or None after recording why it was skipped. Opened through
    workspace_io: no link followed on any component, regular files only, without blocking."""
    try:
        opened = wio.open_regular(rfd, rel, max_bytes=None)
    except wio.UnsafeWorkspacePath as exc:
        reason, detail = _SKIP_BY_CODE.get(exc.code, (UNREADABLE, ""))
        if reason == UNREADABLE:
            detail = exc.why.removeprefix("cannot be read (").removesuffix(")")
        report.skipped.append(SkippedFile(rel, reason, detail))
        return None
    try:
        size = opened.st.st_size
        if size > max_bytes:
            report.skipped.append(SkippedFile(rel, TOO_LARGE, f"{size} bytes > {max_bytes}"))
            return None
        return wio.read_opened(opened, rel, max_bytes=max_bytes)
    except wio.UnsafeWorkspacePath:  # grew past the limit while being read
        report.skipped.append(SkippedFile(rel, TOO_LARGE, f"more than {max_bytes} bytes"))
        return None
    except OSError as exc:
        report.skipped.append(SkippedFile(rel, UNREADABLE, errno.errorcode.get(exc.errno, "")))
        return None
    finally:
        os.close(opened.fd)


def _scan_one(rfd: int, rel: str, max_bytes: int, report: ScanReport) -> None:
    norm = _normalise(rel)
    if norm is None:
        report.skipped.append(SkippedFile(rel, OUTSIDE, "not a path inside the workspace"))
        return
    rel = norm
    if is_lock_file(rel):
        report.skipped.append(SkippedFile(rel, LOCK_FILE))
        return
    if os.path.splitext(rel)[1] in IGNORED_FILE_EXTENSIONS:
        report.skipped.append(SkippedFile(rel, BINARY, "file type"))
        return
    data = _read(rfd, rel, max_bytes, report)
    if data is None:
        return
    if b"\0" in data[:_BINARY_SNIFF]:
        report.skipped.append(SkippedFile(rel, BINARY, "NUL byte"))
        return
    # Replacement keeps every ASCII secret intact in a Latin-1 or broken-UTF-8 file, where
    # detect-secrets itself would skip the whole file.
    text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
    del data
    try:
        findings = _scan_notebook(rel, text) if rel.endswith(".ipynb") else None
        if findings is None:
            findings = [
                Finding(rel, line, kind, fp)
                for line, kind, fp in _scan_text(text, _text_filename(rel))
            ]
    except Exception as exc:  # a plugin or filter bug must not take the caller down
        # Only the type: a message could quote the text being scanned.
        report.skipped.append(SkippedFile(rel, SCAN_ERROR, type(exc).__name__))
        return
    report.files_scanned += 1
    report.findings.extend(dict.fromkeys(findings))  # dedupe, keeping order


def _sort_key(f: Finding) -> tuple[Any, ...]:
    cell = -1 if f.cell is None else f.cell
    part = {"source": 0, "output": 1, "metadata": 2}.get(f.part or "", 0)
    return (f.path, cell, part, f.output or 0, f.line, f.kind, f.fingerprint)


def scan_file(root: Path, rel: str, *, max_bytes: int) -> ScanReport:
    """Scan one file, `rel` relative to `root`. A symlink (or a path through one) is never
    followed: skipped as SYMLINK. Whether skipped or scanned, the answer is a ScanReport
    (files_scanned 0 or 1) so that a change event is handled like a workspace scan."""
    start = time.perf_counter()
    report = ScanReport()
    with _engine(), wio.root_fd(root) as rfd:
        _scan_one(rfd, rel, max_bytes, report)
    report.findings.sort(key=_sort_key)
    report.seconds = time.perf_counter() - start
    return report


class _Ignore:
    """The watcher's ignore rules (watcher._IgnoreRules): fnmatch patterns relative to the root.
    One with a "/" is matched against the relative path, a directory also as "dir/" (so ".git/*"
    drops the .git directory itself); one without against the name, at any depth."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self._full = _compile_fnmatch([p for p in patterns if "/" in p])
        self._base = _compile_fnmatch([p for p in patterns if "/" not in p])

    def entry(self, rel: str, name: str, is_dir: bool) -> bool:
        """Whether this entry is ignored, its parent directories having been checked."""
        if self._base is not None and self._base.match(name):
            return True
        if self._full is None:
            return False
        # A directory only as "dir/", as the watcher tries every parent of a file.
        return bool(self._full.match(rel + "/" if is_dir else rel))


def _compile_fnmatch(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _walk(root: Path, ignore: _Ignore, report: ScanReport, max_entries: int) -> Iterator[str]:
    """Relative paths of the regular files under the root, in sorted depth-first order (a
    folder's files, then its subfolders in turn). Symlinks are never followed: a target inside
    the workspace is scanned under its own path, and one outside is not the agent's to read
    (the sandbox resolves links before allowing a read)."""

    def error(rel_dir: str, exc: OSError) -> None:
        detail = errno.errorcode.get(exc.errno or 0, "")
        reason = SYMLINK if exc.errno == errno.ELOOP else UNREADABLE
        report.skipped.append(SkippedFile(rel_dir or ".", reason, detail))

    walk = wio.walk(
        root,
        max_entries=max_entries,
        max_depth=MAX_DEPTH,
        sort=True,
        enter=lambda rel, _st: not ignore.entry(rel, rel.rpartition("/")[2], True),
        on_error=error,
    )
    for rel, st in walk:
        name = rel.rpartition("/")[2]
        mode = st.st_mode
        if stat.S_ISDIR(mode) or ignore.entry(rel, name, False):
            continue
        if stat.S_ISLNK(mode):
            report.skipped.append(SkippedFile(rel, SYMLINK, "not followed"))
        elif stat.S_ISREG(mode):
            yield rel
        else:
            report.skipped.append(SkippedFile(rel, NOT_REGULAR))
    if walk.truncated:
        report.truncated = True


def scan_workspace(
    root: Path,
    *,
    ignore: Sequence[str] = DEFAULT_IGNORE,
    max_bytes: int,
    max_files: int,
    max_entries: int | None = None,
) -> ScanReport:
    """Scan every file under `root` not matched by `ignore` (the watcher's patterns and rules,
    see _Ignore) nor by NOT_SCANNED. At most `max_files` files are looked at (scanned or skipped
    for size or type), and at most `max_entries` entries listed (default: ten per file allowed,
    at least 100,000), folders at most MAX_DEPTH deep; beyond that the report is `truncated`,
    and a blocking check should treat it as not passed."""
    start = time.perf_counter()
    report = ScanReport()
    if max_entries is None:
        max_entries = max(10 * max_files, 100_000)
    seen = 0
    with _engine(), wio.root_fd(root) as rfd:
        rules = _Ignore(list(dict.fromkeys([*ignore, *NOT_SCANNED])))
        for rel in _walk(root, rules, report, max_entries):
            if seen >= max_files:
                report.truncated = True
                break
            seen += 1
            _scan_one(rfd, rel, max_bytes, report)
    report.findings.sort(key=_sort_key)
    report.seconds = time.perf_counter() - start
    return report
