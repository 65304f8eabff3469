"""What changed in a workspace file, as a JSON-serialisable summary a browser shows as plain text.

`diff(path, before, after)` returns one of three kinds:

* `notebook`: cell by cell. Added, removed and modified cells, with the source change as unified
  diff lines. Outputs are described only by type, MIME types, count and byte sizes: their content
  (HTML, JavaScript, images, even plain text) never enters the result, so showing a diff can never
  run or leak what a kernel rendered. Notebook and cell metadata: the names of the keys changed.
* `text`: a unified diff (difflib), capped in lines and bytes (`truncated: True` when cut).
* `binary`: sizes and SHA-256 before and after (also for text too large to diff, or a notebook
  too large or with too many cells to align; `reason`).
* `entry` (`entry_diff`): a change where a link, FIFO, socket or device was or is: what was
  there and what is (a link's text), never anything read through it.

Inputs are snapshots from the store (bytes the watcher read through workspace_io, capped),
never a workspace path: nothing here opens a file.

Every result has `path`, `kind`, `status` (created/deleted/modified/unchanged), `before` and
`after` (`{"size", "sha256"}` or None) and `truncated`. Strings in it are file content or names
taken verbatim (well-formed Unicode: undecodable files are `binary`, lone surrogates become "?"):
the UI must insert them as text (textContent), never as HTML. `path` is cleaned the same way: key
changes by the watcher's `Change.path`, not by this.

Cell alignment: nbdime's `diff_notebooks` is quadratic-plus in cells (measured here: 500 cells,
three edits, 43 s; 40 changed cells 1.6 s), too slow for a change feed. Cells are therefore first
anchored by content (type and source) with difflib, which finds every unchanged cell in about
linear time; nbdime then pairs cells only inside the small runs that differ (at most
NBDIME_MAX_PAIRS cell pairs, about 80 ms); larger runs are paired by cell id where both sides
have ids, else by position.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from nbdime import diff_notebooks

MAX_LINES = 2000
MAX_BYTES = 256 * 1024
# A single line longer than this (minified JS, a data URI) is cut: it would eat the budget.
MAX_LINE_CHARS = 2000
# Above this, text is summarised like binary: difflib's worst case is quadratic.
MAX_INPUT_BYTES = 4 * 1024 * 1024
# nbdime aligns a differing run of a x b cells only while a * b stays under this.
NBDIME_MAX_PAIRS = 100
# Above these, a notebook is summarised like binary: parsing and aligning must stay bounded.
MAX_NOTEBOOK_BYTES = 32 * 1024 * 1024
MAX_CELLS = 10_000
_MAX_OUTPUT_ITEMS = 50
_MAX_NAME_CHARS = 100

_EMPTY_NOTEBOOK: dict[str, Any] = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


class _Budget:
    """Lines and bytes left for diff text across the whole result."""

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.lines = max_lines
        self.bytes = max_bytes
        self.truncated = False

    def take(self, lines: Iterable[str]) -> tuple[list[str], bool]:
        out: list[str] = []
        cut = False
        for line in lines:
            line = _clean(line)
            if len(line) > MAX_LINE_CHARS:
                line = line[:MAX_LINE_CHARS] + " [line cut]"
                cut = True
            cost = len(line.encode("utf-8")) + 1
            if self.lines <= 0 or cost > self.bytes:
                cut = True
                break
            out.append(line)
            self.lines -= 1
            self.bytes -= cost
        self.truncated = self.truncated or cut
        return out, cut


def diff(
    path: str,
    before: bytes | None,
    after: bytes | None,
    *,
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
) -> dict[str, Any]:
    """Describe the change of `path` from `before` to `after` (None: the file did not exist)."""
    shown_path = _clean(path)
    result: dict[str, Any] = {
        "path": shown_path,
        "kind": "binary",
        "status": _status(before, after),
        "before": _blob(before),
        "after": _blob(after),
        "truncated": False,
    }
    budget = _Budget(max_lines, max_bytes)
    if path.endswith(".ipynb"):
        if any(d is not None and len(d) > MAX_NOTEBOOK_BYTES for d in (before, after)):
            result["reason"] = "too_large"
            return result
        nb_before = _parse_notebook(before)
        nb_after = _parse_notebook(after)
        if nb_before is not None and nb_after is not None:
            if max(len(nb_before["cells"]), len(nb_after["cells"])) > MAX_CELLS:
                result["reason"] = "too_large"
                return result
            result.update(kind="notebook", **_notebook_diff(nb_before, nb_after, budget))
            result["truncated"] = budget.truncated
            return result
        # Not a notebook we can read (invalid JSON, half-written): show it as text.
    texts = [_as_text(data) for data in (before, after)]
    if any(text is False for text in texts):
        too_large = any(d is not None and len(d) > MAX_INPUT_BYTES for d in (before, after))
        result["reason"] = "too_large" if too_large else "binary"
        return result
    a = (texts[0] or "").splitlines()
    b = (texts[1] or "").splitlines()
    lines = list(
        difflib.unified_diff(
            a,
            b,
            fromfile="/dev/null" if before is None else f"a/{shown_path}",
            tofile="/dev/null" if after is None else f"b/{shown_path}",
            lineterm="",
        )
    )
    added = sum(1 for line in lines[2:] if line.startswith("+"))
    removed = sum(1 for line in lines[2:] if line.startswith("-"))
    shown, _ = budget.take(lines)
    result.update(kind="text", lines=shown, added=added, removed=removed)
    result["truncated"] = budget.truncated
    return result


def entry_diff(change: dict[str, Any]) -> dict[str, Any]:
    """A change (the tracker's record of it) where a link, FIFO, socket or device was or is:
    what was at the path before and after, `{"entry_type", "link_target"}` for those and
    `{"entry_type": "file", "size", "sha256"}` for a file; nothing is read."""

    def side(entry: str | None, target: str | None, sha: str | None, size: int | None) -> Any:
        if entry is None:
            return None
        if entry == "file":
            return {"entry_type": "file", "size": size, "sha256": sha}
        shown = None if target is None else _name_long(target)
        return {"entry_type": _name(entry), "link_target": shown}

    before = side(
        change.get("before_entry_type"),
        change.get("before_link_target"),
        change.get("before_sha"),
        change.get("before_size"),
    )
    after = side(
        change.get("entry_type"),
        change.get("link_target"),
        change.get("after_sha"),
        change.get("size"),
    )
    status = "created" if before is None else "deleted" if after is None else "modified"
    return {
        "path": _clean(str(change.get("path", ""))),
        "kind": "entry",
        "status": status,
        "before": before,
        "after": after,
        "truncated": False,
    }


# -- helpers shared by all kinds ------------------------------------------------------------


def _status(before: bytes | None, after: bytes | None) -> str:
    if before is None and after is None:
        return "unchanged"
    if before is None:
        return "created"
    if after is None:
        return "deleted"
    return "unchanged" if before == after else "modified"


def _blob(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _as_text(data: bytes | None) -> str | None | bool:
    """The text, None for an absent file, False for binary (or too large to diff)."""
    if data is None:
        return None
    if len(data) > MAX_INPUT_BYTES or b"\x00" in data:
        return False
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return False


# -- notebooks ------------------------------------------------------------------------------


def _parse_notebook(data: bytes | None) -> dict[str, Any] | None:
    """A v4 notebook as a dict (the empty notebook for an absent file), or None if unreadable."""
    if data is None:
        return _EMPTY_NOTEBOOK
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4:
        return None
    cells = nb.get("cells")
    if not isinstance(cells, list) or not all(
        isinstance(c, dict) and isinstance(c.get("cell_type"), str) for c in cells
    ):
        return None
    return nb


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        return "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _notebook_diff(a: dict[str, Any], b: dict[str, Any], budget: _Budget) -> dict[str, Any]:
    cells_a: list[dict[str, Any]] = a["cells"]
    cells_b: list[dict[str, Any]] = b["cells"]
    cells: list[dict[str, Any]] = []
    counts = {"added": 0, "removed": 0, "modified": 0, "unchanged": 0}
    for i, j in _align(cells_a, cells_b):
        if i is not None and j is not None:
            entry = _modified(cells_a[i], cells_b[j], i, j, budget)
        elif j is not None:
            entry = _one_sided("added", cells_b[j], None, j, budget)
        elif i is not None:
            entry = _one_sided("removed", cells_a[i], i, None, budget)
        else:
            continue
        if entry is None:
            counts["unchanged"] += 1
            continue
        counts[entry["status"]] += 1
        cells.append(entry)
    return {"cells": cells, "summary": counts, "metadata": _notebook_metadata(a, b)}


def _align(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[int | None, int | None]]:
    """Pairs (index before, index after) in order; None on one side for an added/removed cell."""
    keys_a = [_content_key(c) for c in a]
    keys_b = [_content_key(c) for c in b]
    pairs: list[tuple[int | None, int | None]] = []
    matcher = difflib.SequenceMatcher(None, keys_a, keys_b, autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            pairs.extend(zip(range(a0, a1), range(b0, b1), strict=True))
        else:
            pairs.extend(_pair_run(a, b, a0, a1, b0, b1))
    return pairs


def _content_key(cell: dict[str, Any]) -> str:
    return f"{cell.get('cell_type')}\0{_source(cell)}"


def _pair_run(
    a: list[dict[str, Any]], b: list[dict[str, Any]], a0: int, a1: int, b0: int, b1: int
) -> list[tuple[int | None, int | None]]:
    """Pair the cells of a run that differs: nbdime when small, cell ids or position when not."""
    if a0 == a1 or b0 == b1:
        return [(i, None) for i in range(a0, a1)] + [(None, j) for j in range(b0, b1)]
    if (a1 - a0) * (b1 - b0) <= NBDIME_MAX_PAIRS:
        pairs = _nbdime_pairs(a[a0:a1], b[b0:b1])
        if pairs is not None:
            return [
                (None if i is None else a0 + i, None if j is None else b0 + j) for i, j in pairs
            ]
    ids_a = [c.get("id") for c in a[a0:a1]]
    ids_b = [c.get("id") for c in b[b0:b1]]
    if all(isinstance(x, str) for x in ids_a + ids_b):
        out: list[tuple[int | None, int | None]] = []
        matcher = difflib.SequenceMatcher(None, ids_a, ids_b, autojunk=False)
        for op, i0, i1, j0, j1 in matcher.get_opcodes():
            if op == "equal":
                out.extend(zip(range(a0 + i0, a0 + i1), range(b0 + j0, b0 + j1), strict=True))
            else:
                out.extend(_by_position(a, b, a0 + i0, a0 + i1, b0 + j0, b0 + j1))
        return out
    return _by_position(a, b, a0, a1, b0, b1)


def _by_position(
    a: list[dict[str, Any]], b: list[dict[str, Any]], a0: int, a1: int, b0: int, b1: int
) -> list[tuple[int | None, int | None]]:
    out: list[tuple[int | None, int | None]] = []
    for k in range(max(a1 - a0, b1 - b0)):
        i = a0 + k if a0 + k < a1 else None
        j = b0 + k if b0 + k < b1 else None
        if i is not None and j is not None and a[i].get("cell_type") != b[j].get("cell_type"):
            out.extend([(i, None), (None, j)])
        else:
            out.append((i, j))
    return out


def _nbdime_pairs(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> list[tuple[int | None, int | None]] | None:
    """nbdime's cell matching on two short runs. Outputs are replaced by their hashes first:
    equality is all the matching needs, and megabytes of images would only slow it down."""
    try:
        ops = diff_notebooks(_light_notebook(a), _light_notebook(b))
    except Exception:  # nbdime on odd input: fall back to the caller's pairing
        return None
    cell_ops: list[dict[str, Any]] = []
    for op in ops:
        if op.get("key") == "cells" and op.get("op") == "patch":
            cell_ops = list(op.get("diff", []))
    # Insertions before base cell k come before anything else done at k.
    cell_ops.sort(key=lambda op: (op["key"], 0 if op["op"] == "addrange" else 1))
    pairs: list[tuple[int | None, int | None]] = []
    i = j = 0
    for op in cell_ops:
        key = op["key"]
        while i < key:
            pairs.append((i, j))
            i += 1
            j += 1
        if op["op"] == "addrange":
            for _ in op["valuelist"]:
                pairs.append((None, j))
                j += 1
        elif op["op"] == "removerange":
            for _ in range(op["length"]):
                pairs.append((i, None))
                i += 1
        elif op["op"] == "patch":
            pairs.append((i, j))
            i += 1
            j += 1
        else:
            return None
    while i < len(a):
        pairs.append((i, j))
        i += 1
        j += 1
    if j != len(b):
        return None  # not the shape we expect from nbdime: do not guess
    return pairs


def _light_notebook(cells: list[dict[str, Any]]) -> dict[str, Any]:
    light = []
    for cell in cells:
        copy = {k: v for k, v in cell.items() if k not in ("outputs", "attachments")}
        copy["source"] = _source(cell)
        if "outputs" in cell:
            copy["outputs"] = [
                {"output_type": "stream", "name": "stdout", "text": _hash_json(o)}
                for o in cell.get("outputs") or []
            ]
        light.append(copy)
    return {"cells": light, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def _hash_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _one_sided(
    status: str,
    cell: dict[str, Any],
    index_before: int | None,
    index_after: int | None,
    budget: _Budget,
) -> dict[str, Any]:
    mark = "+" if status == "added" else "-"
    lines, cut = budget.take(mark + line for line in _source(cell).splitlines())
    entry = _cell_head(status, cell, index_before, index_after)
    entry["source"] = lines
    entry["truncated"] = cut
    if cell.get("cell_type") == "code":
        entry["outputs"] = _outputs_summary(cell.get("outputs"))
    return entry


def _modified(
    a: dict[str, Any], b: dict[str, Any], i: int, j: int, budget: _Budget
) -> dict[str, Any] | None:
    changed = []
    if a.get("cell_type") != b.get("cell_type"):
        changed.append("cell_type")
    src_a, src_b = _source(a), _source(b)
    if src_a != src_b:
        changed.append("source")
    if _canon(a.get("outputs")) != _canon(b.get("outputs")):
        changed.append("outputs")
    if a.get("execution_count") != b.get("execution_count"):
        changed.append("execution_count")
    meta = _key_changes(a.get("metadata"), b.get("metadata"))
    if any(meta.values()):
        changed.append("metadata")
    if _canon(a.get("attachments")) != _canon(b.get("attachments")):
        changed.append("attachments")
    if a.get("id") != b.get("id"):
        changed.append("id")
    if not changed:
        return None
    entry = _cell_head("modified", b, i, j)
    entry["changed"] = changed
    cut = False
    if "source" in changed:
        hunks = list(difflib.unified_diff(src_a.splitlines(), src_b.splitlines(), lineterm=""))
        entry["source"], cut = budget.take(hunks[2:])  # no ---/+++ header: not files
    else:
        entry["source"] = []
    entry["truncated"] = cut
    if "outputs" in changed:
        entry["outputs"] = {
            "before": _outputs_summary(a.get("outputs")),
            "after": _outputs_summary(b.get("outputs")),
        }
    if "execution_count" in changed:
        entry["execution_count"] = {
            "before": _small_int(a.get("execution_count")),
            "after": _small_int(b.get("execution_count")),
        }
    if "metadata" in changed:
        entry["metadata"] = meta
    if "cell_type" in changed:
        entry["cell_type_before"] = _name(a.get("cell_type"))
    return entry


def _cell_head(
    status: str, cell: dict[str, Any], index_before: int | None, index_after: int | None
) -> dict[str, Any]:
    cell_id = cell.get("id")
    return {
        "status": status,
        "cell_type": _name(cell.get("cell_type")),
        "id": _name(cell_id) if isinstance(cell_id, str) else None,
        "index_before": index_before,
        "index_after": index_after,
    }


def _outputs_summary(outputs: Any) -> dict[str, Any]:
    """Types, MIME types and sizes of outputs; never their content."""
    if not isinstance(outputs, list):
        return {"count": 0, "items": [], "total_bytes": 0}
    items = []
    total = 0
    for out in outputs:
        if not isinstance(out, dict):
            continue
        otype = out.get("output_type")
        item: dict[str, Any] = {"output_type": _name(otype)}
        size = 0
        if otype == "stream":
            item["name"] = _name(out.get("name"))
            size = _size(out.get("text"))
        elif otype == "error":
            # The exception class name is useful and short; evalue and traceback may carry
            # anything the code printed, so they are only sized.
            item["ename"] = _name(out.get("ename"))
            size = _size(out.get("evalue")) + _size(out.get("traceback"))
        else:
            data = out.get("data")
            mimes = {}
            if isinstance(data, dict):
                for mime, value in data.items():
                    mimes[_name(mime)] = _size(value)
                    size += mimes[_name(mime)]
            item["mime"] = mimes
        item["bytes"] = size
        total += size
        if len(items) < _MAX_OUTPUT_ITEMS:
            items.append(item)
    return {"count": len(outputs), "items": items, "total_bytes": total}


def _notebook_metadata(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    changes = _key_changes(a.get("metadata"), b.get("metadata"))
    if (a.get("nbformat"), a.get("nbformat_minor")) != (b.get("nbformat"), b.get("nbformat_minor")):
        changes["nbformat"] = {
            "before": f"{_small_int(a.get('nbformat'))}.{_small_int(a.get('nbformat_minor'))}",
            "after": f"{_small_int(b.get('nbformat'))}.{_small_int(b.get('nbformat_minor'))}",
        }
    return changes


def _key_changes(a: Any, b: Any) -> dict[str, Any]:
    """Names of metadata keys added, removed and changed (values can be big widget states)."""
    a = a if isinstance(a, dict) else {}
    b = b if isinstance(b, dict) else {}
    return {
        "added": sorted(_name(k) for k in b.keys() - a.keys()),
        "removed": sorted(_name(k) for k in a.keys() - b.keys()),
        "changed": sorted(_name(k) for k in a.keys() & b.keys() if _canon(a[k]) != _canon(b[k])),
    }


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sum(len(v.encode("utf-8", "replace")) for v in value)
    if value is None:
        return 0
    return len(_canon(value).encode("utf-8", "replace"))


def _clean(text: str) -> str:
    """Well-formed Unicode: a lone surrogate (from a file name that is not UTF-8, or a "\\ud800"
    escape in notebook JSON) would make the result fail to encode as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _name(value: Any) -> str:
    text = _clean(value if isinstance(value, str) else str(value))
    return text if len(text) <= _MAX_NAME_CHARS else text[:_MAX_NAME_CHARS] + "…"


def _name_long(value: str) -> str:
    text = _clean(value)
    return text if len(text) <= MAX_LINE_CHARS else text[:MAX_LINE_CHARS] + "…"


def _small_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
