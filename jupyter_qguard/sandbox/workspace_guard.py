"""The workspace as the launcher finds it at kernel start, and what it fixes in place there.

Runs before privilege ends (as root, for a root server), in the kernel's new mount namespace,
while another agent kernel may be changing the same tree: so the tree is walked through
descriptors opened without following any symlink (`syscalls.open_beneath`), and every mount is
attached to the very file the walk opened (`move_mount` onto an fd), never to a path resolved
again later.

- the walk (`scan_workspace`): bounded, breadth first, finds every `.git` (directory, `gitdir:`
  file or link) and the entries matching the manifest's hide patterns;
- `protect_git`: each `.git`, and what its `gitdir:`/`commondir` names inside the workspace,
  bound read-only (EROFS), and it and every folder above it up to the workspace bound onto
  themselves, so none can be renamed, replaced or removed (EBUSY). A brand-new `.git` made
  later cannot be stopped here (Landlock and seccomp do not see names): the watcher flags it;
- `hide`: entries matching the manifest's read `deny` patterns covered by empty, mode-0,
  read-only stand-ins (EACCES).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import re
import stat
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import syscalls as sc
from .spec import GIT_NAME

# The walk at kernel start visits at most this many directories, breadth first (so the top of
# the tree, where repositories usually are, always comes first). A workspace with more is
# walked in part: the report says so, `.git` beyond the limit is left unprotected, and a kernel
# with hide patterns does not start (what it must hide may lie beyond).
WALK_DIR_LIMIT = 20_000
# The sandbox report travels over the channel as one line (capped at 64 KiB): long lists are
# cut to their first entries, with the full count beside them.
REPORT_LIST_LIMIT = 50
# File systems whose directory link count is 2 + its subdirectories (ext2/3/4, xfs, tmpfs): a
# directory there with st_nlink == 2 has none, and its names alone (listdir, no per-entry
# types) tell the walk all it needs. Elsewhere (btrfs, overlayfs, network and FUSE file
# systems, where the count means something else) every directory is read entry by entry.
SUBDIR_COUNTING_FS = {0xEF53, 0x58465342, 0x01021994}
# `.git` files and `commondir` hold one path; anything longer is not git's.
SMALL_FILE = 4096
WORKSPACE_ATTRS = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
READ_ONLY_ATTRS = sc.MOUNT_ATTR_RDONLY | WORKSPACE_ATTRS
HIDDEN_ATTRS = READ_ONLY_ATTRS | sc.MOUNT_ATTR_NOEXEC


def listed(items: list[str]) -> dict[str, Any]:
    return {"count": len(items), "paths": items[:REPORT_LIST_LIMIT]}


# -- the walk ------------------------------------------------------------------------------


@dataclass
class WorkspaceScan:
    """What the walk at kernel start found, as workspace-relative posix paths."""

    git: list[str] = field(default_factory=list)  # `.git` directories and files
    git_links: list[str] = field(default_factory=list)  # `.git` symbolic links
    hidden: list[str] = field(default_factory=list)  # entries matching a hide pattern
    hidden_links: list[str] = field(default_factory=list)  # ... that are symbolic links
    links: dict[str, str] = field(default_factory=dict)  # those links' targets
    dirs: int = 0
    unreadable: int = 0
    complete: bool = True
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "dirs": self.dirs,
            "limit": WALK_DIR_LIMIT,
            "complete": self.complete,
            "unreadable": self.unreadable,
            "seconds": round(self.seconds, 4),
        }


def hide_matcher(patterns: list[str]) -> re.Pattern[str] | None:
    """The manifest's patterns as one regex over workspace-relative posix paths: fnmatchcase
    semantics, where `*` matches `/` too (as the manifest's own checks do)."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def scan_workspace(
    ws_fd: int, hide_patterns: list[str], limit: int = WALK_DIR_LIMIT
) -> WorkspaceScan:
    """Breadth-first walk of the workspace, bounded by `limit` directories, that never follows
    a symlink (each directory is opened by openat2 beneath the workspace, no symlinks on the
    way) and does not descend into `.git` or into what it will hide."""
    t0 = time.perf_counter()
    scan = WorkspaceScan()
    match = hide_matcher(hide_patterns)
    queue: deque[str] = deque([""])
    counts_subdirs: dict[int, bool] = {}  # st_dev -> its link counts can be trusted
    while queue:
        if scan.dirs >= limit:
            scan.complete = False
            break
        rel = queue.popleft()
        try:
            fd = sc.open_beneath(ws_fd, rel, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            scan.unreadable += 1  # gone, replaced, or unreadable even to us: nothing to follow
            continue
        scan.dirs += 1
        try:
            st = os.fstat(fd)
            if st.st_nlink == 2 and st.st_dev not in counts_subdirs:
                counts_subdirs[st.st_dev] = sc.fs_type(fd) in SUBDIR_COUNTING_FS
            if st.st_nlink == 2 and counts_subdirs[st.st_dev]:
                _scan_leaf(scan, fd, rel, os.listdir(fd), match)
            else:
                with os.scandir(fd) as entries:
                    if match is None:
                        _scan_plain(scan, queue, fd, rel, entries)
                    else:
                        _scan_matching(scan, queue, fd, rel, entries, match)
        except OSError:
            scan.unreadable += 1
        finally:
            os.close(fd)
    scan.seconds = time.perf_counter() - t0
    return scan


# The walk's hot path, one loop for each case. Most directories are leaves (files only): their
# names come in one listdir() and, without hide patterns, a single `in` finds a `.git`
# there. Elsewhere only `.git` and folders matter, and no path is built for a plain file.


def _scan_leaf(
    scan: WorkspaceScan, fd: int, rel: str, names: list[str], match: re.Pattern[str] | None
) -> None:
    prefix = f"{rel}/" if rel else ""
    if match is None:
        if GIT_NAME in names:
            child = prefix + GIT_NAME
            _found(scan.git, scan.git_links, scan, fd, child, GIT_NAME, _is_link(fd, GIT_NAME))
        return
    fullmatch = match.fullmatch
    for name in names:
        child = prefix + name
        if fullmatch(child):
            _found(scan.hidden, scan.hidden_links, scan, fd, child, name, _is_link(fd, name))
        elif name == GIT_NAME:
            _found(scan.git, scan.git_links, scan, fd, child, name, _is_link(fd, name))


def _is_link(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _found(
    entries: list[str],
    links: list[str],
    scan: WorkspaceScan,
    fd: int,
    child: str,
    name: str,
    is_link: bool,
) -> None:
    """Record a found `.git` or hidden entry: a link (with its text) apart from the rest."""
    if is_link:
        links.append(child)
        scan.links[child] = _readlink(fd, name)
    else:
        entries.append(child)


def _scan_plain(scan: WorkspaceScan, queue: deque[str], fd: int, rel: str, entries: Any) -> None:
    prefix = f"{rel}/" if rel else ""
    for entry in entries:
        name = entry.name
        if name == GIT_NAME:
            _found(scan.git, scan.git_links, scan, fd, prefix + name, name, entry.is_symlink())
        elif entry.is_dir(follow_symlinks=False):
            queue.append(prefix + name)


def _scan_matching(
    scan: WorkspaceScan,
    queue: deque[str],
    fd: int,
    rel: str,
    entries: Any,
    match: re.Pattern[str],
) -> None:
    prefix = f"{rel}/" if rel else ""
    fullmatch = match.fullmatch
    for entry in entries:
        name = entry.name
        child = prefix + name
        if fullmatch(child):
            _found(scan.hidden, scan.hidden_links, scan, fd, child, name, entry.is_symlink())
        elif name == GIT_NAME:
            _found(scan.git, scan.git_links, scan, fd, child, name, entry.is_symlink())
        elif entry.is_dir(follow_symlinks=False):
            queue.append(child)


def _readlink(dir_fd: int, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return ""


def inside(workspace: str, rel_dir: str, target: str) -> str | None:
    """`target`, as written in a file (or link) of the directory `rel_dir`, as a
    workspace-relative path; None when it lies outside the workspace (Landlock keeps the
    kernel out of there anyway), "" for the workspace itself. Lexical: what it names is then
    opened without following symlinks, so a link on the way makes it fail, not escape."""
    if not target:
        return None
    if target.startswith("/"):
        t = posixpath.normpath(target)
        if t == workspace:
            return ""
        return t[len(workspace) + 1 :] if t.startswith(workspace + "/") else None
    t = posixpath.normpath(posixpath.join(rel_dir, target))
    if t == ".":
        return ""
    return None if t == ".." or t.startswith("../") else t


def _read_small(ws_fd: int, rel: str) -> str:
    """A small regular file of the workspace, or "" (never blocks: O_NONBLOCK and regular
    files only, so a FIFO named `commondir` stalls nothing)."""
    try:
        fd = sc.open_beneath(ws_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, SMALL_FILE).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _minimal(paths: set[str]) -> list[str]:
    """Drop every path that lies inside another one of the set."""
    out: list[str] = []
    for p in sorted(paths):
        if not any(p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def git_targets(workspace: str, ws_fd: int, scan: WorkspaceScan) -> list[str]:
    """Everything git would read as a repository: each `.git` the walk found, and, inside the
    workspace, what a `gitdir:` file or a `.git` link points to and each such directory's
    `commondir` (a submodule's, a worktree's or a `--separate-git-dir` repository's real
    git directory may sit anywhere)."""
    found: set[str] = set(scan.git)
    gitdirs: set[str] = set()
    for rel in scan.git:
        text = _read_small(ws_fd, rel)
        if not text:
            gitdirs.add(rel)  # a directory (or an empty file)
            continue
        for line in text.splitlines():
            if line.startswith("gitdir:"):
                t = inside(workspace, posixpath.dirname(rel), line[len("gitdir:") :].strip())
                if t is not None:
                    found.add(t)
                    gitdirs.add(t)
    for rel in scan.git_links:
        t = inside(workspace, posixpath.dirname(rel), scan.links.get(rel, ""))
        if t is not None:
            found.add(t)
            gitdirs.add(t)
    for d in list(gitdirs):
        text = _read_small(ws_fd, f"{d}/commondir").strip()
        t = inside(workspace, d, text) if text else None
        if t is not None:
            found.add(t)
    # Never the workspace itself: a file inside it does not get to make all of it read-only.
    found.discard("")
    return _minimal(found)


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def bind_onto_itself(ws_fd: int, rel: str, attrs: int) -> bool:
    """Make `rel` a mount point: a recursive bind of itself with `attrs`, attached to the very
    file the no-symlink walk opened. False when it is not there (or is a link)."""
    try:
        target = sc.open_beneath(ws_fd, rel, os.O_PATH)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EXDEV):  # a symlink on the way, or out of the tree
            return False
        raise
    try:
        flags = sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE | sc.AT_EMPTY_PATH
        tree = sc.open_tree("", flags, dirfd=target)
        try:
            sc.mount_setattr(tree, attrs, recursive=True)
            sc.move_mount_onto(tree, target, rel)
        finally:
            os.close(tree)
    finally:
        os.close(target)
    return True


def protect_git(workspace: str, ws_fd: int, scan: WorkspaceScan) -> dict[str, Any]:
    """Every repository of the workspace, read-only to the kernel and fixed in place.

    Each git directory (and `gitdir:` file) is bound read-only onto itself, recursively:
    writing `commondir`, `info/*`, `modules/*`, `hooks/*`, `config` gives EROFS, and since it
    is a mount point, renaming, removing or replacing it gives EBUSY. A mount moves with its
    parent, though (renaming an ancestor of a mount point succeeds, seen on Linux 6.18): so
    the folder holding each `.git` (the working tree) and every folder above it, up to the
    workspace root, is bound onto itself too (writable, so ordinary work goes on; only moves
    across those mounts now fail, with EXDEV), and none of them can be renamed away to slip a
    new `.git` in at the old path (EBUSY).

    What this cannot stop: a brand-new `.git` created in some other folder (Landlock and
    seccomp have no rule for "a directory of this name"); the watcher flags it with an alert.
    A `.git` that is a symbolic link cannot itself be bound: what it points to (inside the
    workspace) is, but the link can be replaced, which is a new `.git` again.
    """
    targets = git_targets(workspace, ws_fd, scan)
    ancestors = sorted(
        {a for t in targets for a in _ancestors(t)} - set(targets),
        key=lambda a: (a.count("/"), a),
    )
    fixed, bound, failed = [], [], []
    # Shallow first, and all folders before the read-only binds: a later bind of a folder
    # copies (AT_RECURSIVE) what is already mounted below it, and nothing is left underneath.
    for rel, attrs, out in (
        *((a, WORKSPACE_ATTRS, fixed) for a in ancestors),
        *((t, READ_ONLY_ATTRS, bound) for t in targets),
    ):
        try:
            if bind_onto_itself(ws_fd, rel, attrs):
                out.append(rel)
        except OSError as exc:
            failed.append(f"{rel}: {exc.strerror or exc}")
    return {
        "read_only": listed(bound),
        "fixed_folders": listed(fixed),
        "links": scan.git_links[:REPORT_LIST_LIMIT],
        "failed": failed[:REPORT_LIST_LIMIT],
        "complete": scan.complete,
    }


def hide(workspace: str, ws_fd: int, scan: WorkspaceScan) -> dict[str, Any]:
    """Hide each existing match of the manifest's read `deny` patterns from the kernel.

    A directory is covered by an empty, read-only, mode-0 directory, a file by an empty,
    read-only, mode-000 file; both come from a private tmpfs that only these binds keep alive.
    The kernel holds no capability, so open() there is EACCES; the mounts are read-only, so it
    cannot chmod them back (EROFS); they are mount points, so it cannot rename or remove them
    (EBUSY). A matching symlink hides what it points to inside the workspace. Files created
    later, or other hard links to a hidden file, are not covered (Landlock has no globs).
    """
    wanted = list(scan.hidden)
    for rel in scan.hidden_links:
        t = inside(workspace, posixpath.dirname(rel), scan.links.get(rel, ""))
        if t:
            wanted.append(t)
    done, failed = [], []
    # Not in the kernel's own directory: a root server's kernel owns it, and a path it could
    # have prepared before a restart (a link where the stage should go) is no place for a
    # mount made as root. A fresh, unguessable directory in the sticky /tmp is.
    stage = tempfile.mkdtemp(prefix="qg-hide-", dir="/tmp")
    try:
        sc.mount(
            "tmpfs", stage, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=0700,size=16k"
        )
        try:
            os.close(os.open(f"{stage}/file", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0))
            os.chmod(f"{stage}/file", 0)
            os.mkdir(f"{stage}/dir", 0)
            os.chmod(f"{stage}/dir", 0)
            for rel in wanted:
                try:
                    target = sc.open_beneath(ws_fd, rel, os.O_PATH)
                except FileNotFoundError:
                    continue  # gone since the walk: nothing left to hide
                except OSError as exc:
                    failed.append(f"{rel}: {exc.strerror or exc}")
                    continue
                try:
                    kind = "dir" if stat.S_ISDIR(os.fstat(target).st_mode) else "file"
                    empty = sc.open_tree(
                        f"{stage}/{kind}", sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC
                    )
                    try:
                        sc.mount_setattr(empty, HIDDEN_ATTRS)
                        sc.move_mount_onto(empty, target, rel)
                    finally:
                        os.close(empty)
                    done.append(rel)
                except OSError as exc:
                    failed.append(f"{rel}: {exc.strerror or exc}")
                finally:
                    os.close(target)
        finally:
            sc.umount2(stage, sc.MNT_DETACH)
    finally:
        os.rmdir(stage)
    return {
        **listed(sorted(done)),
        "failed": failed[:REPORT_LIST_LIMIT],
        "failed_count": len(failed),
        "complete": scan.complete,
    }
