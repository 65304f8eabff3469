"""A server restart (graceful or kill -9) while a job waits for approval loses nothing and
runs nothing twice."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

import pytest
from support.helpers import BELL
from support.jupyter_proc import ServerProcess, kernel_processes

HW = [
    "--QGuardApp.backends={'aer_hw': {'provider': 'aer', 'qubits': 28}}",
    "--QGuardApp.policy_data={'backends': {'aer_hw': {'tier': 'hardware', 'provider': 'aer'}}}",
]


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def _until(server: ServerProcess, job_id: str, state: str, timeout: float = 90) -> dict:
    for _ in range(int(timeout / 0.2)):
        job = await server.json(f"qguard/api/jobs/{job_id}")
        if job["state"] == state:
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} is {job['state']}, not {state}")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "kill-9"])
async def test_pending_job_survives_restart_and_runs_once(tmp_path, how):
    server = ServerProcess(tmp_path, extra_args=HW).start()
    try:
        kernel = await server.start_kernel()
        assert (await kernel.run(BELL))["error"] is None
        res = await kernel.run(
            "job = %qguard submit bell --backend aer_hw --shots 300 --seed 11\nprint(job.job_id)"
        )
        assert res["error"] is None, res
        job_id = res["stdout"].strip().splitlines()[-1]
        job = await _until(server, job_id, "pending_approval")
        kernel.close()
    finally:
        old_pid = server.proc.pid
        # the program workers (the preflight ran in them), and below each its pid namespace's
        # init and the worker itself
        workers = [
            p for p in children_of(old_pid) if "jupyter_qguard.sandbox.worker_launch" in cmdline(p)
        ]
        for p in workers:  # grows as it goes: every process below them too
            workers += children_of(p)
        server.stop(how)
    assert len(workers) >= 3  # at least one worker: its supervisor, init and itself
    # The kernel does not outlive the server that guarded it, even after kill -9.
    for _ in range(50):
        if not kernel_processes(kernel.id):
            break
        await asyncio.sleep(0.1)
    assert kernel_processes(kernel.id) == []
    # Nor do the simulator workers: no orphans holding hundreds of megabytes each.
    for _ in range(50):
        if not [p for p in workers if Path(f"/proc/{p}").exists()]:
            break
        await asyncio.sleep(0.1)
    assert [p for p in workers if Path(f"/proc/{p}").exists()] == []

    server = ServerProcess(tmp_path, extra_args=HW).start()
    try:
        # The killed server's kernel directory (sockets, connection file) is swept away.
        await asyncio.sleep(0.5)
        assert list(Path(tempfile.gettempdir()).glob(f"qg-{old_pid}-*")) == []
        again = await server.json(f"qguard/api/jobs/{job_id}")
        assert again["state"] == "pending_approval"
        assert again["digest"] == job["digest"]
        r = await server.fetch(
            f"qguard/api/jobs/{job_id}/approve", method="POST", body={"digest": job["digest"]}
        )
        assert r.code == 200
        done = await _until(server, job_id, "completed")
        assert sum(done["result"]["counts"].values()) == 300
        assert set(done["result"]["counts"]) == {"00", "11"}
    finally:
        server.stop()

    # A third start finds the job finished and does nothing with it.
    server.start()
    try:
        await asyncio.sleep(1.0)
        final = await server.json(f"qguard/api/jobs/{job_id}")
        steps = [e["to"] for e in final["events"]]
        assert steps == [
            "received",
            "pending_approval",
            "approved",
            "queued",
            "submitted",
            "completed",
        ]
        assert final["result"] == done["result"]
    finally:
        server.stop()
