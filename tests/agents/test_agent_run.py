"""`jupyter qguard agent run`: an agent's own process, confined as an agent kernel is.

A real server with the extension (as root and as the unprivileged qgtest, as the escape suite
does both), a person's HOME full of secrets, a loopback "model API" the manifest allows and a
port it does not. The scripted agent (tests/support/scripted_agent.py) does an agent's work
through JUPYTER_URL/JUPYTER_TOKEN and the proxy, tries what a hostile one would, and reports
each exact outcome; the server's audit log must hold every connection; the run's token must be
dead after the run, and within one lease after the CLI is killed. Stdio, the exit status and
signals pass through; an interactive agent gets the terminal and Ctrl-C reaches it once.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import pty
import pwd
import select
import signal
import subprocess
import time
import uuid
from typing import Any

import pytest
from support.agent_run import SCRIPTED_AGENT, UNPRIVILEGED, RunWorld
from support.jupyter_proc import processes_with
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

MODES = ["root", "user"]
AGENT_ENV = sorted(
    [
        "ALL_PROXY",
        "HOME",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "JUPYTER_TOKEN",
        "JUPYTER_URL",
        "LANG",
        "LOGNAME",
        "NO_PROXY",
        "PATH",
        "TERM",
        "TMPDIR",
        "TZ",
        "USER",
        "all_proxy",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ]
)


def require(mode: str) -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests run as root (CI does) to test both modes")
    if mode == "user":
        try:
            pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            pytest.fail(f"user {UNPRIVILEGED} missing: run tests/setup-unprivileged.sh")


@pytest.fixture(scope="module", params=MODES)
def world(request: pytest.FixtureRequest) -> Any:
    require(request.param)
    w = RunWorld(request.param).build()
    try:
        yield w.start()
    finally:
        w.stop()


async def status_with(world: RunWorld, token: str, path: str = "api/contents") -> int:
    assert world.server is not None
    req = HTTPRequest(f"{world.server.url}/{path}", headers={"Authorization": f"token {token}"})
    return (await AsyncHTTPClient().fetch(req, raise_error=False)).code


def audit_entries(world: RunWorld) -> list[dict[str, Any]]:
    assert world.server is not None
    log = world.server.state / "audit" / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def run_entries(world: RunWorld, kind: str, run: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in audit_entries(world)
        if e["kind"] == kind and (run is None or e.get("run") == run)
    ]


def expected_outcomes(world: RunWorld) -> dict[str, Any]:
    refused = f"qguard: {world.closed_addr} is not in agent scripted's network allowlist"
    # The person's files outside the workspace: Landlock refuses them (EACCES); a root-started
    # run also covers a closed directory above the workspace (here the 0700 test base, as
    # /root is for root) with an empty tmpfs, so they are not even there (ENOENT). Inside a
    # home workspace they are hidden by stand-ins: EACCES.
    gone = "ENOENT" if world.mode == "root" and world.workspace != world.home else "EACCES"
    return {
        "env": AGENT_ENV,
        "proc": [1, 2],  # its own pid namespace: its init and itself
        "home_is_run_dir": True,
        "write_own_home": "ok",
        "read": {
            "qiskit": gone,
            "aws": gone,
            "keyring": gone,
            "ssh": gone,
            "history": gone,
            "runtime_file": gone,
            "other_user": "EACCES",
            "private": "EACCES",  # the manifest's deny, hidden in the workspace
        },
        "list": {"runtime": gone, "ssh": gone, "jupyter_config": gone, "qiskit": gone},
        "unix_socket": "EPERM",  # D-Bus, keyring and agent sockets: no AF_UNIX socket at all
        "run_user": "ENOENT",  # /run emptied
        "udp_socket": "EPERM",
        "tiocsti": "EPERM",
        "rest_list": [200, ["agent-work", "notes.txt", "private"]],
        "rest_write": 201,
        "rest_write_outside": 403,
        "write_lane": "ok",
        "write_outside_lane": "EACCES",
        "read_workspace": "ok",
        "tokens_found": 1,
        "own_token_only": True,
        "approve": [403],
        "mint": 403,
        "forge_records": 403,
        "renew_own_lease": 403,
        "end_own_run": 403,
        "model_http": {"status": 200, "body": "model says hi to /v1/complete"},
        "model_tunnel": {"status": 200, "body": "model says hi to /tunnel"},
        "closed_http": {"status": 403, "body": refused},
        "closed_tunnel": {"status": 403, "body": refused},
        "closed_direct": "EACCES",  # Landlock: TCP connect only to the proxy and Jupyter ports
        "closed_fastopen": "EPERM",  # seccomp: no MSG_FASTOPEN (it connects past Landlock)
        "model_direct": "EACCES",
        "dns": "gaierror -3",  # EAI_AGAIN: no UDP socket to ask a resolver with
    }


def check_scripted_run(world: RunWorld) -> None:
    proc = world.run(
        "--name",
        "scripted",
        "--manifest",
        str(world.manifest),
        "--read",
        SCRIPTED_AGENT,
        command=[world.python, SCRIPTED_AGENT, world.agent_config()],
        stdin=subprocess.DEVNULL,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr
    # The CLI never writes to stdout: the agent's JSON line is all there is.
    [line] = proc.stdout.decode().splitlines()
    got = json.loads(line)
    kernel, token, uid, cwd = got.pop("kernel"), got.pop("token"), got.pop("uid"), got.pop("cwd")
    for key in ("home", "tmpdir"):
        assert got.pop(key).startswith("/tmp/qguard-run-")
    assert got == expected_outcomes(world)
    if world.mode == "root":
        assert uid >= 2_100_000_000
    else:
        assert uid == pwd.getpwnam(UNPRIVILEGED).pw_uid
    assert cwd == os.path.realpath(world.workspace)
    assert kernel["start"] == 201 and kernel["cell"] == "42", kernel
    job_id = kernel["job"]
    assert len(job_id) == 32, kernel
    written = world.workspace / "agent-work"
    assert (written / "hello.txt").read_text() == "hello from the agent\n"
    assert (written / "direct.txt").read_text() == "direct"
    assert (world.workspace / "notes.txt").read_text() == "the person's notes\n"

    async def after() -> tuple[int, str]:
        assert world.server is not None
        job = await world.server.json(f"qguard/api/jobs/{job_id}")
        return await status_with(world, token), job["state"]

    token_status, job_state = asyncio.run(after())
    assert token_status == 403  # revoked with the run
    assert job_state == "pending_approval"  # its own approval never went through

    [started] = [e for e in run_entries(world, "agent_run.started") if e["agent"] == "scripted"][
        -1:
    ]
    run = started["run"]
    assert started["network"] == [world.model_addr] and started["user"]
    [confined] = run_entries(world, "agent_run.confined", run)
    assert confined["ok"] is True
    assert {"env", "nonroot", "namespaces", "landlock", "seccomp", "manifest"} <= set(
        confined["active"]
    )
    conns = run_entries(world, "agent_run.connection", run)
    model_port = int(world.model_addr.rsplit(":", 1)[1])
    closed_port = int(world.closed_addr.rsplit(":", 1)[1])
    by = {(c["via"], c.get("method"), c["port"], c["allowed"]): c for c in conns}
    for method in ("GET", "CONNECT"):
        ok = by[("proxy", method, model_port, True)]
        assert ok["bytes_up"] > 0 and ok["bytes_down"] > 0, ok
        assert ok["reason"].startswith("allowed: in the manifest")
        no = by[("proxy", method, closed_port, False)]
        assert (no["bytes_up"], no["bytes_down"]) == (0, 0)
        assert (
            no["reason"]
            == f"qguard: {world.closed_addr} is not in agent scripted's network allowlist"
        )
    jupyter = [c for c in conns if c["via"] == "jupyter"]
    others = {c["reason"] for c in jupyter if c["reason"] != "this Jupyter server"}
    assert jupyter and all(c["allowed"] for c in jupyter) and not others, others
    assert sum(c["bytes_down"] for c in jupyter) > 1000
    assert all(c["started"] <= c["ended"] for c in conns)
    [ended] = run_entries(world, "agent_run.ended", run)
    assert (ended["reason"], ended["exit_status"]) == ("exited", 0)
    refused = [c for c in conns if not c["allowed"]]
    assert (ended["connections"], ended["refused"]) == (len(conns), 2), refused


def test_a_scripted_agent_works_and_reaches_nothing_else(world: RunWorld) -> None:
    check_scripted_run(world)


@pytest.mark.parametrize("mode", MODES)
def test_a_home_workspace_hides_the_persons_secrets(mode: str) -> None:
    """`jupyter lab` started in ~: the workspace is the home, and ~/.qiskit, ~/.ssh, the
    keyring, the runtime dir, ~/.jupyter and the history lie inside it: hidden, not only
    read-only (the scripted agent finds each EACCES, as outside)."""
    require(mode)
    w = RunWorld(mode, workspace_is_home=True).build()
    try:
        w.start()
        check_scripted_run(w)
    finally:
        w.stop()


ECHO = "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1]); sys.exit(7)"
SIGNALS = """
import os, signal, sys, time
def got(n, _f):
    # os.write, not print: a handler's print inside the main code's print raises "reentrant
    # call" (a signal can come while "ready" is still being flushed).
    os.write(1, f"got {n}\\n".encode())
    if n == signal.SIGTERM:
        sys.exit(0)
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, got)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def test_stdio_exit_status_and_signals_pass_through(world: RunWorld) -> None:
    data = b'{"jsonrpc": "2.0", "id": 1, "method": "initialize"}\n\x00\xff binary\n'
    proc = world.run("--name", "echo", command=[world.python, "-c", ECHO], input=data)
    assert proc.returncode == 7, proc.stderr.decode(errors="replace")
    assert proc.stdout == data[::-1]

    p = world.popen(
        "--name", "signals", command=[world.python, "-c", SIGNALS], stdout=subprocess.PIPE
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline() == b"ready\n"
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            p.send_signal(sig)
            assert p.stdout.readline() == f"got {int(sig)}\n".encode()
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()


# An interactive agent: it must own the terminal (a process group of its own, in the
# foreground), and a Ctrl-C typed there must reach it exactly once (not again through the CLI
# and the relays).
INTERACTIVE = """
import os, signal, sys, time
count = []
signal.signal(signal.SIGINT, lambda *_: count.append(1))
tty = os.open("/dev/tty", os.O_RDWR)
print("fg", os.tcgetpgrp(0) == os.getpgrp(), "tty", os.isatty(tty), flush=True)
deadline = time.monotonic() + 30
while not count and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1)
print("sigints", len(count), flush=True)
"""


def test_an_interactive_agent_owns_the_terminal(world: RunWorld) -> None:
    pid, master = pty.fork()
    if pid == 0:  # the person's shell, in effect: the CLI is the terminal's foreground job
        if world.user is not None:
            pw = pwd.getpwnam(world.user)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        os.chdir(world.workspace)
        argv = world.cli("--name", "tty", command=[world.python, "-c", INTERACTIVE])
        os.execve(argv[0], argv, world.cli_env(TERM="xterm"))
    out = b""

    def read_until(marker: bytes, timeout: float = 120) -> None:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    break

    try:
        read_until(b"tty True")
        assert b"fg True tty True" in out, out
        os.write(master, b"\x03")  # Ctrl-C, typed at the terminal
        read_until(b"sigints")
        read_until(b"\n", 5)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert b"sigints 1" in out, out
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_killed_cli_leaves_no_agent_and_its_token_dies_within_the_lease(
    world: RunWorld,
) -> None:
    marker = f"QGTEST_MARK={uuid.uuid4().hex}"
    lease = 6
    p = world.popen(
        "--name",
        "orphan",
        "--lease",
        str(lease),
        "--env",
        marker,
        command=[
            world.python,
            "-c",
            "import os, time; print(os.environ['JUPYTER_TOKEN'], flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None
    token = p.stdout.readline().decode().strip()
    assert asyncio.run(status_with(world, token)) == 200
    time.sleep(lease)  # a renewal happened: the token outlives its first lease
    assert asyncio.run(status_with(world, token)) == 200
    assert processes_with(marker)
    left = glob.glob(f"/tmp/qguard-run-{p.pid}-*")
    assert len(left) == 1
    p.kill()
    p.wait()
    killed = time.monotonic()
    # The launcher's supervisor sees its parent gone and takes the namespace down with it.
    while processes_with(marker) and time.monotonic() - killed < 10:
        time.sleep(0.2)
    assert processes_with(marker) == []
    while asyncio.run(status_with(world, token)) == 200:
        assert time.monotonic() - killed < lease + 3, "the token outlived its lease"
        time.sleep(0.5)
    assert asyncio.run(status_with(world, token)) == 403
    # The server's sweep ends the run in the audit log.
    [started] = [e for e in run_entries(world, "agent_run.started") if e["agent"] == "orphan"]
    while not run_entries(world, "agent_run.ended", started["run"]):
        assert time.monotonic() - killed < lease + 15, "no agent_run.ended for the lapsed run"
        time.sleep(0.5)
    [ended] = run_entries(world, "agent_run.ended", started["run"])
    assert ended["reason"] == "lease lapsed"
    # The killed CLI's run directory (the agent's HOME) goes with the next run.
    assert os.path.isdir(left[0])
    assert world.run("--name", "next", command=[world.python, "-c", "pass"]).returncode == 0
    assert not os.path.exists(left[0])


FAIL_CLOSED = """
import sys, time, urllib.error, urllib.request
def get():
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=30) as r:
            return f"{r.status} {r.read().decode()}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode().strip()}"
print("first", get(), flush=True)
sys.stdin.readline()  # meanwhile the server's audit log stops taking entries
second = get()  # nothing has failed yet: allowed, but its record is not taken
time.sleep(3)  # the record is sent (and refused) within a second
print("second", second, flush=True)
print("third", get(), flush=True)
print("token", __import__("os").environ["JUPYTER_TOKEN"], flush=True)
"""


def test_connections_are_refused_while_their_records_cannot_be_delivered() -> None:
    """Fail closed: when the server's audit log refuses the run's connection records, the
    proxy refuses new connections (503, one line saying why) and the CLI says so on stderr;
    the run's token is revoked at its end all the same."""
    require("root")
    w = RunWorld("root").build()
    try:
        w.start()
        assert w.server is not None
        p = w.popen(
            "--name",
            "failclosed",
            "--manifest",
            str(w.manifest),
            command=[w.python, "-c", FAIL_CLOSED, f"http://{w.model_addr}/x"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert p.stdin is not None and p.stdout is not None
        assert p.stdout.readline() == b"first 200 model says hi to /x\n"
        deadline = time.monotonic() + 30
        while not [c for c in run_entries(w, "agent_run.connection") if c["via"] == "proxy"]:
            assert time.monotonic() < deadline, "the first record never reached the audit log"
            time.sleep(0.2)
        (w.server.state / "audit" / "log.jsonl").write_bytes(b"")  # cut: it takes nothing now
        p.stdin.write(b"go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=120)
        lines = dict(line.split(" ", 1) for line in out.decode().splitlines())
        # Ending the run could not be written, but its token was revoked first.
        assert asyncio.run(status_with(w, lines["token"])) == 403
    finally:
        w.stop()
    assert lines["second"] == "200 model says hi to /x"
    assert lines["third"].startswith(
        "503 qguard: new connections are refused until the audit log takes them: HTTP 503: the "
        "audit log cannot take it: the audit log "
    ), lines["third"]
    stderr = err.decode()
    assert "the server does not take this run's connection records (HTTP 503" in stderr, stderr
    assert "new connections are refused until it does" in stderr
    assert "the server did not end run" in stderr
    assert p.returncode == 0


def test_jupyter_mcp_server_works_under_agent_run(world: RunWorld) -> None:
    """A desktop client's configuration: `jupyter qguard agent run -- jupyter-mcp-server` over
    stdio. The real MCP server, confined, reaches this server through the run's forwarder with
    the run's token, and its notebook work goes through; every connection is in the audit log."""
    from support import mcp_client
    from support.helpers import BELL

    mcp_client.mcp_venv()
    as_person = (
        ["setpriv", f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--init-groups"]
        if world.mode == "user"
        else []
    )
    cli = world.cli(
        "--name",
        "mcp-desktop",
        "--manifest",
        str(world.manifest),
        command=mcp_client.stdio_command(),
    )
    submit = "%qguard submit bell --backend aer_simulator --shots 100 --wait"
    out = mcp_client.run(
        "",
        "",
        [
            (
                "use_notebook",
                {"notebook_name": "nb", "notebook_path": "agent-work/bell.ipynb", "mode": "create"},
            ),
            ("insert_execute_code_cell", {"cell_index": -1, "cell_source": BELL}),
            ("insert_execute_code_cell", {"cell_index": -1, "cell_source": submit}),
            ("execute_code", {"code": "import os; print(os.environ.get('HOME'))"}),
        ],
        command=[*as_person, *cli],
        env=world.cli_env(),
    )
    answers = [mcp_client.texts(c) for c in out["calls"]]
    assert not any(c.get("error") or c["is_error"] for c in out["calls"]), (
        answers,
        out["stderr"][-3000:],
    )
    counts = answers[2]
    assert "{'" in counts and ("'00'" in counts or "'11'" in counts), answers
    saved = json.loads((world.workspace / "agent-work" / "bell.ipynb").read_text())
    assert any(submit in "".join(c["source"]) for c in saved["cells"])
    [started] = [e for e in run_entries(world, "agent_run.started") if e["agent"] == "mcp-desktop"]
    conns = run_entries(world, "agent_run.connection", started["run"])
    # Everything it did went through the forwarder to this server (HTTP and websockets alike).
    assert conns and {c["via"] for c in conns} == {"jupyter"}, conns
    assert all(c["allowed"] for c in conns) and sum(c["bytes_down"] for c in conns) > 10_000
    [ended] = run_entries(world, "agent_run.ended", started["run"])
    assert ended["reason"] == "exited", ended
