"""Trusted interpreters start isolated: nothing an agent wrote into the workspace is imported.

Python puts a directory first on `sys.path` before any code of ours runs: the working
directory for `python -c` and `python -m`, the script's folder for `python script.py`. A
server started in a project folder (`jupyter lab` run there, the usual way) has the workspace
as its working directory, and every helper it starts inherits it. So a `json.py`, a
`pickle.pyc` or a `multiprocessing/` package that an agent kernel left there would run,
unconfined and with the server's rights, in the next helper that imports that name.

Every Python the server starts therefore runs as `python -I` (no working directory or script
folder on `sys.path`, no PYTHON* variables, no user site) from "/", a directory the agent
cannot write:
- subprocesses: `isolated_command(...)` with `cwd=ISOLATED_CWD`;
- multiprocessing's "spawn" children (worker pools, the resource tracker): they are started as
  `<executable> -c 'from multiprocessing.spawn import spawn_main; ...'`, and that import
  already searches the working directory first. `multiprocessing.set_executable()` is the one
  setting that reaches every one of them, so it names a two-line launcher written by
  `isolated_python()` that runs this interpreter with `-I` from "/" (see workers.py).
A spawned child still gets what it needs to unpickle its work: multiprocessing sends it the
parent's `sys.path` and working directory before it loads anything else.
"""

from __future__ import annotations

import atexit
import os
import shlex
import shutil
import stat
import sys
import tempfile
import threading
from pathlib import Path

# Where isolated helpers start: never writable by an agent kernel, nothing importable in it.
ISOLATED_CWD = "/"
_PREFIX = "qguard-py-"
_NAME = "python-isolated"
_lock = threading.Lock()
_launcher: Path | None = None


def isolated_command(*args: str) -> list[str]:
    """argv of this interpreter started isolated (`python -I ARGS...`); run it from
    ISOLATED_CWD."""
    return [sys.executable, "-I", *args]


def _launcher_text() -> str:
    # /bin/sh without -i reads no rc file (ENV is only read by interactive shells). `exec`
    # keeps the pid: the pool's parent sees its own child, as it would without the launcher.
    # sys.executable as it is (not resolved): a venv is found through its own path.
    return (
        "#!/bin/sh\n"
        "# jupyter_qguard: multiprocessing children start isolated, outside the workspace.\n"
        f'cd {ISOLATED_CWD} && exec {shlex.quote(sys.executable)} -I "$@"\n'
    )


def _is_ours(path: Path, text: str) -> bool:
    """The launcher is there, ours and unchanged (checked before each use: a temp cleaner may
    have removed it, and only this user can write its directory)."""
    try:
        dir_st = os.lstat(path.parent)
        st = os.lstat(path)
        if not (stat.S_ISDIR(dir_st.st_mode) and stat.S_ISREG(st.st_mode)):
            return False
        if dir_st.st_uid != os.geteuid() or st.st_uid != os.geteuid():
            return False
        if stat.S_IMODE(dir_st.st_mode) & 0o077 or stat.S_IMODE(st.st_mode) & 0o022:
            return False
        return path.read_text() == text
    except OSError:
        return False


def _sweep_stale(base: Path) -> None:
    """Remove launcher directories of processes that are gone (killed before their atexit)."""
    for path in base.glob(f"{_PREFIX}*-*"):
        try:
            pid = int(path.name[len(_PREFIX) :].split("-", 1)[0])
            if path.lstat().st_uid != os.geteuid() or pid == os.getpid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _remove(directory: Path, owner: int) -> None:
    if os.getpid() == owner:  # not in a forked child that happens to exit normally
        shutil.rmtree(directory, ignore_errors=True)


def isolated_python() -> str:
    """Path of an executable that runs this interpreter as `python -I "$@"` from "/".

    Written once per process into a new 0700 directory of the system's temp dir (the same place
    as the kernels' own directories, and like them out of every agent kernel's reach: Landlock
    gives a kernel the workspace and its own directory only), removed at exit; written anew if
    it went missing or was changed."""
    global _launcher
    text = _launcher_text()
    with _lock:
        if _launcher is not None and _is_ours(_launcher, text):
            return str(_launcher)
        base = Path(tempfile.gettempdir())
        _sweep_stale(base)
        directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
        path = directory / _NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o500)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        atexit.register(_remove, directory, os.getpid())
        _launcher = path
        return str(path)


def workspace_on_sys_path(workspace: str, path: list[str] | None = None) -> list[str]:
    """Entries of `sys.path` (or `path`) inside the workspace, "" among them when the working
    directory is: a server started as `python -m jupyter_server` from the workspace (or with
    PYTHONPATH pointing into it) imports from there itself, and hands that `sys.path` to its
    spawned children. `jupyter lab`/`jupyter server` (console scripts) do not."""
    root = os.path.realpath(workspace)
    # The interpreter's own directories stay, even inside the workspace (a workspace that is
    # the home directory holding the venv): without them nothing imports at all.
    own = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    found = []
    for entry in sys.path if path is None else path:
        real = os.path.realpath(entry or os.getcwd())
        if any(_under(real, p) for p in own):
            continue
        if _under(real, root):
            found.append(entry)
    return found


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip(os.sep) + os.sep)


def drop_workspace_from_sys_path(workspace: str) -> list[str]:
    """Take the workspace's entries out of this process's `sys.path` (see
    workspace_on_sys_path); returns them. Called before any pool starts, it also keeps them out
    of every spawned child, which gets the parent's `sys.path`."""
    found = workspace_on_sys_path(workspace)
    sys.path[:] = [entry for entry in sys.path if entry not in found]
    return found
