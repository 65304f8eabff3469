"""REST and websocket handlers under /qguard/api/, and the one route table.

Every handler method is @web.authenticated and @authorized against a `qguard:` resource;
tests/test_handlers_auth.py walks ROUTES and fails if one is reachable without both.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web, websocket

from . import http_args
from .audit.log import AuditUnavailable
from .broker.jobs import State
from .broker.service import ApprovalRefused, Broker, DigestMismatch, JobNotFound, MfaRequired
from .broker.store import TransitionConflict

JOBS = "qguard:jobs"
SANDBOX = "qguard:sandbox"
CHANGES = "qguard:changes"
AUDIT = "qguard:audit"
_JOB_ID = r"(?P<job_id>[0-9a-f]{32})"


class QGuardAPIHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every REST handler: JSON in and out, the broker at hand."""

    auth_resource = JOBS

    @property
    def broker(self) -> Broker:
        return self.settings["qguard_broker"]

    @property
    def username(self) -> str:
        user = self.current_user
        return getattr(user, "username", None) or str(user)

    def json_body(self, required: dict[str, type]) -> dict[str, Any]:
        body = http_args.json_object(self.request.body)
        for key, kind in required.items():
            if not isinstance(body.get(key), kind) or (kind is str and not body[key].strip()):
                raise web.HTTPError(400, f"the body needs {key!r} ({kind.__name__})")
        return body

    def limit_arg(self, default: int, maximum: int = 1000) -> int:
        """?limit=N, held to 1..maximum; 400 if it is not an integer."""
        return http_args.limit(self.get_query_argument("limit", str(default)), maximum)

    def time_arg(
        self, name: str, value: str | None = None, *, accepts: str = "an ISO 8601 time"
    ) -> dt.datetime | None:
        """An ISO 8601 query argument (no zone means UTC); None when absent."""
        text = self.get_query_argument(name, "") if value is None else value
        return http_args.iso_time(name, text, accepts=accepts)

    async def job_or_404(self, job_id: str, *, history: bool = False) -> dict[str, Any]:
        try:
            return await self.broker.get(job_id, history=history)
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None


class JobsHandler(QGuardAPIHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Newest first. Filters: ?state=a,b ?backend= ?user= (the requester); ?before=<the
        last row's created_at> pages back; ?limit= (≤ 1000)."""
        states = [s for s in self.get_query_argument("state", "").split(",") if s]
        for s in states:
            if s not in State.__members__.values():
                raise web.HTTPError(400, f"unknown state {s!r}")
        jobs = await self.broker.list_jobs(
            states=states or None,
            limit=self.limit_arg(200),
            backend=self.get_query_argument("backend", "") or None,
            user=self.get_query_argument("user", "") or None,
            before=self.time_arg("before"),
        )
        self.finish(json.dumps({"jobs": jobs}))


class JobHandler(QGuardAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.finish(json.dumps(await self.job_or_404(job_id, history=True)))


class JobReviewHandler(QGuardAPIHandler):
    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        try:
            self.finish(json.dumps(await self.broker.review(job_id)))
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None


class KernelHandler(QGuardAPIHandler):
    """Is this kernel a qguard agent kernel? The front end asks, rather than trusting a
    kernelspec name anyone can copy, before it renders the kernel's outputs untrusted."""

    auth_resource = SANDBOX

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        report = self.broker.kernel_report(kernel_id)
        self.finish(
            json.dumps(
                {
                    "kernel_id": kernel_id,
                    "agent": report is not None,
                    "sandbox": (report or {}).get("sandbox"),
                }
            )
        )


class ApproveHandler(QGuardAPIHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        body = self.json_body({"digest": str})
        otp = body.get("otp")
        if otp is not None and not isinstance(otp, str):
            raise web.HTTPError(400, "otp must be a string of digits")
        try:
            job = await self.broker.approve(job_id, self.username, body["digest"], otp=otp)
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None
        except MfaRequired as exc:
            # 403 with reason "mfa_required": the panel asks for a code and tries again.
            raise web.HTTPError(403, str(exc), reason="mfa_required") from None
        except AuditUnavailable as exc:
            raise web.HTTPError(503, f"nothing was approved: {exc}") from None
        except (DigestMismatch, ApprovalRefused) as exc:
            raise web.HTTPError(409, str(exc)) from None
        except TransitionConflict as exc:
            raise web.HTTPError(409, str(exc)) from None
        self.finish(json.dumps(job))


class DenyHandler(QGuardAPIHandler):
    @web.authenticated
    @authorized
    async def post(self, job_id: str) -> None:
        body = self.json_body({"reason": str})
        try:
            job = await self.broker.deny(job_id, self.username, body["reason"].strip())
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None
        except TransitionConflict as exc:
            raise web.HTTPError(409, str(exc)) from None
        self.finish(json.dumps(job))


class SandboxHandler(QGuardAPIHandler):
    """This machine's sandbox layers, and those actually in force in each agent kernel."""

    auth_resource = SANDBOX

    @web.authenticated
    @authorized
    async def get(self) -> None:
        kernels = [self.broker.kernel_report(k) for k in sorted(self.broker.kernels)]
        machine = await self.broker.sandbox_probe()
        self.finish(json.dumps({"machine": machine, "kernels": [k for k in kernels if k]}))


class EventsHandler(
    WebSocketMixin, ExtensionHandlerMixin, JupyterHandler, websocket.WebSocketHandler
):
    """Live job events for the panel: one JSON message per change."""

    auth_resource = JOBS

    def get_login_url(self) -> str:
        # An API socket has no login page to send anyone to: refuse, as APIHandler does.
        raise web.HTTPError(403)

    @web.authenticated
    @authorized("read")
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().open(*args, **kwargs)
        broker: Broker = self.settings["qguard_broker"]
        self._queue = broker.events.subscribe()
        self._pump = asyncio.ensure_future(self._forward())

    async def _forward(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self.write_message(json.dumps(event))
            except websocket.WebSocketClosedError:
                return

    def on_message(self, message: str | bytes) -> None:
        """The stream is one-way; anything sent to it is ignored."""

    def on_close(self) -> None:
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.cancel()
            self.settings["qguard_broker"].events.unsubscribe(self._queue)


class ChangesBase(QGuardAPIHandler):
    auth_resource = CHANGES

    @property
    def tracker(self) -> Any:
        tracker = self.broker.tracker
        if tracker is None:
            raise web.HTTPError(404, "the workspace watcher is off (QGuardApp.watch_enabled)")
        return tracker


class ChangesHandler(ChangesBase):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        """?since=<change id> or ?since=<ISO time>; ?limit= (≤ 1000)."""
        since = self.get_query_argument("since", "")
        since_id, since_time = 0, None
        limit = self.limit_arg(200)
        if since.isdigit():
            since_id = int(since)
        else:
            since_time = self.time_arg("since", since, accepts="a change id or an ISO 8601 time")
        changes = await self.tracker.list(since_id=since_id, since=since_time, limit=limit)
        self.finish(json.dumps({"changes": changes}))


class ChangeHandler(ChangesBase):
    @web.authenticated
    @authorized
    async def get(self, change_id: str) -> None:
        try:
            change = await self.tracker.get(int(change_id))
        except KeyError:
            raise web.HTTPError(404, f"no change {change_id}") from None
        self.finish(json.dumps(change))


class RevertHandler(ChangesBase):
    @web.authenticated
    @authorized
    async def post(self, change_id: str) -> None:
        from .watch.tracker import ChangeError

        try:
            out = await self.tracker.revert(int(change_id), self.username)
        except KeyError:
            raise web.HTTPError(404, f"no change {change_id}") from None
        except ChangeError as exc:
            raise web.HTTPError(409, str(exc)) from None
        self.finish(json.dumps(out))


class AuditHandler(QGuardAPIHandler):
    """The newest audit entries (optionally one job's) and the newest signed checkpoint."""

    auth_resource = AUDIT

    @web.authenticated
    @authorized
    async def get(self) -> None:
        audit = self.broker.audit
        if audit is None:
            raise web.HTTPError(404, "this server keeps no audit log")
        job = self.get_query_argument("job", "")
        entries = await asyncio.to_thread(audit.tail, self.limit_arg(100), job or None)
        checkpoint = audit.dir / "checkpoint"
        self.finish(
            json.dumps(
                {
                    "size": audit.size,
                    "key": audit.key.vkey() if audit.key else None,
                    "checkpoint": checkpoint.read_text() if checkpoint.exists() else None,
                    "entries": entries,
                }
            )
        )


# `jupyter qguard agent run`'s handlers build on QGuardAPIHandler above: imported here, after it.
from .handlers_agent_runs import (  # noqa: E402
    RUN_ID,
    AgentRunConnectionsHandler,
    AgentRunHandler,
    AgentRunLeaseHandler,
    AgentRunSandboxHandler,
    AgentRunsHandler,
)

ROUTES: list[tuple[str, type[web.RequestHandler]]] = [
    (r"/qguard/api/jobs", JobsHandler),
    (rf"/qguard/api/jobs/{_JOB_ID}", JobHandler),
    (rf"/qguard/api/jobs/{_JOB_ID}/review", JobReviewHandler),
    (rf"/qguard/api/jobs/{_JOB_ID}/approve", ApproveHandler),
    (rf"/qguard/api/jobs/{_JOB_ID}/deny", DenyHandler),
    (r"/qguard/api/sandbox", SandboxHandler),
    (r"/qguard/api/kernels/(?P<kernel_id>[0-9a-f-]{1,64})", KernelHandler),
    (r"/qguard/api/changes", ChangesHandler),
    (r"/qguard/api/changes/(?P<change_id>[0-9]+)", ChangeHandler),
    (r"/qguard/api/changes/(?P<change_id>[0-9]+)/revert", RevertHandler),
    (r"/qguard/api/events", EventsHandler),
    (r"/qguard/api/audit", AuditHandler),
    (r"/qguard/api/agent-runs", AgentRunsHandler),
    (rf"/qguard/api/agent-runs/{RUN_ID}", AgentRunHandler),
    (rf"/qguard/api/agent-runs/{RUN_ID}/lease", AgentRunLeaseHandler),
    (rf"/qguard/api/agent-runs/{RUN_ID}/sandbox", AgentRunSandboxHandler),
    (rf"/qguard/api/agent-runs/{RUN_ID}/connections", AgentRunConnectionsHandler),
]
