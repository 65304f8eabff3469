"""The broker core as the team's one broker (hub service): requests arrive from users' servers.

What a desktop broker finds out itself, a team broker is told by the user's server, which it
trusts as far as the hub vouches for it: *who* asks is the hub's answer for the server's token
(never the request body); the kernel, notebook, agent and the bound files' hashes come from that
server (the kernel never reaches the service: its network is cut). Each server speaks only for
its own user's jobs: it reads, waits on, cancels and voids those and no others.
"""

from __future__ import annotations

import re
from typing import Any

from ..broker.jobs import InvalidRequest, validate_request
from ..broker.service import Broker, JobNotFound
from ..broker.store import utcnow

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _text(value: Any, name: str, *, limit: int = 1024, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InvalidRequest(f"{name}: a string of 1 to {limit} characters")
    return value


class TeamBroker(Broker):
    """A Broker whose requests come through the hub service's API (hub/service_app.py)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Members of each hub group, as the hub last said (refreshed at every request):
        # a group's budget counts what all of them spent today.
        self.group_members: dict[str, list[str]] = {}
        # The newest hash of each bound file the user's server reported: (user, path) → sha
        # (None: deleted). Read at the last look before a job leaves.
        self.reported_files: dict[tuple[str, str], str | None] = {}
        # Team servers check each approver's own authenticator.
        self.mfa_single_user = False

    async def _run_probe(self) -> dict[str, Any]:
        return {}  # no kernels run here: users' servers probe their own machines

    # -- requests from users' servers -------------------------------------------------------

    def requester_from(self, user: dict[str, Any], kernel: Any) -> dict[str, Any]:
        """The requester: the hub's user (name, groups) and what their server says of the
        kernel. Nothing in it names a user but the hub's answer."""
        if not isinstance(kernel, dict):
            raise InvalidRequest("kernel: an object {kernel_id, notebook, cell_id, agent}")
        requester: dict[str, Any] = {
            "user": user["name"],
            "kind": "user",
            "kernel_id": _text(kernel.get("kernel_id"), "kernel/kernel_id", limit=64),
            "notebook": _text(kernel.get("notebook"), "kernel/notebook", optional=True),
            "cell_id": _text(kernel.get("cell_id"), "kernel/cell_id", limit=128, optional=True),
            "cell_id_source": "kernel",
            "groups": sorted(str(g) for g in user.get("groups") or []),
            "via": "hub",
        }
        agent = kernel.get("agent")
        if agent is not None:
            if not isinstance(agent, dict) or not isinstance(agent.get("manifest"), dict):
                raise InvalidRequest("kernel/agent: an object {name, token_id, manifest}")
            requester.update(
                kind="agent",
                agent=_text(agent.get("name"), "kernel/agent/name", limit=128),
                agent_id=_text(agent.get("token_id"), "kernel/agent/token_id", limit=64),
                manifest=agent["manifest"],
            )
        return requester

    @staticmethod
    def bound_files(files: Any) -> dict[str, str]:
        if not isinstance(files, dict) or len(files) > 1000:
            raise InvalidRequest("files: an object {path: sha256} of at most 1000 files")
        out = {}
        for path, sha in files.items():
            _text(path, "files/<path>", limit=4096)
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise InvalidRequest(f"files/{path}: a sha256 in hex")
            out[path] = sha
        return out

    async def submit_from(self, user: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """A request forwarded by `user`'s server: {request, kernel, files}."""
        request = body.get("request")
        payload = validate_request(request)  # raises InvalidRequest: nothing stored
        requester = self.requester_from(user, body.get("kernel"))
        files = self.bound_files(body.get("files", {}))
        for path, sha in files.items():
            self.reported_files[(requester["user"], path)] = sha
        return await self.admit(request, payload, requester, files)

    async def own_job(self, user: str, job_id: str, *, history: bool = False) -> dict[str, Any]:
        """A job of `user`'s; someone else's is as good as absent (no probing of ids)."""
        job = await self.get(job_id, history=history)
        if job["requester"].get("user") != user:
            raise JobNotFound(job_id)
        return job

    async def jobs_of(
        self, user: str, *, kernel_id: str | None, notebook: str | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._db(
            self.store.list, user=user, kernel_id=kernel_id, notebook=notebook, limit=100000
        )
        return rows[:limit]

    async def files_changed(self, user: str, changes: list[dict[str, Any]]) -> list[str]:
        """`user`'s server saw these files change ({id, path, actor, sha}; sha None: gone):
        void that user's approvals bound to them."""
        for change in changes:
            self.reported_files[(user, change["path"])] = change.get("sha")
        return await self.void_for_changes(changes, user=user)

    def _changed_files(
        self, files: dict[str, str], changes: dict[str, Any] | None = None, user: str = ""
    ) -> list[str]:
        """The service cannot read users' files: it compares with the hashes their servers
        reported (in `changes`, or the newest known)."""
        changed = []
        for path, bound in sorted(files.items()):
            if changes is not None and path in changes:
                now = changes[path].get("sha")
            else:
                now = self.reported_files.get((user, path), bound)
            if now != bound:
                changed.append(path)
        return changed

    # -- budgets of groups ------------------------------------------------------------------

    def _usage(
        self, user: str, kernel_id: str | None, job: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        usage = super()._usage(user, kernel_id, job)
        groups = ((job or {}).get("requester") or {}).get("groups") or []
        if groups:
            day_start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
            usage["groups"] = {
                g: {
                    "spent_today": round(
                        self.store.spent_since(self.group_members.get(g, [user]), day_start), 6
                    )
                }
                for g in groups
            }
        return usage
