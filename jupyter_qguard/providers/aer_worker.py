"""Code that runs in the simulator worker processes, never in the server process.

Programs come from an untrusted kernel: parsing and simulating them in a separate process keeps
a parser bug or a crash of the simulator away from the server and off its event loop.
"""

from __future__ import annotations

import io
from typing import Any


def load_circuit(program_format: str, payload: bytes) -> Any:
    if program_format == "qpy":
        from qiskit import qpy

        circuits = qpy.load(io.BytesIO(payload))
        if len(circuits) != 1:
            raise ValueError(f"a QPY program must hold exactly one circuit, not {len(circuits)}")
        return circuits[0]
    if program_format == "qasm2":
        from qiskit import qasm2

        return qasm2.loads(
            payload.decode("utf-8"), custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS
        )
    if program_format == "qasm3":
        from qiskit import qasm3

        return qasm3.loads(payload.decode("utf-8"))
    raise ValueError(f"unsupported program format {program_format!r}")


def inspect_program(program_format: str, payload: bytes) -> dict[str, Any]:
    qc = load_circuit(program_format, payload)
    ops = {str(k): int(v) for k, v in qc.count_ops().items()}
    return {
        "num_qubits": qc.num_qubits,
        "num_clbits": qc.num_clbits,
        "depth": qc.depth(),
        "has_measurements": ops.get("measure", 0) > 0,
        "num_parameters": qc.num_parameters,
        "operations": ops,
    }


def run_program(
    program_format: str, payload: bytes, shots: int, seed: int | None, method: str
) -> dict[str, Any]:
    from qiskit import transpile
    from qiskit_aer import AerSimulator

    qc = load_circuit(program_format, payload)
    sim = AerSimulator(method=method)
    compiled = transpile(qc, sim, seed_transpiler=seed)
    options: dict[str, Any] = {"shots": shots}
    if seed is not None:
        options["seed_simulator"] = seed
    result = sim.run(compiled, **options).result()
    if not result.success:
        raise RuntimeError(result.status)
    counts = result.get_counts(0)
    return {
        "counts": {str(k): int(v) for k, v in counts.items()},
        "shots": shots,
        "seed": seed,
        "simulator": {"name": "aer", "method": method, "time_taken": result.time_taken},
    }


def warm_up() -> bool:
    """Import the heavy modules once, so the first job does not pay for it."""
    import qiskit  # noqa: F401
    import qiskit_aer  # noqa: F401

    return True
