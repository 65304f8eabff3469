"""What an agent token gets from the kernel and session managers: a qguard kernel whatever
kernelspec it asks for (MCP servers ask for python3), and listings of its own kernels and
sessions only (agents/kernel_choice.py); /api/status readable."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.agent_tokens import status_of

from jupyter_qguard.agents.manifest import Manifest
from jupyter_qguard.sandbox.provisioner import QGuardProvisioner

pytestmark = pytest.mark.timeout(300)

MANIFEST = """
description: the test agent
contents: {read: ["*"], write: ["agent/*"], deny: [".*", "*/.*"]}
backends: ["aer_*"]
limits: {max_shots: 5000, max_cost_per_job: 1.0, rate: {jobs: 50, per_seconds: 3600}}
"""


def new_token(tokens: Any, name: str) -> str:
    manifest = Manifest.parse(MANIFEST, source="test", policy_dir=tokens.policy_dir)
    return tokens.create(name, manifest)[1]


async def test_an_agent_reads_the_status(jp_fetch, broker, tokens):
    code, text = await status_of(jp_fetch, new_token(tokens, "bot"), "api", "status")
    assert code == 200 and "started" in json.loads(text)


async def test_whatever_kernelspec_an_agent_asks_for_it_gets_a_qguard_kernel(
    jp_fetch, jp_serverapp, broker, tokens, forged_spec, jp_root_dir
):
    token = new_token(tokens, "bot")
    km = jp_serverapp.kernel_manager
    (jp_root_dir / "agent").mkdir()
    asked = {
        "python3": ("api", "kernels", {"name": "python3"}),
        "the default": ("api", "kernels", {}),
        "a look-alike": ("api", "kernels", {"name": forged_spec}),
        "no such spec": ("api", "kernels", {"name": "does-not-exist"}),
        "a python3 session": (
            "api",
            "sessions",
            {
                "path": "agent/x.ipynb",
                "type": "notebook",
                "name": "x",
                "kernel": {"name": "python3"},
            },
        ),
    }
    started = []
    try:
        for what, (*parts, body) in asked.items():
            code, text = await status_of(
                jp_fetch, token, *parts, method="POST", body=json.dumps(body)
            )
            assert code == 201, f"{what}: {code} {text[:300]}"
            model = json.loads(text)
            model = model.get("kernel", model)
            started.append(model["id"])
            assert model["name"] == "qguard-agent", what
            kernel = km.get_kernel(model["id"])
            assert isinstance(kernel.provisioner, QGuardProvisioner), what
            assert broker.kernel_starter(model["id"]) is not None, what
    finally:
        for kernel_id in started:
            await km.shutdown_kernel(kernel_id, now=True)


async def test_listings_show_an_agent_only_its_own(
    jp_fetch, jp_serverapp, broker, tokens, start_kernel, jp_root_dir, forged_spec
):
    bot, other = new_token(tokens, "bot"), new_token(tokens, "other")
    km = jp_serverapp.kernel_manager
    persons = await start_kernel(name="python3", path="person.ipynb")
    (jp_root_dir / "agent").mkdir()
    mine: dict[str, str] = {}
    try:
        for who, token in (("bot", bot), ("other", other)):
            body = {
                "path": f"agent/{who}.ipynb",
                "type": "notebook",
                "name": who,
                "kernel": {"name": "qguard-agent"},
            }
            code, text = await status_of(
                jp_fetch, token, "api", "sessions", method="POST", body=json.dumps(body)
            )
            assert code == 201, text
            mine[who] = json.loads(text)["kernel"]["id"]

        code, text = await status_of(jp_fetch, bot, "api", "kernels")
        assert code == 200 and [k["id"] for k in json.loads(text)] == [mine["bot"]]
        code, text = await status_of(jp_fetch, bot, "api", "sessions")
        assert code == 200
        assert [(s["path"], s["kernel"]["id"]) for s in json.loads(text)] == [
            ("agent/bot.ipynb", mine["bot"])
        ]
        code, text = await status_of(jp_fetch, bot, "api", "kernelspecs")
        assert code == 200 and sorted(json.loads(text)["kernelspecs"]) == ["qguard-agent"]
        # The person still sees everything.
        everything = json.loads((await jp_fetch("api", "kernels")).body)
        assert {k["id"] for k in everything} == {persons.id, *mine.values()}
        specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
        assert {"python3", "qguard-agent", forged_spec} <= set(specs)
    finally:
        for kernel_id in mine.values():
            await km.shutdown_kernel(kernel_id, now=True)


async def test_without_a_qguard_kernelspec_to_give_an_agent_starts_nothing(
    jp_fetch, jp_serverapp, broker, tokens
):
    choice = jp_serverapp.web_app.settings["qguard_agent_kernels"]
    assert choice.problem() is None
    before = set(jp_serverapp.kernel_manager.list_kernel_ids())
    choice.agent_kernel_name = "python3"
    try:
        code, text = await status_of(
            jp_fetch,
            new_token(tokens, "bot"),
            "api",
            "kernels",
            method="POST",
            body=json.dumps({"name": "python3"}),
        )
    finally:
        choice.agent_kernel_name = "qguard-agent"
    assert code == 403
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == before
