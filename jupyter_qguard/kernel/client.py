"""The agent kernel's side of the broker channel: blocking JSON-RPC over the inherited fd."""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
from typing import Any

CHANNEL_FD_VAR = "QGUARD_CHANNEL_FD"


class QGuardError(RuntimeError):
    """The broker refused or failed a request; the message says why."""

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.data = code, data


class NotAnAgentKernel(QGuardError):
    pass


class BrokerClient:
    """One per kernel process. Thread-safe; replies are matched to requests by id, so a reply
    to a request abandoned by an interrupt is recognised and dropped."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)
        self._sock.setblocking(True)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._buf = bytearray()
        self._pid = os.getpid()

    @classmethod
    def from_environment(cls) -> BrokerClient:
        value = os.environ.get(CHANNEL_FD_VAR)
        if not value:
            raise NotAnAgentKernel(
                "this kernel is not a qguard agent kernel (it has no broker channel); "
                "start the kernel 'Python 3 (qguard agent)'"
            )
        return cls(int(value))

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if os.getpid() != self._pid:
            # A forked child shares the socket; two processes writing one stream would mix
            # their lines. The kernel process is the one that talks to the broker.
            raise QGuardError("the broker channel can only be used from the kernel process")
        with self._lock:
            msg_id = next(self._ids)
            line = json.dumps(
                {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params or {}},
                separators=(",", ":"),
            ).encode()
            self._sock.sendall(line + b"\n")
            while True:
                reply = self._read_line()
                if reply.get("id") != msg_id:
                    continue  # a late reply to an interrupted request
                if "error" in reply:
                    err = reply["error"]
                    raise QGuardError(
                        err.get("message", "broker error"),
                        code=err.get("code"),
                        data=err.get("data"),
                    )
                return reply.get("result")

    def _read_line(self) -> dict[str, Any]:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return json.loads(line)
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise QGuardError("the broker closed this kernel's channel")
            self._buf += chunk


_client: BrokerClient | None = None


def client() -> BrokerClient:
    global _client
    if _client is None:
        _client = BrokerClient.from_environment()
    return _client
