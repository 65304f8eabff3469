"""The Landlock layer: the kernel reads the Python prefix and the system, writes only its
workspace and its own directory, and binds or connects no TCP port; abstract unix sockets and
signals are scoped to its own domain (ABI 6+). Built with landlockpy."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from landlockpy import AccessFS, AccessNet, Ruleset, Scope
from landlockpy import _syscall as _ll

RO = AccessFS.READ_FILE | AccessFS.READ_DIR | AccessFS.EXECUTE
FILE_RIGHTS = (
    AccessFS.EXECUTE
    | AccessFS.WRITE_FILE
    | AccessFS.READ_FILE
    | AccessFS.TRUNCATE
    | AccessFS.IOCTL_DEV
)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# /etc is readable but for these: credentials, keys and other programs' configuration.
ETC_DENY = {
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "ssl",
    "security",
    "jupyter",
    "qguard",
    "krb5.keytab",
    "docker",
    "containerd",
    "cups",
    "NetworkManager",
    "wpa_supplicant",
    "ppp",
    "openvpn",
    "wireguard",
    "credstore",
    "credstore.encrypted",
    "machine-id",
}
DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
PROC_SYS_RO = ("/proc", "/sys/devices/system/cpu", "/sys/fs/cgroup")


def abi_version() -> int:
    """The running kernel's Landlock ABI (0: not available)."""
    try:
        return _ll.abi_version()
    except OSError:
        return 0


def python_paths() -> list[str]:
    """What the interpreter needs to read: its prefixes and everything on sys.path."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        str(Path(sys.executable).resolve().parent),
    }
    paths.update(p for p in sys.path if p)
    out = set()
    for p in paths:
        try:
            real = os.path.realpath(p)
        except OSError:
            continue
        if os.path.exists(real):
            out.add(real)
    return sorted(out)


def etc_entries() -> list[str]:
    try:
        names = os.listdir("/etc")
    except OSError:
        return []
    return [f"/etc/{n}" for n in sorted(names) if n not in ETC_DENY]


def top_level_entries(workspace: str) -> list[str]:
    """Existing entries at the top of the workspace, less the protected ones."""
    from .spec import PROTECTED_NAMES

    protected = {name.split("/")[0] for name in PROTECTED_NAMES}
    try:
        names = os.listdir(workspace)
    except OSError:
        return []
    return [os.path.join(workspace, n) for n in sorted(names) if n not in protected]


def _allow(rs: Ruleset, path: str, rights: AccessFS, granted: dict[str, str]) -> None:
    try:
        is_dir = os.path.isdir(path)
    except OSError:
        return
    if not os.path.exists(path):
        return
    if not is_dir:
        rights &= FILE_RIGHTS
    try:
        rs.allow_path(path, rights)
    except OSError:
        return  # unreadable to us, so it stays denied
    granted[path] = "rw" if rights & AccessFS.WRITE_FILE else "ro"


def apply(
    *,
    workspace: str,
    kernel_dir: str,
    extra_read: list[str],
    extra_rw: list[str] = (),
    guard_top_level: bool = False,
    own_proc: bool = True,
) -> dict[str, Any]:
    """Restrict this process (and its future children) for good; return what was applied."""
    abi = abi_version()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel (or disabled at boot)")
    rs = Ruleset(
        handled_fs=None,
        handled_net=AccessNet.BIND_TCP
        | AccessNet.CONNECT_TCP
        | AccessNet.BIND_UDP
        | AccessNet.CONNECT_SEND_UDP,
        scoped=Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL,
        best_effort=True,
    )
    granted: dict[str, str] = {}
    everything = rs.handled_fs
    with rs:
        for p in (*SYSTEM_DIRS, *python_paths(), *etc_entries(), *extra_read):
            _allow(rs, p, RO, granted)
        for p in PROC_SYS_RO:
            # Without a pid namespace of its own, /proc shows the server and the other kernels
            # (a same-uid process can read their environ): then the kernel gets no /proc.
            if p != "/proc" or own_proc:
                _allow(rs, p, AccessFS.READ_FILE | AccessFS.READ_DIR, granted)
        for p in DEVICES_RW:
            _allow(rs, p, AccessFS.READ_FILE | AccessFS.WRITE_FILE, granted)
        writable = [kernel_dir, "/dev/shm", *extra_rw]
        if guard_top_level:
            _allow(rs, workspace, RO, granted)
            writable += top_level_entries(workspace)
        else:
            writable.append(workspace)
        for p in writable:
            _allow(rs, p, everything, granted)
        rs.restrict()
        return {
            "active": True,
            "abi": abi,
            "handled_fs": int(rs.handled_fs),
            "handled_net": [f.name for f in AccessNet if f and f in rs.handled_net],
            "scoped": [f.name for f in Scope if f and f in rs.scoped],
            "writable": sorted(p for p, mode in granted.items() if mode == "rw"),
            "readable_count": sum(1 for m in granted.values() if m == "ro"),
        }
