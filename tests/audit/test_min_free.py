"""`audit_min_free_bytes` is measured on the audit directory's own filesystem, not the state
dir's (nor the workspace's): the audit dir and the state dir on different filesystems (a
real tmpfs each way round), under a real server and its agent kernel.

Mounting needs root (CI runs as root)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.helpers import BELL
from support.jupyter_proc import ServerProcess

from jupyter_qguard.audit.log import AuditLog, AuditUnavailable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")

MIB = 1 << 20
RESERVE = 64 * MIB  # more than the small disk has in all, far less than the big one has free


def free_on(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mnt)], check=True
    )
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_the_reserve_is_the_audit_dirs_own_disks(tmp_path, small_disk):
    assert free_on(tmp_path) > 4 * RESERVE > free_on(small_disk)
    audit = AuditLog(small_disk / "audit", signer=None, origin="t/x", min_free_bytes=RESERVE)
    assert audit.free_bytes() == free_on(small_disk)
    audit.append("note", text="an entry nothing waits on is written")
    with pytest.raises(AuditUnavailable) as refused:
        audit.append("job.create", critical=True, job="j")
    free = free_on(small_disk)
    assert str(refused.value) == (
        f"the audit log {small_disk / 'audit' / 'log.jsonl'} cannot be written: the disk is "
        f"full ({free} bytes free, it keeps {RESERVE} in reserve)"
    )
    # The same reserve on the big disk: taken, whatever the small one has.
    roomy = AuditLog(tmp_path / "audit", signer=None, origin="t/y", min_free_bytes=RESERVE)
    assert roomy.append("job.create", critical=True, job="j") == 0


SUBMIT = BELL + (
    "job = %qguard submit bell --backend aer_simulator --shots 10 --seed 1\n"
    "print(sum(job.result(timeout=60).values()))"
)


async def submit(server: ServerProcess) -> dict[str, Any]:
    kernel = await server.start_kernel()
    try:
        return await kernel.run(SUBMIT)
    finally:
        kernel.close()


@pytest.mark.parametrize("small", ["audit_dir", "state_dir"])
async def test_a_server_refuses_jobs_only_when_the_audit_dirs_disk_is_low(
    tmp_path, small_disk, small
):
    if small == "audit_dir":
        audit_dir = small_disk / "audit"
        server = ServerProcess(tmp_path, extra_args=[f"--QGuardApp.audit_dir={audit_dir}"])
    else:
        # The state dir (database, snapshots) on the small disk, the audit log on the big one.
        audit_dir = tmp_path / "audit"
        server = ServerProcess(tmp_path, extra_args=[f"--QGuardApp.audit_dir={audit_dir}"])
        server.state = small_disk / "state"
    server.extra_args.append(f"--QGuardApp.audit_min_free_bytes={RESERVE}")
    server.start()
    try:
        res = await submit(server)
    finally:
        server.stop()
    if small == "audit_dir":
        assert res["error"] is not None, res
        evalue = res["error"]["evalue"]
        assert "refuses new jobs until it can audit them" in evalue
        assert f"the audit log {audit_dir / 'log.jsonl'} cannot be written: the disk is full (" in (
            evalue
        )
        assert f"bytes free, it keeps {RESERVE} in reserve)" in evalue
    else:
        assert free_on(small_disk) < RESERVE
        assert res["error"] is None, res
        assert res["stdout"].strip().splitlines()[-1] == "10"
