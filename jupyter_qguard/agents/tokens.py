"""Agent tokens, stored hashed in the broker's database (SQLite or PostgreSQL, the same tables).

A row keeps the token's digest (never the token), the agent's name, the manifest the token was
made with (its text), when it expires and whether it was revoked. Tokens are made and hashed in
credentials.py; this module only compares digests.

A token minted for one run of `jupyter qguard agent run` is a lease: it is made with a short
lifetime, which the CLI renews while the run lasts (`renew`); a CLI that dies, even by
SIGKILL, stops renewing, and the token is dead within one lease. When the run ends, the token
is revoked by its id (`revoke_id`), never by name (the person's other tokens for the agent
stay).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, String, Text, select, update
from sqlalchemy.orm import Mapped, mapped_column, sessionmaker

from .. import credentials as creds
from ..broker.store import Base, UTCDateTime
from .manifest import Manifest

AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class AgentTokenError(ValueError):
    pass


class AgentTokenRow(Base):
    __tablename__ = "qguard_agent_tokens"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[str] = mapped_column(Text)
    manifest_source: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True)
class Agent:
    """An authenticated agent: the token's id and name, and what it may do."""

    token_id: str
    name: str
    manifest: Manifest


def parse_ttl(text: str) -> dt.timedelta:
    """'90m', '12h', '7d', '2w' (or a number of seconds)."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text)
    if not m or int(m.group(1)) == 0:
        raise AgentTokenError(f"--ttl {text!r}: give a positive number with s, m, h, d or w")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return dt.timedelta(seconds=int(m.group(1)) * unit)


class AgentTokens:
    def __init__(self, engine: Engine, *, policy_dir: str | Path) -> None:
        self.policy_dir = policy_dir
        # The broker's tables and this one (create_all skips those that exist).
        Base.metadata.create_all(engine)
        self._session = sessionmaker(engine, expire_on_commit=False)
        self._lock = threading.Lock()
        # Manifests parsed once per token (they never change for a token).
        self._manifests: dict[str, Manifest] = {}

    def create(
        self, name: str, manifest: Manifest, *, ttl: dt.timedelta | None = None
    ) -> tuple[dict[str, Any], str]:
        """A new token for `name`: (its row, the token itself, to be shown once)."""
        if not AGENT_NAME.fullmatch(name):
            raise AgentTokenError(
                f"agent name {name!r}: letters, digits, '.', '_' and '-', up to 64, "
                "starting with a letter or digit"
            )
        token_id, token, digest = creds.mint_agent_token()
        now = dt.datetime.now(dt.UTC)
        row = AgentTokenRow(
            id=token_id,
            name=name,
            digest=digest,
            manifest=manifest_text(manifest),
            manifest_source=manifest.source,
            created_at=now,
            expires_at=now + ttl if ttl else None,
            revoked_at=None,
        )
        with self._lock, self._session.begin() as session:
            session.add(row)
        return _row_dict(row), token

    def list(self) -> list[dict[str, Any]]:
        with self._lock, self._session() as session:
            rows = session.scalars(select(AgentTokenRow).order_by(AgentTokenRow.created_at))
            return [_row_dict(r) for r in rows]

    def revoke(self, name_or_id: str) -> int:
        """Revoke the token with this id, or every live token of the agent with this name."""
        now = dt.datetime.now(dt.UTC)
        with self._lock, self._session.begin() as session:
            res = session.execute(
                update(AgentTokenRow)
                .where(
                    (AgentTokenRow.id == name_or_id) | (AgentTokenRow.name == name_or_id),
                    AgentTokenRow.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            return int(res.rowcount or 0)

    def revoke_id(self, token_id: str) -> bool:
        """Revoke the one token with this id (not other tokens of its agent's name)."""
        now = dt.datetime.now(dt.UTC)
        with self._lock, self._session.begin() as session:
            res = session.execute(
                update(AgentTokenRow)
                .where(AgentTokenRow.id == token_id, AgentTokenRow.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return bool(res.rowcount)

    def renew(self, token_id: str, lease: dt.timedelta) -> dt.datetime | None:
        """Extend a live token's lease to `lease` from now; its new expiry, or None when it is
        revoked, already expired (a lapsed lease is not revived) or unknown."""
        now = dt.datetime.now(dt.UTC)
        until = now + lease
        with self._lock, self._session.begin() as session:
            res = session.execute(
                update(AgentTokenRow)
                .where(
                    AgentTokenRow.id == token_id,
                    AgentTokenRow.revoked_at.is_(None),
                    AgentTokenRow.expires_at.is_not(None),
                    AgentTokenRow.expires_at > now,
                )
                .values(expires_at=until)
            )
            return until if res.rowcount else None

    def authenticate(self, presented: str) -> Agent | None:
        """The agent a presented token belongs to; None if unknown, revoked or expired."""
        parsed = creds.agent_token_id(presented)
        if parsed is None:
            return None
        token_id, digest = parsed
        with self._lock, self._session() as session:
            row = session.get(AgentTokenRow, token_id)
            if row is None or not creds.agent_digest_matches(row.digest, digest):
                return None
            if row.revoked_at is not None:
                return None
            expires = row.expires_at
            if expires is not None and expires <= dt.datetime.now(dt.UTC):
                return None
            name, text, source = row.name, row.manifest, row.manifest_source
        manifest = self._manifests.get(token_id)
        if manifest is None:
            manifest = Manifest.parse(text, source=source, policy_dir=self.policy_dir)
            self._manifests[token_id] = manifest
        return Agent(token_id=token_id, name=name, manifest=manifest)


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.data, sort_keys=True)


def _row_dict(row: AgentTokenRow) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    expires = row.expires_at
    revoked = row.revoked_at
    state = (
        "revoked" if revoked else "expired" if expires is not None and expires <= now else "active"
    )
    return {
        "id": row.id,
        "name": row.name,
        "state": state,
        "created_at": row.created_at.isoformat(),
        "expires_at": expires.isoformat() if expires else None,
        "revoked_at": revoked.isoformat() if revoked else None,
        "manifest": row.manifest_source,
    }
