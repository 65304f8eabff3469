"""The server's side of `jupyter qguard agent run`: the agent-runs routes, over the real REST API
of a real server. A run mints a token with a lease; renewing extends it, a lapsed lease is
never revived, ending the run revokes it. Only the person's identity reaches these routes: the
run's own token gets 403 on every one (an agent cannot mint itself tokens, renew, end or
rewrite its records). Every record goes to the audit log, and when the log refuses, the run
is refused too (fail closed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

MANIFEST = """
contents: {read: ["*"], write: ["agent/*"], deny: [".*", "*/.*"]}
backends: ["aer_*"]
limits: {max_shots: 100, max_cost_per_job: 0, rate: {jobs: 5, per_seconds: 60}}
network: {allow: ["api.example.com:443", "[::1]:8080"]}
"""
RECORD = {
    "seq": 0,
    "via": "proxy",
    "method": "CONNECT",
    "host": "api.example.com",
    "port": 443,
    "address": "192.0.2.7",
    "allowed": True,
    "reason": "allowed: in the manifest",
    "bytes_up": 517,
    "bytes_down": 4096,
    "started": "2026-12-02T10:00:00.000+00:00",
    "ended": "2026-12-02T10:00:01.000+00:00",
}


async def call(
    jp_fetch: Any, method: str, *parts: str, body: Any = None, token: str = "", **params: Any
) -> Any:
    kwargs: dict[str, Any] = {"method": method, "raise_error": False, "params": params}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    if token:
        kwargs["headers"] = {"Authorization": f"token {token}"}
    r = await jp_fetch(*parts, **kwargs)
    text = r.body.decode() if r.body else ""
    return r.code, json.loads(text) if text.startswith("{") else text


async def start(jp_fetch: Any, **body: Any) -> dict[str, Any]:
    code, run = await call(
        jp_fetch,
        "POST",
        "qguard",
        "api",
        "agent-runs",
        body={"name": "bot", "manifest": MANIFEST, "command": ["mcp-server", "--stdio"], **body},
    )
    assert code == 201, run
    return run


def entries(broker: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in broker.audit.tail(1000) if e["kind"] == kind]


async def test_a_run_mints_a_leased_token_that_ends_with_it(
    jp_fetch: Any, broker: Any, jp_root_dir: Any, jp_serverapp: Any
) -> None:
    from jupyter_qguard.agents.manifest import Manifest

    tokens = jp_serverapp.web_app.settings["qguard_agent_tokens"]
    mine, _ = tokens.create("bot", Manifest.load(None, policy_dir=tokens.policy_dir))
    run = await start(jp_fetch, lease_seconds=30)
    assert run["lease_seconds"] == 30 and run["agent"] == "bot"
    assert run["root_dir"] == str(jp_root_dir)
    assert run["manifest"]["network"]["allow"] == ["api.example.com:443", "[::1]:8080"]
    token, rid = run["token"], run["id"]
    assert (await call(jp_fetch, "GET", "api", "contents", token=token))[0] == 200
    code, renewed = await call(
        jp_fetch, "POST", "qguard", "api", "agent-runs", rid, "lease", body={}
    )
    assert code == 200 and renewed["expires_at"] >= run["expires_at"]
    summary = {"ok": True, "active": ["env", "landlock"], "uid": 2100000001}
    assert (await call(jp_fetch, "POST", "qguard/api/agent-runs", rid, "sandbox", body=summary))[
        0
    ] == 200
    batch = {
        "connections": [RECORD, {**RECORD, "seq": 1, "allowed": False, "reason": "not allowed"}]
    }
    code, out = await call(
        jp_fetch, "POST", "qguard/api/agent-runs", rid, "connections", body=batch
    )
    assert (code, out["recorded"]) == (200, 2)
    # The same batch again (its answer lost, or the CLI gave up waiting): written once.
    code, out = await call(
        jp_fetch, "POST", "qguard/api/agent-runs", rid, "connections", body=batch
    )
    assert (code, out["recorded"]) == (200, 0)
    code, out = await call(jp_fetch, "DELETE", "qguard/api/agent-runs", rid, exit_status=3)
    assert (code, out["connections"]) == (200, 2)
    assert (await call(jp_fetch, "GET", "api", "contents", token=token))[0] == 403
    # A late call about an ended run says so.
    for method, parts, body in (
        ("DELETE", ("qguard/api/agent-runs", rid), None),
        ("POST", ("qguard/api/agent-runs", rid, "lease"), {}),
        ("POST", ("qguard/api/agent-runs", rid, "connections"), {"connections": [RECORD]}),
    ):
        code, text = await call(jp_fetch, method, *parts, body=body)
        assert code == 409 and text["message"] == (
            f"agent run {rid} has ended (exited): its token is dead"
        ), text

    [started] = entries(broker, "agent_run.started")
    assert started["run"] == rid and started["agent"] == "bot"
    assert started["network"] == ["::1:8080", "api.example.com:443"]
    assert (started["program"], started["arguments"], started["lease_seconds"]) == (
        "mcp-server",
        1,
        30,
    )
    assert "--stdio" not in json.dumps(started)
    [confined] = entries(broker, "agent_run.confined")
    assert confined["active"] == ["env", "landlock"] and confined["uid"] == 2100000001
    conns = entries(broker, "agent_run.connection")
    assert [
        (c["host"], c["port"], c["allowed"], c["bytes_up"], c["bytes_down"]) for c in conns
    ] == [
        ("api.example.com", 443, True, 517, 4096),
        ("api.example.com", 443, False, 517, 4096),
    ]
    [ended] = entries(broker, "agent_run.ended")
    assert (ended["reason"], ended["exit_status"], ended["connections"], ended["refused"]) == (
        "exited",
        3,
        2,
        1,
    )
    # The run's token row says so too; the person's own token of the same name is untouched.
    states = {t["id"]: t["state"] for t in tokens.list()}
    assert (states[run["token_id"]], states[mine["id"]]) == ("revoked", "active")


async def test_the_runs_own_token_reaches_none_of_the_run_routes(
    jp_fetch: Any, broker: Any
) -> None:
    run = await start(jp_fetch)
    token, rid = run["token"], run["id"]
    forged = {"connections": [{**RECORD, "host": "evil.example", "allowed": True}]}
    attempts = [
        ("POST", ("qguard/api/agent-runs",), {"name": "escape", "manifest": MANIFEST}),
        ("POST", ("qguard/api/agent-runs", rid, "lease"), {}),
        ("POST", ("qguard/api/agent-runs", rid, "sandbox"), {"ok": True, "active": []}),
        ("POST", ("qguard/api/agent-runs", rid, "connections"), forged),
        ("DELETE", ("qguard/api/agent-runs", rid), None),
    ]
    for method, parts, body in attempts:
        code, text = await call(jp_fetch, method, *parts, body=body, token=token)
        assert code == 403, (method, parts, text)
    assert [e["run"] for e in entries(broker, "agent_run.started")] == [rid]
    assert entries(broker, "agent_run.connection") == []
    assert entries(broker, "agent_run.ended") == []
    assert (await call(jp_fetch, "GET", "api", "contents", token=token))[0] == 200


async def test_a_lapsed_lease_is_never_revived(jp_fetch: Any, broker: Any) -> None:
    run = await start(jp_fetch, lease_seconds=5)
    token, rid = run["token"], run["id"]
    await asyncio.sleep(5.5)
    assert (await call(jp_fetch, "GET", "api", "contents", token=token))[0] == 403
    # Whether the server's sweep (every 5 s) has ended the run yet or not: a 409, and the
    # token stays dead.
    code, text = await call(jp_fetch, "POST", "qguard/api/agent-runs", rid, "lease", body={})
    assert code == 409 and text["message"] in (
        f"agent run {rid} has ended (lease lapsed): its token is dead",
        f"the lease of agent run {rid} lapsed at {run['expires_at']} (or its token was revoked): "
        "its token is dead and stays so",
    ), text
    assert (await call(jp_fetch, "GET", "api", "contents", token=token))[0] == 403
    for _ in range(40):  # the sweep writes the end of the run
        if entries(broker, "agent_run.ended"):
            break
        await asyncio.sleep(0.25)
    [ended] = entries(broker, "agent_run.ended")
    assert (ended["run"], ended["reason"], ended["exit_status"]) == (rid, "lease lapsed", None)
    code, text = await call(jp_fetch, "POST", "qguard/api/agent-runs", rid, "lease", body={})
    assert (code, text["message"]) == (
        409,
        f"agent run {rid} has ended (lease lapsed): its token is dead",
    )


@pytest.mark.parametrize(
    "body,message",
    [
        (
            {"name": "bot", "manifest": MANIFEST.replace(', write: ["agent/*"]', "")},
            "agent run: contents: 'write' is a required property",
        ),
        ({"name": "bot", "manifest": MANIFEST.replace("443", "99999")}, "no such port"),
        (
            {"name": "bot", "manifest": MANIFEST.replace("api.example.com", "*.example.com")},
            "does not match",
        ),
        ({"name": "bot", "lease_seconds": 1}, "lease_seconds: 1 is less than the minimum of 5"),
        ({"name": "bot", "env": {"A": "1"}}, "Additional properties are not allowed"),
        ({"name": "b/t"}, "agent name 'b/t'"),
    ],
)
async def test_a_bad_start_is_a_400_that_says_why(
    jp_fetch: Any, broker: Any, body: dict[str, Any], message: str
) -> None:
    code, text = await call(jp_fetch, "POST", "qguard", "api", "agent-runs", body=body)
    assert code == 400 and message in text["message"], text
    assert entries(broker, "agent_run.started") == []


async def test_bad_records_and_unknown_runs(jp_fetch: Any, broker: Any) -> None:
    run = await start(jp_fetch)
    rid = run["id"]
    for bad in (
        {"connections": [{**RECORD, "port": 70000}]},
        {"connections": [{**RECORD, "via": "elsewhere"}]},
        {"connections": [{k: v for k, v in RECORD.items() if k != "allowed"}]},
        {"connections": [{k: v for k, v in RECORD.items() if k != "seq"}]},
        {"connections": [{**RECORD, "seq": -1}]},
        {"records": []},
    ):
        code, _ = await call(
            jp_fetch, "POST", "qguard/api/agent-runs", rid, "connections", body=bad
        )
        assert code == 400, bad
    assert entries(broker, "agent_run.connection") == []
    other = "f" * 32
    for method, parts, body in (
        ("POST", ("qguard/api/agent-runs", other, "lease"), {}),
        ("POST", ("qguard/api/agent-runs", other, "connections"), {"connections": []}),
        ("DELETE", ("qguard/api/agent-runs", other), None),
    ):
        assert (await call(jp_fetch, method, *parts, body=body))[0] == 404


async def test_when_the_audit_log_refuses_so_does_the_run(
    jp_fetch: Any, broker: Any, jp_serverapp: Any
) -> None:
    run = await start(jp_fetch)
    token, rid = run["token"], run["id"]
    broker.audit.path.write_bytes(b"")  # cut: the log takes nothing until it is verified
    batch = {"connections": [RECORD]}
    code, text = await call(
        jp_fetch, "POST", "qguard/api/agent-runs", rid, "connections", body=batch
    )
    assert code == 503 and "audit log" in text["message"], text
    code, text = await call(
        jp_fetch, "POST", "qguard", "api", "agent-runs", body={"name": "bot2", "manifest": MANIFEST}
    )
    assert code == 503, text
    # The run that could not be recorded never ran: no live token of it is left.
    tokens = jp_serverapp.web_app.settings["qguard_agent_tokens"].list()
    assert [t["state"] for t in tokens if t["name"] == "bot2"] == ["revoked"]
    # Ending the first run still revokes its token, though the entry cannot be written.
    assert (await call(jp_fetch, "DELETE", "qguard", "api", "agent-runs", rid))[0] == 503
    assert (await call(jp_fetch, "GET", "api", "contents", token=token))[0] == 403
