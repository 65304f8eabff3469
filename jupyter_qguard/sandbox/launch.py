"""Entry point of an agent kernel: `python -I -m jupyter_qguard.sandbox.launch -f CONN`.

Runs in the kernel process before any agent code. The interpreter starts isolated (`-I`: no
working directory on sys.path, no PYTHON* variables, no user site), so nothing in the
workspace is imported before confinement; the launcher itself imports only the standard
library and installed packages. The layers are confinement.py's, shared with agent processes
(agent_launch.py). First, as the server's user: into the kernel's own cgroup (made by the
provisioner: cgroup.py), the manifest's write directories, namespaces and mounts (the
workspace nosuid/nodev, every `.git` read-only and fixed in place, the manifest's denied files
hidden), the idmapped workspace, then the end of privilege (a root server's kernel becomes a
uid of its own; a user-namespace kernel sheds every capability).
Then rlimits, Landlock and seccomp. Only then does it point bytecode at the kernel's own
directory and enter the notebook's folder. It checks that the minimum isolation holds (else it
exits, saying which layer is missing and why), tells the broker what is in force (once, before
any agent code runs) and only then starts ipykernel. One process throughout: no second
interpreter start.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import confinement
from .confinement import FAILED_EXIT, Target
from .spec import SPEC_VAR, SandboxSpec

__all__ = ["FAILED_EXIT", "KERNEL", "confine", "main"]

KERNEL = Target(
    what="agent kernel",
    noun="kernel",
    started_by="the qguard kernel provisioner, inside a Jupyter server with the jupyter_qguard "
    "extension",
)


def confine(argv: list[str]) -> None:
    spec = SandboxSpec.from_env()
    confined = confinement.confine(spec, KERNEL)
    report, missing = confined.report, confined.missing
    # Confined now: only from here on may the process look at the workspace as its own.
    report["interpreter"] = enter_workspace(spec, confined.workdir)
    if not report["interpreter"]["active"]:
        missing.append(f"interpreter ({report['interpreter']['why']})")
    report["env"]["names"] = sorted(os.environ)
    fd = confinement.check_channel(KERNEL)
    confinement.send_report(fd, report, ok=not missing)
    if missing:
        confinement.fail(KERNEL, "minimum isolation not met: " + "; ".join(missing))
    del os.environ[SPEC_VAR]
    # In the pid namespace the kernel's parent is its own init, which ipykernel's parent
    # poller would take for "the server is gone". Parent death is handled by PR_SET_PDEATHSIG.
    if report.get("namespaces", {}).get("active"):
        os.environ.pop("JPY_PARENT_PID", None)
    start_ipykernel(argv)


def enter_workspace(spec: SandboxSpec, workdir: int | OSError | None) -> dict[str, Any]:
    """After every layer: bytecode goes to the kernel's own directory, then the process
    enters the notebook's folder.

    `-I` made the interpreter ignore PYTHONDONTWRITEBYTECODE, so without this it would write
    `__pycache__` beside every workspace module it imports, where a person's kernel would
    later load it. With sys.pycache_prefix, Python reads and writes bytecode only under the
    prefix; for the interpreter's own read-only trees (stdlib, site-packages) the kernel keeps
    reading their `__pycache__` (it cannot write there: Landlock), or every kernel would
    compile ipykernel, numpy and qiskit from source at start (seconds). Child interpreters
    (`!python x.py`, `%pip`) keep PYTHONDONTWRITEBYTECODE: they write no bytecode at all and
    read the installed trees' own caches. (Giving them PYTHONPYCACHEPREFIX instead made each
    new kernel's first child compile numpy and scipy from source: 6-9 s instead of 2 s.) A
    bytecode file a child is told to write anyway (`compileall`, `pip install -t`) is a change
    in the feed with an alert.
    """
    prefix = os.path.join(spec.kernel_dir, "pycache")
    try:
        os.makedirs(prefix, mode=0o700, exist_ok=True)
        os.chmod(prefix, 0o700)
    except OSError as exc:
        return {"active": False, "why": f"no bytecode directory {prefix}: {exc.strerror}"}
    sys.pycache_prefix = prefix
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.pop("PYTHONPYCACHEPREFIX", None)
    writable = [spec.workspace, spec.kernel_dir, "/dev/shm"]
    _keep_trusted_bytecode(_interpreter_trees(), writable)
    out: dict[str, Any] = {
        "active": True,
        "isolated": bool(sys.flags.isolated),
        "safe_path": bool(sys.flags.safe_path),
        "pycache_prefix": prefix,
    }
    if not sys.flags.safe_path:
        return {
            **out,
            "active": False,
            "why": "the interpreter was not started with -I: its working directory was on "
            "sys.path before any layer applied (the kernelspec's argv must be "
            "`python -I -m jupyter_qguard.sandbox.launch -f {connection_file}`)",
        }
    if isinstance(workdir, OSError):
        return {
            **out,
            "active": False,
            "why": f"cannot enter the notebook's folder {spec.cwd}: {workdir.strerror}",
        }
    if workdir is not None:
        try:
            os.fchdir(workdir)
        except OSError as exc:
            return {
                **out,
                "active": False,
                "why": f"cannot enter the notebook's folder {spec.cwd}: {exc.strerror}",
            }
        finally:
            os.close(workdir)
    out["cwd"] = os.getcwd()
    return out


def _interpreter_trees() -> list[str]:
    """The interpreter's own trees, as sys.path names them and as they really are (module
    paths come in either form: a venv's lib64 is often a link to lib)."""
    from .landlock import python_paths

    return sorted({*python_paths(), *(p for p in sys.path if os.path.isabs(p))})


def _keep_trusted_bytecode(trees: list[str], writable: list[str]) -> None:
    """Bytecode of sources in `trees` stays in their own `__pycache__`; everything else, and
    whatever lies in a directory the kernel may write (the workspace above all, even where an
    interpreter tree sits inside it), goes under sys.pycache_prefix."""
    import importlib.util
    from importlib import _bootstrap_external as external

    original = external.cache_from_source
    roots = tuple(t.rstrip("/") + "/" for t in trees)
    never = tuple(w.rstrip("/") + "/" for w in writable)

    def cache_from_source(
        path: Any, debug_override: Any = None, *, optimization: Any = None
    ) -> str:
        cached = original(path, debug_override, optimization=optimization)
        source = os.fspath(path)
        if source.startswith(roots) and not source.startswith(never):
            head, _ = os.path.split(source)
            return os.path.join(head, "__pycache__", os.path.basename(cached))
        return cached

    external.cache_from_source = cache_from_source
    importlib.util.cache_from_source = cache_from_source


def _plain_std_streams() -> None:
    import io

    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True)
        setattr(sys, name, stream)


def start_ipykernel(argv: list[str]) -> None:
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(list(argv))
    # ipykernel forwards a forked child's print() over a TCP socket, which the sandbox forbids.
    # Its fd-level capture still reads file descriptors 1 and 2 in the kernel, so a forked
    # child (a multiprocessing worker) writes there, and the output reaches the cell.
    os.register_at_fork(after_in_child=_plain_std_streams)
    # Loaded after config: nothing in a config file can leave the guard out.
    app.shell.extension_manager.load_extension("jupyter_qguard")
    _cwd_on_sys_path()
    app.start()


def _cwd_on_sys_path() -> None:
    """`import mymodule` beside the notebook works as in any kernel: IPython adds '' to
    sys.path, but not under -I (it respects sys.flags.safe_path). Added here, confined, once
    ipykernel and the guard's extension are loaded, and where IPython puts it: after the
    standard library (a `json.py` beside a notebook does not shadow the stdlib's), before
    site-packages (as in any notebook, a `numpy.py` there does)."""
    if "" in sys.path:
        return
    packages = [
        i
        for i, p in enumerate(sys.path)
        if os.path.basename(p) in ("site-packages", "dist-packages")
    ]
    sys.path.insert(packages[0] if packages else 0, "")


def main() -> None:
    confinement.check_channel(KERNEL)
    confine(sys.argv[1:])


if __name__ == "__main__":
    main()
