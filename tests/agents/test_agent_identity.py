"""Agent identity: a token made by `jupyter qguard agent-token` can drive sandboxed kernels and
the files its manifest names, and nothing else. Every refusal is a 403 that changes nothing; the
allowed path works end to end over the real REST API and kernel websocket; revoked and expired
tokens are refused; tokens are stored hashed only."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.agent_tokens import auth, status_of
from support.helpers import BELL, stored_job
from support.jupyter_proc import KernelWS
from tornado.httpclient import HTTPClientError

from jupyter_qguard.agents.manifest import Manifest

MANIFEST = """
description: the test agent
contents:
  read: ["*"]
  write: ["agent/*"]
  deny: [".*", "*/.*"]
backends: ["aer_*"]
limits:
  max_shots: 5000
  max_cost_per_job: 1.0
  rate: {jobs: 50, per_seconds: 3600}
"""


@pytest.fixture
def agent_token(tokens: Any, jp_serverapp: Any) -> str:
    manifest = Manifest.parse(MANIFEST, source="test", policy_dir=tokens.policy_dir)
    _, token = tokens.create("bot", manifest)
    return token


@pytest.fixture
def workspace(jp_root_dir: Path) -> Path:
    (jp_root_dir / "agent").mkdir()
    (jp_root_dir / "agent" / "a.txt").write_text("agent's file\n")
    (jp_root_dir / "notes.txt").write_text("the user's notes\n")
    (jp_root_dir / ".env").write_text("THEME=dark\n")
    (jp_root_dir / "agent" / ".hidden").write_text("hidden\n")
    return jp_root_dir


def tree(root: Path) -> dict[str, str]:
    """Every file under the root (dot-directories included) and its hash."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def server_state(jp_fetch: Any, jp_serverapp: Any, broker: Any, root: Path) -> dict:
    """What a refused request must not change, read as the user."""
    sessions = json.loads((await jp_fetch("api", "sessions")).body)
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)
    config = json.loads((await jp_fetch("api", "config", "notebook")).body)
    return {
        "kernels": sorted(jp_serverapp.kernel_manager.list_kernel_ids()),
        "sessions": sorted(s["id"] for s in sessions),
        "files": tree(root),
        "jobs": sorted((j["id"], j["state"]) for j in broker.store.list(limit=1000)),
        "kernelspecs": sorted(specs["kernelspecs"]),
        "config": config,
    }


async def test_everything_outside_the_agents_lane_is_403_and_changes_nothing(
    jp_fetch, jp_ws_fetch, jp_serverapp, broker, start_kernel, agent_token, workspace, forged_spec
):
    plain = await start_kernel(name="python3")
    pending = stored_job(broker.store, user="ada", backend="aer_hw", state="pending_approval")
    before = await server_state(jp_fetch, jp_serverapp, broker, workspace)
    body = json.dumps
    kid, jid = plain.id, pending["id"]

    forbidden: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
        (
            "a session on the user's python3 kernel",
            ("api", "sessions"),
            {
                "method": "POST",
                "body": body(
                    {
                        "path": "agent/y.ipynb",
                        "type": "notebook",
                        "name": "y",
                        "kernel": {"id": kid},
                    }
                ),
            },
        ),
        (
            "a session bound to a file it may not read",
            ("api", "sessions"),
            {
                "method": "POST",
                "body": body(
                    {
                        "path": ".env",
                        "type": "file",
                        "name": "e",
                        "kernel": {"name": "qguard-agent"},
                    }
                ),
            },
        ),
        ("read the user's python3 kernel", ("api", "kernels", kid), {}),
        ("stop the user's python3 kernel", ("api", "kernels", kid), {"method": "DELETE"}),
        (
            "restart the user's python3 kernel",
            ("api", "kernels", kid, "restart"),
            {"method": "POST", "body": "{}"},
        ),
        (
            "interrupt the user's python3 kernel",
            ("api", "kernels", kid, "interrupt"),
            {"method": "POST", "body": "{}"},
        ),
        ("open a terminal", ("api", "terminals"), {"method": "POST", "body": "{}"}),
        ("list terminals", ("api", "terminals"), {}),
        (
            "write outside the manifest",
            ("api", "contents", "outside.txt"),
            {"method": "PUT", "body": body({"type": "file", "format": "text", "content": "x"})},
        ),
        (
            "overwrite the user's notes",
            ("api", "contents", "notes.txt"),
            {"method": "PUT", "body": body({"type": "file", "format": "text", "content": "gone"})},
        ),
        (
            "write a dotfile inside its own folder",
            ("api", "contents", "agent", ".bashrc"),
            {"method": "PUT", "body": body({"type": "file", "format": "text", "content": "x"})},
        ),
        ("read .env through contents", ("api", "contents", ".env"), {}),
        ("read .env through files", ("files", ".env"), {}),
        ("read a hidden file in its own folder", ("api", "contents", "agent", ".hidden"), {}),
        ("climb out with ..", ("api", "contents", "agent", "..", ".env"), {}),
        (
            "rename its file out of its folder",
            ("api", "contents", "agent", "a.txt"),
            {"method": "PATCH", "body": body({"path": "stolen.txt"})},
        ),
        ("delete the user's notes", ("api", "contents", "notes.txt"), {"method": "DELETE"}),
        (
            "copy .env into its folder",
            ("api", "contents", "agent"),
            {"method": "POST", "body": body({"copy_from": ".env"})},
        ),
        (
            "create a file at the root",
            ("api", "contents"),
            {"method": "POST", "body": body({"type": "file"})},
        ),
        (
            "checkpoint the user's notes",
            ("api", "contents", "notes.txt", "checkpoints"),
            {"method": "POST", "body": ""},
        ),
        (
            "approve a job",
            ("qguard", "api", "jobs", jid, "approve"),
            {"method": "POST", "body": body({"digest": pending["digest"]})},
        ),
        (
            "deny a job",
            ("qguard", "api", "jobs", jid, "deny"),
            {"method": "POST", "body": body({"reason": "mine now"})},
        ),
        ("list jobs", ("qguard", "api", "jobs"), {}),
        ("read the audit log", ("qguard", "api", "audit"), {}),
        ("read the sandbox report", ("qguard", "api", "sandbox"), {}),
        ("read the python3 kernelspec", ("api", "kernelspecs", "python3"), {}),
        ("read the forged kernelspec", ("api", "kernelspecs", forged_spec), {}),
        ("read the server's config", ("api", "config", "notebook"), {}),
        (
            "change the server's config",
            ("api", "config", "notebook"),
            {"method": "PATCH", "body": body({"agent": "was here"})},
        ),
        (
            "change JupyterLab's settings",
            ("lab", "api", "settings", "jupyter-qguard:plugin"),
            {"method": "PUT", "body": body({"raw": "{}"})},
        ),
        ("open JupyterLab", ("lab",), {}),
        ("convert a notebook", ("nbconvert", "html", "notes.txt"), {}),
        ("shut the server down", ("api", "shutdown"), {"method": "POST", "body": ""}),
    ]
    assert len(forbidden) >= 25
    # (Asking for python3, the default or a look-alike kernelspec gives a qguard kernel, and
    # listings are filtered: test_agent_kernel_choice.py.)
    for what, parts, kwargs in forbidden:
        code, text = await status_of(jp_fetch, agent_token, *parts, **kwargs)
        assert code == 403, f"{what}: {code} {text[:200]}"

    # Websockets: the user's python3 kernel, and the server's event stream.
    for what, parts in (
        ("execute in the user's python3 kernel", ("api", "kernels", kid, "channels")),
        ("subscribe to the server's events", ("api", "events", "subscribe")),
        ("the qguard event stream", ("qguard", "api", "events")),
    ):
        with pytest.raises(HTTPClientError) as refused:
            await jp_ws_fetch(*parts, headers=auth(agent_token))
        assert refused.value.code == 403, what

    assert await server_state(jp_fetch, jp_serverapp, broker, workspace) == before
    assert (await broker.get(jid))["state"] == "pending_approval"
    # The user's own token is unchanged: the same kind of request works for the user.
    r = await jp_fetch("api", "kernels", kid)
    assert r.code == 200


async def test_the_allowed_path_end_to_end(
    jp_fetch, jp_ws_fetch, jp_serverapp, broker, agent_token, workspace
):
    # Its own files.
    code, _ = await status_of(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "plan.md",
        method="PUT",
        body=json.dumps({"type": "file", "format": "text", "content": "# plan\n"}),
    )
    assert code == 201
    assert (workspace / "agent" / "plan.md").read_text() == "# plan\n"
    code, text = await status_of(jp_fetch, agent_token, "api", "contents", "notes.txt")
    assert code == 200 and json.loads(text)["content"] == "the user's notes\n"
    code, _ = await status_of(jp_fetch, agent_token, "files", "agent", "a.txt")
    assert code == 200
    code, _ = await status_of(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "plan.md",
        method="PATCH",
        body=json.dumps({"path": "agent/plan-v2.md"}),
    )
    assert code == 200 and (workspace / "agent" / "plan-v2.md").exists()

    # Its notebook, a session on it with the qguard-agent kernelspec, and a cell run over the
    # kernel websocket.
    notebook = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    code, _ = await status_of(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "work.ipynb",
        method="PUT",
        body=json.dumps({"type": "notebook", "format": "json", "content": notebook}),
    )
    assert code == 201
    code, text = await status_of(
        jp_fetch,
        agent_token,
        "api",
        "sessions",
        method="POST",
        body=json.dumps(
            {
                "path": "agent/work.ipynb",
                "type": "notebook",
                "name": "work.ipynb",
                "kernel": {"name": "qguard-agent"},
            }
        ),
    )
    assert code == 201, text
    session = json.loads(text)
    kernel_id = session["kernel"]["id"]
    code, _ = await status_of(jp_fetch, agent_token, "api", "sessions", session["id"])
    assert code == 200
    ws = await jp_ws_fetch("api", "kernels", kernel_id, "channels", headers=auth(agent_token))
    kernel = KernelWS(kernel_id, ws)
    try:
        await kernel.wait_ready()
        out = await kernel.run(
            BELL
            + "job = %qguard submit bell --backend aer_simulator --shots 300 --seed 7\n"
            + "print('counts', dict(sorted(job.result().items())))\n"
        )
        assert out["error"] is None, out
        assert "counts {'00'" in out["stdout"]
        # Over the manifest's shot limit: the policy refuses, naming the agent.
        out = await kernel.run(
            BELL
            + "job = %qguard submit bell --backend aer_simulator --shots 6000\n"
            + "print(job.state, job.status().get('reason'))\n"
        )
        assert out["stdout"].startswith("rejected ")
        assert "agent bot may ask for at most 5000 shots per job, not 6000" in out["stdout"]
    finally:
        kernel.close()

    jobs = broker.store.list(limit=10)
    done = next(j for j in jobs if j["shots"] == 300)
    assert done["state"] == "completed"
    requester = done["requester"]
    assert (requester["kind"], requester["agent"], requester["kernel_id"]) == (
        "agent",
        "bot",
        kernel_id,
    )
    assert requester["manifest"]["limits"]["max_shots"] == 5000
    refused = next(j for j in jobs if j["shots"] == 6000)
    assert refused["state"] == "rejected"
    # The audit log says which agent drove the kernel and asked for the job.
    lines = [json.loads(line) for line in broker.audit.path.read_text().splitlines()]
    drove = [e for e in lines if e["kind"] == "agent.kernel"]
    assert [(e["kernel"], e["agent"]) for e in drove] == [(kernel_id, "bot")]
    received = [e for e in lines if e["kind"] == "job.received" and e.get("job") == done["id"]]
    assert [e["agent"] for e in received] == ["bot"]

    # It may stop its own kernel.
    code, _ = await status_of(jp_fetch, agent_token, "api", "kernels", kernel_id, method="DELETE")
    assert code == 204


async def test_revoked_and_expired_tokens_are_refused(jp_fetch, tokens, workspace):
    manifest = Manifest.load(None, policy_dir=tokens.policy_dir)
    _, live = tokens.create("reader", manifest)
    assert (await status_of(jp_fetch, live, "api", "contents", "notes.txt"))[0] == 200
    assert tokens.revoke("reader") == 1
    code, text = await status_of(jp_fetch, live, "api", "contents", "notes.txt")
    assert code == 403 and "unknown, revoked or expired" in text

    _, short = tokens.create("brief", manifest, ttl=dt.timedelta(seconds=1))
    assert (await status_of(jp_fetch, short, "api", "contents", "notes.txt"))[0] == 200
    await asyncio.sleep(1.2)
    assert (await status_of(jp_fetch, short, "api", "contents", "notes.txt"))[0] == 403

    # A token of the right shape that was never issued, and one with a changed character.
    _, real = tokens.create("real", manifest)
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")
    for token in (forged, "qga_000000000000_" + "x" * 43):
        assert (await status_of(jp_fetch, token, "api", "contents", "notes.txt"))[0] == 403
    # A refused agent never gets a login cookie to come back with.
    r = await jp_fetch("api", "contents", "notes.txt", headers=auth(real))
    assert "Set-Cookie" not in r.headers


def test_tokens_are_stored_hashed_and_the_cli_shows_them_once(tmp_path):
    state = tmp_path / "state"
    env_args = [f"--QGuardApp.state_dir={state}"]
    manifest_file = tmp_path / "m.yaml"
    manifest_file.write_text(MANIFEST)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupyter_qguard.cli", "agent-token", *args, *env_args],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),
                "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
            },
        )

    made = run("create", "--name", "bot", f"--manifest={manifest_file}", "--ttl", "7d")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("qga_") and "only time the token is shown" in made.stderr
    listed = run("list")
    assert listed.returncode == 0 and "bot" in listed.stdout and "active" in listed.stdout
    assert str(manifest_file) in listed.stdout
    # Nowhere on disk in clear: not in the database, not in any file of the state directory.
    for path in state.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
            assert token.split("_")[-1].encode() not in path.read_bytes(), path
    assert token not in listed.stdout
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert any(digest.encode() in p.read_bytes() for p in state.glob("qguard.db*"))  # WAL too

    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.replace("max_shots: 5000", "max_shots: lots"))
    refused = run("create", "--name", "bot2", f"--manifest={bad}")
    assert refused.returncode == 1
    assert "limits/max_shots: 'lots' is not of type 'integer'" in refused.stderr
    assert run("revoke", "bot").stdout.strip() == "revoked 1 token"
    assert run("revoke", "bot").returncode == 1
    assert "revoked" in run("list").stdout


async def test_an_agents_rate_is_its_manifests(jp_fetch, jp_ws_fetch, tokens, workspace, broker):
    one_an_hour = Manifest.parse(
        MANIFEST.replace(
            "rate: {jobs: 50, per_seconds: 3600}", "rate: {jobs: 1, per_seconds: 3600}"
        ),
        source="test",
        policy_dir=tokens.policy_dir,
    )
    _, token = tokens.create("slow", one_an_hour)
    code, text = await status_of(
        jp_fetch,
        token,
        "api",
        "kernels",
        method="POST",
        body=json.dumps({"name": "qguard-agent"}),
    )
    assert code == 201, text
    kernel_id = json.loads(text)["id"]
    kernel = KernelWS(
        kernel_id, await jp_ws_fetch("api", "kernels", kernel_id, "channels", headers=auth(token))
    )
    try:
        await kernel.wait_ready()
        submit = (
            BELL
            + "job = %qguard submit bell --backend aer_simulator --shots 100\n"
            + "print(job.state, job.status().get('reason'))\n"
        )
        first = await kernel.run(submit)
        assert first["error"] is None and not first["stdout"].startswith("rejected"), first
        second = await kernel.run(submit)
        assert second["stdout"].startswith("rejected "), second
        assert (
            "agent slow has asked for 1 jobs in the last 3600 seconds, its limit"
            in second["stdout"]
        )
    finally:
        kernel.close()
    # Another agent's jobs do not count against it, nor does the user's.
    assert (
        broker.store.agent_jobs_since("slow", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 2
    )
    assert (
        broker.store.agent_jobs_since("bot", dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 0
    )
