"""Code that runs in the program worker processes, never in the server process.

Programs come from an untrusted kernel: they are parsed, linted, drawn, exported and simulated
only in sandboxed workers (sandbox/worker_launch.py, with the agent kernel's layers), so a
parser bug, a loader that runs code, or a crash of the simulator reaches a process that holds
nothing: no network, no keyring, no state, no workspace. The pool calls the functions of
FUNCTIONS by name; they take and return JSON-able values and bytes.
"""

from __future__ import annotations

import io
from typing import Any

# QPY formats before 13 keep symbolic expressions as sympy text or symengine blobs; Qiskit up to
# 1.4.1 read the text with sympy's eval-based parser, so a crafted file ran code in whoever
# loaded it (CVE-2025-2000). 1.4.2 parses that text itself, but the old formats remain the
# attack surface the CVE was about, and 13 (Qiskit's own expression encoding, the oldest that
# Qiskit 2.x writes: qpy.QPY_COMPATIBILITY_VERSION) is all any kernel here produces.
MIN_QPY_VERSION = 13
QPY_MAGIC = b"QISKIT"

# Built once per worker process: an AerSimulator's target (and a pass manager for it) costs
# hundreds of milliseconds to make, and nothing to reuse.
_SIMULATORS: dict[str, Any] = {}
_PASS_MANAGERS: dict[str, Any] = {}
_SNAPSHOTS: dict[str, Any] = {}
_NOISY: dict[str, Any] = {}
_SNAPSHOT_PASS_MANAGERS: dict[str, Any] = {}


def snapshot(name: str) -> Any:
    """A device snapshot (target, calibration, noise) shipped with qiskit-ibm-runtime, by its
    backend name (`fake_brisbane`, `fake_torino`, ...). Loading one takes seconds: once per
    process."""
    if name not in _SNAPSHOTS:
        from ..devices import snapshot_class

        _SNAPSHOTS[name] = snapshot_class(name)()
    return _SNAPSHOTS[name]


def noisy_simulator(name: str) -> Any:
    """Aer with the snapshot's noise model and coupling map."""
    if name not in _NOISY:
        from qiskit_aer import AerSimulator

        _NOISY[name] = AerSimulator.from_backend(snapshot(name))
    return _NOISY[name]


def snapshot_pass_manager(name: str) -> Any:
    if name not in _SNAPSHOT_PASS_MANAGERS:
        from qiskit.transpiler import generate_preset_pass_manager

        _SNAPSHOT_PASS_MANAGERS[name] = generate_preset_pass_manager(
            optimization_level=1, target=snapshot(name).target, seed_transpiler=0
        )
    return _SNAPSHOT_PASS_MANAGERS[name]


def simulator(method: str = "automatic") -> Any:
    if method not in _SIMULATORS:
        from qiskit_aer import AerSimulator

        _SIMULATORS[method] = AerSimulator(method=method)
    return _SIMULATORS[method]


def pass_manager(method: str = "automatic") -> Any:
    if method not in _PASS_MANAGERS:
        from qiskit.transpiler import generate_preset_pass_manager

        _PASS_MANAGERS[method] = generate_preset_pass_manager(
            optimization_level=1, target=simulator(method).target, seed_transpiler=0
        )
    return _PASS_MANAGERS[method]


def qpy_version(payload: bytes) -> int:
    """The QPY format version in the file's header; ValueError if it is not QPY, or older than
    MIN_QPY_VERSION (read before anything else of the file is)."""
    if len(payload) < len(QPY_MAGIC) + 1 or not payload.startswith(QPY_MAGIC):
        raise ValueError("not a QPY file (it does not start with the QISKIT header)")
    version = payload[len(QPY_MAGIC)]
    if version < MIN_QPY_VERSION:
        raise ValueError(
            f"QPY format version {version} is refused: versions before {MIN_QPY_VERSION} "
            "encode expressions the way CVE-2025-2000 abused (sympy/symengine); dump the "
            f"circuit again with Qiskit 1.3 or later (QPY {MIN_QPY_VERSION} and up)"
        )
    return version


def load_circuit(program_format: str, payload: bytes) -> Any:
    if program_format == "qpy":
        from qiskit import qpy

        qpy_version(payload)
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


def clbits_read_before_written(qc: Any) -> list[int]:
    """Indices of classical bits a condition reads before any measurement has written them."""
    written: set[Any] = set()
    unwritten_reads: set[int] = set()

    def reads(inst: Any) -> list[Any]:
        condition = getattr(inst.operation, "condition", None)
        if condition is None:
            return []
        target = condition[0]
        return list(target) if hasattr(target, "__iter__") else [target]

    for inst in qc.data:
        for bit in reads(inst):
            if bit not in written:
                unwritten_reads.add(qc.find_bit(bit).index)
        if inst.operation.name == "measure":
            written.update(inst.clbits)
    return sorted(unwritten_reads)


def transpiled_facts(qc: Any, target: str | None) -> dict[str, Any] | None:
    """Depth and two-qubit gates after transpiling to the backend's target: "aer" (the local
    simulator), a snapshot name (a device's target), or None (no target known: no facts)."""
    if target is None:
        return None
    if target == "aer":
        return transpile_to(qc, simulator(), target, pass_manager())
    return transpile_to(qc, snapshot(target), target, snapshot_pass_manager(target))


def transpile_to(qc: Any, backend: Any, name: str, pm: Any = None) -> dict[str, Any]:
    from qiskit import transpile
    from qiskit.converters import circuit_to_dag

    width = getattr(backend, "num_qubits", None)
    if width is not None and qc.num_qubits > width:
        # The too-many-qubits finding says it; there is nothing to transpile onto.
        return {"target": name, "skipped": f"{qc.num_qubits} qubits do not fit in {width}"}
    if pm is not None:
        tqc = pm.run(qc)
    else:
        tqc = transpile(qc, backend, optimization_level=1, seed_transpiler=0)
    # On the DAG (Rust): a 127-qubit circuit's depth takes 0.4 s the Python way, 4 ms here.
    # two_qubit_ops() leaves out directives: a barrier across two qubits is not a gate.
    dag = circuit_to_dag(tqc, copy_operations=False)
    return {"target": name, "depth": depth(tqc, dag), "two_qubit_gates": len(dag.two_qubit_ops())}


def depth(qc: Any, dag: Any = None) -> int:
    """The circuit's depth, on the DAG (Rust) unless control flow makes that ambiguous there;
    QuantumCircuit.depth() counts a control-flow block as one operation."""
    from qiskit.converters import circuit_to_dag

    if qc.has_control_flow_op():
        return int(qc.depth())
    return int((dag if dag is not None else circuit_to_dag(qc, copy_operations=False)).depth())


def inspect_program(
    program_format: str, payload: bytes, target: str | None = None
) -> dict[str, Any]:
    from qiskit.circuit import CONTROL_FLOW_OP_NAMES

    from .spoofed_gates import spoofed_gates

    qc = load_circuit(program_format, payload)
    ops = {str(k): int(v) for k, v in qc.count_ops().items()}
    # Only control flow reads classical bits: skip the scan of plain circuits.
    conditional = any(name in CONTROL_FLOW_OP_NAMES for name in ops)
    return {
        "num_qubits": qc.num_qubits,
        "num_clbits": qc.num_clbits,
        "depth": depth(qc),
        "has_measurements": ops.get("measure", 0) > 0,
        "num_parameters": qc.num_parameters,
        "operations": ops,
        "clbits_read_before_written": clbits_read_before_written(qc) if conditional else [],
        "transpiled": transpiled_facts(qc, target),
        "spoofed_gates": spoofed_gates(qc),
    }


def run_program(
    program_format: str,
    payload: bytes,
    shots: int,
    seed: int | None,
    method: str,
    noise: str | None = None,
) -> dict[str, Any]:
    """Simulate; with `noise` (a snapshot name), on that device's target with its noise
    model, as the preflight preview of a hardware job."""
    qc = load_circuit(program_format, payload)
    if noise is None:
        sim, compiled = simulator(method), pass_manager(method).run(qc)
    else:
        sim, compiled = noisy_simulator(noise), snapshot_pass_manager(noise).run(qc)
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
        "simulator": {
            "name": "aer",
            "method": method if noise is None else "automatic",
            "noise_model": noise,
            "time_taken": result.time_taken,
        },
    }


def warm_snapshot(name: str) -> bool:
    noisy_simulator(name)
    snapshot_pass_manager(name)
    return True


def warm_up() -> bool:
    """Import the heavy modules once, so the first job does not pay for it."""
    import qiskit  # noqa: F401
    import qiskit_aer  # noqa: F401

    pass_manager()
    return True


def export_program(program_format: str, payload: bytes) -> dict[str, Any]:
    """The program as QPY and as OpenQASM 3, for a reproducibility bundle. A form the program
    cannot be written in is left out, with the reason."""
    from qiskit import qasm3, qpy

    qc = load_circuit(program_format, payload)
    out: dict[str, Any] = {"qpy": None, "qasm3": None, "errors": {}}
    try:
        buf = io.BytesIO()
        qpy.dump(qc, buf)
        out["qpy"] = payload if program_format == "qpy" else buf.getvalue()
    except Exception as exc:
        out["errors"]["qpy"] = f"{type(exc).__name__}: {exc}"
    try:
        out["qasm3"] = payload.decode() if program_format == "qasm3" else qasm3.dumps(qc)
    except Exception as exc:
        out["errors"]["qasm3"] = f"{type(exc).__name__}: {exc}"
    return out


def for_target(target: str) -> tuple[Any, Any]:
    """(backend, pass manager) of a lint target: "aer" or a snapshot name."""
    if target == "aer":
        return simulator(), pass_manager()
    return snapshot(target), snapshot_pass_manager(target)


def without_labels(qc: Any) -> Any:
    """A copy where every operation is drawn by its name: a label is the program's caption
    (an X labelled "H" is drawn as H), the name is what the backend runs."""
    out = qc.copy_empty_like()
    for inst in qc.data:
        op = inst.operation
        if getattr(op, "blocks", None):
            op = op.replace_blocks([without_labels(b) for b in op.blocks])
        if getattr(op, "label", None) is not None:
            op = op.to_mutable()
            op.label = None
        out.append(inst.replace(operation=op))
    return out


def draw_program(
    program_format: str, payload: bytes, target: str | None = None, width: int = 100
) -> dict[str, Any]:
    """Qiskit's text drawing (folded at `width` columns) of the circuit as it will run: as
    transpiled for `target` ("aer" or a snapshot name, what lint and the provider transpile
    to), in the backend's own gates, idle qubits left out; the program as sent when there is
    no target (or it does not fit). {"drawing": text, "target": what it was transpiled for
    (None: not transpiled), "why_not": why it was not (or None)}."""
    qc = load_circuit(program_format, payload)
    drawn, transpiled_for, why_not = qc, None, None
    if target is not None:
        backend, pm = for_target(target)
        room = getattr(backend, "num_qubits", None)
        if room is not None and qc.num_qubits > room:
            why_not = f"{qc.num_qubits} qubits do not fit in {target}'s {room}"
        else:
            drawn, transpiled_for = pm.run(qc), target
    else:
        why_not = "the backend names no target to transpile to"
    text = without_labels(drawn).draw(output="text", fold=width, idle_wires=transpiled_for is None)
    return {"drawing": str(text), "target": transpiled_for, "why_not": why_not}


FUNCTIONS = {
    f.__name__: f
    for f in (
        inspect_program,
        run_program,
        export_program,
        draw_program,
        warm_up,
        warm_snapshot,
    )
}
