"""Runs of `jupyter qguard agent run`, as the server keeps them (the CLI side is run.py).

A run is one confined agent process. Starting it mints an agent token with the run's
manifest and a short lease (tokens.py), which the CLI renews while the process lives; ending
it revokes that token. The run's connections through its egress proxy and its Jupyter
forwarder arrive in batches and are written to the audit log one entry each. The server keeps
runs in memory only: after a restart the CLI's next renewal finds no run (404) and the token
dies with its lease, as it does when the CLI is killed; a sweep writes `agent_run.ended` for a
run whose lease lapsed.

Every audit write here must succeed (fail closed): a run that cannot be recorded does not
start, and a batch of connections that cannot be recorded is refused, so the CLI stops
admitting new connections.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema

from .manifest import Manifest
from .tokens import AgentTokens

LEASE_MIN_SECONDS = 5
LEASE_MAX_SECONDS = 600
LEASE_DEFAULT_SECONDS = 60
MAX_COMMAND_ITEMS = 64
MAX_BATCH = 1000
ENDED_KEPT = 1000

_TEXT = {"type": "string", "maxLength": 300}
START_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64},
        "manifest": {"type": "string", "maxLength": 65536},
        "manifest_source": {"type": "string", "maxLength": 1024},
        "lease_seconds": {
            "type": "integer",
            "minimum": LEASE_MIN_SECONDS,
            "maximum": LEASE_MAX_SECONDS,
        },
        "command": {
            "type": "array",
            "maxItems": MAX_COMMAND_ITEMS,
            "items": {"type": "string", "maxLength": 4096},
        },
    },
}
CONNECTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["seq", "via", "host", "port", "allowed", "reason", "bytes_up", "bytes_down"],
    "properties": {
        # The record's number in its run, from 0: a batch sent again (its answer was lost,
        # or the CLI gave up waiting) is written once.
        "seq": {"type": "integer", "minimum": 0},
        "via": {"enum": ["proxy", "jupyter"]},
        "method": {"type": "string", "maxLength": 16},
        "host": {"type": "string", "maxLength": 262},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "address": {"type": "string", "maxLength": 64},
        "allowed": {"type": "boolean"},
        "reason": _TEXT,
        "bytes_up": {"type": "integer", "minimum": 0},
        "bytes_down": {"type": "integer", "minimum": 0},
        "started": {"type": "string", "maxLength": 40},
        "ended": {"type": "string", "maxLength": 40},
    },
}
CONNECTIONS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["connections"],
    "properties": {
        "connections": {"type": "array", "maxItems": MAX_BATCH, "items": CONNECTION_SCHEMA},
        # Records the CLI had to drop (its queue full while the server refused them).
        "dropped": {"type": "integer", "minimum": 0},
    },
}
SANDBOX_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ok", "active"],
    "properties": {
        "ok": {"type": "boolean"},
        "active": {"type": "array", "maxItems": 32, "items": {"type": "string", "maxLength": 32}},
        "missing": {"type": "array", "maxItems": 32, "items": _TEXT},
        "uid": {"type": "integer"},
    },
}


class RunRefused(ValueError):
    """A request about a run that cannot be done; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check(schema: dict[str, Any], body: Any) -> None:
    """RunRefused(400) naming the first place the body does not follow the schema."""
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(body), key=lambda e: list(e.path)
    )
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "the body"
        raise RunRefused(400, f"{where}: {errors[0].message}")


@dataclass
class AgentRun:
    id: str
    name: str
    token_id: str
    user: str
    started: dt.datetime
    lease_seconds: int
    lease_until: dt.datetime
    connections: int = 0
    refused: int = 0
    next_seq: int = 0  # the first record number not yet written


class AgentRuns:
    """The runs of this server. Its methods block (database, audit log): call them in a
    thread. `audit(kind, **fields)` writes one entry or raises (AuditUnavailable)."""

    def __init__(self, tokens: AgentTokens, audit: Callable[..., Any]) -> None:
        self.tokens = tokens
        self.audit = audit
        self._runs: dict[str, AgentRun] = {}
        # Runs that ended, and why (the last ENDED_KEPT): a late call about one says so (409)
        # instead of "no such run".
        self._ended: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        manifest: Manifest,
        *,
        user: str,
        lease_seconds: int = LEASE_DEFAULT_SECONDS,
        command: list[str] | None = None,
    ) -> tuple[AgentRun, str]:
        """A new run and its token (shown once, to the CLI). AgentTokenError for a bad name;
        the audit log's error when `agent_run.started` cannot be written (then the token is
        revoked at once: a run that is not recorded never ran)."""
        lease = dt.timedelta(seconds=lease_seconds)
        row, token = self.tokens.create(name, manifest, ttl=lease)
        now = dt.datetime.now(dt.UTC)
        run = AgentRun(
            id=secrets.token_hex(16),
            name=name,
            token_id=row["id"],
            user=user,
            started=now,
            lease_seconds=lease_seconds,
            lease_until=now + lease,
        )
        try:
            self.audit(
                "agent_run.started",
                run=run.id,
                agent=name,
                token_id=run.token_id,
                user=user,
                manifest=manifest.source,
                network=sorted(f"{h}:{p}" for h, p in manifest.network_allow),
                lease_seconds=lease_seconds,
                # The program, not its arguments: a person may pass a key as one, and secrets
                # never enter the log.
                program=os.path.basename(command[0]) if command else "",
                arguments=max(len(command or []) - 1, 0),
            )
        except Exception:
            self.tokens.revoke_id(run.token_id)
            raise
        with self._lock:
            self._runs[run.id] = run
        return run, token

    def get(self, run_id: str) -> AgentRun:
        with self._lock:
            run = self._runs.get(run_id)
            ended = self._ended.get(run_id)
        if ended is not None:
            raise RunRefused(409, f"agent run {run_id} has ended ({ended}): its token is dead")
        if run is None:
            raise RunRefused(404, f"no agent run {run_id} (or the server restarted since)")
        return run

    def renew(self, run_id: str) -> dt.datetime:
        run = self.get(run_id)
        until = self.tokens.renew(run.token_id, dt.timedelta(seconds=run.lease_seconds))
        if until is None:
            raise RunRefused(
                409,
                f"the lease of agent run {run_id} lapsed at {run.lease_until.isoformat()} (or "
                "its token was revoked): its token is dead and stays so",
            )
        run.lease_until = until
        return until

    def confined(self, run_id: str, summary: dict[str, Any]) -> None:
        run = self.get(run_id)
        self.audit("agent_run.confined", run=run.id, agent=run.name, **summary)

    def add_connections(self, run_id: str, records: list[dict[str, Any]], dropped: int) -> int:
        """One `agent_run.connection` entry each, in order, for the records not written yet
        (by `seq`); raises at the first that cannot be written (the CLI sends the batch
        again). How many were written."""
        run = self.get(run_id)
        written = 0
        with self._lock:  # one writer per run: two deliveries of one batch never interleave
            for record in records:
                if record["seq"] < run.next_seq:
                    continue  # delivered before
                self.audit("agent_run.connection", run=run.id, agent=run.name, **record)
                run.next_seq = record["seq"] + 1
                run.connections += 1
                run.refused += 0 if record["allowed"] else 1
                written += 1
            if dropped and (written or not records):  # once, with the batch that follows them
                self.audit(
                    "agent_run.connections_dropped", run=run.id, agent=run.name, count=dropped
                )
        return written

    def end(self, run_id: str, *, reason: str, exit_status: int | None = None) -> AgentRun:
        """Revoke the run's token and write `agent_run.ended`."""
        self.get(run_id)  # 404 or 409 as for any other call
        with self._lock:
            run = self._runs.pop(run_id, None)
            if run is not None:
                self._ended[run_id] = reason
                while len(self._ended) > ENDED_KEPT:
                    del self._ended[next(iter(self._ended))]
        if run is None:  # ended meanwhile, by the sweep or its CLI
            raise RunRefused(409, f"agent run {run_id} has ended: its token is dead")
        self.tokens.revoke_id(run.token_id)
        self.audit(
            "agent_run.ended",
            run=run.id,
            agent=run.name,
            reason=reason,
            exit_status=exit_status,
            connections=run.connections,
            refused=run.refused,
            seconds=round((dt.datetime.now(dt.UTC) - run.started).total_seconds(), 3),
        )
        return run

    def sweep(self) -> list[str]:
        """End the runs whose lease lapsed (their CLI died or hangs); their ids."""
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            lapsed = [r.id for r in self._runs.values() if r.lease_until <= now]
        ended = []
        for run_id in lapsed:
            try:
                self.end(run_id, reason="lease lapsed")
                ended.append(run_id)
            except RunRefused:
                pass  # ended by its CLI meanwhile
        return ended
