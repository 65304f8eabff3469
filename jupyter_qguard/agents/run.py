"""`jupyter qguard agent run --name NAME [--manifest FILE] [--url URL] -- COMMAND ARGS…`: one
agent process, confined the way an agent kernel is, less what an agent needs.

This is the trusted side, run as the person. It
1. finds the server (run_api.find_server) and asks it to start a run: the server mints an
   agent token named NAME with the manifest and a short lease, and writes `agent_run.started`;
2. plans the confinement: the workspace (the server's root dir) written as the manifest says,
   its denied files and the person's sensitive names inside it hidden (run_paths), a HOME and
   TMPDIR of the run's own, the command's install tree readable, an environment that is an
   allowlist plus JUPYTER_URL/JUPYTER_TOKEN (the run's token) and the proxy variables;
3. starts `python -I -m jupyter_qguard.sandbox.agent_launch` from "/" with that SandboxSpec
   and a socket pair as its channel. The launcher enters its namespaces and hands back two
   listening sockets made in its network namespace; the CLI serves the egress proxy and the
   Jupyter forwarder on them (egress_proxy.py), records every connection (connection_log.py),
   lets the launcher exec the command once it reports the layers in force, renews the lease
   while it runs and forwards SIGINT, SIGTERM, SIGHUP (and SIGQUIT, SIGUSR1, SIGUSR2) to it;
4. when the command ends: delivers the last records, ends the run (the token is revoked,
   `agent_run.ended`), removes the run's directory and exits with the command's status.

stdin, stdout and stderr are the command's own: an MCP server speaks JSON-RPC on stdout, so
this side never writes there; it logs to stderr.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from ..sandbox import identity, rlimits
from ..sandbox.environment import CHANNEL_FD_VAR
from ..sandbox.spec import AGENT_PROCESS_MINIMUM, PROFILE_AGENT_PROCESS, SPEC_VAR, SandboxSpec
from . import run_paths
from .connection_log import ConnectionLog
from .egress_proxy import EgressProxy, JupyterForwarder
from .manifest import split_host_port
from .run_api import RunAPI, RunAPIError, Server

# The agent's allowlist of the person's environment; everything else it gets is the run's.
ENV_ALLOWLIST = ("PATH", "LANG", "TERM", "TZ")
ENV_ALLOW_PREFIXES = ("LC_",)
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
# Names the run sets: `--env` cannot change them.
RUN_VARS = {
    "HOME",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "JUPYTER_URL",
    "JUPYTER_TOKEN",
    "NO_PROXY",
    *PROXY_VARS,
    *(v.lower() for v in (*PROXY_VARS, "NO_PROXY")),
}
PROXY_PORT = 3128
FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
HANDSHAKE_SECONDS = 120.0
CHANNEL_MESSAGE_BYTES = 1 << 20


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why (one line) and `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunOptions:
    name: str
    command: list[str]
    manifest: str = ""  # a file; "" = the server's default manifest
    url: str = ""
    lease_seconds: int = 60
    read: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # NAME (from the CLI's own) or NAME=VALUE
    sensitive: list[str] = field(default_factory=list)  # besides those in the home


def agent_env(
    person: dict[str, str],
    *,
    home: str,
    tmp: str,
    server: Server,
    jupyter_port: int,
    proxy_port: int,
    token: str,
    extra: list[str],
) -> dict[str, str]:
    """The command's whole environment: the allowlist of the person's, then the run's."""
    env = {
        k: v for k, v in person.items() if k in ENV_ALLOWLIST or k.startswith(ENV_ALLOW_PREFIXES)
    }
    proxy = f"http://127.0.0.1:{proxy_port}"
    env.update(
        HOME=home,
        TMPDIR=tmp,
        # A root-started run has a uid no account has: name it for getpass and friends.
        USER="qguard-agent",
        LOGNAME="qguard-agent",
        JUPYTER_URL=f"{server.parts.scheme}://127.0.0.1:{jupyter_port}{server.base_path}",
        JUPYTER_TOKEN=token,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for name in PROXY_VARS:
        env[name] = env[name.lower()] = proxy
    for item in extra:
        name, has_value, value = item.partition("=")
        if not name or name in RUN_VARS:
            raise RunFailed(f"--env {item!r}: the run sets {name or 'that'} itself", 2)
        if not has_value:
            if name not in person:
                raise RunFailed(f"--env {name}: not set in this environment", 2)
            value = person[name]
        env[name] = value
    return env


def terminal_fd() -> int:
    """The descriptor of the terminal this CLI is the foreground job of, or -1."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == os.getpgrp():
                return fd
        except OSError:
            continue
    return -1


def take_back_terminal(fd: int) -> None:
    if fd < 0:
        return
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError:
        pass  # the terminal is gone (the person closed it)
    finally:
        signal.signal(signal.SIGTTOU, previous)


class Channel:
    """The CLI's end of the launcher's channel (a SOCK_SEQPACKET pair: one JSON message per
    packet, the listeners' descriptors attached to theirs)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        import json

        data, fds, _flags, _addr = socket.recv_fds(self.sock, CHANNEL_MESSAGE_BYTES, 4)
        if not data:
            return None, fds
        return json.loads(data), fds

    async def receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        """The next message (None: the launcher is gone) and the descriptors it carried."""
        return await asyncio.to_thread(self._receive)

    def answer(self, result: dict[str, Any] | None, error: str = "") -> None:
        import json

        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": "sandbox-report"}
        if error:
            msg["error"] = {"code": -32000, "message": error}
        else:
            msg["result"] = result
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError:
            pass  # the launcher is gone; its exit status says why


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """The layers in force, short enough for one audit entry."""
    layers = {
        k: v for k, v in report.get("layers", {}).items() if isinstance(v, dict) and "active" in v
    }
    active = sorted(k for k, v in layers.items() if v["active"])
    missing = sorted(f"{k}: {v.get('why', '')}"[:300] for k, v in layers.items() if not v["active"])
    out: dict[str, Any] = {"ok": bool(report.get("ok")), "active": active[:32]}
    if missing:
        out["missing"] = missing[:32]
    uid = layers.get("nonroot", {}).get("uid")
    if isinstance(uid, int):
        out["uid"] = uid
    return out


class AgentRun:
    def __init__(self, options: RunOptions, server: Server, log: logging.Logger) -> None:
        self.options = options
        self.server = server
        self.api = RunAPI(server)
        self.log = log
        self.run: dict[str, Any] = {}
        self.relays: list[EgressProxy | JupyterForwarder] = []
        self.records: ConnectionLog | None = None
        self.run_dir = ""

    # -- planning ------------------------------------------------------------------------

    def executable(self) -> str:
        command = self.options.command
        if not command:
            raise RunFailed("give the command to run after --", 2)
        exe = shutil.which(command[0], path=os.environ.get("PATH", os.defpath))
        if exe is None:
            raise RunFailed(f"{command[0]}: command not found", 127)
        return os.path.abspath(exe)

    def spec(self, exe: str, tty: int) -> SandboxSpec:
        from ..sandbox.provisioner import manifest_write_paths

        manifest = self.run["manifest"]
        workspace = os.path.realpath(self.run["root_dir"])
        home = os.path.realpath(os.path.expanduser("~"))
        sensitive = run_paths.sensitive_paths(home, self.options.sensitive)
        # Absolute: the launcher applies them from "/".
        extra = [os.path.abspath(p) for p in self.options.read]
        reads = [*run_paths.install_trees(exe, os.environ.get("PATH", "")), *extra]
        try:
            run_paths.check_reads(reads, sensitive, home)
        except run_paths.ReadRefused as exc:
            raise RunFailed(str(exc), 2) from None
        contents = manifest["contents"]
        hide = [*contents.get("deny", []), *run_paths.hide_patterns(workspace, sensitive)]
        run_paths.sweep_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix=f"{run_paths.RUN_DIR_PREFIX}{os.getpid()}-")
        home_dir = os.path.join(self.run_dir, "home")
        tmp_dir = os.path.join(self.run_dir, "tmp")
        for d in (home_dir, tmp_dir):
            os.mkdir(d, 0o700)
        proxy_port = PROXY_PORT if self.server.port != PROXY_PORT else PROXY_PORT + 1
        cwd = os.path.realpath(os.getcwd())
        limits = {**rlimits.defaults(), "memory": 0}  # V8, the JVM reserve far more than they use
        spec = SandboxSpec(
            workspace=workspace,
            kernel_dir=self.run_dir,
            minimum=list(AGENT_PROCESS_MINIMUM),
            rlimits=limits,
            extra_read_paths=reads,
            guard_top_level=home == workspace or home.startswith(workspace + os.sep),
            cwd=cwd if cwd == workspace or cwd.startswith(workspace + os.sep) else workspace,
            write_paths=manifest_write_paths(contents.get("write", []), workspace, self.log),
            hide_patterns=hide,
            profile=PROFILE_AGENT_PROCESS,
            command=list(self.options.command),
            executable=exe,
            tcp_ports={"proxy": proxy_port, "jupyter": self.server.port},
            foreground_tty=tty,
        )
        spec.command_env = agent_env(
            dict(os.environ),
            home=home_dir,
            tmp=tmp_dir,
            server=self.server,
            jupyter_port=self.server.port,
            proxy_port=proxy_port,
            token=self.run["token"],
            extra=self.options.env,
        )
        if os.geteuid() == 0:
            spec.kernel_uid = spec.kernel_gid = identity.uid_for_kernel(self.run["id"])
        return spec

    # -- the run -------------------------------------------------------------------------

    async def main(self) -> int:
        exe = self.executable()
        manifest_text = None
        if self.options.manifest:
            try:
                with open(self.options.manifest, encoding="utf-8") as f:
                    manifest_text = f.read()
            except OSError as exc:
                raise RunFailed(f"--manifest {self.options.manifest}: {exc.strerror}", 2) from None
        try:
            self.run = await self.api.start(
                self.options.name,
                manifest_text,
                os.path.abspath(self.options.manifest) if self.options.manifest else "",
                self.options.lease_seconds,
                self.options.command,
            )
        except RunAPIError as exc:
            raise RunFailed(f"the server did not start the run: {exc}") from None
        status: int | None = None
        tty = terminal_fd()
        try:
            status = await self.confined(self.spec(exe, tty))
            return status
        finally:
            take_back_terminal(tty)
            await self.finish(status)

    async def confined(self, spec: SandboxSpec) -> int:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = Channel(parent)
        env = {SPEC_VAR: spec.to_env(), CHANNEL_FD_VAR: str(child.fileno())}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-m",
            "jupyter_qguard.sandbox.agent_launch",
            cwd="/",
            env=env,
            pass_fds=(child.fileno(),),
        )
        child.close()
        loop = asyncio.get_running_loop()
        for sig in FORWARDED_SIGNALS:
            loop.add_signal_handler(sig, self._forward, proc, sig)
        lease: asyncio.Task[None] | None = None
        try:
            try:
                started = await self._handshake(channel)
            except Exception as exc:  # whatever it was, the command must not start
                self.log.error("the run cannot start: %s: %s", type(exc).__name__, exc)
                channel.answer(None, f"the CLI failed: {exc}")
                started = False
            if started:
                lease = asyncio.create_task(self._renew())
            code = await proc.wait()
        finally:
            for sig in FORWARDED_SIGNALS:
                loop.remove_signal_handler(sig)
            if lease is not None:
                lease.cancel()
            parent.close()
        return 128 - code if code < 0 else code

    def _forward(self, proc: asyncio.subprocess.Process, sig: int) -> None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass

    async def _handshake(self, channel: Channel) -> bool:
        """Serve the listeners the launcher hands over; let it exec once it reports the layers
        in force (and the server recorded them). False when it does not start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDSHAKE_SECONDS
        while True:
            try:
                msg, fds = await asyncio.wait_for(channel.receive(), deadline - loop.time())
            except TimeoutError:
                channel.answer(None, "no report in time")
                return False
            if msg is None:
                return False  # the launcher is gone: it said why on stderr
            if msg.get("method") == "listeners":
                await self._serve(msg["params"]["names"], fds)
                continue
            if msg.get("method") != "sandbox_report":
                channel.answer(None, "unexpected message")
                return False
            report = msg.get("params", {})
            summary = summary_of(report)
            try:
                await self.api.confined(self.run["id"], summary)
            except RunAPIError as exc:
                channel.answer(None, f"the server did not record the layers in force: {exc}")
                return False
            if not report.get("ok"):
                return False  # the launcher fails itself and says why
            if len(self.relays) != 2:
                channel.answer(None, "its network listeners never arrived")
                return False
            self.log.info(
                "agent %s (run %s) confined: %s; network: %s",
                self.options.name,
                self.run["id"],
                ", ".join(summary["active"]),
                ", ".join(f"{h}:{p}" for h, p in sorted(self._allow()))
                or "this Jupyter server only",
            )
            channel.answer({"start": True})
            return True

    def _allow(self) -> frozenset[tuple[str, int]]:
        entries = self.run["manifest"].get("network", {}).get("allow", [])
        return frozenset(split_host_port(e) for e in entries)

    async def _serve(self, names: list[str], fds: list[int]) -> None:
        socks = {name: socket.socket(fileno=fd) for name, fd in zip(names, fds, strict=False)}
        if set(socks) != {"proxy", "jupyter"}:
            for s in socks.values():
                s.close()
            return
        self.records = ConnectionLog(
            lambda records, dropped: self.api.deliver(self.run["id"], records, dropped), self.log
        )
        self.records.start()
        proxy = EgressProxy(self.options.name, self._allow(), self.records, self.log)
        forwarder = JupyterForwarder(self.server.host, self.server.port, self.records, self.log)
        for name, relay in (("proxy", proxy), ("jupyter", forwarder)):
            relay.start(socks[name])
        self.relays = [proxy, forwarder]

    async def _renew(self) -> None:
        every = max(1.0, self.options.lease_seconds / 3)
        failing = False
        while True:
            await asyncio.sleep(every)
            try:
                await self.api.renew(self.run["id"])
            except RunAPIError as exc:
                if not failing:
                    self.log.error(
                        "the lease of run %s was not renewed (%s): its token dies when it runs out",
                        self.run["id"],
                        exc,
                    )
                failing = True
                continue
            if failing:
                self.log.warning("the lease of run %s is renewed again", self.run["id"])
            failing = False

    async def finish(self, status: int | None) -> None:
        for relay in self.relays:
            await relay.close()
        if self.records is not None:
            await self.records.close()
        if self.run:
            try:
                await self.api.end(self.run["id"], status)
            except RunAPIError as exc:
                self.log.error(
                    "the server did not end run %s (%s): its token dies with its lease",
                    self.run["id"],
                    exc,
                )
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
