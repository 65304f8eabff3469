"""Agent tokens for a server that has not started yet, made as `jupyter qguard agent-token
create` makes them, in the database the server will use."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def make_agent_token(state: Path, name: str, manifest_text: str | None = None) -> str:
    from jupyter_qguard.agents.manifest import Manifest
    from jupyter_qguard.agents.tokens import AgentTokens
    from jupyter_qguard.broker.store import Store, sqlite_url

    state.mkdir(parents=True, exist_ok=True)
    store = Store(sqlite_url(str(state / "qguard.db")))
    pack = Path(sys.prefix) / "share" / "jupyter_qguard" / "policies"
    try:
        tokens = AgentTokens(store.engine, policy_dir=pack)
        manifest = (
            Manifest.load(None, policy_dir=pack)
            if manifest_text is None
            else Manifest.parse(manifest_text, source="test", policy_dir=pack)
        )
        _, token = tokens.create(name, manifest)
    finally:
        store.close()
    return token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


async def status_of(jp_fetch: Any, token: str, *parts: str, **kwargs: Any) -> tuple[int, str]:
    """(status, body) of a request made with `token` through pytest-jupyter's jp_fetch."""
    r = await jp_fetch(*parts, headers=auth(token), raise_error=False, **kwargs)
    return r.code, r.body.decode(errors="replace")
