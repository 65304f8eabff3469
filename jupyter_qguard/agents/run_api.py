"""Which Jupyter server an agent run belongs to, and the CLI's calls to its agent-runs routes.

The server: `--url`, else `JUPYTER_URL` of the CLI's own environment, else the one server
running in the Jupyter runtime dir (its `jpserver-*.json`, as jupyter_server lists them).
Its token: the person's `JUPYTER_TOKEN`, else that server's runtime file. The CLI talks to it
directly (tornado's client ignores HTTP_PROXY), with the person's token; the agent never sees
that token.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .connection_log import DeliveryFailed

REQUEST_TIMEOUT = 30.0


class ServerNotFound(RuntimeError):
    pass


class RunAPIError(RuntimeError):
    """The server refused or could not be reached; `status` is its HTTP status (599: none)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Server:
    url: str  # with a trailing slash: the server's base URL
    token: str

    @property
    def parts(self) -> Any:
        return urlsplit(self.url)

    @property
    def host(self) -> str:
        return self.parts.hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = self.parts
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def base_path(self) -> str:
        return self.parts.path.rstrip("/")


def _normal(url: str) -> str:
    return url.rstrip("/") + "/"


def running_servers(runtime_dir: str = "") -> list[dict[str, Any]]:
    """The servers whose `jpserver-*.json` is in the runtime dir and whose process lives.

    What jupyter_server.serverapp.list_running_servers reads, read here (without deleting
    stale files, which are not the CLI's): importing serverapp pulls in jupyter_events and
    jsonschema, which take seconds, and an MCP client waits for this CLI to start."""
    from jupyter_core.paths import jupyter_runtime_dir

    runtime_dir = runtime_dir or jupyter_runtime_dir()
    found = []
    for path in sorted(glob.glob(os.path.join(glob.escape(runtime_dir), "jpserver-*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue  # being written, or not ours to read
        if isinstance(info, dict) and _alive(info.get("pid")) and info.get("url"):
            found.append(info)
    return found


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's, alive
    return True


def find_server(url: str, env: Mapping[str, str]) -> Server:
    """The server a run belongs to (see the module's comment); ServerNotFound says why not."""
    from jupyter_core.paths import jupyter_runtime_dir

    url = url or env.get("JUPYTER_URL", "")
    servers = running_servers()
    if url:
        token = env.get("JUPYTER_TOKEN", "")
        if not token:
            token = next(
                (s.get("token", "") for s in servers if _normal(s["url"]) == _normal(url)), ""
            )
        return _checked(Server(_normal(url), token))
    tcp = [s for s in servers if not s.get("sock")]
    if len(tcp) == 1:
        return _checked(Server(_normal(tcp[0]["url"]), env.get("JUPYTER_TOKEN") or tcp[0]["token"]))
    if not tcp:
        raise ServerNotFound(
            f"no running Jupyter server found in {jupyter_runtime_dir()}: start one, or say "
            "which with --url (or JUPYTER_URL)"
        )
    raise ServerNotFound(
        f"{len(tcp)} Jupyter servers run ({', '.join(s['url'] for s in tcp)}): say which with --url"
    )


def _checked(server: Server) -> Server:
    parts = server.parts
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerNotFound(f"{server.url}: not an http(s) URL of a Jupyter server")
    return server


class RunAPI:
    """The agent-runs routes of one server, called with the person's token."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.client = AsyncHTTPClient()

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.server.token:
            headers["Authorization"] = f"token {self.server.token}"
        req = HTTPRequest(
            self.server.url + path,
            method=method,
            headers=headers,
            body=None if body is None else json.dumps(body),
            request_timeout=REQUEST_TIMEOUT,
            follow_redirects=False,
        )
        try:
            resp = await self.client.fetch(req)
        except HTTPClientError as exc:
            raise RunAPIError(exc.code, _message(exc)) from None
        except OSError as exc:
            raise RunAPIError(599, f"cannot reach {self.server.url}: {exc}") from None
        return json.loads(resp.body or b"{}")

    async def start(
        self, name: str, manifest: str | None, source: str, lease: int, command: list[str]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "lease_seconds": lease, "command": command[:64]}
        if manifest is not None:
            body.update(manifest=manifest, manifest_source=source[:1024])
        return await self.call("POST", "qguard/api/agent-runs", body)

    async def renew(self, run_id: str) -> dict[str, Any]:
        return await self.call("POST", f"qguard/api/agent-runs/{run_id}/lease", {})

    async def confined(self, run_id: str, summary: dict[str, Any]) -> None:
        await self.call("POST", f"qguard/api/agent-runs/{run_id}/sandbox", summary)

    async def deliver(self, run_id: str, records: list[dict[str, Any]], dropped: int) -> None:
        """connection_log's delivery: any failure is a DeliveryFailed."""
        body: dict[str, Any] = {"connections": records}
        if dropped:
            body["dropped"] = dropped
        try:
            await self.call("POST", f"qguard/api/agent-runs/{run_id}/connections", body)
        except RunAPIError as exc:
            raise DeliveryFailed(f"HTTP {exc.status}: {exc}") from None

    async def end(self, run_id: str, exit_status: int | None) -> None:
        query = "" if exit_status is None else f"?exit_status={exit_status}"
        await self.call("DELETE", f"qguard/api/agent-runs/{run_id}{query}")


def _message(exc: HTTPClientError) -> str:
    """The server's own sentence (jupyter_server's JSON error body), else the status line."""
    body = exc.response.body if exc.response is not None else b""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.message or f"HTTP {exc.code}")
