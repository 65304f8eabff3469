"""No bound across processes: 100 processes each taking memory, 513 tasks, a kernel raising its
own limits. Each agent kernel gets a cgroup of its own (sandbox/cgroup.py), so its processes
together are bounded and the server stays responsive; where the machine gives none (a plain
user with no delegated subtree), the layer is reported off with why, and rlimits apply.

A real server, real agent kernels through the real provisioner, as root and as `qgtest`."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.jupyter_proc import KernelWS, ServerProcess, kernel_processes
from world import UNPRIVILEGED, World, _require_mode, kernel_host_pid

MiB = 1 << 20
# Low, so the bomb is fast and safe on a shared machine (it has 24 GB of RAM, no swap).
CGROUP = {"memory_max": 512 * MiB, "pids_max": 512, "cpus": 1}
# rlimits high enough that the cgroup, not RLIMIT_NPROC, refuses the 513th task (root: the
# kernel's uid is its own). The user mode's address-space cap shows the per-process fallback.
RLIMITS = {"processes": 4096, "memory": 0, "file_size": 0, "open_files": 0, "cpu_seconds": 0}
USER_RLIMITS = {**RLIMITS, "processes": 128, "memory": 1 << 30}

# 100 processes, each taking 32 MiB it touches (bytes * n writes every page), then holding
# it: 3.2 GB asked for, against the kernel's 512 MiB.
MEMORY_BOMB = r"""
import os, time
for i in range(100):
    if os.fork() == 0:
        try:
            held = [b"x" * (4 << 20) for _ in range(8)]
            time.sleep(120)
        finally:
            os._exit(0)
time.sleep(120)
"""

# In a small child interpreter (forks of the whole ipykernel would cost more memory): fork
# until refused; the errno, how many children, and the cgroup's task count at that moment.
FORK_UNTIL_REFUSED = r"""
import errno, json, os, sys
pids = sys.argv[1]
r, w = os.pipe()
n, err = 0, None
while n < 5000:
    try:
        pid = os.fork()
    except OSError as e:
        err = errno.errorcode[e.errno]
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    n += 1
current = int(open(pids + "/pids.current").read())
events = open(pids + "/pids.events").read().split()
os.close(w)
for _ in range(n):
    os.wait()
print(json.dumps([err, n, current, events]))
"""

# What the kernel tries against its own cgroup: raise its limits, leave, make a child cgroup.
TRY_WRITE = r"""
import errno, json, os
def attempt(fn):
    try:
        fn()
        return "done"
    except OSError as e:
        return errno.errorcode[e.errno]
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
"""


def _v1_dir(controller: str) -> str:
    """This process's cgroup v1 directory for `controller` (the server inherits it)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(","):
            return f"/sys/fs/cgroup/{controller}{path}".rstrip("/")
    raise LookupError(controller)


def _oom_kills(version: int, path: str) -> int:
    name = "memory.events" if version == 2 else "memory.oom_control"
    for line in Path(path, name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


class StatusPoller(threading.Thread):
    """GET /api/status every 50 ms, in a thread of its own (the test's event loop may be
    busy): the slowest answer, and the cgroup's OOM kill count as it went."""

    def __init__(self, server: ServerProcess, version: int, cgroup_path: str) -> None:
        super().__init__(daemon=True)
        self.server, self.version, self.path = server, version, cgroup_path
        self.done = threading.Event()
        self.latencies: list[float] = []
        self.statuses: set[int | str] = set()
        self.oom_seen = 0

    def run(self) -> None:
        while not self.done.is_set():
            start = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=5)
                conn.request(
                    "GET", "/api/status", headers={"Authorization": f"token {self.server.token}"}
                )
                response = conn.getresponse()
                response.read()
                conn.close()
                self.statuses.add(response.status)
            except OSError as exc:
                self.statuses.add(type(exc).__name__)
            self.latencies.append(time.monotonic() - start)
            try:
                self.oom_seen = max(self.oom_seen, _oom_kills(self.version, self.path))
            except OSError:
                pass  # removed once the kernel ended
            time.sleep(0.05)


async def _report(server: ServerProcess, kernel_id: str) -> dict[str, Any]:
    sandbox = await server.json("qguard/api/sandbox")
    return next(k for k in sandbox["kernels"] if k["kernel_id"] == kernel_id)["sandbox"]


async def _until_ended(server: ServerProcess, kernel: KernelWS, before: str) -> dict[str, Any]:
    """The kernel's report once its launch in cgroup `before` has died and been replaced by a
    running one (which says why the last one ended)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        report = await _report(server, kernel.id)
        path = report.get("applied", {}).get("cgroup", {}).get("path")
        if report.get("last_end") and report.get("ok") is not None and path != before:
            return report
        await asyncio.sleep(0.2)
    raise TimeoutError(f"kernel {kernel.id} did not end and restart: {report}")


async def _in_kernel(kernel: KernelWS, code: str) -> Any:
    res = await kernel.run("import json\n" + code, timeout=180)
    assert res["error"] is None, res
    return json.loads(res["stdout"].strip().splitlines()[-1])


def _server(world: World, mode: str, rlimits: dict[str, int]) -> ServerProcess:
    return ServerProcess(
        world.base,
        user=UNPRIVILEGED if mode == "user" else None,
        extra_args=[
            f"--QGuardApp.kernel_cgroup_limits={json.dumps(CGROUP)}",
            f"--QGuardApp.kernel_rlimits={json.dumps(rlimits)}",
        ],
    ).start()


# -- root: the kernel's own cgroup --------------------------------------------------------


@pytest.fixture(scope="module")
def root_run() -> dict[str, Any]:
    _require_mode("root")
    world = World("root")
    out: dict[str, Any] = {}

    async def run() -> None:
        server = world.server
        assert server is not None
        kernel = await server.start_kernel()
        first = await _report(server, kernel.id)
        out["first"] = first
        cg = first["applied"]["cgroup"]
        assert cg["active"] is True, cg  # what follows needs it
        version, path = cg["version"], cg["path"]
        pids_dir = next(d for d in cg["dirs"] if "/pids/" in d) if version == 1 else path
        limit_file = "memory.max" if version == 2 else "memory.limit_in_bytes"
        out["dirs_while_running"] = [os.path.isdir(d) for d in cg["dirs"]]

        # The kernel cannot raise its limits, leave its cgroup or make one inside it; it
        # sees its cgroup as "/".
        out["writes"] = await _in_kernel(
            kernel,
            TRY_WRITE
            + f"cg, pids = {path!r}, {pids_dir!r}\n"
            + "print(json.dumps({\n"
            + f"  'memory': attempt(lambda: write(cg + '/{limit_file}', '-1')),\n"
            + "  'pids': attempt(lambda: write(pids + '/pids.max', 'max')),\n"
            + "  'leave': attempt(lambda: write(os.path.dirname(os.path.dirname(cg))"
            + " + '/cgroup.procs', str(os.getpid()))),\n"
            + "  'mkdir': attempt(lambda: os.mkdir(cg + '/escape')),\n"
            + "  'own': sorted({l.split(':', 2)[2].strip() for l in open('/proc/self/cgroup')}),\n"
            + "}))",
        )
        out["limit_after"] = Path(path, limit_file).read_text().strip()

        # pids.max: the 513th task is refused.
        out["fork"] = await _in_kernel(
            kernel,
            "import subprocess, sys\n"
            f"r = subprocess.run([sys.executable, '-c', {FORK_UNTIL_REFUSED!r}, {pids_dir!r}],"
            " capture_output=True, text=True, timeout=120)\n"
            "print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else"
            " json.dumps(['exit', r.returncode, r.stderr[-2000:]]))",
        )

        # The memory bomb, with /api/status polled throughout.
        poller = StatusPoller(server, version, path)
        poller.start()
        msg = kernel._msg(
            "execute_request",
            {"code": MEMORY_BOMB, "silent": False, "store_history": True, "user_expressions": {}},
        )
        await kernel.ws.write_message(json.dumps(msg))
        try:
            after_bomb = await _until_ended(server, kernel, path)
            await kernel.wait_ready()
            out["answers_after_bomb"] = await _in_kernel(kernel, "print(json.dumps(1 + 1))")
        finally:
            poller.done.set()
            poller.join(10)
        out["bomb"] = {
            "ended": after_bomb["last_end"],
            "max_latency": max(poller.latencies),
            "polls": len(poller.latencies),
            "statuses": sorted(map(str, poller.statuses)),
            "oom_seen": poller.oom_seen,
            "old_dirs_left": [d for d in cg["dirs"] if os.path.exists(d)],
            "new": after_bomb["applied"]["cgroup"],
        }
        out["whoami"] = await _in_kernel(
            kernel, "w = %qguard whoami\nprint(json.dumps(w['sandbox'].get('last_end')))"
        )

        # kill -9 of the kernel process: the launch ends, its cgroup goes, the reason is said.
        second = after_bomb["applied"]["cgroup"]
        os.kill(kernel_host_pid(kernel.id), signal.SIGKILL)
        after_kill = await _until_ended(server, kernel, second["path"])
        await kernel.wait_ready()
        out["kill9"] = {
            "ended": after_kill["last_end"],
            "old_dirs_left": [d for d in second["dirs"] if os.path.exists(d)],
            "new": after_kill["applied"]["cgroup"],
        }

        # kill -9 of the server: its kernels die with it (they watch it), their cgroups stay
        # behind; the next server to start removes them.
        third = after_kill["applied"]["cgroup"]
        kernel.close()
        server.proc.kill()
        server.proc.wait()
        deadline = time.monotonic() + 20
        while kernel_processes(kernel.id) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        out["left_by_killed_server"] = [d for d in third["dirs"] if os.path.exists(d)]
        world.server = _server(world, "root", RLIMITS)
        deadline = time.monotonic() + 20
        while any(os.path.exists(d) for d in third["dirs"]) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        out["left_after_next_start"] = [
            p for d in third["dirs"] for p in (d, os.path.dirname(d)) if os.path.exists(p)
        ]
        # A server that stops removes its own, down to its node.
        last = await world.server.start_kernel()
        out["last"] = (await _report(world.server, last.id))["applied"]["cgroup"]
        last.close()

    try:
        world.build()
        world.server = _server(world, "root", RLIMITS)
        asyncio.run(run())
    finally:
        world.stop()
    out["after_stop"] = [
        p for d in out["last"]["dirs"] for p in (d, os.path.dirname(d)) if os.path.exists(p)
    ]
    return out


def test_root_kernel_has_its_own_cgroup_with_the_limits(root_run):
    cg = root_run["first"]["applied"]["cgroup"]
    assert cg["memory_max"] == str(512 * MiB) and cg["pids_max"] == "512"
    assert cg["cpu_max"] == "100000 100000"
    assert cg["cpu_weight"] == 100  # the default weight, under the test's cap of one core
    assert cg["oom_group"] in (True, "by the server, at the first OOM kill (cgroup v1)")
    assert all(root_run["dirs_while_running"]) and len(cg["dirs"]) == (
        3 if cg["version"] == 1 else 1
    )
    # RLIMIT_NPROC above pids.max (plus what the uid already runs), so the cgroup refuses first
    assert root_run["first"]["applied"]["rlimits"]["processes"] >= 4096


def test_kernel_cannot_raise_its_limits_or_leave(root_run):
    assert root_run["writes"] == {
        "memory": "EACCES",
        "pids": "EACCES",
        "leave": "EACCES",
        "mkdir": "EACCES",
        "own": ["/"],  # its cgroup namespace: every hierarchy's "/" is its own cgroup
    }
    assert root_run["limit_after"] == str(512 * MiB)


def test_the_513th_task_is_refused(root_run):
    err, children, current, events = root_run["fork"]
    assert err == "EAGAIN", root_run["fork"]
    assert current == 512, root_run["fork"]
    assert events[0] == "max" and int(events[1]) >= 1, events
    assert 400 < children < 512  # the rest are the kernel's own tasks (threads included)


def test_memory_bomb_ends_the_whole_kernel_and_the_server_answers(root_run):
    bomb = root_run["bomb"]
    ended = bomb["ended"]
    assert ended["oom_kills"] > 0 and bomb["oom_seen"] > 0, bomb
    assert ended["reason"] == (
        "out of memory: the kernel's processes together reached its memory limit (512 MiB), "
        "and the whole kernel was ended (cgroup OOM kill)"
    )
    assert bomb["statuses"] == ["200"] and bomb["polls"] > 10, bomb
    assert bomb["max_latency"] < 1.0, bomb
    # the launch's cgroup is gone; the restarted kernel has a new one, and answers
    assert bomb["old_dirs_left"] == []
    assert (
        bomb["new"]["active"] is True
        and bomb["new"]["path"] != root_run["first"]["applied"]["cgroup"]["path"]
    )
    assert root_run["answers_after_bomb"] == 2
    assert root_run["whoami"]["reason"] == ended["reason"]


def test_kill_9_of_the_kernel_removes_its_cgroup(root_run):
    kill9 = root_run["kill9"]
    assert kill9["ended"]["reason"] == "the kernel died on its own (signal SIGKILL)"
    assert kill9["ended"]["oom_kills"] == 0
    assert kill9["old_dirs_left"] == []
    assert kill9["new"]["active"] is True


def test_cgroups_of_a_killed_server_are_removed_at_the_next_start(root_run):
    assert root_run["left_by_killed_server"], "kill -9 of the server left nothing to clean"
    assert root_run["left_after_next_start"] == []
    assert root_run["last"]["active"] is True
    assert root_run["after_stop"] == []  # a server that stops removes its own


# -- a plain user where the machine delegates no cgroup ---------------------------------------


def _machine_gives_qgtest_no_cgroup() -> str:
    """The reason this machine gives no cgroup to a plain user, from its own facts (checked
    here, so the test says so if it ever runs on a machine that does)."""
    mounts = [line.split(" - ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    v2 = [left.split()[4] for left, right in mounts if right.split()[0] == "cgroup2"]
    assert v2, "no cgroup v2 mount: this test knows hybrid machines (cgroup v1 + v2)"
    controllers = Path(v2[0], "cgroup.controllers").read_text().split()
    assert not {"memory", "pids", "cpu"} & set(controllers), (
        f"cgroup v2 has controllers {controllers} here: a plain user may get a cgroup"
    )
    dirs = [_v1_dir(c) for c in ("memory", "pids", "cpu")]
    for d in dirs:
        st = os.stat(d)
        assert st.st_uid == 0 and not st.st_mode & 0o022, f"{d} is not root's alone"
    uid = pwd.getpwnam(UNPRIVILEGED).pw_uid
    return (
        f"cgroup v2 at {v2[0]} has no memory, pids, cpu controller (bound to cgroup v1); "
        f"cgroup v1 ({', '.join(dirs)}) is not writable by uid {uid}; "
        "rlimits remain (each process alone)"
    )


@pytest.fixture(scope="module")
def user_run() -> dict[str, Any]:
    _require_mode("user")
    world = World("user")
    out: dict[str, Any] = {"expected_why": _machine_gives_qgtest_no_cgroup()}

    async def run() -> None:
        server = world.server
        assert server is not None
        kernel = await server.start_kernel()
        out["report"] = await _report(server, kernel.id)
        memory = _v1_dir("memory")
        out["kernel"] = await _in_kernel(
            kernel,
            TRY_WRITE
            + "import resource\n"
            + "def big():\n    bytearray(2 << 30)\n"
            + "def bomb():\n    try:\n        big()\n        return 'allocated'\n"
            + "    except MemoryError:\n        return 'MemoryError'\n"
            + "print(json.dumps({\n"
            + "  'own': sorted({l.split(':', 2)[2].strip() for l in open('/proc/self/cgroup')}),\n"
            + "  'address_space': resource.getrlimit(resource.RLIMIT_AS)[0],\n"
            + "  'one_process_over_the_cap': bomb(),\n"
            + f"  'server_memory_cgroup': attempt(lambda: write({memory!r} +"
            + " '/memory.limit_in_bytes', '-1')),\n"
            + "}))",
        )
        # Without a cgroup the person is still told why a kernel died.
        os.kill(kernel_host_pid(kernel.id), signal.SIGKILL)
        deadline = time.monotonic() + 90
        while not (await _report(server, kernel.id)).get("last_end"):
            assert time.monotonic() < deadline, "the kernel's death was not reported"
            await asyncio.sleep(0.2)
        out["ended"] = (await _report(server, kernel.id))["last_end"]
        kernel.close()

    try:
        world.build()
        world.server = _server(world, "user", USER_RLIMITS)
        asyncio.run(run())
    finally:
        world.stop()
    doctor = os.path.join(os.path.dirname(sys.executable), "jupyter-qguard")
    proc = subprocess.run(
        ["runuser", "-u", UNPRIVILEGED, "--", doctor, "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={**os.environ, "HOME": str(world.home), "JUPYTER_CONFIG_DIR": str(world.home)},
    )
    out["doctor"] = json.loads(proc.stdout)["layers"]["cgroup"]
    return out


def test_user_without_delegation_gets_no_cgroup_and_is_told_why(user_run):
    why = user_run["expected_why"]
    applied = user_run["report"]["applied"]
    assert applied["cgroup"] == {"active": False, "why": why}
    assert user_run["report"]["ok"] is True  # not part of the minimum: the kernel runs
    assert user_run["doctor"] == {"available": False, "why": why}


def test_user_without_cgroup_keeps_the_rlimits(user_run):
    applied = user_run["report"]["applied"]
    assert applied["rlimits"]["active"] is True and applied["rlimits"]["memory"] == 1 << 30
    kernel = user_run["kernel"]
    assert kernel["address_space"] == 1 << 30
    assert kernel["one_process_over_the_cap"] == "MemoryError"
    # no cgroup of its own, and the server's is not its to change
    assert kernel["own"] == ["/"]
    assert kernel["server_memory_cgroup"] == "EACCES"
    assert user_run["ended"]["reason"] == "the kernel died on its own (signal SIGKILL)"
