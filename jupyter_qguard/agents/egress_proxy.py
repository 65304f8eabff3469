"""The egress proxy and the Jupyter forwarder of `jupyter qguard agent run` (asyncio, in the CLI).

A confined agent process has a network namespace with nothing but loopback, where two
listening sockets were made for it; the CLI accepts on them, so every connection of the agent
arrives here and every outbound connection leaves from the host's namespace, made by the CLI:

- the proxy (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY of the agent) takes `CONNECT host:port` (https,
  or any TCP) and absolute-form plain HTTP requests (`GET http://host:port/path`), and lets
  through only the exact host:port pairs of the agent's manifest (`network.allow`); anything
  else gets an HTTP error with a one-line reason (403: not allowed; 400: not a proxy request;
  502: the host could not be reached; 503: records cannot be delivered). Names are resolved
  here: the agent has no DNS of its own;
- the forwarder stands for "this Jupyter server" (the agent's JUPYTER_URL): raw TCP to the
  server's host and port.

Each connection, allowed or refused, becomes one record (host, port, bytes each way, allowed,
why, start and end) handed to a recorder (connection_log.py), which delivers them to the
server's audit log; while it cannot, the recorder says why and new connections are refused.

Why not a library: the maintained proxies on PyPI (proxy.py, mitmproxy, pproxy) run their own
servers on their own sockets and loops (proxy.py in acceptor processes), none takes a
listening socket made in another network namespace, and none gives a per-connection record
with byte counts that can gate new connections on the audit log; adding those through their
plugin APIs would be more code than this module, which only parses a request head and splices
two sockets.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import zero_copy
from .manifest import split_host_port

HEAD_LIMIT = 65536
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0
CHUNK = 65536
_REQUEST_LINE = re.compile(r"([A-Z]{3,16}) (\S+) (HTTP/1\.[01])")
# Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never forwarded. (The body is
# copied as it comes, so Transfer-Encoding, which frames it, stays.)
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
}


class Recorder(Protocol):
    def refusing(self) -> str | None:
        """Why new connections must be refused now (records cannot be delivered), or None."""

    def add(self, record: dict[str, Any]) -> None: ...


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def normal_host(host: str) -> str:
    """Lowercase, no trailing dot; an IP address in its canonical text."""
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


@dataclass
class Connection:
    """One connection of the agent, as it is recorded."""

    via: str
    host: str = ""
    port: int = 0
    method: str = ""
    address: str = ""
    allowed: bool = False
    reason: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    started: str = field(default_factory=utc_now)
    ended: str = ""

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["reason"] = out["reason"][:300]
        out["host"] = out["host"][:262]
        return {k: v for k, v in out.items() if v != "" or k in ("reason", "host")}


class Refused(Exception):
    """The proxy answers the agent with this status and one-line reason, and closes."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


STATUS_TEXT = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        writer.write(head.encode() + body)
        await writer.drain()
    except (ConnectionError, OSError):
        pass


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]
) -> None:
    """Copy until end of stream, counting; then half-close the other side."""
    try:
        while data := await reader.read(CHUNK):
            count(len(data))
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    conn: Connection,
) -> None:
    def up(n: int) -> None:
        conn.bytes_up += n

    def down(n: int) -> None:
        conn.bytes_down += n

    # In the kernel where it can be (zero_copy.py), else through Python.
    if await zero_copy.relay(client, upstream, up, down):
        return
    await asyncio.gather(_pump(client[0], upstream[1], up), _pump(upstream[0], client[1], down))


class _Relay(abc.ABC):
    """What the proxy and the forwarder share: the recorder, the open connections (ended
    when the run ends), one record per connection."""

    def __init__(self, recorder: Recorder, log: logging.Logger) -> None:
        self.recorder = recorder
        self.log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = self.connection()
        try:
            await self.serve(reader, writer, conn)
        except Refused as exc:
            conn.reason = str(exc)  # allowed stays True for a host that was allowed but failed
            await _answer(writer, exc.status, str(exc))
        except asyncio.CancelledError:
            conn.reason = (conn.reason + "; " if conn.reason else "") + "ended with the run"
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            conn.reason = (conn.reason + "; " if conn.reason else "") + f"broken: {exc}"
        finally:
            conn.ended = utc_now()
            self.recorder.add(conn.record())
            writer.close()
            self._tasks.discard(task)

    @abc.abstractmethod
    def connection(self) -> Connection:
        """The record of a connection just accepted."""

    @abc.abstractmethod
    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        """Serve one accepted connection, filling in `conn`."""

    def gate(self) -> None:
        why = self.recorder.refusing()
        if why:
            raise Refused(
                503, f"qguard: new connections are refused until the audit log takes them: {why}"
            )

    async def close(self) -> None:
        """End every open connection (the run is over)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


class EgressProxy(_Relay):
    def __init__(
        self,
        agent: str,
        allow: frozenset[tuple[str, int]],
        recorder: Recorder,
        log: logging.Logger,
    ) -> None:
        super().__init__(recorder, log)
        self.agent = agent
        self.allow = frozenset((normal_host(h), p) for h, p in allow)

    def connection(self) -> Connection:
        return Connection(via="proxy")

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            raise Refused(431, "qguard: the request head is too long") from None
        except TimeoutError:
            raise Refused(400, "qguard: no request within 30 s") from None
        except asyncio.IncompleteReadError:
            conn.reason = "closed before sending a request"
            return
        lines = head.decode("latin-1").split("\r\n")
        m = _REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            raise Refused(400, "qguard: not an HTTP/1.x request line")
        method, target, version = m.groups()
        conn.method = method
        if method == "CONNECT":
            host, port = self._authority(target)
        else:
            host, port, path = self._absolute(target)
        conn.host, conn.port = host, port
        self.gate()
        if (normal_host(host), port) not in self.allow:
            raise Refused(
                403, f"qguard: {host}:{port} is not in agent {self.agent}'s network allowlist"
            )
        conn.allowed = True
        upstream = await self._open(host, port, conn)
        try:
            if method == "CONNECT":
                conn.reason = "allowed: in the manifest"
                writer.write(f"{version} 200 Connection established\r\n\r\n".encode())
                await writer.drain()
            else:
                conn.reason = "allowed: in the manifest (plain HTTP)"
                out = self._forwarded_head(method, path, version, lines[1:], host, port)
                conn.bytes_up += len(out)
                upstream[1].write(out)
                await upstream[1].drain()
            await splice((reader, writer), upstream, conn)
        finally:
            upstream[1].close()

    @staticmethod
    def _authority(target: str) -> tuple[str, int]:
        try:
            return split_host_port(target)
        except ValueError:
            raise Refused(400, f"qguard: CONNECT needs host:port, not {target[:100]!r}") from None

    @staticmethod
    def _absolute(target: str) -> tuple[str, int, str]:
        if not target.startswith("http://"):
            raise Refused(
                400,
                "qguard: this is an egress proxy: send CONNECT host:port (https) or an absolute "
                "http:// URL",
            )
        try:
            url = urlsplit(target)
            host, port = url.hostname or "", url.port or 80
        except ValueError:
            raise Refused(400, f"qguard: not a URL: {target[:100]!r}") from None
        if not host:
            raise Refused(400, f"qguard: no host in {target[:100]!r}")
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        return host, port, path

    @staticmethod
    def _forwarded_head(
        method: str, path: str, version: str, headers: list[str], host: str, port: int
    ) -> bytes:
        """The request in origin form, hop-by-hop headers out (and those `Connection`
        names), `Connection: close` in: one request per upstream connection, so a second
        request on a kept-alive connection can never reach a host it was not checked for."""
        named = set()
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "connection":
                named |= {v.strip().lower() for v in value.split(",")}
        kept = [
            line
            for line in headers
            if line and line.partition(":")[0].strip().lower() not in HOP_BY_HOP | named
        ]
        if not any(line.partition(":")[0].strip().lower() == "host" for line in kept):
            kept.insert(0, f"Host: {host}" + ("" if port == 80 else f":{port}"))
        return (
            "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
        ).encode("latin-1")

    @staticmethod
    async def _open(
        host: str, port: int, conn: Connection
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT
            )
        except TimeoutError:
            raise Refused(504, f"qguard: {host}:{port} did not answer in 15 s") from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise Refused(502, f"qguard: cannot connect to {host}:{port}: {why}") from None
        peer = writer.get_extra_info("peername")
        conn.address = str(peer[0]) if peer else ""
        return reader, writer


class JupyterForwarder(_Relay):
    """Raw TCP to the Jupyter server the run belongs to."""

    def __init__(self, host: str, port: int, recorder: Recorder, log: logging.Logger) -> None:
        super().__init__(recorder, log)
        self.host, self.port = host, port

    def connection(self) -> Connection:
        return Connection(via="jupyter", host=self.host, port=self.port, method="TCP")

    async def serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        why = self.recorder.refusing()
        if why:
            # Not HTTP here (the agent may speak anything to it): the connection just closes.
            conn.reason = f"refused: the audit log does not take the run's records: {why}"
            return
        try:
            upstream = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            conn.reason = f"cannot connect to the Jupyter server: {exc}"
            return
        conn.allowed, conn.reason = True, "this Jupyter server"
        peer = upstream[1].get_extra_info("peername")
        conn.address = str(peer[0]) if peer else ""
        try:
            await splice((reader, writer), upstream, conn)
        finally:
            upstream[1].close()
