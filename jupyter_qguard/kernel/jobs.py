"""Jobs as the agent sees them: submit a circuit, follow its state, get Qiskit Counts back."""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Callable
from typing import Any

from .client import BrokerClient, QGuardError, client

TERMINAL = {"rejected", "denied", "expired", "voided", "cancelled", "completed", "failed"}


class QGuardDenied(QGuardError):
    """A person denied the job, or it was rejected, expired, voided or cancelled."""


class QGuardJobFailed(QGuardError):
    """The provider failed the job."""


def encode_circuit(circuit: Any, *, source: str | None = None) -> dict[str, Any]:
    """A Qiskit circuit as a `qguard.job/v1` program (QPY)."""
    from qiskit import QuantumCircuit, qpy

    if not isinstance(circuit, QuantumCircuit):
        raise TypeError(f"expected a qiskit QuantumCircuit, got {type(circuit).__name__}")
    buf = io.BytesIO()
    qpy.dump(circuit, buf)
    payload = buf.getvalue()
    program = {
        "sdk": "qiskit",
        "format": "qpy",
        "payload_b64": base64.b64encode(payload).decode("ascii"),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    if source:
        program["source"] = source[:200000]
    return program


def describe(status: dict[str, Any]) -> str:
    state = status["state"]
    text = f"qguard job {status['id'][:12]} on {status['backend']}: {state}"
    if state == "pending_approval":
        needed = status.get("approvals_required") or 1
        left = max(1, needed - (status.get("approvals_given") or 0))
        text += (
            f" — waiting for {left} more approval(s) of {needed}: in JupyterLab's qguard panel, "
            f"or POST /qguard/api/jobs/{status['id']}/approve"
        )
    if status.get("reason"):
        text += f" — {status['reason']}"
    return text


class QGuardJob:
    """A job handed to the broker. `result()` waits for it and returns Qiskit `Counts`."""

    def __init__(self, status: dict[str, Any], broker: BrokerClient | None = None) -> None:
        self._broker = broker or client()
        self.job_id: str = status["id"]
        self._status = status

    def __repr__(self) -> str:
        return f"<QGuardJob {self.job_id} {self._status['state']}>"

    @property
    def state(self) -> str:
        return self._status["state"]

    def status(self) -> dict[str, Any]:
        self._status = self._broker.call("status", {"job_id": self.job_id})
        return self._status

    def wait(
        self,
        timeout: float | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 10.0,
    ) -> dict[str, Any]:
        """Block until the job is final (or `timeout` seconds pass); return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self.status()
        if on_change:
            on_change(status)
        while status["state"] not in TERMINAL:
            step = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            if deadline is not None and step <= 0:
                raise TimeoutError(f"job {self.job_id} still {status['state']} after {timeout} s")
            new = self._broker.call(
                "wait", {"job_id": self.job_id, "timeout": step, "state": status["state"]}
            )
            if new["state"] != status["state"] and on_change:
                on_change(new)
            status = self._status = new
        return status

    def result(
        self,
        timeout: float | None = None,
        on_change: Callable[[dict[str, Any]], None] | None = None,
    ) -> Any:
        status = self.wait(timeout=timeout, on_change=on_change)
        if status["state"] == "failed":
            raise QGuardJobFailed(describe(status), data=status)
        if status["state"] != "completed":
            raise QGuardDenied(describe(status), data=status)
        reply = self._broker.call("result", {"job_id": self.job_id})
        return to_counts(reply["result"])

    def cancel(self) -> dict[str, Any]:
        self._status = self._broker.call("cancel", {"job_id": self.job_id})
        return self._status


def current_cell_id() -> str | None:
    """The id of the cell being run (from the execute request's metadata), if any: kept with
    the job for orientation only (the kernel's word, never used for a decision)."""
    try:
        from IPython import get_ipython

        kernel = getattr(get_ipython(), "kernel", None)
        parent = kernel.get_parent("shell") if kernel is not None else None
    except Exception:
        return None
    return ((parent or {}).get("metadata") or {}).get("cellId")


def to_counts(result: dict[str, Any]) -> Any:
    from qiskit.result import Counts

    return Counts(result["counts"])


def encode_qasm(
    text: str, *, sdk: str = "qiskit", program_format: str = "qasm2", source: str | None = None
) -> dict[str, Any]:
    """An OpenQASM program (PennyLane tapes arrive this way) as a `qguard.job/v1` program."""
    payload = text.encode("utf-8")
    program = {
        "sdk": sdk,
        "format": program_format,
        "payload_b64": base64.b64encode(payload).decode("ascii"),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    if source:
        program["source"] = source[:200000]
    return program


def submit(
    circuit: Any,
    *,
    backend: str,
    shots: int,
    seed: int | None = None,
    max_cost: float | None = None,
    files: dict[str, str | None] | None = None,
    source: str | None = None,
    cell_id: str | None = None,
    broker: BrokerClient | None = None,
) -> QGuardJob:
    """Send a Qiskit circuit to the broker; returns at once with the job."""
    return submit_program(
        encode_circuit(circuit, source=source),
        backend=backend,
        shots=shots,
        seed=seed,
        max_cost=max_cost,
        files=files,
        cell_id=cell_id,
        broker=broker,
    )


def submit_program(
    program: dict[str, Any],
    *,
    backend: str,
    shots: int,
    seed: int | None = None,
    max_cost: float | None = None,
    files: dict[str, str | None] | None = None,
    cell_id: str | None = None,
    broker: BrokerClient | None = None,
) -> QGuardJob:
    """Send an encoded program (`encode_circuit`, `encode_qasm`) to the broker."""
    broker = broker or client()
    if cell_id is None:
        cell_id = current_cell_id()
    request: dict[str, Any] = {
        "schema": "qguard.job/v1",
        "program": program,
        "backend": backend,
        "shots": shots,
        "seed": seed,
        "max_cost": max_cost,
        "files": files or {},
        "cell_id": cell_id,
    }
    return QGuardJob(broker.call("submit", {"job": request}), broker)
