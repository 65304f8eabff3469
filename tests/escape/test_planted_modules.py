"""Nothing an agent writes into the workspace runs in a trusted process.

A server started the usual way (`jupyter server`, a console script, run in the project folder:
its working directory is the workspace). The agent kernel plants modules there that Python
would pick up first from a working directory (`json.py`, `pickle.py`, a sourceless `json.pyc`,
a `multiprocessing/` package) and the hooks `site` runs (`sitecustomize.py`,
`usercustomize.py`, `x.pth`), each writing a marker outside the workspace when it runs. Then
everything that starts a Python process happens again: the agent kernel restarted through the
REST API and after it died, an Aer job through the broker, the fake cloud and its worker pool,
the server itself restarted (its sandbox probe, its worker pool, the resource tracker). No
marker may appear; the kernel keeps running code and the jobs complete. A control at the end
shows that each planted file does run where Python would import it. As root and as an
unprivileged user.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pwd
import py_compile
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support.helpers import BELL
from support.jupyter_proc import KernelWS, ServerProcess, kernel_processes
from world import MODES, UNPRIVILEGED, World, _require_mode

BIN = Path(sys.executable).parent
NOTEBOOK = "nb/planted.ipynb"

# Runs when imported: leaves a marker (name, pid, uid) in MARKERS, then becomes the real
# module, so that whatever imported it goes on working and the marker is the only trace.
PLANTED = """
import os as _os
import sys as _sys
try:
    _fd = _os.open(
        {markers!r} + "/{name}-%d-%d" % (_os.getpid(), _os.getuid()),
        _os.O_WRONLY | _os.O_CREAT,
        0o666,
    )
    _os.write(_fd, repr(_sys.argv).encode())
    _os.close(_fd)
except OSError:
    pass
{become_real}
"""
BECOME_REAL = """
import sysconfig as _sysconfig
_real = _os.path.join(_sysconfig.get_paths()["stdlib"], {path!r})
{package}
with open(_real) as _f:
    exec(compile(_f.read(), _real, "exec"))
"""
PACKAGE = "__path__ = [_os.path.dirname(_real)]\n__package__ = __name__"
# A .pth line that starts with "import" is executed by `site` (an error only printed).
PTH = (
    "import os; os.close(os.open({markers} + '/pth-%d-%d' % (os.getpid(), os.getuid()), "
    "os.O_WRONLY | os.O_CREAT, 0o666))\n"
)


def planted_source(markers: str, name: str, real: str | None = None) -> str:
    become = ""
    if real is not None:
        package = PACKAGE if real.endswith("__init__.py") else ""
        become = BECOME_REAL.format(path=real, package=package)
    return PLANTED.format(markers=markers, name=name, become_real=become)


def sourceless_pyc(source: str, tmp: Path) -> bytes:
    src = tmp / "planted_src.py"
    src.write_text(source)
    out = tmp / "planted.pyc"
    py_compile.compile(str(src), cfile=str(out), doraise=True)
    return out.read_bytes()


def planted_files(markers: str, tmp: Path) -> dict[str, bytes]:
    """Workspace-relative path -> bytes: at the top (the server's working directory) and in
    the notebook's folder (the kernel's)."""
    json_src = planted_source(markers, "json", "json/__init__.py")
    files = {
        "json.pyc": sourceless_pyc(json_src, tmp),  # no json.py beside it: sourceless
        "pickle.py": planted_source(markers, "pickle", "pickle.py").encode(),
        "multiprocessing/__init__.py": planted_source(
            markers, "multiprocessing", "multiprocessing/__init__.py"
        ).encode(),
        "sitecustomize.py": planted_source(markers, "sitecustomize").encode(),
        "usercustomize.py": planted_source(markers, "usercustomize").encode(),
        "x.pth": PTH.format(markers=json.dumps(markers)).encode(),
        "nb/json.py": json_src.encode(),
        "nb/pickle.py": planted_source(markers, "pickle", "pickle.py").encode(),
        "nb/sitecustomize.py": planted_source(markers, "sitecustomize").encode(),
    }
    return files


PLANT_FROM_KERNEL = """
import base64, errno, json, os
_out = {{}}
for _rel, _data in {files!r}.items():
    _path = os.path.join({workspace!r}, _rel)
    try:
        os.makedirs(os.path.dirname(_path), exist_ok=True)
        with open(_path, "wb") as _f:
            _f.write(base64.b64decode(_data))
        _out[_rel] = "written"
    except OSError as _exc:
        _out[_rel] = errno.errorcode[_exc.errno]
print(json.dumps(_out))
"""


class Planted:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.world = World(mode)
        self.markers = self.world.base / "markers"
        self.user = UNPRIVILEGED if mode == "user" else None
        self.server: ServerProcess | None = None
        self.clouds: list[subprocess.Popen[bytes]] = []

    @property
    def workspace(self) -> Path:
        return self.world.base / "workspace"

    def build(self) -> None:
        self.markers.mkdir()
        (self.workspace / "nb").mkdir(parents=True)
        self.world.build()  # chowns all of it to the unprivileged user in that mode
        # Anyone may leave a marker: a planted module that ran anywhere must be seen.
        os.chmod(self.markers, 0o777)

    def as_owner(self, path: Path) -> None:
        owner = os.stat(self.workspace)
        os.lchown(path, owner.st_uid, owner.st_gid)

    def start_server(self) -> ServerProcess:
        # `jupyter server` as a person runs it in a project folder: a console script (its own
        # folder first on sys.path, not the working directory), working directory = the
        # workspace (ServerProcess starts it there).
        server = ServerProcess(
            self.world.base,
            launcher=[str(BIN / "jupyter-server")],
            user=self.user,
            env={"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"},
        )
        server.extra_args = [
            f"--ServerApp.port={server.port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={server.root}",
        ]
        self.server = server.start()
        return server

    def as_server_user(self) -> dict[str, Any]:
        return {} if self.user is None else {"user": self.user, "group": self.user}

    def markers_left(self) -> list[str]:
        return sorted(os.listdir(self.markers))

    def stop(self) -> None:
        for cloud in self.clouds:
            if cloud.poll() is None:
                cloud.kill()
                cloud.wait(10)
        self.world.server = self.server
        self.world.stop()


async def connect(server: ServerProcess, kernel_id: str) -> KernelWS:
    ws = await server.websocket(f"api/kernels/{kernel_id}/channels")
    kernel = KernelWS(kernel_id, ws)
    await kernel.wait_ready()
    return kernel


async def runs_code(kernel: KernelWS) -> None:
    res = await kernel.run("print(6 * 7)")
    assert res["error"] is None and res["stdout"] == "42\n", res


async def aer_job_completes(server: ServerProcess, kernel: KernelWS) -> None:
    res = await kernel.run(
        BELL + "job = %qguard submit bell --backend aer_simulator --shots 200 --seed 5\n"
        "print(job.job_id)",
        timeout=180,
    )
    assert res["error"] is None, res
    job_id = res["stdout"].strip().splitlines()[-1]
    for _ in range(900):
        job = await server.json(f"qguard/api/jobs/{job_id}")
        if job["state"] in ("completed", "failed", "rejected"):
            break
        await asyncio.sleep(0.2)
    assert job["state"] == "completed", job
    assert sum(job["result"]["counts"].values()) == 200


def start_fake_cloud(planted: Planted) -> None:
    """The fake cloud as `jupyter qguard fakecloud` (a console script), run in the workspace:
    only its pool's isolation keeps the planted modules out of its workers."""
    base = planted.world.base
    cmd = [
        str(BIN / "jupyter-qguard"),
        "fakecloud",
        "--port",
        "0",
        "--workers",
        "1",
        "--api-key-file",
        str(base / "fakecloud-key"),
    ]
    env = {**os.environ, "HOME": str(base / "home")}
    proc = subprocess.Popen(
        cmd,
        cwd=planted.workspace,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        **planted.as_server_user(),
    )
    planted.clouds.append(proc)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    assert ready, "the fake cloud did not start"
    url = json.loads(proc.stdout.readline())["url"]
    # Its backends answer once the pool has read their calibrations (the workers ran).
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/v1/backends", timeout=5) as r:
                body = json.loads(r.read())
            if body:
                break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError("the fake cloud's backends never loaded")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


async def scenario(planted: Planted, tmp: Path) -> None:
    server = planted.start_server()
    kernel = await server.start_kernel(notebook=NOTEBOOK)
    kid = kernel.id
    await runs_code(kernel)

    # The agent plants its files from the kernel; what the sandbox refuses the test writes
    # (the same bytes on disk).
    files = planted_files(str(planted.markers), tmp)
    code = PLANT_FROM_KERNEL.format(
        files={rel: base64.b64encode(data).decode() for rel, data in files.items()},
        workspace=str(planted.workspace),
    )
    res = await kernel.run(code)
    assert res["error"] is None, res
    outcome = json.loads(res["stdout"].strip().splitlines()[-1])
    assert set(outcome) == set(files)
    for rel, how in outcome.items():
        assert how in ("written", "EACCES", "EPERM", "EROFS"), (rel, how)
        path = planted.workspace / rel
        if how != "written":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[rel])
            planted.as_owner(path)
        assert path.read_bytes() == files[rel], rel
        assert stat.S_ISREG(os.lstat(path).st_mode)

    # Restarted through the REST API.
    kernel.close()
    r = await server.fetch(f"api/kernels/{kid}/restart", method="POST", body={})
    assert r.code == 200
    kernel = await connect(server, kid)
    await runs_code(kernel)

    # Dead (os._exit): the server's own restarter starts it again, in no request.
    before = set(kernel_processes(kid))
    msg = kernel._msg("execute_request", {"code": "import os; os._exit(7)"})
    await kernel.ws.write_message(json.dumps(msg))
    kernel.close()
    for _ in range(600):
        now = set(kernel_processes(kid))
        if now and not now & before:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the kernel was not restarted")
    kernel = await connect(server, kid)
    await runs_code(kernel)

    # A job through the broker: the Aer worker pool.
    await aer_job_completes(server, kernel)
    kernel.close()

    # The fake cloud and its pool, started in the workspace.
    start_fake_cloud(planted)

    # The server restarted: its probe, its pool and resource tracker start again, with the
    # planted files in its working directory.
    assert server.stop() == 0
    server.start()
    kernel = await server.start_kernel(notebook=NOTEBOOK)
    await runs_code(kernel)
    await aer_job_completes(server, kernel)
    sandbox = await server.json("qguard/api/sandbox")
    assert all(k["sandbox"]["ok"] for k in sandbox["kernels"]), sandbox
    kernel.close()
    assert server.stop() == 0


def control(planted: Planted) -> list[str]:
    """Where Python does import from the workspace, each planted file runs."""
    ws = str(planted.workspace)
    py = str(BIN / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    runs = [
        ([py, "-c", "import json, pickle, multiprocessing"], {}),  # the working directory
        ([py, "-c", "pass"], {"PYTHONPATH": ws}),  # sitecustomize on the path
        ([py, "-c", "import usercustomize"], {}),
        ([py, "-c", f"import site; site.addsitedir({ws!r})"], {}),  # .pth in a site dir
    ]
    for cmd, extra in runs:
        subprocess.run(
            cmd,
            cwd=ws,
            env={**env, **extra},
            check=True,
            stdin=subprocess.DEVNULL,
            **planted.as_server_user(),
        )
    return sorted({name.split("-", 1)[0] for name in planted.markers_left()})


@pytest.mark.parametrize("mode", MODES)
def test_planted_modules_never_run_outside_the_sandbox(mode):
    _require_mode(mode)
    planted = Planted(mode)
    try:
        planted.build()
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(scenario(planted, Path(tmp)))
        assert planted.markers_left() == []
        uid = pwd.getpwnam(UNPRIVILEGED).pw_uid if mode == "user" else 0
        assert control(planted) == [
            "json",
            "multiprocessing",
            "pickle",
            "pth",
            "sitecustomize",
            "usercustomize",
        ]
        assert {int(n.rsplit("-", 1)[1]) for n in planted.markers_left()} == {uid}
    finally:
        planted.stop()


# -- the pieces, without a server --------------------------------------------------------------

SPAWNING = """
import concurrent.futures, multiprocessing, sys
from jupyter_qguard.workers import spawn_context
if __name__ == "__main__":
    ctx = spawn_context() if sys.argv[1] == "isolated" else multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        print(pool.submit(sum, [1, 2, 3]).result())
"""


@pytest.mark.parametrize("how", ["isolated", "plain"])
def test_pool_children_and_resource_tracker_start_isolated(tmp_path, how):
    """A process whose working directory holds planted modules (the server's, in a project
    folder) makes a pool: with spawn_context() neither the workers nor the resource tracker
    import them; with multiprocessing's plain spawn both do (the control)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    planted = tmp_path / "workspace"
    (planted / "multiprocessing").mkdir(parents=True)
    (planted / "pickle.py").write_text(planted_source(str(markers), "pickle", "pickle.py"))
    (planted / "multiprocessing/__init__.py").write_text(
        planted_source(str(markers), "multiprocessing", "multiprocessing/__init__.py")
    )
    # The script lives elsewhere (a console script's folder): the parent itself imports
    # nothing from its working directory and passes no -I to its children.
    trusted = tmp_path / "bin"
    trusted.mkdir()
    (trusted / "spawning.py").write_text(SPAWNING)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    res = subprocess.run(
        [sys.executable, str(trusted / "spawning.py"), how],
        cwd=planted,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "6\n"
    ran = sorted(name.split("-", 1)[0] for name in os.listdir(markers))
    if how == "isolated":
        assert ran == []
    else:
        # the tracker (multiprocessing) and the worker (multiprocessing, then pickle)
        assert ran == ["multiprocessing", "multiprocessing", "pickle", "pickle"]


def test_the_isolated_launcher(tmp_path):
    from jupyter_qguard import isolation

    path = Path(isolation.isolated_python())
    assert isolation.isolated_python() == str(path)  # once per process
    st, dir_st = os.lstat(path), os.lstat(path.parent)
    assert stat.S_IMODE(st.st_mode) == 0o500 and stat.S_IMODE(dir_st.st_mode) == 0o700
    assert st.st_uid == dir_st.st_uid == os.geteuid()
    assert path.read_text().splitlines()[-1] == f'cd / && exec {sys.executable} -I "$@"'
    out = subprocess.run(
        [str(path), "-c", "import os, sys; print(os.getcwd(), sys.flags.isolated, sys.path[0])"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[:2] == ["/", "1"] and out[2] != "" and not out[2].startswith(str(tmp_path))
    # Gone or changed (a temp cleaner, anything): written anew, elsewhere.
    path.unlink()
    again = Path(isolation.isolated_python())
    assert again != path and again.is_file()


def test_workspace_entries_of_sys_path(tmp_path, monkeypatch):
    from jupyter_qguard import isolation

    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(ws)
    monkeypatch.chdir(ws / "sub")
    entries = ["", str(ws), str(ws / "sub"), str(tmp_path / "link"), "/usr/lib/python3", "x"]
    assert isolation.workspace_on_sys_path(str(ws), entries) == entries[:4] + ["x"]
    monkeypatch.setattr(sys, "path", list(entries))
    assert isolation.drop_workspace_from_sys_path(str(ws)) == entries[:4] + ["x"]
    assert sys.path == ["/usr/lib/python3"]
