"""Unsandboxed worker pools of the server whose processes do not outlive it.

The hashing and fake-cloud pools are spawned processes; when the server is killed (`kill -9`,
the OOM killer) nothing tells them, and they would live on as orphans. Each worker watches its
parent instead: PR_SET_PDEATHSIG would fire when the spawning *thread* ends, which for a pool is
not the server's lifetime.

These pools are not sandboxed. An agent's program bytes (QPY, OpenQASM), which a loader may
turn into code (CVE-2025-2000), are never given to them: they go to the program workers
(sandbox/worker_pool.py), confined like an agent kernel, which answer in JSON, never pickle.

Every pool is made with `spawn_context()`: its children start isolated (`python -I`, from "/"),
so nothing an agent wrote into the server's working directory (often the workspace) is
imported by them (isolation.py says why it must be the process-wide executable).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import threading
import time

from .isolation import isolated_python

POLL_SECONDS = 0.5


def spawn_context() -> multiprocessing.context.SpawnContext:
    """multiprocessing's "spawn" context, its children started through the isolated launcher.

    `set_executable` is process-wide for spawn (and the forkserver), and that is what is
    wanted: the resource tracker, which any pool's queues start, is one per process and knows
    no other setting; and every spawned child of a server whose working directory may be the
    workspace has the same hole, whoever made the pool. The child loses nothing it needs: -I
    drops the working directory, PYTHON* variables and the user site, but multiprocessing gives
    the child the parent's `sys.path` before it unpickles anything. Set again at each call, so
    a later `set_executable` elsewhere cannot leave our pools unisolated."""
    ctx = multiprocessing.get_context("spawn")
    ctx.set_executable(isolated_python())
    return ctx


def exit_with_parent() -> None:
    """A pool initializer: end this process soon after its parent is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(0)

    threading.Thread(target=watch, name="qguard-exit-with-parent", daemon=True).start()
