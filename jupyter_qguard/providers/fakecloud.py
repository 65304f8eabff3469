"""The loopback fake cloud (`jupyter qguard fakecloud`) as a provider, over its HTTP API.

It behaves as a cloud provider does, so this is the code path a real cloud takes: the API key
stays in the keyring and is exchanged (by `credentials`, the one module that holds secrets) for
a token scoped to one job and one action, used once; the job is created with the broker's
idempotency key, so a retry or a restart never makes a second job; 429 and 5xx are retried with
backoff (Retry-After when given); results are long-polled.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Float, Int, Unicode

from .. import credentials
from .base import Provider, ProviderError, RunSpec

log = logging.getLogger("jupyter_qguard.providers.fakecloud")

TERMINAL = {"DONE", "ERROR", "CANCELLED"}


class _Retry(Exception):
    """A response worth trying again (429, 5xx, no response)."""

    def __init__(self, why: str, after: float | None) -> None:
        super().__init__(why)
        self.why, self.after = why, after


class FakeCloudProvider(Provider):
    """Runs jobs on the fake cloud's snapshot devices (fake_brisbane, fake_torino)."""

    name = "fakecloud"

    url = Unicode(
        "http://127.0.0.1:8765",
        config=True,
        help="Base URL of the fake cloud (`jupyter qguard fakecloud --port P`).",
    )
    credential = Unicode(
        "fakecloud", config=True, help="Keyring entry (provider name) that holds the API key."
    )
    max_attempts = Int(6, config=True, help="Tries per request on 429, 5xx or no response.")
    backoff_initial = Float(0.5, config=True, help="First backoff delay in seconds (doubles).")
    backoff_max = Float(30.0, config=True, help="Longest wait between tries, Retry-After too.")
    poll_wait = Float(20.0, config=True, help="Seconds each status long-poll may wait.")
    request_timeout = Float(60.0, config=True, help="Seconds before one HTTP request fails.")

    # -- HTTP -----------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        job_ref: str | None = None,
        action: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One call, retried on 429/5xx/no response; with a fresh scoped token per try when
        `action` is given. Returns (status, JSON) for any other status."""
        delay = self.backoff_initial
        last = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await self._once(method, path, job_ref, action, body, headers, timeout)
            except _Retry as retry:
                last = retry.why
                if attempt == self.max_attempts:
                    break
                wait = min(retry.after if retry.after is not None else delay, self.backoff_max)
                # Jitter, so many brokers that were refused together do not return together.
                wait *= 1 + random.random() * 0.1
                log.info(
                    "fakecloud: %s; try %d of %d in %.1f s",
                    last,
                    attempt + 1,
                    self.max_attempts,
                    wait,
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.backoff_max)
        raise ProviderError(
            f"the fake cloud did not answer after {self.max_attempts} tries: {last}"
        )

    async def _once(
        self,
        method: str,
        path: str,
        job_ref: str | None,
        action: str | None,
        body: dict[str, Any] | None,
        headers: dict[str, str] | None,
        timeout: float | None,
    ) -> tuple[int, dict[str, Any]]:
        all_headers = {"Accept": "application/json", **(headers or {})}
        if action is not None:
            assert job_ref is not None
            try:
                token = await credentials.scoped_token(
                    self.credentials, self.credential, self.url, job_ref, action
                )
            except credentials.TokenExchangeError as exc:
                if exc.retryable:
                    raise _Retry(str(exc), exc.retry_after) from None
                raise ProviderError(f"the fake cloud refused the credential: {exc}") from None
            except credentials.CredentialError as exc:
                raise ProviderError(str(exc)) from None
            all_headers.update(token.authorization_header())
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        request = HTTPRequest(
            self.url.rstrip("/") + path,
            method=method,
            headers=all_headers,
            body=json.dumps(body) if body is not None else None,
            connect_timeout=10,
            request_timeout=timeout or self.request_timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (HTTPClientError, OSError) as exc:
            raise _Retry(f"no response from {self.url} ({exc})", None) from None
        try:
            data = json.loads(response.body or b"{}")
        except ValueError:
            data = {}
        if response.code == 599:
            raise _Retry(f"no response from {self.url} ({response.error})", None)
        if response.code == 429 or response.code >= 500:
            raise _Retry(_describe(response.code, data), _retry_after(response.headers))
        return response.code, data

    # -- the provider ---------------------------------------------------------------------

    async def backends(self) -> list[dict[str, Any]]:
        """The devices the cloud offers, with their current calibration snapshot id."""
        status, data = await self._request("GET", "/v1/backends", timeout=10)
        if status != 200:
            raise ProviderError(f"listing backends: {_describe(status, data)}")
        return list(data.get("backends", []))

    async def calibration(self, spec: RunSpec) -> dict[str, Any] | None:
        name = spec.options.get("remote_name", spec.backend)
        status, data = await self._request("GET", f"/v1/backends/{name}/calibration", timeout=30)
        if status != 200:
            raise ProviderError(f"reading the calibration of {name}: {_describe(status, data)}")
        return data

    async def submit(self, spec: RunSpec) -> str:
        body = {
            "backend": spec.options.get("remote_name", spec.backend),
            "program": {
                "format": spec.program_format,
                "payload_b64": base64.b64encode(spec.payload).decode(),
            },
            "shots": spec.shots,
            "seed": spec.seed,
        }
        status, data = await self._request(
            "POST",
            "/v1/jobs",
            job_ref=spec.idempotency_key,
            action="create",
            body=body,
            headers={"Idempotency-Key": spec.idempotency_key},
        )
        if status not in (200, 201):
            raise ProviderError(f"the fake cloud refused the job: {_describe(status, data)}")
        return str(data["id"])

    async def result(self, spec: RunSpec, provider_job_id: str) -> dict[str, Any]:
        while True:
            status, data = await self._request(
                "GET",
                f"/v1/jobs/{provider_job_id}?wait={self.poll_wait:g}",
                job_ref=spec.idempotency_key,
                action="read",
                timeout=self.poll_wait + 30,
            )
            if status != 200:
                raise ProviderError(f"reading job {provider_job_id}: {_describe(status, data)}")
            if data.get("status") in TERMINAL:
                return _finished(provider_job_id, data)

    async def recover(self, spec: RunSpec, provider_job_id: str | None) -> dict[str, Any]:
        if provider_job_id is None:
            # The broker stopped between handing the job over and hearing back: ask the cloud
            # by our key. Submitting again would be safe too (the same key never makes a
            # second job), but a lookup says truthfully whether it had arrived.
            status, data = await self._request(
                "GET",
                f"/v1/jobs?job_ref={spec.idempotency_key}",
                job_ref=spec.idempotency_key,
                action="read",
            )
            if status != 200:
                raise ProviderError(f"looking the job up: {_describe(status, data)}")
            found = data.get("jobs") or []
            provider_job_id = str(found[0]["id"]) if found else await self.submit(spec)
        return await self.result(spec, provider_job_id)


def _finished(provider_job_id: str, data: dict[str, Any]) -> dict[str, Any]:
    if data["status"] == "ERROR":
        error = data.get("error") or {}
        raise ProviderError(
            f"the job failed at the fake cloud ({error.get('code', 'error')}): "
            f"{error.get('message', 'no message')}"
        )
    if data["status"] == "CANCELLED":
        raise ProviderError("the job was cancelled at the fake cloud")
    result = dict(data.get("result") or {})
    return {
        "counts": result.get("counts", {}),
        "shots": result.get("shots"),
        "seed": result.get("seed"),
        "provider": {
            "name": "fakecloud",
            "job_id": provider_job_id,
            "backend": result.get("backend"),
            "calibration_id": result.get("calibration_id"),
            "execution_seconds": result.get("execution_seconds"),
            "cost": data.get("cost"),
        },
    }


def _describe(status: int, data: dict[str, Any]) -> str:
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return f"HTTP {status} {error.get('code', '')}: {error.get('message', '')}".strip()
    return f"HTTP {status}"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
