"""The `qguard` kernel provisioner: how every agent kernel is started.

On top of jupyter_client's LocalProvisioner it
- puts the kernel's ZMQ sockets on the `ipc` transport, in a short per-kernel 0700 directory
  that holds only its connection file and sockets, so the kernel needs no TCP at all;
- reduces the environment to an allowlist, with HOME and friends inside that directory;
- hands the kernel one end of a connected unix socket pair (its broker channel) as an
  inherited descriptor, so it never has to call connect();
- starts the interpreter in "/" (a directory the agent cannot write; the launcher enters the
  notebook's folder, `spec.cwd`, once confined), with no descriptor of the server's: stdin is
  /dev/null, stdout and stderr are pipes read here and shown in the server log one line at a
  time (cut, rate-limited, control characters shown escaped: see KernelOutput);
- binds a kernel an agent token started to that token's manifest (its write scopes as the
  kernel's write rules, its read denials hidden), for the kernel's whole life, restarts
  included; the broker knows the starter (`Broker.kernel_starter`);
- makes each launch a cgroup of its own (cgroup.py: memory, tasks and CPU of all the kernel's
  processes together), ends the whole kernel at its first OOM kill, removes the cgroup when
  the kernel ends, and says why a kernel that died on its own ended (`last_end` in its
  sandbox report: the Kernels tab, `%qguard whoami`, the server log, the audit log).
The OS layers (Landlock, seccomp, namespaces, uid drop) are applied by `launch.py` in the
kernel process before ipykernel starts; this class decides what they are.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.provisioning import LocalProvisioner
from tornado import web
from traitlets import Int

from ..agents.context import current_agent
from ..agents.manifest import normalize
from ..broker import runtime
from ..isolation import ISOLATED_CWD, workspace_on_sys_path
from . import cgroup as kernel_cgroup
from . import identity
from .environment import kernel_environment
from .kernel_output import KernelOutput
from .spec import DEFAULT_MINIMUM, SPEC_VAR, SandboxSpec


class QGuardProvisioner(LocalProvisioner):  # type: ignore[misc]
    """Launches `qguard-agent` kernels; refuses to launch when no broker is running."""

    output_line_bytes = Int(
        2000,
        config=True,
        help="Longest line of a kernel's stdout/stderr shown in the server log; the rest of "
        "the line is cut (and the number of bytes cut said).",
    )
    output_lines_per_second = Int(
        200,
        config=True,
        help="Most lines of a kernel's stdout/stderr shown in the server log per second; "
        "beyond that they are dropped, and how many is said once.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kernel_dir: Path | None = None
        self._child_sock: socket.socket | None = None
        # jupyter_client 8 keeps this object across restarts (KernelManager creates one only
        # when it has none): what was decided at the first launch holds for every later one.
        self._launched = False
        self._starter: Any = None
        self._workdir: str | None = None
        self._output: KernelOutput | None = None
        # This launch's cgroup, what watches it for an OOM kill, and how the launch ended.
        self._cgroup: kernel_cgroup.KernelCgroup | None = None
        self._oom_watch: asyncio.Task[None] | None = None
        self._launches = 0
        self._stop_requested = False
        self._exit_code: int | None = None
        self._last_end: dict[str, Any] | None = None

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
        # The folder the kernel works in: the notebook's, or (a kernel started without one
        # would get the server's, which may lie outside the workspace and so be unreadable
        # to it) the workspace root. The process itself starts in "/": `python -m` puts its
        # working directory first on sys.path before any layer applies, and this folder is
        # the agent's. The launcher enters it once confined.
        cwd = os.path.realpath(kwargs.get("cwd") or os.getcwd())
        if cwd != workspace and not cwd.startswith(workspace + os.sep):
            cwd = workspace
        spec.cwd = self._workdir = cwd
        kwargs["cwd"] = ISOLATED_CWD
        _warn_if_workspace_on_sys_path(workspace, self.log)
        starter = self._kernel_starter(broker)
        if starter is not None:
            contents = starter.manifest.data["contents"]
            spec.write_paths = manifest_write_paths(contents.get("write", []), workspace, self.log)
            spec.hide_patterns = list(contents.get("deny", []))
        home = os.path.realpath(os.path.expanduser("~"))
        spec.guard_top_level = home == workspace or home.startswith(workspace + os.sep)
        if os.geteuid() == 0:
            spec.kernel_uid = spec.kernel_gid = identity.uid_for_kernel(self.kernel_id)
        self._stop_requested, self._exit_code = False, None
        spec.cgroup = self._make_cgroup(settings)
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
                        "write_paths": spec.write_paths,
                        "hide_patterns": spec.hide_patterns,
                    },
                    "env": env_report,
                    # Why the previous launch of this kernel ended, when it died on its own.
                    "last_end": self._last_end,
                },
                "kernel_dir": str(self.kernel_dir),
                # Read by Broker.kernel_starter (an agent token attaches only to kernels it
                # started); carried into each launch's record, so a restart keeps it.
                "starter": starter,
            },
        )
        if starter is not None and not self._launched:
            broker.note_agent(self.kernel_id, starter)  # its jobs are the agent's from the start
        self._launched = True
        return await super().pre_launch(**kwargs)

    def _make_cgroup(self, settings: dict[str, Any]) -> dict[str, Any]:
        """This launch's cgroup (made here, by the server, before the kernel runs; the
        launcher moves itself in first thing), for the spec; or why there is none."""
        if "cgroup" in settings.get("disabled", []):
            return {"why": "disabled by configuration"}
        limits = dict(settings.get("cgroup") or kernel_cgroup.default_limits())
        if self._cgroup is not None:  # a launch that failed before it ran: nothing is in it
            self._cgroup.try_remove()
            self._cgroup = None
        self._launches += 1
        try:
            place = kernel_cgroup.server_place()
            self._cgroup = place.create(f"{self.kernel_id}.{self._launches}", limits)
        except (kernel_cgroup.Unavailable, OSError) as exc:
            return {"why": f"{exc}; rlimits remain (each process alone)"}
        return self._cgroup.to_spec()

    def _kernel_starter(self, broker: Any) -> Any:
        """The agent whose token started this kernel (agents.tokens.Agent), or None.

        Decided at the first launch, from the request that started it; a restart (the REST
        call, whoever makes it, or the automatic one after the kernel died, which runs in no
        request) keeps it. Should jupyter_client ever make a new provisioner for a restart,
        the broker's record of this kernel id still says who started it."""
        if not self._launched:
            known = broker.kernels.get(self.kernel_id)
            self._starter = known.get("starter") if known is not None else current_agent()
        return self._starter

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
        # No descriptor of the server's: not its stdin (a terminal, perhaps), not its stdout or
        # stderr (the log file: written into, truncated, or a terminal fed escape sequences).
        # Pipes made here, for this process only, read on the event loop.
        if self._output is None:
            self._output = KernelOutput(
                self.kernel_id,
                self.log,
                max_line_bytes=self.output_line_bytes,
                max_lines_per_second=self.output_lines_per_second,
            )
        child_out, child_err = self._output.open()
        kwargs.update(stdin=subprocess.DEVNULL, stdout=child_out, stderr=child_err)
        try:
            info = await super().launch_kernel(cmd, **kwargs)
        finally:
            # The kernel holds its ends now; the server must not keep copies of them (a pipe
            # whose write end the server still held would never end).
            os.close(child_out)
            os.close(child_err)
            if self._child_sock is not None:
                self._child_sock.close()
                self._child_sock = None
        # Where the kernel works, not where its interpreter started ("/"): what
        # resolve_path() takes relative paths against.
        self.cwd = self._workdir
        if self._cgroup is not None and self.pid:
            try:
                await asyncio.to_thread(self._cgroup.adopt, self.pid)
            except OSError as exc:  # the launcher moves itself (and fails closed if it cannot)
                self.log.debug("qguard: kernel %s joins its cgroup itself: %s", self.kernel_id, exc)
        if self._cgroup is not None:
            self._oom_watch = asyncio.ensure_future(self._end_at_oom(self._cgroup))
        return info

    async def _end_at_oom(self, cg: kernel_cgroup.KernelCgroup) -> None:
        """At the first OOM kill in the kernel's cgroup, end the whole kernel: cgroup v1 has
        no memory.oom.group, and a kernel that lost one random process of its tree (its
        heartbeat thread's, a worker's) is worse than one that restarts cleanly, saying why.
        (On v2, memory.oom.group has done it already.)"""
        while not cg.oom_kills():
            await asyncio.sleep(0.5)
        if cg.kill():
            self.log.warning(
                "qguard: kernel %s ran out of memory: ending all of it", self.kernel_id
            )

    async def poll(self) -> int | None:
        code = await super().poll()
        if code is not None and self.process is not None:
            self._exit_code = code  # how it ended, kept for cleanup's account
        return code

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._stop_requested = True  # asked to stop: its end is no news
        await super().shutdown_requested(restart=restart)

    async def _end_launch(self, broker: Any) -> None:
        """The launch is over (its supervisor reaped): say why it ended if it died on its own,
        then kill whatever of it is left and remove its cgroup."""
        if self._oom_watch is not None:
            self._oom_watch.cancel()
            self._oom_watch = None
        cg, self._cgroup = self._cgroup, None
        kills, limits = (cg.oom_kills(), cg.limits) if cg is not None else (0, {})
        end = describe_end(kills, limits, self._exit_code, self._stop_requested)
        # Kept for the next launch's report; a stop someone asked for clears it.
        self._last_end = end
        if end is not None:
            self.log.warning("qguard: kernel %s ended: %s", self.kernel_id, end["reason"])
            if broker is not None:
                broker.record("kernel.end", kernel=self.kernel_id, **end)
                known = broker.kernels.get(self.kernel_id)
                if known is not None:
                    known.setdefault("sandbox", {})["last_end"] = end
        if cg is not None and not await cg.remove():
            self.log.warning(
                "qguard: the cgroup %s of kernel %s is still busy; the next server start "
                "removes it",
                cg.path,
                self.kernel_id,
            )

    async def cleanup(self, restart: bool = False) -> None:
        if self._output is not None:
            # The process is gone: show what it wrote last (the reason it died, often), then
            # close this launch's pipes. The reader itself stays for the next launch.
            self._output.close()
            if not restart:
                self._output = None
        await super().cleanup(restart=restart)
        try:
            broker = runtime.current()
        except runtime.BrokerNotRunning:
            broker = None
        await self._end_launch(broker)
        if broker is not None:
            broker.detach_kernel(self.kernel_id, forget=not restart)
        if not restart and self.kernel_dir is not None:
            shutil.rmtree(self.kernel_dir, ignore_errors=True)
            self.kernel_dir = None


def describe_end(
    oom_kills: int, limits: dict[str, Any], code: int | None, requested: bool
) -> dict[str, Any] | None:
    """Why a kernel launch ended, for the person; None when it was asked to stop."""
    at = time.time()
    if oom_kills:
        memory = int(limits.get("memory_max") or 0)
        limit = f" ({memory >> 20} MiB)" if memory else ""
        return {
            "reason": "out of memory: the kernel's processes together reached its memory "
            f"limit{limit}, and the whole kernel was ended (cgroup OOM kill)",
            "oom_kills": oom_kills,
            "exit": code,
            "at": at,
        }
    if requested or not code:
        return None
    # The supervisor exits with 128 + N when the kernel died of signal N.
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        how = f"signal {signal.Signals(number).name}" if number else f"exit status {code}"
    except ValueError:
        how = f"exit status {code}"
    return {"reason": f"the kernel died on its own ({how})", "oom_kills": 0, "exit": code, "at": at}


_GLOB_CHARS = re.compile(r"[*?\[]")


def manifest_write_paths(patterns: list[str], workspace: str, log: Any) -> list[str] | None:
    """The directories (or files) an agent's `contents.write` patterns cover, as Landlock can
    grant them: the literal directory in front of each pattern's first wildcard (`agent/*` ->
    `<workspace>/agent`), a plain path as it is, None (the whole workspace) as soon as one
    pattern starts with a wildcard (`*`, `*.ipynb`: Landlock cannot express file-name globs).
    A path that climbs out of the workspace or passes through a symlink grants nothing (a
    rule on it would follow the link)."""
    out: set[str] = set()
    for pattern in patterns:
        m = _GLOB_CHARS.search(pattern)
        literal = pattern if m is None else pattern[: m.start()].rpartition("/")[0]
        rel = normalize(literal)
        if rel is None:
            log.warning("qguard: manifest write pattern %r leaves the workspace: ignored", pattern)
            continue
        if rel == "":
            return None
        path = os.path.join(workspace, rel)
        if _through_link(workspace, rel):
            log.warning("qguard: manifest write path %s passes through a link: ignored", path)
            continue
        out.add(path)
    return sorted(out)


def _through_link(workspace: str, rel: str) -> bool:
    path = workspace
    for part in rel.split("/"):
        path = os.path.join(path, part)
        try:
            if os.path.islink(path):
                return True
        except OSError:
            return False
        if not os.path.lexists(path):
            return False  # the rest does not exist yet: nothing to follow
    return False


_warned_sys_path = False


def _warn_if_workspace_on_sys_path(workspace: str, log: Any) -> None:
    global _warned_sys_path
    if _warned_sys_path:
        return
    found = workspace_on_sys_path(workspace)
    if found:
        _warned_sys_path = True
        log.warning(
            "qguard: this server imports from the workspace (sys.path has %s): it was started "
            "as `python -m ...` or `python -c` from there, or with PYTHONPATH into it, so a "
            "module an agent kernel writes there runs in the server at its next import or "
            "start. Start it with `jupyter lab` / `jupyter server`, or `python -I -m ...`.",
            ", ".join(repr(e) for e in found),
        )


def sweep_stale_kernel_dirs(root: str) -> list[Path]:
    """Remove kernel directories of servers that no longer run (killed, crashed)."""
    removed = []
    base = Path(root or tempfile.gettempdir())
    for path in base.glob("qg-*-*"):
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            continue
        if identity.remove_if_orphaned(str(path), pid):
            removed.append(path)
    return removed
