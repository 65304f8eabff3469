"""A scripted agent for `jupyter qguard agent run` tests: it does an agent's legitimate work and
tries what a hostile one would, and prints every exact outcome as one JSON line on stdout.

Run as `python scripted_agent.py CONFIG_JSON` inside the confinement. CONFIG: home (the
person's), runtime (their Jupyter runtime dir), model ("host:port" of the allowed stand-in),
closed ("host:port" not allowed), other_file (another user's file), workspace, runtime_file
(the server's jpserver-*.json), run_route (a run's connections route, to forge records).
Only the standard library and tornado (for the kernel websocket).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import glob
import json
import os
import socket
import sys
import termios
import urllib.error
import urllib.request
import uuid
from typing import Any

CONFIG = json.loads(sys.argv[1])
URL = os.environ.get("JUPYTER_URL", "").rstrip("/")
TOKEN = os.environ.get("JUPYTER_TOKEN", "")
BELL = """\
from qiskit import QuantumCircuit
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
job = %qguard submit bell --backend aer_hw --shots 100 --seed 5
print("job", job.job_id)
"""


def outcome(fn: Any) -> Any:
    """'ok' (or what fn returns), the errno's name, or the gaierror's number."""
    try:
        value = fn()
        return "ok" if value is None else value
    except socket.gaierror as exc:
        return f"gaierror {exc.errno}"
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace").strip()}
    except OSError as exc:
        if exc.errno is None and isinstance(getattr(exc, "reason", None), OSError):
            exc = exc.reason  # urllib's URLError around the socket's error
        return errno.errorcode.get(exc.errno or 0, str(exc))


def rest(method: str, path: str, body: Any = None, token: str = TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{URL}/{path.lstrip('/')}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def read(path: str) -> Any:
    with open(path, "rb") as f:
        f.read()


def connect(hostport: str) -> Any:
    host, _, port = hostport.rpartition(":")
    socket.create_connection((host, int(port)), timeout=10).close()


def fastopen(hostport: str) -> Any:
    """TCP Fast Open: a connect made by the first send, where Landlock's connect hook is not."""
    host, _, port = hostport.rpartition(":")
    with socket.socket() as s:
        s.settimeout(10)
        s.sendmsg([b"x"], [], socket.MSG_FASTOPEN, (host, int(port)))


def tunnel(hostport: str) -> Any:
    """CONNECT through the proxy, then plain HTTP inside the tunnel: (status, body)."""
    proxy = os.environ["HTTPS_PROXY"].removeprefix("http://")
    host, _, port = proxy.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            return {"status": status, "body": head.split(b"\r\n\r\n", 1)[1].decode().strip()}
        s.sendall(f"GET /tunnel HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return {"status": status, "body": data.split(b"\r\n\r\n", 1)[1].decode()}


def via_proxy(hostport: str, path: str) -> Any:
    """A plain HTTP request the way any client makes it: urllib, proxies from the env."""
    with urllib.request.urlopen(f"http://{hostport}{path}", timeout=30) as resp:
        return {"status": resp.status, "body": resp.read().decode()}


async def kernel_work() -> dict[str, Any]:
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    status, kernel = rest("POST", "api/kernels", {"name": "qguard-agent"})
    out: dict[str, Any] = {"start": status}
    if status != 201:
        out["error"] = kernel
        return out
    ws_url = URL.replace("http://", "ws://") + f"/api/kernels/{kernel['id']}/channels"
    ws = await websocket_connect(HTTPRequest(ws_url, headers={"Authorization": f"token {TOKEN}"}))
    session = uuid.uuid4().hex

    async def run(code: str) -> str:
        msg_id = uuid.uuid4().hex
        msg = {
            "header": {
                "msg_id": msg_id,
                "msg_type": "execute_request",
                "session": session,
                "username": "agent",
                "version": "5.3",
                "date": "",
            },
            "parent_header": {},
            "metadata": {},
            "content": {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
            "channel": "shell",
            "buffers": [],
        }
        await ws.write_message(json.dumps(msg))
        text, idle, replied = "", False, False
        while not (idle and replied):
            raw = await asyncio.wait_for(ws.read_message(), 180)
            if raw is None:
                raise RuntimeError("kernel websocket closed")
            m = json.loads(raw)
            if m.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = m["header"]["msg_type"], m["content"]
            if kind == "stream":
                text += content["text"]
            elif kind == "error":
                text += f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        return text.strip()

    out["cell"] = await run("print(6 * 7)")
    job_line = await run(BELL)
    out["job"] = job_line.split()[-1] if job_line.startswith("job ") else job_line
    ws.close()
    return out


def found_tokens() -> list[str]:
    """Every token this agent can find: its own, any in its environment, any in a runtime
    file it can read."""
    tokens = {v for k, v in os.environ.items() if "TOKEN" in k}
    for path in glob.glob(os.path.join(CONFIG["runtime"], "jpserver-*.json")):
        try:
            with open(path) as f:
                tokens.add(json.load(f)["token"])
        except (OSError, ValueError, KeyError):
            pass
    return sorted(tokens)


def main() -> None:
    home, ws = CONFIG["home"], CONFIG["workspace"]
    r: dict[str, Any] = {
        "env": sorted(os.environ),
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "home": os.environ.get("HOME"),
        "tmpdir": os.environ.get("TMPDIR"),
        "home_is_run_dir": os.environ.get("HOME", "").startswith("/tmp/qguard-run-"),
        "write_own_home": outcome(lambda: open(os.path.join(os.environ["HOME"], "n"), "w").close()),
        "proc": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    }
    secrets = {
        "qiskit": f"{home}/.qiskit/qiskit-ibm.json",
        "aws": f"{home}/.aws/credentials",
        "keyring": f"{home}/.local/share/python_keyring/keyring_pass.cfg",
        "ssh": f"{home}/.ssh/id_ed25519",
        "history": f"{home}/.bash_history",
        "runtime_file": CONFIG["runtime_file"],
        "other_user": CONFIG["other_file"],
        "private": f"{ws}/private/secret.txt",
    }
    r["read"] = {k: outcome(lambda p=p: read(p)) for k, p in secrets.items()}
    r["list"] = {
        k: outcome(lambda p=p: os.listdir(p) and None)
        for k, p in {
            "runtime": CONFIG["runtime"],
            "ssh": f"{home}/.ssh",
            "jupyter_config": f"{home}/.jupyter",
            "qiskit": f"{home}/.qiskit",
        }.items()
    }
    r["unix_socket"] = outcome(lambda: socket.socket(socket.AF_UNIX).close())
    r["run_user"] = outcome(lambda: os.stat("/run/user"))
    r["udp_socket"] = outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close())
    r["tiocsti"] = outcome(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"x") and None)
    # The workspace, through Jupyter and directly.
    status, listing = rest("GET", "api/contents")
    r["rest_list"] = [
        status,
        sorted(c["name"] for c in listing["content"]) if status == 200 else listing,
    ]
    status, _ = rest(
        "PUT",
        "api/contents/agent-work/hello.txt",
        {"type": "file", "format": "text", "content": "hello from the agent\n"},
    )
    r["rest_write"] = status
    r["rest_write_outside"] = rest(
        "PUT", "api/contents/notes.txt", {"type": "file", "format": "text", "content": "x"}
    )[0]
    r["write_lane"] = outcome(
        lambda: open(f"{ws}/agent-work/direct.txt", "w").write("direct") and None
    )
    r["write_outside_lane"] = outcome(lambda: open(f"{ws}/notes.txt", "a").close())
    r["read_workspace"] = outcome(lambda: read(f"{ws}/notes.txt"))
    # A qguard kernel, a cell, and a hardware job that waits for a person.
    r["kernel"] = asyncio.run(kernel_work())
    job = r["kernel"].get("job", "")
    tokens = found_tokens()
    r["tokens_found"] = len(tokens)
    r["own_token_only"] = tokens == [TOKEN]
    r["approve"] = [
        rest("POST", f"qguard/api/jobs/{job}/approve", {"digest": "0" * 64}, token=t)[0]
        for t in tokens
    ]
    r["mint"] = rest("POST", "qguard/api/agent-runs", {"name": "escape"})[0]
    forged = {"connections": []}
    r["forge_records"] = rest("POST", CONFIG["run_route"] + "/connections", forged)[0]
    r["renew_own_lease"] = rest("POST", CONFIG["run_route"] + "/lease", {})[0]
    r["end_own_run"] = rest("DELETE", CONFIG["run_route"])[0]
    # For the test to check that it is dead once the run is over.
    r["token"] = TOKEN
    # The network: the allowed stand-in through the proxy, the closed port every way, DNS.
    r["model_http"] = outcome(lambda: via_proxy(CONFIG["model"], "/v1/complete"))
    r["model_tunnel"] = outcome(lambda: tunnel(CONFIG["model"]))
    r["closed_http"] = outcome(lambda: via_proxy(CONFIG["closed"], "/"))
    r["closed_tunnel"] = outcome(lambda: tunnel(CONFIG["closed"]))
    r["closed_direct"] = outcome(lambda: connect(CONFIG["closed"]))
    r["closed_fastopen"] = outcome(lambda: fastopen(CONFIG["closed"]))
    r["model_direct"] = outcome(lambda: connect(CONFIG["model"]))
    r["dns"] = outcome(lambda: socket.getaddrinfo("example.com", 443) and None)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
