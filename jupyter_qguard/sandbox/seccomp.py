"""The seccomp layer (libseccomp through pyseccomp): no sockets but AF_UNIX, no connect() at
all (the broker channel is inherited), none of the calls that reach other processes or the
kernel's attack surface, and any syscall of a foreign architecture kills the process."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pyseccomp as sc

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "bpf",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "perf_event_open",
    "fanotify_init",
    "userfaultfd",
    "open_by_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "quotactl",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "uselib",
)
CLONE_NS_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3


def apply() -> dict[str, Any]:
    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    # A binary tree instead of a linear scan of the ruled syscalls: every syscall the kernel
    # makes (futex in OpenMP barriers above all) passes this filter.
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    # Netlink answers EOPNOTSUPP, not EPERM: libzmq (in ipykernel) calls getifaddrs() when it
    # binds, treats EOPNOTSUPP as "no such interface" and any other error as fatal (abort).
    f.add_rule(sc.ERRNO(errno.EOPNOTSUPP), "socket", sc.Arg(0, sc.EQ, socket.AF_NETLINK))
    f.add_rule(eperm, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    f.add_rule(eperm, "connect")
    # A datagram with an explicit address is a connect() in disguise.
    f.add_rule(eperm, "sendto", sc.Arg(4, sc.NE, 0))
    denied = []
    for name in DENIED:
        try:
            f.add_rule(eperm, name)
            denied.append(name)
        except (OSError, ValueError):
            pass  # not a syscall on this architecture
    # clone3 passes its flags in memory seccomp cannot read: make libc fall back to clone.
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in CLONE_NS_FLAGS:
        f.add_rule(eperm, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in (TIOCSTI, TIOCLINUX):
        f.add_rule(eperm, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    f.add_rule(
        eperm,
        "seccomp",
        sc.Arg(0, sc.EQ, SECCOMP_SET_MODE_FILTER),
        sc.Arg(1, sc.MASKED_EQ, SECCOMP_FILTER_FLAG_NEW_LISTENER, SECCOMP_FILTER_FLAG_NEW_LISTENER),
    )
    f.load()
    return {
        "active": True,
        "socket": "AF_UNIX only",
        "connect": "denied",
        "denied": denied,
        "foreign_arch": "kill",
    }
