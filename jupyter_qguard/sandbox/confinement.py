"""The confinement sequence every sandboxed process goes through, in one place.

Two kinds of process are confined: an agent kernel (`launch.py`, then ipykernel) and an
agent's own process (`agent_launch.py`, then the agent's command: `jupyter qguard agent run`).
Both go through the same layers in the same order, so there is one sequence to audit and
`doctor`'s probes cover both: first, with the privilege of whoever started it (the server's
user, or the person's for an agent process), a kernel's own cgroup, the manifest's write
directories, namespaces and mounts, the idmapped workspace, then the end of privilege (a
root-started process becomes a uid of its own; a user-namespace one sheds every capability);
then rlimits, Landlock and seccomp, and the check that the minimum isolation holds. What
differs between the two is a `Target`: what happens right after the namespaces are entered (an
agent process makes its loopback listeners there), whether a new session starts, what else a
root-started process must still reach, the TCP ports it may connect to, and the seccomp
profile. What each does once confined (enter its folder, report over its channel, start
ipykernel or exec the command) stays in its own entry module.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .environment import CHANNEL_FD_VAR
from .spec import SandboxSpec

FAILED_EXIT = 3


@dataclass
class Target:
    """What the confined process is, where the shared sequence needs to know."""

    # "agent kernel" or "agent process": the messages name it ("the agent kernel cannot
    # start"), and by `noun` where it is short ("a mount namespace of the kernel's own").
    what: str
    noun: str
    # Who starts it, for the message when its channel is missing.
    started_by: str
    # A new session (an agent kernel has no terminal). An agent process keeps the person's
    # session, so an interactive agent keeps its terminal; TIOCSTI is closed by seccomp.
    new_session: bool = True
    # Run right after the namespaces are entered, with the starter's privilege (an agent
    # process brings its loopback up and makes its listeners there); its result goes into
    # the namespaces report. An exception fails the namespaces layer.
    in_namespaces: Callable[[], dict[str, Any]] | None = None
    # Besides Python's paths: what a root-started process must still reach through a
    # closed directory above it (the command's install tree, under a 0700 home).
    reach_paths: list[str] = field(default_factory=list)
    # Read-write to it besides its own directory and, when it has a private devpts, ptys.
    extra_rw: list[str] = field(default_factory=list)
    connect_ports: list[int] = field(default_factory=list)
    seccomp_profile: str = "kernel"


@dataclass
class Confined:
    """What confine() leaves: the layers in force, the folder to enter (held open, or why
    it could not be), and the minimum layers that are missing (each with why)."""

    report: dict[str, Any]
    workdir: int | OSError | None
    missing: list[str]


def fail(target: Target, message: str) -> NoReturn:
    sys.stderr.write(f"qguard: the {target.what} cannot start: {message}\n")
    sys.stderr.flush()
    os._exit(FAILED_EXIT)


def check_channel(target: Target) -> int:
    fd_text = os.environ.get(CHANNEL_FD_VAR, "")
    try:
        fd = int(fd_text)
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError("not a socket")
    except (ValueError, OSError) as exc:
        fail(
            target,
            f"it has no channel ({CHANNEL_FD_VAR}={fd_text!r}: {exc}); a qguard {target.what} "
            f"must be started by {target.started_by}",
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


def isolate(spec: SandboxSpec, report: dict[str, Any], target: Target) -> int | OSError | None:
    """Everything done with the starter's privilege. Returns the folder to work in held open
    (or why it could not be), for the entry module to enter once confined."""
    from . import identity, landlock, namespaces
    from .syscalls import PR_SET_DUMPABLE, drop_all_capabilities, prctl

    root = os.geteuid() == 0
    if spec.cgroup is not None:
        # First of all: every process the kernel ever makes starts inside its cgroup.
        _layer(report, "cgroup", spec, lambda: _join_cgroup(spec.cgroup or {}))
    # Where the process was started (outside the workspace, at "/", when spec.cwd names the
    # folder to work in; else in that folder).
    cwd = os.getcwd()
    if spec.write_paths is not None:
        # Made now, by the starter, owned like the workspace root: after the uid drop the
        # process could not create its own lane next to files it may only read.
        report["manifest"] = landlock.prepare_write_paths(spec.workspace, spec.write_paths)
    idmapped = None
    if root and spec.kernel_uid is not None and "idmap" not in spec.disabled:
        try:
            idmapped = namespaces.idmapped_tree(spec.workspace, spec.kernel_uid, spec.kernel_gid)
        except OSError as exc:
            report["idmap"] = {"active": False, "why": f"{exc}; the workspace stays read-only"}

    def ns() -> dict[str, Any]:
        names = namespaces.enter(rootless=not root)
        out: dict[str, Any] = {"active": True, "namespaces": names}
        if target.in_namespaces is not None:
            out.update(target.in_namespaces())
        reach = [*landlock.python_paths(), *target.reach_paths] if root else []
        out["mounts"] = namespaces.prepare_mounts(
            workspace=spec.workspace,
            kernel_dir=spec.kernel_dir,
            idmapped=idmapped,
            python_paths=reach,
            hide_patterns=spec.hide_patterns,
        )
        # The cwd still points into the mounts as they were, below every mount just made (a
        # cwd left there would write past the read-only `.git` binds, on a mount without
        # nosuid): enter it again by its path, so the process sits in the new mounts.
        os.chdir(cwd)
        namespaces.fork_into_pid_namespace()  # returns in the confined process, pid 2
        if target.new_session:
            os.setsid()
        out["session"] = "new" if target.new_session else "the starter's"
        return out

    _layer(report, "namespaces", spec, ns)
    walk = report["namespaces"].get("mounts", {}).get("walk", {})
    if walk and not walk.get("complete"):
        # Shown in the server log (a kernel's stderr is read there) or the person's terminal.
        sys.stderr.write(
            f"qguard: the workspace has more than {walk['dirs']} folders: the walk at "
            f"{target.noun} start stopped there, and repositories (.git) further down are not "
            f"protected in this {target.noun}\n"
        )
    if idmapped is not None and report["namespaces"].get("active"):
        report["idmap"] = {"active": True, "workspace": spec.workspace}
    elif root and "idmap" not in report:
        report["idmap"] = {"active": False, "why": "needs the mount namespace"}

    # The folder to work in, held open now (through the new mounts, with the starter's
    # rights) and entered only once confined: without a mount namespace to re-expose it, a
    # root-started process's uid may have no path to it at all (a 0700 home above it).
    workdir: int | OSError | None = None
    if spec.cwd:
        try:
            workdir = os.open(spec.cwd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            workdir = exc

    try:
        if root:
            if spec.kernel_uid is None:
                fail(target, "it was started as root and no uid of its own was chosen")
            identity.give_dir_to(spec.kernel_dir, spec.kernel_uid, spec.kernel_gid)
            identity.drop_to(spec.kernel_uid, spec.kernel_gid)  # clears every capability
            # Changing credentials made the process non-dumpable (its /proc files root's);
            # it is an ordinary process of its own uid now.
            prctl(PR_SET_DUMPABLE, 1)
        elif report.get("namespaces", {}).get("active"):
            drop_all_capabilities()  # those of the user namespace
    except OSError as exc:
        fail(target, f"could not give up privileges: {exc}")
    return workdir


def _join_cgroup(data: dict[str, Any]) -> dict[str, Any]:
    """Into the cgroup the provisioner made (cgroup.py); or why there is none."""
    from .cgroup import KernelCgroup

    if "why" in data:
        return {"active": False, "why": data["why"]}
    return KernelCgroup.from_spec(data).join()


# -- after ---------------------------------------------------------------------------------


def confine(spec: SandboxSpec, target: Target) -> Confined:
    """Apply every layer to this process, for good, and say what is in force."""
    from .syscalls import libraries_by_soname

    with libraries_by_soname():
        return _confine(spec, target)


def _confine(spec: SandboxSpec, target: Target) -> Confined:
    from . import identity, landlock, rlimits, seccomp

    report: dict[str, Any] = {}
    workdir = isolate(spec, report, target)
    report["env"] = {"active": True, "names": sorted(os.environ)}

    def nonroot() -> dict[str, Any]:
        caps = identity.status_line("CapEff")
        if os.getuid() == 0 or os.geteuid() == 0:
            raise OSError(f"the {target.noun} runs as root")
        if caps != "0" * 16 or identity.status_line("CapPrm") != "0" * 16:
            raise OSError(f"the {target.noun} holds capabilities {int(caps, 16):#x}")
        return {
            "active": True,
            "uid": os.getuid(),
            "gid": os.getgid(),
            "capabilities": identity.status_line("CapEff"),
        }

    _layer(report, "nonroot", spec, nonroot)
    _layer(report, "rlimits", spec, lambda: rlimits.apply(spec.rlimits))
    # The private devpts (if the mount namespace gave one) is the process's own: a kernel's
    # `!cmd` needs it, and so does an agent that runs its tools in a pty.
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
            extra_rw=[*ptys, *target.extra_rw],
            guard_top_level=spec.guard_top_level,
            own_proc=bool(report.get("namespaces", {}).get("active")),
            write_paths=spec.write_paths,
            connect_ports=target.connect_ports,
        ),
    )
    _layer(report, "seccomp", spec, lambda: seccomp.apply(target.seccomp_profile))

    missing = [
        f"{name} ({report.get(name, {}).get('why', 'not applied')})"
        for name in spec.minimum
        if not report.get(name, {}).get("active")
    ]
    manifest = manifest_in_force(spec, report, target)
    if manifest is not None:
        report["manifest"] = manifest
        if not manifest["active"]:
            missing.append(f"manifest ({manifest['why']})")
    return Confined(report=report, workdir=workdir, missing=missing)


def manifest_in_force(
    spec: SandboxSpec, report: dict[str, Any], target: Target
) -> dict[str, Any] | None:
    """Whether an agent's manifest holds in the process (None: no manifest to hold). Its
    write paths are Landlock's write rules; its denied files are hidden in the mount
    namespace. Without that namespace, or with the walk cut short, what must be hidden may
    still be readable: then the process does not start (fail closed), and says why."""
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
                f"its denied files are hidden in a mount namespace of the {target.noun}'s own, "
                f"and there is none ({ns.get('why', 'not applied')})"
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


def send_report(fd: int, report: dict[str, Any], *, ok: bool) -> dict[str, Any]:
    """Tell whoever holds the other end of the channel (the broker, for a kernel; the CLI,
    for an agent process) what is in force, once, before any agent code runs, and wait for
    its answer (a refusal does not wait). Returns the answer (empty when there is none)."""
    import json
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
        buf = b"" if ok else b"\n"
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        sock.close()
    try:
        answer = json.loads(buf)
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}
