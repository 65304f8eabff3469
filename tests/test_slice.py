"""The vertical slice end to end: agent kernel → broker → (human over REST) → Aer → Counts."""

from __future__ import annotations

import asyncio
import json

from support.helpers import BELL, approve, wait_for


async def test_simulator_job_returns_bell_counts(start_kernel):
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run(
        "counts = %qguard submit bell --backend aer_simulator --shots 1000 --seed 7 --wait"
    )
    assert res["error"] is None, res
    counts = await k.value("dict(counts)")
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 1000
    assert 400 < counts["00"] < 600
    assert await k.value("type(counts).__module__ + '.' + type(counts).__name__") == (
        "qiskit.result.counts.Counts"
    )


async def _pending_job(jp_fetch, timeout: float = 30):
    async def find():
        r = await jp_fetch("qguard", "api", "jobs", params={"state": "pending_approval"})
        jobs = json.loads(r.body)["jobs"]
        return jobs[0] if jobs else None

    return await wait_for(find, timeout=timeout)


async def test_hardware_job_waits_for_approval_with_the_right_digest(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    cell = asyncio.ensure_future(
        k.run("counts = %qguard submit bell --backend aer_hw --shots 500 --seed 3 --wait")
    )
    job = await _pending_job(jp_fetch)
    assert job["backend"] == "aer_hw"
    assert job["requester"]["kernel_id"] == k.id
    assert job["decision"]["approvals_required"] == 1
    assert not cell.done()

    # A digest other than the job's: 409, and nothing is approved.
    wrong = "0" * 64
    r = await approve(jp_fetch, job, digest=wrong, raise_error=False)
    assert r.code == 409
    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    detail = json.loads(r.body)
    assert detail["state"] == "pending_approval"
    assert detail["approvals"] == []

    r = await approve(jp_fetch, job)
    assert r.code == 200
    res = await asyncio.wait_for(cell, 120)
    assert res["error"] is None, res
    counts = await k.value("dict(counts)")
    assert set(counts) == {"00", "11"} and sum(counts.values()) == 500

    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    detail = json.loads(r.body)
    assert detail["state"] == "completed"
    assert [e["to"] for e in detail["events"]] == [
        "received",
        "pending_approval",
        "approved",
        "queued",
        "submitted",
        "completed",
    ]
    assert [a["approver"] for a in detail["approvals"]] == [detail["events"][2]["actor"][5:]]


async def test_denied_job_reaches_the_kernel_with_the_reason(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    cell = asyncio.ensure_future(
        k.run("counts = %qguard submit bell --backend aer_hw --shots 100 --wait")
    )
    job = await _pending_job(jp_fetch)
    r = await jp_fetch(
        "qguard",
        "api",
        "jobs",
        job["id"],
        "deny",
        method="POST",
        body=json.dumps({"reason": "not on the shared budget today"}),
    )
    assert json.loads(r.body)["state"] == "denied"
    res = await asyncio.wait_for(cell, 60)
    assert res["error"]["ename"] == "QGuardDenied"
    assert "denied" in res["error"]["evalue"]
    assert "not on the shared budget today" in res["error"]["evalue"]
    await k.run(f"status = %qguard status {job['id']}")
    status = await k.value("status")
    assert status["state"] == "denied"
    assert status["reason"] == "not on the shared budget today"


async def test_deny_needs_a_reason_and_approve_a_digest(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("job = %qguard submit bell --backend aer_hw --shots 10")
    job = await _pending_job(jp_fetch)
    for action, body in [
        ("deny", {}),
        ("deny", {"reason": "  "}),
        ("approve", {}),
        ("approve", {"digest": 5}),
    ]:
        r = await jp_fetch(
            "qguard",
            "api",
            "jobs",
            job["id"],
            action,
            method="POST",
            body=json.dumps(body),
            raise_error=False,
        )
        assert r.code == 400, (action, body)
    r = await jp_fetch(
        "qguard",
        "api",
        "jobs",
        "f" * 32,
        "approve",
        method="POST",
        body=json.dumps({"digest": job["digest"]}),
        raise_error=False,
    )
    assert r.code == 404
    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    assert json.loads(r.body)["state"] == "pending_approval"


async def test_second_approval_of_a_finished_job_is_a_conflict(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    await k.run("job = %qguard submit bell --backend aer_hw --shots 10")
    job = await _pending_job(jp_fetch)
    body = json.dumps({"digest": job["digest"]})
    r = await jp_fetch("qguard", "api", "jobs", job["id"], "approve", method="POST", body=body)
    assert r.code == 200
    r = await jp_fetch(
        "qguard", "api", "jobs", job["id"], "approve", method="POST", body=body, raise_error=False
    )
    assert r.code == 409
    res = await k.run("c = job.result(timeout=60)")
    assert res["error"] is None, res
    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    events = [e["to"] for e in json.loads(r.body)["events"]]
    assert events.count("submitted") == 1


async def test_interrupt_stops_waiting_but_not_the_job(start_kernel, jp_fetch):
    k = await start_kernel()
    assert k.manager.kernel_spec.interrupt_mode == "message"
    await k.run(BELL)
    cell = asyncio.ensure_future(
        k.run("c = %qguard submit bell --backend aer_hw --shots 10 --wait")
    )
    job = await _pending_job(jp_fetch)
    await asyncio.sleep(0.3)
    await k.manager.interrupt_kernel()
    res = await asyncio.wait_for(cell, 30)
    assert res["error"]["ename"] == "KeyboardInterrupt"
    assert any("stopped waiting" in d for d in res["displays"])
    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    assert json.loads(r.body)["state"] == "pending_approval"
    # the channel still works after the interrupted call
    await k.run(f"s = %qguard status {job['id']}")
    assert (await k.value("s"))["state"] == "pending_approval"
