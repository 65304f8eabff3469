"""Short-lived, single-use access tokens, each scoped to one job_ref and one action.

Only a SHA-256 of each token is kept: a copy of the server's memory (or a log of it) does not
hold a token anyone could still use.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .errors import ApiError

ACTIONS = ("create", "read", "cancel")
TOKEN_PREFIX = "fct_"
MAX_JOB_REF_LENGTH = 200
# How long an expired token is still recognised (and reported as expired rather than unknown).
EXPIRED_MEMORY_SECONDS = 600.0


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_secret(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class TokenRecord:
    job_ref: str
    action: str
    expires_at: float
    used: bool = False


class TokenStore:
    def __init__(
        self,
        max_ttl: float,
        clock: Callable[[], float] = time.time,
        record_to: Path | None = None,
    ) -> None:
        self.max_ttl = max_ttl
        self.clock = clock
        # Tests only: every token issued, one a line, so a test can search the broker's state,
        # logs and the agent kernel for tokens that must never reach them.
        self.record_to = record_to
        self._records: dict[str, TokenRecord] = {}
        self.issued = 0
        self.redeemed = 0

    def issue(self, job_ref: object, action: object, ttl: object = None) -> dict[str, object]:
        if not isinstance(job_ref, str) or not job_ref.strip():
            raise ApiError(400, "bad_request", "job_ref must be a non-empty string.")
        if len(job_ref) > MAX_JOB_REF_LENGTH:
            raise ApiError(
                400, "bad_request", f"job_ref is longer than {MAX_JOB_REF_LENGTH} characters."
            )
        if action not in ACTIONS:
            raise ApiError(
                400,
                "bad_action",
                f"action must be one of {', '.join(ACTIONS)}, not {action!r}.",
            )
        if ttl is None:
            ttl = self.max_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
            raise ApiError(400, "bad_ttl", "ttl must be a positive number of seconds.")
        # A longer lifetime than the server allows is cut to it; expires_at says which.
        ttl = min(float(ttl), self.max_ttl)
        now = self.clock()
        self._forget_old(now)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._records[token_hash(token)] = TokenRecord(job_ref, str(action), now + ttl)
        if self.record_to is not None:
            with open(self.record_to, "a", encoding="utf-8") as f:
                f.write(token + "\n")
        self.issued += 1
        return {
            "token": token,
            "expires_at": iso(now + ttl),
            "ttl": ttl,
            "job_ref": job_ref,
            "action": action,
        }

    def redeem(self, token: str | None, action: str) -> TokenRecord:
        """Use a token up for `action`; the caller checks that its job_ref fits the request.

        A live token is used up by the first request that presents it, whatever that request's
        outcome: a token that leaked into a failed request cannot be tried again.
        """
        if not token:
            raise ApiError(
                401,
                "invalid_token",
                "No access token was sent: put one from POST /v1/tokens in the Authorization "
                "header as 'Bearer <token>'.",
            )
        record = self._records.get(token_hash(token))
        if record is None:
            raise ApiError(401, "invalid_token", "The access token is not one this service issued.")
        if record.used:
            raise ApiError(
                401, "token_used", "The access token was already used; each token works once."
            )
        if self.clock() >= record.expires_at:
            raise ApiError(
                401,
                "token_expired",
                f"The access token expired at {iso(record.expires_at)}; ask for a new one.",
            )
        record.used = True
        self.redeemed += 1
        if record.action != action:
            raise ApiError(
                403,
                "token_scope",
                f"The access token was issued to {record.action} a job, not to {action} one.",
            )
        return record

    def _forget_old(self, now: float) -> None:
        cutoff = now - EXPIRED_MEMORY_SECONDS
        for key in [k for k, r in self._records.items() if r.expires_at < cutoff]:
            del self._records[key]

    def counts(self) -> dict[str, int]:
        return {"issued": self.issued, "redeemed": self.redeemed, "held": len(self._records)}
