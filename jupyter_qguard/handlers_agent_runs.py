"""REST handlers of `jupyter qguard agent run` (resource `qguard:agents`); their routes are in
handlers.ROUTES, which imports this module at its end (import that module first).

Only the person's own identity reaches them: an agent token never gets as far as /qguard/api
(agents/identity.py refuses it there), so a confined agent, which holds only its run's token,
cannot mint itself another, renew, or rewrite its own connection records.

    POST   /qguard/api/agent-runs                    start: {name, manifest?, lease_seconds?,
                                                      command?} -> 201 {id, token, ...}
    POST   /qguard/api/agent-runs/<id>/lease         renew the token's lease
    POST   /qguard/api/agent-runs/<id>/sandbox       the layers in force, once confined
    POST   /qguard/api/agent-runs/<id>/connections   {connections: [...]}: audit entries
    DELETE /qguard/api/agent-runs/<id>?exit_status=N end: revoke the token
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.ioloop import PeriodicCallback

from . import http_args
from .agents.identity import SETTINGS_KEY as AGENT_TOKENS_KEY
from .agents.identity import QGuardIdentityProvider
from .agents.manifest import Manifest, ManifestError
from .agents.runs import (
    CONNECTIONS_SCHEMA,
    LEASE_DEFAULT_SECONDS,
    SANDBOX_SCHEMA,
    START_SCHEMA,
    AgentRuns,
    RunRefused,
    check,
)
from .agents.tokens import AgentTokenError
from .audit.log import AuditUnavailable
from .handlers import QGuardAPIHandler

AGENTS = "qguard:agents"
RUN_ID = r"(?P<run_id>[0-9a-f]{32})"
RUNS_KEY = "qguard_agent_runs"
# How often runs whose lease lapsed (their CLI was killed) are ended in the audit log.
SWEEP_SECONDS = 5


class AgentRunsBase(QGuardAPIHandler):
    auth_resource = AGENTS

    @property
    def runs(self) -> AgentRuns:
        runs = self.settings.get(RUNS_KEY)
        if runs is None:
            audit = self.broker.audit
            if audit is None:
                raise web.HTTPError(503, "this server keeps no audit log: agent runs need one")
            runs = AgentRuns(self.settings[AGENT_TOKENS_KEY], audit.append)
            self.settings[RUNS_KEY] = runs
            sweeper = PeriodicCallback(lambda: asyncio.to_thread(runs.sweep), SWEEP_SECONDS * 1000)
            sweeper.start()
        return runs

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking registry call in a thread; its refusals and the audit log's as HTTP."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except RunRefused as exc:
            raise web.HTTPError(exc.status, str(exc).replace("%", "%%")) from None
        except AuditUnavailable as exc:
            raise web.HTTPError(503, f"the audit log cannot take it: {exc}") from None

    def body(self, schema: dict[str, Any]) -> dict[str, Any]:
        body = http_args.json_object(self.request.body)
        try:
            check(schema, body)
        except RunRefused as exc:
            raise web.HTTPError(400, str(exc).replace("%", "%%")) from None
        return body


class AgentRunsHandler(AgentRunsBase):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        if not isinstance(self.identity_provider, QGuardIdentityProvider):
            raise web.HTTPError(
                409,
                "agent tokens are off on this server (QGuardApp.agent_tokens): a run's "
                "token would not be recognized",
            )
        body = self.body(START_SCHEMA)
        tokens = self.settings[AGENT_TOKENS_KEY]
        try:
            if "manifest" in body:
                source = body.get("manifest_source") or "agent run"
                manifest = Manifest.parse(
                    body["manifest"], source=source, policy_dir=tokens.policy_dir
                )
            else:
                manifest = Manifest.load(None, policy_dir=tokens.policy_dir)
        except ManifestError as exc:
            raise web.HTTPError(400, str(exc).replace("%", "%%")) from None
        try:
            run, token = await self.call(
                self.runs.start,
                body["name"],
                manifest,
                user=self.username,
                lease_seconds=body.get("lease_seconds", LEASE_DEFAULT_SECONDS),
                command=body.get("command", []),
            )
        except AgentTokenError as exc:
            raise web.HTTPError(400, str(exc).replace("%", "%%")) from None
        self.set_status(201)
        self.finish(
            json.dumps(
                {
                    "id": run.id,
                    "agent": run.name,
                    "token": token,
                    "token_id": run.token_id,
                    "lease_seconds": run.lease_seconds,
                    "expires_at": run.lease_until.isoformat(),
                    "root_dir": self.settings.get("server_root_dir", ""),
                    "manifest": manifest.data,
                }
            )
        )


class AgentRunHandler(AgentRunsBase):
    @web.authenticated
    @authorized
    async def delete(self, run_id: str) -> None:
        text = self.get_query_argument("exit_status", "")
        try:
            status = int(text) if text else None
        except ValueError:
            raise web.HTTPError(400, "exit_status must be an integer") from None
        run = await self.call(self.runs.end, run_id, reason="exited", exit_status=status)
        self.finish(json.dumps({"id": run.id, "ended": True, "connections": run.connections}))


class AgentRunLeaseHandler(AgentRunsBase):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        until = await self.call(self.runs.renew, run_id)
        self.finish(json.dumps({"id": run_id, "expires_at": until.isoformat()}))


class AgentRunSandboxHandler(AgentRunsBase):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        summary = self.body(SANDBOX_SCHEMA)
        await self.call(self.runs.confined, run_id, summary)
        self.finish(json.dumps({"id": run_id}))


class AgentRunConnectionsHandler(AgentRunsBase):
    @web.authenticated
    @authorized
    async def post(self, run_id: str) -> None:
        body = self.body(CONNECTIONS_SCHEMA)
        records = body["connections"]
        written = await self.call(
            self.runs.add_connections, run_id, records, body.get("dropped", 0)
        )
        self.finish(json.dumps({"id": run_id, "recorded": written}))
