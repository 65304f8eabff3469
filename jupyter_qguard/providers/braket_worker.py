"""Amazon Braket's side of a program, in the program workers (never in the server:
aer_worker.py says why). The server hands over what AWS says of the device (trusted, JSON);
what comes back is plain data: a Braket OpenQASM 3 source, counts, classical-bit numbers.

Counts. Braket writes a bitstring's first character for the first measured bit; `to_braket`
measures in classical-bit order, so position p of a Braket bitstring is the p-th of the
measured classical bits returned here (braket.qiskit_counts rebuilds Qiskit's keys from them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from .aer_worker import load_circuit

LOCAL_SIMULATOR = "braket_dm"
MEASURES_NOTHING = "the circuit measures nothing, so it would have no counts"


@dataclass(frozen=True)
class Described:
    """A device as qiskit-braket-provider's simulator target reads one: its capabilities and
    name (what `local_simulator_to_target` takes of a LocalSimulator or an AwsDevice)."""

    properties: Any
    name: str


def measured_clbits(circuit: Any) -> list[int]:
    """Indices of the classical bits the circuit measures into, ascending: the order in which
    `to_braket` measures them, hence the order of Braket's bitstrings."""
    return sorted(
        {
            circuit.find_bit(inst.clbits[0]).index
            for inst in circuit.data
            if inst.operation.name == "measure"
        }
    )


def layout(circuit: Any) -> dict[str, Any]:
    """{"num_clbits", "measured_clbits"}: what turns Braket's counts into Qiskit's."""
    clbits = measured_clbits(circuit)
    if not clbits:
        # Braket would measure every qubit of a circuit without measurements, and Qiskit has no
        # counts for one: refuse before anything is paid for.
        raise ValueError(MEASURES_NOTHING)
    return {"num_clbits": circuit.num_clbits, "measured_clbits": clbits}


def convert(circuit: Any, properties: Any, name: str, qpu: bool) -> Any:
    """The Qiskit circuit as a Braket circuit for a device with these capabilities.

    Simulators: compiled by Qiskit to the device's target. QPUs: translated to the gates the
    device accepts and left to Braket's own compiler (qubit placement, native gates), as
    qiskit-braket-provider's backend does unless asked for native, verbatim circuits.
    """
    from braket.device_schema import DeviceActionType
    from qiskit_braket_provider import to_braket
    from qiskit_braket_provider.providers.target import (
        gateset_from_properties,
        local_simulator_to_target,
    )

    action = properties.action.get(DeviceActionType.OPENQASM)
    if action is None:
        raise ValueError(f"{name} does not run gate-model circuits (OpenQASM)")
    with warnings.catch_warnings():
        # A barrier only orders the transpiler's work; Braket has its own compiler after ours.
        warnings.filterwarnings("ignore", "Barrier is not included in the current Target")
        if qpu:
            return to_braket(circuit, basis_gates=gateset_from_properties(action))
        # What to_braket(braket_device=...) builds for a simulator, AWS's or the local one.
        target = local_simulator_to_target(Described(properties, name))
        return to_braket(circuit, target=target, seed_transpiler=0)


def braket_program(program_format: str, payload: bytes, device: dict[str, Any]) -> dict[str, Any]:
    """{"source": the OpenQASM 3 program to send, "num_clbits", "measured_clbits"}, for the
    device {"name", "qpu": bool, "capabilities": its GetDevice deviceCapabilities JSON}."""
    from braket.circuits.serialization import IRType
    from braket.schema_common import BraketSchemaBase

    circuit = load_circuit(program_format, payload)
    out = layout(circuit)
    properties = BraketSchemaBase.parse_raw_schema(device["capabilities"])
    converted = convert(circuit, properties, str(device["name"]), bool(device["qpu"]))
    # What AwsQuantumTask.create would send for this Circuit (no qubit rewiring disabled, no
    # pulse gate definitions): the same to_ir call.
    return {"source": converted.to_ir(IRType.OPENQASM).source, **out}


def braket_layout(program_format: str, payload: bytes) -> dict[str, Any]:
    """layout() of the program, for reading a task's results (after a restart too)."""
    return layout(load_circuit(program_format, payload))


def braket_local_run(program_format: str, payload: bytes, shots: int) -> dict[str, Any]:
    """The run on the Braket SDK's LocalSimulator: {"measurement_counts", "num_clbits",
    "measured_clbits"}."""
    from braket.devices import LocalSimulator

    circuit = load_circuit(program_format, payload)
    out = layout(circuit)
    device = LocalSimulator(LOCAL_SIMULATOR)
    program = convert(circuit, device.properties, device.name, qpu=False)
    with warnings.catch_warnings():
        # The density-matrix simulator is chosen on purpose (it takes noise, as hardware has);
        # its advice to use the state-vector one for noise-free circuits is noise.
        warnings.filterwarnings("ignore", "You are running a noise-free circuit")
        counts = device.run(program, shots=shots).result().measurement_counts
    return {"measurement_counts": {str(k): int(v) for k, v in counts.items()}, **out}


FUNCTIONS = {f.__name__: f for f in (braket_program, braket_layout, braket_local_run)}
