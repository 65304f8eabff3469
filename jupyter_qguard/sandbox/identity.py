"""Never root: a root server's kernel becomes a uid of its own, with no capabilities left."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# Kernel uids for a root server: one per kernel, from a range no account uses, so kernels
# cannot reach each other through the uid they share either.
UID_BASE = 2_100_000_000
UID_SPAN = 1_000_000


def uid_for_kernel(kernel_id: str) -> int:
    return UID_BASE + int(kernel_id.replace("-", "")[:8], 16) % UID_SPAN


def give_dir_to(path: str, uid: int, gid: int) -> None:
    """The kernel's own directory (never the user's files) becomes the kernel uid's."""
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)


def drop_to(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise OSError("still root after setresuid")


def status_line(name: str) -> str:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def remove_if_orphaned(path: str, pid: int) -> bool:
    """Remove `path`, a directory named after the process `pid` that made it (a server's
    kernel dir, an `agent run`'s run dir), when that process is gone and the directory is
    ours: owned by this user or, for root, by one of the uids kernels and runs get. True if
    removed."""
    try:
        owner = os.lstat(path).st_uid
    except OSError:
        return False
    ours = owner == os.geteuid() or (os.geteuid() == 0 and UID_BASE <= owner < UID_BASE + UID_SPAN)
    if not ours or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
        return False  # it still runs
    except ProcessLookupError:
        pass
    except PermissionError:
        return False  # alive, another user's
    shutil.rmtree(path, ignore_errors=True)
    return True
