"""Probe each sandbox layer on this machine by trying it, in a throwaway child process.

`python -m jupyter_qguard.sandbox.probe [--workspace DIR]` prints JSON: for each layer,
whether it is available and why not. The server runs it once at start (to refuse agent
kernels that cannot meet the minimum isolation, and say why); `jupyter qguard doctor` shows it.
Features are tried, not inferred from version numbers.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

PROBE_UID = 2_099_999_999


def _in_child(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = fn()
        except BaseException as exc:
            result = {"available": False, "why": f"{type(exc).__name__}: {exc}"}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not data:
        return {"available": False, "why": f"the probe died (wait status {status})"}
    return json.loads(data)


def probe_landlock() -> dict[str, Any]:
    from . import landlock

    abi = landlock.abi_version()
    if abi < 1:
        return {"available": False, "why": "landlock_create_ruleset() fails: not in this kernel"}
    from landlockpy import AccessFS, Ruleset

    with Ruleset(handled_fs=AccessFS.READ_FILE) as rs:
        rs.restrict()
    try:
        open("/etc/hostname", "rb").close()
        return {"available": False, "why": "a restricted process could still read a file"}
    except PermissionError:
        pass
    out = {
        "available": True,
        "abi": abi,
        "tcp": abi >= 4,
        "scoping": abi >= 6,
        "udp": abi >= 10,
        "pathname_unix": abi >= 9,
    }
    return out


def probe_seccomp() -> dict[str, Any]:
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    f.add_rule(sc.ERRNO(errno.EPERM), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    f.load()
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
        return {"available": False, "why": "a filtered socket(AF_INET) still succeeded"}
    except PermissionError:
        return {"available": True}


def probe_namespaces() -> dict[str, Any]:
    from . import syscalls as sc

    root = os.geteuid() == 0
    flags = sc.CLONE_NEWNS | sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWIPC | sc.CLONE_NEWUTS
    flags |= sc.CLONE_NEWCGROUP
    if not root:
        flags |= sc.CLONE_NEWUSER
    sc.unshare(flags)
    if not root:
        uid, gid = os.getuid(), os.getgid()
        open("/proc/self/setgroups", "w").write("deny\n")
        open("/proc/self/uid_map", "w").write(f"{uid} {uid} 1\n")
        open("/proc/self/gid_map", "w").write(f"{gid} {gid} 1\n")
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    pid = os.fork()
    if pid == 0:
        try:
            sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
            os._exit(0 if os.getpid() == 1 else 2)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return {"available": False, "why": "could not mount a /proc of the new pid namespace"}
    return {"available": True, "user_namespace": not root}


def probe_nonroot() -> dict[str, Any]:
    from .identity import status_line

    if os.geteuid() != 0:
        return {"available": True, "how": "the server does not run as root"}
    os.setgroups([])
    os.setresgid(PROBE_UID, PROBE_UID, PROBE_UID)
    os.setresuid(PROBE_UID, PROBE_UID, PROBE_UID)
    if os.geteuid() == 0 or status_line("CapEff") != "0" * 16:
        return {"available": False, "why": "setresuid left root or capabilities behind"}
    return {"available": True, "how": "a root server drops each kernel to a uid of its own"}


def probe_idmap(workspace: str) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {
            "available": False,
            "needed": False,
            "why": "not needed: the kernel keeps the server's uid and owns the workspace",
        }
    from . import namespaces
    from .syscalls import CLONE_NEWNS, unshare

    fd = namespaces.idmapped_tree(workspace, PROBE_UID, PROBE_UID)
    unshare(CLONE_NEWNS)
    from . import syscalls as sc

    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.move_mount(fd, workspace)
    st = os.stat(workspace)
    if st.st_uid != PROBE_UID:
        return {"available": False, "why": "the idmapped workspace did not change owner"}
    return {
        "available": True,
        "needed": True,
        "how": "idmapped bind mount (mount_setattr MOUNT_ATTR_IDMAP) of the workspace",
    }


def probe_rlimits() -> dict[str, Any]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 30, 1 << 30))
    return {"available": True}


def probe_cgroup() -> dict[str, Any]:
    from .cgroup import probe

    return probe()


def probe_all(workspace: str | None = None) -> dict[str, Any]:
    workspace = workspace or tempfile.gettempdir()
    return {
        "env": {"available": True, "how": "allowlist built by the provisioner"},
        "cgroup": _in_child(probe_cgroup),
        "nonroot": _in_child(probe_nonroot),
        "namespaces": _in_child(probe_namespaces),
        "idmap": _in_child(lambda: probe_idmap(workspace)),
        "rlimits": _in_child(probe_rlimits),
        "landlock": _in_child(probe_landlock),
        "seccomp": _in_child(probe_seccomp),
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m jupyter_qguard.sandbox.probe")
    p.add_argument("--workspace")
    args = p.parse_args()
    json.dump(probe_all(args.workspace), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
