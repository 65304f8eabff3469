"""The fake cloud, over real HTTP on loopback, started as a real subprocess
(`python -m jupyter_qguard.fakecloud --port 0 ...`), as the broker will start it."""

from __future__ import annotations

import base64
import io
import json
import signal
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from qiskit import QuantumCircuit, qasm2, qasm3, qpy
from support.fakecloud_proc import TERMINAL, FakeCloud, Response  # noqa: F401


def ref() -> str:
    return f"ref-{uuid.uuid4().hex[:12]}"


def qasm(qc: QuantumCircuit) -> dict[str, str]:
    return {"format": "qasm2", "payload_b64": base64.b64encode(qasm2.dumps(qc).encode()).decode()}


def qpy_program(qc: QuantumCircuit) -> dict[str, str]:
    buf = io.BytesIO()
    qpy.dump(qc, buf)
    return {"format": "qpy", "payload_b64": base64.b64encode(buf.getvalue()).decode()}


def qasm3_program(qc: QuantumCircuit) -> dict[str, str]:
    return {"format": "qasm3", "payload_b64": base64.b64encode(qasm3.dumps(qc).encode()).decode()}


def bell() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


def ghz(n: int) -> QuantumCircuit:
    qc = QuantumCircuit(n)
    qc.h(0)
    for i in range(n - 1):
        qc.cx(i, i + 1)
    qc.measure_all()
    return qc


def job_body(
    backend: str = "fake_brisbane", shots: int = 1000, seed: int | None = 11, qc: Any = None
) -> dict[str, Any]:
    return {"backend": backend, "program": qasm(qc or bell()), "shots": shots, "seed": seed}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fc = FakeCloud(tmp_path_factory.mktemp("fakecloud")).start()
    yield fc
    assert fc.stop() == 0


@pytest.fixture(autouse=True)
def no_faults_left(request: pytest.FixtureRequest) -> Any:
    yield
    if "cloud" in request.fixturenames:
        request.getfixturevalue("cloud").admin("DELETE", "/v1/admin/faults")


# -- start-up and credentials -------------------------------------------------------------


def test_start_line_and_generated_key(cloud: FakeCloud) -> None:
    assert set(json.loads(cloud.start_line)) == {"url", "pid", "api_key_file"}
    assert cloud.url.startswith("http://127.0.0.1:")
    assert stat.S_IMODE(cloud.key_file.stat().st_mode) == 0o600
    assert len(cloud.api_key) >= 40
    assert cloud.api_key not in cloud.start_line
    assert cloud.api_key not in cloud.stderr_path.read_text()


def test_api_key_missing_or_wrong(cloud: FakeCloud) -> None:
    body = {"job_ref": ref(), "action": "create"}
    for bearer in (None, "not-the-key"):
        r = cloud.call("POST", "/v1/tokens", body, bearer=bearer)
        assert (r.status, r.code) == (401, "invalid_api_key")
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.body["error"]["message"].endswith(".")
    r = cloud.call("GET", "/v1/usage", bearer="not-the-key")
    assert (r.status, r.code) == (401, "invalid_api_key")


def test_token_request_validation(cloud: FakeCloud) -> None:
    post = lambda body: cloud.call("POST", "/v1/tokens", body, bearer=cloud.api_key)  # noqa: E731
    assert post({"action": "read"}).code == "bad_request"
    assert post({"job_ref": "x" * 201, "action": "read"}).code == "bad_request"
    r = post({"job_ref": "a", "action": "delete"})
    assert (r.status, r.code) == (400, "bad_action")
    r = post({"job_ref": "a", "action": "read", "ttl": -1})
    assert (r.status, r.code) == (400, "bad_ttl")
    r = post({"job_ref": "a", "action": "read", "ttl": 10_000})
    assert r.status == 201 and r.body["ttl"] == 60.0 and r.body["token"].startswith("fct_")


def test_token_is_single_use(cloud: FakeCloud) -> None:
    job_ref = ref()
    token = cloud.token(job_ref, "read")
    first = cloud.call("GET", f"/v1/jobs?job_ref={job_ref}", bearer=token)
    assert (first.status, first.body) == (200, {"jobs": []})
    again = cloud.call("GET", f"/v1/jobs?job_ref={job_ref}", bearer=token)
    assert (again.status, again.code) == (401, "token_used")


def test_token_expires(cloud: FakeCloud) -> None:
    job_ref = ref()
    token = cloud.token(job_ref, "read", ttl=0.3)
    time.sleep(0.5)
    r = cloud.call("GET", f"/v1/jobs?job_ref={job_ref}", bearer=token)
    assert (r.status, r.code) == (401, "token_expired")
    # An expired token was not used: it keeps saying why it is refused.
    r = cloud.call("GET", f"/v1/jobs?job_ref={job_ref}", bearer=token)
    assert (r.status, r.code) == (401, "token_expired")


def test_unknown_or_missing_token(cloud: FakeCloud) -> None:
    r = cloud.call("GET", "/v1/jobs?job_ref=a", bearer="fct_made-up")
    assert (r.status, r.code) == (401, "invalid_token")
    r = cloud.call("GET", "/v1/jobs?job_ref=a")
    assert (r.status, r.code) == (401, "invalid_token")
    # The API key is not a job credential.
    r = cloud.call("GET", "/v1/jobs?job_ref=a", bearer=cloud.api_key)
    assert (r.status, r.code) == (401, "invalid_token")


def test_token_scope(cloud: FakeCloud) -> None:
    mine, other = ref(), ref()
    r = cloud.call("GET", f"/v1/jobs?job_ref={other}", bearer=cloud.token(mine, "read"))
    assert (r.status, r.code) == (403, "token_scope")
    # A create token does not read, and a read token does not create.
    r = cloud.call("GET", f"/v1/jobs?job_ref={mine}", bearer=cloud.token(mine, "create"))
    assert (r.status, r.code) == (403, "token_scope")
    r = cloud.call(
        "POST",
        "/v1/jobs",
        job_body(),
        bearer=cloud.token(mine, "read"),
        headers={"Idempotency-Key": mine},
    )
    assert (r.status, r.code) == (403, "token_scope")
    # A create token is for its own job_ref's Idempotency-Key only.
    r = cloud.call(
        "POST",
        "/v1/jobs",
        job_body(),
        bearer=cloud.token(mine, "create"),
        headers={"Idempotency-Key": other},
    )
    assert (r.status, r.code) == (403, "token_scope")
    # Reading a job by id needs a token for that job's job_ref.
    created = cloud.create(mine, job_body(shots=10))
    assert created.status == 201
    r = cloud.call("GET", f"/v1/jobs/{created.body['id']}", bearer=cloud.token(other, "read"))
    assert (r.status, r.code) == (403, "token_scope")
    r = cloud.call("GET", "/v1/jobs/fc-nope", bearer=cloud.token(mine, "read"))
    assert (r.status, r.code) == (404, "unknown_job")
    assert cloud.wait_job(created.body)["status"] == "DONE"


# -- jobs ---------------------------------------------------------------------------------


def test_idempotent_create(cloud: FakeCloud) -> None:
    job_ref, body = ref(), job_body(shots=100)
    first = cloud.create(job_ref, body)
    assert first.status == 201
    assert first.body["status"] == "QUEUED" and first.body["id"].startswith("fc-")
    assert (first.body["job_ref"], first.body["backend"]) == (job_ref, "fake_brisbane")
    again = cloud.create(job_ref, body)
    assert again.status == 200 and again.body["id"] == first.body["id"]
    conflict = cloud.create(job_ref, {**body, "shots": 101})
    assert (conflict.status, conflict.code) == (409, "idempotency_conflict")
    state = cloud.admin("GET", "/v1/admin/state").body
    assert state["jobs_by_ref"][job_ref] == 1
    found = cloud.call("GET", f"/v1/jobs?job_ref={job_ref}", bearer=cloud.token(job_ref, "read"))
    assert [j["id"] for j in found.body["jobs"]] == [first.body["id"]]
    # No key, no job.
    r = cloud.call("POST", "/v1/jobs", body, bearer=cloud.token(job_ref, "create"))
    assert (r.status, r.code) == (400, "idempotency_key_required")
    assert cloud.wait_job(first.body)["status"] == "DONE"


def test_create_validation(cloud: FakeCloud) -> None:
    def expect(status: int, code: str, body: dict[str, Any]) -> None:
        job_ref = ref()
        r = cloud.create(job_ref, body)
        assert (r.status, r.code) == (status, code), r
        assert cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"].get(job_ref) is None

    expect(404, "unknown_backend", job_body(backend="ibm_nowhere"))
    expect(400, "bad_shots", job_body(shots=0))
    expect(400, "bad_shots", job_body(shots=100_001))
    expect(400, "bad_shots", job_body(shots=True))
    expect(400, "bad_seed", job_body(seed=-1))
    bad_qasm = base64.b64encode(b"OPENQASM 2.0; this is not qasm").decode()
    for program in (
        {"format": "qasm2", "payload_b64": bad_qasm},
        {"format": "qasm2", "payload_b64": "%%"},
        {"format": "quil", "payload_b64": ""},
        "H 0",
    ):
        expect(400, "bad_program", {**job_body(), "program": program})
    no_measure = QuantumCircuit(2)
    no_measure.h(0)
    expect(400, "bad_program", job_body(qc=no_measure))
    expect(400, "too_many_qubits", job_body(qc=ghz(130)))
    expect(400, "too_many_qubits", job_body(qc=ghz(20)))
    expect(400, "bad_request", [])  # type: ignore[arg-type]


def test_bell_on_brisbane_is_noisy_and_billed_per_shot(cloud: FakeCloud) -> None:
    calibration_id = cloud.call("GET", "/v1/backends/fake_brisbane/calibration").body[
        "calibration_id"
    ]
    job = cloud.run(ref(), job_body(shots=4000, seed=1234))
    assert job["status"] == "DONE", job
    assert job["error"] is None
    result = job["result"]
    counts = result["counts"]
    assert sum(counts.values()) == 4000
    correlated = counts.get("00", 0) + counts.get("11", 0)
    assert correlated > 0.85 * 4000
    # The snapshot's noise: some shots disagree.
    assert counts.get("01", 0) + counts.get("10", 0) > 0
    assert (result["shots"], result["seed"], result["backend"]) == (4000, 1234, "fake_brisbane")
    assert result["calibration_id"] == calibration_id
    assert job["cost"] == {"amount": round(0.30 + 4000 * 0.00035, 6), "currency": "USD"}
    # Modelled device time: 4000 x (the circuit + the 250 us repetition delay).
    assert 4000 * 250e-6 < result["execution_seconds"] < 4000 * 270e-6
    assert job["started_at"] and job["finished_at"] and job["created_at"] <= job["started_at"]

    # Same seed, same counts; and once warm, a Bell circuit takes well under a few seconds.
    again = cloud.run(ref(), job_body(shots=4000, seed=1234))
    assert again["result"]["counts"] == counts
    assert again["result"]["simulation_seconds"] < 1.5


def test_torino_billed_per_second(cloud: FakeCloud) -> None:
    body = {**job_body(backend="fake_torino", shots=2000), "program": qpy_program(bell())}
    job = cloud.run(ref(), body)
    assert job["status"] == "DONE", job
    seconds = job["result"]["execution_seconds"]
    assert 2000 * 250e-6 < seconds < 2000 * 270e-6
    assert job["cost"] == {"amount": round(seconds * 1.60, 6), "currency": "USD"}
    assert sum(job["result"]["counts"].values()) == 2000


def test_null_seed_is_drawn_and_reported(cloud: FakeCloud) -> None:
    job = cloud.run(ref(), {**job_body(shots=50, seed=None), "program": qasm3_program(bell())})
    assert job["status"] == "DONE", job
    assert job["seed"] is None
    assert isinstance(job["result"]["seed"], int)


def test_long_poll_returns_when_done(cloud: FakeCloud) -> None:
    created = cloud.create(ref(), job_body(shots=200))
    r = cloud.job(created.body["id"], created.body["job_ref"], wait=30)
    assert r.status == 200 and r.body["status"] == "DONE"
    r = cloud.call(
        "GET",
        f"/v1/jobs/{created.body['id']}?wait=soon",
        bearer=cloud.token(created.body["job_ref"], "read"),
    )
    assert (r.status, r.code) == (400, "bad_wait")


def test_cancel(cloud: FakeCloud) -> None:
    created = cloud.create(ref(), job_body(shots=20_000, qc=ghz(10)))
    job_id, job_ref = created.body["id"], created.body["job_ref"]
    r = cloud.call("POST", f"/v1/jobs/{job_id}/cancel", bearer=cloud.token(job_ref, "cancel"))
    assert r.status == 200 and r.body["status"] == "CANCELLED"
    r = cloud.call("POST", f"/v1/jobs/{job_id}/cancel", bearer=cloud.token(job_ref, "cancel"))
    assert (r.status, r.code) == (409, "job_final")
    final = cloud.job(job_id, job_ref).body
    assert final["status"] == "CANCELLED" and final["result"] is None
    assert final["cost"]["amount"] == 0.0


def test_usage_adds_up(cloud: FakeCloud) -> None:
    before = cloud.usage()
    jobs = [
        cloud.run(ref(), job_body(shots=300)),
        cloud.run(ref(), job_body(shots=700, seed=3)),
        cloud.run(ref(), job_body(backend="fake_torino", shots=500)),
    ]
    after = cloud.usage()
    assert after["jobs"] - before["jobs"] == 3
    assert after["shots"] - before["shots"] == 1500
    spent = sum(j["cost"]["amount"] for j in jobs)
    assert after["cost"]["amount"] - before["cost"]["amount"] == pytest.approx(spent, abs=1e-5)
    seconds = sum(j["result"]["execution_seconds"] for j in jobs)
    assert after["execution_seconds"] - before["execution_seconds"] == pytest.approx(
        seconds, abs=1e-5
    )
    assert after["cost"]["currency"] == "USD"
    torino = after["by_backend"]["fake_torino"]["cost"]["amount"]
    torino_before = before["by_backend"].get("fake_torino", {"cost": {"amount": 0}})["cost"]
    assert torino - torino_before["amount"] == pytest.approx(jobs[2]["cost"]["amount"], abs=1e-6)
    total = sum(line["cost"]["amount"] for line in after["by_backend"].values())
    assert total == pytest.approx(after["cost"]["amount"], abs=1e-5)


def test_public_pages(cloud: FakeCloud) -> None:
    listing = cloud.call("GET", "/v1/backends").body["backends"]
    by_name = {b["name"]: b for b in listing}
    assert by_name["fake_brisbane"]["num_qubits"] == 127
    assert by_name["fake_brisbane"]["tier"] == "hardware"
    assert by_name["fake_brisbane"]["price"] == {
        "model": "per_shot",
        "per_task": 0.30,
        "per_shot": 0.00035,
        "currency": "USD",
    }
    assert by_name["fake_torino"]["num_qubits"] == 133
    assert by_name["fake_torino"]["tier"] == "premium"
    assert by_name["fake_torino"]["price"]["model"] == "per_second"
    assert by_name["fake_torino"]["price"]["per_second"] == 1.60
    cal = cloud.call("GET", "/v1/backends/fake_brisbane/calibration").body
    assert cal["calibration_id"] == by_name["fake_brisbane"]["calibration_id"]
    assert len(cal["qubits"]) == 127
    q0 = cal["qubits"][0]
    assert q0["t1_us"] > 0 and q0["t2_us"] > 0 and 0 < q0["readout_error"] < 0.5
    assert any(g["gate"] == "ecr" and g["error"] > 0 for g in cal["gates"])
    r = cloud.call("GET", "/v1/backends/ibm_nowhere/calibration")
    assert (r.status, r.code) == (404, "unknown_backend")
    prices = cloud.call("GET", "/v1/prices").body["prices"]
    assert prices["fake_brisbane"] == by_name["fake_brisbane"]["price"]
    r = cloud.call("GET", "/v1/nothing-here")
    assert (r.status, r.code) == (404, "not_found")


# -- faults -------------------------------------------------------------------------------


def test_admin_needs_its_key(cloud: FakeCloud) -> None:
    r = cloud.call("GET", "/v1/admin/state", bearer=cloud.api_key)
    assert (r.status, r.code) == (401, "invalid_admin_key")
    r = cloud.admin("POST", "/v1/admin/faults", {"kind": "meteor"})
    assert (r.status, r.code) == (400, "bad_fault")
    r = cloud.admin("POST", "/v1/admin/faults", {"kind": "slow", "endpoint": "tokens"})
    assert (r.status, r.code) == (400, "bad_fault")
    r = cloud.admin("POST", "/v1/admin/faults", {"kind": "calibration_drift", "backend": "nope"})
    assert (r.status, r.code) == (404, "unknown_backend")


def test_fault_unauthorized(cloud: FakeCloud) -> None:
    cloud.fault(kind="unauthorized", endpoint="tokens", count=1)
    r = cloud.call("POST", "/v1/tokens", {"job_ref": "a", "action": "read"}, bearer=cloud.api_key)
    assert (r.status, r.code) == (401, "invalid_api_key")
    # count=1: the next request goes through.
    cloud.token("a", "read")


def test_fault_rate_limit(cloud: FakeCloud) -> None:
    cloud.fault(kind="rate_limit", endpoint="create", retry_after=7)
    job_ref = ref()
    token = cloud.token(job_ref, "create")
    headers = {"Idempotency-Key": job_ref}
    r = cloud.call("POST", "/v1/jobs", job_body(shots=10), bearer=token, headers=headers)
    assert (r.status, r.code) == (429, "rate_limited")
    assert r.headers["Retry-After"] == "7"
    # Refused at the door: the token was not used up and no job was made.
    assert cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"].get(job_ref) is None
    created = cloud.call("POST", "/v1/jobs", job_body(shots=10), bearer=token, headers=headers)
    assert created.status == 201
    # "any" reaches the public pages too.
    cloud.fault(kind="rate_limit", endpoint="any", retry_after=2.5)
    r = cloud.call("GET", "/v1/prices")
    assert (r.status, r.code, r.headers["Retry-After"]) == (429, "rate_limited", "3")
    assert cloud.wait_job(created.body)["status"] == "DONE"


def test_fault_server_error(cloud: FakeCloud) -> None:
    job = cloud.run(ref(), job_body(shots=10))
    cloud.fault(kind="server_error", endpoint="status", status=502, count=2)
    for _ in range(2):
        r = cloud.job(job["id"], job["job_ref"])
        assert (r.status, r.code) == (502, "server_error")
    assert cloud.job(job["id"], job["job_ref"]).status == 200


def test_fault_server_error_after_create_is_healed_by_the_key(cloud: FakeCloud) -> None:
    cloud.fault(kind="server_error", endpoint="create", status=503, phase="after")
    job_ref, body = ref(), job_body(shots=10)
    lost = cloud.create(job_ref, body)
    assert (lost.status, lost.code) == (503, "server_error")
    # The job exists although its answer was lost; the retry finds it instead of making another.
    retry = cloud.create(job_ref, body)
    assert retry.status == 200
    assert cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"][job_ref] == 1
    assert cloud.wait_job(retry.body)["status"] == "DONE"


def test_fault_slow(cloud: FakeCloud) -> None:
    job = cloud.run(ref(), job_body(shots=10))
    cloud.fault(kind="slow", endpoint="status", delay=1.0)
    r = cloud.job(job["id"], job["job_ref"])
    assert r.status == 200 and r.elapsed >= 1.0
    assert cloud.job(job["id"], job["job_ref"]).elapsed < 1.0


def test_fault_job_error(cloud: FakeCloud) -> None:
    cloud.fault(kind="job_error", backend="fake_brisbane")
    job = cloud.run(ref(), job_body(shots=10))
    assert job["status"] == "ERROR"
    assert job["error"]["code"] == "execution_failed"
    assert "fake_brisbane" in job["error"]["message"] and job["error"]["message"].endswith(".")
    assert job["result"] is None and job["cost"]["amount"] == 0.0
    # One fault, one failed job.
    assert cloud.run(ref(), job_body(shots=10))["status"] == "DONE"


def test_fault_calibration_drift(cloud: FakeCloud) -> None:
    path = "/v1/backends/fake_brisbane/calibration"
    old = cloud.call("GET", path).body
    r = cloud.fault(kind="calibration_drift", backend="fake_brisbane")
    new_id = r.body["calibration_id"]
    assert new_id != old["calibration_id"]
    new = cloud.call("GET", path).body
    assert new["calibration_id"] == new_id
    assert new["qubits"][0]["readout_error"] > old["qubits"][0]["readout_error"]
    assert new["qubits"][0]["t1_us"] < old["qubits"][0]["t1_us"]
    listing = {b["name"]: b for b in cloud.call("GET", "/v1/backends").body["backends"]}
    assert listing["fake_brisbane"]["calibration_id"] == new_id
    job = cloud.run(ref(), job_body(shots=2000, seed=5))
    assert job["result"]["calibration_id"] == new_id


def test_faults_clear(cloud: FakeCloud) -> None:
    cloud.fault(kind="server_error", endpoint="tokens", count=50)
    assert cloud.admin("GET", "/v1/admin/faults").body["faults"][0]["remaining"] == 50
    r = cloud.admin("DELETE", "/v1/admin/faults")
    assert r.status == 200 and r.body["cleared"] == 1
    cloud.token("a", "read")


# -- restarts -----------------------------------------------------------------------------


def test_restart_keeps_jobs_and_reruns_running_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = FakeCloud(tmp_path, "--workers", "1", admin=False, state_dir=state).start()
    try:
        # Without an admin key, there is no admin API.
        r = first.call("GET", "/v1/admin/state", bearer="anything")
        assert (r.status, r.code) == (404, "not_found")
        done = first.run(ref(), job_body(shots=500, seed=9))
        long_ref, long_body = ref(), job_body(shots=20_000, qc=ghz(12), seed=2)
        long_job = first.create(long_ref, long_body).body
        deadline = time.monotonic() + 60
        while first.job(long_job["id"], long_ref).body["status"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        usage = first.usage()
        assert first.stop(signal.SIGTERM) == 0
    finally:
        first.stop(signal.SIGKILL)

    saved = (state / "fakecloud-state.json").read_text()
    assert first.api_key not in saved and "fct_" not in saved

    second = FakeCloud(tmp_path, "--workers", "1", admin=False, state_dir=state).start()
    try:
        assert second.api_key == first.api_key
        assert second.usage() == usage
        again = second.job(done["id"], done["job_ref"]).body
        assert again == done
        # The job cut short by the restart runs again, to the end, once.
        rerun = second.wait_job(long_job)
        assert rerun["status"] == "DONE"
        assert sum(rerun["result"]["counts"].values()) == 20_000
        retry = second.create(long_ref, long_body)
        assert retry.status == 200 and retry.body["id"] == long_job["id"]
        assert second.usage()["jobs"] == usage["jobs"] + 1
    finally:
        assert second.stop() == 0
