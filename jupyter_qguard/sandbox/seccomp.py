"""The seccomp layer (libseccomp through pyseccomp): no sockets but AF_UNIX, no connect() at
all (the broker channel is inherited), none of the calls that reach other processes or the
kernel's attack surface, and any syscall of a foreign architecture kills the process.

It is a denylist that refuses what it does not know: every syscall number the filter does not
know as ordinary answers ENOSYS, a second filter's work (seccomp_numbers.py says which numbers
are known and why: the ones libseccomp names below 424, a reviewed table from 424 through Linux
6.18's 469, nothing above). The denied calls are ruled by number, so those newer than the
installed libseccomp (open_tree_attr, statmount, listmount: 2.5.4 names none of them) are
EPERM too, and a name nobody can number fails the layer instead of dropping its rule.

Destinations hide in memory seccomp cannot read (sendmsg's and sendmmsg's msghdr.msg_name), so
the sockets that would send to one are not made: AF_UNIX only of SOCK_STREAM, which refuses a
msg_name (EISCONN; EOPNOTSUPP unconnected), or SOCK_SEQPACKET, which ignores it (ENOTCONN
unconnected), from socket() and socketpair() alike; no datagram socket (nor SOCK_RAW, a
datagram one in AF_UNIX); socketpair() of no other family. sendto() with an address is refused
outright, and so is any send with MSG_FASTOPEN: TCP Fast Open connects from sendto, sendmsg or
sendmmsg, where Landlock's connect() rule never looks (checked on 6.18: a port Landlock refuses
to connect() accepts it).

An agent process (`jupyter qguard agent run`) talks HTTP, so its profile differs in sockets
only: TCP over IPv4 and IPv6 and connect() (its network namespace has nothing but loopback,
where its two listeners are, and Landlock lets it connect to their ports alone; a TCP socket
ignores a msg_name without MSG_FASTOPEN); no UDP, raw or other families, and no AF_UNIX
socket() either (socketpair() stays, as above): below Landlock ABI 9 a pathname socket (D-Bus,
an ssh or gpg agent, another user's service in /tmp) is reachable by connect() whatever the
file rules say. Everything else is the kernel's, TIOCSTI and TIOCLINUX included: an agent
sharing the person's terminal cannot push keystrokes into the shell there.

Two rules protect the people and tools that later touch what the agent wrote:

- No symbolic links at all (`symlink`, `symlinkat`: EPERM). Inside the sandbox a link leads
  nowhere new (Landlock checks the target), but trusted code outside follows it: jupyter_server
  serves and writes through links (an agent token reading `link.json` got the credential it
  pointed at), the watcher and the person's own editor, git and shell do too. Making every
  such reader immune is needed anyway (and done server-side), but the person's own tools are
  out of our reach: so the agent makes none. Hard links stay: a link to a file from outside
  the workspace is refused by Landlock's REFER rule (EXDEV) and the mounts, and a hard link is
  the same file, not a path that points elsewhere later.
- No setuid or setgid bit, ever: chmod/fchmod/fchmodat/fchmodat2, open/openat/creat and
  mknod/mknodat whose mode carries S_ISUID or S_ISGID get EPERM (the workspace is also mounted
  nosuid for the kernel, but the person's own view of it is not). `openat2` passes its mode in
  memory seccomp cannot read, so it answers ENOSYS and libc and runtimes fall back to openat,
  which is checked. mkdir is not filtered: Linux ignores S_ISUID in mkdir's mode, and a setgid
  directory only makes new files inherit its group (harmless; and the kernel sets that bit
  itself under a setgid parent). chmod cannot tell a file from a directory, so `chmod g+s`
  on a directory is refused too; nothing ordinary needs it in a notebook's folder.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import pyseccomp as sc

from . import seccomp_numbers
from .seccomp_numbers import number

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
    "open_tree_attr",
    "statmount",
    "listmount",
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
    "quotactl_fd",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "uselib",
    "symlink",
    "symlinkat",
)
S_ISUID = 0o4000
S_ISGID = 0o2000
# (syscall, index of its mode argument)
MODE_CALLS = (
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
    ("mknod", 1),
    ("mknodat", 2),
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


# Address families are small numbers (AF_MAX is 46 on Linux 6.x); anything above is refused.
FAMILY_LIMIT = 64
TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# Socket types other than SOCK_STREAM (the low 4 bits of socket()'s type argument).
NON_STREAM_TYPES = (
    socket.SOCK_DGRAM,
    socket.SOCK_RAW,
    socket.SOCK_RDM,
    socket.SOCK_SEQPACKET,
    6,  # SOCK_DCCP
    10,  # SOCK_PACKET
)
SOCK_TYPE_MASK = 0xF
# The AF_UNIX types that never send to a msg_name: a stream socket refuses one (EISCONN,
# EOPNOTSUPP unconnected), a seqpacket socket ignores it (ENOTCONN unconnected). A datagram
# socket (SOCK_RAW is one too in AF_UNIX) sends wherever sendmsg's msghdr says, in memory
# seccomp cannot read: so there is none, from socket() or socketpair().
UNIX_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET)
MSG_FASTOPEN = 0x20000000
# (syscall, index of its flags argument): TCP Fast Open connects from a send, past Landlock's
# connect() hook (a sendmsg with MSG_FASTOPEN reaches a port Landlock refuses to connect()).
SEND_CALLS = (("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3))
PROFILES = ("kernel", "agent-process")


def apply(profile: str = "kernel") -> dict[str, Any]:
    if profile not in PROFILES:
        raise ValueError(f"unknown seccomp profile {profile!r}")
    eperm = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    # A binary tree instead of a linear scan of the ruled syscalls: every syscall the kernel
    # makes (futex in OpenMP barriers above all) passes this filter.
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    # Netlink answers EOPNOTSUPP, not EPERM: libzmq (in ipykernel) calls getifaddrs() when it
    # binds, treats EOPNOTSUPP as "no such interface" and any other error as fatal (abort).
    f.add_rule(sc.ERRNO(errno.EOPNOTSUPP), "socket", sc.Arg(0, sc.EQ, socket.AF_NETLINK))
    if profile == "kernel":
        f.add_rule(eperm, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
        _unix_types_only(f, eperm, "socket")
        f.add_rule(eperm, "connect")
        sockets = {"socket": "AF_UNIX stream and seqpacket only", "connect": "denied"}
    else:
        sockets = _tcp_only(f, eperm)
    f.add_rule(eperm, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
    _unix_types_only(f, eperm, "socketpair")
    # A datagram with an explicit address is a connect() in disguise.
    f.add_rule(eperm, "sendto", sc.Arg(4, sc.NE, 0))
    for name, arg in SEND_CALLS:
        f.add_rule(eperm, name, sc.Arg(arg, sc.MASKED_EQ, MSG_FASTOPEN, MSG_FASTOPEN))
    # By number: the calls past the installed libseccomp's table are ruled all the same.
    denied = []
    for name in DENIED:
        nr = number(name)
        if nr is not None:  # None: not a syscall on this architecture
            f.add_rule(eperm, nr)
            denied.append(name)
    # clone3 passes its flags in memory seccomp cannot read: make libc fall back to clone.
    # openat2 likewise hides its mode (a setuid bit) in memory: fall back to openat.
    for name in ("clone3", "openat2"):
        f.add_rule(sc.ERRNO(errno.ENOSYS), number(name))
    mode_rules = []
    for name, arg in MODE_CALLS:
        nr = number(name)
        if nr is None:
            continue  # open, creat, mknod, chmod are not syscalls on aarch64
        for bit in (S_ISUID, S_ISGID):
            f.add_rule(eperm, nr, sc.Arg(arg, sc.MASKED_EQ, bit, bit))
        mode_rules.append(name)
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
    numbers = seccomp_numbers.refuse_unknown()
    return {
        "active": True,
        "profile": profile,
        **sockets,
        "socketpair": "AF_UNIX stream and seqpacket only",
        "send_flags": "MSG_FASTOPEN refused",
        "denied": denied,
        "setuid_setgid_modes": mode_rules,
        "openat2": "ENOSYS",
        "unknown_syscalls": "ENOSYS",
        **numbers,
        "foreign_arch": "kill",
    }


def _unix_types_only(f: Any, eperm: Any, call: str) -> None:
    """`call` (socket or socketpair) of AF_UNIX: only the types of UNIX_TYPES."""
    for kind in range(SOCK_TYPE_MASK + 1):
        if kind not in UNIX_TYPES:
            f.add_rule(
                eperm,
                call,
                sc.Arg(0, sc.EQ, socket.AF_UNIX),
                sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, kind),
            )


def _tcp_only(f: Any, eperm: Any) -> dict[str, str]:
    """socket(): AF_INET and AF_INET6 of SOCK_STREAM only (netlink as above); connect() open,
    since Landlock holds TCP connects to the allowed ports."""
    for family in range(FAMILY_LIMIT):
        if family not in (*TCP_FAMILIES, socket.AF_NETLINK):
            f.add_rule(eperm, "socket", sc.Arg(0, sc.EQ, family))
    f.add_rule(eperm, "socket", sc.Arg(0, sc.GE, FAMILY_LIMIT))
    for family in TCP_FAMILIES:
        for kind in NON_STREAM_TYPES:
            f.add_rule(
                eperm,
                "socket",
                sc.Arg(0, sc.EQ, family),
                sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, kind),
            )
    return {"socket": "AF_INET/AF_INET6 stream only", "connect": "TCP, to the allowed ports"}
