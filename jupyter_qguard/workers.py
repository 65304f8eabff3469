"""Worker processes that do not outlive their parent.

The Aer and fake-cloud pools are spawned processes holding hundreds of megabytes each; when the
server is killed (`kill -9`, the OOM killer) nothing tells them, and they would live on as
orphans. Each worker watches its parent instead: PR_SET_PDEATHSIG would fire when the spawning
*thread* ends, which for a pool is not the server's lifetime.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def exit_with_parent() -> None:
    """A pool initializer: end this process soon after its parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="qguard-exit-with-parent", daemon=True).start()
