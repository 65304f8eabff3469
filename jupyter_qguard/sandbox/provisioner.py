"""The `qguard` kernel provisioner: how every agent kernel is started.

On top of jupyter_client's LocalProvisioner it
- puts the kernel's ZMQ sockets on the `ipc` transport, in a short per-kernel 0700 directory
  that holds only its connection file and sockets, so the kernel needs no TCP at all;
- reduces the environment to an allowlist, with HOME and friends inside that directory;
- hands the kernel one end of a connected unix socket pair (its broker channel) as an
  inherited descriptor, so it never has to call connect().
The OS layers (Landlock, seccomp, namespaces, uid drop) are applied by `launch.py` in the
kernel process before ipykernel starts; this class decides what they are.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from tornado import web

from ..broker import runtime
from . import identity
from .environment import kernel_environment
from .spec import DEFAULT_MINIMUM, SPEC_VAR, SandboxSpec


class QGuardProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launches `qguard-agent` kernels; refuses to launch when no broker is running."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel_dir: Path | None = None
        self._child_sock: socket.socket | None = None

    @property
    def is_qguard(self) -> bool:
        """Marker the server checks (never the kernelspec name, which anyone can copy)."""
        return True

    def _make_kernel_dir(self, root: str) -> Path:
        # mkdtemp creates it 0700 with an unguessable name; keep the path short, since a unix
        # socket path must fit in 108 bytes. The server's pid in the name lets a later server
        # remove directories left behind by one that was killed.
        return Path(tempfile.mkdtemp(prefix=f"qg-{os.getpid()}-", dir=root or None))

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        try:
            broker = runtime.current()
        except runtime.BrokerNotRunning as exc:
            # Fail closed, and say why: jupyter_server shows an HTTPError's message to the
            # person who tried to start the kernel (other exceptions become "Unhandled error").
            raise web.HTTPError(503, str(exc).replace("%", "%%")) from None
        settings = broker.kernel_settings
        await self._preflight(broker)
        try:
            await broker.scan_for_secrets()
        except PermissionError as exc:  # SecretsInWorkspace: names files and cells, never values
            raise web.HTTPError(403, str(exc).replace("%", "%%")) from None
        km = self.parent
        if self.kernel_dir is None or not self.kernel_dir.exists():
            self.kernel_dir = self._make_kernel_dir(settings.get("runtime_root", ""))
        if km is not None:
            km.transport = "ipc"
            km.ip = str(self.kernel_dir / "k")
            km.connection_file = str(self.kernel_dir / "connection.json")

        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._child_sock = child_sock
        env, env_report = kernel_environment(
            kwargs.get("env") or os.environ,
            allowlist=settings.get("env_allowlist", ()),
            kernel_dir=self.kernel_dir,
            channel_fd=child_sock.fileno(),
            kernel_id=self.kernel_id,
        )
        workspace = os.path.realpath(settings["workspace"])
        spec = SandboxSpec(
            workspace=workspace,
            kernel_dir=str(self.kernel_dir),
            minimum=list(settings.get("minimum", DEFAULT_MINIMUM)),
            disabled=list(settings.get("disabled", [])),
            rlimits=dict(settings.get("rlimits", {})),
            extra_read_paths=list(settings.get("extra_read_paths", [])),
        )
        # A kernel started without a notebook would inherit the server's cwd, which may lie
        # outside the workspace (and so be unreadable to it): start it at the workspace root.
        cwd = os.path.realpath(kwargs.get("cwd") or os.getcwd())
        if cwd != workspace and not cwd.startswith(workspace + os.sep):
            kwargs["cwd"] = workspace
        home = os.path.realpath(os.path.expanduser("~"))
        spec.guard_top_level = home == workspace or home.startswith(workspace + os.sep)
        if os.geteuid() == 0:
            spec.kernel_uid = spec.kernel_gid = identity.uid_for_kernel(self.kernel_id)
        env[SPEC_VAR] = spec.to_env()
        kwargs["env"] = env
        kwargs["pass_fds"] = (child_sock.fileno(),)
        broker.attach_kernel(
            self.kernel_id,
            parent_sock,
            {
                "sandbox": {
                    "requested": {
                        "minimum": spec.minimum,
                        "disabled": spec.disabled,
                        "kernel_uid": spec.kernel_uid,
                    },
                    "env": env_report,
                },
                "kernel_dir": str(self.kernel_dir),
            },
        )
        return await super().pre_launch(**kwargs)

    async def _preflight(self, broker: Any) -> None:
        """Refuse to start when this machine cannot give the minimum isolation; say which
        layer is missing and why, to the person (the error dialog) and in the server log."""
        settings = broker.kernel_settings
        probe = await broker.sandbox_probe()
        disabled = set(settings.get("disabled", []))
        missing = []
        for layer in settings.get("minimum", DEFAULT_MINIMUM):
            found = probe.get(layer, {"available": False, "why": "unknown layer"})
            if layer in disabled:
                missing.append(f"{layer}: disabled by configuration (QGuardApp.sandbox_disabled)")
            elif not found.get("available"):
                missing.append(f"{layer}: {found.get('why', 'not available')}")
        if missing:
            message = (
                "The qguard agent kernel cannot start: the minimum isolation "
                f"({', '.join(settings.get('minimum', DEFAULT_MINIMUM))}) is not available. "
                + " ".join(f"[{m}]" for m in missing)
                + " Run `jupyter qguard doctor` for details."
            )
            self.log.error(message)
            raise web.HTTPError(503, message.replace("%", "%%"))

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> Any:
        try:
            return await super().launch_kernel(cmd, **kwargs)
        finally:
            # The kernel holds its end now; the server must not keep a copy of it.
            if self._child_sock is not None:
                self._child_sock.close()
                self._child_sock = None

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        try:
            broker = runtime.current()
        except runtime.BrokerNotRunning:
            broker = None
        if broker is not None:
            broker.detach_kernel(self.kernel_id, forget=not restart)
        if not restart and self.kernel_dir is not None:
            shutil.rmtree(self.kernel_dir, ignore_errors=True)
            self.kernel_dir = None


def sweep_stale_kernel_dirs(root: str) -> list[Path]:
    """Remove kernel directories of servers that no longer run (killed, crashed)."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    for path in base.glob("qg-*-*"):
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        try:
            owner = path.stat().st_uid
        except OSError:
            continue
        # Ours: owned by this user, or (root server) by one of the kernel uids we hand out.
        mine = owner == os.geteuid() or (
            os.geteuid() == 0 and identity.UID_BASE <= owner < identity.UID_BASE + identity.UID_SPAN
        )
        if pid == os.getpid() or not mine:
            continue
        try:
            os.kill(pid, 0)
            continue  # that server is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
