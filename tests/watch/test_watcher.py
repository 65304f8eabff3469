"""The workspace watcher on real files and real inotify: debounce, chains of changes, ignore rules,
creates, deletes, moves, new directories, pause/resume, size cap, and its cost on 10,000 files."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import statistics
import time
from pathlib import Path

import pytest
from support.watching import settle

from jupyter_qguard.watch.snapshots import SnapshotStore
from jupyter_qguard.watch.watcher import WorkspaceWatcher


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_burst_of_writes_is_one_change_and_the_chain_is_continuous(ws, store, start_watcher):
    target = ws / "counts.json"
    target.write_bytes(b"initial")
    watcher, rec = start_watcher()
    started = time.time()
    for i in range(1000):
        with open(target, "wb") as f:
            f.write(f"value {i}".encode())
    final = sha(b"value 999")
    rec.wait(lambda cs: any(c.after_sha == final for c in cs))
    settle(watcher)
    changes = rec.of("counts.json")
    print(f"\n1,000 writes -> {len(changes)} change(s)")
    # One change unless the writes outlast max_delay_seconds (a loaded box): then a short chain.
    assert 1 <= len(changes) <= 3
    assert all(c.kind == "modified" for c in changes)
    assert changes[0].before_sha == sha(b"initial")
    assert changes[-1].after_sha == final and changes[-1].size == len(b"value 999")
    for prev, nxt in zip(changes, changes[1:], strict=False):
        assert nxt.before_sha == prev.after_sha and nxt.before_size == prev.size
    # Every before and after is in the store, so any of them can be restored.
    assert store.get(changes[0].before_sha) == b"initial"
    assert store.get(final) == b"value 999"
    assert all(c.before_stored and c.after_stored for c in changes)
    assert started <= changes[0].at <= changes[0].seen_at
    assert rec.threads == {"qguard-watch"}
    assert watcher.known("counts.json") == (final, 9)


def test_a_slow_writer_yields_a_continuous_chain(ws, store, start_watcher):
    target = ws / "log.txt"
    watcher, rec = start_watcher(debounce_seconds=0.05)
    contents = [f"step {i}\n".encode() * (i + 1) for i in range(6)]
    for data in contents:
        target.write_bytes(data)
        time.sleep(0.15)  # longer than the debounce: each write is its own change
    rec.wait(lambda cs: any(c.after_sha == sha(contents[-1]) for c in cs))
    changes = rec.of("log.txt")
    assert [c.kind for c in changes] == ["created"] + ["modified"] * 5
    assert [c.after_sha for c in changes] == [sha(d) for d in contents]
    assert [c.before_sha for c in changes] == [None] + [sha(d) for d in contents[:-1]]
    assert [store.get(c.after_sha) for c in changes] == contents


IGNORED = [
    ".ipynb_checkpoints/exp-checkpoint.ipynb",
    "sub/.ipynb_checkpoints/x-checkpoint.ipynb",
    ".exp.ipynb.swp",
    "sub/.notes.txt.swp",
    "notes.txt~",
    ".~exp.ipynb",
    "sub/.~lock.data.csv#",
]

# Bytecode and git's state are what a person's own kernel and git run later: never ignored
# (tests/watch/test_workspace_untrusted.py has the alerts).
WATCHED_ALWAYS = [
    "__pycache__/m.cpython-311.pyc",
    "pkg/__pycache__/m.cpython-311.pyc",
    "loose.pyc",
    "pkg/deep/mod.pyc",
    ".git/HEAD",
    ".git/objects/ab/cdef",
    "vendored/.git/config",
]


def test_default_ignore_patterns_at_start_and_on_events(ws, start_watcher):
    for rel in IGNORED[: len(IGNORED) // 2]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("before start")
    (ws / "exp.ipynb").write_text("{}")
    watcher, rec = start_watcher()
    assert all(watcher.known(rel) is None for rel in IGNORED)
    assert watcher.known("exp.ipynb") == (sha(b"{}"), 2)
    for rel in IGNORED:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("after start")
    (ws / "visible.txt").write_text("shown")
    rec.wait(lambda cs: any(c.path == "visible.txt" for c in cs))
    settle(watcher)
    assert [c.path for c in rec.changes] == ["visible.txt"]


@pytest.mark.parametrize("ignore", [None, ["*.pyc", "__pycache__/*", ".git/*", "*/.git/*"]])
def test_bytecode_and_git_are_never_ignored(ws, store, start_watcher, ignore):
    for rel in WATCHED_ALWAYS[:3]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("before start")
    watcher, rec = start_watcher(ignore=ignore)
    assert [watcher.known(rel) for rel in WATCHED_ALWAYS[:3]] == [(sha(b"before start"), 12)] * 3
    for rel in WATCHED_ALWAYS:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("after start")
    rec.wait(lambda cs: len({c.path for c in cs}) >= len(WATCHED_ALWAYS))
    settle(watcher)
    assert sorted((c.path, c.kind, c.after_sha) for c in rec.changes) == sorted(
        (rel, "modified" if i < 3 else "created", sha(b"after start"))
        for i, rel in enumerate(WATCHED_ALWAYS)
    )
    # git's object files are in the feed, hashed, but not copied into the store.
    by_path = {c.path: c for c in rec.changes}
    assert by_path[".git/objects/ab/cdef"].after_stored is False
    assert by_path[".git/HEAD"].after_stored is True


def test_custom_ignore_patterns(ws, start_watcher):
    watcher, rec = start_watcher(ignore=["data/*", "*.log", "build"])
    for rel in ["data/big.csv", "data/nested/x.bin", "run.log", "a/b/run.log", "build/out.o"]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("ignored")
    for rel in ["database.csv", "a/data/kept.txt", "logs/run.txt"]:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("kept")
    rec.wait(lambda cs: len(cs) >= 3)
    settle(watcher)
    # Defaults are replaced, not extended, when `ignore` is given.
    assert sorted(c.path for c in rec.changes) == [
        "a/data/kept.txt",
        "database.csv",
        "logs/run.txt",
    ]


def test_create_delete_and_create_then_delete(ws, store, start_watcher):
    (ws / "old.txt").write_bytes(b"old content")
    watcher, rec = start_watcher()
    (ws / "new.txt").write_bytes(b"new content")
    (ws / "old.txt").unlink()
    (ws / "flash.txt").write_bytes(b"here and gone")
    (ws / "flash.txt").unlink()
    rec.wait(lambda cs: {c.path for c in cs} >= {"new.txt", "old.txt"})
    settle(watcher)
    by_path = {c.path: c for c in rec.changes}
    assert set(by_path) == {"new.txt", "old.txt"}
    created, deleted = by_path["new.txt"], by_path["old.txt"]
    assert (created.kind, created.before_sha, created.after_sha, created.size) == (
        "created",
        None,
        sha(b"new content"),
        11,
    )
    assert (created.before_stored, created.after_stored) == (False, True)
    assert (deleted.kind, deleted.before_sha, deleted.after_sha, deleted.size) == (
        "deleted",
        sha(b"old content"),
        None,
        None,
    )
    assert (deleted.before_size, deleted.before_stored) == (11, True)
    # What revert needs: the deleted file's content.
    assert store.get(deleted.before_sha) == b"old content"
    assert watcher.known("old.txt") is None


def test_a_move_is_a_linked_delete_and_create_in_one_callback(ws, start_watcher):
    (ws / "a.txt").write_bytes(b"moving")
    (ws / "dst").mkdir()
    (ws / "target.txt").write_bytes(b"replaced")
    watcher, rec = start_watcher()
    os.rename(ws / "a.txt", ws / "dst" / "b.txt")
    os.rename(ws / "dst" / "b.txt", ws / "dst" / "c.txt")  # within the window: one move a -> c
    rec.wait(lambda cs: any(c.path == "dst/c.txt" for c in cs))
    (ws / "tmp.save").write_bytes(b"new target")
    os.replace(ws / "tmp.save", ws / "target.txt")  # a save through a temp file
    rec.wait(lambda cs: any(c.path == "target.txt" for c in cs))
    settle(watcher)
    first = rec.batches[0]
    # a -> b -> c inside one window: the sides watchdog paired (a/b, b/c) are not the sides that
    # changed (a, c), so this is an unlinked delete + create; the content says it moved.
    assert [(c.path, c.kind, c.moved_from, c.moved_to) for c in first] == [
        ("a.txt", "deleted", None, None),
        ("dst/c.txt", "created", None, None),
    ]
    assert first[0].before_sha == first[1].after_sha == sha(b"moving")
    changes = [c for c in rec.changes if c.path in ("target.txt", "tmp.save")]
    assert [(c.path, c.kind, c.before_sha, c.after_sha) for c in changes] == [
        ("target.txt", "modified", sha(b"replaced"), sha(b"new target"))
    ]


def test_a_single_rename_is_linked(ws, start_watcher):
    (ws / "a.txt").write_bytes(b"renamed")
    watcher, rec = start_watcher()
    os.rename(ws / "a.txt", ws / "b.txt")
    rec.wait(lambda cs: len(cs) >= 2)
    settle(watcher)
    assert len(rec.batches) == 1
    assert [(c.path, c.kind, c.moved_from, c.moved_to) for c in rec.changes] == [
        ("a.txt", "deleted", None, "b.txt"),
        ("b.txt", "created", "a.txt", None),
    ]


def test_directories_created_moved_in_and_moved_out_after_start(ws, tmp_path, start_watcher):
    outside = tmp_path / "outside"
    (outside / "tree" / "sub").mkdir(parents=True)
    (outside / "tree" / "one.txt").write_bytes(b"1")
    (outside / "tree" / "sub" / "two.txt").write_bytes(b"2")
    (ws / "leaving" / "inner").mkdir(parents=True)
    (ws / "leaving" / "inner" / "gone.txt").write_bytes(b"gone")
    watcher, rec = start_watcher()
    (ws / "a" / "b" / "c").mkdir(parents=True)
    (ws / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep")
    shutil.move(outside / "tree", ws / "tree")
    shutil.move(ws / "leaving", outside / "left")
    rec.wait(lambda cs: len(cs) >= 4)
    # The new directories are watched too.
    (ws / "a" / "b" / "c" / "later.txt").write_bytes(b"later")
    (ws / "tree" / "sub" / "two.txt").write_bytes(b"22")
    rec.wait(lambda cs: len(cs) >= 6)
    settle(watcher)
    assert sorted((c.path, c.kind, c.after_sha) for c in rec.changes) == [
        ("a/b/c/deep.txt", "created", sha(b"deep")),
        ("a/b/c/later.txt", "created", sha(b"later")),
        ("leaving/inner/gone.txt", "deleted", None),
        ("tree/one.txt", "created", sha(b"1")),
        ("tree/sub/two.txt", "created", sha(b"2")),
        ("tree/sub/two.txt", "modified", sha(b"22")),
    ]


def test_pause_reports_what_came_before_and_resume_absorbs_what_came_during(
    ws, store, start_watcher
):
    (ws / "a.txt").write_bytes(b"a0")
    (ws / "b.txt").write_bytes(b"b0")
    watcher, rec = start_watcher(debounce_seconds=0.5)
    (ws / "a.txt").write_bytes(b"a1")
    watcher.pause()  # no waiting: pause itself reports the pending change
    assert [(c.path, c.before_sha, c.after_sha) for c in rec.changes] == [
        ("a.txt", sha(b"a0"), sha(b"a1"))
    ]
    assert watcher.paused
    # Behind the watcher's back.
    (ws / "a.txt").write_bytes(b"a2")
    (ws / "b.txt").unlink()
    (ws / "c.txt").write_bytes(b"c0")
    time.sleep(0.8)
    assert len(rec.changes) == 1
    watcher.resume()
    time.sleep(0.8)
    watcher.flush()
    assert len(rec.changes) == 1
    assert watcher.known("a.txt") == (sha(b"a2"), 2)
    assert watcher.known("b.txt") is None and watcher.known("c.txt") == (sha(b"c0"), 2)
    # The next change starts from what resume saw, and that content is restorable.
    (ws / "a.txt").write_bytes(b"a3")
    rec.wait(lambda cs: len(cs) == 2)
    last = rec.changes[-1]
    assert (last.path, last.before_sha, last.after_sha) == ("a.txt", sha(b"a2"), sha(b"a3"))
    assert store.get(last.before_sha) == b"a2"


def test_stop_reports_pending_changes(ws, start_watcher):
    watcher, rec = start_watcher(debounce_seconds=5)
    (ws / "late.txt").write_bytes(b"late")
    time.sleep(0.1)
    watcher.stop()
    assert [(c.path, c.kind) for c in rec.changes] == [("late.txt", "created")]


def test_files_over_the_cap_are_hashed_not_stored(ws, store, start_watcher):
    big0, big1 = b"B" * 1000, b"C" * 1000
    (ws / "big.bin").write_bytes(big0)
    (ws / "small.txt").write_bytes(b"small")
    watcher, rec = start_watcher(max_file_bytes=100)
    # Not read at start: its hash is unknown until it changes.
    assert watcher.known("big.bin") == (None, 1000)
    assert watcher.known("small.txt") == (sha(b"small"), 5)
    (ws / "big.bin").write_bytes(big1)
    (ws / "small.txt").write_bytes(b"S" * 101)
    rec.wait(lambda cs: len(cs) >= 2)
    by_path = {c.path: c for c in rec.changes}
    big = by_path["big.bin"]
    assert (big.before_sha, big.after_sha, big.before_stored, big.after_stored) == (
        None,
        sha(big1),
        False,
        False,
    )
    small = by_path["small.txt"]
    assert (small.before_sha, small.after_sha, small.before_stored, small.after_stored) == (
        sha(b"small"),
        sha(b"S" * 101),
        True,
        False,
    )
    assert not store.has(sha(big1)) and not store.has(sha(b"S" * 101))
    assert store.get(sha(b"small")) == b"small"


def test_symlinks_and_fifos_are_not_followed(ws, tmp_path, store, start_watcher):
    # Recorded as what they are (a link with its text), never opened or read through.
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the workspace")
    (ws / "link.txt").symlink_to(secret)
    os.mkfifo(ws / "pipe")
    watcher, rec = start_watcher()
    assert watcher.known_entry("link.txt") == ("symlink", str(secret))
    assert watcher.known_entry("pipe") == ("fifo", None)
    assert watcher.known("link.txt") == (None, len(str(secret)))
    (ws / "link2.txt").symlink_to(secret)
    os.mkfifo(ws / "pipe2")
    (ws / "plain.txt").write_text("x")
    rec.wait(lambda cs: any(c.path == "plain.txt" for c in cs))
    settle(watcher)
    assert [
        (c.path, c.kind, c.entry_type, c.link_target, c.after_sha, c.size)
        for c in sorted(rec.changes, key=lambda c: c.path)
    ] == [
        ("link2.txt", "created", "symlink", str(secret), None, None),
        ("pipe2", "created", "fifo", None, None, None),
        ("plain.txt", "created", "file", None, sha(b"x"), 1),
    ]
    assert not store.has(sha(b"outside the workspace"))


def test_same_content_rewrite_and_touch_report_nothing(ws, start_watcher):
    (ws / "same.txt").write_bytes(b"same")
    watcher, rec = start_watcher(debounce_seconds=0.05)
    (ws / "same.txt").write_bytes(b"same")
    os.utime(ws / "same.txt")
    os.chmod(ws / "same.txt", 0o640)
    time.sleep(0.4)
    settle(watcher)
    assert rec.changes == []


def test_lost_events_are_found_by_a_rescan_after_an_inotify_overflow(ws, start_watcher):
    (ws / "a.txt").write_bytes(b"a0")
    watcher, rec = start_watcher()
    watcher._accepting = False  # stands for events the kernel dropped
    (ws / "a.txt").write_bytes(b"a1")
    (ws / "b.txt").write_bytes(b"b0")
    time.sleep(0.3)
    watcher._accepting = True
    assert rec.changes == []
    # What watchdog logs when the kernel's queue overflowed.
    logging.getLogger("watchdog.observers.inotify_c").warning(
        "Inotify queue overflowed; filesystem events were lost"
    )
    rec.wait(lambda cs: len(cs) >= 2)
    assert sorted((c.path, c.kind, c.after_sha) for c in rec.changes) == [
        ("a.txt", "modified", sha(b"a1")),
        ("b.txt", "created", sha(b"b0")),
    ]


def test_the_store_inside_the_workspace_is_never_watched(ws, start_watcher):
    inner = SnapshotStore(ws / ".qguard" / "objects")
    watcher, rec = start_watcher(store=inner)
    (ws / "x.txt").write_bytes(b"x")
    rec.wait(lambda cs: len(cs) >= 1)
    settle(watcher)
    assert [c.path for c in rec.changes] == ["x.txt"]
    assert inner.get(sha(b"x")) == b"x"


def test_a_failing_callback_does_not_stop_the_watcher(ws, store):
    calls = []

    def boom(changes):
        calls.append([c.path for c in changes])
        raise RuntimeError("callback bug")

    watcher = WorkspaceWatcher(ws, boom, store=store, debounce_seconds=0.05)
    watcher.start()
    try:
        (ws / "one.txt").write_text("1")
        time.sleep(0.4)
        (ws / "two.txt").write_text("2")
        deadline = time.monotonic() + 10
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        watcher.stop()
    assert calls == [["one.txt"], ["two.txt"]]


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_cost_on_a_10000_file_workspace(ws, store, start_watcher):
    """Measures (printed; bounds are generous for slow CI): start-up scan, memory, latency."""
    body = b"import numpy as np\n" + b"x = np.arange(100)\n" * 100
    for d in range(100):
        sub = ws / f"pkg{d}"
        sub.mkdir()
        for f in range(100):
            (sub / f"mod{f}.py").write_bytes(body + f"# {d}/{f}\n".encode())
    rss_before = _rss_kib()
    watcher, rec = start_watcher()
    scan = watcher.initial_scan_seconds
    rss_after = _rss_kib()
    assert len(watcher.known_hashes()) == 10_000 and len(store) == 10_000
    # A restart finds every snapshot already stored.
    again = WorkspaceWatcher(ws, lambda changes: None, store=store)
    again.start()
    rescan = again.initial_scan_seconds
    again.stop()

    writes: dict[str, float] = {}
    for i in range(60):
        rel = f"pkg{i}/mod0.py"
        writes[rel] = time.time()
        (ws / rel).write_bytes(body + f"# edit {i}\n".encode())
        time.sleep(0.02)
    rec.wait(lambda cs: len({c.path for c in cs}) >= 60, timeout=30)
    latencies = sorted(rec.arrivals[rel] - t for rel, t in writes.items())
    p50 = statistics.median(latencies)
    p95 = latencies[int(0.95 * len(latencies)) - 1]
    stored_mib = store.size_total() / 2**20
    print(
        f"\n10,000 files: initial scan {scan:.2f} s (restart {rescan:.2f} s), "
        f"RSS +{(rss_after - rss_before) / 1024:.1f} MiB, store {stored_mib:.1f} MiB"
        f"\nwrite -> callback (debounce {watcher.debounce_seconds} s): "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
    )
    assert scan < 30 and rescan < 30
    assert rss_after - rss_before < 200 * 1024
    assert watcher.debounce_seconds <= p50 and p95 < 2.0
