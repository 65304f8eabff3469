"""How much each agent kernel has added to the workspace, and when that passes its budget.

The count is what the change feed attributes to the kernel (tracker.py): a file it created
counts its size, a file it grew or shrank the difference, a file it deleted takes its size
off; a move is a deletion and a creation, so it counts nothing. Deleting what others wrote
gives no credit: the count never goes below zero, so an agent cannot delete the person's
files to write that much more of its own. Every kernel a change is attributed to is charged
(when two agent kernels were busy, both: the agent is named when in doubt).

What this bounds, and what it does not: it is the kernel's net addition to the workspace as
the watcher sees it, after the fact (a file written without pause is seen at most
`max_delay_seconds`, 2 s, after its burst began, plus the time to hash it), so a kernel stops
a little past its budget, never long after; files written before the stop stay (the person
decides what to delete). Per kernel: a new kernel has a budget of its own. RLIMIT_FSIZE
(`kernel_rlimits.file_size`) is the bound the kernel's own writes meet at once (EFBIG, per
file), which this is not; this is the bound across files, which RLIMIT_FSIZE is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SETTING = "QGuardApp.kernel_write_budget_bytes"


@dataclass(frozen=True)
class Overrun:
    kernel_id: str
    added: int  # bytes the kernel has added, as counted when it was found past the budget
    budget: int
    paths: tuple[str, ...]  # the files of the changes that took it past, largest first (a few)

    @property
    def reason(self) -> str:
        """The sentence the person reads; the same whatever the figures were when seen."""
        return (
            f"agent kernel {self.kernel_id} was stopped: its writes added more than "
            f"{size_text(self.budget)} to the workspace, its write budget ({SETTING}); "
            "the files it wrote are still there"
        )


def size_text(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def row_delta(row: dict[str, Any]) -> int:
    """Bytes a recorded change added to the workspace (negative: it freed them)."""
    after = int(row.get("size") or 0) if row.get("entry_type") == "file" else 0
    before = int(row.get("before_size") or 0) if row.get("before_entry_type") == "file" else 0
    return after - before


def charged_kernels(row: dict[str, Any]) -> list[str]:
    """The agent kernels a change counts against: those it was attributed to. A change the
    server wrote for an agent token (`agent:`) or a person's (or a revert) counts for none."""
    if not str(row.get("actor", "")).startswith("kernel:"):
        return []
    return list(row.get("kernels") or [])


class WriteBudget:
    """Per agent kernel: bytes added (never below zero) and whether it passed `budget`
    (0: no budget). Used on the event loop only."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._added: dict[str, int] = {}
        self._over: set[str] = set()

    def added(self, kernel_id: str) -> int:
        return self._added.get(kernel_id, 0)

    def remaining(self, kernel_id: str) -> int | None:
        """What the kernel may still add (None: no budget)."""
        if not self.budget:
            return None
        return max(self.budget - self.added(kernel_id), 0)

    def charge(self, rows: Iterable[dict[str, Any]]) -> list[Overrun]:
        """Count these recorded changes; the kernels that passed their budget with them (each
        once: a kernel already found past it is not reported again)."""
        grown: dict[str, dict[str, int]] = {}
        for row in rows:
            delta = row_delta(row)
            for kernel_id in charged_kernels(row):
                self._added[kernel_id] = max(self._added.get(kernel_id, 0) + delta, 0)
                if delta > 0:
                    grown.setdefault(kernel_id, {})[row["path"]] = delta
        if not self.budget:
            return []
        out = []
        for kernel_id in sorted(grown):
            if kernel_id in self._over or self._added[kernel_id] <= self.budget:
                continue
            self._over.add(kernel_id)
            paths = grown[kernel_id]
            largest = sorted(paths, key=lambda p: (-paths[p], p))[:5]
            out.append(Overrun(kernel_id, self._added[kernel_id], self.budget, tuple(largest)))
        return out

    def grew(self, rows: Iterable[dict[str, Any]]) -> dict[str, int]:
        """Bytes each agent kernel added with these changes, those that added any."""
        out: dict[str, int] = {}
        for row in rows:
            delta = row_delta(row)
            for kernel_id in charged_kernels(row):
                out[kernel_id] = out.get(kernel_id, 0) + delta
        return {k: v for k, v in out.items() if v > 0}

    def forget(self, alive: Iterable[str]) -> None:
        """Drop the counts of kernels that are gone (a restart keeps its kernel id, and its
        count: the files are still there)."""
        keep = set(alive)
        for kernel_id in [k for k in self._added if k not in keep]:
            self._added.pop(kernel_id, None)
            self._over.discard(kernel_id)
