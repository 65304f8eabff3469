"""Waiting on a Qiskit backend job in a real agent kernel: one live status line, an interrupt
that stops the waiting and not the job, a timeout, cancel, and denial with its reason."""

from __future__ import annotations

import asyncio
import json

from support.helpers import BELL

RUN = (
    "from jupyter_qguard.kernel import get_backend\n"
    "backend = get_backend('aer_hw')\n"
    "job = backend.run(bell, shots=100)\n"
)


async def pending(jp_fetch):
    for _ in range(200):
        r = await jp_fetch("qguard", "api", "jobs", params={"state": "pending_approval"})
        jobs = json.loads(r.body)["jobs"]
        if jobs:
            return jobs[0]
        await asyncio.sleep(0.1)
    raise AssertionError("no job reached pending_approval")


async def test_status_line_interrupt_timeout_cancel(start_kernel, jp_fetch):
    k = await start_kernel()
    assert (await k.run(BELL))["error"] is None
    cell = asyncio.ensure_future(k.run(RUN + "job.result()"))
    job = await pending(jp_fetch)
    await asyncio.sleep(0.5)
    await k.manager.interrupt_kernel()
    res = await asyncio.wait_for(cell, 30)
    assert res["error"]["ename"] == "KeyboardInterrupt"
    # one line, shown when the job arrived and updated in place
    assert res["displays"][0] == (
        f"qguard job {job['id'][:12]} on aer_hw: pending_approval — waiting for 1 more "
        f"approval(s) of 1: in JupyterLab's qguard panel, or POST "
        f"/qguard/api/jobs/{job['id']}/approve"
    )
    assert res["displays"][-1].endswith(
        f"— stopped waiting (the job goes on; `%qguard status {job['id']}`, "
        f"`%qguard cancel {job['id']}`)"
    )
    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    assert json.loads(r.body)["state"] == "pending_approval"

    timed = await k.run("job.result(timeout=0.5)")
    assert timed["error"]["ename"] == "TimeoutError"
    assert timed["error"]["evalue"] == f"job {job['id']} still pending_approval after 0.5 s"

    cancelled = await k.run(f"%qguard cancel {job['id']}\njob.result()")
    assert cancelled["error"]["ename"] == "QGuardDenied"
    r = await jp_fetch("qguard", "api", "jobs", job["id"])
    assert json.loads(r.body)["state"] == "cancelled"


async def test_a_denial_raises_with_the_reason(start_kernel, jp_fetch):
    k = await start_kernel()
    assert (await k.run(BELL))["error"] is None
    cell = asyncio.ensure_future(k.run(RUN + "job.result()"))
    job = await pending(jp_fetch)
    await jp_fetch(
        "qguard",
        "api",
        "jobs",
        job["id"],
        "deny",
        method="POST",
        body=json.dumps({"reason": "not on a Friday"}),
    )
    res = await asyncio.wait_for(cell, 60)
    assert res["error"]["ename"] == "QGuardDenied"
    assert res["error"]["evalue"] == (
        f"qguard job {job['id'][:12]} on aer_hw: denied — not on a Friday"
    )
