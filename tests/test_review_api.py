"""What the approval panel reads from the server: a job's review (source, circuit drawing, how
its bound files last changed, budget left) and whether a kernel is a qguard agent kernel (the
front end asks the server, since a kernelspec name can be copied)."""

from __future__ import annotations

import json

import pytest
from support.helpers import BELL, stored_job, wait_for

PAID = {
    "policy_data": {
        "backends": {
            "aer_hw": {
                "tier": "hardware",
                "provider": "aer",
                "price": {"model": "per_shot", "per_task": 0.5, "per_shot": 0.0, "currency": "USD"},
            }
        },
        "limits": {"daily_budget_per_user": 10.0},
    }
}


@pytest.mark.parametrize("qguard_config", [PAID], indirect=True)
async def test_the_review_shows_source_drawing_file_changes_and_budget(
    start_kernel, jp_fetch, jp_root_dir
):
    (jp_root_dir / "params.json").write_text('{"theta": 0.1}')
    k = await start_kernel()
    await k.run(BELL)

    async def change_seen():
        r = await jp_fetch("qguard", "api", "changes")
        changes = json.loads(r.body)["changes"]
        # The file's creation (written above, after the server's watcher started) is a change
        # too: wait for the edit itself, or the review may be read before it is recorded.
        return [c for c in changes if c["path"] == "params.json" and c["kind"] == "modified"]

    (jp_root_dir / "params.json").write_text('{"theta": 0.2}')
    await wait_for(change_seen, timeout=15)
    res = await k.run(
        "from jupyter_qguard.kernel.jobs import submit\n"
        "job = submit(bell, backend='aer_hw', shots=10, files={'params.json': None})\n"
        "print(job.job_id)"
    )
    job_id = res["stdout"].strip().splitlines()[-1]
    r = await jp_fetch("qguard", "api", "jobs", job_id, "review")
    review = json.loads(r.body)
    assert review["job_id"] == job_id and review["format"] == "qpy"
    # Qiskit's text drawing of the circuit as it will run, transpiled for Aer (whose gates
    # include H and CX): the H box and the CNOT's target on the second wire.
    assert review["drawing_target"] == "aer" and review["drawing_note"] is None
    assert "┤ H ├" in review["drawing"] and "┤ X ├" in review["drawing"]
    # No source was sent; were there one, it is the kernel's word only.
    assert review["source"] is None
    assert (review["source_origin"], review["source_verified"]) == ("kernel", False)
    [params] = [f for f in review["files"] if f["path"] == "params.json"]
    diff = params["change"]["diff"]
    assert params["change"]["actor"].split(":")[0] in ("user", "kernel")
    lines = json.dumps(diff, ensure_ascii=False)
    assert '-{\\"theta\\": 0.1}' in lines and '+{\\"theta\\": 0.2}' in lines
    assert review["budget"] == {
        "daily": 10.0,
        "spent_today": 0.0,
        "left": 10.0,
        "this_job": 0.5,
        "currency": "USD",
    }
    missing = await jp_fetch("qguard", "api", "jobs", "0" * 32, "review", raise_error=False)
    assert missing.code == 404


async def test_the_server_says_which_kernels_are_agent_kernels(start_kernel, jp_fetch):
    agent = await start_kernel()
    plain = await start_kernel(name="python3")
    r = await jp_fetch("qguard", "api", "kernels", agent.id)
    report = json.loads(r.body)
    assert report["agent"] is True and report["kernel_id"] == agent.id
    assert "landlock" in report["sandbox"]["active"]
    r = await jp_fetch("qguard", "api", "kernels", plain.id)
    assert json.loads(r.body) == {"kernel_id": plain.id, "agent": False, "sandbox": None}


async def test_limit_is_one_rule_for_every_listing(jp_fetch, broker):
    for route in (("jobs",), ("changes",), ("audit",)):
        r = await jp_fetch("qguard", "api", *route, params={"limit": "x"}, raise_error=False)
        assert r.code == 400, route
        assert json.loads(r.body)["message"] == "limit must be an integer"
    r = await jp_fetch("qguard", "api", "audit", params={"limit": "0"})
    assert len(json.loads(r.body)["entries"]) == 1  # held to at least one
    r = await jp_fetch("qguard", "api", "changes", params={"since": "yesterday"}, raise_error=False)
    assert (r.code, json.loads(r.body)["message"]) == (
        400,
        "since must be a change id or an ISO 8601 time",
    )


async def test_the_history_filters_by_state_backend_and_requester_and_pages_back(jp_fetch, broker):
    made = [
        stored_job(broker.store, user="ada", backend="aer_hw", state="rejected"),
        stored_job(broker.store, user="bob", backend="aer_hw", state="pending_approval"),
        stored_job(broker.store, user="ada", backend="aer_simulator", state="queued"),
        stored_job(broker.store, user="ada", backend="aer_hw", state="pending_approval"),
    ]
    ids = [j["id"] for j in made]

    async def listed(**params: str) -> list[str]:
        r = await jp_fetch("qguard", "api", "jobs", params=params)
        return [j["id"] for j in json.loads(r.body)["jobs"]]

    assert await listed() == ids[::-1]
    assert await listed(user="ada") == [ids[3], ids[2], ids[0]]
    assert await listed(backend="aer_hw", user="ada") == [ids[3], ids[0]]
    assert await listed(state="pending_approval,rejected", backend="aer_hw") == [
        ids[3],
        ids[1],
        ids[0],
    ]
    assert await listed(user="nobody") == []
    # Paging: the next page starts below the last row seen.
    first = await jp_fetch("qguard", "api", "jobs", params={"limit": "2"})
    page = json.loads(first.body)["jobs"]
    assert [j["id"] for j in page] == [ids[3], ids[2]]
    assert await listed(before=page[-1]["created_at"]) == [ids[1], ids[0]]
    bad = await jp_fetch("qguard", "api", "jobs", params={"before": "soon"}, raise_error=False)
    assert (bad.code, json.loads(bad.body)["message"]) == (
        400,
        "before must be an ISO 8601 time",
    )
