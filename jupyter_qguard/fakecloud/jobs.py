"""The fake cloud's jobs, usage and calibrations; simulations run in worker processes.

State lives in memory. With a state directory, jobs (with their programs, so that they can be run
again), the usage they add up to and calibration drifts are also written to
`<state_dir>/fakecloud-state.json` after every change (written to a temporary file, fsynced and
renamed over the old one: a crash leaves the old state or the new, never half of one). Tokens are
not kept: a restart voids them, as short-lived credentials should be. A job that was QUEUED or
RUNNING when the fake cloud stopped is run again when it starts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..workers import spawn_context
from . import backends, simulate
from .errors import ApiError
from .faults import FaultInjector
from .tokens import TokenStore, iso

QUEUED, RUNNING, DONE, ERROR, CANCELLED = "QUEUED", "RUNNING", "DONE", "ERROR", "CANCELLED"
TERMINAL = (DONE, ERROR, CANCELLED)
FORMATS = ("qpy", "qasm2", "qasm3")
MAX_SHOTS = 100_000
MAX_SEED = 2**63 - 1
MAX_PROGRAM_BYTES = 10 * 2**20
INSPECT_TIMEOUT_SECONDS = 30.0
# An injected job error leaves the job RUNNING for a moment, as a device failure would.
INJECTED_FAILURE_SECONDS = 0.2
STATE_FILE = "fakecloud-state.json"
STATE_VERSION = 1


@dataclass
class Job:
    id: str
    job_ref: str
    backend: str
    program_format: str
    payload_b64: str
    shots: int
    seed: int | None
    # The seed the simulator uses: the client's, or one drawn for the job (kept, so that a job
    # run again after a restart gives the same counts).
    run_seed: int
    fingerprint: str
    created_at: float
    status: str = QUEUED
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, str] | None = None
    result: dict[str, Any] | None = None
    cost: dict[str, Any] | None = None
    injected_error: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "job_ref": self.job_ref,
            "backend": self.backend,
            "shots": self.shots,
            "seed": self.seed,
            "created_at": iso(self.created_at),
            "started_at": None if self.started_at is None else iso(self.started_at),
            "finished_at": None if self.finished_at is None else iso(self.finished_at),
            "error": self.error,
            "result": self.result,
            "cost": self.cost or {"amount": 0.0, "currency": backends.CURRENCY},
        }


def fingerprint(body: dict[str, Any]) -> str:
    """What makes two create requests "the same": the job they describe, nothing else."""
    program = body.get("program")
    if isinstance(program, dict):
        program = {"format": program.get("format"), "payload_b64": program.get("payload_b64")}
    described = {
        "backend": body.get("backend"),
        "program": program,
        "shots": body.get("shots"),
        "seed": body.get("seed"),
    }
    return hashlib.sha256(backends.canonical(described)).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the server has an event loop and threads that a fork would copy.
    # Isolated: whoever started the fake cloud, its working directory is no import source.
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=spawn_context(),
        initializer=simulate.init_worker,
    )


def _terminate_pool(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, even with a simulation running (shutdown alone would wait for it)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14+
    if terminate is not None:
        terminate()
        return
    # Before 3.14 the pool's worker processes are only reachable through this attribute.
    process_objects = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in process_objects:
        if proc.is_alive():
            proc.terminate()
    for proc in process_objects:
        proc.join(timeout=5)


class Cloud:
    """Everything the HTTP handlers act on."""

    def __init__(
        self,
        *,
        api_key: str,
        admin_key: str | None,
        token_ttl: float,
        workers: int,
        state_dir: str | None,
        log: logging.Logger | None = None,
        record_tokens: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.admin_key = admin_key
        self.tokens = TokenStore(
            token_ttl, record_to=Path(record_tokens) if record_tokens else None
        )
        self.faults = FaultInjector()
        self.workers = max(1, workers)
        self.state_path = Path(state_dir) / STATE_FILE if state_dir else None
        self.log = log or logging.getLogger("jupyter_qguard.fakecloud")
        self.jobs: dict[str, Job] = {}
        self.calibrations: dict[str, dict[str, Any]] = {}
        self._by_ref: dict[str, str] = {}
        self._drifts: dict[str, list[dict[str, Any]]] = {}
        self._ref_locks: dict[str, asyncio.Lock] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(self.workers)
        self._sim_pool: ProcessPoolExecutor | None = None
        self._parse_pool: ProcessPoolExecutor | None = None
        self._ready: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._load_state()
        self._ready = asyncio.create_task(self._prepare())
        for job in self.jobs.values():
            if job.status not in TERMINAL:
                self._schedule(job)

    async def _prepare(self) -> None:
        try:
            await self._load_backends()
        except Exception:
            self.log.exception("cannot load the backends' snapshots")
            raise

    async def _load_backends(self) -> None:
        loop = asyncio.get_running_loop()
        names = list(backends.CATALOG)
        sim_pool = self._sims()
        # Each worker builds its simulators while the calibrations are read.
        for _ in range(self.workers):
            sim_pool.submit(simulate.warm_up, names)
        snapshots = await asyncio.gather(
            *(loop.run_in_executor(self._parser(), simulate.base_calibration, n) for n in names)
        )
        for name, snapshot in zip(names, snapshots, strict=True):
            calibration = backends.with_calibration_id(snapshot)
            for step in self._drifts.get(name, []):
                calibration = backends.drifted(calibration, step["seed"], step["at"])
            self.calibrations[name] = calibration

    async def ready(self) -> None:
        assert self._ready is not None, "Cloud.start() was not called"
        try:
            await asyncio.shield(self._ready)
        except Exception as exc:
            raise ApiError(
                503, "server_error", f"The service could not load its backends: {exc}"
            ) from None

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        if self._ready is not None:
            tasks.append(self._ready)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.save()
        for pool in (self._sim_pool, self._parse_pool):
            if pool is not None:
                _terminate_pool(pool)
        self._sim_pool = self._parse_pool = None

    def _sims(self) -> ProcessPoolExecutor:
        if self._sim_pool is None:
            self._sim_pool = _spawn_pool(self.workers)
        return self._sim_pool

    def _parser(self) -> ProcessPoolExecutor:
        # Programs are read in a pool of their own, so that accepting a job never waits for the
        # simulations in front of it.
        if self._parse_pool is None:
            self._parse_pool = _spawn_pool(1)
        return self._parse_pool

    # -- state -----------------------------------------------------------------------------

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        state = json.loads(self.state_path.read_text())
        if state.get("version") != STATE_VERSION:
            raise RuntimeError(
                f"{self.state_path} has state version {state.get('version')!r}; "
                f"this fake cloud reads version {STATE_VERSION}"
            )
        for raw in state["jobs"]:
            job = Job(**raw)
            if job.status not in TERMINAL:
                # Cut short by the restart: it runs again from the start.
                job.status, job.started_at = QUEUED, None
            self.jobs[job.id] = job
            self._by_ref[job.job_ref] = job.id
        self._drifts = state.get("drifts", {})
        self.log.info("loaded %d jobs from %s", len(self.jobs), self.state_path)

    def save(self) -> None:
        if self.state_path is None:
            return
        state = {
            "version": STATE_VERSION,
            "jobs": [asdict(j) for j in self.jobs.values()],
            "usage": self.usage(),
            "drifts": self._drifts,
        }
        directory = self.state_path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".fakecloud-state-", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    # -- jobs ------------------------------------------------------------------------------

    async def create(self, job_ref: str, body: object) -> tuple[bool, Job]:
        """(created, job): created is False when job_ref already names this same job."""
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "The body must be a JSON object.")
        fp = fingerprint(body)
        lock = self._ref_locks.setdefault(job_ref, asyncio.Lock())
        # Two concurrent requests with one key must not both create a job.
        async with lock:
            existing = self._by_ref.get(job_ref)
            if existing is not None:
                job = self.jobs[existing]
                if job.fingerprint != fp:
                    raise ApiError(
                        409,
                        "idempotency_conflict",
                        f"The Idempotency-Key {job_ref!r} was already used for job {job.id}, "
                        "with a different request body; use a new key for a different job.",
                    )
                return False, job
            spec = await self._validate(body)
            seed = spec["seed"]
            job = Job(
                id="fc-" + secrets.token_hex(10),
                job_ref=job_ref,
                backend=spec["backend"],
                program_format=spec["format"],
                payload_b64=spec["payload_b64"],
                shots=spec["shots"],
                seed=seed,
                run_seed=seed if seed is not None else secrets.randbits(32),
                fingerprint=fp,
                created_at=time.time(),
            )
            fault = self.faults.take_job_error(job.backend)
            if fault is not None:
                job.injected_error = fault.message or (
                    f"The job failed on {job.backend}: the device's control electronics stopped "
                    "responding during execution (injected fault)."
                )
            self.jobs[job.id] = job
            self._by_ref[job_ref] = job.id
            self.save()
            self._schedule(job)
            return True, job

    async def _validate(self, body: dict[str, Any]) -> dict[str, Any]:
        backend = body.get("backend")
        if backend not in backends.CATALOG:
            raise ApiError(
                404,
                "unknown_backend",
                f"There is no backend {backend!r}; this service offers "
                f"{', '.join(backends.CATALOG)}.",
            )
        shots = body.get("shots")
        if not _is_int(shots) or not 1 <= shots <= MAX_SHOTS:
            raise ApiError(400, "bad_shots", f"shots must be a whole number from 1 to {MAX_SHOTS}.")
        seed = body.get("seed")
        if seed is not None and (not _is_int(seed) or not 0 <= seed <= MAX_SEED):
            raise ApiError(
                400, "bad_seed", f"seed must be null or a whole number from 0 to {MAX_SEED}."
            )
        program = body.get("program")
        if not isinstance(program, dict):
            raise ApiError(
                400, "bad_program", 'program must be {"format": ..., "payload_b64": ...}.'
            )
        fmt, payload_b64 = program.get("format"), program.get("payload_b64")
        if fmt not in FORMATS:
            raise ApiError(
                400,
                "bad_program",
                f"The program format must be one of {', '.join(FORMATS)}, not {fmt!r}.",
            )
        if not isinstance(payload_b64, str):
            raise ApiError(400, "bad_program", "payload_b64 must be a base64 string.")
        try:
            payload = base64.b64decode(payload_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "bad_program", "payload_b64 is not valid base64.") from None
        if len(payload) > MAX_PROGRAM_BYTES:
            raise ApiError(
                400, "bad_program", f"The program is larger than {MAX_PROGRAM_BYTES} bytes."
            )
        facts = await self._inspect(fmt, payload)
        await self.ready()
        width = self.calibrations[backend]["num_qubits"]
        if facts["num_qubits"] > width:
            raise ApiError(
                400,
                "too_many_qubits",
                f"The circuit has {facts['num_qubits']} qubits; {backend} has {width}.",
            )
        if facts["used_qubits"] > simulate.MAX_USED_QUBITS:
            raise ApiError(
                400,
                "too_many_qubits",
                f"The circuit operates on {facts['used_qubits']} qubits; this fake cloud "
                f"simulates at most {simulate.MAX_USED_QUBITS}.",
            )
        if facts["num_parameters"]:
            raise ApiError(
                400,
                "bad_program",
                f"The circuit has {facts['num_parameters']} unbound parameters; bind them first.",
            )
        if not facts["has_measurements"]:
            raise ApiError(
                400, "bad_program", "The circuit measures nothing, so it would return no counts."
            )
        return {
            "backend": backend,
            "shots": shots,
            "seed": seed,
            "format": fmt,
            "payload_b64": payload_b64,
        }

    async def _inspect(self, fmt: str, payload: bytes) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._parser(), simulate.inspect_program, fmt, payload),
                INSPECT_TIMEOUT_SECONDS,
            )
        except TimeoutError:
            # The parser is stuck on this program: replace it rather than queue behind it.
            if self._parse_pool is not None:
                _terminate_pool(self._parse_pool)
            self._parse_pool = None
            raise ApiError(
                400,
                "bad_program",
                f"The program could not be read within {INSPECT_TIMEOUT_SECONDS:g} s.",
            ) from None
        except BrokenProcessPool:
            self._parse_pool = None
            raise ApiError(400, "bad_program", "Reading the program crashed the parser.") from None
        except Exception as exc:
            raise ApiError(
                400, "bad_program", f"The program could not be read as {fmt}: {exc}"
            ) from None

    def _schedule(self, job: Job) -> None:
        self._finished.setdefault(job.id, asyncio.Event())
        task = asyncio.create_task(self._run(job))
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t, job_id=job.id: self._tasks.pop(job_id, None))

    async def _run(self, job: Job) -> None:
        try:
            await self.ready()
        except ApiError:
            # The backends could not be loaded (logged once, in _prepare): the job stays QUEUED
            # for the next start rather than failing for a reason of this machine's.
            return
        async with self._slots:
            if job.status != QUEUED:
                return
            job.status, job.started_at = RUNNING, time.time()
            self.save()
            if job.injected_error is not None:
                await asyncio.sleep(INJECTED_FAILURE_SECONDS)
                if job.status == RUNNING:
                    error = {"code": "execution_failed", "message": job.injected_error}
                    self._finish(job, ERROR, error=error)
                return
            try:
                result = await self._simulate(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if job.status == RUNNING:
                    message = f"The job failed on {job.backend}: {exc}".rstrip(".") + "."
                    self._finish(job, ERROR, error={"code": "execution_failed", "message": message})
                return
        if job.status != RUNNING:
            # Cancelled while it ran: the result is dropped and nothing is billed.
            return
        self._finish(
            job,
            DONE,
            result=result,
            cost=backends.cost(job.backend, job.shots, result["execution_seconds"]),
        )

    async def _simulate(self, job: Job) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._sims(),
                simulate.run_job,
                job.backend,
                self.calibrations[job.backend],
                job.program_format,
                base64.b64decode(job.payload_b64),
                job.shots,
                job.run_seed,
            )
        except BrokenProcessPool:
            self._sim_pool = None
            raise simulate.SimulationError("the simulator process died while running it") from None

    def _finish(self, job: Job, status: str, **fields: Any) -> None:
        job.status, job.finished_at = status, time.time()
        for key, value in fields.items():
            setattr(job, key, value)
        self.save()
        self._finished.setdefault(job.id, asyncio.Event()).set()

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "unknown_job", f"There is no job {job_id!r}.")
        return job

    def find(self, job_ref: str) -> list[Job]:
        job_id = self._by_ref.get(job_ref)
        return [] if job_id is None else [self.jobs[job_id]]

    async def wait(self, job: Job, timeout: float) -> None:
        if job.status in TERMINAL or timeout <= 0:
            return
        event = self._finished.setdefault(job.id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def cancel(self, job: Job) -> Job:
        if job.status in TERMINAL:
            raise ApiError(
                409,
                "job_final",
                f"Job {job.id} already ended ({job.status}), so it cannot be cancelled.",
            )
        was_queued = job.status == QUEUED
        self._finish(job, CANCELLED)
        task = self._tasks.get(job.id)
        if was_queued and task is not None:
            task.cancel()
        return job

    # -- calibrations, usage, admin --------------------------------------------------------

    async def drift(self, backend: str) -> dict[str, Any]:
        await self.ready()
        step = {"seed": secrets.randbits(32), "at": iso(time.time())}
        self.calibrations[backend] = backends.drifted(
            self.calibrations[backend], step["seed"], step["at"]
        )
        self._drifts.setdefault(backend, []).append(step)
        self.save()
        return self.calibrations[backend]

    def usage(self) -> dict[str, Any]:
        """What the account has been billed: DONE jobs (failed and cancelled ones cost nothing)."""

        def empty() -> dict[str, Any]:
            return {
                "jobs": 0,
                "shots": 0,
                "execution_seconds": 0.0,
                "cost": {"amount": 0.0, "currency": backends.CURRENCY},
            }

        total = empty()
        by_backend: dict[str, dict[str, Any]] = {}
        for job in self.jobs.values():
            if job.status != DONE or job.result is None or job.cost is None:
                continue
            line = by_backend.setdefault(job.backend, empty())
            for meter in (total, line):
                meter["jobs"] += 1
                meter["shots"] += job.shots
                meter["execution_seconds"] += job.result["execution_seconds"]
                meter["cost"]["amount"] += job.cost["amount"]
        for meter in (total, *by_backend.values()):
            meter["execution_seconds"] = round(meter["execution_seconds"], 6)
            meter["cost"]["amount"] = round(meter["cost"]["amount"], 6)
        return {**total, "by_backend": by_backend}

    def admin_state(self) -> dict[str, Any]:
        return {
            "jobs": len(self.jobs),
            "jobs_by_ref": dict(Counter(j.job_ref for j in self.jobs.values())),
            "statuses": dict(Counter(j.status for j in self.jobs.values())),
            "tokens": self.tokens.counts(),
            "faults": self.faults.active(),
            "calibrations": {n: c["calibration_id"] for n, c in self.calibrations.items()},
        }
