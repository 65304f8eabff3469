"""The server's pool of program workers: sandboxed processes that parse what agents send.

Each worker is `python -I -m jupyter_qguard.sandbox.worker_launch`, started from "/" with a
SandboxSpec of the program-worker profile (the agent kernel's layers and settings: minimum,
disabled layers, rlimits), an allowlisted environment whose HOME and TMPDIR are in the worker's
private directory, and one end of a socket pair as its only way to the server. A worker that
cannot be confined to the minimum says why and exits; nothing is then parsed at all (calls fail
with that reason), never parsed unconfined.

Once started (`start`: the Aer provider does it when the first agent kernel comes; a call would
too), the pool keeps `size` workers started and warm (Qiskit and Aer imported, the pass managers
and device snapshots built), so a submission never waits for a sandbox to start. A call holds
one worker; a call past its time, or given up by its caller (asyncio.wait_for in the broker),
kills its worker with SIGKILL (its whole process group: the supervisor and, with it, the
worker's pid namespace) and a replacement starts at once. A worker that dies or answers with
something that is not a frame is replaced the same way. What a worker answers is JSON, read with
a size cap: after parsing an agent's program it is as untrusted as the program.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import identity
from .environment import kernel_environment
from .kernel_output import KernelOutput
from .spec import DEFAULT_MINIMUM, SPEC_VAR, SandboxSpec
from .worker_launch import PROFILE_PROGRAM_WORKER
from .worker_protocol import HEADER, FrameError, length, pack, unpack

START_SECONDS = 60.0
WARM_SECONDS = 300.0
REPORT_LINE_BYTES = 1 << 20
# What a worker may answer: facts, a drawing, counts, an export of one program.
MAX_ANSWER_BYTES = 64 << 20
ERROR_CHARS = 2000


class WorkerError(RuntimeError):
    """A call did not give an answer; the message says why (one line)."""


class WorkerFailed(WorkerError):
    """The function raised in the worker; the message is its own (one line, cut)."""

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


class WorkerDied(WorkerError):
    """The worker ended, or broke the protocol, before it answered."""


class NoWorker(WorkerError):
    """No worker could be started (the reason is the last start's)."""


class WorkerTimedOut(TimeoutError):
    """The call took longer than its time; its worker was killed."""


@dataclass
class WorkerSettings:
    """What a worker's sandbox is made of: the agent kernel's settings (app.py's
    kernel_settings), less what concerns the workspace."""

    minimum: list[str] = field(default_factory=lambda: list(DEFAULT_MINIMUM))
    disabled: list[str] = field(default_factory=list)
    rlimits: dict[str, int] = field(default_factory=dict)
    extra_read_paths: list[str] = field(default_factory=list)
    env_allowlist: list[str] = field(default_factory=list)
    runtime_root: str = ""

    @classmethod
    def from_kernel_settings(cls, settings: dict[str, Any]) -> WorkerSettings:
        return cls(
            minimum=list(settings.get("minimum", DEFAULT_MINIMUM)),
            disabled=list(settings.get("disabled", [])),
            rlimits=dict(settings.get("rlimits", {})),
            extra_read_paths=list(settings.get("extra_read_paths", [])),
            env_allowlist=list(settings.get("env_allowlist", [])),
            runtime_root=str(settings.get("runtime_root", "") or ""),
        )


def _one_line(text: str, limit: int = ERROR_CHARS) -> str:
    from .kernel_output import neutralise

    text = neutralise(" ".join(str(text).split()))
    return text if len(text) <= limit else text[:limit] + "…"


class Worker:
    """One confined worker process and its channel."""

    def __init__(self, settings: WorkerSettings, log: logging.Logger) -> None:
        self.id = uuid.uuid4().hex
        self.settings = settings
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.dir = ""
        self.report: dict[str, Any] = {}
        self.warmed: set[tuple[str, str]] = set()
        self.calls = 0
        self._output: KernelOutput | None = None
        self._next_id = 0
        self.dead = False

    @property
    def pid(self) -> int | None:
        """The pid the server started: the worker itself, or the supervisor of its pid
        namespace (whose process group holds the namespace's init)."""
        return None if self.proc is None else self.proc.pid

    def spec(self) -> SandboxSpec:
        s = self.settings
        spec = SandboxSpec(
            # Its "workspace" is its private directory: nothing of the person's is mounted,
            # mapped or granted (Landlock's rules name only this directory for writing).
            workspace=self.dir,
            kernel_dir=self.dir,
            # Neither idmap (below) nor a kernel's cgroup (made by the provisioner for a
            # kernel; a worker's memory is held by its rlimits) applies to a worker.
            minimum=[m for m in s.minimum if m not in ("idmap", "cgroup")],
            # No workspace to map; a mapping of its own directory would make it unwritable.
            disabled=sorted({*s.disabled, "idmap"}),
            rlimits=dict(s.rlimits),
            extra_read_paths=list(s.extra_read_paths),
            profile=PROFILE_PROGRAM_WORKER,
        )
        if os.geteuid() == 0:
            spec.kernel_uid = spec.kernel_gid = identity.uid_for_kernel(self.id)
        return spec

    async def start(self) -> None:
        # Named like the kernels' directories (qg-<server pid>-...): a later server removes
        # those of a server that was killed (provisioner.sweep_stale_kernel_dirs).
        self.dir = tempfile.mkdtemp(
            prefix=f"qg-{os.getpid()}-w", dir=self.settings.runtime_root or None
        )
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await self._spawn_process(child)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self.reader, self.writer = await asyncio.open_unix_connection(
            sock=parent, limit=REPORT_LINE_BYTES
        )
        await asyncio.wait_for(self._handshake(), START_SECONDS)

    async def _spawn_process(self, child: socket.socket) -> None:
        """The process, from "/" with `python -I`, its channel `child`, an allowlisted
        environment (HOME and the rest in its directory, the keyring backend null) and its
        output on pipes read into the server log (cut, rate-limited, escaped)."""
        from ..isolation import ISOLATED_CWD, isolated_command

        env, _ = kernel_environment(
            os.environ,
            allowlist=self.settings.env_allowlist,
            kernel_dir=Path(self.dir),
            channel_fd=child.fileno(),
            kernel_id=f"worker-{self.id}",
        )
        env[SPEC_VAR] = self.spec().to_env()
        self._output = KernelOutput(
            f"program-worker-{self.id[:8]}",
            self.log,
            max_line_bytes=2000,
            max_lines_per_second=50,
        )
        out, err = self._output.open()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *isolated_command("-m", "jupyter_qguard.sandbox.worker_launch"),
                cwd=ISOLATED_CWD,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(child.fileno(),),
                # Its own process group: one killpg reaches the supervisor and its pid
                # namespace's init, whose end takes the whole namespace with it.
                start_new_session=True,
            )
        finally:
            os.close(out)
            os.close(err)

    async def _handshake(self) -> None:
        import json

        assert self.reader is not None and self.writer is not None
        try:
            line = await self.reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raise WorkerDied("its sandbox report is over 1 MiB") from None
        if not line:
            raise WorkerDied(f"it ended before reporting its sandbox ({await self._status()})")
        try:
            params = json.loads(line)["params"]
        except (ValueError, KeyError, TypeError):
            params = None
        if not isinstance(params, dict):
            raise WorkerDied("its sandbox report is not JSON-RPC")
        layers = params.get("layers")
        self.report = layers if isinstance(layers, dict) else {}
        if not params.get("ok"):
            missing = [
                f"{name} ({(self.report.get(name) or {}).get('why', 'not applied')})"
                for name in self.spec().minimum
                if not (self.report.get(name) or {}).get("active")
            ]
            await self._status()
            why = "; ".join(missing) or "the worker said so"
            raise WorkerDied(f"its minimum isolation is not met: {_one_line(why)}")
        answer = {"jsonrpc": "2.0", "id": "sandbox-report", "result": {"start": True}}
        self.writer.write(json.dumps(answer).encode() + b"\n")
        await self.writer.drain()
        ready = await self._read_frame()
        if not ready.get("ready"):
            raise WorkerDied("it did not say it was ready")

    async def _status(self) -> str:
        if self.proc is None:
            return "not started"
        try:
            code = await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            return "still running"
        return f"exit status {code}"

    async def _read_frame(self) -> dict[str, Any]:
        assert self.reader is not None
        try:
            header = await self.reader.readexactly(HEADER.size)
            body = await self.reader.readexactly(length(header, MAX_ANSWER_BYTES))
            return unpack(body)
        except asyncio.IncompleteReadError:
            raise WorkerDied(f"the worker ended ({await self._status()})") from None
        except FrameError as exc:
            raise WorkerDied(f"the worker broke the protocol: {exc}") from None
        except OSError as exc:
            raise WorkerDied(f"its channel broke: {exc}") from None

    async def call(self, fn: str, args: tuple[Any, ...]) -> Any:
        assert self.writer is not None
        self._next_id += 1
        call_id = self._next_id
        self.calls += 1
        try:
            self.writer.write(pack({"id": call_id, "fn": fn, "args": list(args)}))
            await self.writer.drain()
        except OSError as exc:
            raise WorkerDied(f"its channel broke: {exc}") from None
        answer = await self._read_frame()
        if answer.get("id") != call_id:
            raise WorkerDied("the worker answered another call than the one asked")
        if "error" in answer:
            raise WorkerFailed(_one_line(answer.get("error")), str(answer.get("type", ""))[:100])
        if "result" not in answer:
            raise WorkerDied("the worker's answer holds no result")
        return answer["result"]

    def kill(self) -> None:
        """SIGKILL, now: the process group (the supervisor, the pid namespace's init) and the
        process itself. Reaping and cleaning up follow in the background."""
        if self.dead:
            return
        self.dead = True
        if self.proc is not None and self.proc.returncode is None:
            for send in (lambda: os.killpg(self.proc.pid, signal.SIGKILL), self.proc.kill):
                try:
                    send()
                except (ProcessLookupError, PermissionError):
                    pass
        if self.writer is not None:
            self.writer.close()

    async def reap(self) -> None:
        """After kill(): wait for the process, show the last of its output, remove its
        directory."""
        if self.proc is not None:
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.log.error("qguard: program worker %s outlived SIGKILL", self.pid)
        if self._output is not None:
            self._output.close()
            self._output = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class WorkerPool:
    """`size` warm workers; `call(fn, *args, timeout=)` runs one function in one of them."""

    def __init__(self, size: int, settings: WorkerSettings, log: logging.Logger) -> None:
        self.size = max(1, size)
        self.settings = settings
        self.log = log
        # Calls every worker makes before its first job (imports, pass managers, snapshots).
        self.warm: list[tuple[str, tuple[Any, ...]]] = []
        self.workers: set[Worker] = set()
        self._idle: collections.deque[Worker] = collections.deque()
        self._busy: set[Worker] = set()
        self._waiters: collections.deque[asyncio.Future[Worker]] = collections.deque()
        self._starting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starts: set[asyncio.Task[Any]] = set()
        self.failure: str | None = None
        self.stopped = False

    # -- what is running -------------------------------------------------------------------

    def pids(self) -> dict[str, list[int]]:
        """Host pids of the workers, idle and busy (tests and `doctor` look at them)."""
        return {
            "idle": sorted(w.pid for w in self._idle if w.pid),
            "busy": sorted(w.pid for w in self._busy if w.pid),
        }

    def reports(self) -> list[dict[str, Any]]:
        """The sandbox each live worker reported, as it reported it."""
        return [w.report for w in self.workers]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._fill()

    def add_warm(self, fn: str, *args: Any) -> None:
        """A call every worker makes before its first job, now and in every later worker."""
        if (fn, args) in self.warm:
            return
        self.warm.append((fn, args))
        for worker in list(self._idle):
            self._idle.remove(worker)
            self._busy.add(worker)
            self._spawn(self._warm_then_release(worker), start=True)

    async def stop(self) -> None:
        self.stopped = True
        # Starts and warm-ups are given up; reaping killed workers is left to finish.
        for task in list(self._starts):
            task.cancel()
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(NoWorker("the server is stopping"))
        self._waiters.clear()
        workers = list(self.workers)
        for w in workers:
            w.kill()
        await asyncio.gather(*(w.reap() for w in workers), return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.workers.clear()
        self._idle.clear()
        self._busy.clear()

    # -- calls -----------------------------------------------------------------------------

    async def call(self, fn: str, *args: Any, timeout: float | None = None) -> Any:
        """Run `fn(*args)` in a worker. WorkerTimedOut past `timeout` (the worker killed);
        cancelling the call kills its worker too. WorkerFailed: the function raised there;
        WorkerDied, NoWorker: no answer."""
        worker = await self._acquire()
        try:
            if timeout is None:
                result = await worker.call(fn, args)
            else:
                result = await asyncio.wait_for(worker.call(fn, args), timeout)
        except TimeoutError:
            self._discard(worker, f"{fn} took longer than {timeout:g} s")
            raise WorkerTimedOut(f"{fn} took longer than {timeout:g} s") from None
        except asyncio.CancelledError:
            # The caller gave up (its own bound): the worker is still at it, so it goes.
            self._discard(worker, f"{fn} was given up by its caller")
            raise
        except WorkerFailed:
            self._release(worker)  # it answered: the function raised, the worker is fine
            raise
        except WorkerDied as exc:
            self._discard(worker, str(exc))
            raise
        except BaseException:
            self._discard(worker, "the call failed in the server")
            raise
        self._release(worker)
        return result

    async def _acquire(self) -> Worker:
        if self.stopped:
            raise NoWorker("the server is stopping")
        while self._idle:
            worker = self._idle.popleft()
            if not worker.dead:
                self._busy.add(worker)
                return worker
        self._fill()
        if not self._starting and not self.workers and self.failure:
            raise NoWorker(self.failure)
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            worker = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result())  # handed over as the caller gave up
            raise
        self._busy.add(worker)
        return worker

    def _release(self, worker: Worker) -> None:
        self._busy.discard(worker)
        if worker.dead or self.stopped:
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(worker)
                return
        self._idle.append(worker)

    def _discard(self, worker: Worker, why: str) -> None:
        self.log.warning("qguard: program worker %s killed: %s", worker.pid, why)
        worker.kill()
        self._busy.discard(worker)
        self.workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        self._spawn(worker.reap())
        self._fill()

    def _fill(self) -> None:
        """Start workers until `size` are alive or starting."""
        if self.stopped:
            return
        for _ in range(self.size - len(self.workers) - self._starting):
            self._starting += 1
            self._spawn(self._start_one(), start=True)

    def _spawn(self, coro: Any, *, start: bool = False) -> None:
        task = asyncio.ensure_future(coro)
        tasks = self._starts if start else self._tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _start_one(self) -> None:
        worker = Worker(self.settings, self.log)
        try:
            await worker.start()
            await self._warm(worker)
        except BaseException as exc:
            worker.kill()
            self._spawn(worker.reap())
            self._starting -= 1
            if isinstance(exc, asyncio.CancelledError):
                raise
            why = _one_line(f"{exc}" if isinstance(exc, WorkerError) else f"{exc!r}")
            self.failure = f"the program worker could not start: {why}"
            self.log.error("qguard: %s", self.failure)
            if not self._starting and not self.workers:
                while self._waiters:
                    fut = self._waiters.popleft()
                    if not fut.done():
                        fut.set_exception(NoWorker(self.failure))
            return
        self._starting -= 1
        if self.stopped:
            worker.kill()
            await worker.reap()
            return
        self.failure = None
        self.workers.add(worker)
        self._release(worker)

    async def _warm(self, worker: Worker) -> None:
        for fn, args in list(self.warm):
            key = (fn, repr(args))
            if key in worker.warmed:
                continue
            try:
                await asyncio.wait_for(worker.call(fn, args), WARM_SECONDS)
            except WorkerFailed as exc:
                self.log.warning("qguard: program worker warm-up %s%r failed: %s", fn, args, exc)
            worker.warmed.add(key)

    async def _warm_then_release(self, worker: Worker) -> None:
        try:
            await self._warm(worker)
        except (WorkerError, TimeoutError) as exc:
            self._discard(worker, f"its warm-up failed: {exc}")
            return
        self._release(worker)
