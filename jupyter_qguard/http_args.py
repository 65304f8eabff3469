"""What the REST handlers read from a request, checked the same way everywhere: the server's
handlers (handlers.py) and the team broker service's (hub/service_app.py). Errors are 400s
that say what was wrong."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from tornado import web


def json_object(raw: bytes | None) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise web.HTTPError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPError(400, "the body must be a JSON object")
    return body


def limit(text: str, maximum: int = 1000) -> int:
    """?limit=N, held to 1..maximum."""
    try:
        value = int(text)
    except ValueError:
        raise web.HTTPError(400, "limit must be an integer") from None
    return min(max(value, 1), maximum)


def iso_time(name: str, text: str, *, accepts: str = "an ISO 8601 time") -> dt.datetime | None:
    """An ISO 8601 argument (no zone means UTC); None when empty."""
    if not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise web.HTTPError(400, f"{name} must be {accepts}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
