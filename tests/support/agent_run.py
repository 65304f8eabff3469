"""A world for `jupyter qguard agent run` tests: a real server with the extension (as root, or
as the unprivileged `qgtest`), a person's HOME full of secrets, a loopback "model API"
stand-in the manifest allows and a loopback port it does not, and the CLI run the way a
person (or their MCP client) runs it, as that person."""

from __future__ import annotations

import http.server
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from support.jupyter_proc import ServerProcess

UNPRIVILEGED = "qgtest"
MODEL_HOST = "127.0.0.2"  # host loopback, not 127.0.0.1 (NO_PROXY), so clients use the proxy
JUPYTER = str(Path(sys.executable).with_name("jupyter"))
SCRIPTED_AGENT = str(Path(__file__).with_name("scripted_agent.py"))
KEYRING_FILE = ".local/share/python_keyring/keyring_pass.cfg"
BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "aer_hw": {"provider": "aer", "qubits": 28},
}
POLICY = {
    "backends": {"aer_hw": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}}}
}
MANIFEST = """\
description: a scripted agent
contents: {{read: ["*"], write: ["agent-work/*"], deny: ["private/*"]}}
backends: ["aer_*"]
limits: {{max_shots: 5000, max_cost_per_job: 1.0, rate: {{jobs: 50, per_seconds: 3600}}}}
network: {{allow: ["{model}"]}}
"""


class ModelStandIn(http.server.BaseHTTPRequestHandler):
    """Answers every GET or POST with one line naming the path."""

    def do_GET(self) -> None:
        body = f"model says hi to {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: Any) -> None:
        pass


class RunWorld:
    def __init__(self, mode: str, *, workspace_is_home: bool = False) -> None:
        self.mode = mode
        self.user = UNPRIVILEGED if mode == "user" else None
        self.secret = "qguard-run-" + secrets.token_hex(12)
        self.base = Path(tempfile.mkdtemp(prefix="qg-agentrun-"))
        self.home = self.base / "home"
        self.workspace = self.home if workspace_is_home else self.base / "workspace"
        self.other = Path(tempfile.mkdtemp(prefix="qg-other-user-"))
        self.server: ServerProcess | None = None
        self.model: http.server.ThreadingHTTPServer | None = None
        self.closed: socket.socket | None = None

    # -- building ------------------------------------------------------------------------

    def build(self) -> RunWorld:
        home, ws = self.home, self.workspace
        files = {
            home / ".qiskit/qiskit-ibm.json": json.dumps({"default": {"token": self.secret}}),
            home / ".aws/credentials": f"[default]\naws_secret_access_key = {self.secret}\n",
            home / KEYRING_FILE: f"[jupyter-qguard]\nibm = {self.secret}\n",
            home / ".ssh/id_ed25519": f"-----BEGIN OPENSSH PRIVATE KEY-----\n{self.secret}\n",
            home / ".bash_history": f"export QISKIT_IBM_TOKEN={self.secret}\n",
            home / ".jupyter/jupyter_server_config.json": "{}\n",
            ws / "notes.txt": "the person's notes\n",
            ws / "private/secret.txt": f"{self.secret}\n",
        }
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for p in (home / ".ssh", home / ".ssh/id_ed25519", home / ".qiskit"):
            os.chmod(p, 0o700 if p.is_dir() else 0o600)
        # Another user's file, readable by anyone as far as its mode goes.
        (self.other / "file").write_text(f"{self.secret}\n")
        os.chmod(self.other, 0o755)
        os.chmod(self.other / "file", 0o644)
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            for root, dirs, names in os.walk(self.base):
                for n in [root, *(os.path.join(root, x) for x in dirs + names)]:
                    os.lchown(n, pw.pw_uid, pw.pw_gid)
        self.model = http.server.ThreadingHTTPServer((MODEL_HOST, 0), ModelStandIn)
        threading.Thread(target=self.model.serve_forever, daemon=True).start()
        self.closed = socket.socket()
        self.closed.bind((MODEL_HOST, 0))
        self.closed.listen(8)
        self.manifest = self.base / "manifest.yaml"
        self.manifest.write_text(MANIFEST.format(model=self.model_addr))
        os.chmod(self.manifest, 0o644)
        return self

    # The agent's interpreter: this venv's (its install tree is readable to the agent).
    python = sys.executable

    @property
    def model_addr(self) -> str:
        assert self.model is not None
        return f"{MODEL_HOST}:{self.model.server_address[1]}"

    @property
    def closed_addr(self) -> str:
        assert self.closed is not None
        return f"{MODEL_HOST}:{self.closed.getsockname()[1]}"

    def start(self) -> RunWorld:
        keyring = self.base / "keyring.cfg"
        self.server = ServerProcess(
            self.base,
            user=self.user,
            extra_args=[
                f"--QGuardApp.backends={json.dumps(BACKENDS)}",
                f"--QGuardApp.policy_data={POLICY!r}",
                "--QGuardApp.keyring_backend=keyrings.alt.file.PlaintextKeyring",
                "--QGuardApp.keyring_backend_options=" + json.dumps({"file_path": str(keyring)}),
                # A home workspace holds the person's ssh key: the scan before agent kernels
                # would refuse every kernel there (it names the file); here it only warns.
                *(["--QGuardApp.secret_scan=warn"] if self.workspace == self.home else []),
            ],
        )
        self.server.root = self.workspace
        self.server.start()
        return self

    def stop(self) -> None:
        if self.server is not None and self.server.proc is not None:
            self.server.stop()
        if self.model is not None:
            self.model.shutdown()
            self.model.server_close()
        if self.closed is not None:
            self.closed.close()
        shutil.rmtree(self.base, ignore_errors=True)
        shutil.rmtree(self.other, ignore_errors=True)

    # -- the person's side ---------------------------------------------------------------

    @property
    def runtime_dir(self) -> Path:
        return self.home / ".local/share/jupyter/runtime"

    def runtime_file(self) -> str:
        assert self.server is not None and self.server.proc is not None
        return str(self.runtime_dir / f"jpserver-{self.server.proc.pid}.json")

    def cli_env(self, **extra: str) -> dict[str, str]:
        """The person's environment, secrets in it included (none may reach the agent)."""
        assert self.server is not None
        env = self.server.env()
        env = {k: v for k, v in env.items() if not k.startswith(("QGUARD_", "PYTEST"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            LANG="C.UTF-8",
            TERM="dumb",
            TZ="UTC",
            AWS_SECRET_ACCESS_KEY=self.secret,
            QISKIT_IBM_TOKEN=self.secret,
            DBUS_SESSION_BUS_ADDRESS=f"unix:path=/run/user/{os.getuid()}/bus",
            SSH_AUTH_SOCK="/tmp/ssh-agent.sock",
            PYTHON_KEYRING_BACKEND="keyrings.alt.file.PlaintextKeyring",
        )
        env.pop("JUPYTER_TOKEN", None)
        env.pop("JUPYTER_URL", None)
        env.update(extra)
        return env

    def cli(self, *args: str, command: list[str]) -> list[str]:
        return [JUPYTER, "qguard", "agent", "run", *args, "--", *command]

    def as_person(self) -> dict[str, Any]:
        if self.user is None:
            return {}
        return {"user": self.user, "group": self.user, "extra_groups": []}

    def run(
        self, *args: str, command: list[str], timeout: float = 300, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        env = kwargs.pop("env", None) or self.cli_env()
        return subprocess.run(
            self.cli(*args, command=command),
            env=env,
            cwd=self.workspace,
            capture_output=True,
            timeout=timeout,
            **self.as_person(),
            **kwargs,
        )

    def popen(self, *args: str, command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        env = kwargs.pop("env", None) or self.cli_env()
        return subprocess.Popen(
            self.cli(*args, command=command),
            env=env,
            cwd=self.workspace,
            **self.as_person(),
            **kwargs,
        )

    def agent_config(self) -> str:
        return json.dumps(
            {
                "home": str(self.home),
                "runtime": str(self.runtime_dir),
                "runtime_file": self.runtime_file(),
                "model": self.model_addr,
                "closed": self.closed_addr,
                "other_file": str(self.other / "file"),
                "workspace": os.path.realpath(self.workspace),
                "run_route": "qguard/api/agent-runs/" + "0" * 32,
            }
        )
