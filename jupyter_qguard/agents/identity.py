"""Who is asking: the user, or an agent holding one of `jupyter qguard agent-token`'s tokens.

`QGuardIdentityProvider` is jupyter_server's default identity provider (token, cookie, password:
the user's login is unchanged) that also recognizes agent tokens (`qga_…`, in `Authorization: token`
or `?token=`). An agent token is never turned into a login cookie, and an agent identity exists
only on the routes an agent may use at all (sessions, kernels, kernelspecs, contents, files,
/api/me, /api/status, collaboration sessions and rooms): on any other route the request ends
here with 403. What an agent may do on those routes is then the Authorizer's decision
(authorizer.py).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from dataclasses import dataclass
from typing import Any

from jupyter_server.auth.identity import PasswordIdentityProvider, User
from tornado import web

from ..credentials import AGENT_TOKEN_PREFIX
from .tokens import Agent

SETTINGS_KEY = "qguard_agent_tokens"

# Paths relative to the server's base URL. `api/status` is polled by MCP servers before each
# kernel start; the collaboration session and room routes (jupyter-collaboration) carry the
# notebook tools of jupyter-mcp-server. Awareness, forks, timelines, undo and `/api/fileid`
# are not here: they stay closed to agents.
AGENT_ROUTES = re.compile(
    r"api/me"
    r"|api/status"
    r"|api/kernelspecs(/[^/]+)?"
    r"|api/sessions(/[^/]+)?"
    r"|api/kernels(/[^/]+(/(interrupt|restart|channels))?)?"
    r"|api/contents(/.*)?"
    r"|api/collaboration/(session|room)/.+"
    r"|files/.*"
)


@dataclass
class AgentUser(User):
    """An agent's identity; `agent` says which token and what it may do."""

    agent: Agent | None = None


def agent_of(user: Any) -> Agent | None:
    return user.agent if isinstance(user, AgentUser) else None


def relative_path(handler: web.RequestHandler) -> str:
    base = handler.settings.get("base_url", "/")
    path = handler.request.path
    return path[len(base) :] if path.startswith(base) else path.lstrip("/")


class QGuardIdentityProvider(PasswordIdentityProvider):
    async def get_user(self, handler: web.RequestHandler) -> User | None:  # type: ignore[override]
        presented = self.get_token(handler) or ""
        if not presented.startswith(AGENT_TOKEN_PREFIX):
            user = super().get_user(handler)
            return await user if inspect.isawaitable(user) else user
        tokens = handler.settings.get(SETTINGS_KEY)
        if tokens is None:
            raise web.HTTPError(403, "agent tokens need the jupyter_qguard server extension")
        agent = await asyncio.to_thread(tokens.authenticate, presented)
        if agent is None:
            raise web.HTTPError(403, "this agent token is not valid: unknown, revoked or expired")
        route = relative_path(handler)
        if not AGENT_ROUTES.fullmatch(route):
            raise web.HTTPError(
                403,
                f"agent {agent.name} may use sessions, kernels, files and collaboration rooms "
                f"only, not /{route}",
            )
        # Token-authenticated, as jupyter_server marks its own token's requests: no XSRF
        # cookie is expected, and no login cookie is ever set for an agent.
        handler._token_authenticated = True  # type: ignore[attr-defined]
        return AgentUser(
            username=f"agent:{agent.name}",
            name=agent.name,
            display_name=f"{agent.name} (agent)",
            agent=agent,
        )
