"""The fake cloud's HTTP API: a loopback stand-in for a quantum provider's cloud.

Wire format (JSON bodies, UTF-8; times are ISO 8601 UTC with a trailing Z; money is
`{"amount": float, "currency": "USD"}` rounded to 6 decimals).

Errors, always::

    {"error": {"code": "<machine code>", "message": "<a sentence a person understands>"}}

Credentials
    The long-lived API key goes in `Authorization: Bearer <key>` on `POST /v1/tokens` and
    `GET /v1/usage` only. Job endpoints take short-lived access tokens instead.

`POST /v1/tokens` (API key)
    body `{"job_ref": str, "action": "create" | "read" | "cancel", "ttl": seconds (optional)}`
    -> 201 `{"token", "expires_at", "ttl", "job_ref", "action"}`.
    job_ref is the client's reference for the job (the broker's idempotency key). The token is
    good for one request, for that job_ref and that action, until expires_at. The default and
    largest ttl is the server's `--token-ttl` (60 s); a larger ttl is cut to it (expires_at and
    ttl in the answer say so). Errors: 401 `invalid_api_key` (missing or wrong key); 400
    `bad_request` (job_ref missing, not a string or over 200 characters), `bad_action`, `bad_ttl`
    (not a positive number). The server keeps only SHA-256 hashes of tokens.

Presenting a token (`Authorization: Bearer <token>`), the checks in order
    none sent or not issued here -> 401 `invalid_token`; already used -> 401 `token_used`;
    past its expiry -> 401 `token_expired`; issued for another action, or for another job_ref
    than the request's -> 403 `token_scope`. A token that passes the first three checks is used
    up, whatever the outcome of the request. Tokens do not survive a restart of the fake cloud.

`POST /v1/jobs` (create token) with header `Idempotency-Key: <job_ref>`
    body `{"backend": str, "program": {"format": "qpy" | "qasm2" | "qasm3", "payload_b64": str},
    "shots": int, "seed": int | null}` -> 201 job (below), status QUEUED.
    Missing Idempotency-Key -> 400 `idempotency_key_required` (after the token checks); a key
    other than the token's job_ref -> 403 `token_scope`. The same key again (with a fresh create
    token) and the same body (backend, program format and payload, shots, seed) -> 200 with the
    same job: there is never a second job for a key; the same key with a different body -> 409
    `idempotency_conflict`. Validation, in order: 400 `bad_request` (body not a JSON object),
    404 `unknown_backend`, 400 `bad_shots` (not an integer 1..100000), 400 `bad_seed` (not null
    or an integer 0..2^63-1), 400 `bad_program` (unknown format, bad base64, over 10 MiB,
    unreadable, unbound parameters, no measurement), 400 `too_many_qubits` (more qubits than the
    backend, or operations on more than 16 qubits: the most this fake cloud simulates).

Job, as every job endpoint returns it
    `{"id": "fc-...", "status": "QUEUED" | "RUNNING" | "DONE" | "ERROR" | "CANCELLED",
    "job_ref", "backend", "shots", "seed" (as requested), "created_at", "started_at",
    "finished_at", "error": {"code", "message"} | null, "result": {...} | null, "cost"}`.
    result, once DONE: `{"counts": {bitstring: n}, "shots", "seed" (the one used, drawn by the
    server when the request's was null), "backend", "calibration_id" (of the calibration the
    job ran with), "execution_seconds", "physical_qubits", "simulation_seconds"}`.
    execution_seconds is the device time modelled from the circuit, not measured: see
    `simulate`. cost is what the job was billed: DONE jobs only, 0 otherwise. A failed job's
    error code is `execution_failed`.

`GET /v1/jobs/{id}[?wait=S]` (read token for the job's job_ref)
    -> 200 job. wait (0..30 s, more is cut to 30) holds the answer until the job is DONE, ERROR
    or CANCELLED or the time is up. 404 `unknown_job`; 400 `bad_wait`.

`GET /v1/jobs?job_ref=K` (read token for K)
    -> 200 `{"jobs": [job]}` or `{"jobs": []}`: how a client finds its job after a crash.
    400 `job_ref_required`.

`POST /v1/jobs/{id}/cancel` (cancel token for the job's job_ref)
    -> 200 job, CANCELLED (a running simulation's result is dropped, nothing is billed);
    409 `job_final` if it already ended; 404 `unknown_job`.

Public, no credentials (a provider's status pages)
    `GET /v1/backends` -> `{"backends": [{"name", "num_qubits", "tier", "status": "online",
    "calibration_id", "last_update", "pending_jobs", "price"}]}`;
    price is `{"model": "per_shot", "per_task", "per_shot", "currency"}` (fake_brisbane: 0.30 +
    0.00035 per shot) or `{"model": "per_second", "per_second", "currency", "billed_on":
    "execution_seconds"}` (fake_torino: 1.60 per second).
    `GET /v1/backends/{name}/calibration` -> `{"backend", "calibration_id", "last_update",
    "num_qubits", "snapshot", "dt_ns", "rep_delay_us", "basis_gates", "qubits": [{"qubit",
    "t1_us", "t2_us", "frequency_ghz", "readout_error", "prob_meas0_prep1", "prob_meas1_prep0",
    "readout_length_ns"}], "gates": [{"gate", "qubits", "error", "length_ns"}], "drifts"?}`;
    404 `unknown_backend`. `GET /v1/prices` -> `{"prices": {name: price}}`.

`GET /v1/usage` (API key)
    -> `{"jobs", "shots", "execution_seconds", "cost", "by_backend": {name: {"jobs", "shots",
    "execution_seconds", "cost"}}}`, summed over DONE jobs.

Admin (`Authorization: Bearer <admin key>`; without an admin key file, these are 404
`not_found`; a wrong key is 401 `invalid_admin_key`)
    `POST /v1/admin/faults` body `{"kind", "endpoint": "tokens" | "create" | "status" | "any"
    (default any), "count": n (default 1), "retry_after", "status", "delay", "backend",
    "message", "phase"}` -> 201 `{"fault": {...}}` (for calibration_drift also
    `"calibration_id"`: the new one). Kinds:
    `unauthorized` -> 401 `invalid_api_key`; `rate_limit` -> 429 `rate_limited` with
    `Retry-After: <retry_after, whole seconds, default 1>`; `server_error` -> `status`
    (500, 502 or 503, default 503) `server_error`; `slow` -> the response waits `delay`
    seconds, then the request is handled. These four act on the next `count` requests to
    `endpoint` ("status" covers both job reads; "any" also covers the public endpoints, usage
    and cancel; admin endpoints are never faulted), before the request takes effect, so no
    token is used up and no job is created; with `"phase": "after"` a server_error lets the
    request take effect and then replaces its answer (a response lost on the way back).
    `job_error` -> the next `count` jobs created (on `backend`, if given) end in ERROR with
    `{"code": "execution_failed", "message": message or a default}`. `calibration_drift`
    (`backend` required) -> at once, a new calibration of the backend: T1/T2 shorter, error
    rates higher, a new calibration_id, used by the jobs that start after it.
    400 `bad_fault`, 404 `unknown_backend`.
    `DELETE /v1/admin/faults` -> 200 `{"cleared": n}`; `GET /v1/admin/faults` -> `{"faults"}`.
    `GET /v1/admin/state` -> `{"jobs": n, "jobs_by_ref": {job_ref: n}, "statuses", "tokens",
    "faults", "calibrations": {name: calibration_id}}`.

Anything else: 404 `not_found`, 405 `method_not_allowed`; a body that is not JSON: 400
`bad_request`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from typing import Any

from tornado.web import Application, HTTPError, RequestHandler

from . import backends
from .errors import ApiError
from .faults import Fault
from .jobs import Cloud, Job
from .tokens import TokenRecord, same_secret

MAX_WAIT_SECONDS = 30.0
MAX_BODY_BYTES = 16 * 2**20


class BaseHandler(RequestHandler):
    # Which endpoint of the fault injector this request is (None: never faulted).
    category: str | None = None

    def initialize(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self._lost: Fault | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def fault_category(self) -> str | None:
        return self.category

    async def prepare(self) -> None:
        category = self.fault_category()
        if category is None:
            return
        delay, fault = self.cloud.faults.for_request(category)
        if delay:
            await asyncio.sleep(delay)
        if fault is not None:
            if fault.phase == "after":
                self._lost = fault
            else:
                raise fault.error()

    def respond(self, status: int, body: dict[str, Any]) -> None:
        if self._lost is not None:
            raise self._lost.error()
        self.set_status(status)
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            for name, value in exc.headers.items():
                self.set_header(name, value)
            body = exc.body()
        elif status_code == 404:
            body = {"error": {"code": "not_found", "message": "There is nothing at this address."}}
        elif status_code == 405:
            body = {
                "error": {
                    "code": "method_not_allowed",
                    "message": f"{self.request.method} is not allowed at this address.",
                }
            }
        elif status_code < 500:
            body = {"error": {"code": "bad_request", "message": "The request was malformed."}}
        else:
            body = {
                "error": {
                    "code": "server_error",
                    "message": "The service had an internal error and could not complete "
                    "the request.",
                }
            }
        self.finish(json.dumps(body))

    def json_body(self) -> Any:
        try:
            return json.loads(self.request.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "bad_request", "The body is not valid JSON.") from None

    def bearer(self) -> str | None:
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()

    def require_api_key(self) -> None:
        if not same_secret(self.bearer(), self.cloud.api_key):
            raise ApiError(
                401,
                "invalid_api_key",
                "The API key is missing or wrong: send it in the Authorization header as "
                "'Bearer <key>'.",
                {"WWW-Authenticate": 'Bearer realm="fakecloud"'},
            )

    def redeem(self, action: str) -> TokenRecord:
        try:
            return self.cloud.tokens.redeem(self.bearer(), action)
        except ApiError as exc:
            if exc.status_code == 401:
                exc.headers.setdefault("WWW-Authenticate", 'Bearer realm="fakecloud"')
            raise

    def scoped_job(self, job_id: str, action: str) -> Job:
        record = self.redeem(action)
        job = self.cloud.get(job_id)
        self.check_scope(record, job.job_ref)
        return job

    @staticmethod
    def check_scope(record: TokenRecord, job_ref: str) -> None:
        if record.job_ref != job_ref:
            raise ApiError(
                403,
                "token_scope",
                f"The access token was issued for job_ref {record.job_ref!r}, not {job_ref!r}.",
            )


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:  # type: ignore[override]
        raise HTTPError(404)


class TokensHandler(BaseHandler):
    category = "tokens"

    def post(self) -> None:
        self.require_api_key()
        body = self.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "The body must be a JSON object.")
        issued = self.cloud.tokens.issue(body.get("job_ref"), body.get("action"), body.get("ttl"))
        self.respond(201, issued)


class JobsHandler(BaseHandler):
    def fault_category(self) -> str | None:
        return "create" if self.request.method == "POST" else "status"

    async def post(self) -> None:
        record = self.redeem("create")
        job_ref = self.request.headers.get("Idempotency-Key")
        if not job_ref:
            raise ApiError(
                400,
                "idempotency_key_required",
                "Send the job's reference in the Idempotency-Key header, so that a retried "
                "request cannot create a second job.",
            )
        self.check_scope(record, job_ref)
        created, job = await self.cloud.create(job_ref, self.json_body())
        self.respond(201 if created else 200, job.public())

    def get(self) -> None:
        record = self.redeem("read")
        job_ref = self.get_query_argument("job_ref", None)
        if not job_ref:
            raise ApiError(
                400, "job_ref_required", "Say which job to find with ?job_ref=<reference>."
            )
        self.check_scope(record, job_ref)
        self.respond(200, {"jobs": [j.public() for j in self.cloud.find(job_ref)]})


class JobHandler(BaseHandler):
    category = "status"

    async def get(self, job_id: str) -> None:
        raw = self.get_query_argument("wait", None)
        wait = 0.0
        if raw is not None:
            try:
                wait = float(raw)
            except ValueError:
                wait = math.nan
            if not wait >= 0:
                raise ApiError(400, "bad_wait", "wait must be a number of seconds, 0 or more.")
        job = self.scoped_job(job_id, "read")
        await self.cloud.wait(job, min(wait, MAX_WAIT_SECONDS))
        self.respond(200, job.public())


class JobCancelHandler(BaseHandler):
    category = "cancel"

    def post(self, job_id: str) -> None:
        job = self.scoped_job(job_id, "cancel")
        self.respond(200, self.cloud.cancel(job).public())


def backend_summary(cloud: Cloud, name: str) -> dict[str, Any]:
    calibration = cloud.calibrations[name]
    pending = sum(
        1 for j in cloud.jobs.values() if j.backend == name and j.status in ("QUEUED", "RUNNING")
    )
    return {
        "name": name,
        "num_qubits": calibration["num_qubits"],
        "tier": backends.CATALOG[name]["tier"],
        "status": "online",
        "calibration_id": calibration["calibration_id"],
        "last_update": calibration["last_update"],
        "pending_jobs": pending,
        "price": backends.CATALOG[name]["price"],
    }


class BackendsHandler(BaseHandler):
    category = "public"

    async def get(self) -> None:
        await self.cloud.ready()
        self.respond(200, {"backends": [backend_summary(self.cloud, n) for n in backends.CATALOG]})


class CalibrationHandler(BaseHandler):
    category = "public"

    async def get(self, name: str) -> None:
        if name not in backends.CATALOG:
            raise ApiError(404, "unknown_backend", f"There is no backend {name!r}.")
        await self.cloud.ready()
        self.respond(200, self.cloud.calibrations[name])


class PricesHandler(BaseHandler):
    category = "public"

    def get(self) -> None:
        self.respond(200, {"prices": {n: b["price"] for n, b in backends.CATALOG.items()}})


class UsageHandler(BaseHandler):
    category = "usage"

    def get(self) -> None:
        self.require_api_key()
        self.respond(200, self.cloud.usage())


class AdminHandler(BaseHandler):
    def prepare(self) -> None:  # type: ignore[override]
        # Without an admin key the admin API does not exist, rather than being locked.
        if self.cloud.admin_key is None:
            raise HTTPError(404)
        if not same_secret(self.bearer(), self.cloud.admin_key):
            raise ApiError(401, "invalid_admin_key", "The admin key is missing or wrong.")


class FaultsHandler(AdminHandler):
    async def post(self) -> None:
        fault = self.cloud.faults.parse(self.json_body(), list(backends.CATALOG))
        if fault.kind == "calibration_drift":
            assert fault.backend is not None
            calibration = await self.cloud.drift(fault.backend)
            self.respond(
                201,
                {"fault": fault.describe(), "calibration_id": calibration["calibration_id"]},
            )
            return
        self.cloud.faults.add(fault)
        self.respond(201, {"fault": fault.describe()})

    def get(self) -> None:
        self.respond(200, {"faults": self.cloud.faults.active()})

    def delete(self) -> None:
        self.respond(200, {"cleared": self.cloud.faults.clear()})


class AdminStateHandler(AdminHandler):
    def get(self) -> None:
        self.respond(200, self.cloud.admin_state())


def make_app(cloud: Cloud, log: logging.Logger | None = None) -> Application:
    log = log or logging.getLogger("jupyter_qguard.fakecloud")

    def log_request(handler: RequestHandler) -> None:
        log.info(
            "%d %s %s %.1f ms",
            handler.get_status(),
            handler.request.method,
            handler.request.path,
            1000 * handler.request.request_time(),
        )

    args = {"cloud": cloud}
    return Application(
        [
            (r"/v1/tokens", TokensHandler, args),
            (r"/v1/jobs", JobsHandler, args),
            (r"/v1/jobs/([^/]+)", JobHandler, args),
            (r"/v1/jobs/([^/]+)/cancel", JobCancelHandler, args),
            (r"/v1/backends", BackendsHandler, args),
            (r"/v1/backends/([^/]+)/calibration", CalibrationHandler, args),
            (r"/v1/prices", PricesHandler, args),
            (r"/v1/usage", UsageHandler, args),
            (r"/v1/admin/faults", FaultsHandler, args),
            (r"/v1/admin/state", AdminStateHandler, args),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args=args,
        log_function=log_request,
        xsrf_cookies=False,
    )
