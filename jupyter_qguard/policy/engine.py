"""The policy engine: a pack of Rego modules and data.json, built once into a regopy bundle and
queried per job.

Fails closed: an error, an undefined or malformed result is a deny with a reason. A pack that
could reach outside itself (opa.runtime, http.send, net.*), read the clock or draw random
numbers is refused at load: a decision must depend on its input and the pack, nothing else.
`version` is the hash of the pack; it is part of every approval digest.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from regopy import Interpreter

ENTRYPOINT = "qguard/decision/decision"

FORBIDDEN = {
    "opa.runtime": "reads the OPA runtime environment",
    "http.send": "makes network calls",
    "net.lookup_ip_addr": "makes network calls",
    "time.now_ns": "reads the clock",
    "rand.intn": "draws random numbers",
    "uuid.rfc4122": "draws random numbers",
}
_FORBIDDEN_RE = re.compile(r"\b(" + "|".join(re.escape(f) for f in FORBIDDEN) + r")\s*\(")

OUTPUT_SCHEMA = {
    "type": "object",
    "required": ["allow", "deny", "approvals_required", "mfa_required"],
    "properties": {
        "allow": {"type": "boolean"},
        "deny": {"type": "array", "items": {"type": "string"}},
        "approvals_required": {"type": "integer", "minimum": 0, "maximum": 10},
        "mfa_required": {"type": "boolean"},
        "notes": {"type": "array", "items": {"type": "string"}},
    },
}
_OUTPUT = jsonschema.Draft202012Validator(OUTPUT_SCHEMA)


def _well_formed(result: Any) -> bool:
    """The common case of OUTPUT_SCHEMA, checked by hand (the decision's hot path)."""
    if type(result) is not dict:
        return False
    deny, notes = result.get("deny"), result.get("notes", [])
    approvals = result.get("approvals_required")
    return (
        type(result.get("allow")) is bool
        and type(result.get("mfa_required")) is bool
        and type(approvals) is int
        and 0 <= approvals <= 10
        and type(deny) is list
        and all(type(d) is str for d in deny)
        and type(notes) is list
        and all(type(n) is str for n in notes)
    )


class PolicyError(ValueError):
    """A pack that cannot be loaded; the message names the file and why."""


@dataclass
class Decision:
    allow: bool
    deny: list[str]
    approvals_required: int
    mfa_required: bool
    notes: list[str] = field(default_factory=list)
    policy_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "allow": self.allow,
            "deny": self.deny,
            "approvals_required": self.approvals_required,
            "mfa_required": self.mfa_required,
            "notes": self.notes,
            "policy_version": self.policy_version,
        }


def _code_only(source: str) -> str:
    """The source with comments removed and string literals emptied, line numbers kept."""
    out, quote, i = [], "", 0
    while i < len(source):
        ch = source[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 2
                continue
            if ch == quote:
                quote = ""
                out.append(ch)
            elif ch == "\n":
                out.append(ch)
        elif ch in ('"', "`"):
            quote = ch
            out.append(ch)
        elif ch == "#":
            while i < len(source) and source[i] != "\n":
                i += 1
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


_ORDERING_RE = re.compile(r"(?<![\w.])(max|min|sort)\s*\(")


@functools.cache
def numbers_ordered_as_text() -> bool:
    """True when the installed regopy orders numbers as text in max/min/sort (regopy 1.5.2:
    max([3, 15]) is 3). A limit computed that way would be silently wrong, so packs may not
    use them there; comparisons (<, >) are correct."""
    out = str(Interpreter().query("x := max([3, 15])"))
    return '"x":15' not in out.replace(" ", "")


def check_module(name: str, source: str) -> None:
    """Refuse modules that use builtins a decision must not depend on."""
    ordering_broken = numbers_ordered_as_text()
    for lineno, line in enumerate(_code_only(source).splitlines(), 1):
        m = _FORBIDDEN_RE.search(line)
        if m:
            raise PolicyError(
                f"{name}:{lineno} uses {m.group(1)}, which {FORBIDDEN[m.group(1)]}: a qguard "
                "policy must decide from its input and its own data only"
            )
        m = _ORDERING_RE.search(line) if ordering_broken else None
        if m:
            raise PolicyError(
                f"{name}:{lineno} uses {m.group(1)}(), which the installed regopy gets wrong for "
                f"numbers (max([3, 15]) gives 3): compare with < and > instead"
            )


def _merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = _merge(base.get(key), value)
        return out
    return extra


class PolicyEngine:
    def __init__(self, directory: str | Path, overrides: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        # Site additions merged over data.json (QGuardApp.policy_data); part of the version.
        self.overrides = overrides or {}
        self._lock = threading.Lock()
        self._load()

    def _read_pack(self) -> tuple[dict[str, str], str | None]:
        if not self.directory.is_dir():
            raise PolicyError(f"{self.directory}: no such policy directory")
        modules = {p.name: p.read_text("utf-8") for p in sorted(self.directory.glob("*.rego"))}
        if not modules:
            raise PolicyError(f"{self.directory}: no .rego files")
        data_path = self.directory / "data.json"
        data = data_path.read_text("utf-8") if data_path.is_file() else None
        if self.overrides:
            try:
                base = json.loads(data) if data is not None else {}
            except ValueError as exc:
                raise PolicyError(f"data.json: not valid JSON ({exc})") from None
            data = json.dumps(_merge(base, self.overrides), sort_keys=True)
        return modules, data

    @staticmethod
    def _version(modules: dict[str, str], data: str | None) -> str:
        h = hashlib.sha256()
        for name, source in sorted(modules.items()):
            h.update(name.encode() + b"\0" + source.encode() + b"\0")
        h.update(b"data.json\0" + (data or "").encode())
        return h.hexdigest()

    def _load(self) -> None:
        modules, data = self._read_pack()
        for name, source in modules.items():
            check_module(name, source)
        interp = Interpreter()
        try:
            for name, source in modules.items():
                interp.add_module(name, source)
            if data is not None:
                parsed = json.loads(data)
                if not isinstance(parsed, dict):
                    raise PolicyError("data.json must hold a JSON object")
                interp.add_data_json(data)
                self.data = parsed
            else:
                self.data = {}
            bundle = interp.build(None, [ENTRYPOINT])
        except PolicyError:
            raise
        except ValueError as exc:
            raise PolicyError(f"data.json: not valid JSON ({exc})") from None
        except Exception as exc:  # regopy raises RegoError with the compiler's message
            raise PolicyError(f"{self.directory}: the pack does not compile: {exc}") from None
        self._interp, self._bundle = interp, bundle
        self.version = self._version(modules, data)

    def reload_if_changed(self) -> bool:
        """Rebuild when the pack's files changed; return whether it did. A broken edit keeps
        the previous pack in force and raises PolicyError to say why."""
        modules, data = self._read_pack()
        if self._version(modules, data) == self.version:
            return False
        with self._lock:
            self._load()
        return True

    def decide(self, policy_input: dict[str, Any]) -> Decision:
        try:
            with self._lock:
                # set_input builds the term from the dict directly: half the time of parsing
                # the same input as JSON text.
                self._interp.set_input(policy_input)
                output = self._interp.query_bundle_entrypoint(self._bundle, ENTRYPOINT)
            text = str(output).strip()
            if text in ("", "undefined", "{}"):
                return self._refuse("the policy gave no decision for this job (undefined)")
            raw = json.loads(text)
        except Exception as exc:
            return self._refuse(f"the policy failed to evaluate: {exc}")
        expressions = raw.get("expressions") if isinstance(raw, dict) else None
        if not expressions:
            return self._refuse("the policy gave no decision for this job (undefined)")
        result = expressions[0]
        if not _well_formed(result):
            # jsonschema only on the rare malformed output: it names what is wrong, but costs
            # an eighth of a whole decision.
            error = next(iter(_OUTPUT.iter_errors(result)), None)
            why = error.message if error is not None else "unexpected shape"
            return self._refuse(f"the policy's decision is malformed: {why}")
        deny = sorted(result["deny"])
        allow = result["allow"] and not deny
        if not allow and not deny:
            deny = ["the policy did not allow this job"]
        return Decision(
            allow=allow,
            deny=deny,
            approvals_required=result["approvals_required"],
            mfa_required=result["mfa_required"],
            notes=sorted(result.get("notes", [])),
            policy_version=self.version,
        )

    def _refuse(self, reason: str) -> Decision:
        return Decision(False, [reason], 0, False, [], self.version)
