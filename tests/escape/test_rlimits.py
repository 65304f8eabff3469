"""Fork bomb, memory bomb and disk fill in an agent kernel: stopped by rlimits, with the exact
errors, and the server unharmed. As root and as an unprivileged user."""

from __future__ import annotations

import asyncio
import json

import pytest
from world import MODES, World, _require_mode

LIMITS = {
    "processes": 64,
    "memory": 2 << 30,
    "file_size": 50 << 20,
    "open_files": 512,
    "cpu_seconds": 0,
}

BOMBS = {
    "fork_bomb": r"""
import os, errno, time
pids, err = [], None
for i in range(2000):
    try:
        pid = os.fork()
    except OSError as e:
        err = errno.errorcode[e.errno]; break
    if pid == 0:
        time.sleep(3); os._exit(0)
    pids.append(pid)
for p in pids:
    os.waitpid(p, 0)
print(json.dumps([len(pids) < 2000, err]))
""",
    "memory_bomb": r"""
try:
    blob = bytearray(6 << 30)
    out = "allocated"
except MemoryError:
    out = "MemoryError"
print(json.dumps(out))
""",
    "disk_fill": r"""
import errno, os
written, err = 0, None
try:
    with open("fill.bin", "wb") as f:
        for _ in range(200):
            f.write(b"\0" * (1 << 20)); f.flush(); written += 1
except OSError as e:
    err = errno.errorcode[e.errno]
print(json.dumps([err, os.path.getsize("fill.bin")]))
""",
}
EXPECTED = {
    "fork_bomb": [True, "EAGAIN"],
    "memory_bomb": "MemoryError",
    "disk_fill": ["EFBIG", 50 << 20],
}


@pytest.fixture(scope="module", params=MODES)
def bomb_results(request):
    mode = request.param
    _require_mode(mode)
    world = World(mode)

    async def run():
        server = world.server
        kernel = await server.start_kernel()
        out = {}
        for name, code in BOMBS.items():
            res = await kernel.run("import json\n" + code, timeout=120)
            assert res["error"] is None, (name, res)
            out[name] = json.loads(res["stdout"].strip().splitlines()[-1])
        # the server is unharmed and the kernel still answers
        out["server_ok"] = (await server.fetch("api/status")).code
        out["kernel_ok"] = (await kernel.run("print(1 + 1)"))["stdout"].strip()
        return out

    try:
        world.build()
        world.server = None
        import sys

        from support.jupyter_proc import ServerProcess

        user = "qgtest" if mode == "user" else None
        world.server = ServerProcess(
            world.base, user=user, extra_args=[f"--QGuardApp.kernel_rlimits={json.dumps(LIMITS)}"]
        ).start()
        assert sys.executable
        results = asyncio.run(run())
    finally:
        world.stop()
    return mode, results


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_bomb_is_stopped(bomb_results, bomb):
    mode, results = bomb_results
    assert results[bomb] == EXPECTED[bomb], mode


def test_server_and_kernel_survive(bomb_results):
    _, results = bomb_results
    assert results["server_ok"] == 200
    assert results["kernel_ok"] == "2"
