"""The team broker's web face: a JSON API for users' servers and approvers, and the approval
pages, under the service's prefix (e.g. /services/qguard/). Everyone is a JupyterHub identity:
users' servers come with their hub token, people with the hub's OAuth login; what each may do
is the custom scopes the hub granted their token (roles in jupyterhub_config.py).

One base handler, one route table. Pages carry no script at all (a strict CSP), so nothing an
agent smuggles into an output can act on them, and they can live on an origin of their own.
"""

from __future__ import annotations

import json
from typing import Any

from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)
from tornado import web

from .. import http_args
from ..audit.log import AuditUnavailable
from ..broker.jobs import InvalidRequest, State
from ..broker.service import ApprovalRefused, DigestMismatch, JobNotFound, MfaRequired
from ..broker.store import TransitionConflict
from . import pages
from .team_broker import TeamBroker

_JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Scopes:
    """The scope names the service checks. `review` reads the team's queue and never
    decides: it is the one approvers' servers carry, since an in-server agent can use a
    server's token; approving takes `approve`, which only a person's own token carries (their
    sign-in to these pages, or one they made)."""

    def __init__(self, request: str, approve: str, admin: str, review: str) -> None:
        self.request, self.approve, self.admin, self.review = request, approve, admin, review

    @property
    def any(self) -> tuple[str, ...]:
        return (self.request, self.approve, self.admin, self.review)


class ServiceHandler(HubOAuthenticated, web.RequestHandler):
    """Base of every handler: who the hub says this is, and what their token may do."""

    api = True

    @property
    def broker(self) -> TeamBroker:
        return self.settings["qguard_broker"]

    @property
    def scopes(self) -> Scopes:
        return self.settings["qguard_scopes"]

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["hub_auth"]

    @hub_auth.setter
    def hub_auth(self, value: Any) -> None:  # HubOAuthenticated's setter; ours is fixed
        pass

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        # Asked once, asynchronously (HubOAuthenticated's own lookup would block the loop).
        try:
            model = await self.hub_auth.get_user(self, sync=False)
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed:
            self._hub_auth_user_cache = None
            raise web.HTTPError(
                403, "this token may not use the qguard service (it lacks access to it)"
            ) from None
        if self._hub_auth_user_cache is None and self.api:
            raise web.HTTPError(403, "a JupyterHub token or login is needed")
        if self.request.method not in ("GET", "HEAD", "OPTIONS"):
            # Here rather than by tornado's xsrf_cookies (which runs before we know who this
            # is): a request with a token in its header needs none, a browser's needs _xsrf.
            self.check_xsrf_cookie()

    @property
    def who(self) -> dict[str, Any]:
        model = self.current_user
        if not model or model.get("kind", "user") != "user":
            raise web.HTTPError(403, "only hub users may use the qguard service")
        return model

    def has(self, scope: str) -> bool:
        return scope in set(self.who.get("scopes") or [])

    def need(self, *scopes: str) -> None:
        if not any(self.has(s) for s in scopes):
            raise web.HTTPError(
                403, f"{self.who['name']} lacks the scope {' or '.join(scopes)} for this"
            )

    @property
    def sees_all(self) -> bool:
        s = self.scopes
        return any(self.has(scope) for scope in (s.approve, s.admin, s.review))

    def view(self, job: dict[str, Any]) -> dict[str, Any]:
        return {
            **job,
            "team": True,
            "approve_url": self.settings["qguard_public_url"] + "jobs/" + job["id"],
        }

    async def job_for_me(self, job_id: str, *, history: bool = False) -> dict[str, Any]:
        try:
            if self.sees_all:
                return await self.broker.get(job_id, history=history)
            self.need(self.scopes.request)
            return await self.broker.own_job(self.who["name"], job_id, history=history)
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None

    def body(self) -> dict[str, Any]:
        return http_args.json_object(self.request.body)

    def send(self, value: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else None
        message = message or self._reason
        if self.api:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"message": message, "reason": self._reason}))
        else:
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(pages.error(status_code, message))

    async def decide(self, job_id: str, action: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Approve or deny as this hub user; errors as HTTP statuses a person can act on."""
        if self.has(self.scopes.review) and not self.has(self.scopes.approve):
            raise web.HTTPError(
                403,
                f"this token of {self.who['name']} may read the team's queue, not decide "
                f"({self.scopes.review}: a server's token): approve or deny on "
                f"{self.settings['qguard_public_url']}jobs/{job_id}, signed in as yourself",
            )
        self.need(self.scopes.approve)
        name = self.who["name"]
        try:
            if action == "approve":
                digest, otp = fields.get("digest"), fields.get("otp") or None
                if not isinstance(digest, str) or not digest:
                    raise web.HTTPError(400, "the body needs 'digest' (the digest you reviewed)")
                if otp is not None and not isinstance(otp, str):
                    raise web.HTTPError(400, "otp must be a string of digits")
                return await self.broker.approve(job_id, name, digest, otp=otp)
            reason = fields.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise web.HTTPError(400, "the body needs 'reason' (why it is denied)")
            return await self.broker.deny(job_id, name, reason.strip())
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None
        except MfaRequired as exc:
            raise web.HTTPError(403, str(exc), reason="mfa_required") from None
        except AuditUnavailable as exc:
            raise web.HTTPError(503, f"nothing was decided: {exc}") from None
        except (DigestMismatch, ApprovalRefused, TransitionConflict) as exc:
            raise web.HTTPError(409, str(exc)) from None


# -- the JSON API -----------------------------------------------------------------------------


class MeHandler(ServiceHandler):
    async def get(self) -> None:
        s = self.scopes
        self.send(
            {
                "name": self.who["name"],
                "request": self.has(s.request),
                "approve": self.has(s.approve),
                "admin": self.has(s.admin),
                "review": self.has(s.review),
            }
        )


class BackendsHandler(ServiceHandler):
    async def get(self) -> None:
        self.need(*self.scopes.any)
        self.send(self.broker.backend_list())


class JobsHandler(ServiceHandler):
    async def get(self) -> None:
        """Approvers and admins: the team's jobs (the queue); others: their own."""
        self.need(*self.scopes.any)
        states = [s for s in self.get_query_argument("state", "").split(",") if s]
        for s in states:
            if s not in State.__members__.values():
                raise web.HTTPError(400, f"unknown state {s!r}")
        limit = http_args.limit(self.get_query_argument("limit", "200"))
        when = http_args.iso_time("before", self.get_query_argument("before", ""))
        user = self.get_query_argument("user", "") or None
        if not self.sees_all:
            user = self.who["name"]
        kernel_id = self.get_query_argument("kernel_id", "") or None
        notebook = self.get_query_argument("notebook", "") or None
        if kernel_id or notebook:
            # A kernel's own jobs (its user's server asks): never another user's.
            rows = await self.broker.jobs_of(
                self.who["name"], kernel_id=kernel_id, notebook=notebook, limit=limit
            )
        else:
            rows = await self.broker.list_jobs(
                states=states or None,
                limit=limit,
                backend=self.get_query_argument("backend", "") or None,
                user=user,
                before=when,
            )
        self.send([self.view(j) for j in rows])

    async def post(self) -> None:
        """A job request from an agent kernel, forwarded by its user's server."""
        self.need(self.scopes.request)
        user = dict(self.who)
        try:
            user["groups"] = await self.settings["qguard_groups"](user["name"])
        except Exception as exc:
            # No group budget can be checked without the hub's answer: refuse, don't guess.
            raise web.HTTPError(
                503, f"the hub did not say which groups {user['name']} is in: {exc}"
            ) from None
        try:
            job = await self.broker.submit_from(user, self.body())
        except InvalidRequest as exc:
            raise web.HTTPError(400, f"invalid job request: {exc}") from None
        except AuditUnavailable as exc:
            raise web.HTTPError(
                503, f"the broker refuses new jobs until it can audit them: {exc}"
            ) from None
        self.set_status(201)
        self.send(self.view(job))


class JobHandler(ServiceHandler):
    async def get(self, job_id: str) -> None:
        history = self.get_query_argument("history", "") in ("1", "true")
        self.send(self.view(await self.job_for_me(job_id, history=history)))


class WaitHandler(ServiceHandler):
    async def get(self, job_id: str) -> None:
        await self.job_for_me(job_id)
        try:
            timeout = float(self.get_query_argument("timeout", "10"))
        except ValueError:
            raise web.HTTPError(400, "timeout must be a number of seconds") from None
        unless = self.get_query_argument("unless_state", "") or None
        job = await self.broker.wait(job_id, timeout=timeout, unless_state=unless)
        self.send(self.view(job))


class ReviewHandler(ServiceHandler):
    async def get(self, job_id: str) -> None:
        job = await self.job_for_me(job_id)
        review = await self.broker.review(job_id)
        review["mine"] = job["requester"].get("user") == self.who["name"]
        self.send(review)


class CancelHandler(ServiceHandler):
    async def post(self, job_id: str) -> None:
        """A requester cancels their own job; an admin any job."""
        admin = self.has(self.scopes.admin)
        if not admin:
            self.need(self.scopes.request)
            try:
                await self.broker.own_job(self.who["name"], job_id)
            except JobNotFound:
                raise web.HTTPError(404, f"no job {job_id}") from None
        actor = self.body().get("actor")
        if admin and not isinstance(actor, str):
            actor = "admin"
        who = f"user:{self.who['name']}" + (f" ({actor})" if isinstance(actor, str) else "")
        try:
            self.send(self.view(await self.broker.cancel(job_id, who[:200])))
        except JobNotFound:
            raise web.HTTPError(404, f"no job {job_id}") from None
        except TransitionConflict as exc:
            raise web.HTTPError(409, str(exc)) from None


class ApproveHandler(ServiceHandler):
    async def post(self, job_id: str) -> None:
        self.send(self.view(await self.decide(job_id, "approve", self.body())))


class DenyHandler(ServiceHandler):
    async def post(self, job_id: str) -> None:
        self.send(self.view(await self.decide(job_id, "deny", self.body())))


class ChangesHandler(ServiceHandler):
    async def post(self) -> None:
        """Files changed in this user's workspace: void their approvals bound to them."""
        self.need(self.scopes.request)
        changes = self.body().get("changes")
        if not isinstance(changes, list) or len(changes) > 10000:
            raise web.HTTPError(400, "the body needs 'changes': a list of at most 10000")
        clean = []
        for c in changes:
            sha = c.get("sha") if isinstance(c, dict) else None
            if (
                not isinstance(c, dict)
                or not isinstance(c.get("path"), str)
                or (sha is not None and (not isinstance(sha, str) or len(sha) != 64))
            ):
                raise web.HTTPError(400, "each change: {id, path, actor, sha (hex or null)}")
            clean.append(
                {
                    "id": c.get("id"),
                    "path": c["path"],
                    "actor": str(c.get("actor", ""))[:200],
                    "sha": sha,
                }
            )
        voided = await self.broker.files_changed(self.who["name"], clean)
        self.send({"voided": voided})


# -- pages for people -------------------------------------------------------------------------


class QueuePage(ServiceHandler):
    api = False

    @web.authenticated
    async def get(self) -> None:
        self.need(*self.scopes.any)
        pending = await self.broker.list_jobs(
            states=[State.PENDING_APPROVAL.value],
            limit=500,
            user=None if self.sees_all else self.who["name"],
        )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            pages.queue(self.who["name"], pending, can_approve=self.has(self.scopes.approve))
        )


class JobPage(ServiceHandler):
    api = False

    @web.authenticated
    async def get(self, job_id: str) -> None:
        await self.render_job(job_id)

    async def render_job(self, job_id: str, *, notice: str = "", error: str = "") -> None:
        job = await self.job_for_me(job_id, history=True)
        review = await self.broker.review(job_id)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            pages.job(
                job,
                review,
                me=self.who["name"],
                can_approve=self.has(self.scopes.approve),
                xsrf=self.xsrf_form_html(),
                notice=notice,
                error=error,
            )
        )

    @web.authenticated
    async def post(self, job_id: str) -> None:
        action = self.get_body_argument("action", "")
        if action not in ("approve", "deny"):
            raise web.HTTPError(400, "action must be approve or deny")
        fields = {k: self.get_body_argument(k, "") for k in ("digest", "otp", "reason")}
        try:
            job = await self.decide(job_id, action, fields)
        except web.HTTPError as exc:
            if exc.status_code in (403, 409, 400) and exc.log_message:
                self.set_status(exc.status_code)
                await self.render_job(job_id, error=exc.log_message)
                return
            raise
        done = "denied" if action == "deny" else f"approval recorded; the job is {job['state']}"
        self.set_status(200)
        await self.render_job(job_id, notice=done)


def make_app(
    *,
    broker: TeamBroker,
    hub_auth: HubOAuth,
    prefix: str,
    public_url: str,
    scopes: Scopes,
    groups_of: Any,
    cookie_secret: bytes,
) -> web.Application:
    p = prefix.rstrip("/") + "/"
    routes: list[tuple[str, type[web.RequestHandler]]] = [
        (p + "oauth_callback", HubOAuthCallbackHandler),
        (p, QueuePage),
        (p + f"jobs/{_JOB_ID}", JobPage),
        (p + "api/me", MeHandler),
        (p + "api/backends", BackendsHandler),
        (p + "api/jobs", JobsHandler),
        (p + f"api/jobs/{_JOB_ID}", JobHandler),
        (p + f"api/jobs/{_JOB_ID}/wait", WaitHandler),
        (p + f"api/jobs/{_JOB_ID}/review", ReviewHandler),
        (p + f"api/jobs/{_JOB_ID}/cancel", CancelHandler),
        (p + f"api/jobs/{_JOB_ID}/approve", ApproveHandler),
        (p + f"api/jobs/{_JOB_ID}/deny", DenyHandler),
        (p + "api/changes", ChangesHandler),
    ]
    return web.Application(
        routes,
        hub_auth=hub_auth,
        qguard_broker=broker,
        qguard_scopes=scopes,
        qguard_public_url=public_url.rstrip("/") + "/",
        qguard_groups=groups_of,
        cookie_secret=cookie_secret,
    )
