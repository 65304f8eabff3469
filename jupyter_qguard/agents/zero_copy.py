"""Relay bytes between two connected sockets without copying them through Python.

Once the egress proxy has read a request's head, the rest of the connection is an opaque byte
stream both ways. Each direction moves through a kernel pipe with `splice(2)`: the bytes never
enter the process, only their count does. The calls block, in the connection's own threads
(egress_proxy.py): driven from the event loop instead, every wait for a socket cost a loop
round (~0.25 ms on a small VM, where a non-blocking connect alone took 0.3 ms against 0.05 ms
blocking), and a 10 MB download through the proxy took twice as long as directly.

Where splice does not apply to a pair of sockets (EINVAL: not a kind the kernel splices), the
bytes are copied through one reusable buffer instead.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable

PIPE_BYTES = 1 << 20
COPY_BYTES = 1 << 18
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_MOVE = getattr(os, "SPLICE_F_MOVE", 1)


def pump(src: socket.socket, dst: socket.socket, count: Callable[[int], None]) -> None:
    """Move everything `src` sends to `dst` until `src` ends, counting; then half-close
    `dst` (its peer sees the end of the stream and can still answer). Both sockets block.
    Raises OSError when either side breaks."""
    if hasattr(os, "splice"):
        try:
            _splice(src, dst, count)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            _copy(src, dst, count)
    else:
        _copy(src, dst, count)
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already gone: nothing more to tell it


def _splice(src: socket.socket, dst: socket.socket, count: Callable[[int], None]) -> None:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # a smaller pipe only means more rounds
            pass
        source, sink = src.fileno(), dst.fileno()
        while n := os.splice(source, w, PIPE_BYTES, flags=_MOVE):
            count(n)
            while n:
                n -= os.splice(r, sink, n, flags=_MOVE)
    finally:
        os.close(r)
        os.close(w)


def _copy(src: socket.socket, dst: socket.socket, count: Callable[[int], None]) -> None:
    buffer = bytearray(COPY_BYTES)
    view = memoryview(buffer)
    while n := src.recv_into(buffer):
        count(n)
        dst.sendall(view[:n])
