"""Code that runs in the fake cloud's worker processes, never on its event loop.

Programs come from clients the fake cloud does not trust: parsing and simulating them in other
processes keeps a parser bug, a crash of the simulator or a long run away from the server.

A job runs like this:

1. the program is transpiled (optimization level 1) to the target of the snapshot backend
   (`qiskit_ibm_runtime.fake_provider.FakeBrisbane` / `FakeTorino`): layout, routing and basis
   translation as on the device;
2. the physical qubits the transpiled circuit touches ("active" qubits) are found;
3. a noise model is built from the calibration the server hands over (the snapshot's own, or a
   drifted one), for the active qubits only. It is the model `AerSimulator.from_backend` builds
   (depolarizing + thermal relaxation per gate, readout error per qubit; the same Aer functions
   make it), restricted to those qubits: serialising the noise of all 127 qubits to the
   simulator costs about two seconds per run, the restricted one a few milliseconds, and Aer
   leaves idle qubits out of the simulation either way;
4. `AerSimulator.from_backend(snapshot)` runs it with that noise model.

execution_seconds is modelled, not measured: shots x (the circuit's duration on the device, the
critical path of its instructions with the calibration's gate and readout lengths, plus the
backend's default repetition delay, 250 us on both snapshots). That is what a device's clock
bills (the shots dominate), and it does not depend on how busy this machine is.
"""

from __future__ import annotations

import signal
import time
from collections import OrderedDict
from typing import Any

# The same program parsing and device snapshots as the broker's Aer workers.
from ..providers.aer_worker import load_circuit, snapshot
from ..workers import exit_with_parent

# Backends the fake cloud offers, by the snapshot class that stands in for each.
SNAPSHOTS = {"fake_brisbane": "FakeBrisbane", "fake_torino": "FakeTorino"}

# Noisy simulation of n qubits costs 2^n memory (and time per shot): bound what a job may ask.
# The first limit is checked when a job is created (qubits the program's operations use), the
# second after transpiling (routing may bring in a few more physical qubits).
MAX_USED_QUBITS = 16
MAX_ACTIVE_QUBITS = 24

_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12}
_NOISE_CACHE_SIZE = 32

# Built once per worker process: a snapshot backend's simulator and pass manager take seconds
# to build and nothing to reuse.
_simulators: dict[str, Any] = {}
_pass_managers: dict[str, Any] = {}
_noise_models: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()


class SimulationError(RuntimeError):
    """A job the device cannot run; the message is shown to the client."""


def init_worker() -> None:
    """Ctrl-C in a terminal reaches the whole process group; the server decides when to stop.
    A killed server takes its workers with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()


def snapshot_backend(name: str) -> Any:
    if name not in SNAPSHOTS:
        raise ValueError(f"the fake cloud has no device {name!r}")
    return snapshot(name)


def simulator(name: str) -> Any:
    if name not in _simulators:
        from qiskit_aer import AerSimulator
        from qiskit_aer.noise import NoiseModel

        backend = snapshot_backend(name)
        # An explicit (empty) noise model stops from_backend from building the full-device one;
        # each run passes the model for its own qubits.
        _simulators[name] = AerSimulator.from_backend(
            backend, noise_model=NoiseModel(basis_gates=backend.operation_names)
        )
    return _simulators[name]


def pass_manager(name: str, scheduled: bool = False) -> Any:
    """The transpiler for a backend. Circuits with delays need the scheduled one: the device's
    timing constraints realign delays, and Qiskit can only do that on a scheduled circuit."""
    key = f"{name}:scheduled" if scheduled else name
    if key not in _pass_managers:
        from qiskit.transpiler import generate_preset_pass_manager

        _pass_managers[key] = generate_preset_pass_manager(
            optimization_level=1,
            target=snapshot_backend(name).target,
            seed_transpiler=0,
            scheduling_method="alap" if scheduled else None,
        )
    return _pass_managers[key]


def warm_up(names: list[str]) -> bool:
    """Build the simulators and pass managers, so that the first job does not wait for them."""
    for name in names:
        simulator(name)
        pass_manager(name)
    return True


def inspect_program(program_format: str, payload: bytes) -> dict[str, Any]:
    """What the server checks before it accepts a job."""
    qc = load_circuit(program_format, payload)
    used = {
        qc.find_bit(q).index
        for inst in qc.data
        if inst.operation.name != "barrier"
        for q in inst.qubits
    }
    ops = qc.count_ops()
    return {
        "num_qubits": qc.num_qubits,
        "used_qubits": len(used),
        "num_clbits": qc.num_clbits,
        "has_measurements": ops.get("measure", 0) > 0,
        "num_parameters": qc.num_parameters,
    }


def base_calibration(name: str) -> dict[str, Any]:
    """The snapshot backend's calibration, as the fake cloud publishes it (no calibration_id:
    the server derives it from the content)."""
    from datetime import UTC

    backend = snapshot_backend(name)
    target = backend.target
    props = backend.properties()

    def qubit_value(q: int, prop: str) -> float | None:
        try:
            return float(props.qubit_property(q, prop)[0])
        except Exception:
            return None

    qubits = []
    for q in range(backend.num_qubits):
        qp = target.qubit_properties[q]
        meas = target["measure"][(q,)]
        qubits.append(
            {
                "qubit": q,
                "t1_us": None if qp.t1 is None else qp.t1 * 1e6,
                "t2_us": None if qp.t2 is None else qp.t2 * 1e6,
                "frequency_ghz": None if qp.frequency is None else qp.frequency / 1e9,
                "readout_error": meas.error,
                "prob_meas0_prep1": qubit_value(q, "prob_meas0_prep1"),
                "prob_meas1_prep0": qubit_value(q, "prob_meas1_prep0"),
                "readout_length_ns": None if meas.duration is None else meas.duration * 1e9,
            }
        )
    gates = []
    for op_name in sorted(target.operation_names):
        if op_name in ("measure", "delay") or target[op_name] is None:
            continue
        for qargs, ip in sorted(target[op_name].items(), key=lambda kv: kv[0] or ()):
            if qargs is None or ip is None:
                continue
            gates.append(
                {
                    "gate": op_name,
                    "qubits": list(qargs),
                    "error": ip.error,
                    "length_ns": None if ip.duration is None else ip.duration * 1e9,
                }
            )
    config = backend.configuration()
    return {
        "backend": name,
        "num_qubits": backend.num_qubits,
        "last_update": props.last_update_date.astimezone(UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "snapshot": {"class": SNAPSHOTS[name], "backend_version": backend.backend_version},
        "dt_ns": backend.dt * 1e9,
        "rep_delay_us": float(config.default_rep_delay) * 1e6,
        "basis_gates": sorted(
            n for n in backend.operation_names if n not in ("measure", "delay", "reset")
        ),
        "qubits": qubits,
        "gates": gates,
    }


def active_qubits(tqc: Any) -> tuple[int, ...]:
    """Physical qubits that something happens to (scheduling pads idle ones with delays)."""
    return tuple(
        sorted(
            {
                tqc.find_bit(q).index
                for inst in tqc.data
                if inst.operation.name not in ("barrier", "delay")
                for q in inst.qubits
            }
        )
    )


def noise_model(name: str, calibration: dict[str, Any], active: tuple[int, ...]) -> Any:
    """`NoiseModel.from_backend`'s model for the calibration, on the active qubits only."""
    key = (calibration["calibration_id"], active)
    if key in _noise_models:
        _noise_models.move_to_end(key)
        return _noise_models[key]

    from qiskit.circuit.library.standard_gates import get_standard_gate_name_mapping
    from qiskit.providers import QubitProperties
    from qiskit.transpiler import InstructionProperties, Target
    from qiskit_aer.noise import NoiseModel
    from qiskit_aer.noise.device import basic_device_gate_errors, basic_device_readout_errors

    index = {p: i for i, p in enumerate(active)}
    qubit_cal = {q["qubit"]: q for q in calibration["qubits"]}

    def seconds(value: float | None, scale: float) -> float | None:
        return None if value is None else value * scale

    # A Target over the active qubits only (renumbered 0..n-1): Aer's device functions turn it
    # into errors exactly as they do for the whole device.
    small = Target(
        num_qubits=len(active),
        dt=calibration["dt_ns"] * 1e-9,
        qubit_properties=[
            QubitProperties(
                t1=seconds(qubit_cal[p]["t1_us"], 1e-6),
                t2=seconds(qubit_cal[p]["t2_us"], 1e-6),
                frequency=seconds(qubit_cal[p]["frequency_ghz"], 1e9),
            )
            for p in active
        ],
    )
    standard = get_standard_gate_name_mapping()
    by_gate: dict[str, dict[tuple[int, ...], Any]] = {}
    for gate in calibration["gates"]:
        if gate["gate"] in standard and all(q in index for q in gate["qubits"]):
            by_gate.setdefault(gate["gate"], {})[tuple(index[q] for q in gate["qubits"])] = (
                InstructionProperties(
                    duration=seconds(gate["length_ns"], 1e-9), error=gate["error"]
                )
            )
    for gate_name, gate_props in by_gate.items():
        small.add_instruction(standard[gate_name], gate_props)
    small.add_instruction(
        standard["measure"],
        {
            (i,): InstructionProperties(
                duration=seconds(qubit_cal[p]["readout_length_ns"], 1e-9),
                error=qubit_cal[p]["readout_error"],
            )
            for i, p in enumerate(active)
        },
    )

    model = NoiseModel(basis_gates=snapshot_backend(name).operation_names)
    for qubits, error in basic_device_readout_errors(target=small):
        model.add_readout_error(error, [active[i] for i in qubits])
    for gate_name, qubits, error in basic_device_gate_errors(target=small):
        model.add_quantum_error(error, gate_name, [active[i] for i in qubits])

    _noise_models[key] = model
    if len(_noise_models) > _NOISE_CACHE_SIZE:
        _noise_models.popitem(last=False)
    return model


def with_delay_noise(tqc: Any, calibration: dict[str, Any]) -> Any:
    """Relaxation during explicit delays, as `NoiseModel.from_backend` adds it."""
    if "delay" not in tqc.count_ops():
        return tqc
    from qiskit.circuit import Delay
    from qiskit.transpiler import PassManager
    from qiskit_aer.noise.passes import RelaxationNoisePass

    # Noise on the delays that pad idle qubits would make the simulator carry those qubits too.
    active = set(active_qubits(tqc))
    kept = tqc.copy_empty_like()
    for inst in tqc.data:
        if inst.operation.name == "delay" and tqc.find_bit(inst.qubits[0]).index not in active:
            continue
        kept.append(inst)
    tqc = kept

    inf = float("inf")
    t1s = [inf if q["t1_us"] is None else q["t1_us"] * 1e-6 for q in calibration["qubits"]]
    # T2 above 2 T1 is unphysical; Aer truncates it the same way for gates.
    t2s = [
        inf if q["t2_us"] is None else min(q["t2_us"] * 1e-6, 2 * t1)
        for q, t1 in zip(calibration["qubits"], t1s, strict=True)
    ]
    relax = RelaxationNoisePass(t1s=t1s, t2s=t2s, dt=calibration["dt_ns"] * 1e-9, op_types=Delay)
    return PassManager([relax]).run(tqc)


def circuit_duration(tqc: Any, calibration: dict[str, Any]) -> float:
    """The circuit's critical path on the device, in seconds."""
    lengths = {
        (g["gate"], tuple(g["qubits"])): (g["length_ns"] or 0.0) * 1e-9
        for g in calibration["gates"]
    }
    readout = {q["qubit"]: (q["readout_length_ns"] or 0.0) * 1e-9 for q in calibration["qubits"]}
    dt = calibration["dt_ns"] * 1e-9

    def op_duration(op: Any, physical: list[int]) -> float:
        if op.name == "measure":
            return readout.get(physical[0], 0.0)
        if op.name == "delay":
            value = op.duration
            if not isinstance(value, int | float):
                return 0.0
            return float(value) * (dt if op.unit == "dt" else _TIME_UNITS.get(op.unit, 0.0))
        blocks = getattr(op, "blocks", None)
        if blocks:
            spans = [span(block, physical) for block in blocks]
            if op.name == "for_loop":
                return len(op.params[0]) * max(spans)
            # if/else and switch take one branch; a while loop's count is unknown: once.
            return max(spans)
        return lengths.get((op.name, tuple(physical)), 0.0)

    def span(circuit: Any, physical: list[int]) -> float:
        clock: dict[int, float] = {}
        for inst in circuit.data:
            qs = [physical[circuit.find_bit(q).index] for q in inst.qubits]
            start = max((clock.get(q, 0.0) for q in qs), default=0.0)
            end = (
                start
                if inst.operation.name == "barrier"
                else start + op_duration(inst.operation, qs)
            )
            for q in qs:
                clock[q] = end
        return max(clock.values(), default=0.0)

    return span(tqc, list(range(tqc.num_qubits)))


def run_job(
    name: str,
    calibration: dict[str, Any],
    program_format: str,
    payload: bytes,
    shots: int,
    seed: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    qc = load_circuit(program_format, payload)
    tqc = pass_manager(name, scheduled="delay" in qc.count_ops()).run(qc)
    active = active_qubits(tqc)
    if len(active) > MAX_ACTIVE_QUBITS:
        raise SimulationError(
            f"after routing on {name} the circuit touches {len(active)} physical qubits; "
            f"this fake cloud simulates at most {MAX_ACTIVE_QUBITS}"
        )
    model = noise_model(name, calibration, active)
    runnable = with_delay_noise(tqc, calibration)
    result = (
        simulator(name).run(runnable, shots=shots, seed_simulator=seed, noise_model=model).result()
    )
    if not result.success:
        raise SimulationError(f"the simulator failed: {result.status}")
    counts = result.get_counts(0)
    per_shot = circuit_duration(tqc, calibration) + calibration["rep_delay_us"] * 1e-6
    return {
        "counts": {str(k): int(v) for k, v in counts.items()},
        "shots": shots,
        "seed": seed,
        "backend": name,
        "calibration_id": calibration["calibration_id"],
        "execution_seconds": round(shots * per_shot, 6),
        "physical_qubits": list(active),
        "simulation_seconds": round(time.perf_counter() - started, 3),
    }
