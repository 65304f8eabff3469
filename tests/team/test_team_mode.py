"""Team mode end to end: a real JupyterHub running qguard's broker as a managed service on a
real PostgreSQL, users' servers spawned by the hub forwarding their agent kernels' requests, the
fake cloud standing in for the provider. One scenario, in the order a team lives it:

alice's agent kernel asks for a premium job → alice may not approve it (her own) → dave, who
lacks the approve scope, gets 403 → bob approves (MFA), carol approves on the service's page →
it runs once on the fake cloud and the result reaches alice's kernel; the panel of an approver
shows the team queue; the group budget holds across users; the service killed with SIGKILL is
restarted by the hub and loses no job and runs none twice; the team's credential is nowhere in
users' servers, kernels or logs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from pathlib import Path

import pytest
from qiskit import QuantumCircuit
from support.team import (
    APPROVE,
    BELL,
    REQUEST,
    SERVICE,
    agent_kernel,
    approve,
    body,
    enroll,
    job_of,
    processes_under,
    server_hub_token,
    service_pids,
    service_ready,
    until,
)

from jupyter_qguard.kernel.jobs import encode_circuit


def bell_circuit() -> QuantumCircuit:
    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc


@pytest.mark.timeout(900)
async def test_a_team_shares_one_broker_on_jupyterhub(team):
    hub, cloud, keyring = team
    secret = cloud.api_key
    totp = {name: enroll(keyring, name) for name in ("bob", "carol")}
    tokens = {
        "alice": await hub.token("alice", REQUEST, APPROVE, SERVICE, "access:servers!user=alice"),
        "bob": await hub.token("bob", REQUEST, APPROVE, SERVICE, "access:servers!user=bob"),
        "carol": await hub.token("carol", REQUEST, APPROVE, SERVICE),
        "dave": await hub.token("dave", REQUEST, SERVICE),
    }
    await service_ready(hub, tokens["bob"])
    me = body(await hub.fetch(hub.service_url + "api/me", token=tokens["dave"]))
    assert me == {
        "name": "dave",
        "request": True,
        "approve": False,
        "admin": False,
        "review": False,
    }
    await hub.spawn("alice")
    await hub.spawn("bob")
    before = cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"]

    # -- alice's agent kernel asks for a premium job -------------------------------------------
    alice_k = await agent_kernel(hub, "alice", tokens["alice"], "premium.ipynb")
    res = await alice_k.run(
        BELL + "job = submit(bell, backend='fake_torino', shots=100, seed=7)\nprint(job.job_id)"
    )
    assert res["error"] is None, res
    job_id = res["stdout"].strip().splitlines()[-1]
    job = await until(hub, tokens["alice"], job_id, {"pending_approval", "rejected"}, 60)
    assert job["state"] == "pending_approval", job.get("reason")
    # Who asked is the hub's answer for alice's server's token, not anything the kernel said.
    assert job["requester"]["user"] == "alice" and job["requester"]["via"] == "hub"
    assert job["requester"]["groups"] == ["approvers", "physics"]
    assert job["requester"]["notebook"] == "premium.ipynb"
    assert job["requester"]["kernel_id"] == alice_k.id
    assert job["decision"]["approvals_required"] == 2 and job["decision"]["mfa_required"]
    assert job["approve_url"] == f"/services/qguard/jobs/{job_id}"

    # -- alice may not approve her own premium job ---------------------------------------------
    r = await approve(hub, tokens["alice"], job)
    assert r.code == 409, r.body
    assert "other people than the one who asked for it (alice)" in body(r)["message"]
    # -- dave lacks the approve scope ------------------------------------------------------------
    r = await approve(hub, tokens["dave"], job, "000000")
    assert r.code == 403, r.body
    assert body(r)["message"] == f"dave lacks the scope {APPROVE} for this"
    r = await hub.fetch(hub.service_url + f"jobs/{job_id}", token=tokens["dave"])
    assert r.code == 404  # not his job, and he is no approver: as good as absent
    dave_jobs = body(await hub.fetch(hub.service_url + "api/jobs", token=tokens["dave"]))
    assert dave_jobs == []
    # Whoever a request says it is from, the requester is the token's owner as the hub says.
    spoof = {
        "request": {
            "schema": "qguard.job/v1",
            "program": encode_circuit(bell_circuit()),
            "backend": "aer_simulator",
            "shots": 10,
            "seed": 1,
            "max_cost": None,
            "files": {},
            "cell_id": None,
        },
        "kernel": {"kernel_id": alice_k.id, "notebook": "premium.ipynb", "cell_id": None},
        "files": {},
        "requester": {"user": "alice"},
        "user": "alice",
    }
    r = await hub.fetch(
        hub.service_url + "api/jobs", token=tokens["dave"], method="POST", body=spoof
    )
    assert r.code == 201, r.body
    assert body(r)["requester"]["user"] == "dave"
    spoof["request"]["requester"] = {"user": "alice"}
    r = await hub.fetch(
        hub.service_url + "api/jobs", token=tokens["dave"], method="POST", body=spoof
    )
    assert r.code == 400 and "requester" in body(r)["message"], r.body
    assert (await job_of(hub, tokens["bob"], job_id))["state"] == "pending_approval"

    # -- the approver's lab panel shows the team queue; approving there is refused ----------------
    r = await hub.fetch(
        "user/bob/qguard/api/jobs?state=pending_approval", token=tokens["bob"], timeout=30
    )
    assert r.code == 200, r.body
    queue = body(r)["jobs"]
    assert [j["id"] for j in queue] == [job_id]
    assert queue[0]["team"] is True and queue[0]["approve_url"].endswith(f"/jobs/{job_id}")
    r = await hub.fetch(
        f"user/bob/qguard/api/jobs/{job_id}/approve",
        token=tokens["bob"],
        method="POST",
        body={"digest": job["digest"]},
    )
    assert r.code == 409 and "team broker's page" in body(r)["message"], r.body
    # Whatever runs in bob's server (an in-server agent's shell tool) can read the server's hub
    # token: with it, the queue reads and nothing is decided, MFA code or not.
    server_token = server_hub_token("bob")
    r = await hub.fetch(hub.service_url + "api/jobs?state=pending_approval", token=server_token)
    assert r.code == 200 and [j["id"] for j in body(r)] == [job_id], r.body
    for action, payload in (
        ("approve", {"digest": job["digest"], "otp": totp["bob"].now()}),
        ("deny", {"reason": "an agent decides"}),
    ):
        r = await hub.fetch(
            hub.service_url + f"api/jobs/{job_id}/{action}",
            token=server_token,
            method="POST",
            body=payload,
        )
        assert r.code == 403, r.body
        assert body(r)["message"] == (
            "this token of bob may read the team's queue, not decide (custom:qguard:review: a "
            f"server's token): approve or deny on {queue[0]['approve_url']}, signed in "
            "as yourself"
        ), r.body
    assert (await job_of(hub, tokens["bob"], job_id))["approvals_given"] == 0

    # -- bob approves (with his MFA code), carol on the service's page ---------------------------
    r = await approve(hub, tokens["bob"], job)
    assert r.code == 403 and body(r)["reason"] == "mfa_required", r.body
    r = await approve(hub, tokens["bob"], job, totp["bob"].now())
    assert r.code == 200, r.body
    assert body(r)["state"] == "pending_approval" and body(r)["approvals_given"] == 1
    page = await hub.fetch(hub.service_url + f"jobs/{job_id}", token=tokens["carol"])
    assert page.code == 200
    html = page.body.decode()
    assert job["digest"] in html and "name='otp'" in html
    assert "script" not in page.headers["Content-Security-Policy"]
    assert "<script" not in html
    form = f"action=approve&digest={job['digest']}&otp={totp['carol'].now()}"
    r = await hub.fetch(
        hub.service_url + f"jobs/{job_id}",
        token=tokens["carol"],
        method="POST",
        body=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.code == 200, r.body
    assert "approval recorded" in r.body.decode()
    done = await until(hub, tokens["alice"], job_id, {"completed", "failed"})
    assert done["state"] == "completed", done.get("reason")
    history = body(
        await hub.fetch(hub.service_url + f"api/jobs/{job_id}?history=1", token=tokens["bob"])
    )
    assert sorted(a["approver"] for a in history["approvals"]) == ["bob", "carol"]
    res = await alice_k.run("counts = job.result(timeout=60)\nprint(sum(counts.values()))")
    assert res["error"] is None, res
    assert res["stdout"].strip().splitlines()[-1] == "100"
    after = cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"]
    assert len({r: n for r, n in after.items() if r not in before}) == 1

    # -- budgets hold across users: physics has spent 2.00 of 3.50 (alice) -----------------------
    bob_k = await agent_kernel(hub, "bob", tokens["bob"], "bob.ipynb")
    res = await bob_k.run(
        BELL
        + "big = submit(bell, backend='fake_torino', shots=100)\n"
        + "small = submit(bell, backend='fake_brisbane', shots=100)\n"
        + "print(big.job_id, small.job_id)"
    )
    assert res["error"] is None, res
    big_id, small_id = res["stdout"].strip().splitlines()[-1].split()
    big = await until(hub, tokens["bob"], big_id, {"rejected", "pending_approval"}, 60)
    assert big["state"] == "rejected"
    assert big["reason"] == (
        "this job would bring today's spending of group physics to 4.00 USD, over its daily "
        "budget of 3.50"
    )
    small = await until(hub, tokens["bob"], small_id, {"rejected", "pending_approval"}, 60)
    assert small["state"] == "pending_approval", small.get("reason")  # 3.00 ≤ 3.50

    # -- an admin (carol has custom:qguard:admin) cancels anyone's job; dave cannot ------------
    res = await alice_k.run(
        "extra = submit(bell, backend='fake_brisbane', shots=20)\nprint(extra.job_id)"
    )
    extra_id = res["stdout"].strip().splitlines()[-1]
    assert (await until(hub, tokens["alice"], extra_id, {"pending_approval"}, 60))["state"]
    cancel = hub.service_url + f"api/jobs/{extra_id}/cancel"
    r = await hub.fetch(cancel, token=tokens["dave"], method="POST", body={})
    assert r.code == 404, r.body
    carol_admin = await hub.token("carol", REQUEST, APPROVE, "custom:qguard:admin", SERVICE)
    r = await hub.fetch(cancel, token=carol_admin, method="POST", body={})
    assert r.code == 200 and body(r)["state"] == "cancelled", r.body
    assert body(r)["reason"] == "cancelled by user:carol (admin)"

    # -- the service killed and restarted by the hub: nothing lost, nothing run twice -------------
    res = await alice_k.run(
        "waiting = submit(bell, backend='fake_brisbane', shots=50)\nprint(waiting.job_id)"
    )
    waiting_id = res["stdout"].strip().splitlines()[-1]
    assert (await until(hub, tokens["alice"], waiting_id, {"pending_approval"}, 60))["state"]
    cloud.fault(kind="slow", endpoint="status", count=1000, delay=30)
    r = await approve(hub, tokens["carol"], small)  # hardware: one approval, no MFA
    assert r.code == 200, r.body
    submitted = await until(hub, tokens["bob"], small_id, {"submitted"}, 60)
    for _ in range(100):
        if submitted.get("provider_job_id"):
            break
        await asyncio.sleep(0.1)
        submitted = await job_of(hub, tokens["bob"], small_id)
    assert submitted["provider_job_id"].startswith("fc-")
    [old_pid] = service_pids()
    os.kill(old_pid, signal.SIGKILL)
    cloud.admin("DELETE", "/v1/admin/faults")
    # JupyterHub polls its managed services (every 30 s) and starts a dead one again.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [p for p in service_pids() if p != old_pid]:
        await asyncio.sleep(0.5)
    assert [p for p in service_pids() if p != old_pid], hub.log_path.read_text()[-3000:]
    assert "Service qguard exited with status -9" in hub.log_path.read_text()
    await service_ready(hub, tokens["bob"])
    finished = await until(hub, tokens["bob"], small_id, {"completed", "failed"})
    assert finished["state"] == "completed", finished.get("reason")
    assert finished["provider_job_id"] == submitted["provider_job_id"]
    assert (await job_of(hub, tokens["alice"], waiting_id))["state"] == "pending_approval"
    after = cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"]
    new = {r: n for r, n in after.items() if r not in before}
    assert len(new) == 2 and set(new.values()) == {1}  # alice's and bob's: each made once
    res = await bob_k.run("print(sum(small.result(timeout=60).values()))")
    assert res["stdout"].strip().splitlines()[-1] == "100", res

    # -- a bound file edited in alice's workspace voids her request; bob's server cannot ---------
    r = await hub.fetch(
        hub.service_url + "api/changes",
        token=tokens["bob"],
        method="POST",
        body={"changes": [{"id": 1, "path": "premium.ipynb", "actor": "bob", "sha": "0" * 64}]},
    )
    assert r.code == 200 and body(r) == {"voided": []}, r.body
    assert (await job_of(hub, tokens["alice"], waiting_id))["state"] == "pending_approval"
    cell = {"cell_type": "code", "id": "c1", "metadata": {}, "source": "x = 1", "outputs": []}
    cell["execution_count"] = None
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [cell]}
    r = await hub.fetch(
        "user/alice/api/contents/premium.ipynb",
        token=tokens["alice"],
        method="PUT",
        body={"type": "notebook", "format": "json", "content": nb},
    )
    assert r.code == 200, r.body
    voided = await until(hub, tokens["alice"], waiting_id, {"voided"}, 60)
    assert voided["reason"].startswith("premium.ipynb changed after the request"), voided

    # -- the team's credential is nowhere in users' servers, kernels or logs ---------------------
    # As written and as a file keyring keeps it (base64): the check can see it where it is.
    forms = [secret.encode(), base64.b64encode(secret.encode())]
    assert forms[1] in keyring.read_bytes()  # the service's keyring
    pids = processes_under(hub.base)
    assert len(pids) >= 4  # two servers, two kernels (and their helpers)
    for pid in pids:
        for part in ("environ", "cmdline"):
            data = Path(f"/proc/{pid}/{part}").read_bytes()
            assert not any(f in data for f in forms), (pid, part)
    res = await alice_k.run(
        "import os\nprint(sorted(k for k in os.environ if 'JUPYTERHUB' in k or 'QGUARD_TEAM' in k))"
    )
    assert res["stdout"].strip() == "[]", res
    for user in ("alice", "bob"):
        for path in (hub.base / user).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(f in data for f in forms), path
    log = hub.log_path.read_bytes()
    assert not any(f in log for f in forms)
    alice_k.close()
    bob_k.close()
