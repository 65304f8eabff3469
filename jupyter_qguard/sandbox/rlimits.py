"""rlimits of the agent kernel: memory, CPU time, processes, file size, open files."""

from __future__ import annotations

import os
import resource
from typing import Any

NAMES = {
    "memory": resource.RLIMIT_AS,
    "cpu_seconds": resource.RLIMIT_CPU,
    "processes": resource.RLIMIT_NPROC,
    "file_size": resource.RLIMIT_FSIZE,
    "open_files": resource.RLIMIT_NOFILE,
}


def defaults() -> dict[str, int]:
    """Half the machine's memory, 256 processes, 8 GiB files, 4096 files, no CPU cap.
    (0 means: leave as it is.)"""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 16 << 30
    return {
        "memory": total // 2,
        "cpu_seconds": 0,
        "processes": 256,
        "file_size": 8 << 30,
        "open_files": 4096,
    }


def apply(limits: dict[str, int]) -> dict[str, Any]:
    applied = {}
    for name, value in limits.items():
        if not value:
            continue
        which = NAMES[name]
        soft, hard = resource.getrlimit(which)
        if name == "processes" and os.getuid() != 0:
            # RLIMIT_NPROC counts every process of the uid (outside a user namespace: the
            # person's whole session too), so the cap is on top of what already runs.
            value += _processes_of_uid()
        new = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (new, new))
        applied[name] = new
    return {"active": bool(applied), **applied}


def _processes_of_uid() -> int:
    uid, n = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n
