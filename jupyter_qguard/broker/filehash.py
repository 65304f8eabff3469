"""Hashes of the workspace files a job depends on.

A notebook is hashed by the sources of its code cells, in order, not by its bytes: saving
outputs, execution counts, metadata or an autosave must not void an approval, while an edited,
inserted, removed or reordered code cell must (DESIGN.md, "The job").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from .jobs import canonical_json


class WorkspacePathError(ValueError):
    """A path that is absolute, climbs out of the workspace or cannot be read."""


def resolve_in_workspace(root: str | os.PathLike[str], rel: str) -> Path:
    """Resolve a workspace-relative API path, refusing anything outside the root."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or rel.strip() == "":
        raise WorkspacePathError(f"{rel!r}: must be a path inside the workspace")
    root_path = Path(root).resolve()
    path = (root_path / pure).resolve()
    if path != root_path and root_path not in path.parents:
        raise WorkspacePathError(f"{rel!r}: resolves outside the workspace")
    return path


def notebook_code_hash(data: bytes) -> str:
    nb = json.loads(data)
    sources = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        sources.append("".join(src) if isinstance(src, list) else str(src))
    return hashlib.sha256(canonical_json(sources)).hexdigest()


def file_hash(path: Path) -> str:
    """The hash bound into an approval: code-cell hash for .ipynb, SHA-256 of bytes otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WorkspacePathError(f"{path.name}: cannot be read ({exc.strerror})") from None
    if path.suffix == ".ipynb":
        try:
            return notebook_code_hash(data)
        except (ValueError, AttributeError, TypeError):
            # Not valid notebook JSON: bind the bytes, so any edit still voids the approval.
            pass
    return hashlib.sha256(data).hexdigest()
