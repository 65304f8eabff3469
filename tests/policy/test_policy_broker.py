"""The policy in the broker: decisions reach jobs and kernels; budgets are reserved from
approval and released when a job fails; bursts raise an alert; a changed pack voids approvals."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from support.helpers import BELL, approve, wait_for

from jupyter_qguard.broker.service import ApprovalRefused

PACK = Path(__file__).resolve().parents[2] / "policies"

PAID = {
    "backends": {
        "aer_hw": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}},
        "aer_paid": {
            "tier": "hardware",
            "provider": "aer",
            "price": {"model": "per_shot", "per_task": 0.6, "per_shot": 0.0, "currency": "USD"},
        },
        "aer_premium": {"tier": "premium", "provider": "aer", "price": {"model": "free"}},
    },
    "limits": {"daily_budget_per_user": 1.0},
}
BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "aer_hw": {"provider": "aer", "qubits": 28},
    "aer_paid": {"provider": "aer", "qubits": 28},
    "aer_premium": {"provider": "aer", "qubits": 28},
}
PAID_CONFIG = {"policy_data": PAID, "backends": BACKENDS}
BUDGET = "this job would bring today's spending for {u} to 1.20 USD, over the daily budget of 1.00"


async def jobs(jp_fetch, state=None):
    params = {"state": state} if state else {}
    r = await jp_fetch("qguard", "api", "jobs", params=params)
    return json.loads(r.body)["jobs"]


@pytest.mark.parametrize("qguard_config", [PAID_CONFIG], indirect=True)
async def test_cost_is_reserved_at_approval_and_counts_against_the_budget(
    start_kernel, jp_fetch, broker
):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("a = %qguard submit bell --backend aer_paid --shots 10")
    [a] = await jobs(jp_fetch, "pending_approval")
    assert a["decision"]["cost"] == {"estimate": 0.6, "currency": "USD", "model": "per_shot"}
    assert a["decision"]["usage"]["spent_today"] == 0.0
    # Pending jobs reserve nothing yet: a second request still fits the budget.
    await k.run("b = %qguard submit bell --backend aer_paid --shots 20")
    pending = await jobs(jp_fetch, "pending_approval")
    assert len(pending) == 2
    b = next(j for j in pending if j["id"] != a["id"])
    assert (await approve(jp_fetch, a)).code == 200
    await wait_for(lambda: _state(jp_fetch, a["id"], "completed"), timeout=60)
    # Approving the second would go over the budget now that the first is reserved.
    r = await approve(jp_fetch, b, raise_error=False)
    assert r.code == 409
    user = a["requester"]["user"]
    assert json.loads(r.body)["message"] == (
        "the policy no longer allows this job: " + BUDGET.format(u=user)
    )
    assert (await _job(jp_fetch, b["id"]))["state"] == "pending_approval"
    # And a new request is refused outright.
    res = await k.run("c = %qguard submit bell --backend aer_paid --shots 5 --wait")
    assert res["error"]["ename"] == "QGuardDenied"
    assert BUDGET.format(u=user) in res["error"]["evalue"]


@pytest.mark.parametrize("qguard_config", [{**PAID_CONFIG, "policy_data": PAID}], indirect=True)
async def test_a_failed_job_releases_its_reservation(start_kernel, jp_fetch, jp_serverapp, broker):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("a = %qguard submit bell --backend aer_paid --shots 10")
    [a] = await jobs(jp_fetch, "pending_approval")
    aer = broker.providers["aer"]
    aer.method = "no_such_method"  # the run will fail in the worker
    assert (await approve(jp_fetch, a)).code == 200
    failed = await wait_for(lambda: _state(jp_fetch, a["id"], "failed"), timeout=60)
    assert "simulation failed" in failed["reason"]
    aer.method = "automatic"
    await k.run("b = %qguard submit bell --backend aer_paid --shots 10")
    [b] = await jobs(jp_fetch, "pending_approval")
    assert b["decision"]["usage"]["spent_today"] == 0.0  # released
    assert (await approve(jp_fetch, b)).code == 200


@pytest.mark.parametrize("qguard_config", [PAID_CONFIG], indirect=True)
async def test_premium_needs_other_people_than_the_requester(start_kernel, jp_fetch, broker):
    broker.user = "ada"
    k = await start_kernel()
    await k.run(BELL)
    await k.run("p = %qguard submit bell --backend aer_premium --shots 10")
    [p] = await jobs(jp_fetch, "pending_approval")
    assert p["requester"]["user"] == "ada"
    assert (p["decision"]["approvals_required"], p["decision"]["mfa_required"]) == (2, True)
    # The requester approving their own premium job (the broker's own check; a token-only
    # single-user server gives each REST call an anonymous name, so it is called directly).
    with pytest.raises(ApprovalRefused) as refused:
        await broker.approve(p["id"], "ada", p["digest"])
    assert str(refused.value) == (
        "this job needs approvals from other people than the one who asked for it (ada)"
    )
    # Anyone else still needs step-up MFA, which is not enrolled: refused over REST too.
    r = await approve(jp_fetch, p, raise_error=False)
    assert r.code == 409
    assert json.loads(r.body)["message"] == (
        "the policy asks for step-up MFA to approve this job, and ada has no MFA enrolled: "
        "run `jupyter qguard mfa enroll` on the server"
    )
    after = await _job(jp_fetch, p["id"])
    assert (after["state"], after["approvals"]) == ("pending_approval", [])


@pytest.mark.parametrize(
    "qguard_config",
    [
        {
            "rate_window_seconds": 60,
            "policy_data": {
                "backends": {"aer_hw": {"tier": "hardware", "provider": "aer"}},
                "limits": {"burst_floor": 3, "burst_factor": 5},
            },
        }
    ],
    indirect=True,
)
async def test_a_burst_is_denied_and_raises_an_alert(start_kernel, jp_ws_fetch, jp_fetch):
    ws = await jp_ws_fetch("qguard", "api", "events")
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run(
        "from jupyter_qguard.kernel.jobs import submit\n"
        "states = [submit(bell, backend='aer_simulator', shots=5).state for _ in range(5)]\n"
        "print(states)"
    )
    assert "rejected" in res["stdout"]
    alert = None
    while alert is None:
        event = json.loads(await asyncio.wait_for(ws.read_message(), 10))
        if event["type"] == "alert":
            alert = event
    assert alert["kind"] == "burst" and alert["usage"]["jobs_window"] == 4
    assert "in the current window is far above" in alert["message"]
    rejected = await jobs(jp_fetch, "rejected")
    # jobs 1–3 fit under the floor of 3; the 4th and 5th are a burst (the count includes them)
    # a single kernel: its own count is the user's, so both limits say so
    assert sorted(j["reason"] for j in rejected) == [
        f"{n} jobs in the current window is far above the usual 0; wait, or ask an admin to "
        f"raise the limit; kernel {k.id}: {n} jobs in the current window is far above "
        "its usual 0; wait, or ask an admin to raise the limit"
        for n in (4, 5)
    ]


@pytest.mark.parametrize(
    "qguard_config",
    [
        {
            "rate_window_seconds": 3,
            "rate_baseline_windows": 1,
            "policy_data": {"limits": {"burst_floor": 3, "burst_factor": 5}},
        }
    ],
    indirect=True,
)
async def test_a_new_kernel_bursting_is_denied_though_its_user_is_within_limits(
    start_kernel, jp_fetch
):
    submit_n = (
        "from jupyter_qguard.kernel.jobs import submit\n"
        "states = [submit(bell, backend='aer_simulator', shots=5).state for _ in range({n})]\n"
        "print(states)"
    )
    a, b = await start_kernel(), await start_kernel()
    await a.run(BELL)
    await b.run(BELL)
    assert (await a.run(submit_n.format(n=3)))["stdout"].count("queued") == 3
    # a's jobs move into the baseline window: the user's usual is now 3 a window (limit 15),
    # while kernel b has no history (limit: the floor of 3)
    await asyncio.sleep(3.2)
    res = await b.run(submit_n.format(n=4))
    assert res["stdout"].strip() == str(["queued"] * 3 + ["rejected"])
    (rejected,) = await jobs(jp_fetch, "rejected")
    assert rejected["requester"]["kernel_id"] == b.id
    assert rejected["reason"] == (
        f"kernel {b.id}: 4 jobs in the current window is far above its usual 0; wait, "
        "or ask an admin to raise the limit"
    )
    assert rejected["decision"]["usage"]["jobs_window"] == 4
    assert rejected["decision"]["usage"]["baseline_window"] == 3


@pytest.mark.parametrize("qguard_config", [{"workstation_tier": "sandbox"}], indirect=True)
async def test_a_sandbox_workstation_runs_simulators_only(start_kernel):
    k = await start_kernel()
    await k.run(BELL)
    ok = await k.run("c = %qguard submit bell --backend aer_simulator --shots 10 --wait")
    assert ok["error"] is None
    res = await k.run("c = %qguard submit bell --backend aer_hw --shots 10 --wait")
    assert res["error"]["ename"] == "QGuardDenied"
    assert (
        "this workstation is in tier sandbox, where only simulators may run "
        "(backend aer_hw is hardware)"
    ) in res["error"]["evalue"]


@pytest.fixture
def pack_copy(tmp_path):
    dest = tmp_path / "pack"
    shutil.copytree(PACK, dest)
    return dest


@pytest.fixture
def qguard_config(request, pack_copy):
    return {**getattr(request, "param", {}), "policy_dir": str(pack_copy)}


async def test_an_edited_pack_voids_pending_approvals(start_kernel, jp_fetch, pack_copy, broker):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("j = %qguard submit bell --backend aer_hw --shots 10")
    [job] = await jobs(jp_fetch, "pending_approval")
    data = json.loads((pack_copy / "data.json").read_text())
    data["limits"]["max_shots"] = 50000
    (pack_copy / "data.json").write_text(json.dumps(data))
    r = await approve(jp_fetch, job, raise_error=False)
    assert r.code == 409
    after = await _job(jp_fetch, job["id"])
    assert after["state"] == "voided"
    assert after["reason"] == "the policy pack changed after the request was checked"
    assert broker.policy_version != job["policy_version"]


async def test_a_broken_pack_keeps_agent_kernels_from_starting(
    jp_server_config, pack_copy, jp_configurable_serverapp
):
    (pack_copy / "decision.rego").write_text("package qguard.decision\n\nnot rego at all\n")
    from jupyter_qguard.broker import runtime
    from jupyter_qguard.policy.engine import PolicyError

    runtime.set_current(None)
    jp_server_config["ServerApp"]["reraise_server_extension_failures"] = True
    with pytest.raises(PolicyError, match="the pack does not compile"):
        jp_configurable_serverapp(config=jp_server_config)
    with pytest.raises(runtime.BrokerNotRunning):
        runtime.current()


async def _job(jp_fetch, job_id):
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    return json.loads(r.body)


async def _state(jp_fetch, job_id, state):
    job = await _job(jp_fetch, job_id)
    return job if job["state"] == state else None


async def test_a_preflight_simulation_comes_with_the_request(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("j = %qguard submit bell --backend aer_hw --shots 5000 --seed 4")
    [job] = await jobs(jp_fetch, "pending_approval")
    pre = job["decision"]["preflight"]
    assert pre["shots"] == 1024 and pre["noise_model"] is None
    assert set(pre["counts"]) == {"00", "11"} and sum(pre["counts"].values()) == 1024
    # nothing reached a provider: the job's history has no submission
    history = await _job(jp_fetch, job["id"])
    assert [e["to"] for e in history["events"]] == ["received", "pending_approval"]


BRISBANE = {
    "backends": {
        "aer_simulator": {"provider": "aer", "qubits": 28},
        "aer_brisbane": {"provider": "aer", "qubits": 127, "snapshot": "fake_brisbane"},
    },
    "policy_data": {"backends": {"aer_brisbane": {"tier": "hardware", "provider": "aer"}}},
    "preflight_timeout_seconds": 60,
}


@pytest.mark.parametrize("qguard_config", [BRISBANE], indirect=True)
async def test_preflight_and_lint_use_the_target_devices_snapshot(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("j = %qguard submit bell --backend aer_brisbane --shots 4000 --seed 7")
    [job] = await jobs(jp_fetch, "pending_approval")
    pre = job["decision"]["preflight"]
    assert pre["shots"] == 1024 and pre["noise_model"] == "fake_brisbane"
    assert sum(pre["counts"].values()) == 1024
    # the device's noise: mostly 00 and 11, and some of the outcomes a noiseless Bell never gives
    assert pre["counts"]["00"] + pre["counts"]["11"] > 900
    assert pre["counts"].get("01", 0) + pre["counts"].get("10", 0) > 0
    transpiled = job["decision"]["lint"]["facts"]["transpiled"]
    # Brisbane's two-qubit gate is ECR: the CX becomes one ECR plus single-qubit rotations
    assert transpiled["target"] == "fake_brisbane" and transpiled["two_qubit_gates"] == 1
    assert transpiled["depth"] > job["decision"]["lint"]["facts"]["depth"]


@pytest.mark.parametrize("qguard_config", [{"preflight_timeout_seconds": 0.0001}], indirect=True)
async def test_a_slow_preflight_is_skipped_not_blocking(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("j = %qguard submit bell --backend aer_hw --shots 10")
    [job] = await jobs(jp_fetch, "pending_approval")
    assert job["decision"]["preflight"] == {"skipped": "the simulation took longer than 0.0001 s"}
