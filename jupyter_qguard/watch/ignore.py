"""The watcher's ignore rules: which workspace paths the change feed leaves out."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from .toolfiles import tool_file

# Editor and Jupyter scratch state. Bytecode and `.git` are not here: they are changes a
# person's own tools act on (toolfiles.TOOL_FILES), never ignored.
DEFAULT_IGNORE: tuple[str, ...] = (
    ".ipynb_checkpoints/*",
    "*/.ipynb_checkpoints/*",
    "*.swp",
    "*~",
    ".~*",
)


class IgnoreRules:
    """fnmatch patterns relative to the root. A pattern with a "/" is matched against the
    relative path (a directory is also tried as "dir/", so ".git/*" drops the .git directory
    itself); one without is matched against every path component, as in .gitignore, so "*.swp"
    or ".~*" apply at any depth. A file under an ignored directory is ignored. A file a person's
    own tools run later (toolfiles.TOOL_FILES: bytecode, `.git`...) is never ignored; `excluded`
    prefixes (the snapshot store) always are."""

    def __init__(self, patterns: Iterable[str], excluded: Iterable[str] = ()) -> None:
        full = [p for p in patterns if "/" in p]
        base = [p for p in patterns if "/" not in p]
        self._full = _compile(full)
        self._base = _compile(base)
        self._excluded = tuple(excluded)

    def ignored(self, rel: str, is_dir: bool) -> bool:
        for prefix in self._excluded:
            if rel == prefix or rel.startswith(prefix + "/"):
                return True
        # A file a person's tool runs later is always watched (not even a configured pattern
        # such as an old "*.pyc" hides it).
        return self._matches(rel, is_dir) and tool_file(rel) is None

    def _matches(self, rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        last = len(parts) - 1
        for i, name in enumerate(parts):
            if self._base is not None and self._base.match(name):
                return True
            if self._full is None:
                continue
            prefix = "/".join(parts[: i + 1])
            if i == last and not is_dir:
                if self._full.match(prefix):
                    return True
            elif self._full.match(prefix + "/") or (i == last and self._full.match(prefix)):
                return True
        return False


def _compile(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
