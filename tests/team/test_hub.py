"""The team-mode harness itself: a real JupyterHub with configurable-http-proxy, local-process
spawning, users alice and bob, the approvers group and qguard's custom scopes. The team-mode
tests (issue 11) build on it."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support.hub import Hub


@pytest.fixture
def hub() -> Any:
    # Under /tmp: the spawned servers' homes and workspaces live in it.
    base = Path(tempfile.mkdtemp(prefix="qguard-hub-"))
    h = Hub(base).start()
    try:
        yield h
    finally:
        h.stop()
        shutil.rmtree(base, ignore_errors=True)


async def body(response: Any) -> Any:
    return json.loads(response.body)


@pytest.mark.timeout(300)
async def test_the_hub_has_the_teams_roles_and_spawns_a_users_server(hub):
    users = {u["name"]: u for u in await body(await hub.api("users"))}
    assert set(users) >= {"alice", "bob", "carol", "dave"}
    approvers = await body(await hub.api("groups/approvers"))
    assert sorted(approvers["users"]) == ["alice", "bob", "carol"]

    # Scopes come from roles: anyone may ask, only approvers may approve.
    asked = await hub.api(
        "users/bob/tokens", method="POST", body={"scopes": ["custom:qguard:approve"]}
    )
    assert asked.code == 201, asked.body
    refused = await hub.api(
        "users/dave/tokens", method="POST", body={"scopes": ["custom:qguard:approve"]}
    )
    # The hub will not hand out a scope its owner does not hold.
    assert refused.code == 400
    assert "custom:qguard:approve" in json.loads(refused.body)["message"]
    alice = await body(
        await hub.api(
            "users/alice/tokens",
            method="POST",
            body={"scopes": ["custom:qguard:request", "access:servers!user=alice"]},
        )
    )
    me = await body(await hub.api("user", token=alice["token"]))
    assert me["name"] == "alice" and "custom:qguard:request" in me["scopes"]

    # alice's server, spawned through the hub with the qguard extension loaded.
    assert (await hub.api("users/alice/server", method="POST")).code in (201, 202)
    for _ in range(240):
        model = await body(await hub.api("users/alice"))
        if model["servers"].get("", {}).get("ready"):
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError(hub.log_path.read_text()[-3000:])
    log = hub.log_path.read_text()
    assert "jupyter_qguard | extension was successfully loaded" in log, log[-4000:]
