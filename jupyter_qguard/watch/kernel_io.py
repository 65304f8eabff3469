"""When each agent kernel's processes last wrote, read from the kernel's side of Linux.

The change feed names an agent kernel as a change's author when the server saw it executing
(tracker.py). A kernel can write without executing: a thread or a child process it leaves
running after its cell returned writes while the kernel is idle. So the server also reads
`/proc/<pid>/io` of every process in each agent kernel's tree (the process the provisioner
started and everything below it: a process cannot leave its parent's tree but to its pid
namespace's init, which is in it too) and notes when the counters grew. `write_bytes` is
what the tree made dirty in the page cache of a disk (counted as it writes, not when the disk
is written); `wchar` is every byte passed to write(2), which also covers tmpfs, with a margin
for the few bytes an idle ipykernel writes (16 bytes a second of eventfd wake-ups). Reaped
children's counters add up in their parent's, so the sums only grow.

The server reads these files with its own rights: root reads any; a plain user's server reads
its kernels' (same uid, and the kernel's user namespace is the server's child). A process
whose counters cannot be read is left out, and then only the execution state names the kernel.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("jupyter_qguard.watch")

# wchar growth (bytes per sample) that counts as writing; write_bytes counts at any growth.
WCHAR_MARGIN = 64 * 1024
SAMPLE_SECONDS = 0.5
# A tree larger than this is counted on its first processes only (a fork bomb is the
# rlimits' and the cgroup's business, not a reason to spend the server's time here).
MAX_TREE = 4096


def tree(root: int) -> list[int]:
    """`root` and every process below it, from /proc/<pid>/task/<tid>/children."""
    found = [root]
    seen = {root}
    i = 0
    while i < len(found) and len(found) < MAX_TREE:
        pid = found[i]
        i += 1
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    text = f.read()
            except OSError:
                continue
            for child in text.split():
                c = int(child)
                if c not in seen:
                    seen.add(c)
                    found.append(c)
    return found


def counters(pids: list[int]) -> tuple[int, int]:
    """(write_bytes, wchar) summed over the processes that can be read."""
    write_bytes = wchar = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/io", "rb") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(b":")
            if name == b"write_bytes":
                write_bytes += int(value)
            elif name == b"wchar":
                wchar += int(value)
    return write_bytes, wchar


class WriteActivity:
    """`last_write()`: kernel id -> the wall-clock time its tree was last seen writing.

    `roots()` gives each agent kernel's top process (host pid); a thread samples every
    `interval` seconds, and `sample()` takes one at once (the tracker calls it as changes
    arrive, so a write just before them is seen)."""

    def __init__(
        self, roots: Callable[[], dict[str, int]], *, interval: float = SAMPLE_SECONDS
    ) -> None:
        self._roots = roots
        self.interval = interval
        self._lock = threading.Lock()
        # One sample at a time (the thread's and the tracker's): readings merge in order.
        self._sampling = threading.Lock()
        self._seen: dict[str, tuple[int, int, int]] = {}  # kernel -> (root, write_bytes, wchar)
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="qguard-kernel-io", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self) -> dict[str, float]:
        with self._sampling:
            return self._sample()

    def _sample(self) -> dict[str, float]:
        try:
            roots = self._roots()
        except Exception:
            log.exception("qguard: listing the agent kernels' processes failed")
            roots = {}
        now = time.time()
        readings = {k: (pid, *counters(tree(pid))) for k, pid in roots.items()}
        with self._lock:
            for kernel_id, (pid, write_bytes, wchar) in readings.items():
                before = self._seen.get(kernel_id)
                if before is not None and before[0] == pid:
                    if write_bytes > before[1] or wchar - before[2] > WCHAR_MARGIN:
                        self._last[kernel_id] = now
                self._seen[kernel_id] = (pid, write_bytes, wchar)
            for gone in [k for k in self._seen if k not in readings]:
                self._seen.pop(gone, None)
                self._last.pop(gone, None)
            return dict(self._last)

    def last_write(self) -> dict[str, float]:
        with self._lock:
            return dict(self._last)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
