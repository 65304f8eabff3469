"""The by-number half of the seccomp layer: which syscall numbers the filter knows, and a second,
tiny filter that answers ENOSYS to every number it does not.

The filter in seccomp.py names syscalls through libseccomp, which cannot name what is newer
than itself (2.5.4, Debian 12's, knows nothing past 456): a denylist built on its names would
let every newer call run. So what the filter *knows* is fixed here, not by the library:

- below 424, the numbers libseccomp names on this architecture (those tables are old and
  complete) and the few it may not (`ARCH_EXTRA`);
- from 424 on, where every architecture numbers syscalls alike, the calls of `UNIFIED`: each
  one reviewed, through Linux 6.18 (whose highest number is `HIGHEST_REVIEWED`, 469);
- nothing above that.

Every other number of the native ABI (gaps included: a kernel may fill one, as x86_64's 335
and 336 were) answers ENOSYS, the answer of a kernel without the call, so libc and runtimes
fall back to the older call they know. libseccomp has no rule on a range of numbers, and a rule
per number (some 660 up to 1024) costs ~20 ms of every kernel's start; a classic-BPF program of
a few instructions per range does it for every number up to 2^32. Its ranges come from
`unknown_ranges`. Seccomp runs every filter loaded and takes the strictest answer: a foreign
ABI (x32, i386) is the first filter's (kill), the denied calls its EPERM.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from functools import cache

import pyseccomp as sc

UNIFIED_FROM = 424
HIGHEST_REVIEWED = 469
# 424..469 as of Linux 6.18, the same numbers on x86_64, aarch64 and every other architecture.
# Absent on purpose, so unknown (ENOSYS): 460 lsm_set_self_attr (nothing ordinary sets its own
# LSM attributes; the older way, /proc/self/attr, is read-only under Landlock).
UNIFIED = {
    424: "pidfd_send_signal",
    425: "io_uring_setup",
    426: "io_uring_enter",
    427: "io_uring_register",
    428: "open_tree",
    429: "move_mount",
    430: "fsopen",
    431: "fsconfig",
    432: "fsmount",
    433: "fspick",
    434: "pidfd_open",
    435: "clone3",
    436: "close_range",
    437: "openat2",
    438: "pidfd_getfd",
    439: "faccessat2",
    440: "process_madvise",
    441: "epoll_pwait2",
    442: "mount_setattr",
    443: "quotactl_fd",
    444: "landlock_create_ruleset",
    445: "landlock_add_rule",
    446: "landlock_restrict_self",
    447: "memfd_secret",
    448: "process_mrelease",
    449: "futex_waitv",
    450: "set_mempolicy_home_node",
    451: "cachestat",
    452: "fchmodat2",
    453: "map_shadow_stack",
    454: "futex_wake",
    455: "futex_wait",
    456: "futex_requeue",
    457: "statmount",
    458: "listmount",
    459: "lsm_get_self_attr",
    461: "lsm_list_modules",
    462: "mseal",
    463: "setxattrat",
    464: "getxattrat",
    465: "listxattrat",
    466: "removexattrat",
    467: "open_tree_attr",
    468: "file_getattr",
    469: "file_setattr",
}
UNIFIED_BY_NAME = {name: nr for nr, name in UNIFIED.items()}
# Below 424, what libseccomp 2.5 does not name: x86_64's uretprobe and uprobe (the kernel's own
# trampolines call them in a probed process; refusing them would crash it under a host tracer).
ARCH_EXTRA = {sc.Arch.X86_64: {335: "uretprobe", 336: "uprobe"}}
U32_MAX = 0xFFFFFFFF


def number(name: str) -> int | None:
    """`name`'s number on the native architecture; None if it has no such call. Raises if
    neither this table nor libseccomp knows the name: a rule must never be dropped unseen."""
    if name in UNIFIED_BY_NAME:
        return UNIFIED_BY_NAME[name]
    nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
    if nr == -1:
        raise OSError(errno.ENOSYS, f"seccomp: no syscall number known for {name}")
    return nr if nr >= 0 else None  # libseccomp's negative pseudo-numbers: not on this arch


def _named(arch: int, nr: int) -> bool:
    try:
        sc.resolve_syscall(arch, nr)
    except ValueError:
        return False
    return True


@cache
def unknown_ranges(arch: int) -> tuple[tuple[int, int], ...]:
    """The numbers the filter does not know on `arch` (a libseccomp arch token), as sorted,
    inclusive ranges; the last one runs to 2^32 - 1."""
    extra = ARCH_EXTRA.get(arch, {})
    known = {nr for nr in range(UNIFIED_FROM) if nr in extra or _named(arch, nr)}
    known |= set(UNIFIED)
    ranges: list[tuple[int, int]] = []
    for nr in range(HIGHEST_REVIEWED + 1):
        if nr in known:
            continue
        if ranges and ranges[-1][1] == nr - 1:
            ranges[-1] = (ranges[-1][0], nr)
        else:
            ranges.append((nr, nr))
    ranges.append((HIGHEST_REVIEWED + 1, U32_MAX))
    return tuple(ranges)


# Classic BPF, as seccomp reads it (linux/filter.h, linux/seccomp.h).
_LD_W_ABS = 0x20
_JGT_K = 0x25
_JGE_K = 0x35
_JEQ_K = 0x15
_RET_K = 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ENOSYS = 0x00050000 | errno.ENOSYS
_NR, _ARCH = 0, 4  # offsets in struct seccomp_data
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2


def program(arch: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions: the native ABI's unknown numbers → ENOSYS, all else
    allowed (the first filter has the final word on it)."""
    insns = [
        (_LD_W_ABS, 0, 0, _ARCH),
        (_JEQ_K, 1, 0, arch),
        (_RET_K, 0, 0, _RET_ALLOW),  # a foreign ABI: the first filter kills it
        (_LD_W_ABS, 0, 0, _NR),
    ]
    for lo, hi in unknown_ranges(arch):
        if hi < U32_MAX:
            insns.append((_JGT_K, 3, 0, hi))  # past this range: on to the next one
        insns += [(_JGE_K, 0, 1, lo), (_RET_K, 0, 0, _RET_ENOSYS), (_RET_K, 0, 0, _RET_ALLOW)]
    insns.append((_RET_K, 0, 0, _RET_ALLOW))
    return insns


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def refuse_unknown() -> dict[str, int]:
    """Load the ENOSYS filter in this thread (after the first one, which set no_new_privs)."""
    arch = sc.system_arch()
    insns = program(arch)
    code = ctypes.create_string_buffer(b"".join(struct.pack("=HBBI", *i) for i in insns))
    prog = _Fprog(len(insns), ctypes.cast(code, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    if libc.prctl(
        _PR_SET_SECCOMP, ulong(_SECCOMP_MODE_FILTER), ctypes.byref(prog), ulong(0), ulong(0)
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: the ENOSYS filter did not load: {errno.errorcode.get(err)}")
    return {"highest_known": HIGHEST_REVIEWED, "unknown_ranges": len(unknown_ranges(arch))}
