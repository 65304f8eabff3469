"""IBM's side of a program, in the program workers (never in the server: aer_worker.py says
why). The server hands over what IBM says of the backend (trusted, JSON); what comes back is
plain data: counts, or the ISA circuit already in the form qiskit-ibm-runtime sends it in."""

from __future__ import annotations

import json
import warnings
from typing import Any

from .aer_worker import load_circuit, snapshot


def _sampler(mode: Any) -> Any:
    with warnings.catch_warnings():
        # SamplerV2 is deprecated in favour of the client-side executor Sampler (0.50), which
        # does not yet run in local testing mode; it stays supported for months.
        warnings.simplefilter("ignore", DeprecationWarning)
        from qiskit_ibm_runtime import SamplerV2

        return SamplerV2(mode=mode)


def _runnable(program_format: str, payload: bytes) -> Any:
    qc = load_circuit(program_format, payload)
    if qc.num_parameters:
        # Lint refuses these too; the job's inputs carry no parameter values.
        raise ValueError(f"the circuit has {qc.num_parameters} unbound parameter(s)")
    return qc


def target(backend: dict[str, Any]) -> Any:
    """The backend's Target, built as IBMBackend.target builds it, from the configuration and
    properties the server got from IBM (their `to_dict()` as RuntimeEncoder's JSON text)."""
    from qiskit_ibm_runtime import RuntimeDecoder
    from qiskit_ibm_runtime.models import BackendProperties, QasmBackendConfiguration
    from qiskit_ibm_runtime.utils.backend_converter import convert_to_target

    configuration = json.loads(backend["configuration"], cls=RuntimeDecoder)
    properties = backend.get("properties")
    return convert_to_target(
        configuration=QasmBackendConfiguration.from_dict(configuration),
        properties=None
        if properties is None
        else BackendProperties.from_dict(json.loads(properties, cls=RuntimeDecoder)),
    )


def ibm_isa_circuit(
    program_format: str, payload: bytes, backend: dict[str, Any], optimization_level: int
) -> dict[str, str]:
    """The circuit transpiled for the backend, checked as SamplerV2.run checks it, as
    RuntimeEncoder encodes it: {"__type__": "QuantumCircuit", "__value__": base64 of zlib'd
    QPY}. The server passes that on to IBM as it is, without reading it."""
    from qiskit.primitives.containers.sampler_pub import SamplerPub
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_ibm_runtime import RuntimeEncoder
    from qiskit_ibm_runtime.utils import (
        validate_classical_registers,
        validate_isa_circuits,
        validate_rzz_pubs,
    )

    qc = _runnable(program_format, payload)
    backend_target = target(backend)
    isa = generate_preset_pass_manager(
        optimization_level=optimization_level,
        target=backend_target,
        # What generate_preset_pass_manager(backend=...) takes from the backend itself.
        translation_method=backend.get("translation_method"),
        scheduling_method=backend.get("scheduling_method"),
        seed_transpiler=0,
    ).run(qc)
    pubs = [SamplerPub.coerce(isa)]
    validate_classical_registers(pubs)
    if not backend.get("simulator"):
        validate_rzz_pubs(pubs)
        # Against a target built with faulty qubits and gates left out (convert_to_target's
        # filter_faulty), this also refuses what IBMBackend.check_faulty would.
        validate_isa_circuits([isa], backend_target)
    return json.loads(json.dumps(isa, cls=RuntimeEncoder))


def ibm_local_run(
    program_format: str,
    payload: bytes,
    snapshot_name: str,
    shots: int,
    seed: int | None,
    optimization_level: int,
) -> dict[str, Any]:
    """qiskit-ibm-runtime's local testing mode: SamplerV2 on the calibration snapshot (with
    its noise), as the IBM path runs it. {"counts": {bitstring: n}}."""
    from qiskit.transpiler import generate_preset_pass_manager

    qc = _runnable(program_format, payload)
    backend = snapshot(snapshot_name)
    isa = generate_preset_pass_manager(
        backend=backend, optimization_level=optimization_level, seed_transpiler=0
    ).run(qc)
    sampler = _sampler(backend)
    if seed is not None:
        sampler.options.simulator.seed_simulator = seed
    counts = sampler.run([isa], shots=shots).result()[0].join_data().get_counts()
    return {"counts": {str(k): int(v) for k, v in counts.items()}}


FUNCTIONS = {f.__name__: f for f in (ibm_isa_circuit, ibm_local_run)}
