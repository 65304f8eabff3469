"""An agent kernel filling the disk: many files (each under RLIMIT_FSIZE), written from a cell
and from a thread left writing after the cell returned; churn of unique data through the
snapshot store; the disk the audit log needs. Real server, real agent kernels through the
real provisioner, as root and as the unprivileged `qgtest`.

- The write budget (64 MiB here) stops the kernel with the exact reason, in an alert and in
  the audit log; the files written before the stop stay; the server answers.
- Writing and deleting 8 MiB files of unique data well past a 64 MiB snapshot cap: the store
  stays under the cap (plus the one object a batch brings before the prune that follows it),
  agent snapshots go oldest first, the person's file and a file a pending job binds stay.
- The workspace on the audit log's own small disk (a tmpfs): the person is told as the agent
  eats the room, and the kernel is stopped before the audit log's reserve is reached, so a
  new job is still recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support.helpers import BELL, wait_for
from support.jupyter_proc import KernelWS, ServerProcess
from world import MODES, UNPRIVILEGED, _require_mode

from jupyter_qguard.watch.snapshots import is_sha256

MIB = 1 << 20
BUDGET = 64 * MIB
BUDGET_SETTING = "QGuardApp.kernel_write_budget_bytes"
HW = [
    "--QGuardApp.backends={'aer_simulator': {'provider': 'aer', 'qubits': 28}, "
    "'aer_hw': {'provider': 'aer', 'qubits': 28}}",
    "--QGuardApp.policy_data={'backends': {'aer_hw': {'tier': 'hardware', 'provider': 'aer'}}}",
]

FOREGROUND = r"""
import os, time
os.makedirs("fill", exist_ok=True)
for i in range(20):
    with open(f"fill/a{i:02d}.bin", "wb") as f:
        f.write(b"\0" * (16 << 20))
    time.sleep(0.5)
"""
# The cell returns at once; the thread starts writing two seconds later, while the kernel is
# idle (no execution state or activity names it then: only its processes' write counters).
BACKGROUND = r"""
import os, threading, time
def fill():
    time.sleep(2)
    for i in range(20):
        with open(f"fill/b{i:02d}.bin", "wb") as f:
            f.write(b"\1" * (16 << 20))
        time.sleep(0.5)
threading.Thread(target=fill, daemon=True).start()
"""


def budget_reason(kernel_id: str) -> str:
    return (
        f"agent kernel {kernel_id} was stopped: its writes added more than 64 MiB to the "
        f"workspace, its write budget ({BUDGET_SETTING}); the files it wrote are still there"
    )


def disk_reason(kernel_id: str, reserve: str) -> str:
    return (
        f"agent kernel {kernel_id} was stopped: its writes were filling the disk that holds "
        f"the audit log, which has less than twice the {reserve} it keeps in reserve "
        "(QGuardApp.audit_min_free_bytes) free; the files it wrote are still there"
    )


# -- a server of one's own for each test, in each mode ---------------------------------------


def make_base(mode: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix="qg-disk-"))
    (base / "workspace").mkdir()
    if mode == "user":
        chown_tree(base)
    return base


def chown_tree(path: Path) -> None:
    pw = pwd.getpwnam(UNPRIVILEGED)
    for root, dirs, files in os.walk(path):
        for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
            os.lchown(n, pw.pw_uid, pw.pw_gid)


def start_server(base: Path, mode: str, *args: str, root: Path | None = None) -> ServerProcess:
    server = ServerProcess(
        base, user=UNPRIVILEGED if mode == "user" else None, extra_args=list(args)
    )
    if root is not None:
        server.root = root
    # What start() makes, made first, so that the unprivileged server owns it.
    (base / "home").mkdir(exist_ok=True)
    server.write_user_config()
    if mode == "user":
        chown_tree(base)
    return server.start()


class Events:
    """The server's event websocket, read in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        while (message := await self.ws.read_message()) is not None:
            self.seen.append(json.loads(message))

    def alerts(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("type") == "alert" and e.get("kind") == kind]

    def close(self) -> None:
        self.task.cancel()
        self.ws.close()


async def kernel_ids(server: ServerProcess) -> set[str]:
    return {k["id"] for k in await server.json("api/kernels")}


async def until_stopped(server: ServerProcess, kernel_id: str, timeout: float = 90) -> None:
    async def gone() -> bool:
        return kernel_id not in await kernel_ids(server)

    await wait_for(gone, timeout=timeout, interval=0.2)


async def run_until_stopped(server: ServerProcess, kernel: KernelWS, code: str) -> None:
    """Run `code` and wait until the server has stopped the kernel (the cell never ends)."""
    cell = asyncio.ensure_future(kernel.run(code, timeout=120))
    try:
        await until_stopped(server, kernel.id)
    finally:
        cell.cancel()
        await asyncio.gather(cell, return_exceptions=True)
        kernel.close()


async def audit_entries(server: ServerProcess, kind: str) -> list[dict[str, Any]]:
    entries = (await server.json("qguard/api/audit?limit=1000"))["entries"]
    return [e for e in entries if e["kind"] == kind]


def sizes(folder: Path, prefix: str) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(folder.glob(f"{prefix}*.bin"))}


# -- the write budget -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_multi_file_disk_fill_is_stopped_at_the_budget(mode):
    _require_mode(mode)
    base = make_base(mode)
    server = start_server(base, mode, f"--QGuardApp.kernel_write_budget_bytes={BUDGET}")

    async def scenario() -> dict[str, Any]:
        events = Events(await server.websocket("qguard/api/events"))
        out: dict[str, Any] = {}
        for name, code in (("a", FOREGROUND), ("b", BACKGROUND)):
            kernel = await server.start_kernel()
            if name == "b":
                res = await kernel.run(code)
                assert res["error"] is None, res
                await until_stopped(server, kernel.id)
                kernel.close()
            else:
                await run_until_stopped(server, kernel, code)
            await asyncio.sleep(1.5)  # a write begun before the kill would show by now
            out[name] = {
                "kernel": kernel.id,
                "files": sizes(server.root / "fill", name),
                "alerts": [a for a in events.alerts("write_budget") if a["kernel"] == kernel.id],
                "stops": [
                    e
                    for e in await audit_entries(server, "kernel.stop")
                    if e["kernel"] == kernel.id
                ],
            }
        out["status"] = (await server.fetch("api/status")).code
        # The server still runs agent kernels: a new one answers.
        again = await server.start_kernel()
        out["again"] = (await again.run("print(6 * 7)"))["stdout"].strip()
        again.close()
        events.close()
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        server.stop()
        log = server.log_path.read_text(errors="replace")
        shutil.rmtree(base, ignore_errors=True)

    for name in ("a", "b"):
        got = out[name]
        reason = budget_reason(got["kernel"])
        # Stopped past 64 MiB: the fifth file of 16 MiB, seen within a second or so of it.
        files = got["files"]
        first_five = {f"{name}{i:02d}.bin": 16 * MIB for i in range(5)}
        assert {k: v for k, v in files.items() if k in first_five} == first_five, (mode, files)
        assert len(files) <= 8, (mode, name, sorted(files))
        assert [a["message"] for a in got["alerts"]] == [reason], (mode, got["alerts"])
        alert = got["alerts"][0]
        assert alert["budget_bytes"] == BUDGET
        assert alert["added_bytes"] > BUDGET and alert["added_bytes"] % (16 * MIB) == 0
        assert [(e["reason"], e["cause"]) for e in got["stops"]] == [(reason, "write_budget")]
        assert reason in log
    assert out["status"] == 200
    assert out["again"] == "42"


# -- agent churn against the snapshot cap ----------------------------------------------------

SNAPSHOT_CAP = 64 * MIB
CHURN_FILES = 14  # 112 MiB of unique data through the store, next to 16 MiB that must stay

BIND = (
    BELL
    + r"""
import hashlib, os
from jupyter_qguard.kernel.jobs import submit
data = os.urandom(8 << 20)
open("data.bin", "wb").write(data)
import time; time.sleep(1.5)  # seen by the watcher before the job binds it
job = submit(bell, backend="aer_hw", shots=10, files={"data.bin": None})
print(hashlib.sha256(data).hexdigest(), job.job_id)
"""
)
CHURN = rf"""
import hashlib, os, time
shas = []
for i in range({CHURN_FILES}):
    data = os.urandom(8 << 20)
    shas.append(hashlib.sha256(data).hexdigest())
    with open(f"churn{{i:02d}}.bin", "wb") as f:
        f.write(data)
    time.sleep(0.8)
    os.remove(f"churn{{i:02d}}.bin")
    time.sleep(0.8)
print(" ".join(shas))
"""


def store_objects(state: Path) -> dict[str, int]:
    out = {}
    for shard in (state / "objects").iterdir():
        if len(shard.name) == 2 and shard.is_dir():
            for obj in shard.iterdir():
                if is_sha256(obj.name):
                    out[obj.name] = obj.stat().st_size
    return out


@pytest.mark.parametrize("mode", MODES)
def test_agent_churn_cannot_push_the_snapshot_store_past_its_cap(mode):
    _require_mode(mode)
    base = make_base(mode)
    person = os.urandom(8 * MIB)
    (base / "workspace" / "person.bin").write_bytes(person)
    if mode == "user":
        chown_tree(base)
    server = start_server(base, mode, f"--QGuardApp.snapshot_max_total_bytes={SNAPSHOT_CAP}", *HW)
    peaks: list[int] = []

    async def scenario() -> dict[str, Any]:
        kernel = await server.start_kernel()
        res = await kernel.run(BIND)
        assert res["error"] is None, res
        data_sha, job_id = res["stdout"].split()

        async def pending() -> bool:
            job = await server.json(f"qguard/api/jobs/{job_id}")
            assert job["state"] in ("received", "pending_approval"), job
            return job["state"] == "pending_approval"

        await wait_for(pending, timeout=120, interval=0.2)

        async def sample() -> None:
            while True:
                peaks.append(sum(store_objects(server.state).values()))
                await asyncio.sleep(0.2)

        sampler = asyncio.ensure_future(sample())
        res = await kernel.run(CHURN, timeout=180)
        assert res["error"] is None, res
        churn = res["stdout"].split()
        await asyncio.sleep(2)  # the last deletion recorded, the last prune done
        sampler.cancel()
        kernel.close()
        return {
            "data": data_sha,
            "churn": churn,
            "job": (await server.json(f"qguard/api/jobs/{job_id}"))["state"],
            "objects": store_objects(server.state),
        }

    try:
        out = asyncio.run(scenario())
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

    objects = out["objects"]
    assert sum(objects.values()) <= SNAPSHOT_CAP, (mode, sum(objects.values()))
    # Between a batch's new object and the prune it starts: never more than that object over.
    assert max(peaks) <= SNAPSHOT_CAP + 8 * MIB, (mode, max(peaks))
    # The person's file, and the file the pending job binds (the oldest agent snapshot of all).
    assert hashlib.sha256(person).hexdigest() in objects
    assert out["data"] in objects
    assert out["job"] == "pending_approval"
    # Agent churn went oldest first: what is left of it is its newest part, and some is left.
    kept = [sha in objects for sha in out["churn"]]
    assert kept[0] is False and kept[-1] is True, (mode, kept)
    assert kept == sorted(kept), (mode, kept)


# -- the disk the audit log needs -------------------------------------------------------------

DISK = 160 * MIB
RESERVE = 32 * MIB
FILL = r"""
import os, time
for i in range(14):
    with open(f"d{i:02d}.bin", "wb") as f:
        f.write(b"\0" * (16 << 20))
    time.sleep(1.0)
"""


def free_on(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.parametrize("mode", MODES)
def test_an_agent_filling_the_audit_logs_disk_is_told_and_stopped_before_the_reserve(mode):
    _require_mode(mode)
    base = make_base(mode)
    disk = base / "disk"
    disk.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0755", "tmpfs", str(disk)], check=True
    )
    try:
        (disk / "workspace").mkdir()
        if mode == "user":
            chown_tree(disk)
        server = start_server(
            base,
            mode,
            f"--QGuardApp.audit_dir={disk / 'audit'}",
            f"--QGuardApp.audit_min_free_bytes={RESERVE}",
            "--QGuardApp.kernel_write_budget_bytes=1073741824",
            root=disk / "workspace",
        )

        async def scenario() -> dict[str, Any]:
            events = Events(await server.websocket("qguard/api/events"))
            kernel = await server.start_kernel()
            await run_until_stopped(server, kernel, FILL)
            await asyncio.sleep(1.5)
            free = free_on(disk)
            # The audit log kept its reserve: a new job is recorded (its entry is one that
            # something irreversible waits on: refused below the reserve).
            again = await server.start_kernel()
            res = await again.run(
                BELL
                + "job = %qguard submit bell --backend aer_simulator --shots 10 --seed 1\n"
                + "print(job.job_id)"
            )
            again.close()
            out = {
                "kernel": kernel.id,
                "alerts": events.alerts("disk"),
                "stops": await audit_entries(server, "kernel.stop"),
                "free": free,
                "files": sizes(disk / "workspace", "d"),
                "job": res,
            }
            events.close()
            return out

        try:
            out = asyncio.run(scenario())
        finally:
            server.stop()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
        shutil.rmtree(base, ignore_errors=True)

    kernel_id = out["kernel"]
    levels = [(a["level"], a["kernels"]) for a in out["alerts"]]
    assert levels == [("low", [kernel_id]), ("stop", [kernel_id])], (mode, out["alerts"])
    low, stop = out["alerts"]
    where = f"the disk that holds the audit log ({disk / 'audit'}) and the workspace"
    assert (
        low["message"].startswith(where)
        and "32 MiB of it the audit log's reserve" in (low["message"])
    )
    assert f"agent kernel {kernel_id} was stopped" in stop["message"]
    assert stop["free_bytes"] < 2 * RESERVE <= low["free_bytes"]
    reason = disk_reason(kernel_id, "32 MiB")
    assert [(e["reason"], e["cause"]) for e in out["stops"]] == [(reason, "disk")], out["stops"]
    # Stopped before the reserve, with its files still there.
    assert out["free"] >= RESERVE, (mode, out["free"])
    assert len(out["files"]) >= 5 and all(v == 16 * MIB for v in list(out["files"].values())[:5])
    assert out["job"]["error"] is None, out["job"]
    assert len(out["job"]["stdout"].split()) == 1, out["job"]
