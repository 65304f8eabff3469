"""Lint time (parse, checks, transpile to a target), cold, for a 27-qubit and a 127-qubit
circuit of depth 100 (issue 4 target: ≤ 2 s for the second). Until the providers bring real
calibration targets, the target is qiskit's GenericBackendV2 of the same width."""

from __future__ import annotations

import io
import random
import time

from common import record
from qiskit import QuantumCircuit, qpy
from qiskit.providers.fake_provider import GenericBackendV2

from jupyter_qguard.providers.aer_worker import inspect_program, load_circuit, transpile_to


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
    out = {"unit": "s", "target": "GenericBackendV2(n)", "target_127q_seconds": 2.0}
    for qubits in (27, 127):
        payload = circuit(qubits, 100)
        backend = GenericBackendV2(num_qubits=qubits, seed=1)
        t = time.perf_counter()
        inspect_program("qpy", payload)
        facts = transpile_to(load_circuit("qpy", payload), backend, f"generic{qubits}")
        out[f"lint_{qubits}q_depth100"] = round(time.perf_counter() - t, 3)
        out[f"two_qubit_gates_{qubits}q"] = facts["two_qubit_gates"]
    record("lint_time", out)


if __name__ == "__main__":
    main()
