"""Entry point of a program worker: `python -I -m jupyter_qguard.sandbox.worker_launch`.

The agent's program bytes (QPY, OpenQASM) are parsed, linted, drawn, exported and simulated
here, never in the server: a loader bug (CVE-2025-2000 ran code from a QPY file) must land in
a process that holds nothing. Started by the broker's pool (worker_pool.py) from "/", with a
SandboxSpec of the program-worker profile in its environment and one end of a socket pair as
its channel, it goes through the agent kernel's layers (confinement.py): namespaces (no
network, empty /run: no D-Bus or keyring socket), a uid of its own on a root server, rlimits,
Landlock (Python and the system read-only; nothing of the workspace, the state dir or the
keyring file; writes only in its private directory) and seccomp (no socket but AF_UNIX, no
connect()). What differs from a kernel: its "workspace" is its own private directory, so there
is nothing of the person's to see or map (no idmap), and once confined it reports the layers
in force and then answers requests on its channel (worker_protocol.py), one at a time, until
the channel closes or the pool kills it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from typing import Any

from . import confinement
from .confinement import Target
from .spec import SPEC_VAR, SandboxSpec

PROFILE_PROGRAM_WORKER = "program-worker"

WORKER = Target(
    what="program worker",
    noun="worker",
    started_by="the qguard broker's program worker pool (jupyter_qguard/sandbox/worker_pool.py)",
)


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _attempt(fn: Any) -> str:
    try:
        fn()
    except OSError as exc:
        return _errno_name(exc)
    return "ok"


def confinement_probe(plan: dict[str, Any]) -> dict[str, Any]:
    """What this worker can reach, tried for real: each TCP address connected to, each unix
    socket path connected to, each file read, each folder listed, each path created for
    writing. "ok", or the errno's name. For `jupyter qguard doctor`-style checks and tests;
    the server asks, the worker only reports what it could do."""

    def tcp(address: list[Any]) -> None:
        with socket.create_connection((str(address[0]), int(address[1])), timeout=2):
            pass

    def unix(path: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(path)

    def read(path: str) -> None:
        with open(path, "rb") as f:
            f.read(1)

    def write(path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)

    return {
        "tcp": {f"{a[0]}:{a[1]}": _attempt(lambda a=a: tcp(a)) for a in plan.get("tcp", [])},
        "unix": {p: _attempt(lambda p=p: unix(p)) for p in plan.get("unix", [])},
        "read": {p: _attempt(lambda p=p: read(p)) for p in plan.get("read", [])},
        "list": {p: _attempt(lambda p=p: os.listdir(p)) for p in plan.get("list", [])},
        "write": {p: _attempt(lambda p=p: write(p)) for p in plan.get("write", [])},
        "uid": os.getuid(),
        "pid": os.getpid(),
    }


def functions() -> dict[str, Any]:
    """What the pool may ask for, by name: nothing else is callable from the channel."""
    from ..providers import aer_worker, braket_worker, ibm_worker

    return {
        **aer_worker.FUNCTIONS,
        **ibm_worker.FUNCTIONS,
        **braket_worker.FUNCTIONS,
        "confinement_probe": confinement_probe,
    }


def _one_line(text: str, limit: int = 2000) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def serve(fd: int) -> None:
    """Answer requests until the channel closes: {"id", "fn", "args"} → {"id", "result"} or
    {"id", "error", "type"}."""
    from .worker_protocol import pack, recv_frame, send_frame

    table = functions()
    sock = socket.socket(fileno=fd)
    send_frame(sock, {"ready": True, "pid": os.getpid()})
    while True:
        request = recv_frame(sock)
        if request is None:
            return
        call_id = request.get("id")
        try:
            fn = table[request["fn"]]
            answer = pack({"id": call_id, "result": fn(*request.get("args", []))})
        except Exception as exc:  # the function's own failure, or an answer JSON cannot hold
            name = type(exc).__name__
            message = _one_line(str(exc) or name)
            answer = pack({"id": call_id, "error": message, "type": name})
        sock.sendall(answer)


def main() -> None:
    fd = confinement.check_channel(WORKER)
    spec = SandboxSpec.from_env()
    if spec.profile != PROFILE_PROGRAM_WORKER:
        confinement.fail(WORKER, f"its spec is not a program worker's (profile {spec.profile!r})")
    if not sys.flags.safe_path:
        confinement.fail(WORKER, "the launcher was not started with -I")
    confined = confinement.confine(spec, WORKER)
    report, missing = confined.report, confined.missing
    if isinstance(confined.workdir, int):
        os.close(confined.workdir)
    # Python's own trees are read-only here: no bytecode is written anywhere.
    sys.dont_write_bytecode = True
    del os.environ[SPEC_VAR]
    report["env"]["names"] = sorted(os.environ)
    answer = confinement.send_report(fd, report, ok=not missing)
    if missing:
        confinement.fail(WORKER, "minimum isolation not met: " + "; ".join(missing))
    if not (answer.get("result") or {}).get("start"):
        why = (answer.get("error") or {}).get("message", "the channel closed")
        confinement.fail(WORKER, f"the pool did not let it start: {why}")
    try:
        serve(fd)
    except (OSError, ValueError) as exc:  # the channel broke, or the pool sent nonsense
        sys.stderr.write(f"qguard: program worker: {type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        os._exit(1)
    os._exit(0)


if __name__ == "__main__":
    main()
