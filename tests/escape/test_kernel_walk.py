"""The walk the launcher makes of the workspace at kernel start (before privilege ends, as the
server's user, possibly root): bounded, breadth first, never through a symlink, never blocked
by a FIFO; and what it makes of `.git` files, links and `commondir`. On real directories."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jupyter_qguard.sandbox import workspace_guard


@pytest.fixture(autouse=True, params=["leaves listed by name", "every folder entry by entry"])
def walk_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways the walk reads a folder: by names alone where the file system's link counts
    say it has no subfolder (ext4, xfs, tmpfs: this machine's /tmp), entry by entry
    elsewhere (as if the file system were btrfs or overlayfs)."""
    if request.param == "every folder entry by entry":
        monkeypatch.setattr(workspace_guard, "SUBDIR_COUNTING_FS", set())
    return request.param


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    return root


def scan(root: Path, patterns: list[str] | None = None, limit: int = 1000):
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        return workspace_guard.scan_workspace(fd, patterns or [], limit=limit)
    finally:
        os.close(fd)


def targets(root: Path, found) -> list[str]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        return workspace_guard.git_targets(str(root), fd, found)
    finally:
        os.close(fd)


def test_finds_every_git_at_any_depth_and_does_not_enter_them(ws):
    for rel in (".git/objects/x", "a/.git/modules/m/.git", "a/b/c/d/.git", "z/sub"):
        (ws / rel).mkdir(parents=True)
    (ws / "a/m").mkdir()
    (ws / "a/m/.git").write_text("gitdir: ../.git/modules/m\n")
    found = scan(ws)
    assert sorted(found.git) == [".git", "a/.git", "a/b/c/d/.git", "a/m/.git"]
    # .git itself is never walked (the .git inside .git/modules/m was not found)
    assert found.complete is True and found.git_links == []


def test_the_walk_is_bounded_breadth_first(ws):
    (ws / ".git").mkdir()
    deep = ws
    for i in range(30):
        deep = deep / f"d{i}"
        deep.mkdir()
        (deep / ".git").mkdir()
    wide = [ws / f"w{i}" for i in range(5)]
    for w in wide:
        (w / ".git").mkdir(parents=True)
    # the root and its six folders: every repository one level down is found, none deeper
    found = scan(ws, limit=7)
    assert found.complete is False and found.dirs == 7
    assert sorted(found.git) == [".git", "d0/.git", *(f"w{i}/.git" for i in range(5))]


def test_never_follows_a_symlink(ws, tmp_path):
    outside = tmp_path / "outside"
    (outside / "repo/.git").mkdir(parents=True)
    (outside / "secret.txt").write_text("x")
    os.symlink(outside, ws / "linked")
    os.symlink(outside / "repo/.git", ws / ".git")
    found = scan(ws, ["*secret*"])
    assert found.git == [] and found.git_links == [".git"]
    assert found.hidden == [] and found.dirs == 1
    # a .git link pointing out of the workspace names nothing to bind
    assert targets(ws, found) == []


def test_git_files_links_and_commondir_inside_the_workspace_are_bound(ws):
    (ws / "store").mkdir()
    (ws / "store/commondir").write_text("../main/.git\n")
    (ws / "main/.git/worktrees/w").mkdir(parents=True)
    (ws / "sep").mkdir()
    (ws / "sep/.git").write_text("gitdir: ../store\n")
    (ws / "abs").mkdir()
    (ws / "abs/.git").write_text(f"gitdir: {ws}/absolute-store\n")
    (ws / "absolute-store").mkdir()
    (ws / "out").mkdir()
    (ws / "out/.git").write_text("gitdir: ../../elsewhere\n")
    (ws / "self").mkdir()
    (ws / "self/.git").write_text("gitdir: ..\n")
    (ws / "wt").mkdir()
    (ws / "wt/.git").write_text(f"gitdir: {ws}/main/.git/worktrees/w\n")
    (ws / "lnk").mkdir()
    os.symlink("../store", ws / "lnk/.git")
    found = scan(ws)
    assert targets(ws, found) == [
        "abs/.git",
        "absolute-store",
        "main/.git",  # store's commondir; the worktree's gitdir lies inside it
        "out/.git",
        "self/.git",  # its target is the workspace itself: not made read-only on its word
        "sep/.git",
        "store",
        "wt/.git",
    ]


def test_a_fifo_named_like_git_files_blocks_nothing(ws):
    (ws / "r").mkdir()
    os.mkfifo(ws / "r/.git")
    (ws / "q/.git").mkdir(parents=True)
    os.mkfifo(ws / "q/.git/commondir")
    done = threading.Event()
    out: list[list[str]] = []

    def run() -> None:
        out.append(targets(ws, scan(ws)))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(10), "the walk blocked on a FIFO"
    assert out == [["q/.git", "r/.git"]]


def test_hide_patterns_match_whole_paths_and_star_crosses_folders(ws):
    for rel in ("a/b/c.key", "top.key", ".env", "sub/.env", "sub/secret.txt", "x/y/secret.txt"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("x")
    (ws / "private/inner").mkdir(parents=True)
    (ws / "private/inner/.git").mkdir()
    found = scan(ws, ["*.key", ".env", "*/secret.txt", "private"])
    assert sorted(found.hidden) == [
        ".env",
        "a/b/c.key",
        "private",
        "sub/secret.txt",
        "top.key",
        "x/y/secret.txt",
    ]
    # a hidden folder is not walked: what it holds is hidden with it
    assert found.git == []
