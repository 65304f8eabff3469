"""`jupyter qguard broker --hub`: the team's broker, run by JupyterHub as a managed service.

JupyterHub starts it with its service environment (JUPYTERHUB_SERVICE_URL, _PREFIX, _API_URL,
_API_TOKEN, _CLIENT_ID, ...), restarts it if it dies, and routes /services/<name>/ to it. The
broker's own settings are the desktop's (`c.QGuardApp.db_url`, `state_dir`, `keyring_backend`,
`backends`, `policy_data`, ...) read from the config file given with --config; team settings
are on QGuardBrokerService. Its keyring holds the team's provider credentials: no user's
server ever has them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from traitlets import Bool, Unicode, default

from ..cli import QGuardCommand
from ..fsutil import read_or_create_key


class QGuardBrokerService(QGuardCommand):
    name = "jupyter-qguard-broker"
    description = "Run the team's qguard broker as a JupyterHub service (with --hub)."

    hub = Bool(False, help="Run as a JupyterHub-managed service (the only mode).").tag(config=True)
    flags = {
        **QGuardCommand.flags,
        "hub": ({"QGuardBrokerService": {"hub": True}}, "Run as a JupyterHub service."),
    }

    request_scope = Unicode(
        "custom:qguard:request", help="Scope that lets a user's server ask for jobs."
    ).tag(config=True)
    approve_scope = Unicode(
        "custom:qguard:approve", help="Scope that lets a person approve or deny the team's jobs."
    ).tag(config=True)
    admin_scope = Unicode(
        "custom:qguard:admin",
        help="Scope that lets a person see and cancel every job (no approving).",
    ).tag(config=True)
    review_scope = Unicode(
        "custom:qguard:review",
        help="Scope that lets an approver's server show the team's queue in its panel: read "
        "only. Give servers this one, never the approve scope: whatever runs in a server "
        "(an in-server agent) can use the server's token.",
    ).tag(config=True)

    public_url = Unicode(
        help="Where people reach the approval pages, ending in the service prefix (e.g. "
        "https://qguard.example.org/services/qguard/ on an origin of its own). Default: "
        "$JUPYTERHUB_PUBLIC_URL (set when the hub knows its public URL), or the prefix alone "
        "(same origin)."
    ).tag(config=True)

    bind_url = Unicode(
        help="Where to listen. Default: $JUPYTERHUB_SERVICE_URL (set by JupyterHub)."
    ).tag(config=True)

    @default("bind_url")
    def _default_bind_url(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")

    @property
    def prefix(self) -> str:
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/qguard/")

    @default("public_url")
    def _default_public_url(self) -> str:
        # JupyterHub's JUPYTERHUB_PUBLIC_URL for a service already ends in its prefix.
        return os.environ.get("JUPYTERHUB_PUBLIC_URL", "") or self.prefix

    def start(self) -> None:
        if not self.hub:
            self.log.error("jupyter qguard broker: only --hub is supported (a JupyterHub service)")
            self.exit(2)
        if not os.environ.get("JUPYTERHUB_API_TOKEN"):
            self.log.error("jupyter qguard broker --hub runs as a JupyterHub service: no hub token")
            self.exit(2)
        asyncio.run(self.serve())

    async def serve(self) -> None:
        from jupyterhub.services.auth import HubOAuth

        from .service_app import Scopes, make_app
        from .team_broker import TeamBroker

        settings = self.qguard_settings()
        settings.log = self.log
        state = Path(settings.state_dir).expanduser()
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        broker = settings.build_broker(TeamBroker, providers=None, workspace_root=str(state))
        # The singleton: JupyterHub's OAuth callback handler uses HubOAuth.instance(), and
        # the PKCE verifier made at login must be found there.
        hub_auth = HubOAuth.instance(cache_max_age=30)
        groups = HubGroups(hub_auth.api_url, hub_auth.api_token)
        app = make_app(
            broker=broker,
            hub_auth=hub_auth,
            prefix=self.prefix,
            public_url=self.public_url,
            scopes=Scopes(
                self.request_scope, self.approve_scope, self.admin_scope, self.review_scope
            ),
            groups_of=groups.refresh_for(broker),
            cookie_secret=read_or_create_key(state / "service-cookie-secret"),
        )
        await broker.start()
        sweeper = asyncio.ensure_future(settings._sweep_expired())
        bind = urlparse(self.bind_url)
        server = app.listen(bind.port or 80, address=bind.hostname or "127.0.0.1", xheaders=True)
        self.log.info(
            "qguard team broker on %s (public %s), store %s",
            self.bind_url,
            self.public_url,
            broker.store.engine.url.render_as_string(hide_password=True),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("qguard team broker stopping")
        server.stop()
        sweeper.cancel()
        await broker.stop()


class HubGroups:
    """Who is in which hub group, asked of the hub with the service's own token (a role with
    read:users:groups and read:groups)."""

    def __init__(self, api_url: str, token: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.token = token
        self.http = AsyncHTTPClient()

    async def get(self, path: str) -> Any:
        response = await self.http.fetch(
            HTTPRequest(
                f"{self.api_url}/{path}",
                headers={"Authorization": f"token {self.token}"},
                request_timeout=15,
            )
        )
        return json.loads(response.body)

    def refresh_for(self, broker: Any) -> Any:
        async def groups_of(user: str) -> list[str]:
            """The user's groups; each group's members go to the broker for group budgets."""
            model = await self.get(f"users/{quote(user, safe='')}")
            names = sorted(model.get("groups") or [])
            for name in names:
                group = await self.get(f"groups/{quote(name, safe='')}")
                broker.group_members[name] = sorted(group.get("users") or [])
            return names

        return groups_of
