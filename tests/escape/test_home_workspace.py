"""A server started in the person's home (`jupyter lab` in ~): the agent may work inside the
existing folders, but the top level, where shell rc files, ~/.jupyter and ~/.local live, stays
closed, whether those files exist yet or not."""

from __future__ import annotations

import asyncio
import json

import pytest
from world import MODES, World, _require_mode

CODE = r"""
import errno, json, os
def outcome(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
out = {
    "bashrc_new": outcome(lambda: open(".bashrc", "w")),
    "profile_new": outcome(lambda: open(".profile", "w")),
    "jupyter_config_new": outcome(lambda: os.makedirs(".jupyter/custom")),
    "local_site_pth": outcome(lambda: open(".local/lib/evil.pth", "w")),
    "new_top_level_file": outcome(lambda: open("new.ipynb", "w")),
    "inside_existing_folder": outcome(lambda: open("notebooks/result.txt", "w").write("ok")),
    "read_existing": outcome(lambda: open("notebooks/input.txt").read()),
}
print(json.dumps(out))
"""

EXPECTED = {
    "bashrc_new": "EACCES",
    "profile_new": "EACCES",
    # these two exist, bound read-only into the kernel's view
    "jupyter_config_new": "EROFS",
    "local_site_pth": "EROFS",
    "new_top_level_file": "EACCES",
    "inside_existing_folder": "ok",
    "read_existing": "ok",
}


@pytest.mark.parametrize("mode", MODES)
def test_top_level_of_a_home_workspace_stays_closed(mode):
    _require_mode(mode)
    world = World(mode)
    try:
        world.build()
        home = world.home
        (home / "notebooks").mkdir()
        (home / ".local/lib").mkdir(parents=True)
        (home / "notebooks/input.txt").write_text("data")
        (home / ".bashrc").unlink()
        if mode == "user":
            import os
            import pwd

            pw = pwd.getpwnam("qgtest")
            for p in (home / "notebooks", home / "notebooks/input.txt"):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        from support.jupyter_proc import ServerProcess

        server = ServerProcess(world.base, user="qgtest" if mode == "user" else None)
        server.root = home
        world.server = server.start()

        async def run():
            kernel = await server.start_kernel()
            res = await kernel.run(CODE)
            assert res["error"] is None, res
            return json.loads(res["stdout"].strip().splitlines()[-1])

        assert asyncio.run(run()) == EXPECTED
        assert not (home / ".bashrc").exists()
        assert (home / "notebooks/result.txt").read_text() == "ok"
    finally:
        world.stop()
