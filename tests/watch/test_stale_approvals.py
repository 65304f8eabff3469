"""Approvals that cannot go stale: the broker re-hashes a job's bound files right before it
submits, so a change nobody reported (the watcher paused, down, or bypassed) still voids it."""

from __future__ import annotations

import json

import nbformat
from support.helpers import BELL, wait_for


async def test_a_bound_file_edited_after_approval_is_caught_by_the_rehash(
    start_kernel, jp_root_dir, jp_fetch
):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(BELL)]
    nbformat.write(nb, jp_root_dir / "exp.ipynb")
    (jp_root_dir / "params.json").write_text('{"theta": 0.1}')
    k = await start_kernel(path="exp.ipynb")
    await k.run(BELL)
    res = await k.run(
        "from jupyter_qguard.kernel.jobs import submit\n"
        "job = submit(bell, backend='aer_hw', shots=10, files={'params.json': None})\n"
        "print(job.job_id)"
    )
    job_id = res["stdout"].strip()
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    job = json.loads(r.body)
    assert job["state"] == "pending_approval" and set(job["files"]) == {"exp.ipynb", "params.json"}
    # Behind everyone's back, after the person looked and before the broker submits:
    (jp_root_dir / "params.json").write_text('{"theta": 3.1}')
    r = await jp_fetch(
        "qguard",
        "api",
        "jobs",
        job_id,
        "approve",
        method="POST",
        body=json.dumps({"digest": job["digest"]}),
    )
    assert r.code == 200

    async def ended():
        r = await jp_fetch("qguard", "api", "jobs", job_id)
        j = json.loads(r.body)
        return j if j["state"] in ("voided", "completed", "failed") else None

    final = await wait_for(ended, timeout=30)
    assert final["state"] == "voided"
    assert final["reason"] == (
        "params.json changed after the approval; the request must be approved again"
    )
    steps = [e["to"] for e in final["events"]]
    assert steps == ["received", "pending_approval", "approved", "queued", "voided"]
    assert "submitted" not in steps


async def test_an_unchanged_job_runs_and_an_unbound_edit_does_not_void(
    start_kernel, jp_root_dir, jp_fetch
):
    (jp_root_dir / "other.txt").write_text("a")
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run("job = %qguard submit bell --backend aer_hw --shots 10\nprint(job.job_id)")
    job_id = res["stdout"].strip()
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    job = json.loads(r.body)
    (jp_root_dir / "other.txt").write_text("b")  # not bound to the job
    await jp_fetch(
        "qguard",
        "api",
        "jobs",
        job_id,
        "approve",
        method="POST",
        body=json.dumps({"digest": job["digest"]}),
    )

    async def done():
        r = await jp_fetch("qguard", "api", "jobs", job_id)
        j = json.loads(r.body)
        return j if j["state"] == "completed" else None

    assert (await wait_for(done, timeout=60))["state"] == "completed"
