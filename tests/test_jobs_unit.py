"""The job model: schema, transitions, digest, and the store's compare-and-set."""

from __future__ import annotations

import base64
import hashlib
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_qguard.broker.jobs import (
    TERMINAL,
    TRANSITIONS,
    InvalidRequest,
    State,
    approval_digest,
    can_transition,
    validate_request,
)
from jupyter_qguard.broker.store import Store, TransitionConflict


def request(**over):
    payload = b"qpy-bytes"
    req = {
        "schema": "qguard.job/v1",
        "program": {
            "sdk": "qiskit",
            "format": "qpy",
            "payload_b64": base64.b64encode(payload).decode(),
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
        "backend": "aer_hw",
        "shots": 100,
    }
    req.update(over)
    return req


def test_valid_request_returns_payload():
    assert validate_request(request()) == b"qpy-bytes"


@pytest.mark.parametrize(
    "bad,where",
    [
        ({"requester": {"user": "root"}}, "Additional properties"),
        ({"shots": 0}, "shots"),
        ({"shots": "100"}, "shots"),
        ({"backend": "a b"}, "backend"),
        ({"schema": "qguard.job/v2"}, "schema"),
        ({"files": {"x": "nothex"}}, "files/x"),
        ({"seed": -1}, "seed"),
        ({"max_cost": -0.5}, "max_cost"),
    ],
)
def test_invalid_requests_are_refused_with_the_place(bad, where):
    with pytest.raises(InvalidRequest) as err:
        validate_request(request(**bad))
    assert where in str(err.value)


def test_payload_hash_and_encoding_are_checked():
    req = request()
    req["program"]["sha256"] = "0" * 64
    with pytest.raises(InvalidRequest, match="does not match the payload"):
        validate_request(req)
    req = request()
    req["program"]["payload_b64"] = "***"
    with pytest.raises(InvalidRequest, match="not valid base64"):
        validate_request(req)
    req = request()
    req["program"]["extra"] = 1
    with pytest.raises(InvalidRequest, match="Additional properties"):
        validate_request(req)


def test_transition_table_matches_design():
    assert TRANSITIONS[State.RECEIVED] == {State.REJECTED, State.PENDING_APPROVAL, State.QUEUED}
    assert {
        State.APPROVED,
        State.DENIED,
        State.EXPIRED,
        State.VOIDED,
        State.CANCELLED,
    } == TRANSITIONS[State.PENDING_APPROVAL]
    assert State.QUEUED in TRANSITIONS[State.APPROVED]
    assert TRANSITIONS[State.SUBMITTED] == {State.COMPLETED, State.FAILED}
    for s in TERMINAL:
        assert not TRANSITIONS.get(s)
    assert not can_transition(State.PENDING_APPROVAL, State.SUBMITTED)
    assert not can_transition(State.DENIED, State.APPROVED)


DIGEST_ARGS = dict(
    program_sha256="a" * 64,
    backend="b",
    shots=10,
    seed=None,
    max_cost=None,
    files={"x.ipynb": "c" * 64},
    policy_version="p" * 64,
)


def test_digest_is_canonical_and_known():
    d1 = approval_digest(**DIGEST_ARGS)
    d2 = approval_digest(
        **{**DIGEST_ARGS, "files": dict(reversed(list(DIGEST_ARGS["files"].items())))}
    )
    assert d1 == d2
    body = (
        '{"backend":"b","files":{"x.ipynb":"'
        + "c" * 64
        + '"},"max_cost":null,"policy_version":"'
        + "p" * 64
        + '","program.sha256":"'
        + "a" * 64
        + '","seed":null,"shots":10}'
    )
    assert d1 == hashlib.sha256(body.encode()).hexdigest()


@given(st.sampled_from(list(DIGEST_ARGS)), st.integers(1, 10**6))
def test_digest_changes_with_every_bound_value(field, n):
    changed = dict(DIGEST_ARGS)
    changed[field] = {
        "program_sha256": f"{n:064x}",
        "backend": f"b{n}",
        "shots": 10 + n,
        "seed": n,
        "max_cost": float(n),
        "files": {"x.ipynb": f"{n:064x}"},
        "policy_version": f"{n:064x}",
    }[field]
    assert approval_digest(**changed) != approval_digest(**DIGEST_ARGS)


@pytest.fixture
def store(db_url: str) -> Any:
    """The store on SQLite and on PostgreSQL."""
    s = Store(db_url)
    yield s
    s.close()


def _job(store: Store) -> dict:
    return store.create_job(
        actor="kernel:k",
        requester={"kernel_id": "k"},
        backend="aer_hw",
        shots=1,
        seed=None,
        max_cost=None,
        request=request(),
        program_sha256="a" * 64,
        files={},
        policy_version="p" * 64,
        digest="d" * 64,
        decision={},
    )


def test_store_refuses_illegal_transitions_and_records_events(store):
    job = _job(store)
    with pytest.raises(TransitionConflict):
        store.transition(job["id"], State.SUBMITTED, actor="x")
    store.transition(job["id"], State.PENDING_APPROVAL, actor="broker")
    with pytest.raises(TransitionConflict):
        store.transition(job["id"], State.QUEUED, actor="x", expect={State.APPROVED})
    store.transition(job["id"], State.DENIED, actor="user:ada", reason="no")
    hist = store.get_with_history(job["id"])
    assert [(e["from"], e["to"], e["actor"]) for e in hist["events"]] == [
        (None, "received", "kernel:k"),
        ("received", "pending_approval", "broker"),
        ("pending_approval", "denied", "user:ada"),
    ]
    assert hist["reason"] == "no"


def test_only_one_of_many_racing_writers_wins(store):
    job = _job(store)
    store.transition(job["id"], State.QUEUED, actor="broker")
    wins, barrier = [], threading.Barrier(8)

    def race():
        barrier.wait()
        try:
            store.transition(job["id"], State.SUBMITTED, actor="t", expect={State.QUEUED})
            wins.append(1)
        except TransitionConflict:
            pass

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert [e["to"] for e in store.events(job["id"])].count("submitted") == 1


def test_approvals_count_distinct_people(store):
    job = _job(store)
    assert store.add_approval(job["id"], "ada", "d" * 64) == 1
    assert store.add_approval(job["id"], "ada", "d" * 64) == 1
    assert store.add_approval(job["id"], "bob", "d" * 64) == 2
    assert store.add_approval(job["id"], "cy", "e" * 64) == 1
