"""The kernel ↔ broker channel: newline-delimited JSON-RPC 2.0 over an inherited unix socket.

The socket is one end of a `socketpair()` made by the provisioner; the kernel inherits the
other end, so the descriptor *is* the kernel's identity and the kernel never calls connect().
Everything that arrives here is untrusted: each line is size-capped, strictly validated and
rate-limited, and anything malformed gets an error reply while the channel keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import jsonschema

from ..audit.log import AuditUnavailable
from .jobs import InvalidRequest, State
from .service import Broker, BrokerError, JobNotFound
from .store import TransitionConflict

log = logging.getLogger("jupyter_qguard.channel")

# JSON-RPC 2.0 error codes, plus qguard's own in the implementation-defined range.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
JOB_NOT_FOUND = -32001
RATE_LIMITED = -32002
TOO_LARGE = -32003
CONFLICT = -32004
JOB_REJECTED = -32005
BUSY = -32006
# The broker cannot write its audit log: it takes no job until it can (fail closed).
AUDIT_UNAVAILABLE = -32007

_JOB_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_NO_PARAMS = {"type": "object", "additionalProperties": False, "properties": {}}
PARAMS: dict[str, dict[str, Any]] = {
    "submit": {
        "type": "object",
        "additionalProperties": False,
        "required": ["job"],
        "properties": {"job": {"type": "object"}},
    },
    "status": {
        "type": "object",
        "additionalProperties": False,
        "required": ["job_id"],
        "properties": {"job_id": _JOB_ID},
    },
    "result": {
        "type": "object",
        "additionalProperties": False,
        "required": ["job_id"],
        "properties": {"job_id": _JOB_ID},
    },
    "cancel": {
        "type": "object",
        "additionalProperties": False,
        "required": ["job_id"],
        "properties": {"job_id": _JOB_ID},
    },
    "wait": {
        "type": "object",
        "additionalProperties": False,
        "required": ["job_id"],
        "properties": {
            "job_id": _JOB_ID,
            "timeout": {"type": "number", "minimum": 0, "maximum": 3600},
            "state": {"enum": [s.value for s in State]},
        },
    },
    "jobs": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 1000}},
    },
    "backends": _NO_PARAMS,
    "whoami": _NO_PARAMS,
    "sandbox_report": {
        "type": "object",
        "additionalProperties": False,
        "required": ["ok", "layers"],
        "properties": {"ok": {"type": "boolean"}, "layers": {"type": "object"}},
    },
}
# Nesting a request may have (a job is about five levels deep).
MAX_DEPTH = 64


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests deeper than `limit` (without recursing itself)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


_VALIDATORS = {name: jsonschema.Draft202012Validator(schema) for name, schema in PARAMS.items()}


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.capacity = rate, float(burst)
        self.tokens, self.stamp = float(burst), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def kernel_view(job: dict[str, Any]) -> dict[str, Any]:
    """What an agent kernel may know about a job: never approvers, never the digest."""
    decision = job.get("decision") or {}
    return {
        "id": job["id"],
        "state": job["state"],
        "backend": job["backend"],
        "shots": job["shots"],
        "seed": job["seed"],
        "reason": job.get("reason"),
        "approvals_required": decision.get("approvals_required"),
        "approvals_given": job.get("approvals_given", 0),
        "created_at": job["created_at"],
        "updated_at": job["updated_at"],
    }


class KernelChannel:
    """Serves one agent kernel's end of the socket pair until the kernel goes away."""

    def __init__(
        self,
        broker: Broker,
        kernel_id: str,
        sock: socket.socket,
        *,
        max_request_bytes: int,
        rate: float,
        burst: int,
        max_in_flight: int = 8,
    ) -> None:
        self.broker, self.kernel_id, self.sock = broker, kernel_id, sock
        self.max_request_bytes = max_request_bytes
        self.bucket = TokenBucket(rate, burst)
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._write_lock = asyncio.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._requests_seen = 0

    # -- framing --------------------------------------------------------------------------

    async def serve(self) -> None:
        self.sock.setblocking(False)
        reader, self._writer = await asyncio.open_unix_connection(sock=self.sock, limit=2**16)
        buf = bytearray()
        discarding = False  # inside an over-long line: drop bytes until its newline
        try:
            while True:
                chunk = await reader.read(2**16)
                if not chunk:
                    break
                buf += chunk
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if not discarding and len(buf) > self.max_request_bytes:
                            discarding = True
                            await self._reply_error(None, TOO_LARGE, self._too_large())
                        if discarding:
                            buf.clear()
                        break
                    line = bytes(buf[:nl])
                    del buf[: nl + 1]
                    if discarding:
                        discarding = False
                        continue
                    if len(line) > self.max_request_bytes:
                        await self._reply_error(None, TOO_LARGE, self._too_large())
                        continue
                    try:
                        await self._dispatch_line(line)
                    except Exception:
                        # Whatever a line does, the channel goes on (the kernel's next
                        # request must not meet a closed socket).
                        log.exception("qguard channel of kernel %s: a line failed", self.kernel_id)
                        await self._reply_error(
                            None, INTERNAL_ERROR, "internal broker error (see the server log)"
                        )
        except (ConnectionError, OSError) as exc:
            log.info("qguard channel of kernel %s closed: %s", self.kernel_id, exc)
        finally:
            for task in list(self._tasks):
                task.cancel()
            if self._writer is not None:
                self._writer.close()

    def close(self) -> None:
        """Stop serving: the kernel died or is being restarted."""
        if self._writer is not None:
            self._writer.close()
        else:
            self.sock.close()

    def _too_large(self) -> str:
        return f"request larger than {self.max_request_bytes} bytes"

    async def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None:
            return
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._write_lock:
            self._writer.write(data)
            await self._writer.drain()

    async def _reply_error(self, msg_id: Any, code: int, message: str, data: Any = None) -> None:
        err: dict[str, Any] = {"code": code, "message": message}
        if data is not None:
            err["data"] = data
        await self._send({"jsonrpc": "2.0", "id": msg_id, "error": err})

    # -- requests -------------------------------------------------------------------------

    async def _dispatch_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            await self._reply_error(None, PARSE_ERROR, f"not valid JSON: {exc}")
            return
        except RecursionError:
            # Python's parser recurses per level: [[[[...]]]] within the size bound ends
            # there, and must not end the channel with it.
            await self._reply_error(
                None, PARSE_ERROR, "not valid JSON: nested deeper than the parser allows"
            )
            return
        msg_id = msg.get("id") if isinstance(msg, dict) else None
        if not isinstance(msg_id, str | int) or isinstance(msg_id, bool):
            msg_id = None
        if _deeper_than(msg, MAX_DEPTH):
            # What passed the parser would still recurse in validation, policy and the
            # store; no request is more than a few levels deep (programs travel as strings).
            await self._reply_error(
                msg_id, INVALID_REQUEST, f"the request is nested deeper than {MAX_DEPTH} levels"
            )
            return
        if (
            not isinstance(msg, dict)
            or msg.get("jsonrpc") != "2.0"
            or not isinstance(msg.get("method"), str)
            or msg_id is None
            or set(msg) - {"jsonrpc", "id", "method", "params"}
        ):
            await self._reply_error(
                msg_id,
                INVALID_REQUEST,
                'expected {"jsonrpc": "2.0", "id": <string|int>, "method": <string>, '
                '"params": {...}}',
            )
            return
        self._requests_seen += 1
        if msg["method"] == "sandbox_report" and self._requests_seen != 1:
            # The launcher reports once, first, before any agent code runs; later "reports"
            # could only come from the agent.
            await self._reply_error(msg_id, CONFLICT, "the sandbox report was already given")
            return
        if not self.bucket.take():
            await self._reply_error(
                msg_id, RATE_LIMITED, "too many requests from this kernel; slow down"
            )
            return
        if self._in_flight >= self.max_in_flight:
            await self._reply_error(
                msg_id, BUSY, f"more than {self.max_in_flight} requests in flight"
            )
            return
        self._in_flight += 1
        task = asyncio.ensure_future(self._handle(msg_id, msg["method"], msg.get("params", {})))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg_id: Any, method: str, params: Any) -> None:
        try:
            validator = _VALIDATORS.get(method)
            if validator is None:
                raise RpcError(
                    METHOD_NOT_FOUND, f"unknown method {method!r}; known: {', '.join(PARAMS)}"
                )
            error = next(iter(validator.iter_errors(params)), None)
            if error is not None:
                where = "/".join(str(p) for p in error.path) or "params"
                raise RpcError(INVALID_PARAMS, f"{where}: {error.message}")
            result = await getattr(self, f"rpc_{method}")(**params)
            await self._send({"jsonrpc": "2.0", "id": msg_id, "result": result})
        except RpcError as exc:
            await self._reply_error(msg_id, exc.code, exc.message, exc.data)
        except BrokerError as exc:
            # Said for the kernel's user (a team broker out of reach, say): no internals.
            await self._reply_error(msg_id, INTERNAL_ERROR, str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("qguard channel: %s from kernel %s failed", method, self.kernel_id)
            await self._reply_error(
                msg_id, INTERNAL_ERROR, "internal broker error (see the server log)"
            )
        finally:
            self._in_flight -= 1

    async def _own_job(self, job_id: str) -> dict[str, Any]:
        """A kernel sees the jobs it asked for, and those of the notebook it is attached to."""
        try:
            job = await self.broker.get(job_id)
        except JobNotFound:
            raise RpcError(JOB_NOT_FOUND, f"no job {job_id}") from None
        requester = job["requester"]
        mine = requester.get("kernel_id") == self.kernel_id
        notebook = await self._notebook()
        if not mine and not (notebook and requester.get("notebook") == notebook):
            raise RpcError(JOB_NOT_FOUND, f"no job {job_id}")
        return job

    async def _notebook(self) -> str | None:
        return (await self.broker.requester_for(self.kernel_id, None))["notebook"]

    # -- methods --------------------------------------------------------------------------

    async def rpc_submit(self, job: dict[str, Any]) -> dict[str, Any]:
        try:
            stored = await self.broker.submit(job, self.kernel_id)
        except InvalidRequest as exc:
            raise RpcError(JOB_REJECTED, f"invalid job request: {exc}") from None
        except AuditUnavailable as exc:
            raise RpcError(
                AUDIT_UNAVAILABLE, f"the broker refuses new jobs until it can audit them: {exc}"
            ) from None
        return kernel_view(stored)

    async def rpc_status(self, job_id: str) -> dict[str, Any]:
        return kernel_view(await self._own_job(job_id))

    async def rpc_wait(
        self, job_id: str, timeout: float = 10.0, state: str | None = None
    ) -> dict[str, Any]:
        await self._own_job(job_id)
        return kernel_view(await self.broker.wait(job_id, timeout=timeout, unless_state=state))

    async def rpc_result(self, job_id: str) -> dict[str, Any]:
        job = await self._own_job(job_id)
        if job["state"] != State.COMPLETED:
            raise RpcError(
                CONFLICT, f"job {job_id} is {job['state']}, it has no result", data=kernel_view(job)
            )
        return {"job": kernel_view(job), "result": job["result"]}

    async def rpc_cancel(self, job_id: str) -> dict[str, Any]:
        await self._own_job(job_id)
        try:
            return kernel_view(await self.broker.cancel(job_id, f"kernel:{self.kernel_id}"))
        except TransitionConflict as exc:
            raise RpcError(CONFLICT, str(exc)) from None

    async def rpc_jobs(self, limit: int = 50) -> list[dict[str, Any]]:
        notebook = await self._notebook()
        rows = await self.broker.jobs_for(kernel_id=self.kernel_id, notebook=notebook, limit=limit)
        return [kernel_view(j) for j in rows]

    async def rpc_backends(self) -> list[dict[str, Any]]:
        return self.broker.backend_list()

    async def rpc_sandbox_report(self, ok: bool, layers: dict[str, Any]) -> dict[str, Any]:
        self.broker.record_sandbox(self.kernel_id, ok, layers)
        return {"recorded": True}

    async def rpc_whoami(self) -> dict[str, Any]:
        report = self.broker.kernel_report(self.kernel_id) or {}
        requester = await self.broker.requester_for(self.kernel_id, None)
        return {
            "kernel_id": self.kernel_id,
            "user": requester["user"],
            "notebook": requester["notebook"],
            "sandbox": report.get("sandbox", {}),
        }
