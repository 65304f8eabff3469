"""Entry point of an agent kernel: `python -m jupyter_qguard.sandbox.launch -f CONN`.

Runs in the kernel process before any agent code. First, as the server's user: namespaces and
mounts, the idmapped workspace, then the end of privilege (a root server's kernel becomes a uid
of its own; a user-namespace kernel sheds every capability). Then rlimits, Landlock and
seccomp. It checks that the minimum isolation holds (else it exits, saying which layer is
missing and why), tells the broker what is in force (once, before any agent code runs) and only
then starts ipykernel. One process throughout: no second interpreter start.
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


def isolate(spec: SandboxSpec, report: dict[str, Any]) -> None:
    from . import identity, landlock, namespaces
    from .syscalls import PR_SET_DUMPABLE, drop_all_capabilities, prctl

    root = os.geteuid() == 0
    cwd = os.getcwd()
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
        )
        # The cwd still points into the mounts as they were: enter it again by its path, so the
        # kernel works in the new (idmapped, re-exposed) workspace.
        os.chdir(cwd)
        namespaces.fork_into_pid_namespace()  # returns in the kernel, pid 2 of the namespace
        os.setsid()
        return {"active": True, "namespaces": names, "mounts": mounts, "session": "new"}

    _layer(report, "namespaces", spec, ns)
    if idmapped is not None and report["namespaces"].get("active"):
        report["idmap"] = {"active": True, "workspace": spec.workspace}
    elif root and "idmap" not in report:
        report["idmap"] = {"active": False, "why": "needs the mount namespace"}

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


# -- after ---------------------------------------------------------------------------------


def confine(argv: list[str]) -> None:
    from . import identity, landlock, rlimits, seccomp

    spec = SandboxSpec.from_env()
    report: dict[str, Any] = {}
    isolate(spec, report)
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
        ),
    )
    _layer(report, "seccomp", spec, seccomp.apply)

    missing = [
        f"{name} ({report.get(name, {}).get('why', 'not applied')})"
        for name in spec.minimum
        if not report.get(name, {}).get("active")
    ]
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
    app.start()


def main() -> None:
    _check_channel()
    confine(sys.argv[1:])


if __name__ == "__main__":
    main()
