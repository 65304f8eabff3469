"""The egress proxy and the Jupyter forwarder on their own (agents/egress_proxy.py): real
loopback sockets, a real upstream, the records they hand over. The same proxy inside
`jupyter qguard agent run`, with a confined agent, is tested in test_agent_run.py."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time
from typing import Any

import pytest

from jupyter_qguard.agents import egress_proxy
from jupyter_qguard.agents.egress_proxy import EgressProxy, JupyterForwarder

LOG = logging.getLogger("test")


class Records:
    def __init__(self) -> None:
        self.added: list[dict[str, Any]] = []
        self.why: str | None = None

    def refusing(self) -> str | None:
        return self.why

    def add(self, record: dict[str, Any]) -> None:
        self.added.append(record)


class Upstream:
    """A loopback server: answers a plain HTTP request with `body`, or echoes a tunnel
    (upper-cased, so the direction is plain) until the client half-closes."""

    def __init__(self, body: bytes = b"") -> None:
        self.body = body
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
                if self.body and b"\r\n\r\n" in data:
                    self.heads.append(data)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body)
                        + self.body
                    )
                    return
                if not self.body:
                    conn.sendall(chunk.upper())


def listener() -> tuple[socket.socket, int]:
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def started(relay: EgressProxy | JupyterForwarder) -> int:
    """Start `relay` on a fresh loopback listener (in a test, the agent's namespace is this
    one); its port."""
    sock, port = listener()
    relay.start(sock)
    return port


def proxy_to(up: Upstream, records: Records) -> tuple[EgressProxy, int]:
    """A started proxy that lets agent "bot" reach `up` only."""
    proxy = EgressProxy("bot", frozenset({("127.0.0.1", up.port)}), records, LOG)
    return proxy, started(proxy)


async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(fn, *args, **kwargs)
    )


def ask(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if half_close:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


async def settle(records: Records, n: int) -> None:
    for _ in range(200):
        if len(records.added) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(records.added)} records, {n} expected: {records.added}")


async def test_a_plain_http_request_is_forwarded_in_origin_form_with_connection_close():
    body = b"m" * 3_000_000
    up = Upstream(body)
    records = Records()
    proxy, port = proxy_to(up, records)
    head = (
        f"GET http://127.0.0.1:{up.port}/model.bin?x=1 HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{up.port}\r\nProxy-Connection: keep-alive\r\n"
        "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n"
    ).encode()
    answer = await in_thread(ask, port, head, half_close=False)
    assert answer.endswith(body) and answer.startswith(b"HTTP/1.1 200 OK\r\n")
    await settle(records, 1)
    await proxy.close()
    assert up.heads == [
        f"GET /model.bin?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{up.port}\r\nConnection: close"
        "\r\n\r\n".encode()
    ]
    [rec] = records.added
    assert (rec["via"], rec["host"], rec["port"], rec["method"]) == (
        "proxy",
        "127.0.0.1",
        up.port,
        "GET",
    )
    assert rec["allowed"] is True and rec["reason"] == "allowed: in the manifest (plain HTTP)"
    assert rec["bytes_up"] == len(up.heads[0]) and rec["bytes_down"] == len(answer)


class BodyUpstream(Upstream):
    """Reads a request's head and the Content-Length bytes after it, keeps them, and answers
    with the body it got (so the test sees what reached it)."""

    def __init__(self) -> None:
        self.after: list[bytes] = []
        super().__init__()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(dict(
                line.split(": ", 1) for line in head.decode().split("\r\n")[1:]
            ).get("Content-Length", "0"))  # fmt: skip
            while len(body) < length and (chunk := conn.recv(65536)):
                body += chunk
            self.heads.append(head + b"\r\n\r\n" + body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5)
            self.after.append(recv_all(conn))  # what came up after the request


async def test_a_request_body_sent_after_the_head_goes_up_and_nothing_else_does():
    up = BodyUpstream()
    records = Records()
    proxy, port = proxy_to(up, records)
    url = f"http://127.0.0.1:{up.port}/upload"

    def post() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"POST {url} HTTP/1.1\r\nContent-Length: 5\r\n\r\n".encode())
            time.sleep(0.05)  # the body in a packet of its own, after the proxy read the head
            s.sendall(b"hello")
            return recv_all(s)

    assert (await in_thread(post)).endswith(b"\r\n\r\nhello")

    # A request without a body: what the client sends after its head (a second request, in
    # the hope of reaching another host over the same upstream connection) never goes up.
    def smuggle() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"GET {url} HTTP/1.1\r\n\r\n".encode())
            time.sleep(0.05)
            s.sendall(b"GET http://10.0.0.1/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            return recv_all(s)

    assert (await in_thread(smuggle)).endswith(b"Content-Length: 0\r\n\r\n")
    await proxy.close()
    assert up.heads == [
        b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello" % up.port,
        b"GET /upload HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % up.port,
    ]
    assert up.after == [b"", b""]
    post_rec, get_rec = records.added
    assert post_rec["bytes_up"] == len(up.heads[0])
    assert get_rec["bytes_up"] == len(up.heads[1]) and get_rec["reason"] == (
        "allowed: in the manifest (plain HTTP)"
    )


def recv_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


async def test_a_tunnel_relays_both_ways_with_the_bytes_sent_with_its_head():
    up = Upstream()
    records = Records()
    proxy, port = proxy_to(up, records)
    # The first bytes of the tunnel come in the same packet as the CONNECT head.
    answer = await in_thread(
        ask, port, f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\n\r\nhello tunnel".encode()
    )
    assert answer == b"HTTP/1.1 200 Connection established\r\n\r\nHELLO TUNNEL"
    await settle(records, 1)
    await proxy.close()
    [rec] = records.added
    assert rec["reason"] == "allowed: in the manifest" and rec["address"] == "127.0.0.1"
    assert (rec["bytes_up"], rec["bytes_down"]) == (12, 12)


async def test_refusals_answer_with_their_status_and_one_line():
    up = Upstream()
    records = Records()
    proxy, port = proxy_to(up, records)
    free, closed_port = listener()
    free.close()  # nothing listens there now
    allowed_but_down = EgressProxy("bot", frozenset({("127.0.0.1", closed_port)}), records, LOG)
    port2 = started(allowed_but_down)
    cases = [
        (port, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n\r\n", "403 Forbidden",
         "qguard: 127.0.0.1:1 is not in agent bot's network allowlist"),
        (port, b"GET /x HTTP/1.1\r\n\r\n", "400 Bad Request",
         "qguard: this is an egress proxy: send CONNECT host:port (https) or an absolute "
         "http:// URL"),
        (port, b"HELLO\r\n\r\n", "400 Bad Request", "qguard: not an HTTP/1.x request line"),
        (port, b"GET http://a/" + b"x" * 70000 + b" HTTP/1.1\r\n\r\n",
         "431 Request Header Fields Too Large", "qguard: the request head is too long"),
        (port2, f"CONNECT 127.0.0.1:{closed_port} HTTP/1.1\r\n\r\n".encode(), "502 Bad Gateway",
         f"qguard: cannot connect to 127.0.0.1:{closed_port}: Connection refused"),
    ]  # fmt: skip
    for n, (target, request, status, reason) in enumerate(cases, 1):
        answer = (await in_thread(ask, target, request)).decode()
        assert answer.startswith(f"HTTP/1.1 {status}\r\n"), answer
        assert answer.endswith(f"\r\n\r\n{reason}\n"), answer
        # The record was handed over before the agent heard its answer, so it is in before
        # the next connection's (a record queued after the lingering close came in behind
        # the next connection's: CI saw the order of the 431 and the 502 swapped).
        assert [r["reason"] for r in records.added] == [c[3] for c in cases[:n]]
    records.why = "HTTP 503: the audit log is not available"
    answer = await in_thread(ask, port, f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\n\r\n".encode())
    assert answer.decode().endswith(
        "qguard: new connections are refused until the audit log takes them: HTTP 503: the "
        "audit log is not available\n"
    )
    await settle(records, len(cases) + 1)
    await proxy.close()
    await allowed_but_down.close()
    assert [r["allowed"] for r in records.added] == [False, False, False, False, True, False]


async def test_the_end_of_the_run_ends_an_open_tunnel_and_records_it():
    up = Upstream()
    records = Records()
    proxy, port = proxy_to(up, records)
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\n\r\n".encode())
    assert await in_thread(client.recv, 100) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    client.sendall(b"open")
    assert await in_thread(client.recv, 100) == b"OPEN"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await proxy.close()
    assert loop.time() - started < 2
    [rec] = records.added
    assert rec["reason"] == "allowed: in the manifest; ended with the run"
    assert (rec["bytes_up"], rec["bytes_down"]) == (4, 4)
    assert await in_thread(client.recv, 100) == b""  # the proxy shut it
    client.close()
    # And nothing is accepted after.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


async def test_connections_past_the_bound_are_refused(monkeypatch):
    monkeypatch.setattr(egress_proxy, "MAX_CONNECTIONS", 2)
    up = Upstream()
    records = Records()
    proxy, port = proxy_to(up, records)
    held = []
    for _ in range(2):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        c.sendall(f"CONNECT 127.0.0.1:{up.port} HTTP/1.1\r\n\r\n".encode())
        assert await in_thread(c.recv, 100) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        held.append(c)
    answer = (await in_thread(ask, port, b"")).decode()
    assert answer.startswith("HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith("qguard: 2 connections are open already\n")
    # In already, as for every refusal (test_refusals_answer_with_their_status_and_one_line).
    assert records.added[0]["reason"] == "refused: 2 connections are open already"
    await proxy.close()
    for c in held:
        c.close()


async def test_the_forwarder_relays_raw_tcp_to_the_jupyter_server():
    up = Upstream()
    records = Records()
    forwarder = JupyterForwarder("127.0.0.1", up.port, records, LOG)
    port = started(forwarder)
    assert await in_thread(ask, port, b"\x00raw\xffbytes") == b"\x00RAW\xffBYTES"
    await settle(records, 1)
    records.why = "the server is down"
    assert await in_thread(ask, port, b"") == b""
    await settle(records, 2)
    await forwarder.close()
    first, second = records.added
    assert first["reason"] == "this Jupyter server" and first["allowed"] is True
    assert (first["bytes_up"], first["bytes_down"]) == (10, 10)
    assert second["reason"] == (
        "refused: the audit log does not take the run's records: the server is down"
    )
