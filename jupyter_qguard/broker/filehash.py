"""Hashes of the workspace files a job depends on.

A notebook is hashed by the sources of its code cells, in order, not by its bytes: saving
outputs, execution counts, metadata or an autosave must not void an approval, while an edited,
inserted, removed or reordered code cell must (DESIGN.md, "The job").

The files are the agent's: they are read through workspace_io (no link followed on any
component, regular files only, a size cap). broker/hashing.py decides where the hashing runs
(never on the database thread or the event loop); this module is what runs there, and it imports
nothing heavy, so that the hashing worker process starts quickly.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .. import workspace_io as wio


class WorkspacePathError(ValueError):
    """A path that is absolute, climbs out of the workspace or cannot be read."""


def canonical_json(value: Any) -> bytes:
    """jobs.canonical_json, here so that the hashing worker need not import jobs (and its
    jsonschema, seconds of start-up); tests/test_bound_files.py checks that the two agree."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def notebook_code_hash(data: bytes) -> str:
    return notebook_dict_code_hash(json.loads(data))


def notebook_dict_code_hash(nb: Any) -> str:
    """The code-cell hash of a notebook already parsed (or a live document's `get()`)."""
    sources = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        sources.append("".join(src) if isinstance(src, list) else str(src))
    return hashlib.sha256(canonical_json(sources)).hexdigest()


def is_notebook(rel: str) -> bool:
    return rel.endswith(".ipynb")


def hash_bytes(rel: str, data: bytes) -> str:
    """The hash bound into an approval: code-cell hash for .ipynb, SHA-256 of bytes otherwise."""
    if is_notebook(rel):
        try:
            return notebook_code_hash(data)
        except (ValueError, AttributeError, TypeError, RecursionError):
            # Not valid notebook JSON (or nested past the parser's depth): bind the bytes, so
            # any edit still voids the approval.
            pass
    return hashlib.sha256(data).hexdigest()


def file_hash(root: str | os.PathLike[str], rel: str, *, max_bytes: int) -> str:
    """`hash_bytes` of the workspace file `rel`, read whole (at most `max_bytes`) through
    workspace_io. Blocking, and a notebook's JSON is parsed holding the GIL: the broker calls
    this in its hashing worker process (broker/hashing.py), never on the event loop."""
    return hash_bytes(rel, wio.read_regular(root, rel, max_bytes=max_bytes))
