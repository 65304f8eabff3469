"""The broker's store and the agent tokens on SQLite and on a real PostgreSQL: the same code, the
same answers (team mode runs on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from support.helpers import stored_job

from jupyter_qguard.agents.manifest import Manifest
from jupyter_qguard.agents.tokens import AgentTokens
from jupyter_qguard.broker.jobs import State
from jupyter_qguard.broker.store import Store

PACK = Path(__file__).resolve().parents[1] / "policies"


@pytest.fixture
def store(db_url: str) -> Any:
    s = Store(db_url)
    yield s
    s.close()


def test_listing_filters_and_paging(store):
    a = stored_job(store, user="ada", backend="aer_hw", state="rejected")
    b = stored_job(store, user="bob", backend="aer_hw", state="pending_approval")
    c = stored_job(store, user="ada", backend="aer_simulator", state="queued")

    def ids(**kw: Any) -> list[str]:
        return [j["id"] for j in store.list(**kw)]

    assert ids() == [c["id"], b["id"], a["id"]]
    assert ids(user="ada") == [c["id"], a["id"]]
    assert ids(backend="aer_hw", states=["pending_approval"]) == [b["id"]]
    page = store.list(limit=1)
    assert ids(before=dt.datetime.fromisoformat(page[-1]["created_at"])) == [b["id"], a["id"]]
    # Times come back timezone-aware (UTC) from both databases.
    assert dt.datetime.fromisoformat(page[0]["created_at"]).utcoffset() == dt.timedelta(0)


def test_usage_and_an_agents_jobs(store):
    now = dt.datetime.now(dt.UTC)
    for _ in range(3):
        stored_job(store, user="ada", backend="aer_hw", state=None)
    job = stored_job(store, user="ada", backend="aer_hw", state=None)
    store.transition(job["id"], State.REJECTED, actor="broker")
    usage = store.usage(
        "ada",
        day_start=now - dt.timedelta(hours=1),
        window_start=now - dt.timedelta(minutes=5),
        baseline_start=now - dt.timedelta(hours=1),
    )
    assert usage["jobs_window"] == 4
    assert store.agent_jobs_since("bot", now - dt.timedelta(hours=1)) == 0


def test_mfa_steps_are_taken_once_and_never_backwards(store):
    assert store.claim_mfa_step("ada", 100) is True
    assert store.claim_mfa_step("ada", 100) is False
    assert store.claim_mfa_step("ada", 99) is False
    assert store.claim_mfa_step("ada", 101) is True
    assert store.claim_mfa_step("bob", 100) is True


def test_agent_tokens_round_trip(store):
    tokens = AgentTokens(store.engine, policy_dir=PACK)
    manifest = Manifest.load(None, policy_dir=PACK)
    row, token = tokens.create("bot", manifest, ttl=dt.timedelta(hours=1))
    agent = tokens.authenticate(token)
    assert agent is not None and (agent.name, agent.token_id) == ("bot", row["id"])
    assert agent.manifest.may_write("agent/x.py") and not agent.manifest.may_read(".env")
    assert tokens.authenticate(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    _, short = tokens.create("brief", manifest, ttl=dt.timedelta(seconds=-1))
    assert tokens.authenticate(short) is None
    assert [(r["name"], r["state"]) for r in tokens.list()] == [
        ("bot", "active"),
        ("brief", "expired"),
    ]
    assert tokens.revoke("bot") == 1
    assert tokens.authenticate(token) is None
    assert tokens.list()[0]["state"] == "revoked"


def test_an_older_database_gains_the_change_entry_columns(db_url):
    """A store made before changes recorded entry types (links, FIFOs) opens with them added,
    its rows kept; what it records then says what each entry was."""
    from sqlalchemy import create_engine, inspect, text

    from jupyter_qguard.broker.store import ADDED_COLUMNS

    Store(db_url).close()  # every table as it is now
    engine = create_engine(db_url)
    with engine.begin() as conn:
        for name in ADDED_COLUMNS["qguard_changes"]:
            conn.execute(text(f"ALTER TABLE qguard_changes DROP COLUMN {name}"))
    engine.dispose()
    s = Store(db_url)
    try:
        cols = {c["name"] for c in inspect(s.engine).get_columns("qguard_changes")}
        assert set(ADDED_COLUMNS["qguard_changes"]) <= cols
        now = dt.datetime.now(dt.UTC)
        [row] = s.add_changes(
            [
                {
                    "at": now,
                    "seen_at": now,
                    "path": "d",
                    "kind": "created",
                    "actor": "kernel:k1",
                    "entry_type": "symlink",
                    "link_target": "/home/me/.aws",
                }
            ]
        )
        assert (row["entry_type"], row["before_entry_type"], row["link_target"]) == (
            "symlink",
            None,
            "/home/me/.aws",
        )
    finally:
        s.close()
