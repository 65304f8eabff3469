"""The watcher's tests' side of it: a callback that keeps what it is told, and a way to let
inotify deliver before asserting."""

from __future__ import annotations

import threading
import time

from jupyter_qguard.watch.watcher import Change, WorkspaceWatcher


class Recorder:
    """The on_change callback: keeps every batch, with the time it arrived."""

    def __init__(self) -> None:
        self.batches: list[list[Change]] = []
        self.arrivals: dict[str, float] = {}
        self.threads: set[str] = set()
        self.cond = threading.Condition()

    def __call__(self, changes: list[Change]) -> None:
        now = time.time()
        with self.cond:
            self.batches.append(list(changes))
            for change in changes:
                self.arrivals.setdefault(change.path, now)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    @property
    def changes(self) -> list[Change]:
        with self.cond:
            return [c for batch in self.batches for c in batch]

    def of(self, path: str) -> list[Change]:
        return [c for c in self.changes if c.path == path]

    def wait(self, predicate, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate([c for batch in self.batches for c in batch]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out; changes so far: {self.batches}")
                self.cond.wait(left)


def settle(watcher: WorkspaceWatcher) -> None:
    """Let inotify deliver what is in flight, then reconcile it without waiting out the debounce."""
    time.sleep(0.15)
    watcher.flush()
