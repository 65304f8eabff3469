"""Team mode's parts on their own: what the service takes from a user's server (and refuses),
the pages' escaping, and a user's server whose team broker is out of reach."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from jupyter_qguard.broker.jobs import InvalidRequest
from jupyter_qguard.broker.store import Store, sqlite_url
from jupyter_qguard.hub import pages
from jupyter_qguard.hub.forwarder import ForwardingBroker, TeamBrokerUnavailable
from jupyter_qguard.hub.team_broker import TeamBroker
from jupyter_qguard.policy.engine import PolicyEngine

PACK = str(Path(__file__).resolve().parents[2] / "policies")
SHA = "ab" * 32


def broker_kwargs(tmp_path: Path) -> dict[str, Any]:
    return {
        "store": Store(sqlite_url(str(tmp_path / "q.db"))),
        "backends": {},
        "providers": {},
        "workspace_root": str(tmp_path),
        "approval_ttl": 60.0,
        "wait_max_seconds": 5.0,
        "policy": PolicyEngine(PACK),
    }


ALICE = {"name": "alice", "groups": ["physics", "approvers"]}


def test_the_requester_is_the_hubs_user_with_the_servers_kernel(tmp_path):
    broker = TeamBroker(**broker_kwargs(tmp_path))
    kernel = {"kernel_id": "k-1", "notebook": "a.ipynb", "cell_id": "c1", "agent": None}
    assert broker.requester_from(ALICE, kernel) == {
        "user": "alice",
        "kind": "user",
        "kernel_id": "k-1",
        "notebook": "a.ipynb",
        "cell_id": "c1",
        "cell_id_source": "kernel",
        "groups": ["approvers", "physics"],
        "via": "hub",
    }
    agent = {"name": "bot", "token_id": "t1", "manifest": {"backends": ["aer_*"]}}
    r = broker.requester_from(ALICE, {**kernel, "agent": agent})
    assert (r["kind"], r["agent"], r["agent_id"], r["manifest"]) == (
        "agent",
        "bot",
        "t1",
        {"backends": ["aer_*"]},
    )
    assert broker.mfa_single_user is False


@pytest.mark.parametrize(
    "kernel,message",
    [
        ("k-1", "kernel: an object {kernel_id, notebook, cell_id, agent}"),
        ({"kernel_id": ""}, "kernel/kernel_id: a string of 1 to 64 characters"),
        ({"kernel_id": "k" * 65}, "kernel/kernel_id: a string of 1 to 64 characters"),
        ({"kernel_id": "k", "notebook": 3}, "kernel/notebook: a string of 1 to 1024 characters"),
        (
            {"kernel_id": "k", "agent": {"name": "bot"}},
            "kernel/agent: an object {name, token_id, manifest}",
        ),
    ],
)
def test_what_a_server_says_of_its_kernel_is_checked(tmp_path, kernel, message):
    broker = TeamBroker(**broker_kwargs(tmp_path))
    with pytest.raises(InvalidRequest) as info:
        broker.requester_from(ALICE, kernel)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "files,message",
    [
        ([], "files: an object {path: sha256} of at most 1000 files"),
        (
            {f"f{i}": SHA for i in range(1001)},
            "files: an object {path: sha256} of at most 1000 files",
        ),
        ({"a.txt": "xyz"}, "files/a.txt: a sha256 in hex"),
        ({"a.txt": SHA.upper()}, "files/a.txt: a sha256 in hex"),
    ],
)
def test_bound_file_hashes_are_checked(files, message):
    with pytest.raises(InvalidRequest) as info:
        TeamBroker.bound_files(files)
    assert str(info.value) == message
    assert TeamBroker.bound_files({"a.txt": SHA}) == {"a.txt": SHA}


def test_reported_hashes_decide_what_changed(tmp_path):
    broker = TeamBroker(**broker_kwargs(tmp_path))
    bound = {"a.ipynb": SHA, "b.json": "cd" * 32}
    # Nothing reported: as bound. A report of alice's counts for alice only.
    assert broker._changed_files(bound, None, "alice") == []
    broker.reported_files[("alice", "b.json")] = "ef" * 32
    assert broker._changed_files(bound, None, "alice") == ["b.json"]
    assert broker._changed_files(bound, None, "bob") == []
    broker.reported_files[("alice", "a.ipynb")] = None  # deleted
    assert broker._changed_files(bound, None, "alice") == ["a.ipynb", "b.json"]


def test_pages_escape_everything_they_show():
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    job = {
        "id": "a" * 32,
        "state": "pending_approval",
        "requester": {"user": evil, "kind": "agent", "agent": evil, "notebook": evil},
        "backend": "fake_torino",
        "shots": 10,
        "digest": "d" * 64,
        "files": {evil: SHA},
        "decision": {"approvals_required": 2, "mfa_required": True, "notes": [evil]},
        "approvals": [{"approver": evil}],
        "events": [{"at": "now", "from": None, "to": "received", "actor": evil}],
        "reason": evil,
        "created_at": "now",
    }
    review = {"source": evil, "drawing": evil, "budget": {"daily": evil}}
    html = pages.job(job, review, me="bob", can_approve=True, xsrf="", error=evil, notice=evil)
    html += pages.queue("bob", [job], can_approve=True) + pages.error(400, evil)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_a_server_whose_team_broker_is_out_of_reach_says_so(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/services/qguard/"
    broker = ForwardingBroker(service_url=url, service_token="t", **broker_kwargs(tmp_path))
    with pytest.raises(TeamBrokerUnavailable) as info:
        await broker.get("0" * 32)
    assert str(info.value).startswith(f"the team broker at {url} cannot be reached: ")
    # The file watcher's report is dropped with an error in the log, never raised into it.
    assert await broker.void_for_changes([{"id": 1, "path": "a", "actor": "user"}]) == []


def test_team_mode_needs_the_servers_hub_token(tmp_path):
    with pytest.raises(ValueError) as info:
        ForwardingBroker(service_url="http://x/", service_token="", **broker_kwargs(tmp_path))
    assert str(info.value) == (
        "QGuardApp.team_broker_url is set, but this server has no JUPYTERHUB_API_TOKEN: "
        "team mode runs in servers spawned by JupyterHub"
    )
