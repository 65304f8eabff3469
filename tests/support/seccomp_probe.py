"""Run as a script by tests/test_seccomp.py: load one seccomp profile in this fresh process, try
what an attacker would past its socket rules and what ordinary work needs, and print every exact
outcome as one JSON object.

argv: profile, the path of a datagram socket bound outside, the port of a TCP listener outside,
the fd of an inherited unix stream socket (the broker channel's kind).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import json
import multiprocessing
import os
import socket
import sys
import termios
from collections.abc import Callable
from typing import Any

from jupyter_qguard.sandbox import seccomp, seccomp_numbers

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# Numbers from 424 on are the same on every architecture.
NUMBERED = {
    "quotactl_fd": (443, -1, 0, 0, 0),
    "statmount": (457, 0, 0, 0, 0),
    "listmount": (458, 0, 0, 0, 0),
    "lsm_set_self_attr": (460, 0, 0, 0, 0),
    "mseal": (462, 0, 0, 0, 0),  # an ordinary new call: sealing nothing succeeds
    "open_tree_attr": (467, -1, 0, 0, 0),
    "file_getattr": (468, -1, 0, 0, 0),  # ordinary: the kernel's own EINVAL (no path, no size)
}


def outcome(fn: Callable[[], Any]) -> list[Any]:
    try:
        value = fn()
    except OSError as e:
        return ["errno", errno.errorcode.get(e.errno, str(e.errno))]
    except BaseException as e:
        return ["exc", type(e).__name__]
    return ["ok", value]


def raw(nr: int, *args: int) -> int:
    """syscall(nr, *args), the six argument registers all set (no garbage from before)."""
    args = (*args, 0, 0, 0, 0, 0, 0)[:6]
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


def sendmmsg(sock: socket.socket, name: bytes, flags: int) -> int:
    """One message through sendmmsg(2) (Python has no wrapper) to the raw address `name`."""
    data = ctypes.create_string_buffer(b"m")
    iov = _Iovec(ctypes.cast(data, ctypes.c_void_p), 1)
    addr = ctypes.create_string_buffer(name, len(name))
    msg = _Mmsghdr(_Msghdr(ctypes.cast(addr, ctypes.c_void_p), len(name), ctypes.pointer(iov), 1))
    libc.sendmmsg.restype = ctypes.c_int
    r = libc.sendmmsg(sock.fileno(), ctypes.byref(msg), 1, flags)
    if r == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


def sockaddr_un(path: str) -> bytes:
    return socket.AF_UNIX.to_bytes(2, sys.byteorder) + path.encode() + b"\0"


def sockaddr_in(port: int) -> bytes:
    return (
        socket.AF_INET.to_bytes(2, sys.byteorder)
        + port.to_bytes(2, "big")
        + socket.inet_aton("127.0.0.1")
        + bytes(8)
    )


def unix_dgram_sendmsg(path: str) -> int:
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendmsg([b"d"], [], 0, path)


def dgram_pair_sendmsg(path: str) -> int:
    a, _ = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    return a.sendmsg([b"p"], [], 0, path)


def seqpacket_pair_sendmsg(path: str) -> str:
    """A connected seqpacket socket ignores the address: the message reaches its peer."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.sendmsg([b"sp"], [], 0, path)
    return b.recv(8).decode()


def square(x: int) -> int:
    return x * x


def pool_fork() -> int:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return sum(pool.map(square, range(10)))


async def _echo_over_socketpair() -> str:
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(b, b"ping\n")
    line = await reader.readline()
    writer.close()
    b.close()
    return line.decode().strip()


def zmq_inproc() -> str:
    import zmq

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://probe")
    b.connect("inproc://probe")
    a.send(b"inproc")
    got = b.recv().decode()
    a.close(linger=0)
    b.close(linger=0)
    ctx.term()
    return got


def zmq_ipc_bind(tmp: str) -> str:
    """A kernel binds its channels (ipc transport) and the server connects to them."""
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.ROUTER)
    try:
        s.bind(f"ipc://{tmp}/probe.ipc")
        return "bound"
    except zmq.ZMQError as e:
        raise OSError(e.errno, str(e)) from None
    finally:
        s.close(linger=0)
        ctx.term()


def inherited(fd: int) -> str:
    s = socket.socket(fileno=fd)
    got = s.recv(16)
    s.sendall(b"pong:" + got)
    return got.decode()


def clone_newuser() -> str:
    """clone(CLONE_NEWUSER | SIGCHLD) raw: flags are argument 0 on x86_64 and aarch64."""
    pid = raw(seccomp_numbers.number("clone") or -1, 0x10000000 | 17)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "cloned"


def x32_getpid() -> int:
    """A foreign ABI's syscall in a fork: the signal that ended it."""
    pid = os.fork()
    if pid == 0:
        libc.syscall(ctypes.c_long(0x40000000 | 39))
        os._exit(0)
    status = os.waitpid(pid, 0)[1]
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status)


def chmod_setuid(tmp: str) -> None:
    path = os.path.join(tmp, "mode-u")
    open(path, "w").close()
    os.chmod(path, 0o4755)


def main() -> None:
    profile, dgram_path, port, channel_fd = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    tmp = os.path.dirname(dgram_path)
    # the same calls without the filter: what the running kernel itself answers
    before = {name: outcome(lambda a=args: raw(*a)) for name, args in NUMBERED.items()}
    report = seccomp.apply(profile)
    tcp = ("127.0.0.1", port)
    probes: dict[str, Callable[[], Any]] = {
        # AF_UNIX datagrams name their destination in every send: none may be made
        "unix_dgram_socket": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close(),
        "unix_raw_socket": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_RAW).close(),
        "unix_dgram_sendmsg_outside": lambda: unix_dgram_sendmsg(dgram_path),
        "unix_dgram_socketpair": lambda: len(socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)),
        "dgram_pair_sendmsg_outside": lambda: dgram_pair_sendmsg(dgram_path),
        "unix_dgram_sendto_outside": lambda: socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM
        ).sendto(b"t", dgram_path),
        # connection-oriented unix sockets never send to a msg_name
        "unix_stream_sendmsg_outside": lambda: socket.socket(socket.AF_UNIX).sendmsg(
            [b"s"], [], 0, dgram_path
        ),
        "stream_pair_sendmsg_outside": lambda: socket.socketpair()[0].sendmsg(
            [b"s"], [], 0, dgram_path
        ),
        "stream_pair_sendmmsg_outside": lambda: sendmmsg(
            socket.socketpair()[0], sockaddr_un(dgram_path), 0
        ),
        "unix_seqpacket_sendmsg_outside": lambda: socket.socket(
            socket.AF_UNIX, socket.SOCK_SEQPACKET
        ).sendmsg([b"q"], [], 0, dgram_path),
        "seqpacket_pair_sendmsg_outside": lambda: seqpacket_pair_sendmsg(dgram_path),
        "socketpair_inet": lambda: len(socket.socketpair(socket.AF_INET, socket.SOCK_STREAM)),
        # TCP Fast Open connects from a send, out of Landlock's connect() hook: no such flag
        "fastopen_sendto": lambda: socket.socket().sendto(b"f", socket.MSG_FASTOPEN, tcp),
        "fastopen_send_no_address": lambda: socket.socket().send(b"f", socket.MSG_FASTOPEN),
        "fastopen_sendmsg": lambda: socket.socket().sendmsg([b"f"], [], socket.MSG_FASTOPEN, tcp),
        "fastopen_sendmmsg": lambda: sendmmsg(
            socket.socket(), sockaddr_in(port), socket.MSG_FASTOPEN
        ),
        "fastopen_unix_pair": lambda: (lambda p: p[0].send(b"f", socket.MSG_FASTOPEN))(
            socket.socketpair()
        ),
        # without the flag a TCP socket ignores msg_name: unconnected, it sends nothing
        "tcp_sendmsg_name_unconnected": lambda: socket.socket().sendmsg([b"n"], [], 0, tcp),
        # syscalls newer than the installed libseccomp, by number
        **{f"nr_{name}": (lambda a=args: raw(*a)) for name, args in NUMBERED.items()},
        # the rest of the filter, as before
        "tiocsti": lambda: fcntl.ioctl(os.open("/dev/null", os.O_RDONLY), termios.TIOCSTI, b"x"),
        "clone_newuser": clone_newuser,
        "unshare_user": lambda: raw(seccomp_numbers.number("unshare") or -1, 0x10000000),
        "seccomp_new_listener": lambda: raw(seccomp_numbers.number("seccomp") or -1, 1, 8, 0),
        "ptrace_traceme": lambda: raw(seccomp_numbers.number("ptrace") or -1, 0),
        "clone3": lambda: raw(435, 0, 0),
        "openat2": lambda: raw(437, -100, 0, 0, 0),
        "symlink": lambda: os.symlink("/etc/hosts", os.path.join(tmp, "link")),
        "chmod_setuid": lambda: chmod_setuid(tmp),
        "foreign_abi_x32": x32_getpid,
        # what must keep working
        "pool_fork": pool_fork,
        "asyncio_socketpair": lambda: asyncio.run(_echo_over_socketpair()),
        "zmq_inproc": zmq_inproc,
        "zmq_ipc_bind": lambda: zmq_ipc_bind(tmp),
        "inherited_channel": lambda: inherited(int(channel_fd)),
        "stream_pair_works": lambda: (lambda p: (p[0].sendall(b"ok"), p[1].recv(2))[1].decode())(
            socket.socketpair()
        ),
    }
    results = {name: outcome(fn) for name, fn in probes.items()}
    print(json.dumps({"before": before, "results": results, "report": report}))


if __name__ == "__main__":
    main()
