"""Local Qiskit Aer simulation, and every parse of an agent's program, in the broker's pool of
sandboxed program workers (sandbox/worker_pool.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from traitlets import Int, Unicode

from ..sandbox.worker_pool import (
    NoWorker,
    WorkerDied,
    WorkerFailed,
    WorkerPool,
    WorkerSettings,
    WorkerTimedOut,
)
from .base import ProgramFacts, Provider, ProviderError, RunSpec

DIED = "the simulator worker process died while running this job"


def _facts(answer: Any) -> ProgramFacts:
    """ProgramFacts from a worker's answer, which is checked: the worker is as untrusted as
    the program it parsed."""
    shape = {
        "num_qubits": int,
        "num_clbits": int,
        "depth": int,
        "has_measurements": bool,
        "num_parameters": int,
        "operations": dict,
        "clbits_read_before_written": list,
        "spoofed_gates": list,
    }
    if not isinstance(answer, dict) or any(
        not isinstance(answer.get(k), t) for k, t in shape.items()
    ):
        raise ProviderError("the program worker answered with something that is not facts")
    transpiled = answer.get("transpiled")
    if transpiled is not None and not isinstance(transpiled, dict):
        raise ProviderError("the program worker answered with something that is not facts")
    return ProgramFacts(
        **{k: answer[k] for k in shape},
        transpiled=transpiled,
    )


class AerProvider(Provider):
    """Runs jobs on `qiskit_aer.AerSimulator`, and parses every program, in program workers."""

    local = True

    workers = Int(2, config=True, help="Number of program (simulator) worker processes.")
    method = Unicode(
        "automatic", config=True, help="AerSimulator method (automatic, statevector, ...)."
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: WorkerPool | None = None
        self._running: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # The agent kernel's sandbox settings (the broker's kernel_settings), set before start.
        self.sandbox: dict[str, Any] = {}

    def pool(self) -> WorkerPool:
        if self._pool is None:
            settings = WorkerSettings.from_kernel_settings(self.sandbox)
            self._pool = WorkerPool(self.workers, settings, self.log)
            self._pool.add_warm("warm_up")
        return self._pool

    async def call(self, fn: str, *args: Any, timeout: float | None = None) -> Any:
        """`fn` of the workers' table (worker_launch.functions) run in a program worker; every
        provider's way to a program (Provider.programs). WorkerTimedOut (a TimeoutError) past
        `timeout`; ProviderError when no worker answered; WorkerFailed when the function raised
        in the worker."""
        try:
            return await self.pool().call(fn, *args, timeout=timeout)
        except WorkerTimedOut:
            raise
        except WorkerDied:
            raise ProviderError(DIED) from None
        except NoWorker as exc:
            raise ProviderError(str(exc)) from None

    async def start(self) -> None:
        # Not here: each worker is a sandbox start and Qiskit's import (seconds of CPU), and
        # most servers start long before a job (or never see one). The first agent kernel
        # starts them (prewarm), in parallel with its own start; a call would too.
        pass

    def prewarm(self) -> None:
        self.pool().start()

    def warm_snapshots(self, names: set[str]) -> None:
        """Load device snapshots and their noise models in every worker ahead of its first
        job (seconds each), so a preflight is not cut short by its own warm-up."""
        for name in sorted(names):
            self.pool().add_warm("warm_snapshot", name)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.stop()
            self._pool = None

    async def inspect(
        self,
        program_format: str,
        payload: bytes,
        target: str | None = None,
        *,
        timeout: float | None = None,
    ) -> ProgramFacts:
        """Parse the program and, given a target ("aer" or a snapshot name), transpile to it;
        WorkerTimedOut when that takes longer than `timeout` (the wait for a free worker, or
        for the first ones to start, does not count)."""
        try:
            answer = await self.call(
                "inspect_program", program_format, payload, target, timeout=timeout
            )
        except WorkerFailed as exc:
            raise ProviderError(f"the program cannot be read as {program_format}: {exc}") from None
        return _facts(answer)

    async def draw(
        self,
        program_format: str,
        payload: bytes,
        target: str | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """{"drawing", "target", "why_not"}: the circuit as transpiled for `target` (as it will
        run), else as sent (aer_worker.draw_program)."""
        answer = await self.call("draw_program", program_format, payload, target, timeout=timeout)
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("drawing"), str)
            or answer.get("target") not in (None, target)
            or not isinstance(answer.get("why_not"), str | None)
        ):
            raise ProviderError("the program worker answered with something that is not a drawing")
        return {k: answer[k] for k in ("drawing", "target", "why_not")}

    async def export(
        self, program_format: str, payload: bytes, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """{"qpy": bytes | None, "qasm3": str | None, "errors": {form: why}} (worker-parsed)."""
        answer = await self.call("export_program", program_format, payload, timeout=timeout)
        if (
            not isinstance(answer, dict)
            or not isinstance(answer.get("qpy"), bytes | None)
            or not isinstance(answer.get("qasm3"), str | None)
            or not isinstance(answer.get("errors"), dict)
        ):
            raise ProviderError("the program worker answered with something that is not an export")
        return answer

    async def probe(self, plan: dict[str, Any]) -> dict[str, Any]:
        """What a program worker can reach (sandbox/worker_launch.confinement_probe)."""
        return await self.call("confinement_probe", plan, timeout=60)

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
        return await self.call(
            "run_program", program_format, payload, shots, seed, self.method, noise
        )

    async def submit(self, spec: RunSpec) -> str:
        provider_job_id = f"aer-{spec.job_id}"
        fut = asyncio.ensure_future(
            self.call(
                "run_program",
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
            answer = await fut
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"simulation failed: {exc}") from None
        finally:
            self._running.pop(provider_job_id, None)
        if not isinstance(answer, dict) or not isinstance(answer.get("counts"), dict):
            raise ProviderError("simulation failed: the worker answered with no counts")
        return answer

    async def recover(self, spec: RunSpec, provider_job_id: str | None) -> dict[str, Any]:
        # A local simulation has no effect outside this machine and costs nothing: one cut short
        # by a restart is run again, with the same seed, rather than lost.
        new_id = await self.submit(spec)
        return await self.result(spec, new_id)
