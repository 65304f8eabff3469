"""The escape suite's world: a real server (as root, and as the unprivileged `qgtest`), full of
secrets and neighbours, and real agent kernels that try to reach them."""

from __future__ import annotations

import json
import os
import pwd
import py_compile
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
NOTEBOOK_FOLDER = "proj"

# Repositories at every depth of the workspace (besides the one at its top): a repo in a
# subfolder with a submodule (whose `.git` is a `gitdir:` file into the parent's modules/), a
# deep one, and one made with --separate-git-dir (its `.git` a file naming a folder that is
# not called `.git`).
REPOS = {
    "proj/.git/HEAD": "ref: refs/heads/main\n",
    "proj/.git/config": "[core]\n",
    "proj/.git/hooks/pre-commit.sample": "#!/bin/sh\n",
    "proj/.git/info/exclude": "",
    "proj/.git/modules/sub/HEAD": "ref: refs/heads/main\n",
    "proj/.git/modules/sub/config": "[core]\n",
    "proj/sub/.git": "gitdir: ../.git/modules/sub\n",
    "proj/sub/README": "a submodule\n",
    "proj/mymod.py": "VALUE = 42\n",
    "deep/a/b/repo/.git/HEAD": "ref: refs/heads/main\n",
    "deep/a/b/repo/.git/config": "[core]\n",
    "sep/.git": "gitdir: ../store\n",
    "store/HEAD": "ref: refs/heads/main\n",
    "store/config": "[core]\n",
}
# What an agent leaves in the notebook's folder for the next trusted start: modules that
# shadow the standard library or run at interpreter start, and a sourceless .pyc. If any of
# them ever runs outside the sandbox, it leaves a mark in a folder no kernel can write.
PLANTED_SOURCES = ("json.py", "sitecustomize.py", "usercustomize.py", "runpy.py", "site.py")
PLANTED_PYC = "pickle"
PLANTED_CODE = """
import os as _os
try:
    open({marks!r} + "/{name}-" + str(_os.getuid()), "w").close()
except OSError:
    pass
"""


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
        self.marks = self.base / "planted-ran"

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
        for rel, text in REPOS.items():
            (ws / rel).parent.mkdir(parents=True, exist_ok=True)
            (ws / rel).write_text(text)
        self.marks.mkdir()
        folder = ws / NOTEBOOK_FOLDER
        for name in PLANTED_SOURCES:
            (folder / name).write_text(PLANTED_CODE.format(marks=str(self.marks), name=name))
        source = self.base / f"{PLANTED_PYC}.py"
        source.write_text(PLANTED_CODE.format(marks=str(self.marks), name=PLANTED_PYC + ".pyc"))
        py_compile.compile(str(source), cfile=str(folder / f"{PLANTED_PYC}.pyc"), doraise=True)
        source.unlink()
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
        os.chmod(self.marks, 0o777)  # whoever ran a planted module unconfined can mark it

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
        "workspace": os.path.realpath(server.root),
        "kernel_dir": dirs[target.id],
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
    results["__notebook__"] = await notebook_kernel(world)
    # Nothing planted ran outside the sandbox, at any start (first, restart), and no kernel
    # left bytecode in the workspace.
    results["__planted_ran__"] = sorted(os.listdir(world.marks))
    results["__workspace_pycache__"] = sorted(
        str(p.relative_to(server.root)) for p in server.root.rglob("__pycache__")
    )
    return results


NOTEBOOK_FACTS = r"""
import importlib.util, json, os, pickle, sys
import mymod
print(json.dumps({
    "cwd": os.getcwd(),
    "isolated": sys.flags.isolated,
    "cwd_on_sys_path": "" in sys.path,
    "mymod": [mymod.VALUE, mymod.__file__],
    "mymod_bytecode_under_prefix": importlib.util.cache_from_source(mymod.__file__).startswith(
        sys.pycache_prefix + "/"
    ),
    "pycache_prefix": sys.pycache_prefix,
    "json_from_stdlib": json.__file__.startswith(sys.base_prefix + "/lib/"),
    "pickle_from_stdlib": pickle.__file__.startswith(sys.base_prefix + "/lib/"),
    "pycache_beside_notebook": os.path.isdir("__pycache__"),
}))
"""
# What the agent leaves for the restart, on top of what the world planted: a module named
# after one the launcher imports, and one ipykernel imports.
PLANT_MORE = r"""
for name in ("stat.py", "socket.py", "zmq.py"):
    open(name, "w").write(open("json.py").read().replace("json.py", name))
print("planted")
"""


async def notebook_kernel(world: World) -> dict[str, Any]:
    """A kernel on a notebook in a subfolder: what it sees, then the same after the agent
    plants more and its kernel is restarted."""
    server = world.server
    assert server is not None
    kernel = await server.start_kernel(notebook=f"{NOTEBOOK_FOLDER}/analysis.ipynb")
    sandbox = await server.json("qguard/api/sandbox")
    kernel_dir = next(k["kernel_dir"] for k in sandbox["kernels"] if k["kernel_id"] == kernel.id)
    out: dict[str, Any] = {
        "folder": os.path.realpath(server.root / NOTEBOOK_FOLDER),
        "kernel_dir": kernel_dir,
    }
    try:
        for when in ("first", "restarted"):
            res = await kernel.run(NOTEBOOK_FACTS)
            assert res["error"] is None, res
            out[when] = json.loads(res["stdout"].strip().splitlines()[-1])
            if when == "first":
                planted = await kernel.run(PLANT_MORE)
                assert planted["stdout"].strip() == "planted", planted
                await server.fetch(f"api/kernels/{kernel.id}/restart", method="POST", body={})
                await kernel.wait_ready()
    finally:
        kernel.close()
    return out
