"""The broker channel under garbage: every malformed line gets an error reply, the channel and
the server keep serving, and a valid request afterwards succeeds."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jupyter_qguard.broker.channel import PARAMS
from jupyter_qguard.kernel.jobs import encode_circuit

MAX_LINE = 4096
FUZZ_CONFIG = {"channel_max_request_bytes": MAX_LINE, "channel_rate": 1e6, "channel_burst": 10**6}

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.integers(min_value=0, max_value=2**31) | st.text(min_size=1, max_size=12)
bad_ids = (
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)
)
unknown_methods = st.text(max_size=20).filter(lambda m: m not in PARAMS)
bad_job_ids = st.text(max_size=40).filter(
    lambda s: not (len(s) == 32 and all(c in "0123456789abcdef" for c in s))
)


def rpc(msg_id, method, params):
    return {"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}


malformed = st.one_of(
    # bytes that are not JSON at all (no newline: each case is one line)
    st.binary(min_size=0, max_size=200).filter(
        lambda b: b"\n" not in b and b.strip()[:1] not in (b"{", b"[")
    ),
    # JSON that is not a JSON-RPC request object
    json_values.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.dictionaries(
        st.sampled_from(["jsonrpc", "id", "method", "params", "x"]), json_values, max_size=4
    )
    .filter(
        lambda d: (
            not (
                d.get("jsonrpc") == "2.0"
                and isinstance(d.get("method"), str)
                and isinstance(d.get("id"), int | str)
                and not isinstance(d.get("id"), bool)
            )
        )
    )
    .map(json.dumps),
    # a request object with a wrong version, a bad id or an extra member
    st.builds(
        lambda i, m: {"jsonrpc": "1.0", "id": i, "method": m, "params": {}},
        ids,
        st.sampled_from(list(PARAMS)),
    ).map(json.dumps),
    st.builds(
        lambda i, m: {"jsonrpc": "2.0", "id": i, "method": m, "params": {}},
        bad_ids,
        st.sampled_from(list(PARAMS)),
    ).map(json.dumps),
    st.builds(lambda i: {**rpc(i, "whoami", {}), "extra": 1}, ids).map(json.dumps),
    # unknown methods
    st.builds(rpc, ids, unknown_methods, json_values).map(json.dumps),
    # known methods with invalid parameters
    st.builds(
        rpc,
        ids,
        st.sampled_from(["status", "result", "cancel", "wait"]),
        st.builds(lambda j: {"job_id": j}, bad_job_ids),
    ).map(json.dumps),
    st.builds(
        rpc,
        ids,
        st.sampled_from(["whoami", "backends"]),
        st.dictionaries(st.text(min_size=1, max_size=8), json_values, min_size=1, max_size=3),
    ).map(json.dumps),
    st.builds(
        rpc,
        ids,
        st.just("submit"),
        st.builds(
            lambda j: {"job": j}, st.dictionaries(st.text(max_size=8), json_values, max_size=5)
        ),
    ).map(json.dumps),
    st.builds(
        rpc,
        ids,
        st.sampled_from(list(PARAMS)),
        json_values.filter(lambda v: not isinstance(v, dict)),
    ).map(json.dumps),
    # well-formed job ids that do not exist
    st.builds(
        rpc,
        ids,
        st.sampled_from(["status", "result", "cancel"]),
        st.builds(lambda h: {"job_id": h}, st.text("0123456789abcdef", min_size=32, max_size=32)),
    ).map(json.dumps),
    # too long
    st.integers(min_value=MAX_LINE + 1, max_value=3 * MAX_LINE).map(lambda n: "x" * n),
).map(lambda m: m if isinstance(m, bytes) else m.encode())


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    async def send_line(self, data: bytes) -> dict:
        self.writer.write(data + b"\n")
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 10)
        assert line.endswith(b"\n"), "the channel closed instead of replying"
        return json.loads(line)


@pytest.fixture
def conn(jp_serverapp, broker, jp_asyncio_loop):
    server_end, kernel_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    broker.attach_kernel("fuzz-kernel", server_end, {"sandbox": {"env": {"active": True}}})

    async def connect():
        return Conn(*await asyncio.open_unix_connection(sock=kernel_end, limit=2**20))

    c = jp_asyncio_loop.run_until_complete(connect())
    yield c
    c.writer.close()


@pytest.mark.parametrize("qguard_config", [FUZZ_CONFIG], indirect=True)
def test_malformed_messages_each_get_an_error_and_the_broker_goes_on(
    conn, jp_asyncio_loop, jp_fetch
):
    seen = {"n": 0, "codes": set()}

    @settings(
        max_examples=1000,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(malformed)
    def one(data: bytes) -> None:
        reply = jp_asyncio_loop.run_until_complete(conn.send_line(data))
        assert reply["jsonrpc"] == "2.0"
        assert "result" not in reply
        assert isinstance(reply["error"]["code"], int) and reply["error"]["message"]
        try:
            sent = json.loads(data)
        except ValueError:
            sent = None
        if (
            isinstance(sent, dict)
            and isinstance(sent.get("id"), int | str)
            and not isinstance(sent.get("id"), bool)
            and sent.get("jsonrpc") == "2.0"
            and isinstance(sent.get("method"), str)
            and set(sent) <= {"jsonrpc", "id", "method", "params"}
        ):
            assert reply["id"] == sent["id"]
        seen["n"] += 1
        seen["codes"].add(reply["error"]["code"])

    one()
    assert seen["n"] >= 1000
    # Every kind of refusal was exercised, not one repeated a thousand times.
    assert {-32700, -32600, -32601, -32602, -32001, -32003, -32005} <= seen["codes"]

    async def after():
        reply = await conn.send_line(json.dumps(rpc(1, "whoami", {})).encode())
        assert reply["result"]["kernel_id"] == "fuzz-kernel"
        from qiskit import QuantumCircuit

        qc = QuantumCircuit(1)
        qc.x(0)
        qc.measure_all()
        job = {
            "schema": "qguard.job/v1",
            "program": encode_circuit(qc),
            "backend": "aer_simulator",
            "shots": 20,
            "seed": 1,
        }
        reply = await conn.send_line(json.dumps(rpc(2, "submit", {"job": job})).encode())
        job_id = reply["result"]["id"]
        while True:
            reply = await conn.send_line(
                json.dumps(rpc(3, "wait", {"job_id": job_id, "timeout": 5})).encode()
            )
            if reply["result"]["state"] in ("completed", "failed", "rejected"):
                break
        assert reply["result"]["state"] == "completed"
        reply = await conn.send_line(json.dumps(rpc(4, "result", {"job_id": job_id})).encode())
        assert reply["result"]["result"]["counts"] == {"1": 20}
        r = await jp_fetch("qguard", "api", "jobs")
        assert r.code == 200

    jp_asyncio_loop.run_until_complete(after())


@pytest.mark.parametrize(
    "qguard_config", [{"channel_rate": 1.0, "channel_burst": 5}], indirect=True
)
def test_rate_limit_per_kernel(conn, jp_asyncio_loop):
    async def go():
        codes = []
        for i in range(8):
            reply = await conn.send_line(json.dumps(rpc(i, "backends", {})).encode())
            codes.append(reply.get("error", {}).get("code"))
        return codes

    codes = jp_asyncio_loop.run_until_complete(go())
    assert codes[:5] == [None] * 5
    assert codes[5:] == [-32002] * 3


def test_over_deep_json_gets_an_error_and_the_next_submit_runs(conn, jp_asyncio_loop):
    # One over-deep line used to end the channel: json.loads raised RecursionError, which
    # escaped the framing loop, and the kernel's next request met a closed socket (EPIPE).
    deep_array = b"[" * 100_000 + b"]" * 100_000
    deep_params = json.dumps(rpc(7, "submit", {"job": {"x": nested(200)}})).encode()
    deep_id = b'{"jsonrpc": "2.0", "id": 8, "method": "whoami", "params": ' + deep_array + b"}"

    async def go():
        replies = [await conn.send_line(line) for line in (deep_array, deep_params, deep_id)]
        qc_job = {
            "schema": "qguard.job/v1",
            "program": encode_circuit(bell()),
            "backend": "aer_simulator",
            "shots": 10,
            "seed": 1,
        }
        submitted = await conn.send_line(json.dumps(rpc(9, "submit", {"job": qc_job})).encode())
        return replies, submitted

    replies, submitted = jp_asyncio_loop.run_until_complete(go())
    assert [r["error"] for r in replies] == [
        {"code": -32700, "message": "not valid JSON: nested deeper than the parser allows"},
        {"code": -32600, "message": "the request is nested deeper than 64 levels"},
        {"code": -32700, "message": "not valid JSON: nested deeper than the parser allows"},
    ]
    assert [r["id"] for r in replies] == [None, 7, None]
    assert submitted["id"] == 9 and submitted["result"]["state"] in ("pending", "queued")


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"a": [value]}
    return value


def bell():
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(2)
    qc.h(0)
    qc.cx(0, 1)
    qc.measure_all()
    return qc
