"""The job: its states, the allowed transitions, request validation and the approval digest.

Everything here is pure (no I/O) so the store, the service, the REST handlers and the CLI
share one definition of what a job is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from enum import StrEnum
from functools import cache
from importlib.resources import files
from typing import Any

import jsonschema

SCHEMA_ID = "qguard.job/v1"


class State(StrEnum):
    RECEIVED = "received"
    REJECTED = "rejected"
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    VOIDED = "voided"
    CANCELLED = "cancelled"
    QUEUED = "queued"
    SUBMITTED = "submitted"
    COMPLETED = "completed"
    FAILED = "failed"


# DESIGN.md, "The job". Cancelling is also allowed while a job waits in the queue: nothing has
# reached a provider yet, so withdrawing it is safe.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.RECEIVED: frozenset({State.REJECTED, State.PENDING_APPROVAL, State.QUEUED}),
    State.PENDING_APPROVAL: frozenset(
        {State.APPROVED, State.DENIED, State.EXPIRED, State.VOIDED, State.CANCELLED}
    ),
    State.APPROVED: frozenset({State.QUEUED, State.VOIDED, State.CANCELLED}),
    # queued → voided: a bound file changed after approval, found by the re-hash before submit.
    State.QUEUED: frozenset({State.SUBMITTED, State.CANCELLED, State.FAILED, State.VOIDED}),
    State.SUBMITTED: frozenset({State.COMPLETED, State.FAILED}),
}

TERMINAL: frozenset[State] = frozenset(
    {
        State.REJECTED,
        State.DENIED,
        State.EXPIRED,
        State.VOIDED,
        State.CANCELLED,
        State.COMPLETED,
        State.FAILED,
    }
)

# Moves that can lead to nothing reaching a provider: they go ahead even when the audit log
# cannot be written (stopping a job is always safe, and a finished job's result must be kept);
# every other move needs its audit entry first.
AUDIT_OPTIONAL: frozenset[State] = TERMINAL

CANCELLABLE: frozenset[State] = frozenset(
    s for s, targets in TRANSITIONS.items() if State.CANCELLED in targets
)


class InvalidRequest(ValueError):
    """A job request that does not meet the schema; the message says which part and why."""


def can_transition(src: State | str, dst: State | str) -> bool:
    return State(dst) in TRANSITIONS.get(State(src), frozenset())


@cache
def job_schema() -> dict[str, Any]:
    text = files("jupyter_qguard.broker").joinpath("schemas/job.v1.json").read_text("utf-8")
    return json.loads(text)


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = job_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate_request(request: Any) -> bytes:
    """Validate a `qguard.job/v1` request; return the decoded program payload.

    Unknown fields are rejected (the schema says `additionalProperties: false` everywhere), the
    payload must be valid base64 and its SHA-256 must match the one the request states.
    """
    errors = sorted(_validator().iter_errors(request), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.path) or "(request)"
        raise InvalidRequest(f"{where}: {first.message}")
    try:
        payload = base64.b64decode(request["program"]["payload_b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"program/payload_b64: not valid base64 ({exc})") from None
    digest = hashlib.sha256(payload).hexdigest()
    if digest != request["program"]["sha256"]:
        raise InvalidRequest(
            "program/sha256: does not match the payload "
            f"(stated {request['program']['sha256'][:12]}…, actual {digest[:12]}…)"
        )
    return payload


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: the one serialization every digest in qguard uses."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def approval_digest(
    *,
    program_sha256: str,
    backend: str,
    shots: int,
    seed: int | None,
    max_cost: float | None,
    files: dict[str, str],
    policy_version: str,
) -> str:
    """SHA-256 over what a human approves (DESIGN.md, "The job").

    The human approves this digest, not a job id: if any of these values changes, the digest
    changes and an approval given for the old one cannot be applied.
    """
    body = {
        "program.sha256": program_sha256,
        "backend": backend,
        "shots": shots,
        "seed": seed,
        "max_cost": max_cost,
        "files": dict(sorted(files.items())),
        "policy_version": policy_version,
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()
