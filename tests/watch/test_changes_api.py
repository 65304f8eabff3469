"""The change feed in a real server: who made each change, diffs over REST and the websocket,
approvals voided by a change of a bound file, reverts that restore the bytes exactly."""

from __future__ import annotations

import asyncio
import hashlib
import json

import nbformat
from support.helpers import BELL, approve, wait_for


async def changes(jp_fetch, since=0, path=None):
    r = await jp_fetch("qguard", "api", "changes", params={"since": str(since)})
    rows = json.loads(r.body)["changes"]
    return [c for c in rows if path is None or c["path"] == path]


async def until_change(jp_fetch, path, n=1, timeout=15):
    async def found():
        rows = await changes(jp_fetch, path=path)
        return rows if len(rows) >= n else None

    return await wait_for(found, timeout=timeout)


async def test_agent_and_person_changes_are_attributed_and_diffed(
    start_kernel, jp_root_dir, jp_fetch, jp_ws_fetch, broker
):
    ws = await jp_ws_fetch("qguard", "api", "events")
    (jp_root_dir / "notes.txt").write_text("one\ntwo\n")
    [made] = await until_change(jp_fetch, "notes.txt")  # the test's own, as the person
    assert made["actor"] == f"user:{broker.user}"
    k = await start_kernel()
    res = await k.run("open('notes.txt', 'w').write('one\\nTWO\\nthree\\n')")
    assert res["error"] is None
    [_, agent] = await until_change(jp_fetch, "notes.txt", n=2)
    assert agent["actor"] == f"kernel:{k.id}" and agent["kind"] == "modified"
    # the websocket said so too
    pushed = []
    while agent["id"] not in pushed:
        event = json.loads(await asyncio.wait_for(ws.read_message(), 10))
        if event["type"] == "change" and event["change"]["path"] == "notes.txt":
            pushed.append(event["change"]["id"])
    assert pushed == [made["id"], agent["id"]]
    r = await jp_fetch("qguard", "api", "changes", str(agent["id"]))
    diff = json.loads(r.body)["diff"]
    assert diff["kind"] == "text" and diff["status"] == "modified"
    assert [
        line for line in diff["lines"] if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ] == ["-two", "+TWO", "+three"]
    # the person, with the kernel idle for a while
    await asyncio.sleep(1.5)
    (jp_root_dir / "person.txt").write_text("mine")
    [person] = await until_change(jp_fetch, "person.txt")
    assert person["actor"] == f"user:{broker.user}" and person["kind"] == "created"
    assert person["kernels"] == []
    later = await changes(jp_fetch, since=agent["id"])
    assert [c["id"] for c in later] == [person["id"]]
    ws.close()


async def test_revert_restores_the_bytes_exactly(start_kernel, jp_root_dir, jp_fetch):
    original = bytes(range(256)) * 40  # binary, every byte value
    (jp_root_dir / "data.bin").write_bytes(original)
    await until_change(jp_fetch, "data.bin")
    k = await start_kernel()
    await k.run("open('data.bin', 'wb').write(b'clobbered')\nopen('new.txt', 'w').write('x')")
    [_, change] = await until_change(jp_fetch, "data.bin", n=2)
    [created] = await until_change(jp_fetch, "new.txt")
    assert change["actor"] == f"kernel:{k.id}"
    r = await jp_fetch(
        "qguard", "api", "changes", str(change["id"]), "revert", method="POST", body=""
    )
    out = json.loads(r.body)
    assert (jp_root_dir / "data.bin").read_bytes() == original
    assert out["reverted"] == change["id"]
    assert out["change"]["reverts"] == change["id"]
    assert out["change"]["actor"].startswith("user:")
    assert out["change"]["after_sha"] == hashlib.sha256(original).hexdigest()
    # undoing a creation deletes the file
    await jp_fetch("qguard", "api", "changes", str(created["id"]), "revert", method="POST", body="")
    assert not (jp_root_dir / "new.txt").exists()


async def test_a_bound_file_changed_while_pending_voids_the_request(
    start_kernel, jp_root_dir, jp_fetch
):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(BELL)]
    nbformat.write(nb, jp_root_dir / "exp.ipynb")
    k = await start_kernel(path="exp.ipynb")
    await k.run(BELL)
    res = await k.run("job = %qguard submit bell --backend aer_hw --shots 10\nprint(job.job_id)")
    job_id = res["stdout"].strip()
    # saving outputs only does not change what was approved
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="hello")]
    nbformat.write(nb, jp_root_dir / "exp.ipynb")
    await until_change(jp_fetch, "exp.ipynb")
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    assert json.loads(r.body)["state"] == "pending_approval"
    # editing code does
    nb.cells[0].source = BELL + "\nbell.x(0)"
    nbformat.write(nb, jp_root_dir / "exp.ipynb")
    [_, edit] = await until_change(jp_fetch, "exp.ipynb", n=2)

    async def voided():
        r = await jp_fetch("qguard", "api", "jobs", job_id)
        j = json.loads(r.body)
        return j if j["state"] == "voided" else None

    job = await wait_for(voided, timeout=15)
    assert job["reason"] == (
        f"exp.ipynb changed after the request (change #{edit['id']} by {edit['actor']}); "
        "the request must be approved again"
    )
    assert "submitted" not in [e["to"] for e in job["events"]]


async def test_a_change_behind_the_paused_watcher_is_caught_by_the_rehash(
    start_kernel, jp_root_dir, jp_fetch, broker
):
    (jp_root_dir / "params.json").write_text('{"theta": 0.1}')
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run(
        "from jupyter_qguard.kernel.jobs import submit\n"
        "job = submit(bell, backend='aer_hw', shots=10, files={'params.json': None})\n"
        "print(job.job_id)"
    )
    job_id = res["stdout"].strip()
    job = json.loads((await jp_fetch("qguard", "api", "jobs", job_id)).body)
    seen = await until_change(jp_fetch, "params.json")  # its creation, before the request
    await asyncio.get_running_loop().run_in_executor(None, broker.tracker.watcher.pause)
    (jp_root_dir / "params.json").write_text('{"theta": 3.1}')
    await asyncio.sleep(0.6)
    assert await changes(jp_fetch, path="params.json") == seen  # the watcher saw nothing new
    await approve(jp_fetch, job)

    async def ended():
        j = json.loads((await jp_fetch("qguard", "api", "jobs", job_id)).body)
        return j if j["state"] in ("voided", "completed") else None

    final = await wait_for(ended, timeout=30)
    assert (final["state"], final["reason"]) == (
        "voided",
        "params.json changed after the approval; the request must be approved again",
    )


async def test_a_thousand_rapid_writes_make_one_unbroken_chain(start_kernel, jp_root_dir, jp_fetch):
    k = await start_kernel()
    res = await k.run(
        "for i in range(1000):\n"
        "    with open('hot.txt', 'w') as f:\n"
        "        f.write(f'version {i}')\n"
    )
    assert res["error"] is None
    final = hashlib.sha256(b"version 999").hexdigest()

    async def settled():
        rows = await changes(jp_fetch, path="hot.txt")
        return rows if rows and rows[-1]["after_sha"] == final else None

    rows = await wait_for(settled, timeout=20)
    assert rows[0]["kind"] == "created" and rows[0]["before_sha"] is None
    for prev, nxt in zip(rows, rows[1:], strict=False):
        assert nxt["before_sha"] == prev["after_sha"]  # nothing lost between two changes
    assert len(rows) <= 10  # debounced: not a thousand
