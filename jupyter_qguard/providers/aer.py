"""Local Qiskit Aer simulation, in a pool of worker processes owned by the broker."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from traitlets import Int, Unicode

from ..workers import exit_with_parent, spawn_context
from . import aer_worker
from .base import ProgramFacts, Provider, ProviderError, RunSpec


class AerProvider(Provider):
    """Runs jobs on `qiskit_aer.AerSimulator` in worker processes."""

    local = True

    workers = Int(2, config=True, help="Number of simulator worker processes.")
    method = Unicode(
        "automatic", config=True, help="AerSimulator method (automatic, statevector, ...)."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: ProcessPoolExecutor | None = None
        self._running: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the server process has threads and an event loop. Isolated:
            # the server's working directory may be the workspace (workers.spawn_context).
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=spawn_context(), initializer=exit_with_parent
            )
        return self._pool

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor(), fn, *args)
        except BrokenProcessPool:
            # A worker died (a crash in the simulator, or it was killed): start a fresh pool
            # for the next job, and report this one as failed.
            self._pool = None
            raise ProviderError(
                "the simulator worker process died while running this job"
            ) from None

    async def start(self) -> None:
        pool = self._executor()
        futures: list[Future[bool]] = [pool.submit(aer_worker.warm_up) for _ in range(self.workers)]
        self._warm = [asyncio.wrap_future(f) for f in futures]

    def warm_snapshots(self, names: set[str]) -> None:
        """Load device snapshots and their noise models in the workers ahead of the first
        job (seconds each), so a preflight is not cut short by its own warm-up."""
        pool = self._executor()
        for name in sorted(names):
            for _ in range(self.workers):
                pool.submit(aer_worker.warm_snapshot, name)

    async def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def inspect(
        self, program_format: str, payload: bytes, target: str | None = None
    ) -> ProgramFacts:
        """Parse the program and, given a target ("aer" or a snapshot name), transpile to it."""
        try:
            facts = await self._call(aer_worker.inspect_program, program_format, payload, target)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"the program cannot be read as {program_format}: {exc}") from None
        return ProgramFacts(**facts)

    async def draw(self, program_format: str, payload: bytes) -> str:
        """Qiskit's text drawing of the program (parsed in a worker, like everything else)."""
        return await self._call(aer_worker.draw_program, program_format, payload)

    async def export(self, program_format: str, payload: bytes) -> dict[str, Any]:
        """{"qpy": bytes | None, "qasm3": str | None, "errors": {form: why}} (worker-parsed)."""
        return await self._call(aer_worker.export_program, program_format, payload)

    async def simulate(
        self,
        program_format: str,
        payload: bytes,
        *,
        shots: int,
        seed: int | None,
        noise: str | None = None,
    ) -> dict[str, Any]:
        """A local run for the preflight preview (not a job: nothing is recorded as submitted);
        `noise`: a snapshot name whose noise model to apply."""
        return await self._call(
            aer_worker.run_program, program_format, payload, shots, seed, self.method, noise
        )

    async def submit(self, spec: RunSpec) -> str:
        provider_job_id = f"aer-{spec.job_id}"
        fut = asyncio.ensure_future(
            self._call(
                aer_worker.run_program,
                spec.program_format,
                spec.payload,
                spec.shots,
                spec.seed,
                self.method,
                # An Aer backend may stand in for a device: its snapshot's noise, then.
                spec.options.get("snapshot"),
            )
        )
        self._running[provider_job_id] = fut
        return provider_job_id

    async def result(self, spec: RunSpec, provider_job_id: str) -> dict[str, Any]:
        fut = self._running.get(provider_job_id)
        if fut is None:
            raise ProviderError(f"no local simulation {provider_job_id} is running")
        try:
            return await fut
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"simulation failed: {exc}") from None
        finally:
            self._running.pop(provider_job_id, None)

    async def recover(self, spec: RunSpec, provider_job_id: str | None) -> dict[str, Any]:
        # A local simulation has no effect outside this machine and costs nothing: one cut short
        # by a restart is run again, with the same seed, rather than lost.
        new_id = await self.submit(spec)
        return await self.result(spec, new_id)
