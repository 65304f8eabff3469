"""The ibm provider: the SDK boundary for real in qiskit-ibm-runtime's local testing mode, and
the credential path with a test double of QiskitRuntimeService (IBM's cloud cannot be reached
here) that records what it receives."""

from __future__ import annotations

import io
from typing import Any

import pytest
from qiskit import QuantumCircuit, qpy
from qiskit_ibm_runtime.fake_provider import FakeBrisbane

from jupyter_qguard.credentials import CredentialStore, backend_from_name
from jupyter_qguard.providers.base import ProviderError, RunSpec
from jupyter_qguard.providers.ibm import IBMProvider

TOKEN = "ibm-test-token-0123456789"


def bell_qpy() -> bytes:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    buf = io.BytesIO()
    qpy.dump(qc, buf)
    return buf.getvalue()


def spec(**options: Any) -> RunSpec:
    return RunSpec(
        job_id="j1",
        backend="ibm_brisbane",
        program_format="qpy",
        payload=bell_qpy(),
        shots=400,
        seed=3,
        idempotency_key="key-0001",
        options=options,
    )


@pytest.fixture
def store(tmp_path) -> CredentialStore:
    return CredentialStore(
        backend_from_name(
            "keyrings.alt.file.PlaintextKeyring", file_path=str(tmp_path / "keyring.cfg")
        )
    )


class RecordingService:
    """Stands in for QiskitRuntimeService: records its arguments, serves snapshot devices (so
    SamplerV2 runs in local testing mode), finds no earlier jobs by tag."""

    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        RecordingService.calls.append({"init": kwargs})

    def backend(self, name: str) -> Any:
        RecordingService.calls.append({"backend": name})
        return FakeBrisbane()

    def jobs(self, **kwargs: Any) -> list[Any]:
        RecordingService.calls.append({"jobs": kwargs})
        return []


async def test_local_testing_mode_runs_through_sampler_v2(store):
    provider = IBMProvider(local_testing=True)
    provider.credentials = store  # empty: local testing needs no credential
    run = spec(snapshot="fake_brisbane")
    job_id = await provider.submit(run)
    result = await provider.result(run, job_id)
    assert sum(result["counts"].values()) == 400
    # Brisbane's noise: mostly 00/11, and not only those
    assert result["counts"]["00"] + result["counts"]["11"] > 340
    assert set(result["counts"]) - {"00", "11"}
    assert result["provider"] == {"name": "ibm", "job_id": job_id, "local_testing": True}


async def test_the_token_comes_from_the_keyring_right_before_submission(store):
    store.set("ibm", TOKEN)
    RecordingService.calls = []
    provider = IBMProvider(channel="ibm_quantum_platform", instance="crn:v1:test-instance")
    provider.service_class = RecordingService
    provider.credentials = store
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
    result = await provider.result(run, job_id)
    assert sum(result["counts"].values()) == 400
    # After a restart with no provider job id, the job is looked up by the broker's key.
    RecordingService.calls = []
    again = await provider.recover(run, None)
    assert {"jobs": {"job_tags": ["key-0001"], "limit": 1}} in RecordingService.calls
    assert sum(again["counts"].values()) == 400


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
