"""`QGuardBackend`: a Qiskit BackendV2 whose runs go through the broker.

Its target is the device's calibration snapshot the broker names for the backend (loaded from
the snapshot data shipped with qiskit-ibm-runtime, so `transpile(circuit, backend)` works
offline, in the sandbox); `run()` turns each circuit into a broker job, which for hardware waits
for a person. `BackendSamplerV2` and `BackendEstimatorV2` run on it unchanged.
"""

from __future__ import annotations

import random
import time
import uuid
import warnings
from typing import Any

from qiskit.providers import BackendV2, JobStatus, JobV1, Options
from qiskit.result import Result
from qiskit.transpiler import Target

from .client import BrokerClient, client
from .jobs import QGuardJob, submit
from .waiting import StatusLine, wait_for_counts

# Basis of a backend for which the broker names no device snapshot.
GENERIC_BASIS = ["id", "rz", "sx", "x", "cx", "measure", "delay", "reset"]

_JOB_STATUS = {
    "received": JobStatus.INITIALIZING,
    "pending_approval": JobStatus.QUEUED,
    "approved": JobStatus.QUEUED,
    "queued": JobStatus.QUEUED,
    "submitted": JobStatus.RUNNING,
    "completed": JobStatus.DONE,
    "failed": JobStatus.ERROR,
}


def snapshot_target(name: str) -> Target:
    """The target of a device snapshot shipped with qiskit-ibm-runtime, by backend name."""
    from ..devices import snapshot_class

    try:
        return snapshot_class(name)().target
    except ValueError as exc:
        raise ValueError(f"{exc} in this kernel") from None


def target_for(info: dict[str, Any]) -> Target:
    kind = info.get("target")
    if kind and kind != "aer":
        return snapshot_target(str(kind))
    if kind == "aer":
        from qiskit_aer import AerSimulator

        target = AerSimulator().target
        if target.num_qubits is None and info.get("qubits"):
            target.num_qubits = int(info["qubits"])
        return target
    return Target.from_configuration(
        basis_gates=GENERIC_BASIS, num_qubits=int(info.get("qubits") or 32)
    )


class QGuardBackend(BackendV2):
    """A broker backend as a Qiskit backend. `run()` returns at once with a job whose
    `result()` waits (showing one live status line) for approval and the run."""

    def __init__(self, info: dict[str, Any], broker: BrokerClient | None = None) -> None:
        super().__init__(
            name=info["name"],
            description=info.get("description") or f"{info['name']} through the qguard broker",
            backend_version="qguard",
        )
        self.info = dict(info)
        self._broker = broker
        self._target: Target | None = None

    def __repr__(self) -> str:
        return f"<QGuardBackend('{self.name}') tier={self.info.get('tier')}>"

    def __getstate__(self) -> dict[str, Any]:
        # Copies (qiskit-ibm-runtime deep-copies the backend it is given) use the kernel's own
        # channel; the socket itself cannot be copied.
        state = dict(self.__dict__)
        state["_broker"] = None
        return state

    @property
    def target(self) -> Target:
        if self._target is None:
            self._target = target_for(self.info)
        return self._target

    @property
    def max_circuits(self) -> int | None:
        return None

    @classmethod
    def _default_options(cls) -> Options:
        return Options(shots=1024, seed_simulator=None, memory=False, timeout=None, max_cost=None)

    def run(self, run_input: Any, **options: Any) -> QGuardRunJob:
        circuits = run_input if isinstance(run_input, list | tuple) else [run_input]
        opts = {**self.options.__dict__, **options}
        unknown = set(options) - set(self.options.__dict__) - {"meas_level", "init_qubits"}
        if unknown:
            # Primitives pass options of their own (rep_delay, ...): the provider decides those.
            warnings.warn(
                f"{self.name}: run() options {sorted(unknown)} are ignored; the broker takes "
                f"{sorted(self.options.__dict__)}",
                stacklevel=2,
            )
        if options.get("meas_level", 2) != 2:
            raise ValueError(f"{self.name}: only meas_level=2 (counts) results are available")
        broker = self._broker or client()
        jobs = [
            submit(
                circuit,
                backend=self.name,
                shots=int(opts["shots"]),
                seed=opts.get("seed_simulator"),
                max_cost=opts.get("max_cost"),
                broker=broker,
            )
            for circuit in circuits
        ]
        return QGuardRunJob(self, jobs, circuits, opts)


class QGuardRunJob(JobV1):
    """The broker jobs of one `run()` call (one per circuit), as one Qiskit job."""

    def __init__(
        self,
        backend: QGuardBackend,
        jobs: list[QGuardJob],
        circuits: list[Any],
        options: dict[str, Any],
    ) -> None:
        job_id = jobs[0].job_id if len(jobs) == 1 else f"qguard-{uuid.uuid4().hex[:12]}"
        super().__init__(backend, job_id)
        self.jobs = jobs
        self._circuits = circuits
        self._options = options
        self._lines = [StatusLine(job) for job in jobs]
        self._result: Result | None = None

    def submit(self) -> None:
        # The circuits went to the broker when run() was called.
        raise RuntimeError("a qguard job is submitted when backend.run() is called")

    def job_ids(self) -> list[str]:
        return [job.job_id for job in self.jobs]

    def status(self) -> JobStatus:
        states = [job.status()["state"] for job in self.jobs]
        if any(s in ("rejected", "denied", "expired", "voided", "cancelled") for s in states):
            return JobStatus.CANCELLED
        found = [_JOB_STATUS.get(s, JobStatus.QUEUED) for s in states]
        for status in (
            JobStatus.ERROR,
            JobStatus.INITIALIZING,
            JobStatus.QUEUED,
            JobStatus.RUNNING,
        ):
            if status in found:
                return status
        return JobStatus.DONE

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    def result(self, timeout: float | None = None) -> Result:
        """Waits for every circuit's job. A denial raises QGuardDenied, a provider failure
        QGuardJobFailed; interrupting stops the wait, not the jobs."""
        if self._result is not None:
            return self._result
        timeout = timeout if timeout is not None else self._options.get("timeout")
        deadline = None if timeout is None else time.monotonic() + timeout
        experiments = []
        for job, circuit, line in zip(self.jobs, self._circuits, self._lines, strict=True):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                counts = wait_for_counts(job, timeout=left, line=line)
            except TimeoutError:
                # Said with the timeout the caller gave, not what was left of it.
                raise TimeoutError(
                    f"job {job.job_id} still {job.state} after {timeout:g} s"
                ) from None
            experiments.append(self._experiment(job, circuit, dict(counts)))
        self._result = Result.from_dict(
            {
                "backend_name": self.backend().name,
                "backend_version": "qguard",
                "job_id": self.job_id(),
                "qobj_id": self.job_id(),
                "success": True,
                "results": experiments,
            }
        )
        return self._result

    def _experiment(self, job: QGuardJob, circuit: Any, counts: dict[str, int]) -> dict:
        """One circuit's counts in the result format Qiskit's own simulators use (hex keys),
        with per-shot memory when asked (Sampler asks): the shots of the counts, shuffled."""
        hex_counts: dict[str, int] = {}
        for key, n in counts.items():
            h = hex(int(key.replace(" ", ""), 2))
            hex_counts[h] = hex_counts.get(h, 0) + n
        data: dict[str, Any] = {"counts": hex_counts}
        shots = sum(counts.values())
        if self._options.get("memory"):
            memory = [h for h, n in hex_counts.items() for _ in range(n)]
            # The per-shot order is not reported by the broker; the joint outcomes are.
            random.Random(self._options.get("seed_simulator")).shuffle(memory)
            data["memory"] = memory
        return {
            "shots": shots,
            "success": True,
            "data": data,
            "status": "DONE",
            "seed_simulator": self._options.get("seed_simulator"),
            "header": {
                "name": circuit.name,
                "n_qubits": circuit.num_qubits,
                "qreg_sizes": [[r.name, r.size] for r in circuit.qregs],
                "creg_sizes": [[r.name, r.size] for r in circuit.cregs],
                "qubit_labels": [[r.name, j] for r in circuit.qregs for j in range(r.size)],
                "clbit_labels": [[r.name, j] for r in circuit.cregs for j in range(r.size)],
                "memory_slots": circuit.num_clbits,
                "global_phase": circuit.global_phase,
                "metadata": {**(circuit.metadata or {}), "qguard_job_id": job.job_id},
            },
        }


def backends(broker: BrokerClient | None = None) -> list[QGuardBackend]:
    """Every backend the broker offers this kernel."""
    broker = broker or client()
    return [QGuardBackend(info, broker) for info in broker.call("backends", {})]


def get_backend(name: str, broker: BrokerClient | None = None) -> QGuardBackend:
    found = {b.name: b for b in backends(broker)}
    if name not in found:
        raise ValueError(f"no backend {name!r}; the broker offers: {', '.join(sorted(found))}")
    return found[name]
