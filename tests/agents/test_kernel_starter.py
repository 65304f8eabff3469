"""A kernel an agent token started keeps that agent as its starter, and its manifest, for its
whole life: the REST restart (whoever asks for it, in whatever request context) and the
automatic one after it died use the same write paths and hidden patterns. The provisioner reads
the agent from `agents.context.current_agent()`, which the Authorizer sets for each agent
request it admits; here the test sets it for the task that starts the kernel, as the Authorizer
does for the request's. Real in-process server, real qguard kernels."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from pathlib import Path
from typing import Any

from jupyter_qguard.agents.context import current_agent, set_current_agent
from jupyter_qguard.agents.manifest import Manifest
from jupyter_qguard.agents.tokens import Agent
from jupyter_qguard.sandbox.provisioner import manifest_write_paths

POLICIES = Path(__file__).resolve().parents[2] / "policies"

MANIFEST = """
description: writes in agent/ and one file
contents:
  read: ["*"]
  write: ["agent/*", "out/run-*/log.txt", "notes.md"]
  deny: [".env", "*/secret.txt"]
backends: ["aer_*"]
limits:
  max_shots: 1000
  max_cost_per_job: 0
  rate: {jobs: 10, per_seconds: 3600}
"""


def agent(token_id: str, manifest: str = MANIFEST) -> Agent:
    return Agent(
        token_id=token_id,
        name=f"bot-{token_id}",
        manifest=Manifest.parse(manifest, source="test", policy_dir=POLICIES),
    )


async def in_context(who: Agent | None, coro: Any) -> Any:
    """Run `coro` in a task whose request context names `who`, as the Authorizer's would."""
    ctx = contextvars.copy_context()
    ctx.run(set_current_agent, who)
    return await asyncio.get_running_loop().create_task(coro, context=ctx)


def requested(broker: Any, kernel_id: str) -> dict[str, Any]:
    return broker.kernels[kernel_id]["sandbox"]["requested"]


async def until_restarted(km: Any, kernel_id: str, old_pid: int) -> None:
    for _ in range(600):
        kernel = km.get_kernel(kernel_id)
        if kernel.provisioner is not None and kernel.provisioner.pid not in (None, old_pid):
            if await kernel.is_alive():
                return
        await asyncio.sleep(0.1)
    raise AssertionError("the kernel was not restarted")


async def runs(jp_serverapp: Any, kernel_id: str) -> None:
    client = jp_serverapp.kernel_manager.get_kernel(kernel_id).client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=90)
        reply = await client.execute_interactive("print(6 * 7)", timeout=60)
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()


async def test_the_starter_and_its_manifest_hold_across_restarts(jp_serverapp, broker, jp_root_dir):
    km = jp_serverapp.kernel_manager
    ws = os.path.realpath(jp_root_dir)
    bot, other = agent("tok-bot"), agent("tok-other")
    assert current_agent() is None

    kid = await in_context(bot, km.start_kernel(kernel_name="qguard-agent"))
    person = await km.start_kernel(kernel_name="qguard-agent")
    want = {
        "write_paths": [f"{ws}/agent", f"{ws}/notes.md", f"{ws}/out"],
        "hide_patterns": [".env", "*/secret.txt"],
    }
    got = requested(broker, kid)
    assert {k: got[k] for k in want} == want
    assert broker.kernel_starter(kid) == "tok-bot"
    assert broker.kernel_agents[kid] is bot  # its jobs are the agent's from the start
    assert broker.kernel_starter(person) is None
    assert requested(broker, person)["write_paths"] is None
    assert requested(broker, person)["hide_patterns"] == []
    assert broker.kernel_starter("no-such-kernel") is None
    await runs(jp_serverapp, kid)

    # Restarted by the person (no agent in the request), then by another agent's request:
    # still the starter's manifest, still the starter.
    for who in (None, other):
        await in_context(who, km.restart_kernel(kid))
        got = requested(broker, kid)
        assert {k: got[k] for k in want} == want, who
        assert broker.kernel_starter(kid) == "tok-bot"
    # And a person's kernel restarted in an agent's request stays the person's.
    await in_context(bot, km.restart_kernel(person))
    assert broker.kernel_starter(person) is None
    assert requested(broker, person)["write_paths"] is None

    # Died: the server's restarter brings it back, in no request at all.
    old_pid = km.get_kernel(kid).provisioner.pid
    os.kill(old_pid, 9)
    await until_restarted(km, kid, old_pid)
    got = requested(broker, kid)
    assert {k: got[k] for k in want} == want
    assert broker.kernel_starter(kid) == "tok-bot"
    await runs(jp_serverapp, kid)

    # Shut down: forgotten.
    await km.shutdown_kernel(kid)
    await km.shutdown_kernel(person)
    assert broker.kernel_starter(kid) is None


def test_write_paths_from_manifest_patterns(tmp_path, caplog):
    ws = str(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("/etc")
    (tmp_path / "inner").symlink_to("real")
    log = logging.getLogger("qguard-test-write-paths")

    def paths(*patterns: str) -> list[str] | None:
        return manifest_write_paths(list(patterns), ws, log)

    # A wildcard at the top: the whole workspace (Landlock has no file-name globs).
    assert paths("*") is None
    assert paths("agent/*", "*.ipynb") is None
    assert paths("agent*") is None
    # The literal directory in front of the first wildcard; a plain path as it is.
    assert paths("agent/*") == [f"{ws}/agent"]
    assert paths("agent/**", "agent/sub/*.py") == [f"{ws}/agent", f"{ws}/agent/sub"]
    assert paths("a/b?/c", "a/[xy]/d") == [f"{ws}/a"]
    assert paths("notes.md", "./docs//x.txt") == [f"{ws}/docs/x.txt", f"{ws}/notes.md"]
    assert paths() == []
    # Out of the workspace, or through a link: nothing granted, and said.
    with caplog.at_level(logging.WARNING, logger="qguard-test-write-paths"):
        assert paths("../outside/*", "link/*", "inner/x/*", "real/*") == [f"{ws}/real"]
    assert [r.getMessage() for r in caplog.records] == [
        "qguard: manifest write pattern '../outside/*' leaves the workspace: ignored",
        f"qguard: manifest write path {ws}/link passes through a link: ignored",
        f"qguard: manifest write path {ws}/inner/x passes through a link: ignored",
    ]
