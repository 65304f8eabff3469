"""Hashing the files a job depends on: off the database thread, off the event loop, in time.

The files are the agent's (DESIGN.md, "The workspace boundary"): a FIFO that blocks whoever
opens it, a sparse file of terabytes, a link to `~/.aws`, a notebook of a hundred megabytes.
Whatever they are, listings, approvals and the change feed must not wait for them. So:

- every read goes through workspace_io (no link followed, regular files only, the size cap
  checked on the fstat and while reading): a FIFO is refused when it is opened, never read;
  a file over the cap is refused before a byte of it is read;
- the work runs on the hashing threads here, never on the broker's one database thread or on
  the event loop. Plain files are streamed through SHA-256, which releases the GIL; a small
  notebook is parsed in the thread (json.loads holds the GIL, ~10 ms for 1 MiB);
- a bigger notebook is parsed in a worker process, whose GIL is its own: spawned isolated
  (workers.spawn_context: `python -I` from "/", nothing imported from the workspace), it opens
  the file itself through workspace_io; its address space is limited, so a file of JSON
  crafted to explode in memory fails there, not in the server;
- the hashing threads and the worker run at a lower CPU priority (nice 10), so that on a
  busy machine they wait for a core, not the event loop;
- the files of one request have `timeout` seconds together; past it the request is refused
  with that reason, and a worker still parsing is stopped (and replaced for the next one).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import resource
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

from .. import workspace_io as wio
from ..workers import exit_with_parent, spawn_context
from .filehash import WorkspacePathError, file_hash, hash_bytes, is_notebook

DEFAULT_MAX_BYTES = 128 << 20
DEFAULT_TIMEOUT = 60.0
# Notebooks up to this size are parsed in a hashing thread, bigger ones in the worker process.
INLINE_NOTEBOOK_BYTES = 1 << 20
THREADS = 4


def worker_memory(max_bytes: int) -> int:
    """The worker's address space: a notebook at the cap parses in a few times its size
    (about 4x for stream outputs kept as lists of lines); 16x and a gigabyte to spare."""
    return (1 << 30) + 16 * max_bytes


class BoundFileRefused(WorkspacePathError):
    """A file a job depends on that the broker will not hash: not a regular file, through a
    link, outside the workspace, over the cap or too slow. The message is one sentence."""

    def __init__(self, rel: str, why: str, *, code: str) -> None:
        super().__init__(f"{rel}: {why}")
        self.rel, self.why, self.code = rel, why, code


class BoundFileHasher:
    """One per broker. `hash()` and `hash_or_none()` block (call them through `run`)."""

    def __init__(
        self,
        root: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        threads: int = THREADS,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._threads = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="qguard-hash", initializer=_background
        )
        self._pool: ProcessPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self.workers_started = 0  # how many worker pools were made (tests, diagnosis)

    # -- from the event loop ---------------------------------------------------------------

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run blocking work on bound files (the broker's `_bound_files`, `_changed_files`)
        on the hashing threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            _terminate(pool)

    # -- blocking ----------------------------------------------------------------------------

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    def hash(self, rel: str, deadline: float | None = None) -> str:
        """The hash bound into an approval (filehash.hash_bytes) of the workspace file `rel`;
        BoundFileRefused when it cannot be had safely by `deadline` (time.monotonic())."""
        deadline = self.deadline() if deadline is None else deadline
        try:
            # Normalized first: "x.ipynb/." is the notebook x.ipynb, hashed as one.
            norm = wio.normalize(rel)
            if not norm:
                raise BoundFileRefused(rel, "must name a file inside the workspace", code="outside")
            rel = norm
            with wio.root_fd(self.root) as rfd:
                opened = wio.open_regular(rfd, rel, max_bytes=self.max_bytes)
                try:
                    if not is_notebook(rel):
                        return self._sha256(opened, rel, deadline)
                    data = self._read_small(opened, rel, deadline)
                    if data is not None:
                        return hash_bytes(rel, data)
                finally:
                    os.close(opened.fd)
        except wio.UnsafeWorkspacePath as exc:
            raise self._refused(exc) from None
        except OSError as exc:  # the workspace root itself is gone or unreadable
            raise BoundFileRefused(
                rel, f"cannot be read ({exc.strerror})", code="unreadable"
            ) from None
        return self._in_worker(rel, deadline)

    def hash_or_none(self, rel: str, deadline: float | None = None) -> str | None:
        """The hash now, or None when the file is gone or refused (a change, for a bound file)."""
        try:
            return self.hash(rel, deadline)
        except BoundFileRefused:
            return None

    def _refused(self, exc: wio.UnsafeWorkspacePath) -> BoundFileRefused:
        why = exc.why
        if exc.code == "too_large":
            limit = f"over the limit of {wio.mib(self.max_bytes)}"
            why = why.replace(limit, f"{limit} for a file a job depends on")
        return BoundFileRefused(exc.rel, why, code=exc.code)

    def _late(self, rel: str) -> BoundFileRefused:
        return BoundFileRefused(
            rel,
            f"could not be hashed within {self.timeout:g} s, the time the files of one job "
            "may take",
            code="timeout",
        )

    def _chunks(self, opened: wio.Opened, rel: str, deadline: float, limit: int) -> Any:
        total = 0
        while chunk := os.read(opened.fd, wio.CHUNK):
            total += len(chunk)
            if total > limit:
                raise wio.UnsafeWorkspacePath(
                    rel,
                    f"grew over the limit of {wio.mib(self.max_bytes)} while being read",
                    code="too_large",
                )
            if time.monotonic() > deadline:
                raise self._late(rel)
            yield chunk

    def _sha256(self, opened: wio.Opened, rel: str, deadline: float) -> str:
        digest = hashlib.sha256()  # update() releases the GIL on buffers this large
        for chunk in self._chunks(opened, rel, deadline, self.max_bytes):
            digest.update(chunk)
        return digest.hexdigest()

    def _read_small(self, opened: wio.Opened, rel: str, deadline: float) -> bytes | None:
        """A notebook small enough to parse in this thread; None: the worker parses it."""
        if opened.st.st_size > INLINE_NOTEBOOK_BYTES:
            return None
        parts, total = [], 0
        while chunk := os.read(opened.fd, wio.CHUNK):
            total += len(chunk)
            if total > INLINE_NOTEBOOK_BYTES:
                return None  # it grew since the fstat
            if time.monotonic() > deadline:
                raise self._late(rel)
            parts.append(chunk)
        return b"".join(parts)

    # -- the worker process -------------------------------------------------------------------

    def _worker_pool(self, rel: str) -> ProcessPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise BoundFileRefused(
                    rel, "was not hashed: the broker is stopping", code="stopped"
                )
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=spawn_context(),
                    initializer=_init_worker,
                    initargs=(worker_memory(self.max_bytes),),
                )
                self.workers_started += 1
            return self._pool

    def _retire(self, pool: ProcessPoolExecutor) -> None:
        with self._pool_lock:
            if self._pool is pool:
                self._pool = None
        _terminate(pool)

    def _in_worker(self, rel: str, deadline: float) -> str:
        for _ in range(2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._late(rel)
            pool = self._worker_pool(rel)
            try:
                future = pool.submit(_hash_in_worker, self.root, rel, self.max_bytes)
                answer = future.result(timeout=remaining)
            except TimeoutError:
                if not future.cancel():
                    self._retire(pool)  # still parsing it: stop the worker, a new one follows
                raise self._late(rel) from None
            except (RuntimeError, CancelledError):
                # BrokenProcessPool (a RuntimeError) when the worker died (killed, or out of
                # memory past its limit); cancelled or shut down when another request's
                # timeout retired the pool under this one: once more, on a new one.
                self._retire(pool)
                continue
            if answer[0] == "ok":
                return str(answer[1])
            _, name, why, code = answer
            raise self._refused(wio.UnsafeWorkspacePath(name, why, code=code))
        raise BoundFileRefused(
            rel, "could not be hashed: the hashing worker process died", code="unreadable"
        )


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, even with a notebook being parsed (shutdown alone would wait)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.kill()
    for proc in processes:
        proc.join(timeout=5)


# Niceness of the hashing threads and the worker: on a busy machine the event loop (listings,
# approvals, the change feed) comes first; hashing is done when there is a core to spare.
NICE = 10


def _background(who: int = 0) -> None:
    """Lower a hashing thread's CPU priority to NICE (on Linux a thread's niceness is its own:
    the event loop's thread keeps the server's), or the worker's (which may have inherited it
    from the thread that started it: set, not added to)."""
    who = who or threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, who) < NICE:
            os.setpriority(os.PRIO_PROCESS, who, NICE)
    except OSError:
        pass


def _init_worker(memory: int) -> None:
    exit_with_parent()
    _background(os.getpid())
    # Relative paths never lead into the workspace; only workspace_io opens files there.
    os.chdir("/")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _hash_in_worker(root: str, rel: str, max_bytes: int) -> tuple[str, ...]:
    """In the worker: the file opened and read here, through workspace_io. Refusals come back
    as plain tuples (UnsafeWorkspacePath's arguments do not survive pickling)."""
    try:
        return ("ok", file_hash(root, rel, max_bytes=max_bytes))
    except wio.UnsafeWorkspacePath as exc:
        return ("refused", exc.rel, exc.why, exc.code)
    except MemoryError:
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        return (
            "refused",
            rel,
            f"needs more than {wio.mib(limit)} of memory to be read as a notebook",
            "too_large",
        )
    except OSError as exc:
        return ("refused", rel, f"cannot be read ({exc.strerror})", "unreadable")
