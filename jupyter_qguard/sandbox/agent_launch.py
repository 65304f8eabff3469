"""Entry point of a confined agent process: `python -I -m jupyter_qguard.sandbox.agent_launch`.

Started by `jupyter qguard agent run` (agents/run.py), from "/", with a SandboxSpec of the
agent-process profile in its environment and a socket pair end as its channel. It goes through
the same layers as an agent kernel (confinement.py), and differs in what happens around them:

- right after the namespaces are entered (the process then holds CAP_NET_ADMIN in its new,
  empty network namespace) it brings loopback up and makes two listening TCP sockets on
  127.0.0.1 there, the egress proxy's and the one standing for the Jupyter server, and hands
  them to the CLI over the channel (SCM_RIGHTS). The CLI accepts on them from outside: the
  agent's connections arrive from inside the namespace, the CLI's own leave from the host's.
  No relay process inside, no socket path to hide;
- its session stays the person's (an interactive agent keeps its terminal; seccomp closes
  TIOCSTI and TIOCLINUX), and it becomes the terminal's foreground process group when the CLI
  held it, as a shell does for a job it starts;
- once confined it reports to the CLI and, on the CLI's word, replaces itself with the
  command (execve), with the environment the CLI built and nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import struct
import sys
from typing import Any

from . import confinement
from .confinement import Target
from .spec import PROFILE_AGENT_PROCESS, SandboxSpec

STARTED_BY = "`jupyter qguard agent run`"
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sH14x"  # struct ifreq: the name, then ifr_flags (a short) in the union
LISTEN_BACKLOG = 128


def loopback_up() -> None:
    """`ip link set lo up` in this network namespace (it starts down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | IFF_UP))


def hand_over_listeners(channel_fd: int, ports: dict[str, int]) -> dict[str, Any]:
    """Listen on 127.0.0.1:<port> for each name, here in the new network namespace, and send
    the sockets to the CLI: one message, the names in order, the descriptors attached. This
    process keeps none of them."""
    loopback_up()
    listeners: list[socket.socket] = []
    try:
        for port in ports.values():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listeners.append(s)
            s.bind(("127.0.0.1", port))
            s.listen(LISTEN_BACKLOG)
        message = {
            "jsonrpc": "2.0",
            "method": "listeners",
            "params": {"names": list(ports), "ports": list(ports.values())},
        }
        with socket.socket(fileno=os.dup(channel_fd)) as channel:
            socket.send_fds(
                channel, [json.dumps(message).encode() + b"\n"], [s.fileno() for s in listeners]
            )
    finally:
        for s in listeners:
            s.close()
    return {"loopback": "up", "listeners": dict(ports)}


def agent_target(spec: SandboxSpec, channel_fd: int) -> Target:
    return Target(
        what="agent process",
        noun="agent process",
        started_by=STARTED_BY,
        new_session=False,
        in_namespaces=lambda: hand_over_listeners(channel_fd, spec.tcp_ports),
        # A root-started run's uid must still reach the command's install tree through a
        # closed home above it, as it reaches Python's.
        reach_paths=list(spec.extra_read_paths),
        # Only ever the process's own controlling terminal (the person's, when it has one):
        # interactive agents open it to read keys and set its modes.
        extra_rw=["/dev/tty"],
        connect_ports=sorted(set(spec.tcp_ports.values())),
        seccomp_profile="agent-process",
    )


def enter_folder(spec: SandboxSpec, workdir: int | OSError | None) -> dict[str, Any]:
    """After every layer: into the folder the agent works in (the workspace, or the CLI's
    folder inside it)."""
    if isinstance(workdir, OSError):
        return {"active": False, "why": f"cannot enter {spec.cwd}: {workdir.strerror}"}
    if workdir is None:
        return {"active": True, "cwd": os.getcwd()}
    try:
        os.fchdir(workdir)
    except OSError as exc:
        return {"active": False, "why": f"cannot enter {spec.cwd}: {exc.strerror}"}
    finally:
        os.close(workdir)
    return {"active": True, "cwd": os.getcwd()}


def take_terminal(fd: int) -> None:
    """Become the foreground process group of the terminal on `fd` (a process group of its
    own): keys the person types (Ctrl-C, Ctrl-\\) signal the agent once, not the CLI and the
    relays around it too, and the agent may read the terminal. The CLI takes it back when
    the agent ends."""
    if fd < 0:
        return
    os.setpgid(0, 0)
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # we are not its foreground yet
    try:
        os.tcsetpgrp(fd, os.getpgrp())
    except OSError as exc:
        sys.stderr.write(f"qguard: the agent process cannot take the terminal: {exc.strerror}\n")
    finally:
        signal.signal(signal.SIGTTOU, previous)


def main() -> None:
    spec = SandboxSpec.from_env()
    target = agent_target(spec, -1)
    if spec.profile != PROFILE_AGENT_PROCESS or not spec.command or not spec.executable:
        confinement.fail(target, f"its spec is not an agent process's (profile {spec.profile!r})")
    fd = confinement.check_channel(target)
    target = agent_target(spec, fd)
    if not sys.flags.safe_path:
        confinement.fail(target, "the launcher was not started with -I")
    confined = confinement.confine(spec, target)
    report, missing = confined.report, confined.missing
    report["cwd"] = enter_folder(spec, confined.workdir)
    if not report["cwd"]["active"]:
        missing.append(f"cwd ({report['cwd']['why']})")
    # What the command will have: the CLI's allowlist and nothing of this process's own.
    report["env"]["names"] = sorted(spec.command_env)
    report["command"] = {"argv": spec.command, "executable": spec.executable}
    answer = confinement.send_report(fd, report, ok=not missing)
    if missing:
        confinement.fail(target, "minimum isolation not met: " + "; ".join(missing))
    if not (answer.get("result") or {}).get("start"):
        why = (answer.get("error") or {}).get("message", "the channel closed")
        confinement.fail(target, f"`jupyter qguard agent run` did not let it start: {why}")
    # Nothing of the launcher's passes to the command: not the channel, not a descriptor
    # a library opened; stdin, stdout and stderr are the agent's own.
    os.closerange(3, 1 << 16)
    take_terminal(spec.foreground_tty)
    try:
        os.execve(spec.executable, spec.command, spec.command_env)
    except OSError as exc:
        sys.stderr.write(
            f"qguard agent run: cannot run {spec.command[0]} ({spec.executable}): {exc.strerror}\n"
        )
        sys.stderr.flush()
        # What a shell answers: 127 for a command it cannot find, 126 for one it cannot run.
        os._exit(127 if exc.errno == errno.ENOENT else 126)


if __name__ == "__main__":
    main()
