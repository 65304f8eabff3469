"""Frames between the server and a program worker (worker_pool.py, worker_launch.py).

A frame is a 4-byte big-endian length, then that many bytes of JSON. JSON, not pickle: the
worker parses what an agent sent, so once it has, everything it says is as untrusted as the
program itself, and unpickling it would run whatever it chose in the server. Bytes (a program's
payload, a QPY export) travel as {"$b": "<base64>"}.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

HEADER = struct.Struct("!I")
BYTES_KEY = "$b"
# Longest frame either side accepts. A request holds one program (the channel caps a request at
# a few MiB); an answer holds facts, a drawing, counts or an export of that program.
MAX_FRAME = 256 << 20


class FrameError(ValueError):
    """A frame that is not one: too long, not JSON, or cut short."""


def encode(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {BYTES_KEY: base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    return obj


def decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {BYTES_KEY} and isinstance(obj[BYTES_KEY], str):
            return base64.b64decode(obj[BYTES_KEY], validate=True)
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def pack(message: dict[str, Any]) -> bytes:
    body = json.dumps(encode(message), separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME:
        raise FrameError(f"a frame of {len(body)} bytes is over the limit of {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def length(header: bytes, limit: int = MAX_FRAME) -> int:
    (n,) = HEADER.unpack(header)
    if n > limit:
        raise FrameError(f"a frame of {n} bytes is over the limit of {limit}")
    return n


def unpack(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise FrameError(f"a frame that is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise FrameError("a frame that is not a JSON object")
    try:
        return decode(message)
    except ValueError as exc:  # bad base64
        raise FrameError(f"a frame with bad bytes: {exc}") from None


# -- the worker's side: a blocking socket --------------------------------------------------


def recv_exactly(sock: Any, n: int) -> bytes | None:
    """`n` bytes, or None when the other end closed before the first of them."""
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise FrameError("the frame was cut short")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: Any) -> dict[str, Any] | None:
    header = recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    body = recv_exactly(sock, length(header))
    if body is None:
        raise FrameError("the frame was cut short")
    return unpack(body)


def send_frame(sock: Any, message: dict[str, Any]) -> None:
    sock.sendall(pack(message))
