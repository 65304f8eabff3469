"""The Landlock layer: the kernel reads the Python prefix and the system, writes only its
workspace (or, started with an agent token, only the directories its manifest lets it write,
the rest of the workspace read-only) and its own directory, and binds or connects no TCP port
(an agent process: connects to its two loopback listeners' ports only); abstract unix sockets
and signals are scoped to its own domain (ABI 6+). Built with landlockpy."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

from landlockpy import AccessFS, AccessNet, Ruleset, Scope
from landlockpy import _syscall as _ll

from . import syscalls as sc

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
    from .spec import GIT_NAME, PROTECTED_NAMES

    protected = {name.split("/")[0] for name in PROTECTED_NAMES} | {GIT_NAME}
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


def workspace_relative(workspace: str, path: str) -> str:
    """`path` (absolute, normalized) relative to the workspace; ValueError if it lies outside:
    a write rule outside the workspace is never granted on a manifest's word."""
    if not os.path.isabs(path) or os.path.normpath(path) != path:
        raise ValueError(f"write path {path!r} is not an absolute, normalized path")
    if path == workspace:
        return ""
    if not path.startswith(workspace.rstrip("/") + "/"):
        raise ValueError(f"write path {path!r} is outside the workspace {workspace!r}")
    return path[len(workspace.rstrip("/")) + 1 :]


def prepare_write_paths(workspace: str, write_paths: list[str] | None) -> dict[str, Any]:
    """Before privilege ends: create the manifest's write directories that do not exist yet,
    owned like the workspace root (a root server would otherwise leave them root's, and the
    kernel could not write its own lane). Each component is opened or made without following
    a symlink, so a link planted on the way leads nowhere."""
    created, refused = [], []
    if not write_paths:
        return {"created": created, "refused": refused}
    st = os.stat(workspace)
    ws_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for path in write_paths:
            try:
                rel = workspace_relative(workspace, path)
            except ValueError as exc:
                refused.append(str(exc))
                continue
            fd = os.dup(ws_fd)
            try:
                for part in [p for p in rel.split("/") if p]:
                    try:
                        nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    except FileNotFoundError:
                        os.mkdir(part, 0o777, dir_fd=fd)
                        try:
                            os.chown(part, st.st_uid, st.st_gid, dir_fd=fd, follow_symlinks=False)
                        except PermissionError:
                            pass  # a plain server: its own mkdir is already the owner's
                        created.append(path)
                        nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                    os.close(fd)
                    fd = nxt
            except OSError as exc:
                refused.append(f"{path}: {exc.strerror or exc}")
            finally:
                os.close(fd)
    finally:
        os.close(ws_fd)
    return {"created": sorted(set(created)), "refused": refused}


def _allow_beneath(
    rs: Ruleset, ws_fd: int, rel: str, path: str, rights: AccessFS, granted: dict[str, str]
) -> None:
    """A rule on `rel` below the workspace, opened without following symlinks: a write lane
    that is (or passes through) a link is not granted at all (OSError)."""
    fd = sc.open_beneath(ws_fd, rel, os.O_PATH)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        rights &= rs.handled_fs
        if rights:
            _ll.add_path_beneath(
                rs.fileno(), _ll.PathBeneathAttr(allowed_access=int(rights), parent_fd=fd)
            )
            granted[path] = "rw" if rights & AccessFS.WRITE_FILE else "ro"
    finally:
        os.close(fd)


def apply(
    *,
    workspace: str,
    kernel_dir: str,
    extra_read: list[str],
    extra_rw: list[str] = (),
    guard_top_level: bool = False,
    own_proc: bool = True,
    write_paths: list[str] | None = None,
    connect_ports: list[int] | tuple[int, ...] = (),
) -> dict[str, Any]:
    """Restrict this process (and its future children) for good; return what was applied.
    TCP: no bind at all, and connect only to `connect_ports` (none by default)."""
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
        refused: list[str] = []
        if guard_top_level or write_paths is not None:
            _allow(rs, workspace, RO, granted)
        if write_paths is None:
            writable += top_level_entries(workspace) if guard_top_level else [workspace]
        else:
            lanes = [(workspace_relative(workspace, p), p) for p in write_paths]
            ws_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                for rel, path in lanes:
                    if rel == "" and guard_top_level:  # the home's top level stays closed
                        writable += top_level_entries(workspace)
                        continue
                    try:
                        _allow_beneath(rs, ws_fd, rel, path, everything, granted)
                    except OSError as exc:
                        refused.append(f"{path}: {exc.strerror or exc}")
            finally:
                os.close(ws_fd)
        for p in writable:
            _allow(rs, p, everything, granted)
        connect = sorted(
            port for port in set(connect_ports) if rs.allow_port(port, AccessNet.CONNECT_TCP)
        )
        rs.restrict()
        return {
            "active": True,
            "abi": abi,
            "handled_fs": int(rs.handled_fs),
            "handled_net": [f.name for f in AccessNet if f and f in rs.handled_net],
            "scoped": [f.name for f in Scope if f and f in rs.scoped],
            "writable": sorted(p for p, mode in granted.items() if mode == "rw"),
            "readable_count": sum(1 for m in granted.values() if m == "ro"),
            "workspace": "whole" if write_paths is None else "manifest write paths only",
            "connect_tcp": connect,
            **({"write_refused": refused} if refused else {}),
        }
