"""A real MCP agent through the guard: datalayer's jupyter-mcp-server, in its default setup
(stdio, JUPYTER_URL and an agent token in JUPYTER_TOKEN), driven by the real `mcp` client with
a script instead of a model, against a real server with jupyter-collaboration, the qguard
extension and the fake cloud. As root and as the unprivileged user.

It creates a notebook, runs a Bell circuit on the simulator through `%qguard submit ... --wait`
and reads the counts back; its hardware request waits for the person and names the agent. The
same token, used by hand as a hostile agent would, gets nothing else.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import mcp_client
from support.agent_tokens import make_agent_token
from support.broker_flow import BACKENDS, KEYRING, until
from support.fakecloud_proc import FakeCloud
from support.helpers import BELL, wait_for
from support.jupyter_proc import ServerProcess
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.timeout(900)

UNPRIVILEGED = "qgtest"
AGENT = "mcp-desktop"
SUBMIT = "%qguard submit bell --backend aer_simulator --shots 100 --wait"
HARDWARE = "job = %qguard submit bell --backend fake_brisbane --shots 100\nprint('JOB', job.job_id)"


class McpWorld:
    """A server (with collaboration rooms) and the fake cloud, and an agent token."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.base = Path(tempfile.mkdtemp(prefix="qg-mcp-"))
        (self.base / "cloud").mkdir()
        self.cloud = FakeCloud(self.base / "cloud").start()
        keyring_file = self.base / "keyring" / "keyring.cfg"
        keyring_file.parent.mkdir()
        keyring_options = json.dumps({"file_path": str(keyring_file)})
        from jupyter_qguard.credentials import CredentialStore, backend_from_name

        CredentialStore(backend_from_name(KEYRING, file_path=str(keyring_file))).set(
            "fakecloud", self.cloud.api_key
        )
        self.server = ServerProcess(
            self.base,
            extra_args=[
                f"--QGuardApp.backends={json.dumps(BACKENDS)}",
                f"--QGuardApp.keyring_backend={KEYRING}",
                f"--QGuardApp.keyring_backend_options={keyring_options}",
                f"--FakeCloudProvider.url={self.cloud.url}",
            ],
            user=UNPRIVILEGED if mode == "user" else None,
            collaboration=True,
        )
        self.server.root.mkdir(parents=True)
        (self.server.root / ".private.ipynb").write_text(EMPTY_NOTEBOOK)
        (self.server.root / "person.ipynb").write_text(EMPTY_NOTEBOOK)
        self.token = make_agent_token(self.server.state, AGENT)
        (self.base / "home").mkdir()
        self.server.write_user_config()
        if mode == "user":
            pw = pwd.getpwnam(UNPRIVILEGED)
            for root, dirs, files in os.walk(self.base):
                for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
                    os.lchown(n, pw.pw_uid, pw.pw_gid)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        self.cloud.stop()
        shutil.rmtree(self.base, ignore_errors=True)


EMPTY_NOTEBOOK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


@pytest.fixture(scope="module", params=["root", "user"])
def world(request: pytest.FixtureRequest) -> Iterator[McpWorld]:
    if os.geteuid() != 0:
        pytest.fail("the MCP agent tests run as root (CI does), to test both modes")
    if request.param == "user":
        try:
            pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            pytest.fail(f"user {UNPRIVILEGED} missing: run tests/setup-unprivileged.sh")
    w = McpWorld(request.param)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def session(world: McpWorld) -> dict[str, Any]:
    """The scripted agent's session: one jupyter-mcp-server process, its tool calls in order."""
    return mcp_client.run(
        world.server.url,
        world.token,
        [
            ("list_kernels", {}),
            (
                "use_notebook",
                {"notebook_name": "bell", "notebook_path": "bell.ipynb", "mode": "create"},
            ),
            ("insert_execute_code_cell", {"cell_index": -1, "cell_source": BELL}),
            ("insert_execute_code_cell", {"cell_index": -1, "cell_source": SUBMIT}),
            ("read_cell", {"cell_index": 2}),
            ("insert_execute_code_cell", {"cell_index": -1, "cell_source": HARDWARE}),
            ("execute_code", {"code": "import os; print(sorted(os.environ))"}),
            ("list_kernels", {}),
        ],
    )


def answer(session: dict[str, Any], i: int) -> str:
    call = session["calls"][i]
    assert "error" not in call and not call["is_error"], call
    return mcp_client.texts(call)


def test_the_mcp_server_runs_a_bell_circuit_through_qguard(world: McpWorld, session: dict) -> None:
    assert {"use_notebook", "insert_execute_code_cell", "execute_code"} <= set(session["tools"])
    submitted = answer(session, 3)
    counts = json.loads(
        submitted[submitted.index("{") : submitted.rindex("}") + 1].replace("'", '"')
    )
    assert set(counts) <= {"00", "01", "10", "11"} and sum(counts.values()) == 100, submitted
    assert counts.get("00", 0) + counts.get("11", 0) >= 90
    # read_cell reads the outputs back from the notebook the room saved.
    read = answer(session, 4)
    assert SUBMIT in read and "{'" in read, read
    saved = json.loads((world.server.root / "bell.ipynb").read_text())
    assert any(SUBMIT in "".join(c["source"]) for c in saved["cells"])


def test_its_kernels_are_qguard_kernels_and_listings_show_only_them(
    world: McpWorld, session: dict
) -> None:
    listed = answer(session, 7)
    rows = [line.split("\t") for line in listed.splitlines()[1:]]
    # jupyter-mcp-server asked for python3 (hard-coded): it got qguard-agent, for its own
    # code sandbox and for the notebook's session alike.
    assert len(rows) == 2 and {r[1] for r in rows} == {"qguard-agent"}, listed

    async def check() -> None:
        kernels = await world.server.json("api/kernels")
        assert {k["id"] for k in kernels} == {r[0] for r in rows}
        for k in kernels:
            report = await world.server.json(f"qguard/api/kernels/{k['id']}")
            assert report["agent"] is True and report["sandbox"]["ok"] is True, report

    asyncio.run(check())
    # The sandboxed kernel's environment: no token of anyone's.
    env = answer(session, 6)
    assert "JUPYTER_TOKEN" not in env and "JPY_API_TOKEN" not in env


def test_its_hardware_request_waits_for_the_person_and_names_the_agent(
    world: McpWorld, session: dict
) -> None:
    out = answer(session, 5)
    job_id = out.split("JOB", 1)[1].split()[0]

    async def check() -> None:
        job = await until(world.server, job_id, {"pending_approval"})
        assert job["requester"]["kind"] == "agent" and job["requester"]["agent"] == AGENT
        await asyncio.sleep(2)
        assert (await world.server.json(f"qguard/api/jobs/{job_id}"))["state"] == "pending_approval"

    asyncio.run(check())


def test_its_notebook_edits_are_attributed_to_it(world: McpWorld, session: dict) -> None:
    async def changes() -> list[dict[str, Any]]:
        rows = (await world.server.json("qguard/api/changes?limit=1000"))["changes"]
        return [r for r in rows if r["path"] == "bell.ipynb"]

    rows = asyncio.run(wait_for(changes, timeout=30))
    assert rows and {r["actor"] for r in rows} == {f"agent:{AGENT}"}, rows
    # jupyter-collaboration's own files live in the state directory, not the workspace.
    assert not (world.server.root / ".jupyter" / "collaboration_sessions.json").exists()
    assert not (world.server.root / ".jupyter_ystore.db").exists()
    assert (world.server.state / "collaboration" / "ystore.db").is_file()


# -- the same token, misused ---------------------------------------------------------------


async def agent_fetch(world: McpWorld, path: str, method: str = "GET", body: Any = None) -> int:
    req = HTTPRequest(
        f"{world.server.url}/{path}",
        method=method,
        headers={"Authorization": f"token {world.token}"},
        body=None if body is None else json.dumps(body),
        allow_nonstandard_methods=True,
        request_timeout=60,
    )
    try:
        return (await AsyncHTTPClient().fetch(req)).code
    except HTTPClientError as exc:
        return exc.code


async def agent_ws(world: McpWorld, path: str) -> int:
    url = f"ws://127.0.0.1:{world.server.port}/{path}?token={world.token}"
    try:
        ws = await websocket_connect(url)
    except HTTPClientError as exc:
        return exc.code
    ws.close()
    return 101


def test_misuse_with_the_same_token_is_refused_and_changes_nothing(
    world: McpWorld, session: dict
) -> None:
    async def run() -> None:
        server = world.server
        person_kernel = await server.json("api/kernels", method="POST", body={"name": "python3"})
        pk = person_kernel["id"]
        person_file = await server.json(
            "api/collaboration/session/.private.ipynb",
            method="PUT",
            body={"format": "json", "type": "notebook"},
        )
        jobs = (await server.json("qguard/api/jobs"))["jobs"]
        pending = next(j for j in jobs if j["state"] == "pending_approval")
        before = {p.name: p.read_bytes() for p in server.root.iterdir() if p.is_file()}

        outcomes = {
            "person's kernel": await agent_fetch(world, f"api/kernels/{pk}"),
            "person's kernel, stop": await agent_fetch(world, f"api/kernels/{pk}", "DELETE"),
            "person's kernel, websocket": await agent_ws(world, f"api/kernels/{pk}/channels"),
            "python3 kernelspec": await agent_fetch(world, "api/kernelspecs/python3"),
            "terminal": await agent_fetch(world, "api/terminals", "POST", {}),
            "file outside the manifest": await agent_fetch(world, "api/contents/.private.ipynb"),
            "room session outside": await agent_fetch(
                world,
                "api/collaboration/session/.private.ipynb",
                "PUT",
                {"format": "json", "type": "notebook"},
            ),
            "room outside": await agent_ws(
                world, f"api/collaboration/room/json:notebook:{person_file['fileId']}"
            ),
            "awareness room": await agent_ws(
                world, "api/collaboration/room/JupyterLab:globalAwareness"
            ),
            "file ids": await agent_fetch(world, f"api/fileid/path?id={person_file['fileId']}"),
            "fork": await agent_fetch(
                world, f"api/collaboration/fork/json:notebook:{person_file['fileId']}", "PUT", {}
            ),
            "timeline": await agent_fetch(world, "api/collaboration/timeline/bell.ipynb"),
            "approve": await agent_fetch(
                world,
                f"qguard/api/jobs/{pending['id']}/approve",
                "POST",
                {"digest": pending["digest"]},
            ),
            "deny": await agent_fetch(
                world, f"qguard/api/jobs/{pending['id']}/deny", "POST", {"reason": "x"}
            ),
            "qguard API": await agent_fetch(world, "qguard/api/jobs"),
        }
        assert outcomes == dict.fromkeys(outcomes, 403), outcomes

        # A kernel the agent asks for by the person's kernelspec is a qguard one.
        code = await agent_fetch(world, "api/kernels", "POST", {"name": "python3"})
        assert code == 201
        req = HTTPRequest(
            f"{server.url}/api/kernels", headers={"Authorization": f"token {world.token}"}
        )
        mine = json.loads((await AsyncHTTPClient().fetch(req)).body)
        assert pk not in {k["id"] for k in mine}
        assert {k["name"] for k in mine} == {"qguard-agent"}

        # Nothing changed: the person's kernel runs, the job waits, the files are as they were.
        assert (await server.json(f"api/kernels/{pk}"))["id"] == pk
        job = await server.json(f"qguard/api/jobs/{pending['id']}")
        assert job["state"] == "pending_approval" and not job.get("approvals")
        after = {p.name: p.read_bytes() for p in server.root.iterdir() if p.is_file()}
        assert {k: after.get(k) for k in before} == before

    asyncio.run(run())
