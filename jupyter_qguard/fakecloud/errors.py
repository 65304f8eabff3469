"""The one error type the fake cloud's API answers with."""

from __future__ import annotations

from typing import Any

from tornado.web import HTTPError


class ApiError(HTTPError):
    """An error response: `{"error": {"code": ..., "message": ...}}` with an HTTP status.

    `message` is a sentence for a person; `code` is what a client branches on.
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status, reason=None)
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"
