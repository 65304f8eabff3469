"""The braket provider (the optional `braket` extra).

local_testing runs through the real Braket SDK (LocalSimulator "braket_dm") and the real
qiskit-braket-provider conversion. Amazon Braket itself cannot be reached here: the AWS path
runs through real AwsSession / boto3 clients built by `credentials.braket_session` from the
keyring, with botocore's own Stubber on those clients (it checks each request against the
service model and the expected parameters, then answers in place of AWS). The program is read
only in real, sandboxed program workers (conftest.py), never in this process, which stands for
the server.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

try:
    import braket.aws  # noqa: F401
except ImportError:
    pytest.skip(
        "the optional `braket` extra (amazon-braket-sdk, qiskit-braket-provider) is not "
        "installed: pip install 'jupyter_qguard[braket]'",
        allow_module_level=True,
    )

from botocore.exceptions import ReadTimeoutError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from braket.circuits.serialization import IRType
from braket.devices import LocalSimulator
from braket.ir.openqasm import Program
from braket.task_result import AdditionalMetadata, GateModelTaskResult, TaskMetadata
from qiskit import QuantumCircuit, qpy
from qiskit_aer import AerSimulator
from qiskit_braket_provider import to_braket

from jupyter_qguard import credentials
from jupyter_qguard.providers import braket as braket_provider
from jupyter_qguard.providers.base import ProviderError, RunSpec
from jupyter_qguard.providers.braket import BraketProvider, qiskit_counts

KEY_ID = "AKIAQGUARDTEST0001"
SECRET_KEY = "qguard/test+Secret=Key0123456789abcdef"
SESSION_TOKEN = "FwoGZXIvYXdzEQGUARDTESTSESSIONTOKEN"
IDEMPOTENCY_KEY = "0f3c9a7e5b2d4c18a6e0b9d7f1c3e5a2"
SV1 = "arn:aws:braket:::device/quantum-simulator/amazon/sv1"
QPY_12_REFUSED = (
    "the program could not be prepared: QPY format version 12 is refused: versions before 13 "
    "encode expressions the way CVE-2025-2000 abused (sympy/symengine); dump the circuit again "
    "with Qiskit 1.3 or later (QPY 13 and up)"
)
BUCKET = "amazon-braket-qguard-test"
TASK = "arn:aws:braket:us-east-1:123456789012:quantum-task/6a1d3f0e-8c2b-4e5a-9f7d-1b3c5e7a9d0f"
OTHER_TASK = "arn:aws:braket:us-east-1:123456789012:quantum-task/11111111-2222-3333-4444-5555"
TAG = braket_provider.IDEMPOTENCY_TAG


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path):
    """No AWS configuration of this machine takes part; decoy keys in the environment show that
    the keyring's are the ones used."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADECOYFROMENVIRON")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "decoy-secret-from-environ")
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "BRAKET_ENDPOINT",
        "AMZN_BRAKET_JOB_TOKEN",
        "AMZN_BRAKET_RESERVATION_DEVICE_ARN",
        "AMZN_BRAKET_RESERVATION_TIME_WINDOW_ARN",
        "AMZN_BRAKET_TASK_RESULTS_S3_URI",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def store(tmp_path) -> credentials.CredentialStore:
    return credentials.CredentialStore(
        credentials.backend_from_name(
            "keyrings.alt.file.PlaintextKeyring", file_path=str(tmp_path / "k.cfg")
        )
    )


@pytest.fixture
def aws_store(store) -> credentials.CredentialStore:
    store.set("braket", credentials._braket_blob(KEY_ID, SECRET_KEY, SESSION_TOKEN))
    return store


def qpy_bytes(qc: QuantumCircuit) -> bytes:
    buf = io.BytesIO()
    qpy.dump(qc, buf)
    return buf.getvalue()


def x_on_qubit_0() -> QuantumCircuit:
    qc = QuantumCircuit(3)
    qc.x(0)
    qc.measure_all()
    return qc


def spec(qc: QuantumCircuit, shots: int = 100, **options: Any) -> RunSpec:
    return RunSpec(
        job_id="j1",
        backend="braket_sv1",
        program_format="qpy",
        payload=qpy_bytes(qc),
        shots=shots,
        seed=11,
        idempotency_key=IDEMPOTENCY_KEY,
        options=options,
    )


def qpy_12(qc: QuantumCircuit) -> bytes:
    """A header of QPY format 12 (CVE-2025-2000's formats): refused before it is read."""
    data = qpy_bytes(qc)
    return data[:6] + bytes([12]) + data[7:]


def aer_counts(qc: QuantumCircuit, shots: int) -> dict[str, int]:
    return dict(AerSimulator().run(qc, shots=shots, seed_simulator=1).result().get_counts())


# --- local testing: the real SDK, no credential, no network ----------------------------------


async def test_local_x_on_qubit_0_gives_qiskits_key(store, programs):
    provider = BraketProvider(local_testing=True)
    provider.credentials = store  # empty: local testing needs no credential
    provider.programs = programs
    run = spec(x_on_qubit_0(), shots=300)
    job_id = await provider.submit(run)
    result = await provider.result(run, job_id)
    assert result == {
        "counts": {"001": 300},
        "shots": 300,
        "seed": None,
        "provider": {"name": "braket", "job_id": job_id, "local_testing": True},
    }
    assert result["counts"] == aer_counts(x_on_qubit_0(), 300)


async def test_local_bell_only_00_and_11(store, programs):
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    provider = BraketProvider(local_testing=True)
    provider.credentials = store
    provider.programs = programs
    run = spec(qc, shots=500)
    result = await provider.result(run, await provider.submit(run))
    assert set(result["counts"]) <= {"00", "11"}
    assert sum(result["counts"].values()) == 500
    assert min(result["counts"].values()) > 150  # both outcomes, near half each


async def test_local_permuted_and_partial_measurements_match_qiskit(store, programs):
    # q0 -> c2, q1 -> c0, q2 -> c1: Braket measures in classical-bit order (q1, q2, q0).
    permuted = QuantumCircuit(3, 3)
    permuted.x(0)
    permuted.x(2)
    permuted.measure(0, 2)
    permuted.measure(1, 0)
    permuted.measure(2, 1)
    # Four classical bits, one measured: the others read 0 in Qiskit's keys.
    partial = QuantumCircuit(2, 4)
    partial.x(1)
    partial.measure(1, 2)
    provider = BraketProvider(local_testing=True)
    provider.credentials = store
    provider.programs = programs
    for qc, expected in ((permuted, "110"), (partial, "0100")):
        run = spec(qc, shots=50)
        result = await provider.result(run, await provider.submit(run))
        assert result["counts"] == {expected: 50} == aer_counts(qc, 50)


async def test_local_recover_runs_again_only_what_never_left_the_machine(store, programs):
    provider = BraketProvider(local_testing=True)
    provider.credentials = store
    provider.programs = programs
    run = spec(x_on_qubit_0(), shots=20)
    job_id = await provider.submit(run)
    kept = await provider.recover(run, job_id)
    assert kept["provider"]["job_id"] == job_id
    again = await provider.recover(run, None)
    assert again["counts"] == {"001": 20} and again["provider"]["job_id"] != job_id
    with pytest.raises(ProviderError, match="gone with its process"):
        await provider.result(run, job_id)


async def test_a_circuit_measuring_nothing_is_refused(store, programs):
    qc = QuantumCircuit(2)
    qc.h(0)
    provider = BraketProvider(local_testing=True)
    provider.credentials = store
    provider.programs = programs
    with pytest.raises(ProviderError) as info:
        await provider.submit(spec(qc))
    assert str(info.value) == (
        "the program could not be prepared: the circuit measures nothing, so it would have no "
        "counts"
    )
    assert programs.calls == ["braket_local_run"]


def test_qiskit_counts_reverses_braket_order_per_measured_bit():
    assert qiskit_counts({"100": 7, "011": 3}, 3, [0, 1, 2]) == {"001": 7, "110": 3}
    # Braket character p is clbits[p]: here c1 then c3, of four.
    assert qiskit_counts({"10": 5, "01": 4}, 4, [1, 3]) == {"0010": 5, "1000": 4}
    with pytest.raises(ProviderError, match="2-bit results for a circuit measuring 3"):
        qiskit_counts({"10": 1}, 3, [0, 1, 2])


# --- the credential --------------------------------------------------------------------------


def test_braket_session_holds_exactly_the_keyring_values(aws_store, store):
    session = credentials.braket_session(aws_store, region="eu-north-1")
    creds = session.boto_session.get_credentials()
    assert (creds.access_key, creds.secret_key, creds.token) == (
        KEY_ID,
        SECRET_KEY,
        SESSION_TOKEN,
    )
    assert session.region == "eu-north-1"
    assert session.braket_client.meta.region_name == "eu-north-1"
    # Without a session token there is none, rather than one from elsewhere.
    store.set("braket", credentials._braket_blob(KEY_ID, SECRET_KEY, None))
    frozen = credentials.braket_session(store, region="us-west-1").boto_session.get_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == (KEY_ID, SECRET_KEY, None)


def test_braket_session_missing_or_malformed(store):
    with pytest.raises(credentials.CredentialNotFound) as info:
        credentials.braket_session(store, region="us-east-1")
    assert str(info.value) == credentials.missing_message("braket")
    for bad in ("not json " + SECRET_KEY, json.dumps({"aws_access_key_id": SECRET_KEY})):
        store.set("braket", bad)
        with pytest.raises(credentials.CredentialError) as info:
            credentials.braket_session(store, region="us-east-1")
        assert SECRET_KEY not in str(info.value)
        assert "jupyter qguard credentials set braket" in str(info.value)
        assert info.value.__context__ is None


async def test_no_braket_credential_is_a_clear_failure(store):
    provider = BraketProvider(s3_bucket=BUCKET)
    provider.credentials = store
    with pytest.raises(ProviderError) as info:
        await provider.submit(spec(x_on_qubit_0(), device_arn=SV1))
    assert str(info.value) == credentials.missing_message("braket")


async def test_configuration_errors_name_the_setting(aws_store):
    provider = BraketProvider()
    provider.credentials = aws_store
    with pytest.raises(ProviderError, match="set options.device_arn"):
        await provider.submit(spec(x_on_qubit_0()))
    with pytest.raises(ProviderError, match="set BraketProvider.s3_bucket"):
        await provider.submit(spec(x_on_qubit_0(), device_arn=SV1))


# --- the AWS path, with botocore's Stubber on the real clients -------------------------------

Plan = Callable[[Stubber, Stubber], None]


@pytest.fixture
def aws(monkeypatch) -> dict[str, Any]:
    """Each session the provider builds comes from the real `credentials.braket_session` (so
    from the keyring), with Stubbers on its Braket client and on the S3 client the SDK makes
    for downloading results. `plans` says, per session in order of creation, what AWS
    answers."""
    state: dict[str, Any] = {"plans": [], "regions": [], "stubbers": []}
    real = credentials.braket_session

    def stubbed(store: credentials.CredentialStore, *, region: str) -> Any:
        session = real(store, region=region)
        boto_session = session.boto_session
        s3_client = boto_session.client("s3", region_name=region)
        make_client = boto_session.client
        # AwsSession makes a new S3 resource (hence client) per download: hand it this one.
        boto_session.client = lambda name, *a, **kw: (
            s3_client if name == "s3" else make_client(name, *a, **kw)
        )
        braket_stub, s3_stub = Stubber(session.braket_client), Stubber(s3_client)
        state["plans"].pop(0)(braket_stub, s3_stub)
        braket_stub.activate()
        s3_stub.activate()
        state["regions"].append(region)
        state["stubbers"] += [braket_stub, s3_stub]
        return session

    monkeypatch.setattr(credentials, "braket_session", stubbed)
    return state


def sv1_device(stub: Stubber) -> None:
    """GetDevice for SV1, with the capabilities document of the simulator schema it uses."""
    stub.add_response(
        "get_device",
        {
            "deviceArn": SV1,
            "deviceName": "SV1",
            "providerName": "Amazon Braket",
            "deviceType": "SIMULATOR",
            "deviceStatus": "ONLINE",
            "deviceCapabilities": LocalSimulator("braket_sv").properties.json(),
        },
        {"deviceArn": SV1},
    )


def sv1_program(qc: QuantumCircuit) -> str:
    """The OpenQASM 3 that qiskit-braket-provider makes of `qc` for SV1 (whose capabilities
    sv1_device serves): what the worker must answer, and the server send."""
    converted = to_braket(qc, braket_device=LocalSimulator("braket_sv"), seed_transpiler=0)
    return converted.to_ir(IRType.OPENQASM).source


def create_call() -> dict[str, Any]:
    """CreateQuantumTask as AwsQuantumTask.create makes it of an OpenQASM program (no
    deviceParameters: those it builds only for a Circuit)."""
    return {
        "clientToken": IDEMPOTENCY_KEY,
        "tags": {TAG: IDEMPOTENCY_KEY},
        "deviceArn": SV1,
        "shots": 100,
        "outputS3Bucket": BUCKET,
        "outputS3KeyPrefix": "qguard/results",
        "action": Program(source=sv1_program(x_on_qubit_0())).json(),
    }


def task_metadata(status: str, arn: str = TASK, **extra: Any) -> dict[str, Any]:
    return {
        "quantumTaskArn": arn,
        "status": status,
        "deviceArn": SV1,
        "shots": 100,
        "outputS3Bucket": BUCKET,
        "outputS3Directory": "qguard/results/6a1d3f0e",
        "createdAt": datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC),
        **extra,
    }


def get_task(stub: Stubber, status: str, arn: str = TASK, **extra: Any) -> None:
    stub.add_response(
        "get_quantum_task",
        # GetQuantumTask also answers with the device parameters (required in its output).
        {**task_metadata(status, arn, **extra), "deviceParameters": "{}"},
        {"quantumTaskArn": arn, "additionalAttributeNames": ["QueueInfo"]},
    )


def results_file(stub: Stubber, measurements: list[list[int]]) -> None:
    """results.json as Braket writes it (the SDK's GateModelTaskResult schema)."""
    body = GateModelTaskResult(
        measurements=measurements,
        measuredQubits=[0, 1, 2],
        taskMetadata=TaskMetadata(id=TASK, shots=len(measurements), deviceId=SV1),
        additionalMetadata=AdditionalMetadata(action=Program(source="OPENQASM 3.0;")),
    ).json()
    raw = body.encode()
    stub.add_response(
        "get_object",
        {"Body": StreamingBody(io.BytesIO(raw), len(raw))},
        {"Bucket": BUCKET, "Key": "qguard/results/6a1d3f0e/results.json"},
    )


def search(stub: Stubber, pages: list[list[tuple[str, str]]]) -> None:
    """SearchQuantumTasks by device, answered in pages of (task ARN, idempotency tag)."""
    filters = [{"name": "deviceArn", "operator": "EQUAL", "values": [SV1]}]
    for i, page in enumerate(pages):
        response: dict[str, Any] = {
            "quantumTasks": [
                {**task_metadata("QUEUED", arn), "tags": {TAG: key, "team": "qc"}}
                for arn, key in page
            ]
        }
        if i + 1 < len(pages):
            response["nextToken"] = f"page-{i + 1}"
        expected: dict[str, Any] = {"filters": filters}
        if i:
            expected["nextToken"] = f"page-{i}"
        stub.add_response("search_quantum_tasks", response, expected)


def provider_for(store: credentials.CredentialStore, programs: Any = None) -> BraketProvider:
    provider = BraketProvider(s3_bucket=BUCKET, s3_prefix="/qguard/results/", poll_interval=0.01)
    provider.credentials = store
    provider.programs = programs
    return provider


async def test_the_create_call_carries_the_idempotency_key_and_results_come_back(
    aws, aws_store, programs, nothing_parsed_here
):
    """The Stubber checks the CreateQuantumTask parameters before botocore would fill in a random
    clientToken, so this fails unless the broker's key is the clientToken and the tag."""

    def submission(braket_stub: Stubber, s3_stub: Stubber) -> None:
        sv1_device(braket_stub)
        braket_stub.add_response("create_quantum_task", {"quantumTaskArn": TASK}, create_call())

    def following(braket_stub: Stubber, s3_stub: Stubber) -> None:
        get_task(braket_stub, "QUEUED")
        get_task(braket_stub, "RUNNING")
        get_task(braket_stub, "COMPLETED")
        results_file(s3_stub, [[1, 0, 0]] * 100)  # Braket order: qubit 0 first
        get_task(braket_stub, "COMPLETED")  # the SDK reads the state once more

    aws["plans"] += [submission, following]
    provider = provider_for(aws_store, programs)
    run = spec(x_on_qubit_0(), device_arn=SV1)
    assert await provider.submit(run) == TASK
    result = await provider.result(run, TASK)
    # Converted and read in workers: at submission, then for the result's bits.
    assert programs.calls == ["braket_program", "braket_layout"]
    assert result == {
        "counts": {"001": 100},
        "shots": 100,
        "seed": None,
        "provider": {"name": "braket", "job_id": TASK, "local_testing": False},
    }
    # SV1's ARN names no region: the configured one. The task's ARN does: that one.
    assert aws["regions"] == ["us-east-1", "us-east-1"]
    for stubber in aws["stubbers"]:
        stubber.assert_no_pending_responses()


async def test_recover_finds_the_task_by_its_tag(aws, aws_store):
    def lookup(braket_stub: Stubber, s3_stub: Stubber) -> None:
        sv1_device(braket_stub)
        search(braket_stub, [[(OTHER_TASK, "another-jobs-key")], [(TASK, IDEMPOTENCY_KEY)]])

    def following(braket_stub: Stubber, s3_stub: Stubber) -> None:
        get_task(braket_stub, "FAILED", failureReason="Device went offline for maintenance")

    aws["plans"] += [lookup, following]
    provider = provider_for(aws_store)
    with pytest.raises(ProviderError) as info:
        await provider.recover(spec(x_on_qubit_0(), device_arn=SV1), None)
    assert str(info.value) == (
        f"the Braket task {TASK} failed: Device went offline for maintenance"
    )
    for stubber in aws["stubbers"]:
        stubber.assert_no_pending_responses()


async def test_recover_without_a_tagged_task_fails_and_never_resubmits(aws, aws_store):
    def lookup(braket_stub: Stubber, s3_stub: Stubber) -> None:
        sv1_device(braket_stub)
        # No CreateQuantumTask is stubbed: a resubmission would fail this test loudly.
        search(braket_stub, [[(OTHER_TASK, "another-jobs-key")]])

    aws["plans"].append(lookup)
    provider = provider_for(aws_store)
    with pytest.raises(ProviderError) as info:
        await provider.recover(spec(x_on_qubit_0(), device_arn=SV1), None)
    assert str(info.value) == (
        "the broker stopped while handing this job to Amazon Braket, and no task tagged "
        f"{TAG}={IDEMPOTENCY_KEY} exists on {SV1}; it was not submitted again, so that it "
        "cannot run twice: submit it again if the Braket console shows no such task"
    )
    for stubber in aws["stubbers"]:
        stubber.assert_no_pending_responses()


async def test_a_create_whose_answer_was_lost_is_found_by_its_tag(aws, aws_store, programs):
    def submission(braket_stub: Stubber, s3_stub: Stubber) -> None:
        sv1_device(braket_stub)
        # AWS creates the task; its answer never arrives.
        braket_stub.add_response("create_quantum_task", {"quantumTaskArn": TASK}, create_call())
        braket_stub.client.meta.events.register(
            "after-call.braket.CreateQuantumTask", lose_the_answer
        )
        search(braket_stub, [[(TASK, IDEMPOTENCY_KEY)]])

    def lose_the_answer(**kwargs: Any) -> None:
        raise ReadTimeoutError(endpoint_url="https://braket.us-east-1.amazonaws.com/quantum-task")

    aws["plans"].append(submission)
    provider = provider_for(aws_store, programs)
    assert await provider.submit(spec(x_on_qubit_0(), device_arn=SV1)) == TASK
    for stubber in aws["stubbers"]:
        stubber.assert_no_pending_responses()


async def test_polling_rebuilds_the_session_once_when_the_token_expired(aws, aws_store):
    def expired(braket_stub: Stubber, s3_stub: Stubber) -> None:
        get_task(braket_stub, "QUEUED")
        braket_stub.add_client_error(
            "get_quantum_task",
            service_error_code="ExpiredTokenException",
            service_message="The security token included in the request is expired",
            http_status_code=403,
        )

    def renewed(braket_stub: Stubber, s3_stub: Stubber) -> None:
        get_task(braket_stub, "CANCELLED")

    aws["plans"] += [expired, renewed]
    provider = provider_for(aws_store)
    with pytest.raises(ProviderError, match=f"^the Braket task {TASK} was cancelled$"):
        await provider.result(spec(x_on_qubit_0(), device_arn=SV1), TASK)
    assert len(aws["regions"]) == 2
    for stubber in aws["stubbers"]:
        stubber.assert_no_pending_responses()


async def test_a_refused_program_fails_in_the_worker_and_no_task_is_created(
    aws, aws_store, store, programs, nothing_parsed_here
):
    def submission(braket_stub: Stubber, s3_stub: Stubber) -> None:
        # GetDevice only: a CreateQuantumTask would find no answer and fail this test.
        sv1_device(braket_stub)

    aws["plans"].append(submission)
    run = dataclasses.replace(spec(x_on_qubit_0(), device_arn=SV1), payload=qpy_12(x_on_qubit_0()))
    with pytest.raises(ProviderError) as info:
        await provider_for(aws_store, programs).submit(run)
    assert str(info.value) == QPY_12_REFUSED
    assert programs.calls == ["braket_program"]
    for stubber in aws["stubbers"]:
        stubber.assert_no_pending_responses()
    local = BraketProvider(local_testing=True)
    local.credentials = store
    local.programs = programs
    with pytest.raises(ProviderError) as info:
        await local.submit(run)
    assert str(info.value) == QPY_12_REFUSED
    assert programs.calls == ["braket_program", "braket_local_run"]


NOT_A_PROGRAM = "the program worker answered with something that is not a Braket program"
NOT_COUNTS = "the program worker answered with something that is not counts of this job's shots"


def test_the_workers_program_is_shape_checked():
    good = {"source": "OPENQASM 3.0;\nbit[2] b;", "num_clbits": 3, "measured_clbits": [0, 2]}
    assert braket_provider.braket_program(good) == good
    for bad in (
        None,
        [good],
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "source"},
        {**good, "source": b"OPENQASM 3.0;"},
        {**good, "source": ""},
        {**good, "source": "OPENQASM 2.0;"},
        {**good, "source": "OPENQASM 3.0;" + " " * braket_provider.MAX_SOURCE_CHARS},
        {**good, "num_clbits": "3"},
        {**good, "num_clbits": True},
        {**good, "measured_clbits": []},
        {**good, "measured_clbits": [2, 0]},
        {**good, "measured_clbits": [0, 0, 2]},
        {**good, "measured_clbits": [-1, 2]},
        {**good, "measured_clbits": [0, 3]},  # beyond the circuit's bits
        {**good, "measured_clbits": [0, 2.0]},
        {**good, "measured_clbits": [False, 2]},
    ):
        with pytest.raises(ProviderError) as info:
            braket_provider.braket_program(bad)
        assert str(info.value) == NOT_A_PROGRAM


def test_the_workers_local_run_is_shape_checked():
    good = {"measurement_counts": {"10": 7, "01": 3}, "num_clbits": 4, "measured_clbits": [1, 3]}
    assert braket_provider.local_run(good, 10) == good
    for bad in (
        None,
        {**good, "extra": 1},
        {**good, "measured_clbits": [3, 1]},
        {**good, "measurement_counts": {"10": 7, "01": 2}},  # not this job's shots
        {**good, "measurement_counts": {"100": 7, "01": 3}},  # not one bit per measured bit
        {**good, "measurement_counts": {"1x": 7, "01": 3}},
        {**good, "measurement_counts": {"10": 7.0, "01": 3}},
        {**good, "measurement_counts": {"10": 11, "01": -1}},
        {**good, "measurement_counts": [["10", 10]]},
    ):
        with pytest.raises(ProviderError) as info:
            braket_provider.local_run(bad, 10)
        assert str(info.value) == NOT_COUNTS
    with pytest.raises(ProviderError) as info:
        braket_provider.layout({"num_clbits": 1, "measured_clbits": [1]}, "not bits")
    assert str(info.value) == "not bits"
