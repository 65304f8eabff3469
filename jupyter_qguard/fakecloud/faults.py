"""Injected faults: what a real provider does on a bad day, on demand, for tests and demos."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ApiError

# Faults that act on the next requests to an endpoint; the others act on jobs or backends.
REQUEST_KINDS = ("unauthorized", "rate_limit", "server_error", "slow")
KINDS = (*REQUEST_KINDS, "job_error", "calibration_drift")
ENDPOINTS = ("tokens", "create", "status", "any")
SERVER_ERROR_STATUSES = (500, 502, 503)
MAX_DELAY = 60.0
MAX_COUNT = 10_000


@dataclass
class Fault:
    id: int
    kind: str
    endpoint: str
    remaining: int
    # "before": the request is refused and has no effect. "after" (server_error only): the
    # request takes effect and then its response is lost, as when a gateway times out.
    phase: str = "before"
    retry_after: int | None = None
    status: int | None = None
    delay: float | None = None
    backend: str | None = None
    message: str | None = None

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def error(self) -> ApiError:
        if self.kind == "unauthorized":
            return ApiError(
                401,
                "invalid_api_key",
                "The credentials were rejected: the API key was revoked or is not recognised.",
                {"WWW-Authenticate": 'Bearer realm="fakecloud"'},
            )
        if self.kind == "rate_limit":
            assert self.retry_after is not None
            return ApiError(
                429,
                "rate_limited",
                f"Too many requests; retry after {self.retry_after} seconds.",
                {"Retry-After": str(self.retry_after)},
            )
        assert self.status is not None
        return ApiError(
            self.status,
            "server_error",
            "The service had an internal error and could not complete the request; "
            "try again later.",
        )


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_fault", message)


def _number(spec: dict[str, Any], key: str, default: float | None) -> float | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{key} must be a number.")
    return float(value)


class FaultInjector:
    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    def parse(self, spec: object, backends: list[str]) -> Fault:
        """Validate a fault as posted to /v1/admin/faults."""
        if not isinstance(spec, dict):
            raise _bad("The body must be a JSON object describing one fault.")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise _bad(f"kind must be one of {', '.join(KINDS)}, not {kind!r}.")
        endpoint = spec.get("endpoint", "any")
        if endpoint not in ENDPOINTS:
            raise _bad(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}.")
        count = spec.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise _bad(f"count must be a whole number from 1 to {MAX_COUNT}.")
        phase = spec.get("phase", "before")
        if phase not in ("before", "after") or (phase == "after" and kind != "server_error"):
            raise _bad('phase is "before", or "after" for a server_error.')
        fault = Fault(next(self._ids), kind, endpoint, count, phase)
        if kind == "rate_limit":
            retry_after = _number(spec, "retry_after", 1)
            assert retry_after is not None
            if retry_after < 0:
                raise _bad("retry_after must not be negative.")
            # Retry-After carries whole seconds.
            fault.retry_after = math.ceil(retry_after)
        elif kind == "server_error":
            status = spec.get("status", 503)
            if status not in SERVER_ERROR_STATUSES:
                raise _bad(f"status must be one of {SERVER_ERROR_STATUSES}, not {status!r}.")
            fault.status = status
        elif kind == "slow":
            delay = _number(spec, "delay", None)
            if delay is None or not 0 < delay <= MAX_DELAY:
                raise _bad(
                    f"a slow fault needs a delay in seconds, more than 0, at most {MAX_DELAY}."
                )
            fault.delay = delay
        elif kind in ("job_error", "calibration_drift"):
            backend = spec.get("backend")
            if kind == "calibration_drift" and backend is None:
                raise _bad("a calibration_drift fault needs the backend to drift.")
            if backend is not None and backend not in backends:
                raise ApiError(404, "unknown_backend", f"There is no backend {backend!r}.")
            fault.backend = backend
            message = spec.get("message")
            if message is not None and not isinstance(message, str):
                raise _bad("message must be a string.")
            fault.message = message
        return fault

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)

    def clear(self) -> int:
        n = len(self._faults)
        self._faults.clear()
        return n

    def active(self) -> list[dict[str, Any]]:
        return [f.describe() for f in self._faults]

    def _take(self, fault: Fault) -> Fault:
        fault.remaining -= 1
        if fault.remaining <= 0:
            self._faults.remove(fault)
        return fault

    def for_request(self, category: str) -> tuple[float, Fault | None]:
        """Apply the faults to one request: the total delay, and the fault that fails it
        (before or after it takes effect), if any. Each fault that applies counts down."""
        delay = 0.0
        failing: Fault | None = None
        for fault in list(self._faults):
            if fault.kind not in REQUEST_KINDS or fault.endpoint not in (category, "any"):
                continue
            if fault.kind == "slow":
                self._take(fault)
                delay += fault.delay or 0.0
            elif failing is None:
                failing = self._take(fault)
        return delay, failing

    def take_job_error(self, backend: str) -> Fault | None:
        for fault in self._faults:
            if fault.kind == "job_error" and fault.backend in (None, backend):
                return self._take(fault)
        return None
