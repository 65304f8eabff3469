"""The ibm provider: the SDK boundary for real in qiskit-ibm-runtime's local testing mode, and
the credential path with a test double of QiskitRuntimeService (IBM's cloud cannot be reached
here) that records what it receives. The program is read only in real, sandboxed program
workers (conftest.py): never in this process, which stands for the server."""

from __future__ import annotations

import base64
import io
import json
from typing import Any
from unittest.mock import ANY

import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.transpiler import generate_preset_pass_manager
from qiskit_ibm_runtime import RuntimeDecoder, RuntimeEncoder, SamplerV2
from qiskit_ibm_runtime.fake_provider import FakeBrisbane
from qiskit_ibm_runtime.fake_provider.local_service import QiskitRuntimeLocalService

from jupyter_qguard.credentials import CredentialStore, backend_from_name
from jupyter_qguard.providers import ibm
from jupyter_qguard.providers.base import ProviderError, RunSpec
from jupyter_qguard.providers.ibm import IBMProvider

TOKEN = "ibm-test-token-0123456789"
QPY_12_REFUSED = (
    "the program could not be prepared: QPY format version 12 is refused: versions before 13 "
    "encode expressions the way CVE-2025-2000 abused (sympy/symengine); dump the circuit again "
    "with Qiskit 1.3 or later (QPY 13 and up)"
)


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def bell_qpy() -> bytes:
    buf = io.BytesIO()
    qpy.dump(bell(), buf)
    return buf.getvalue()


def qpy_12() -> bytes:
    """A header of QPY format 12 (CVE-2025-2000's formats): refused before it is read."""
    data = bell_qpy()
    return data[:6] + bytes([12]) + data[7:]


def spec(payload: bytes | None = None, **options: Any) -> RunSpec:
    return RunSpec(
        job_id="j1",
        backend="ibm_brisbane",
        program_format="qpy",
        payload=bell_qpy() if payload is None else payload,
        shots=400,
        seed=3,
        idempotency_key="key-0001",
        options=options,
    )


def brisbane_isa() -> QuantumCircuit:
    """The Bell circuit as SamplerV2's users transpile it for the backend itself."""
    return generate_preset_pass_manager(
        backend=FakeBrisbane(), optimization_level=1, seed_transpiler=0
    ).run(bell())


@pytest.fixture
def store(tmp_path) -> CredentialStore:
    return CredentialStore(
        backend_from_name(
            "keyrings.alt.file.PlaintextKeyring", file_path=str(tmp_path / "keyring.cfg")
        )
    )


class RecordingService:
    """Stands in for QiskitRuntimeService (IBM's cloud): records its arguments, serves snapshot
    devices, runs a job as IBM would receive it (its inputs through RuntimeEncoder, then
    RuntimeDecoder) in qiskit-ibm-runtime's local testing mode, finds no earlier jobs by tag."""

    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        RecordingService.calls.append({"init": kwargs})

    def backend(self, name: str) -> Any:
        RecordingService.calls.append({"backend": name})
        return FakeBrisbane()

    def _run(self, **kwargs: Any) -> Any:
        RecordingService.calls.append({"run": kwargs})
        received = json.loads(json.dumps(kwargs["inputs"], cls=RuntimeEncoder), cls=RuntimeDecoder)
        return QiskitRuntimeLocalService()._run(
            program_id=kwargs["program_id"],
            inputs=received,
            options=kwargs["options"],
            calibration_id=kwargs["calibration_id"],
        )

    def jobs(self, **kwargs: Any) -> list[Any]:
        RecordingService.calls.append({"jobs": kwargs})
        return []


def remote_provider(store: CredentialStore, programs: Any) -> IBMProvider:
    provider = IBMProvider(channel="ibm_quantum_platform", instance="crn:v1:test-instance")
    provider.service_class = RecordingService
    provider.credentials = store
    provider.programs = programs
    return provider


async def test_local_testing_mode_runs_through_sampler_v2(store, programs, nothing_parsed_here):
    provider = IBMProvider(local_testing=True)
    provider.credentials = store  # empty: local testing needs no credential
    provider.programs = programs
    run = spec(snapshot="fake_brisbane")
    job_id = await provider.submit(run)
    result = await provider.result(run, job_id)
    assert programs.calls == ["ibm_local_run"]  # the whole run, in a worker
    assert sum(result["counts"].values()) == 400
    # Brisbane's noise: mostly 00/11, and not only those
    assert result["counts"]["00"] + result["counts"]["11"] > 340
    assert set(result["counts"]) - {"00", "11"}
    assert result["provider"] == {"name": "ibm", "job_id": job_id, "local_testing": True}
    with pytest.raises(ProviderError) as info:
        await provider.result(run, job_id)
    assert str(info.value) == f"local testing job {job_id} is gone with its process"


async def test_the_token_comes_from_the_keyring_right_before_submission(
    store, programs, nothing_parsed_here
):
    store.set("ibm", TOKEN)
    RecordingService.calls = []
    provider = remote_provider(store, programs)
    assert RecordingService.calls == []  # nothing read before a job is handed over
    run = spec()
    job_id = await provider.submit(run)
    assert RecordingService.calls[:2] == [
        {
            "init": {
                "channel": "ibm_quantum_platform",
                "token": TOKEN,
                "instance": "crn:v1:test-instance",
            }
        },
        {"backend": "ibm_brisbane"},
    ]
    [created] = [c["run"] for c in RecordingService.calls if "run" in c]
    assert created["program_id"] == "sampler"
    assert created["options"]["job_tags"] == ["key-0001"]
    # IBM receives the circuit the worker transpiled, from what IBM said of the backend: the
    # one the backend object itself gives.
    [pub] = json.loads(json.dumps(created["inputs"], cls=RuntimeEncoder), cls=RuntimeDecoder)[
        "pubs"
    ]
    assert pub[0] == brisbane_isa() and pub[2] == 400
    assert programs.calls == ["ibm_isa_circuit"]
    result = await provider.result(run, job_id)
    assert sum(result["counts"].values()) == 400
    # After a restart with no provider job id, the job is looked up by the broker's key.
    RecordingService.calls = []
    again = await provider.recover(run, None)
    assert {"jobs": {"job_tags": ["key-0001"], "limit": 1}} in RecordingService.calls
    assert sum(again["counts"].values()) == 400


async def test_the_job_inputs_are_sampler_v2s_own_for_the_workers_circuit(programs, monkeypatch):
    """Pins the private SDK calls ibm.job_request relies on: what it builds around the worker's
    encoded circuit is what SamplerV2.run hands the service's job-creation call (here the local
    service's, standing for IBM's cloud) for that circuit."""
    backend = FakeBrisbane()
    encoded = await programs.call(
        "ibm_isa_circuit", "qpy", bell_qpy(), ibm.backend_description(backend), 1
    )
    isa = json.loads(json.dumps(encoded), cls=RuntimeDecoder)
    assert isa == brisbane_isa()
    ours = ibm.job_request(backend, ibm.isa_circuit(encoded), spec())
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(QiskitRuntimeLocalService, "_run", lambda self, **kw: seen.append(kw))
    sampler = SamplerV2(mode=backend)
    sampler.options.environment.job_tags = ["key-0001"]
    sampler.run([isa], shots=400)
    [theirs] = seen
    # As IBM receives them: the same JSON but for the QPY bytes (a QPY round trip may order a
    # layout's registers otherwise), which decode to the same circuit.
    sent, expected = as_sent(ours["inputs"]), as_sent(theirs["inputs"])
    assert decoded_circuits(sent) == decoded_circuits(expected) == [isa]
    assert without_circuits(sent) == without_circuits(expected)
    assert set(sent) == {"pubs", "options", "version", "support_qiskit"}
    assert [pub[1:] for pub in sent["pubs"]] == [[{"__type__": "ndarray", "__value__": ANY}, 400]]
    assert ours["options"] == theirs["options"]  # job_tags, max_execution_time, the backend
    assert ours["options"]["backend"] is backend
    rest = {"program_id": "sampler", "calibration_id": None, "dry_run": False}
    assert {k: v for k, v in ours.items() if k not in ("inputs", "options")} == rest
    assert {k: v for k, v in theirs.items() if k not in ("inputs", "options")} == rest


def as_sent(inputs: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(inputs, cls=RuntimeEncoder))


def decoded_circuits(sent: dict[str, Any]) -> list[QuantumCircuit]:
    return [json.loads(json.dumps(pub[0]), cls=RuntimeDecoder) for pub in sent["pubs"]]


def without_circuits(sent: dict[str, Any]) -> dict[str, Any]:
    pubs = [[{**pub[0], "__value__": "<qpy>"}, *pub[1:]] for pub in sent["pubs"]]
    return {**sent, "pubs": pubs}


async def test_a_refused_program_fails_in_the_worker_and_nothing_reaches_ibm(
    store, programs, nothing_parsed_here
):
    store.set("ibm", TOKEN)
    RecordingService.calls = []
    with pytest.raises(ProviderError) as info:
        await remote_provider(store, programs).submit(spec(qpy_12()))
    assert str(info.value) == QPY_12_REFUSED
    assert programs.calls == ["ibm_isa_circuit"]
    assert not [c for c in RecordingService.calls if "run" in c]
    local = IBMProvider(local_testing=True)
    local.programs = programs
    with pytest.raises(ProviderError) as info:
        await local.submit(spec(qpy_12(), snapshot="fake_brisbane"))
    assert str(info.value) == QPY_12_REFUSED


async def test_without_program_workers_nothing_is_submitted(store):
    store.set("ibm", TOKEN)
    RecordingService.calls = []
    with pytest.raises(ProviderError) as info:
        await remote_provider(store, None).submit(spec())
    assert str(info.value) == "no program workers to read the program in (the aer provider's)"
    assert not [c for c in RecordingService.calls if "run" in c]


def test_the_workers_circuit_is_shape_checked_and_passed_on_unread():
    good = {"__type__": "QuantumCircuit", "__value__": base64.b64encode(b"QPY\x00" * 3).decode()}
    assert ibm.isa_circuit(good) == good
    for bad in (
        None,
        "QuantumCircuit",
        [good],
        {"__type__": "QuantumCircuit"},
        {**good, "__extra__": 1},
        {**good, "__type__": "to_json"},  # what RuntimeDecoder would hand to another decoder
        {**good, "__value__": 17},
        {**good, "__value__": ""},
        {**good, "__value__": "not base64!"},
        {**good, "__value__": "QUJD\n"},
        {**good, "__value__": "QUJ"},
        {**good, "__value__": "A" * (ibm.MAX_ISA_CHARS + 4)},
    ):
        with pytest.raises(ProviderError) as info:
            ibm.isa_circuit(bad)
        assert str(info.value) == (
            "the program worker answered with something that is not an encoded ISA circuit"
        )


def test_the_workers_local_counts_are_shape_checked():
    assert ibm.local_counts({"counts": {"00": 390, "11": 10}}, 400) == {"00": 390, "11": 10}
    for bad in (
        None,
        {"counts": {"00": 400}, "extra": 1},
        {"counts": {}},
        {"counts": {"00": 399}},  # not this job's shots
        {"counts": {"00": 200, "1": 200}},  # bitstrings of two lengths
        {"counts": {"0x": 400}},
        {"counts": {"00": 400.0}},
        {"counts": {"00": True, "11": 399}},
        {"counts": {"00": 401, "11": -1}},
        {"counts": [["00", 400]]},
    ):
        with pytest.raises(ProviderError) as info:
            ibm.local_counts(bad, 400)
        assert str(info.value) == (
            "the program worker answered with something that is not counts of this job's shots"
        )


async def test_no_ibm_credential_is_a_clear_failure(store):
    provider = IBMProvider()
    provider.service_class = RecordingService
    provider.credentials = store
    with pytest.raises(ProviderError) as info:
        await provider.submit(spec())
    assert str(info.value) == (
        "no credential for 'ibm' in the keyring (service 'jupyter-qguard'): run "
        "`jupyter qguard credentials set ibm` or `jupyter qguard credentials import`"
    )
