"""The escape suite's world: a real server (as root, and as the unprivileged `qgtest`), full of
secrets and neighbours, and real agent kernels that try to reach them."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import site
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from support.jupyter_proc import ServerProcess, kernel_processes  # noqa: E402

MODES = ["root", "user"]
KEYRING_FILE = ".local/share/python_keyring/keyring_pass.cfg"
UNPRIVILEGED = "qgtest"


def _require_mode(mode: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("the escape suite runs as root (CI does) to test both modes")
    if mode == "user":
        try:
            pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            pytest.fail(
                f"user {UNPRIVILEGED} missing: run tests/setup-unprivileged.sh (make test does)"
            )


class World:
    """Everything a probe may aim at, laid out for one server."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.secret = "qguard-escape-" + secrets.token_hex(12)
        self.base = Path(tempfile.mkdtemp(prefix="qg-escape-"))
        self.home = self.base / "home"
        self.server: ServerProcess | None = None
        self.listeners: list[socket.socket] = []

    def build(self) -> None:
        home = self.home
        for rel, text in {
            ".qiskit/qiskit-ibm.json": json.dumps({"default-ibm-quantum": {"token": self.secret}}),
            ".aws/credentials": f"[default]\naws_secret_access_key = {self.secret}\n",
            KEYRING_FILE: f"[jupyter-qguard]\nescape = {self.secret}\n",
            ".bashrc": "# the person's shell\n",
        }.items():
            p = home / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        for d in (".jupyter", ".ipython/profile_default/startup"):
            (home / d).mkdir(parents=True, exist_ok=True)
        ws = self.base / "workspace"
        for d in (".git/hooks", ".jupyter"):
            (ws / d).mkdir(parents=True, exist_ok=True)
        (ws / ".git/config").write_text("[core]\n")
        (ws / ".git/hooks/pre-commit.sample").write_text("#!/bin/sh\n")
        run = self.base / "run"
        run.mkdir()
        self.bus = str(run / "bus")
        self.abstract = "\0qguard-escape-" + secrets.token_hex(6)
        for address in (self.bus, self.abstract):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(address)
            s.listen(1)
            self.listeners.append(s)
        if self.mode == "user":
            pw = pwd.getpwnam(UNPRIVILEGED)
            for root, dirs, files in os.walk(self.base):
                for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
                    os.lchown(n, pw.pw_uid, pw.pw_gid)
            os.chmod(self.bus, 0o777)

    def start(self) -> ServerProcess:
        env = {
            "QGUARD_ESCAPE_SECRET": self.secret,
            "JUPYTERHUB_API_TOKEN": self.secret,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "QISKIT_IBM_TOKEN": self.secret,
            "DBUS_SESSION_BUS_ADDRESS": f"unix:path={self.bus}",
            "SSH_AUTH_SOCK": self.bus,
            "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
        }
        user = UNPRIVILEGED if self.mode == "user" else None
        self.server = ServerProcess(self.base, env=env, user=user).start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        for s in self.listeners:
            s.close()
        shutil.rmtree(self.base, ignore_errors=True)


def _in_child_pidns(pid: str) -> bool:
    return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def kernel_host_pid(kernel_id: str) -> int:
    """The host pid of the kernel process itself (the newest of its processes inside its own
    pid namespace: the namespace's init is forked before it)."""
    inside = [p for p in kernel_processes(kernel_id) if _in_child_pidns(str(p))]
    if not inside:
        raise LookupError(kernel_id)
    return max(inside)


async def run_probes(world: World, probes: dict[str, str]) -> dict[str, Any]:
    server = world.server
    assert server is not None
    target = await server.start_kernel()
    other = await server.start_kernel()
    sandbox = await server.json("qguard/api/sandbox")
    dirs = {k["kernel_id"]: k["kernel_dir"] for k in sandbox["kernels"]}
    other_dir = dirs[other.id]
    conn = json.loads(Path(other_dir, "connection.json").read_text())
    runtime = world.home / ".local/share/jupyter/runtime"
    context = {
        "secret": world.secret,
        "home": str(world.home),
        "keyring_file": str(world.home / KEYRING_FILE),
        "state": str(server.state),
        "runtime": str(runtime),
        "server_json": str(next(runtime.glob("jpserver-*.json"))),
        "server_pid": server.proc.pid,
        "other_kernel_dir": other_dir,
        "other_kernel_socket": f"{conn['ip']}-{conn['shell_port']}",
        "other_kernel_pid": kernel_host_pid(other.id),
        "bus": world.bus,
        "abstract": world.abstract,
        "port": server.port,
        "prefix": sys.prefix,
        "site": site.getsitepackages()[0],
    }
    prelude = (HERE / "kernel_prelude.py").read_text()
    setup = await target.run(f"PRELUDE = {prelude!r}\nexec(PRELUDE)")
    assert setup["error"] is None, setup
    exprs = {name: expr.format(**context) for name, expr in probes.items()}
    code = (
        f"_exprs = {exprs!r}\n"
        "_out = {n: outcome(lambda e=e: eval(e)) for n, e in _exprs.items()}\n"
        "print(json.dumps(_out))"
    )
    res = await target.run(code, timeout=300)
    assert res["error"] is None, res
    results = json.loads(res["stdout"].strip().splitlines()[-1])
    results["__sandbox__"] = sandbox
    written = server.root / "escape-ok.txt"
    results["__workspace_owner__"] = written.stat().st_uid if written.exists() else None
    results["__workspace_root_owner__"] = os.stat(server.root).st_uid
    target.close()
    other.close()
    return results
