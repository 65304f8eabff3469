"""One process at a time for the test setup's installs (apt-get, npm). `make test` runs pytest in
two workers, and the first tests to need Chromium's runner, PostgreSQL or the hub's proxy may
start in both at once on a fresh clone: two `npm ci` in one folder delete each other's
node_modules, and a second apt-get fails on dpkg's lock. Whoever holds the lock installs; the
other waits, then finds the install done."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

# Under /tmp, not the clone: apt-get's installs are the machine's, whichever clone asks.
LOCKS = Path("/tmp")


@contextlib.contextmanager
def installing(what: str) -> Iterator[None]:
    with open(LOCKS / f"qguard-tests-{what}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
