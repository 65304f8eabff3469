"""The broker and the fake cloud, both real processes: the credential stays in the keyring and in
the broker, faults end in the right state with a readable message, and a kill -9 between
submission and result leaves exactly one job at the provider."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest
from support.broker_flow import server_for, submit_and_approve, until
from support.fakecloud_proc import FakeCloud
from support.helpers import BELL
from support.jupyter_proc import kernel_processes


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("cloud")
    fc = FakeCloud(tmp, "--record-tokens", str(tmp / "issued-tokens")).start()
    fc.tokens_file = tmp / "issued-tokens"
    yield fc
    fc.stop()


@pytest.fixture(autouse=True)
def no_faults_left(cloud: FakeCloud) -> Any:
    yield
    cloud.admin("DELETE", "/v1/admin/faults")


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_a_hardware_job_end_to_end_leaks_neither_key_nor_token(tmp_path, cloud):
    server = server_for(tmp_path, cloud).start()
    printed: list[str] = []
    try:
        kernel = await server.start_kernel()
        printed.append(json.dumps(await kernel.run(BELL)))
        job = await submit_and_approve(server, kernel)
        done = await until(server, job["id"], {"completed", "failed"})
        assert done["state"] == "completed", done.get("reason")
        assert sum(done["result"]["counts"].values()) == 1000
        assert done["result"]["provider"]["name"] == "fakecloud"
        # The result reaches the kernel; then the agent looks everywhere it can.
        res = await kernel.run(
            "counts = job.result()\nprint(sum(counts.values()))\n"
            "import os, json\nprint(json.dumps(dict(os.environ)))\n"
            "print(open('/proc/self/environ', 'rb').read())\n"
            "%qguard whoami"
        )
        printed.append(json.dumps(res))
        assert res["error"] is None, res
        assert res["stdout"].splitlines()[0] == "1000"
        [pid, *_] = kernel_processes(kernel.id)
        proc_views = [
            Path(f"/proc/{pid}/environ").read_bytes(),
            Path(f"/proc/{pid}/cmdline").read_bytes(),
        ]
        kernel.close()
    finally:
        server.stop()

    tokens = [t for t in cloud.tokens_file.read_text().split() if t]
    # a create token and at least one read token for this job
    assert len(tokens) >= 2
    secrets = [cloud.api_key, *tokens]
    haystacks = {
        "kernel output": "\n".join(printed).encode(),
        "kernel /proc": b"\n".join(proc_views),
        "server log": server.log_path.read_bytes(),
    }
    for path in files_under(server.state):  # the broker database is in here
        haystacks[f"state dir {path.name}"] = path.read_bytes()
    assert any(name.startswith("state dir qguard.db") for name in haystacks)
    for name, hay in haystacks.items():
        for secret in secrets:
            assert secret.encode() not in hay, f"{name} holds a secret"


async def test_each_fault_ends_in_the_right_state_with_a_readable_message(tmp_path, cloud):
    # the broker asks the cloud about its devices once, at start: a drift later is news to it
    server = server_for(tmp_path, cloud, "--QGuardApp.backend_refresh_seconds=3600").start()
    outcomes: dict[str, dict] = {}
    try:
        kernel = await server.start_kernel()
        assert (await kernel.run(BELL))["error"] is None
        listed = await kernel.run(
            "import json\nfrom jupyter_qguard.kernel.client import client\n"
            "print(json.dumps(client().call('backends', {})))"
        )
        reported = {b["name"]: b for b in json.loads(listed["stdout"])}
        calibration = cloud.call("GET", "/v1/backends").body["backends"]
        before = {b["name"]: b["calibration_id"] for b in calibration}
        assert reported["fake_brisbane"]["calibration_id"] == before["fake_brisbane"]
        assert reported["fake_brisbane"]["target"] == "fake_brisbane"
        assert reported["fake_brisbane"]["status"] == "online"
        cases: list[tuple[str, dict[str, Any]]] = [
            ("unauthorized", {"kind": "unauthorized", "endpoint": "tokens", "count": 1}),
            (
                "rate_limit",
                {"kind": "rate_limit", "endpoint": "create", "count": 2, "retry_after": 1},
            ),
            (
                "server_error",
                {"kind": "server_error", "endpoint": "create", "count": 1, "status": 503},
            ),
            (
                "server_error_every_time",
                {"kind": "server_error", "endpoint": "create", "count": 50, "status": 502},
            ),
            (
                "lost_response",
                {
                    "kind": "server_error",
                    "endpoint": "create",
                    "count": 1,
                    "status": 500,
                    "phase": "after",
                },
            ),
            ("slow", {"kind": "slow", "endpoint": "status", "count": 1, "delay": 2}),
            ("job_error", {"kind": "job_error", "count": 1, "message": "qubit 3 is down"}),
            ("calibration_drift", {"kind": "calibration_drift", "backend": "fake_brisbane"}),
        ]
        for name, fault in cases:
            cloud.admin("DELETE", "/v1/admin/faults")
            drift = cloud.fault(**fault).body
            started = asyncio.get_running_loop().time()
            job = await submit_and_approve(server, kernel, shots=200)
            end = await until(server, job["id"], {"completed", "failed"})
            end["_seconds"] = asyncio.get_running_loop().time() - started
            end["_fault"] = drift
            outcomes[name] = end
        kernel.close()
    finally:
        server.stop()

    def state(name: str) -> tuple[str, str | None]:
        return outcomes[name]["state"], outcomes[name]["reason"]

    assert state("unauthorized")[0] == "failed"
    assert state("unauthorized")[1].startswith(
        "the fake cloud refused the credential: token exchange failed (HTTP 401, invalid_api_key): "
    )
    # 429 twice with Retry-After: 1 s → waited, then created once
    assert state("rate_limit") == ("completed", None)
    assert outcomes["rate_limit"]["_seconds"] >= 2.0
    assert state("server_error") == ("completed", None)
    assert state("server_error_every_time")[0] == "failed"
    assert state("server_error_every_time")[1].startswith(
        "the fake cloud did not answer after 3 tries: HTTP 502 server_error: "
    )
    # the cloud made the job but the answer was lost: the retry with the same key finds it
    assert state("lost_response") == ("completed", None)
    assert state("slow") == ("completed", None)
    assert outcomes["slow"]["_seconds"] >= 2.0
    assert state("job_error") == (
        "failed",
        "the job failed at the fake cloud (execution_failed): qubit 3 is down",
    )
    assert state("calibration_drift") == ("completed", None)
    drifted = outcomes["calibration_drift"]["_fault"]["calibration_id"]
    result = outcomes["calibration_drift"]["result"]
    assert result["provider"]["calibration_id"] == drifted
    assert result["calibration_drift"] == {
        "checked_with": before["fake_brisbane"],
        "ran_with": drifted,
        "note": "the device was recalibrated after this job was checked and approved; the "
        "preflight preview used the earlier calibration",
    }
    assert "calibration_drift" not in outcomes["slow"]["result"]
    # exactly one job at the provider for every job that reached it
    per_ref = cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"]
    assert all(n == 1 for n in per_ref.values())


async def test_kill_9_between_submission_and_result_runs_once(tmp_path, cloud):
    server = server_for(tmp_path, cloud)
    server.start()
    before = cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"]
    try:
        kernel = await server.start_kernel(notebook="run.ipynb")
        assert (await kernel.run(BELL))["error"] is None
        # the status poll hangs: the job is at the provider, its result not yet with us
        cloud.fault(kind="slow", endpoint="status", count=100, delay=30)
        job = await submit_and_approve(server, kernel, shots=300)
        submitted = await until(server, job["id"], {"submitted"})
        for _ in range(100):
            if submitted.get("provider_job_id"):
                break
            await asyncio.sleep(0.1)
            submitted = await server.json(f"qguard/api/jobs/{job['id']}")
        assert submitted["provider_job_id"].startswith("fc-")
        [submitted_ref] = [
            r for r in cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"] if r not in before
        ]
        kernel.close()
    finally:
        server.stop(signal.SIGKILL)
    cloud.admin("DELETE", "/v1/admin/faults")

    server.start()
    try:
        done = await until(server, job["id"], {"completed", "failed"})
        assert done["state"] == "completed", done.get("reason")
        assert done["provider_job_id"] == submitted["provider_job_id"]
        after = cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"]
        # one new job at the provider, made once
        assert {ref: n for ref, n in after.items() if ref not in before} == {submitted_ref: 1}
        # The result reaches the notebook's kernel on the restarted server.
        kernel = await server.start_kernel(notebook="run.ipynb")
        res = await kernel.run(f"c = %qguard result {job['id']}\nprint(sum(c.values()))")
        assert res["error"] is None, res
        assert res["stdout"].strip().splitlines()[-1] == "300"
        kernel.close()
    finally:
        server.stop()
