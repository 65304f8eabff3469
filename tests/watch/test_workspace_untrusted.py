"""The workspace is untrusted input for the watcher, its snapshots, the secret scan and reverts.

A folder swapped for a link to ~/.aws copies nothing out of it (into the snapshot store or the
feed) and a revert never writes through a link, not even racing one; FIFOs and sockets never
block the walk and are in the feed as what they are; bytecode, `.git` and the other files a
person's own tools run later are changes in the feed, with an alert when an agent kernel wrote
them; a huge directory, a deep tree, a flood of new files and a sparse terabyte stay bounded.
Real watcher on real inotify, and a real server (REST, websocket, kernels) for the feed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

from support.helpers import wait_for
from support.watching import Recorder, settle

from jupyter_qguard import workspace_io as wio
from jupyter_qguard.watch import secrets
from jupyter_qguard.watch.diff import entry_diff
from jupyter_qguard.watch.toolfiles import TOOL_FILES, tool_file
from jupyter_qguard.watch.watcher import WorkspaceWatcher

SECRET = b"[default]\naws_access_key_id = AKIAQGUARDTESTKEY123\naws_secret_access_key = s3cr3t\n"
NOTES = b"workspace notes, nothing secret\n"
BYTECODE_WHY = "bytecode a person's own kernel would import"
GIT_WHY = (
    "git's own state (hooks, config such as core.fsmonitor, gitdir and commondir pointers), "
    "which git acts on at the person's next git command"
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every regular file under `root` (links not followed) whose bytes contain `needle`."""
    found = []
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if needle in path.read_bytes():
                found.append(str(path.relative_to(root)))
    return found


def fake_aws(home: Path) -> Path:
    aws = home / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials.txt").write_bytes(SECRET)
    (aws / "config").write_bytes(b"[default]\nregion = eu-west-1\n" + SECRET)
    return aws


def test_a_folder_swapped_for_a_link_is_a_link_and_nothing_is_read_through_it(
    ws, tmp_path, store, start_watcher
):
    aws = fake_aws(tmp_path / "home")
    (ws / "d").mkdir()
    (ws / "d" / "credentials.txt").write_bytes(NOTES)
    watcher, rec = start_watcher()
    assert watcher.known("d/credentials.txt") == (sha(NOTES), len(NOTES))

    os.rename(ws / "d", ws / "d_old")
    os.symlink(aws, ws / "d")
    rec.wait(lambda cs: {c.path for c in cs} >= {"d", "d/credentials.txt", "d_old/credentials.txt"})
    settle(watcher)
    assert sorted(
        (c.path, c.kind, c.before_entry_type, c.entry_type, c.link_target, c.after_sha)
        for c in rec.changes
    ) == [
        ("d", "created", None, "symlink", str(aws), None),
        ("d/credentials.txt", "deleted", "file", None, None, None),
        ("d_old/credentials.txt", "created", None, "file", None, sha(NOTES)),
    ]
    # A full rescan (what inotify overflow triggers) does not read through it either.
    assert watcher.rescan() == []
    assert watcher.known("d/credentials.txt") is None
    assert watcher.known_entry("d") == ("symlink", str(aws))
    # Nor does a restart, which finds the link already there.
    again = WorkspaceWatcher(ws, lambda changes: None, store=store)
    again.start()
    again.stop()
    assert not store.has(sha(SECRET))
    assert files_holding(store.root, SECRET) == []
    assert files_holding(store.root, b"AKIAQGUARDTESTKEY123") == []
    assert store.get(sha(NOTES)) == NOTES


def test_fifos_and_sockets_never_block_the_walk_and_are_entries(ws, store, start_watcher):
    os.mkfifo(ws / "pipe")
    before = socket.socket(socket.AF_UNIX)
    before.bind(str(ws / "sock"))
    # A writer waiting on the FIFO: it would be let through if the watcher ever opened it.
    writer_done = threading.Event()

    def writer() -> None:
        with open(ws / "pipe", "wb") as f:
            f.write(b"x")
        writer_done.set()

    threading.Thread(target=writer, daemon=True).start()
    started = threading.Event()
    holder: list[tuple[WorkspaceWatcher, Recorder]] = []

    def run() -> None:
        holder.append(start_watcher())
        started.set()

    threading.Thread(target=run, daemon=True).start()
    assert started.wait(10), "the watcher's start blocked on a FIFO or socket"
    watcher, rec = holder[0]
    assert watcher.initial_scan_seconds < 5
    assert watcher.known_entry("pipe") == ("fifo", None)
    assert watcher.known_entry("sock") == ("socket", None)

    os.mkfifo(ws / "pipe2")
    after = socket.socket(socket.AF_UNIX)
    after.bind(str(ws / "sock2"))
    (ws / "plain.txt").write_bytes(b"plain")
    began = time.monotonic()
    rec.wait(lambda cs: {c.path for c in cs} >= {"pipe2", "sock2", "plain.txt"})
    assert watcher.rescan() == []
    assert time.monotonic() - began < 10
    assert sorted((c.path, c.kind, c.entry_type, c.after_sha, c.size) for c in rec.changes) == [
        ("pipe2", "created", "fifo", None, None),
        ("plain.txt", "created", "file", sha(b"plain"), 5),
        ("sock2", "created", "socket", None, None),
    ]
    # The FIFO was never opened: its writer is still waiting for a reader.
    assert not writer_done.is_set()
    fd = os.open(ws / "pipe", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert writer_done.wait(5)
    finally:
        os.close(fd)
        before.close()
        after.close()


def test_a_huge_directory_and_a_deep_tree_are_walked_within_bounds(
    ws, tmp_path, store, start_watcher
):
    (ws / "top.txt").write_bytes(b"top")
    (ws / "big").mkdir()
    for i in range(3000):
        (ws / "big" / f"f{i:05d}").write_bytes(b"")
    watcher, _ = start_watcher(max_entries=500)
    assert watcher.truncated == "stopped listing after 500 entries"
    assert watcher.known("top.txt") == (sha(b"top"), 3)
    assert watcher.known_hashes() == {sha(b"top"), sha(b"")}
    known_big = sum(watcher.known(f"big/f{i:05d}") is not None for i in range(3000))
    assert known_big == 500 - 2  # the root's two entries, then big/ up to the bound

    walk = wio.walk(ws, max_entries=100)
    assert len(list(walk)) == 100
    assert (walk.listed, walk.truncated) == (100, "stopped listing after 100 entries")
    report = secrets.scan_workspace(ws, ignore=[], max_bytes=1000, max_files=10_000, max_entries=50)
    assert report.truncated is True

    deep = tmp_path / "deep"  # a workspace of its own, made before it is watched
    level = deep
    for depth in range(70):
        level = level / "d"
        level.mkdir(parents=True)
        if depth == 9:
            (level / "shallow.txt").write_bytes(b"shallow")
    (level / "bottom.txt").write_bytes(b"bottom")
    deep_watcher = WorkspaceWatcher(deep, lambda changes: None, store=store)
    deep_watcher.start()
    try:
        assert deep_watcher.truncated == "did not enter folders more than 64 levels deep"
        assert deep_watcher.known("/".join(["d"] * 10) + "/shallow.txt") == (sha(b"shallow"), 7)
        assert deep_watcher.known("/".join(["d"] * 70) + "/bottom.txt") is None
    finally:
        deep_watcher.stop()


def test_a_flood_of_new_files_becomes_one_rescan_not_an_unbounded_queue(ws, start_watcher):
    watcher, rec = start_watcher(max_pending=50, debounce_seconds=0.5, max_delay_seconds=1.0)
    most_pending = 0
    for i in range(600):
        (ws / f"flood{i:04d}.txt").write_bytes(b"%d" % i)
        if i % 20 == 0:
            with watcher._cond:
                most_pending = max(most_pending, len(watcher._pending))
    rec.wait(lambda cs: len({c.path for c in cs}) >= 600, timeout=30)
    settle(watcher)
    assert most_pending <= 50
    assert sorted((c.path, c.kind) for c in rec.changes) == [
        (f"flood{i:04d}.txt", "created") for i in range(600)
    ]


def test_a_sparse_file_over_the_hash_limit_is_never_read(ws, start_watcher):
    watcher, rec = start_watcher(max_hash_bytes=1 << 20)
    began = time.monotonic()
    with open(ws / "sparse.bin", "wb") as f:
        f.truncate(64 << 30)  # 64 GiB of nothing
    rec.wait(lambda cs: any(c.path == "sparse.bin" for c in cs))
    with open(ws / "sparse.bin", "r+b") as f:
        f.truncate(65 << 30)
    rec.wait(lambda cs: len([c for c in cs if c.path == "sparse.bin"]) >= 2)
    assert time.monotonic() - began < 10
    assert [(c.kind, c.after_sha, c.size, c.after_stored) for c in rec.of("sparse.bin")] == [
        ("created", None, 64 << 30, False),
        ("modified", None, 65 << 30, False),
    ]


def test_the_tool_file_list_covers_what_the_issue_names():
    covered = {
        "__pycache__/json.cpython-311.pyc": "Python",
        "json.pyc": "Python",
        "sub/.git/config": "git",
        ".git": "git",
        "conftest.py": "pytest",
        "Makefile": "make, just",
        ".pre-commit-config.yaml": "pre-commit",
        ".vscode/tasks.json": "editors",
        ".envrc": "direnv",
        "setup.py": "pip",
        "pyproject.toml": "pytest, tox, pip",
        "noxfile.py": "nox",
        "tox.ini": "pytest, tox, pip",
        "sitecustomize.py": "Python",
        "usercustomize.py": "Python",
        "lib/x.pth": "Python",
        ".idea/workspace.xml": "editors",
        ".github/workflows/ci.yml": "CI",
        ".gitattributes": "git",
        ".gitmodules": "git",
        ".ipython/profile_default/startup/00-x.py": "IPython",
        ".jupyter/jupyter_server_config.py": "Jupyter",
    }
    assert {rel: getattr(tool_file(rel), "tool", None) for rel in covered} == covered
    assert [tool_file(rel) for rel in ("notes.txt", "exp.ipynb", ".gitignore", "a/.ssh/x")] == [
        None
    ] * 4
    assert all(rule.why and rule.patterns for rule in TOOL_FILES)


def test_the_secret_scan_reads_no_link_and_skips_git_and_bytecode_whatever_the_patterns(
    ws, tmp_path
):
    aws = fake_aws(tmp_path / "home")
    (ws / "d").symlink_to(aws, target_is_directory=True)
    (ws / "creds.txt").symlink_to(aws / "credentials.txt")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_bytes(SECRET)
    (ws / "__pycache__").mkdir()
    (ws / "__pycache__" / "m.cpython-311.pyc").write_bytes(SECRET)
    (ws / "visible.txt").write_text("nothing here\n")
    # What the server passes: the watcher's patterns, which no longer leave these out.
    report = secrets.scan_workspace(ws, ignore=[], max_bytes=1 << 20, max_files=100)
    assert (report.findings, report.files_scanned, report.truncated) == ([], 1, False)
    assert report.skipped == [
        secrets.SkippedFile("creds.txt", "symlink", "not followed"),
        secrets.SkippedFile("d", "symlink", "not followed"),
    ]
    assert secrets.scan_file(ws, "d/credentials.txt", max_bytes=1 << 20).skipped == [
        secrets.SkippedFile("d/credentials.txt", "symlink", "not followed")
    ]


def test_a_change_of_a_link_is_shown_as_what_is_there_never_its_content():
    change = {
        "path": "d",
        "kind": "modified",
        "before_entry_type": "file",
        "before_sha": sha(NOTES),
        "before_size": len(NOTES),
        "entry_type": "symlink",
        "link_target": "/home/u/.aws",
        "after_sha": None,
        "size": None,
    }
    assert entry_diff(change) == {
        "path": "d",
        "kind": "entry",
        "status": "modified",
        "before": {"entry_type": "file", "size": len(NOTES), "sha256": sha(NOTES)},
        "after": {"entry_type": "symlink", "link_target": "/home/u/.aws"},
        "truncated": False,
    }
    fifo = {"path": "p", "kind": "created", "before_entry_type": None, "entry_type": "fifo"}
    assert entry_diff(fifo)["after"] == {"entry_type": "fifo", "link_target": None}
    assert entry_diff(fifo)["status"] == "created"


# -- a real server: the feed, alerts and reverts ----------------------------------------------


async def changes(jp_fetch, path=None):
    r = await jp_fetch("qguard", "api", "changes", params={"since": "0"})
    rows = json.loads(r.body)["changes"]
    return [c for c in rows if path is None or c["path"] == path]


async def until(jp_fetch, predicate, timeout=15):
    """All recorded changes, once `predicate` holds for them."""

    async def found():
        rows = await changes(jp_fetch)
        return rows if predicate(rows) else None

    return await wait_for(found, timeout=timeout)


async def until_path(jp_fetch, path, n=1, timeout=15):
    """The recorded changes of `path`, once there are `n`."""

    async def found():
        rows = await changes(jp_fetch, path)
        return rows if len(rows) >= n else None

    return await wait_for(found, timeout=timeout)


class Events:
    """The server's websocket, read in the background."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen: list[dict] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.ws.read_message()
            if message is None:
                return
            self.seen.append(json.loads(message))

    async def wait(self, predicate, timeout=15) -> list[dict]:
        return await wait_for(lambda: predicate(self.seen) and self.seen, timeout=timeout)

    def of(self, type_: str, kind: str | None = None) -> list[dict]:
        return [
            e for e in self.seen if e["type"] == type_ and (kind is None or e.get("kind") == kind)
        ]

    def close(self) -> None:
        self.task.cancel()
        self.ws.close()


def change_events(events: Events, path: str) -> list[dict]:
    return [e["change"] for e in events.of("change") if e["change"]["path"] == path]


async def revert(jp_fetch, change_id):
    return await jp_fetch(
        "qguard",
        "api",
        "changes",
        str(change_id),
        "revert",
        method="POST",
        body="",
        raise_error=False,
    )


def refusal(rel: str, link: str) -> str:
    return (
        f"{rel} was not restored: {link} is now a symbolic link, and a revert never writes "
        "through a link; remove or rename the link, then revert again"
    )


async def test_the_folder_swap_in_the_server_copies_nothing_and_its_revert_is_refused(
    broker, jp_fetch, jp_ws_fetch, jp_root_dir, jp_home_dir, tmp_path
):
    aws = fake_aws(jp_home_dir)
    events = Events(await jp_ws_fetch("qguard", "api", "events"))
    (jp_root_dir / "d").mkdir()
    (jp_root_dir / "d" / "credentials.txt").write_bytes(NOTES)
    await until(jp_fetch, lambda rows: any(r["path"] == "d/credentials.txt" for r in rows))

    os.rename(jp_root_dir / "d", jp_root_dir / "d_old")
    os.symlink(aws, jp_root_dir / "d")
    rows = await until(
        jp_fetch, lambda rows: {"d", "d_old/credentials.txt"} <= {r["path"] for r in rows}
    )
    assert sorted((r["path"], r["kind"], r["after_sha"], r["size"]) for r in rows) == [
        ("d", "created", None, None),
        ("d/credentials.txt", "created", sha(NOTES), len(NOTES)),
        ("d/credentials.txt", "deleted", None, None),
        ("d_old/credentials.txt", "created", sha(NOTES), len(NOTES)),
    ]
    await events.wait(lambda seen: change_events(events, "d"))
    [link] = change_events(events, "d")
    assert (link["entry_type"], link["link_target"]) == ("symlink", str(aws))
    r = await jp_fetch("qguard", "api", "changes", str(link["id"]))
    # What the link is, by its text; nothing read through it.
    diff = json.loads(r.body)["diff"]
    assert (diff["kind"], diff["status"], diff["before"], diff["after"]) == (
        "entry",
        "created",
        None,
        {"entry_type": "symlink", "link_target": str(aws)},
    )
    # The state dir (snapshots, database, audit log) holds no byte of the secret.
    state = tmp_path / "qguard-state"
    assert files_holding(state, b"AKIAQGUARDTESTKEY123") == []
    assert files_holding(state, b"s3cr3t") == []

    [deleted] = [r for r in rows if r["path"] == "d/credentials.txt" and r["kind"] == "deleted"]
    r = await revert(jp_fetch, deleted["id"])
    assert r.code == 409
    assert json.loads(r.body)["message"] == refusal("d/credentials.txt", "d")
    assert (aws / "credentials.txt").read_bytes() == SECRET
    assert sorted(p.name for p in aws.iterdir()) == ["config", "credentials.txt"]
    assert files_holding(jp_root_dir, b"AKIAQGUARDTESTKEY123") == []

    # Undoing the link's creation removes the link, never its target.
    r = await revert(jp_fetch, link["id"])
    assert r.code == 200
    assert not os.path.lexists(jp_root_dir / "d")
    assert (aws / "credentials.txt").read_bytes() == SECRET
    # With a real folder back in its place, the deletion reverts.
    (jp_root_dir / "d").mkdir()
    r = await revert(jp_fetch, deleted["id"])
    assert r.code == 200
    assert (jp_root_dir / "d" / "credentials.txt").read_bytes() == NOTES

    # A file replaced by a link: the revert puts the file back in the link's place (the link
    # removed, its target untouched).
    (jp_root_dir / "x.py").write_bytes(b"print('mine')\n")
    await until_path(jp_fetch, "x.py")
    (jp_root_dir / "x.py").unlink()
    os.symlink(aws / "credentials.txt", jp_root_dir / "x.py")
    rows = await until_path(jp_fetch, "x.py", n=2)
    swapped = rows[1]
    assert (swapped["kind"], swapped["before_sha"], swapped["after_sha"]) == (
        "modified",
        sha(b"print('mine')\n"),
        None,
    )
    r = await revert(jp_fetch, swapped["id"])
    assert r.code == 200
    assert not os.path.islink(jp_root_dir / "x.py")
    assert (jp_root_dir / "x.py").read_bytes() == b"print('mine')\n"
    assert (aws / "credentials.txt").read_bytes() == SECRET
    assert files_holding(tmp_path / "qguard-state", b"s3cr3t") == []
    events.close()


async def test_a_revert_racing_a_parent_swap_never_writes_outside(
    broker, jp_fetch, jp_root_dir, jp_home_dir, monkeypatch
):
    aws = fake_aws(jp_home_dir)
    (jp_root_dir / "d").mkdir()
    (jp_root_dir / "d" / "credentials.txt").write_bytes(NOTES)
    await until(jp_fetch, lambda rows: any(r["path"] == "d/credentials.txt" for r in rows))
    (jp_root_dir / "d" / "credentials.txt").unlink()
    rows = await until(jp_fetch, lambda rows: any(r["kind"] == "deleted" for r in rows))
    [deleted] = [r for r in rows if r["kind"] == "deleted"]
    tracker = broker.tracker

    def swap(folder: str) -> None:
        os.rename(jp_root_dir / "d", jp_root_dir / folder)
        os.symlink(aws, jp_root_dir / "d")

    # 1. The folder is swapped right after the revert checked it: the write refuses.
    checked = tracker._blocked_parent
    calls = []

    def check_then_swap(rel):
        calls.append(rel)
        answer = checked(rel)
        if len(calls) == 1:
            assert answer is None  # a real folder when checked
            swap("d_first")
        return answer

    monkeypatch.setattr(tracker, "_blocked_parent", check_then_swap)
    r = await revert(jp_fetch, deleted["id"])
    assert r.code == 409
    assert json.loads(r.body)["message"] == refusal("d/credentials.txt", "d")
    assert (aws / "credentials.txt").read_bytes() == SECRET
    assert sorted(p.name for p in aws.iterdir()) == ["config", "credentials.txt"]
    assert list((jp_root_dir / "d_first").iterdir()) == []
    monkeypatch.setattr(tracker, "_blocked_parent", checked)

    # 2. Swapped after the write opened the folder: the file lands in that (real, renamed)
    # folder through its descriptor, never in the link's target.
    os.unlink(jp_root_dir / "d")
    os.rename(jp_root_dir / "d_first", jp_root_dir / "d")
    opened = wio._open_parent

    def open_then_swap(rfd, parent, rel, *, create):
        fd = opened(rfd, parent, rel, create=create)
        swap("d_second")
        return fd

    monkeypatch.setattr(wio, "_open_parent", open_then_swap)
    r = await revert(jp_fetch, deleted["id"])
    monkeypatch.setattr(wio, "_open_parent", opened)
    assert r.code == 200
    assert (jp_root_dir / "d_second" / "credentials.txt").read_bytes() == NOTES
    assert os.path.islink(jp_root_dir / "d")
    assert (aws / "credentials.txt").read_bytes() == SECRET
    assert sorted(p.name for p in aws.iterdir()) == ["config", "credentials.txt"]


async def test_agent_written_bytecode_is_a_change_with_an_alert(
    start_kernel, broker, jp_fetch, jp_ws_fetch, jp_root_dir
):
    events = Events(await jp_ws_fetch("qguard", "api", "events"))
    k = await start_kernel()
    res = await k.run(
        "import os\n"
        "os.makedirs('__pycache__', exist_ok=True)\n"
        "open('__pycache__/json.cpython-311.pyc', 'wb').write(b'\\xa7\\r\\r\\nplanted')\n"
        "open('json.pyc', 'wb').write(b'\\xa7\\r\\r\\nplanted too')\n"
    )
    assert res["error"] is None, res
    paths = {"__pycache__/json.cpython-311.pyc", "json.pyc"}
    rows = await until(jp_fetch, lambda rows: paths <= {r["path"] for r in rows})
    assert sorted((r["path"], r["kind"], r["actor"]) for r in rows if r["path"] in paths) == [
        ("__pycache__/json.cpython-311.pyc", "created", f"kernel:{k.id}"),
        ("json.pyc", "created", f"kernel:{k.id}"),
    ]
    await events.wait(lambda seen: len(events.of("alert", "tool_file")) >= 2)
    alerts = sorted(events.of("alert", "tool_file"), key=lambda e: e["path"])
    by_path = {r["path"]: r for r in rows}
    assert [(a["path"], a["change"], a["actor"], a["tool"], a["message"]) for a in alerts] == [
        (
            "__pycache__/json.cpython-311.pyc",
            by_path["__pycache__/json.cpython-311.pyc"]["id"],
            f"kernel:{k.id}",
            "Python",
            f"agent kernel wrote __pycache__/json.cpython-311.pyc: {BYTECODE_WHY}",
        ),
        (
            "json.pyc",
            by_path["json.pyc"]["id"],
            f"kernel:{k.id}",
            "Python",
            f"agent kernel wrote json.pyc: {BYTECODE_WHY}",
        ),
    ]
    # The person's own bytecode is a change too, without an alert.
    await asyncio.sleep(1.5)
    (jp_root_dir / "mine.pyc").write_bytes(b"person")
    [mine] = await until_path(jp_fetch, "mine.pyc")
    assert (mine["kind"], mine["actor"]) == ("created", f"user:{broker.user}")
    await asyncio.sleep(0.5)
    assert sorted(a["path"] for a in events.of("alert", "tool_file")) == sorted(paths)
    events.close()


async def test_a_new_git_dir_while_an_agent_runs_is_a_change_with_an_alert(
    start_kernel, broker, jp_fetch, jp_ws_fetch, jp_root_dir, jp_serverapp
):
    # Agent kernels may be kept from creating `.git` at all (the sandbox's job); the feed must
    # flag one that appears while an agent kernel executes, whoever wrote it.
    events = Events(await jp_ws_fetch("qguard", "api", "events"))
    k = await start_kernel()
    cell = asyncio.ensure_future(k.run("import time; time.sleep(4)"))
    km = jp_serverapp.kernel_manager.get_kernel(k.id)
    await wait_for(lambda: km.execution_state == "busy", timeout=10)
    (jp_root_dir / "sub" / ".git").mkdir(parents=True)
    (jp_root_dir / "sub" / ".git" / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
    [row] = await until_path(jp_fetch, "sub/.git/config")
    assert (row["kind"], row["actor"]) == ("created", f"kernel:{k.id}")
    await events.wait(lambda seen: events.of("alert", "tool_file"))
    [alert] = events.of("alert", "tool_file")
    assert (alert["path"], alert["change"], alert["tool"], alert["message"]) == (
        "sub/.git/config",
        row["id"],
        "git",
        f"agent kernel wrote sub/.git/config: {GIT_WHY}",
    )
    assert (await cell)["error"] is None
    # `git init` by an agent writes dozens of such files at once: twenty alerts from one
    # batch, then one naming the rest.
    rows = [
        {"id": 1000 + i, "path": f"r/.git/f{i:02d}", "kind": "created", "actor": f"kernel:{k.id}"}
        for i in range(25)
    ]
    broker.tracker._alert_tool_files([{**r, "kernels": [k.id]} for r in rows])
    await events.wait(lambda seen: len(events.of("alert", "tool_file")) >= 1 + 21)
    batch = events.of("alert", "tool_file")[1:]
    assert [a.get("path") for a in batch] == [f"r/.git/f{i:02d}" for i in range(20)] + [None]
    assert batch[-1]["paths"] == [f"r/.git/f{i:02d}" for i in range(20, 25)]
    assert batch[-1]["message"] == (
        "agent kernel changed 5 more files that the person's own tools run, among them "
        "r/.git/f20, r/.git/f21, r/.git/f22, r/.git/f23, r/.git/f24"
    )
    events.close()


async def test_fifos_and_sockets_are_in_the_feed_as_not_regular(
    broker, jp_fetch, jp_ws_fetch, jp_root_dir
):
    events = Events(await jp_ws_fetch("qguard", "api", "events"))
    os.mkfifo(jp_root_dir / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(jp_root_dir / "sock"))
    try:
        rows = await until(jp_fetch, lambda rows: {"pipe", "sock"} <= {r["path"] for r in rows})
        assert sorted((r["path"], r["kind"], r["after_sha"], r["size"]) for r in rows) == [
            ("pipe", "created", None, None),
            ("sock", "created", None, None),
        ]
        await events.wait(
            lambda seen: change_events(events, "pipe") and change_events(events, "sock")
        )
        assert [
            (c["path"], c["entry_type"], c["before_entry_type"])
            for c in change_events(events, "pipe") + change_events(events, "sock")
        ] == [("pipe", "fifo", None), ("sock", "socket", None)]
        assert stat.S_ISFIFO(os.lstat(jp_root_dir / "pipe").st_mode)
    finally:
        sock.close()
        events.close()
