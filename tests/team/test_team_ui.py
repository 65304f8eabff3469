"""Team mode in a real browser (Debian's chromium): bob signs in to the hub, his lab panel
shows alice's premium request in the team queue with a link to the broker service's page, and
he approves there, through the hub's OAuth, with his MFA code (ui-tests/team/team.spec.ts)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from support.browser import CHROMIUM, UI, ensure_chromium, ensure_runner
from support.team import (
    APPROVE,
    BELL,
    REQUEST,
    SERVICE,
    agent_kernel,
    enroll,
    job_of,
    service_ready,
    until,
)

ARTIFACTS = UI / "artifacts-team"


@pytest.mark.timeout(900)
async def test_an_approver_decides_on_the_service_page_from_the_panel(team):
    hub, _cloud, keyring = team
    ensure_chromium()
    ensure_runner()
    bob = enroll(keyring, "bob")
    alice = await hub.token("alice", REQUEST, SERVICE, "access:servers!user=alice")
    reader = await hub.token("carol", REQUEST, APPROVE, SERVICE)
    await service_ready(hub, reader)
    await hub.spawn("alice")
    await hub.spawn("bob")
    kernel = await agent_kernel(hub, "alice", alice, "premium.ipynb")
    res = await kernel.run(
        BELL + "job = submit(bell, backend='fake_torino', shots=100, seed=7)\nprint(job.job_id)"
    )
    assert res["error"] is None, res
    job_id = res["stdout"].strip().splitlines()[-1]
    assert (await until(hub, reader, job_id, {"pending_approval"}, 60))["state"]

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    log = ARTIFACTS / "playwright.log"
    with log.open("w") as out:
        code = subprocess.run(
            [
                str(UI / "node_modules" / ".bin" / "playwright"),
                "test",
                "--config",
                "playwright.team.config.ts",
            ],
            cwd=UI,
            env={
                **os.environ,
                "QGUARD_HUB_URL": hub.url,
                "QGUARD_JOB_ID": job_id,
                "QGUARD_TOTP_SECRET": bob.secret,
                "QGUARD_ARTIFACTS": str(ARTIFACTS),
                "QGUARD_CHROMIUM": CHROMIUM,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        ).returncode
    kernel.close()
    report = log.read_text()
    sys.stdout.write(report[-4000:])
    assert code == 0, report[-5000:] + "\n--- hub log ---\n" + hub.log_path.read_text()[-6000:]
    assert "1 passed" in report, report[-3000:]
    # What the browser did, as the broker recorded it: bob's approval, one of the two needed.
    job = await job_of(hub, reader, job_id)
    assert job["state"] == "pending_approval" and job["approvals_given"] == 1
    history = await job_of(hub, reader, f"{job_id}?history=1")
    assert [a["approver"] for a in history["approvals"]] == ["bob"]
    for shot in ("panel-team.png", "service-job.png"):
        assert (ARTIFACTS / shot).stat().st_size > 10_000
