"""The egress proxy and the Jupyter forwarder of `jupyter qguard agent run` (in the CLI).

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
why, start and end) handed to a recorder (connection_log.py) on the CLI's event loop, which
delivers them to the server's audit log; while it cannot, the recorder says why and new
connections are refused. The connections themselves are served in threads, blocking, with the
bytes spliced in the kernel (zero_copy.py): see _Relay for why.

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
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from . import zero_copy
from .manifest import split_host_port

HEAD_LIMIT = 65536
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 15.0
ANSWER_TIMEOUT = 5.0
LINGER_SECONDS, LINGER_BYTES = 1.0, 1 << 20
# Open connections per relay, each with its thread(s): far more than an agent's HTTP clients
# keep, few enough that an agent cannot make the CLI start threads without end.
MAX_CONNECTIONS = 256
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

    def add(self, record: dict[str, Any]) -> None:
        """Take a connection's record; called from the connection's own thread (so it must
        be thread-safe), as the connection ends."""


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
        out = dict(vars(self))  # flat fields of str/int/bool: asdict's deep copy is not needed
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


def _answer(sock: socket.socket, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    head = (
        f"HTTP/1.1 {status} {STATUS_TEXT.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        sock.sendall(head.encode() + body)
        # A lingering close: closed with unread bytes (the rest of a head too long, a
        # request body), the socket would send a reset, and the client could lose the answer.
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER_SECONDS)
        left = LINGER_BYTES
        while left > 0 and (chunk := sock.recv(min(left, 65536))):
            left -= len(chunk)
    except OSError:
        pass


class Ended(Exception):
    """The run is over: its connections are being shut."""


class _Relay(abc.ABC):
    """What the proxy and the forwarder share: the listening socket's acceptor thread, one
    thread per connection (and one more while it relays both ways), one record per
    connection handed to the recorder from that thread, every open connection ended when the
    run ends.

    Threads, not the event loop, because the bytes are the point: a connection's reads and
    writes block in its own thread and splice in the kernel (zero_copy.py), where each wait
    on the loop cost a round of it. The number of open connections is bounded."""

    def __init__(self, recorder: Recorder, log: logging.Logger) -> None:
        self.recorder = recorder
        self.log = log
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()  # the agent's sockets (bounded)
        self._upstreams: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._ending = False

    # -- on the event loop ------------------------------------------------------------------
    def start(self, listener: socket.socket) -> None:
        """Accept on `listener` (made in the agent's network namespace) from now on."""
        listener.setblocking(True)
        self._listener = listener
        self._spawn(self._accept_loop, f"qguard-{self.kind}-accept")

    async def close(self) -> None:
        """End every open connection (the run is over) and wait, up to 5 s, for their
        records."""
        with self._lock:
            self._ending = True
            sockets = [*self._open, *self._upstreams]
            threads = list(self._threads)
        if self._listener is not None:
            _shut(self._listener)  # wakes the blocked accept (EINVAL), then it returns
        for sock in sockets:
            _shut(sock)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, _join, threads, 5.0)
        if self._listener is not None:
            self._listener.close()

    # -- in threads -------------------------------------------------------------------------
    kind = "relay"

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=self._run, args=(target, *args), name=name, daemon=True)
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception:
            self.log.exception("qguard %s: unexpected error", self.kind)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # shut by close(), or the socket is gone
            with self._lock:
                ending, crowded = self._ending, len(self._open) >= MAX_CONNECTIONS
                if not ending and not crowded:
                    self._open.add(sock)
            if ending:
                sock.close()
                return
            if crowded:
                self._record_refusal(sock)
                continue
            _no_delay(sock)
            self._spawn(self._handle, f"qguard-{self.kind}-connection", sock)

    def _record_refusal(self, sock: socket.socket) -> None:
        conn = self.connection()
        conn.reason = f"refused: {MAX_CONNECTIONS} connections are open already"
        conn.ended = utc_now()
        self._hand_over(conn)  # before the agent is told, as in _handle
        self.refuse_crowded(sock)
        sock.close()

    @abc.abstractmethod
    def refuse_crowded(self, sock: socket.socket) -> None:
        """Tell the agent it has too many connections open (where the protocol allows)."""

    def _handle(self, sock: socket.socket) -> None:
        conn = self.connection()
        ended_by_run = False
        refusal: Refused | None = None
        try:
            self.serve(sock, conn)
            ended_by_run = self._ending  # shut while relaying: it returned as if at the end
        except Refused as exc:
            conn.reason = str(exc)  # allowed stays True for a host that was allowed but failed
            refusal = exc
        except (OSError, Ended) as exc:
            ended_by_run = self._ending
            if not ended_by_run:
                conn.reason = (conn.reason + "; " if conn.reason else "") + f"broken: {exc}"
        finally:
            if ended_by_run:
                conn.reason = (conn.reason + "; " if conn.reason else "") + "ended with the run"
            conn.ended = utc_now()
            # Handed over before the agent hears anything: told, it may open the next
            # connection at once, and records keep the order of the connections.
            self._hand_over(conn)
            if refusal is not None:
                _answer(sock, refusal.status, str(refusal))
            with self._lock:
                self._open.discard(sock)
            sock.close()

    def _hand_over(self, conn: Connection) -> None:
        # From this thread, not through the event loop: a loop round per connection (its
        # wake-up, the GIL passed back and forth) was a tenth of a millisecond of each one.
        self.recorder.add(conn.record())

    def connect(self, host: str, port: int, conn: Connection) -> socket.socket:
        """A blocking socket connected to host:port, counted among the open ones (so the run's
        end shuts it too); its address goes into `conn`."""
        upstream = _connected(host, port)
        try:
            upstream.settimeout(None)
            _no_delay(upstream)
            address = str(upstream.getpeername()[0])
        except OSError:
            upstream.close()  # reset as soon as connected: a failed connect, to the caller
            raise
        with self._lock:
            if self._ending:
                upstream.close()
                raise Ended("the run is over")
            self._upstreams.add(upstream)
        conn.address = address
        return upstream

    def release(self, upstream: socket.socket) -> None:
        with self._lock:
            self._upstreams.discard(upstream)
        upstream.close()

    def relay(
        self, client: socket.socket, early: bytes, upstream: socket.socket, conn: Connection
    ) -> None:
        """Both directions until both end: client to upstream in a second thread, upstream
        to client in this one. `early`: what the client sent past the request head."""

        def up(n: int) -> None:
            conn.bytes_up += n

        def down(n: int) -> None:
            conn.bytes_down += n

        if early:
            upstream.sendall(early)
            up(len(early))

        def one_way(src: socket.socket, dst: socket.socket, count: Callable[[int], None]) -> None:
            try:
                zero_copy.pump(src, dst, count)
            except OSError:
                # A reset or a broken pipe is how many clients and servers end a connection:
                # end both sides (so the other direction ends too), as a close would.
                _shut(client)
                _shut(upstream)

        thread = self._spawn(one_way, f"qguard-{self.kind}-up", client, upstream, up)
        try:
            one_way(upstream, client, down)
        finally:
            thread.join()

    def relay_down(self, upstream: socket.socket, client: socket.socket, conn: Connection) -> None:
        """Upstream to client only, until the upstream ends (what the client sends is not
        read; a reset or broken pipe ends it, as in `relay`)."""

        def down(n: int) -> None:
            conn.bytes_down += n

        try:
            zero_copy.pump(upstream, client, down)
        except OSError:
            pass

    @abc.abstractmethod
    def connection(self) -> Connection:
        """The record of a connection just accepted."""

    @abc.abstractmethod
    def serve(self, sock: socket.socket, conn: Connection) -> None:
        """Serve one accepted connection (blocking, in its own thread), filling in `conn`."""

    def gate(self) -> None:
        why = self.recorder.refusing()
        if why:
            raise Refused(
                503, f"qguard: new connections are refused until the audit log takes them: {why}"
            )


def _connected(host: str, port: int) -> socket.socket:
    """A socket connected to host:port within CONNECT_TIMEOUT. An IP address is connected to
    as it is (getaddrinfo's work for a literal took as long as the connect); a name is
    resolved (socket.create_connection, every address in turn)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect((str(ip), port))
    except BaseException:
        sock.close()
        raise
    return sock


def _no_delay(sock: socket.socket) -> None:
    """Small writes go out at once (an MCP message, a websocket frame), as asyncio's own
    transports do; bulk transfers are not slower for it."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _join(threads: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _has_body(headers: list[str]) -> bool:
    """Whether a request head announces a body (RFC 9112 6.3: Transfer-Encoding, or a
    Content-Length other than 0)."""
    for line in headers:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "transfer-encoding" or (name == "content-length" and value.strip() != "0"):
            return True
    return False


def read_head(sock: socket.socket) -> tuple[bytes, bytes] | None:
    """The request head (through its blank line) and what came after it; None when the
    client closed before sending one. Refused: too long, or not within HEAD_TIMEOUT."""
    data = bytearray()
    deadline = time.monotonic() + HEAD_TIMEOUT
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0 and end + 4 <= HEAD_LIMIT:
            return bytes(data[: end + 4]), bytes(data[end + 4 :])
        if len(data) >= HEAD_LIMIT:
            raise Refused(431, "qguard: the request head is too long")
        left = deadline - time.monotonic()
        if left <= 0:
            raise Refused(400, "qguard: no request within 30 s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(HEAD_LIMIT + 4 - len(data))
        except TimeoutError:
            raise Refused(400, "qguard: no request within 30 s") from None
        if not chunk:
            return None
        data += chunk


class EgressProxy(_Relay):
    kind = "proxy"

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

    def refuse_crowded(self, sock: socket.socket) -> None:
        _answer(sock, 503, f"qguard: {MAX_CONNECTIONS} connections are open already")

    def serve(self, sock: socket.socket, conn: Connection) -> None:
        got = read_head(sock)
        if got is None:
            conn.reason = "closed before sending a request"
            return
        head, early = got
        sock.settimeout(None)
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
        upstream = self._open_upstream(host, port, conn)
        try:
            if method == "CONNECT":
                conn.reason = "allowed: in the manifest"
                sock.sendall(f"{version} 200 Connection established\r\n\r\n".encode())
            else:
                conn.reason = "allowed: in the manifest (plain HTTP)"
                out = self._forwarded_head(method, path, version, lines[1:], host, port)
                conn.bytes_up += len(out)
                upstream.sendall(out)
                if not early and not _has_body(lines[1:]):
                    # Nothing more may go up (one request per connection): only the answer
                    # comes down, in this thread, without a second one to wait on the client.
                    self.relay_down(upstream, sock, conn)
                    return
            self.relay(sock, early, upstream, conn)
        finally:
            self.release(upstream)

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

    def _open_upstream(self, host: str, port: int, conn: Connection) -> socket.socket:
        try:
            return self.connect(host, port, conn)
        except TimeoutError:
            raise Refused(504, f"qguard: {host}:{port} did not answer in 15 s") from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise Refused(502, f"qguard: cannot connect to {host}:{port}: {why}") from None


class JupyterForwarder(_Relay):
    """Raw TCP to the Jupyter server the run belongs to."""

    kind = "jupyter"

    def __init__(self, host: str, port: int, recorder: Recorder, log: logging.Logger) -> None:
        super().__init__(recorder, log)
        self.host, self.port = host, port

    def connection(self) -> Connection:
        return Connection(via="jupyter", host=self.host, port=self.port, method="TCP")

    def refuse_crowded(self, sock: socket.socket) -> None:
        pass  # not HTTP here (the agent may speak anything to it): the connection just closes

    def serve(self, sock: socket.socket, conn: Connection) -> None:
        why = self.recorder.refusing()
        if why:
            # Not HTTP here (the agent may speak anything to it): the connection just closes.
            conn.reason = f"refused: the audit log does not take the run's records: {why}"
            return
        try:
            upstream = self.connect(self.host, self.port, conn)
        except OSError as exc:
            conn.reason = f"cannot connect to the Jupyter server: {exc}"
            return
        conn.allowed, conn.reason = True, "this Jupyter server"
        try:
            self.relay(sock, b"", upstream, conn)
        finally:
            self.release(upstream)
