"""The README's table of files the person's tools run is the watcher's list (toolfiles.py)."""

from __future__ import annotations

from pathlib import Path

from jupyter_qguard.watch.toolfiles import TOOL_FILES

README = Path(__file__).resolve().parents[1] / "README.md"


def _table() -> str:
    text = README.read_text()
    start = text.index("## The workspace is untrusted input")
    return text[start : text.index("\n## ", start + 1)]


def test_every_tool_file_pattern_is_in_the_readme_table():
    table = _table()
    missing = [
        pattern
        for rule in TOOL_FILES
        for pattern in rule.patterns
        if f"`{pattern.lstrip('/')}`" not in table
    ]
    assert missing == []
