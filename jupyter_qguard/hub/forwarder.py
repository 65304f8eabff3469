"""The broker of a user's server in team mode: kernels here, jobs at the team's broker.

What stays in the user's server is what only it can see: its agent kernels (channels, sandbox
reports, which agent drives which), its workspace (the bound files' hashes, the watcher's
changes). Everything about jobs — checks, the store, approvals, providers and credentials —
is the team broker's (hub/service_app.py), reached with this server's hub token. The kernel
channel, the REST handlers and the watcher call the same methods as on a desktop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from ..broker.jobs import InvalidRequest
from ..broker.service import ApprovalRefused, Broker, BrokerError, JobNotFound
from ..broker.store import TransitionConflict

log = logging.getLogger("jupyter_qguard.broker")

# How often the panel's view of the team queue is refreshed from the service.
POLL_SECONDS = 3.0


class TeamBrokerUnavailable(BrokerError):
    pass


class RemoteConflict(TransitionConflict):
    """The team broker's 409, in its own words."""

    def __init__(self, message: str) -> None:
        RuntimeError.__init__(self, message)
        self.job_id, self.current, self.target = "", None, ""


class ForwardingBroker(Broker):
    def __init__(self, *, service_url: str, service_token: str, **kwargs: Any) -> None:
        kwargs["user"] = kwargs.get("user") or os.environ.get("JUPYTERHUB_USER") or None
        super().__init__(**kwargs)
        self.service_url = service_url.rstrip("/") + "/"
        if not service_token:
            raise ValueError(
                "QGuardApp.team_broker_url is set, but this server has no JUPYTERHUB_API_TOKEN: "
                "team mode runs in servers spawned by JupyterHub"
            )
        self._token = service_token
        self._http = AsyncHTTPClient()
        self._backends: list[dict[str, Any]] = []
        self._seen: dict[str, str] = {}

    # -- talking to the service --------------------------------------------------------------

    async def call(
        self,
        path: str,
        *,
        method: str = "GET",
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float = 60.0,
    ) -> Any:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        url = self.service_url + "api/" + path + (f"?{urlencode(q)}" if q else "")
        request = HTTPRequest(
            url,
            method=method,
            body=None if body is None else json.dumps(body),
            headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"},
            request_timeout=timeout,
            follow_redirects=False,
        )
        try:
            response = await self._http.fetch(request)
        except HTTPClientError as exc:
            message = _message(exc)
            if exc.code == 404:
                raise JobNotFound(message) from None
            if exc.code == 400:
                raise InvalidRequest(message) from None
            if exc.code == 409:
                raise RemoteConflict(message) from None
            if exc.code in (401, 403):
                raise BrokerError(
                    f"the team broker refused this server ({exc.code}): {message}"
                ) from None
            raise TeamBrokerUnavailable(f"the team broker answered {exc.code}: {message}") from None
        except (OSError, TimeoutError) as exc:
            raise TeamBrokerUnavailable(
                f"the team broker at {self.service_url} cannot be reached: {exc}"
            ) from None
        return json.loads(response.body) if response.body else None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.record("server.start", user=self.user, team_broker=self.service_url)
        self._probe = asyncio.ensure_future(self._run_probe())
        self._spawn(self.refresh_backends(), "refresh-backends")
        self._spawn(self._follow(), "follow-team-broker")

    async def recover(self) -> None:
        """Nothing to resume here: the team broker resumes its jobs itself."""

    async def refresh_backends(self) -> None:
        try:
            self._backends = await self.call("backends", timeout=15)
        except BrokerError as exc:
            log.warning("qguard: %s", exc)

    def backend_list(self) -> list[dict[str, Any]]:
        return list(self._backends)

    async def _follow(self) -> None:
        """Bring job changes seen at the service to this server's event stream (the panel, the
        kernels' waits), by asking for the newest jobs now and then."""
        while True:
            try:
                seen = {}
                for job in await self.call("jobs", query={"limit": 100}, timeout=30):
                    mark = f"{job['state']}|{job.get('updated_at')}|{job.get('approvals_given')}"
                    seen[job["id"]] = mark
                    if self._seen.get(job["id"]) != mark:
                        self._changed(job)
                # Only the jobs of this answer: the map stays as small as the listing.
                self._seen = seen
            except BrokerError as exc:
                log.debug("qguard: following the team broker: %s", exc)
            except Exception:
                log.exception("qguard: following the team broker failed")
            await asyncio.sleep(POLL_SECONDS)

    async def expire_stale(self) -> int:
        return 0  # the team broker's work

    def reload_policy(self) -> None:
        """The team broker's policy decides; this server's copy of the pack is not used."""

    # -- the kernel's requests ---------------------------------------------------------------

    async def admit(
        self,
        request: dict[str, Any],
        payload: bytes,
        requester: dict[str, Any],
        files: dict[str, str],
    ) -> dict[str, Any]:
        """Broker.submit checked the request and found the requester and the bound files'
        hashes here; the team broker stores and checks the job (and names the user)."""
        agent = None
        if requester["kind"] == "agent":
            agent = {
                "name": requester["agent"],
                "token_id": requester["agent_id"],
                "manifest": requester["manifest"],
            }
        job = await self.call(
            "jobs",
            method="POST",
            body={
                "request": request,
                "kernel": {
                    "kernel_id": requester["kernel_id"],
                    "notebook": requester["notebook"],
                    "cell_id": requester["cell_id"],
                    "agent": agent,
                },
                "files": files,
            },
            timeout=120,
        )
        return self._changed(job)

    async def get(self, job_id: str, *, history: bool = False) -> dict[str, Any]:
        return await self.call(f"jobs/{job_id}", query={"history": "1" if history else None})

    async def wait(
        self, job_id: str, *, timeout: float, unless_state: str | None = None
    ) -> dict[str, Any]:
        timeout = max(0.0, min(timeout, self.wait_max_seconds))
        job = await self.call(
            f"jobs/{job_id}/wait",
            query={"timeout": f"{timeout:g}", "unless_state": unless_state},
            timeout=timeout + 30,
        )
        return job

    async def cancel(self, job_id: str, actor: str) -> dict[str, Any]:
        return self._changed(
            await self.call(f"jobs/{job_id}/cancel", method="POST", body={"actor": actor})
        )

    async def jobs_for(
        self, *, kernel_id: str, notebook: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await self.call(
            "jobs", query={"kernel_id": kernel_id, "notebook": notebook, "limit": limit}
        )

    # -- the panel ---------------------------------------------------------------------------

    async def list_jobs(
        self,
        *,
        states: list[str] | None,
        limit: int,
        backend: str | None = None,
        user: str | None = None,
        before: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Approvers see the team's queue, others their own jobs: the service decides."""
        return await self.call(
            "jobs",
            query={
                "state": ",".join(states) if states else None,
                "limit": limit,
                "backend": backend,
                "user": user,
                "before": before.isoformat() if before else None,
            },
        )

    async def review(self, job_id: str) -> dict[str, Any]:
        review = await self.call(f"jobs/{job_id}/review")
        if self.tracker is not None and review.get("mine"):
            # Only this server has the files: how each bound file last changed.
            review["files"] = await self.tracker.latest_diffs([f["path"] for f in review["files"]])
        return review

    async def approve(
        self, job_id: str, approver: str, digest: str, otp: str | None = None
    ) -> dict[str, Any]:
        raise ApprovalRefused(
            f"in team mode, jobs are approved on the team broker's page: "
            f"{self.service_url}jobs/{job_id}"
        )

    async def deny(self, job_id: str, actor: str, reason: str) -> dict[str, Any]:
        raise ApprovalRefused(
            f"in team mode, jobs are denied on the team broker's page: "
            f"{self.service_url}jobs/{job_id}"
        )

    # -- the workspace -----------------------------------------------------------------------

    def _hash_now(self, path: str) -> str | None:
        """The file's bound hash now, read as Broker reads bound files (broker/hashing.py: no
        link followed, regular files only, the size cap, in time); None: gone or refused,
        which voids what is bound to it. Blocking: run through `self.hasher.run`."""
        return self.hasher.hash_or_none(path)

    async def void_for_changes(
        self, changes: list[dict[str, Any]], *, user: str | None = None
    ) -> list[str]:
        """Tell the team broker which files changed, with their hashes now: it voids this
        user's approvals bound to them."""
        reported = []
        for c in changes:
            sha = await self.hasher.run(self._hash_now, c["path"])
            reported.append({"id": c["id"], "path": c["path"], "actor": c["actor"], "sha": sha})
        try:
            answer = await self.call("changes", method="POST", body={"changes": reported})
        except BrokerError as exc:
            log.error("qguard: file changes not reported to the team broker: %s", exc)
            return []
        return list(answer.get("voided", []))


def _message(exc: HTTPClientError) -> str:
    try:
        body = json.loads(exc.response.body) if exc.response is not None else {}
        return str(body.get("message") or exc.message)
    except (ValueError, AttributeError):
        return str(exc.message)
