"""Linux calls Python's os module lacks: unshare, mount, umount2, the new mount API, openat2,
prctl, capget.

Only what the sandbox needs, through libc. Numbers are those of the generic syscall table,
which x86_64 and aarch64 share for these calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import stat
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)  # the libc this interpreter already has loaded
_libc.syscall.restype = ctypes.c_long
_RESOLVE_STRICT = 0x02 | 0x04 | 0x08  # RESOLVE_NO_MAGICLINKS | NO_SYMLINKS | BENEATH

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4

# The sonames the sandbox's libraries load on Linux (glibc; libseccomp's ABI 2).
_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


@contextlib.contextmanager
def libraries_by_soname() -> Iterator[None]:
    """While confining: ctypes.util.find_library answers from the known sonames where they
    load, and asks as usual otherwise. Unpatched, it runs `ldconfig -p` (a fork and an exec)
    per call, and pyseccomp calls it twice when imported and landlockpy once: ~10 ms of every
    agent kernel's start. Restored after, for the agent's own code."""
    original = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        soname = _SONAMES.get(name)
        if soname is not None:
            try:
                ctypes.CDLL(soname)
                return soname
            except OSError:
                pass
        return original(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = original


_MACHINE = platform.machine()
SYS_open_tree = 428
SYS_move_mount = 429
SYS_openat2 = 437
SYS_mount_setattr = 442
AT_FDCWD = -100
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MNT_DETACH = 0x2
MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_IDMAP = 0x00100000
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    def b(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    _check(
        _libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)),
        f"mount {target}",
    )


def fs_type(fd: int) -> int:
    """f_type of the file system holding `fd` (fstatfs); 0 if it cannot be read."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes; f_type comes first
    if _libc.fstatfs(ctypes.c_int(fd), buf) < 0:
        return 0
    return ctypes.c_long.from_buffer(buf).value


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def prctl(option: int, arg2: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        ),
        f"prctl({option})",
    )


def _syscall(nr: int, *args: object, what: str) -> int:
    _libc.syscall.restype = ctypes.c_long
    return _check(_libc.syscall(ctypes.c_long(nr), *args), what)


def open_tree(path: str, flags: int, dirfd: int = AT_FDCWD) -> int:
    """A mount fd for `path` (relative to `dirfd`; "" with AT_EMPTY_PATH: `dirfd` itself)."""
    return _syscall(
        SYS_open_tree,
        ctypes.c_int(dirfd),
        os.fsencode(path),
        ctypes.c_uint(flags),
        what=f"open_tree {path or dirfd}",
    )


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_HOW_SIZE = ctypes.sizeof(_OpenHow)


def open_beneath(root_fd: int, rel: str, flags: int) -> int:
    """Open `rel` (relative, no `..`) below the directory `root_fd` without following a symlink
    on any component, the last one included: the path is what the walk saw, or nothing.

    openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS where the kernel
    has it (5.6+); otherwise one openat(O_NOFOLLOW) per component, each relative to the last.
    """
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW
    rel = rel.strip("/") or "."
    how = _OpenHow(flags, 0, _RESOLVE_STRICT)
    fd = _libc.syscall(SYS_openat2, root_fd, rel.encode(), ctypes.byref(how), _HOW_SIZE)
    if fd >= 0:
        return fd
    err = ctypes.get_errno()
    if err != errno.ENOSYS:
        raise OSError(err, f"openat2 {rel}: {os.strerror(err)}")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise OSError(errno.EXDEV, f"{rel}: '..' leaves the tree")
    current = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            step = flags if last else os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            nxt = os.open(part, step, dir_fd=current)
            os.close(current)
            current = nxt
            if last and stat.S_ISLNK(os.fstat(current).st_mode):  # O_PATH | O_NOFOLLOW: the link
                raise OSError(errno.ELOOP, f"{rel}: a symbolic link")
        if not parts:
            nxt = os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=current)
            os.close(current)
            current = nxt
        return current
    except BaseException:
        os.close(current)
        raise


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(
    mount_fd: int, attr_set: int, userns_fd: int = 0, recursive: bool = False
) -> None:
    """Set attributes on the mount `mount_fd` (and, recursive, every mount below it). Only the
    attributes named change: unlike a remount, nothing else of the mount must be restated (in
    a user namespace, restating a locked flag wrongly is EPERM)."""
    attr = _MountAttr(attr_set=attr_set, userns_fd=userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _syscall(
        SYS_mount_setattr,
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
        what="mount_setattr",
    )


def mount_setattr_idmap(mount_fd: int, userns_fd: int) -> None:
    mount_setattr(mount_fd, MOUNT_ATTR_IDMAP, userns_fd)


def move_mount(mount_fd: int, target: str) -> None:
    _syscall(
        SYS_move_mount,
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_int(AT_FDCWD),
        os.fsencode(target),
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        what=f"move_mount {target}",
    )


def move_mount_onto(mount_fd: int, target_fd: int, what: str) -> None:
    """Attach `mount_fd` on the very file or directory `target_fd` (an O_PATH fd) names: no
    path is resolved again, so nothing can be swapped in between."""
    _syscall(
        SYS_move_mount,
        ctypes.c_int(mount_fd),
        b"",
        ctypes.c_int(target_fd),
        b"",
        ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH),
        what=f"move_mount {what}",
    )


PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_all_capabilities() -> None:
    """Empty the bounding, ambient, inheritable, permitted and effective sets of this thread
    (the process is single-threaded here). Needed in a user namespace, where the process holds
    every capability of the namespace even though its uid is not 0."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) < 0:
            if ctypes.get_errno() == errno.EINVAL:
                break  # past the last capability this kernel knows
            _check(-1, f"PR_CAPBSET_DROP {cap}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "PR_CAP_AMBIENT")
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")
