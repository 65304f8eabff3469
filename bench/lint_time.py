"""Lint time (parse, checks, transpile to a target), cold, for a 27-qubit and a 127-qubit
circuit of depth 100 (issue 4 target: ≤ 2 s for the second), transpiled to the device snapshots
of IBM's Kolkata (27 qubits) and Brisbane (127 qubits) from qiskit-ibm-runtime."""

from __future__ import annotations

import io
import random
import time

from common import fig, record
from qiskit import QuantumCircuit, qpy

from jupyter_qguard.providers.aer_worker import inspect_program, snapshot_pass_manager


def circuit(qubits: int, depth: int) -> bytes:
    rng = random.Random(qubits)
    qc = QuantumCircuit(qubits)
    for layer in range(depth):
        for q in range(qubits):
            qc.rz(rng.random(), q)
        for q in range(layer % 2, qubits - 1, 2):
            qc.cx(q, q + 1)
    qc.measure_all()
    buf = io.BytesIO()
    qpy.dump(qc, buf)
    return buf.getvalue()


def main() -> None:
    inspect_program("qpy", circuit(3, 2), "aer")  # imports, not counted
    out: dict = {}
    for qubits, target in ((27, "fake_kolkata"), (127, "fake_brisbane")):
        payload = circuit(qubits, 100)
        # The device snapshot loads once per worker, at broker start (Aer warm_snapshots).
        t = time.perf_counter()
        snapshot_pass_manager(target)
        out[f"snapshot_load_{target}"] = fig(round(time.perf_counter() - t, 3), "s")
        # Cold for the circuit: never parsed nor transpiled before.
        t = time.perf_counter()
        facts = inspect_program("qpy", payload, target)
        out[f"lint_{qubits}q_depth100_on_{target}"] = fig(
            round(time.perf_counter() - t, 3), "s", target=2.0 if qubits == 127 else None
        )
        out[f"two_qubit_gates_{qubits}q"] = fig(facts["transpiled"]["two_qubit_gates"], "gates")
        out[f"depth_after_transpile_{qubits}q"] = fig(facts["transpiled"]["depth"], "layers")
    record(
        "lint_time",
        "Lint of a random depth-100 circuit, transpiled to a device snapshot, cold",
        out,
    )


if __name__ == "__main__":
    main()
