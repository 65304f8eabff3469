"""Whether agent kernels' writes are filling the disk the audit log needs.

The audit log refuses new jobs, approvals and submissions while its own filesystem has less
than `audit_min_free_bytes` free (audit/log.py). When the workspace is on that filesystem
too, an agent kernel writing into the workspace takes that room. Each time agent kernels add
bytes to the workspace, the tracker asks `DiskWatch.check`:

- `low`: the room above the reserve is less than what those kernels may still write under
  their write budget (or there is no budget): the budget alone will not keep the audit log
  writable. The person is told (an alert) once, until the room grows again.
- `stop`: less than twice the reserve is free: the kernels that were adding bytes are
  stopped, before the reserve itself is reached, and the person is told.
- `full`: below the reserve: the audit log now refuses what it must record first.

On different filesystems the workspace cannot fill the audit log's, and nothing is said
(the refusals say why if that disk fills for another reason).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .budget import size_text

RESERVE_SETTING = "QGuardApp.audit_min_free_bytes"
LEVELS = ("ok", "low", "stop", "full")


@dataclass(frozen=True)
class DiskFinding:
    level: str  # one of LEVELS but "ok"
    free: int
    reserve: int
    audit_dir: str
    kernels: tuple[str, ...]  # the kernels whose writes were seen adding bytes
    rose: bool = True  # the level is higher than at the last check

    @property
    def message(self) -> str:
        where = f"the disk that holds the audit log ({self.audit_dir}) and the workspace"
        who = ", ".join(f"agent kernel {k}" for k in self.kernels)
        if self.level == "low":
            return (
                f"{where} has {size_text(self.free)} free, {size_text(self.reserve)} of it the "
                f"audit log's reserve ({RESERVE_SETTING}), and {who} may still write more than "
                "the rest: below the reserve, new jobs, approvals and submissions are refused"
            )
        if self.level == "stop":
            return (
                f"{where} has {size_text(self.free)} free, less than twice the "
                f"{size_text(self.reserve)} the audit log keeps in reserve ({RESERVE_SETTING}): "
                f"{who} was stopped, its files are still there; delete what is not needed"
            )
        return (
            f"{where} has {size_text(self.free)} free, less than the {size_text(self.reserve)} "
            f"the audit log keeps in reserve ({RESERVE_SETTING}): new jobs, approvals and "
            f"submissions are refused until space is freed; {who} was stopped"
        )

    def stop_reason(self, kernel_id: str) -> str:
        """Why `kernel_id` was stopped; the same sentence whatever the figures were."""
        return (
            f"agent kernel {kernel_id} was stopped: its writes were filling the disk that holds "
            f"the audit log, which has less than twice the {size_text(self.reserve)} it keeps "
            f"in reserve ({RESERVE_SETTING}) free; the files it wrote are still there"
        )


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free space for an unprivileged writer on the filesystem of `path` itself."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskWatch:
    """Levels of the audit log's disk as agent kernels write; reports each rise once."""

    def __init__(self, audit_dir: str | os.PathLike[str], reserve: int, workspace: str) -> None:
        self.audit_dir = str(Path(audit_dir))
        self.reserve = reserve
        self.workspace = workspace
        self.level = "ok"

    def shared(self) -> bool:
        """Whether the workspace is on the audit log's filesystem."""
        try:
            return os.stat(self.workspace).st_dev == os.stat(self.audit_dir).st_dev
        except OSError:
            return False

    def check(self, grew: dict[str, int], remaining: dict[str, int | None]) -> DiskFinding | None:
        """After `grew` (kernel -> bytes it just added): a finding when the level rose (or is
        `stop`/`full` with kernels still adding: each of them is to be stopped)."""
        if not grew or not self.reserve or not self.shared():
            return None
        try:
            free = free_bytes(self.audit_dir)
        except OSError:
            return None
        room = free - self.reserve
        if free < self.reserve:
            level = "full"
        elif room < self.reserve:
            level = "stop"
        else:
            may_write = [remaining.get(k) for k in grew]
            unbounded = any(r is None for r in may_write)
            level = "low" if unbounded or room < max(r or 0 for r in may_write) else "ok"
        rose = LEVELS.index(level) > LEVELS.index(self.level)
        self.level = level
        if level == "ok" or not (rose or level in ("stop", "full")):
            return None
        return DiskFinding(level, free, self.reserve, self.audit_dir, tuple(sorted(grew)), rose)
