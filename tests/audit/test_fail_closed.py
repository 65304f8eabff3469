"""No audit entry, no submission: the audit dir on its own file system (a real tmpfs), made
read-only or filled up under a running server. Approvals and new jobs are refused with the
reason, and nothing reaches the fake cloud.

Mounting needs root (CI runs as root); an unprivileged run cannot make these conditions."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.broker_flow import server_for, until
from support.fakecloud_proc import FakeCloud
from support.helpers import BELL

from jupyter_qguard.audit.log import AuditLog, AuditUnavailable
from jupyter_qguard.broker.jobs import State
from jupyter_qguard.broker.store import Store, sqlite_url

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="mounting a small or read-only file system needs root"
)


@pytest.fixture
def audit_fs(tmp_path: Path) -> Any:
    mnt = tmp_path / "audit-fs"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mnt)], check=True
    )
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fc = FakeCloud(tmp_path_factory.mktemp("cloud")).start()
    yield fc
    fc.stop()


def make_read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


def fill_up(mnt: Path) -> None:
    """Write until the file system says ENOSPC, as a runaway log or a big file would."""
    with open(mnt / "filler", "wb") as f:
        chunk = b"\0" * (1 << 20)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC


async def submit(kernel: Any) -> dict[str, Any]:
    return await kernel.run(
        "job = %qguard submit bell --backend fake_brisbane --shots 100 --seed 1\nprint(job.job_id)"
    )


@pytest.mark.parametrize(
    ("break_it", "why"),
    [(make_read_only, "the file system is read-only"), (fill_up, "the disk is full")],
)
async def test_an_unwritable_audit_log_stops_every_hardware_submission(
    tmp_path, cloud, audit_fs, break_it, why
):
    server = server_for(tmp_path, cloud, f"--QGuardApp.audit_dir={audit_fs}").start()
    try:
        kernel = await server.start_kernel()
        assert (await kernel.run(BELL))["error"] is None
        res = await submit(kernel)
        assert res["error"] is None, res
        job_id = res["stdout"].strip().splitlines()[-1]
        job = await until(server, job_id, {"pending_approval"})

        break_it(audit_fs)

        # The person approves: refused, with the reason; the job still waits.
        r = await server.fetch(
            f"qguard/api/jobs/{job_id}/approve",
            method="POST",
            body={"digest": job["digest"]},
            raise_error=False,
        )
        assert r.code == 503
        assert why in r.body.decode()
        assert (await server.json(f"qguard/api/jobs/{job_id}"))["state"] == "pending_approval"

        # The agent asks for another run: refused before anything is stored.
        again = await submit(kernel)
        assert again["error"] is not None
        assert "refuses new jobs until it can audit them" in again["error"]["evalue"]
        assert why in again["error"]["evalue"]
        jobs = (await server.json("qguard/api/jobs"))["jobs"]
        assert [j["id"] for j in jobs] == [job_id]
        kernel.close()
    finally:
        server.stop()
    assert cloud.admin("GET", "/v1/admin/state").body["jobs_by_ref"] == {}


def test_the_submission_entry_is_fsynced_or_the_move_is_undone(tmp_path, audit_fs):
    """The queued → submitted move, the last step before a provider is called: on a full disk
    it raises and the job stays queued (the store's transaction is rolled back)."""
    store = Store(sqlite_url(str(tmp_path / "q.db")))
    store.audit = AuditLog(audit_fs, signer=None, origin="t/x", min_free_bytes=1 << 20)
    job = store.create_job(
        actor="kernel:k",
        requester={"user": "u"},
        requester_user="u",
        backend="fake_brisbane",
        shots=10,
        request={"program": {}},
        program_sha256="0" * 64,
        files={},
        policy_version="p",
        digest="d",
        decision={},
    )
    for target in (State.PENDING_APPROVAL, State.APPROVED, State.QUEUED):
        store.transition(job["id"], target, actor="t")
    fill_up(audit_fs)
    with pytest.raises(AuditUnavailable, match="the disk is full"):
        store.transition(job["id"], State.SUBMITTED, actor="broker")
    assert store.get(job["id"])["state"] == "queued"
    # Stopping needs no entry: the job can still fail, with the reason kept in the store.
    store.transition(job["id"], State.FAILED, actor="broker", reason="no audit")
    assert store.get(job["id"])["state"] == "failed"
    store.close()
