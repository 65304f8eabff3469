"""The capability manifest holds in the kernel too (issue 18), not only on the REST API: a
kernel started with an agent token whose manifest writes only `agent/*` and denies `.env`,
`private` and `*/secret.txt` gets those write scopes as its Landlock write rules and the denied
files hidden in its mount namespace. Real server, real kernel started over the REST API with
the agent's token, as root and as an unprivileged user; exact errnos."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.jupyter_proc import KernelWS, ServerProcess
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect
from world import MODES, UNPRIVILEGED, _require_mode

from jupyter_qguard.sandbox.environment import CHANNEL_FD_VAR
from jupyter_qguard.sandbox.spec import SPEC_VAR, SandboxSpec

MANIFEST = """
description: the manifest holds in the kernel
contents:
  read: ["*"]
  write: ["agent/*"]
  deny: [".env", "private", "*/secret.txt"]
backends: ["aer_*"]
limits:
  max_shots: 1000
  max_cost_per_job: 0
  rate: {jobs: 10, per_seconds: 3600}
"""

FILES = {
    "notes.txt": "the person's notes\n",
    # (nothing that looks like a credential: the secret scan would refuse the kernel first)
    ".env": "THEME=dark\n",
    "private/diary.txt": "the person's own\n",
    "sub/secret.txt": "hidden too\n",
    "sub/ok.txt": "readable\n",
}

CODE = r"""
import errno, json, os
def outcome(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(json.dumps({
    "write_top_file": outcome(lambda: open("notes.txt", "a")),
    "create_top_file": outcome(lambda: open("new.txt", "w")),
    "mkdir_top": outcome(lambda: os.mkdir("newdir")),
    "write_other_folder": outcome(lambda: open("sub/ok.txt", "a")),
    "write_agent": outcome(lambda: open("agent/x.txt", "w").write("from the kernel")),
    "mkdir_agent": outcome(lambda: os.makedirs("agent/a/b")),
    "read_notes": outcome(lambda: open("notes.txt").read()),
    "read_env": outcome(lambda: open(".env").read()),
    "list_private": outcome(lambda: os.listdir("private")),
    "read_private_file": outcome(lambda: open("private/diary.txt").read()),
    "read_nested_secret": outcome(lambda: open("sub/secret.txt").read()),
    "read_nested_ok": outcome(lambda: open("sub/ok.txt").read()),
    "chmod_env_readable": outcome(lambda: os.chmod(".env", 0o644)),
    "remove_env_cover": outcome(lambda: os.rename("sub/secret.txt", "agent/secret.txt")),
    "link_env_into_lane": outcome(lambda: os.link(".env", "agent/env")),
    "env_still_listed": ".env" in os.listdir("."),
}))
"""

EXPECTED = {
    # Landlock: the workspace is read-only to the kernel but for the manifest's write lane
    "write_top_file": "EACCES",
    "create_top_file": "EACCES",
    "mkdir_top": "EACCES",
    "write_other_folder": "EACCES",
    "write_agent": "ok",
    "mkdir_agent": "ok",
    "read_notes": "ok",
    # the mount namespace: empty mode-0 files and folders over what the manifest denies
    "read_env": "EACCES",
    "list_private": "EACCES",
    "read_private_file": "EACCES",
    "read_nested_secret": "EACCES",
    "read_nested_ok": "ok",
    # read-only covers: not to be opened up again...
    "chmod_env_readable": "EROFS",
    # ... nor moved out of the way (Landlock refuses the move out of a read-only folder first)
    "remove_env_cover": "EACCES",
    # ... nor given a second name where the kernel may read it (the cover is another mount)
    "link_env_into_lane": "EXDEV",
    "env_still_listed": True,
}


def make_token(server: ServerProcess, manifest: Path) -> str:
    """`jupyter qguard agent-token create`, as the server's user, before the server starts."""
    user = {"user": server.user, "group": server.user} if server.user else {}
    made = subprocess.run(
        [
            sys.executable,
            "-I",
            "-m",
            "jupyter_qguard.cli",
            "agent-token",
            "create",
            "--name",
            "lane-bot",
            f"--manifest={manifest}",
            f"--QGuardApp.state_dir={server.state}",
        ],
        env=server.env(),
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        **user,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[0]


async def agent_kernel(server: ServerProcess, token: str) -> KernelWS:
    headers = {"Authorization": f"token {token}"}
    r = await AsyncHTTPClient().fetch(
        HTTPRequest(
            f"{server.url}/api/kernels",
            method="POST",
            headers=headers,
            body=json.dumps({"name": "qguard-agent"}),
            request_timeout=120,
        )
    )
    kernel_id = json.loads(r.body)["id"]
    ws = await websocket_connect(
        HTTPRequest(
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels", headers=headers
        )
    )
    kernel = KernelWS(kernel_id, ws)
    await kernel.wait_ready()
    return kernel


@pytest.fixture(scope="module", params=MODES)
def manifest_run(request):
    mode = request.param
    _require_mode(mode)
    base = Path(tempfile.mkdtemp(prefix="qg-manifest-"))
    ws = base / "workspace"
    for rel, text in FILES.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (base / "home").mkdir()
    manifest = base / "manifest.yaml"
    manifest.write_text(MANIFEST)
    user = UNPRIVILEGED if mode == "user" else None
    if user is not None:
        pw = pwd.getpwnam(user)
        for root, dirs, files in os.walk(base):
            for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
                os.lchown(n, pw.pw_uid, pw.pw_gid)
    server = ServerProcess(base, user=user)
    token = make_token(server, manifest)
    server.start()

    async def run():
        kernel = await agent_kernel(server, token)
        try:
            res = await kernel.run(CODE)
            assert res["error"] is None, res
            seen = json.loads(res["stdout"].strip().splitlines()[-1])
        finally:
            kernel.close()
        sandbox = await server.json("qguard/api/sandbox")
        [report] = [k for k in sandbox["kernels"] if k["kernel_id"] == kernel.id]
        return seen, report["sandbox"]

    try:
        seen, sandbox = asyncio.run(run())
        after = {
            "agent_owner": os.stat(ws / "agent").st_uid,
            "workspace_owner": os.stat(ws).st_uid,
            "written": (ws / "agent/x.txt").read_text(),
            "notes": (ws / "notes.txt").read_text(),
            "top_level": sorted(os.listdir(ws)),
        }
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return mode, str(ws), seen, sandbox, after


def test_the_kernel_writes_only_its_lane_and_reads_no_denied_file(manifest_run):
    mode, _, seen, _, _ = manifest_run
    assert seen == EXPECTED, mode


def test_the_lane_is_made_at_start_owned_like_the_workspace(manifest_run):
    mode, _, _, _, after = manifest_run
    assert after["agent_owner"] == after["workspace_owner"], mode
    assert after["written"] == "from the kernel"
    assert after["notes"] == FILES["notes.txt"]
    # nothing new at the top but the lane; the covers left no trace on disk
    assert after["top_level"] == [".env", "agent", "notes.txt", "private", "sub"]


def test_the_report_says_what_the_manifest_made_of_the_kernel(manifest_run):
    mode, ws, _, sandbox, _ = manifest_run
    applied = sandbox["applied"]
    assert sandbox["ok"] is True and "manifest" in sandbox["active"]
    assert applied["manifest"] == {
        "active": True,
        "write_paths": [f"{ws}/agent"],
        "write_paths_created": [f"{ws}/agent"],
        "hide_patterns": [".env", "private", "*/secret.txt"],
        "hidden": 3,
    }
    assert applied["namespaces"]["mounts"]["hidden"] == {
        "count": 3,
        "paths": [".env", "private", "sub/secret.txt"],
        "failed": [],
        "failed_count": 0,
        "complete": True,
    }
    landlock = applied["landlock"]
    assert landlock["workspace"] == "manifest write paths only"
    assert f"{ws}/agent" in landlock["writable"] and ws not in landlock["writable"], mode


@pytest.mark.parametrize("mode", MODES)
def test_without_a_mount_namespace_a_kernel_with_denied_files_does_not_start(mode):
    """Nothing else could hide them: the launcher refuses (exit 3), tells the broker why, and
    says it on stderr, before any agent code could run. Its write lane was made all the same
    (before privilege ended), owned like the workspace."""
    _require_mode(mode)
    base = Path(tempfile.mkdtemp(prefix="qg-manifest-closed-"))
    os.chmod(base, 0o755)
    ws, kernel_dir = base / "workspace", base / "kernel"
    ws.mkdir()
    (ws / ".env").write_text("THEME=dark\n")
    kernel_dir.mkdir(mode=0o700)
    user = UNPRIVILEGED if mode == "user" else None
    spec = SandboxSpec(
        workspace=str(ws),
        kernel_dir=str(kernel_dir),
        disabled=["namespaces", "idmap"],
        write_paths=[str(ws / "agent")],
        hide_patterns=[".env"],
    )
    if user is None:
        spec.kernel_uid = spec.kernel_gid = 2_100_999_998
    else:
        pw = pwd.getpwnam(user)
        for p in (ws, ws / ".env", kernel_dir):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    server_end, kernel_end = socket.socketpair()
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-m", "jupyter_qguard.sandbox.launch", "-f", "unused.json"],
            env={
                "PATH": os.environ["PATH"],
                SPEC_VAR: spec.to_env(),
                CHANNEL_FD_VAR: str(kernel_end.fileno()),
            },
            pass_fds=(kernel_end.fileno(),),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
            **({"user": user, "group": user} if user else {}),
        )
        kernel_end.close()
        report = json.loads(server_end.makefile().readline())
        agent = os.stat(ws / "agent")
        owner = os.stat(ws)
    finally:
        server_end.close()
        shutil.rmtree(base, ignore_errors=True)
    assert proc.returncode == 3, proc.stderr
    assert (
        "minimum isolation not met: manifest (its denied files are hidden in a mount namespace "
        "of the kernel's own, and there is none (disabled by configuration))"
    ) in proc.stderr
    assert report["params"]["ok"] is False
    manifest = report["params"]["layers"]["manifest"]
    assert manifest["active"] is False and manifest["write_paths_created"] == [f"{ws}/agent"]
    assert (agent.st_uid, agent.st_gid) == (owner.st_uid, owner.st_gid), mode
