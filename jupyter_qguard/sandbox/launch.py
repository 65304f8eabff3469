"""Entry point of an agent kernel: `python -I -m jupyter_qguard.sandbox.launch -f CONN`.

Runs in the kernel process before any agent code. The interpreter starts isolated (`-I`: no
working directory on sys.path, no PYTHON* variables, no user site), so nothing in the
workspace is imported before confinement; the launcher itself imports only the standard
library and installed packages. First, as the server's user: the manifest's write directories,
namespaces and mounts (the workspace nosuid/nodev, every `.git` read-only and fixed in place,
the manifest's denied files hidden), the idmapped workspace, then the end of privilege (a root
server's kernel becomes a uid of its own; a user-namespace kernel sheds every capability).
Then rlimits, Landlock and seccomp. Only then does it point bytecode at the kernel's own
directory and enter the notebook's folder. It checks that the minimum isolation holds (else it
exits, saying which layer is missing and why), tells the broker what is in force (once, before
any agent code runs) and only then starts ipykernel. One process throughout: no second
interpreter start.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

from .environment import CHANNEL_FD_VAR
from .spec import SPEC_VAR, SandboxSpec

FAILED_EXIT = 3


def fail(message: str) -> None:
    sys.stderr.write(f"qguard: the agent kernel cannot start: {message}\n")
    sys.stderr.flush()
    os._exit(FAILED_EXIT)


def _check_channel() -> int:
    fd_text = os.environ.get(CHANNEL_FD_VAR, "")
    try:
        fd = int(fd_text)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError("not a socket")
    except (ValueError, OSError) as exc:
        fail(
            f"it has no broker channel ({CHANNEL_FD_VAR}={fd_text!r}: {exc}); a qguard agent "
            "kernel must be started by the qguard kernel provisioner, inside a Jupyter server "
            "with the jupyter_qguard extension"
        )
    return fd


def _layer(report: dict[str, Any], name: str, spec: SandboxSpec, fn: Any) -> None:
    if name in spec.disabled:
        report[name] = {"active": False, "why": "disabled by configuration"}
        return
    try:
        report[name] = fn()
    except (OSError, ValueError, RuntimeError) as exc:
        report[name] = {"active": False, "why": f"{type(exc).__name__}: {exc}"}


# -- before privilege ends -----------------------------------------------------------------


def isolate(spec: SandboxSpec, report: dict[str, Any]) -> int | OSError | None:
    """Everything done with the server's privilege. Returns the notebook's folder held open
    (or why it could not be), for enter_workspace()."""
    from . import identity, landlock, namespaces
    from .syscalls import PR_SET_DUMPABLE, drop_all_capabilities, prctl

    root = os.geteuid() == 0
    # Where the process was started (the provisioner starts it outside the workspace, at "/",
    # when it names the notebook's folder in spec.cwd; else in that folder).
    cwd = os.getcwd()
    if spec.write_paths is not None:
        # Made now, by the server's user, owned like the workspace root: after the uid drop
        # the kernel could not create its own lane next to files it may only read.
        report["manifest"] = landlock.prepare_write_paths(spec.workspace, spec.write_paths)
    idmapped = None
    if root and spec.kernel_uid is not None and "idmap" not in spec.disabled:
        try:
            idmapped = namespaces.idmapped_tree(spec.workspace, spec.kernel_uid, spec.kernel_gid)
        except OSError as exc:
            report["idmap"] = {"active": False, "why": f"{exc}; the workspace stays read-only"}

    def ns() -> dict[str, Any]:
        names = namespaces.enter(rootless=not root)
        mounts = namespaces.prepare_mounts(
            workspace=spec.workspace,
            kernel_dir=spec.kernel_dir,
            idmapped=idmapped,
            python_paths=landlock.python_paths() if root else [],
            hide_patterns=spec.hide_patterns,
        )
        # The cwd still points into the mounts as they were, below every mount just made (a
        # cwd left there would write past the read-only `.git` binds, on a mount without
        # nosuid): enter it again by its path, so the process sits in the new mounts.
        os.chdir(cwd)
        namespaces.fork_into_pid_namespace()  # returns in the kernel, pid 2 of the namespace
        os.setsid()
        return {"active": True, "namespaces": names, "mounts": mounts, "session": "new"}

    _layer(report, "namespaces", spec, ns)
    walk = report["namespaces"].get("mounts", {}).get("walk", {})
    if walk and not walk.get("complete"):
        # Shown in the server log (the kernel's stderr is read there) and in the report.
        sys.stderr.write(
            f"qguard: the workspace has more than {walk['dirs']} folders: the walk at kernel "
            "start stopped there, and repositories (.git) further down are not protected in "
            "this kernel\n"
        )
    if idmapped is not None and report["namespaces"].get("active"):
        report["idmap"] = {"active": True, "workspace": spec.workspace}
    elif root and "idmap" not in report:
        report["idmap"] = {"active": False, "why": "needs the mount namespace"}

    # The notebook's folder, held open now (through the new mounts, with the server's rights)
    # and entered only once confined: without a mount namespace to re-expose it, a root
    # server's kernel uid may have no path to it at all (a 0700 home above the workspace),
    # as the kernel once simply inherited it as its working directory.
    workdir: int | OSError | None = None
    if spec.cwd:
        try:
            workdir = os.open(spec.cwd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            workdir = exc

    try:
        if root:
            if spec.kernel_uid is None:
                fail("the server runs as root and no kernel uid was chosen")
            identity.give_dir_to(spec.kernel_dir, spec.kernel_uid, spec.kernel_gid)
            identity.drop_to(spec.kernel_uid, spec.kernel_gid)  # clears every capability
            # Changing credentials made the process non-dumpable (its /proc files root's);
            # it is an ordinary process of its own uid now.
            prctl(PR_SET_DUMPABLE, 1)
        elif report.get("namespaces", {}).get("active"):
            drop_all_capabilities()  # those of the user namespace
    except OSError as exc:
        fail(f"could not give up privileges: {exc}")
    return workdir


# -- after ---------------------------------------------------------------------------------


def confine(argv: list[str]) -> None:
    from . import identity, landlock, rlimits, seccomp

    spec = SandboxSpec.from_env()
    report: dict[str, Any] = {}
    workdir = isolate(spec, report)
    report["env"] = {"active": True, "names": sorted(os.environ)}

    def nonroot() -> dict[str, Any]:
        caps = identity.status_line("CapEff")
        if os.getuid() == 0 or os.geteuid() == 0:
            raise OSError("the kernel runs as root")
        if caps != "0" * 16 or identity.status_line("CapPrm") != "0" * 16:
            raise OSError(f"the kernel holds capabilities {int(caps, 16):#x}")
        return {
            "active": True,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "capabilities": identity.status_line("CapEff"),
        }

    _layer(report, "nonroot", spec, nonroot)
    _layer(report, "rlimits", spec, lambda: rlimits.apply(spec.rlimits))
    # The private devpts (if the mount namespace gave one) is the kernel's own: `!cmd` needs it.
    mounts = report.get("namespaces", {}).get("mounts", {})
    ptys = ["/dev/ptmx", "/dev/pts"] if mounts.get("devpts") is True else []
    _layer(
        report,
        "landlock",
        spec,
        lambda: landlock.apply(
            workspace=spec.workspace,
            kernel_dir=spec.kernel_dir,
            extra_read=spec.extra_read_paths,
            extra_rw=ptys,
            guard_top_level=spec.guard_top_level,
            own_proc=bool(report.get("namespaces", {}).get("active")),
            write_paths=spec.write_paths,
        ),
    )
    _layer(report, "seccomp", spec, seccomp.apply)

    missing = [
        f"{name} ({report.get(name, {}).get('why', 'not applied')})"
        for name in spec.minimum
        if not report.get(name, {}).get("active")
    ]
    manifest = manifest_in_force(spec, report)
    if manifest is not None:
        report["manifest"] = manifest
        if not manifest["active"]:
            missing.append(f"manifest ({manifest['why']})")
    # Confined now: only from here on may the process look at the workspace as its own.
    report["interpreter"] = enter_workspace(spec, workdir)
    if not report["interpreter"]["active"]:
        missing.append(f"interpreter ({report['interpreter']['why']})")
    report["env"]["names"] = sorted(os.environ)
    fd = _check_channel()
    _send_report(fd, report, ok=not missing)
    if missing:
        fail("minimum isolation not met: " + "; ".join(missing))
    del os.environ[SPEC_VAR]
    # In the pid namespace the kernel's parent is its own init, which ipykernel's parent
    # poller would take for "the server is gone". Parent death is handled by PR_SET_PDEATHSIG.
    if report.get("namespaces", {}).get("active"):
        os.environ.pop("JPY_PARENT_PID", None)
    start_ipykernel(argv)


def manifest_in_force(spec: SandboxSpec, report: dict[str, Any]) -> dict[str, Any] | None:
    """Whether an agent token's manifest holds in the kernel (None: no manifest to hold). Its
    write paths are Landlock's write rules; its denied files are hidden in the mount
    namespace. Without that namespace, or with the walk cut short, what must be hidden may
    still be readable: then the kernel does not start (fail closed), and says why."""
    prepared = report.pop("manifest", {})  # what isolate() did before privilege ended
    if spec.write_paths is None and not spec.hide_patterns:
        return None
    why = []
    out: dict[str, Any] = {"active": True}
    if spec.write_paths is not None:
        ll = report.get("landlock", {})
        out["write_paths"] = list(spec.write_paths)
        out["write_paths_created"] = prepared.get("created", [])
        if prepared.get("refused") or ll.get("write_refused"):
            out["write_paths_refused"] = [
                *prepared.get("refused", []),
                *ll.get("write_refused", []),
            ]
        if not ll.get("active"):
            why.append("its write paths need Landlock, which is not in force")
    if spec.hide_patterns:
        out["hide_patterns"] = list(spec.hide_patterns)
        ns = report.get("namespaces", {})
        hidden = ns.get("mounts", {}).get("hidden") if ns.get("active") else None
        if hidden is None:
            why.append(
                "its denied files are hidden in a mount namespace of the kernel's own, and "
                f"there is none ({ns.get('why', 'not applied')})"
            )
        elif not hidden.get("complete"):
            why.append(
                "the workspace has more folders than the walk at start visits "
                f"({ns['mounts']['walk']['dirs']}): denied files beyond them could not be hidden"
            )
        elif hidden.get("failed_count"):
            why.append("some denied files could not be hidden: " + "; ".join(hidden["failed"]))
        else:
            out["hidden"] = hidden["count"]
    if why:
        return {**out, "active": False, "why": " and ".join(why)}
    return out


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


def _send_report(fd: int, report: dict[str, Any], *, ok: bool) -> None:
    """Tell the broker what is in force, once, before any agent code runs."""
    import socket

    sock = socket.socket(fileno=os.dup(fd))
    try:
        msg = {
            "jsonrpc": "2.0",
            "id": "sandbox-report",
            "method": "sandbox_report",
            "params": {"ok": ok, "layers": report},
        }
        sock.sendall(json.dumps(msg).encode() + b"\n")
        buf = b"" if ok else b"\n"  # a refusal does not wait for the broker's answer
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        sock.close()


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
    _check_channel()
    confine(sys.argv[1:])


if __name__ == "__main__":
    main()
