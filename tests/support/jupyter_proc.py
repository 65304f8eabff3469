"""A real `jupyter server` in its own process, and a kernel driven over the server's websocket,
as JupyterLab drives it. Used where a test or a benchmark needs the server to stop and start
again, or to be measured from outside."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.websocket import WebSocketClientConnection, websocket_connect

# The server extensions of jupyter-collaboration 5 (rooms, file ids, the lab's doc provider).
COLLABORATION_EXTENSIONS = ("jupyter_server_ydoc", "jupyter_server_fileid", "jupyter_collaboration")
COLLABORATION_LAB_PLUGINS = ("@jupyter/collaboration-extension", "@jupyter/docprovider-extension")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        base: Path,
        *,
        extra_args: list[str] | None = None,
        launcher: list[str] | None = None,
        user: str | None = None,
        env: dict[str, str] | None = None,
        collaboration: bool = False,
    ) -> None:
        self.user = user
        self.collaboration = collaboration
        self.extra_env = env or {}
        # -I: started from the workspace, `python -m` would put it first on sys.path (and hand
        # that sys.path to every spawned worker); a trusted process never imports from there.
        self.launcher = launcher or [sys.executable, "-I", "-m", "jupyter_server"]
        self.base = base
        self.root = base / "workspace"
        self.state = base / "qguard-state"
        self.token = uuid.uuid4().hex
        self.port = free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        home = self.base / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "JPY_"))}
        env.update(
            HOME=str(home),
            JUPYTER_CONFIG_DIR=str(home / ".jupyter"),
            JUPYTER_DATA_DIR=str(home / ".local/share/jupyter"),
            JUPYTER_RUNTIME_DIR=str(home / ".local/share/jupyter/runtime"),
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> ServerProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.base / "home").mkdir(exist_ok=True)
        if not (self.base / "home" / ".jupyter" / "jupyter_server_config.json").exists():
            self.write_user_config()
        # A custom launcher (the demo) sets port, address and root itself.
        own = [
            f"--ServerApp.port={self.port}",
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.root}",
        ]
        cmd = [
            *self.launcher,
            *(own if self.launcher[-1] == "jupyter_server" else []),
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--QGuardApp.state_dir={self.state}",
            *self.extra_args,
        ]
        if os.geteuid() == 0 and self.user is None:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "ab")
        as_user = {}
        if self.user is not None:
            as_user = {"user": self.user, "group": self.user, "extra_groups": []}
        self.proc = subprocess.Popen(
            cmd,
            env=self.env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            **as_user,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("server did not start")

    def write_user_config(self) -> None:
        """jupyter-collaboration (installed for the MCP tests) enables itself in the
        environment's config: a server here runs with it only when asked, so the other tests
        keep JupyterLab's plain document model (no rooms, no `.jupyter_ystore.db` in the
        workspace). Its lab side goes with it, or the lab opens notebooks read-only, waiting
        for rooms that never come."""
        config = self.base / "home" / ".jupyter" / "jupyter_server_config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        on = self.collaboration
        extensions = dict.fromkeys(COLLABORATION_EXTENSIONS, on)
        config.write_text(json.dumps({"ServerApp": {"jpserver_extensions": extensions}}))
        page_config = config.parent / "labconfig" / "page_config.json"
        page_config.parent.mkdir(exist_ok=True)
        off = {} if on else dict.fromkeys(COLLABORATION_LAB_PLUGINS, True)
        page_config.write_text(json.dumps({"disabledExtensions": off}))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    async def fetch(
        self, path: str, *, method: str = "GET", body: Any = None, raise_error: bool = True
    ) -> HTTPResponse:
        req = HTTPRequest(
            f"{self.url}/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
            body=None if body is None else json.dumps(body),
            request_timeout=60,
        )
        return await AsyncHTTPClient().fetch(req, raise_error=raise_error)

    async def json(self, path: str, **kwargs: Any) -> Any:
        return json.loads((await self.fetch(path, **kwargs)).body)

    async def websocket(self, path: str) -> WebSocketClientConnection:
        req = HTTPRequest(
            f"ws://127.0.0.1:{self.port}/{path.lstrip('/')}",
            headers={"Authorization": f"token {self.token}"},
        )
        return await websocket_connect(req)

    async def start_kernel(
        self, name: str = "qguard-agent", notebook: str | None = None
    ) -> KernelWS:
        """A kernel, attached to a notebook session when `notebook` (a path in the workspace,
        created empty if missing) is given: its jobs are then the notebook's."""
        if notebook is None:
            kernel = await self.json("api/kernels", method="POST", body={"name": name})
        else:
            nb = self.root / notebook
            if not nb.exists():
                nb.write_text(
                    json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
                )
            body = {
                "path": notebook,
                "type": "notebook",
                "name": notebook,
                "kernel": {"name": name},
            }
            kernel = (await self.json("api/sessions", method="POST", body=body))["kernel"]
        ws = await self.websocket(f"api/kernels/{kernel['id']}/channels")
        k = KernelWS(kernel["id"], ws)
        await k.wait_ready()
        return k


class KernelWS:
    """Runs cells in a kernel over /api/kernels/{id}/channels (JSON messages)."""

    def __init__(self, kernel_id: str, ws: WebSocketClientConnection) -> None:
        self.id, self.ws = kernel_id, ws
        self.session = uuid.uuid4().hex

    def _msg(
        self, msg_type: str, content: dict[str, Any], channel: str = "shell"
    ) -> dict[str, Any]:
        return {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": msg_type,
                "session": self.session,
                "username": "test",
                "version": "5.3",
                "date": "",
            },
            "parent_header": {},
            "metadata": {},
            "content": content,
            "channel": channel,
            "buffers": [],
        }

    async def wait_ready(self, timeout: float = 90) -> None:
        """Until a kernel_info request is answered on shell *and* its status reaches us on
        iopub (jupyter_server's own "nudge"): after a restart the shell channel reconnects
        first, and what the kernel publishes before iopub's subscription is back is lost
        (ZMQ drops it), so a cell run on a shell reply alone may never show its output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._msg("kernel_info_request", {})
            msg_id = msg["header"]["msg_id"]
            await self.ws.write_message(json.dumps(msg))
            replied = published = False
            try:
                while not (replied and published):
                    raw = await asyncio.wait_for(self.ws.read_message(), 2)
                    if raw is None:
                        raise RuntimeError("kernel websocket closed")
                    m = json.loads(raw)
                    if m.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind = m["header"]["msg_type"]
                    replied = replied or kind == "kernel_info_reply"
                    published = published or kind == "status"
                return
            except TimeoutError:
                continue
        raise TimeoutError("kernel did not answer kernel_info on both shell and iopub")

    async def run(self, code: str, timeout: float = 120) -> dict[str, Any]:
        msg = self._msg(
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        )
        msg_id = msg["header"]["msg_id"]
        await self.ws.write_message(json.dumps(msg))
        out: dict[str, Any] = {"stdout": "", "stderr": "", "error": None, "status": None}
        idle = replied = False
        deadline = time.monotonic() + timeout
        while not (idle and replied):
            try:
                raw = await asyncio.wait_for(
                    self.ws.read_message(), max(0.1, deadline - time.monotonic())
                )
            except TimeoutError:
                raise TimeoutError(
                    f"no end to the cell in {timeout:g} s (execute_reply: {replied}, idle "
                    f"status: {idle}, so far: {out})"
                ) from None
            if raw is None:
                raise RuntimeError("kernel websocket closed")
            m = json.loads(raw)
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = m["header"]["msg_type"], m["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["error"] = {"ename": content["ename"], "evalue": content["evalue"]}
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                out["status"], replied = content["status"], True
        return out

    def close(self) -> None:
        self.ws.close()


def environments() -> Iterator[tuple[int, bytes]]:
    """(pid, its /proc/<pid>/environ) for every process whose environment this user may read:
    what any process of the same user sees of the others."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield int(entry), Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                pass


def processes_with(marker: str) -> list[int]:
    """Host pids of the processes whose environment holds `marker` (NAME=VALUE)."""
    item = marker.encode()
    return [pid for pid, env in environments() if item in env.split(b"\0")]


def kernel_processes(kernel_id: str) -> list[int]:
    """Host pids of every process of an agent kernel (supervisor, init, kernel, children)."""
    return processes_with(f"QGUARD_KERNEL_ID={kernel_id}")
