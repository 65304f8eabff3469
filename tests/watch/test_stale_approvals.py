"""The re-hash before submission voids only for files the job is bound to (the case of a
bound file changed behind the paused watcher is in test_changes_api.py)."""

from __future__ import annotations

import json

from support.helpers import BELL, approve, wait_for


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
    await approve(jp_fetch, job)

    async def done():
        r = await jp_fetch("qguard", "api", "jobs", job_id)
        j = json.loads(r.body)
        return j if j["state"] == "completed" else None

    assert (await wait_for(done, timeout=60))["state"] == "completed"
