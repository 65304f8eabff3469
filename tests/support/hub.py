"""A real JupyterHub for the team-mode tests: JupyterHub from PyPI, configurable-http-proxy from
npm (installed into tests/.hub-proxy by the test setup when missing), local-process spawning,
users alice, bob, carol and dave, groups `approvers` (alice, bob, carol) and `physics` (alice,
bob), qguard's custom scopes and roles; with `team=`, qguard's broker as a managed service.
Listens on 127.0.0.1 only; a service token lets the test drive the hub's REST API."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from support.jupyter_proc import free_port
from support.one_at_a_time import installing

PROXY_DIR = Path(__file__).resolve().parents[1] / ".hub-proxy"
PROXY_VERSION = "5.3.0"

CONFIG = """\
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{base}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{base}/cookie_secret"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {{"alice", "bob", "carol", "dave"}}
# Every user's server runs as this process's user, in /tmp/<base>/<name>, its notebooks in
# workspace/ (so the server's state under the home directory is outside its root).
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{base}/{{username}}"
c.Spawner.notebook_dir = "{base}/{{username}}/workspace"


def _make_workspace(spawner):
    import json
    import os

    home = f"{base}/{{spawner.user.name}}"
    os.makedirs(f"{{home}}/workspace", exist_ok=True)
    # The user's own server settings (a file keyring for its local audit key), in the place
    # a user keeps them: ~/.jupyter.
    os.makedirs(f"{{home}}/.jupyter", exist_ok=True)
    with open(f"{{home}}/.jupyter/jupyter_server_config.json", "w") as f:
        json.dump(
            {{
                "QGuardApp": {{
                    "keyring_backend": "keyrings.alt.file.PlaintextKeyring",
                    "keyring_backend_options": {{"file_path": f"{{home}}/keyring.cfg"}},
                }},
                # jupyter-collaboration is installed for the MCP tests; the team tests run
                # without its rooms, as before.
                "ServerApp": {{
                    "jpserver_extensions": {{
                        "jupyter_server_ydoc": False,
                        "jupyter_server_fileid": False,
                    }}
                }},
            }},
            f,
        )
    # ... and its lab side, or the lab opens notebooks read-only, waiting for rooms.
    os.makedirs(f"{{home}}/.jupyter/labconfig", exist_ok=True)
    with open(f"{{home}}/.jupyter/labconfig/page_config.json", "w") as f:
        off = ["@jupyter/collaboration-extension", "@jupyter/docprovider-extension"]
        json.dump({{"disabledExtensions": dict.fromkeys(off, True)}}, f)


c.Spawner.pre_spawn_hook = _make_workspace
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {args!r}
c.JupyterHub.custom_scopes = {{
    "custom:qguard:request": {{"description": "Ask the qguard broker to run quantum jobs."}},
    "custom:qguard:approve": {{"description": "Approve or deny quantum jobs of the team."}},
    "custom:qguard:admin": {{"description": "Administer the qguard broker."}},
    "custom:qguard:review": {{"description": "Read the team's queue of quantum jobs."}},
}}
c.JupyterHub.load_groups = {{
    "approvers": {{"users": ["alice", "bob", "carol"]}},
    "physics": {{"users": ["alice", "bob"]}},
}}
c.JupyterHub.load_roles = [
    {{"name": "user", "scopes": ["self", "custom:qguard:request"]}},
    {{
        "name": "qguard-approvers",
        "groups": ["approvers"],
        "scopes": ["custom:qguard:approve", "custom:qguard:review"],
    }},
    {{
        "name": "qguard-test",
        "scopes": ["admin:users", "admin:servers", "tokens", "read:users", "groups"],
        "services": ["qguard-test"],
    }},
]
c.JupyterHub.services = [{{"name": "qguard-test", "api_token": {service_token!r}}}]
c.Spawner.server_token_scopes = [
    "access:servers!user",
    "users:activity!user",
    "custom:qguard:request",
]
c.JupyterHub.cleanup_servers = True
"""

# qguard's broker as a hub-managed service (team mode), and what users' servers need for it.
TEAM_CONFIG = """
c.JupyterHub.load_roles[0]["scopes"].append("access:services!service=qguard")
c.JupyterHub.load_roles.append(
    {{
        "name": "qguard-service",
        "scopes": ["read:users:name", "read:users:groups", "read:groups"],
        "services": ["qguard"],
    }}
)
c.JupyterHub.load_roles.append(
    {{"name": "qguard-admins", "users": ["carol"], "scopes": ["custom:qguard:admin"]}}
)
c.JupyterHub.services.append(
    {{
        "name": "qguard",
        "url": "http://127.0.0.1:{service_port}",
        "command": {command!r},
        "environment": {{"HOME": "{base}/qguard-service"}},
        # A service the admin set up: no consent page when people sign in to it.
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": [
            "custom:qguard:request",
            "custom:qguard:approve",
            "custom:qguard:admin",
        ],
    }}
)
# Approvers' servers show the team queue in the panel: their token carries the review scope
# (the hub gives a server only scopes its owner holds), which reads and never decides.
c.Spawner.server_token_scopes += ["access:services!service=qguard", "custom:qguard:review"]
c.Spawner.environment = {{
    "QGUARD_TEAM_BROKER_URL": "http://127.0.0.1:{service_port}/services/qguard/"
}}
"""


def ensure_proxy() -> str:
    """configurable-http-proxy from npm, into tests/.hub-proxy (kept between runs)."""
    binary = PROXY_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
    if binary.exists():
        return str(binary)
    with installing("hub-proxy-npm"):
        if binary.exists():  # the other worker installed it while this one waited
            return str(binary)
        PROXY_DIR.mkdir(exist_ok=True)
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(PROXY_DIR),
                f"configurable-http-proxy@{PROXY_VERSION}",
            ],
            check=True,
            timeout=600,
        )
    return str(binary)


class Hub:
    def __init__(self, base: Path, *, team_config: Path | None = None) -> None:
        """`team_config`: the broker service's config file; the hub then runs the broker."""
        self.base = base
        self.team_config = team_config
        self.service_port = free_port()
        self.port = free_port()
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self.service_token = secrets.token_hex(32)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "hub.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> Hub:
        self.base.mkdir(parents=True, exist_ok=True)
        bindir = Path(sys.executable).parent
        args = ["--allow-root"] if os.geteuid() == 0 else []
        config = CONFIG.format(
            port=self.port,
            hub_port=self.hub_port,
            proxy_api_port=self.proxy_api_port,
            proxy=ensure_proxy(),
            base=self.base,
            singleuser=str(bindir / "jupyterhub-singleuser"),
            args=args,
            service_token=self.service_token,
        )
        if self.team_config is not None:
            config += TEAM_CONFIG.format(
                base=self.base,
                service_port=self.service_port,
                command=[
                    str(bindir / "jupyter"),
                    "qguard",
                    "broker",
                    "--hub",
                    f"--config={self.team_config}",
                ],
            )
        (self.base / "jupyterhub_config.py").write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "JPY_"))}
        env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(bindir / "jupyterhub"), "-f", str(self.base / "jupyterhub_config.py")],
            cwd=self.base,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited: {self.log_path.read_text()[-3000:]}")
            if "JupyterHub is now running" in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.2)
        raise TimeoutError(f"jupyterhub did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # The hub stops the servers it spawned (cleanup_servers) and its proxy on SIGTERM.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._log.close()

    @property
    def service_url(self) -> str:
        """The broker service, as people reach it (through the hub's proxy)."""
        return f"{self.url}/services/qguard/"

    async def spawn(self, user: str, timeout: float = 120) -> None:
        """Start `user`'s server through the hub's REST API and wait until it is ready."""
        import asyncio

        r = await self.api(f"users/{user}/server", method="POST")
        assert r.code in (201, 202), r.body
        for _ in range(int(timeout / 0.5)):
            model = json.loads((await self.api(f"users/{user}")).body)
            if model["servers"].get("", {}).get("ready"):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(self.log_path.read_text()[-4000:])

    async def token(self, user: str, *scopes: str) -> str:
        r = await self.api(f"users/{user}/tokens", method="POST", body={"scopes": list(scopes)})
        assert r.code == 201, r.body
        return json.loads(r.body)["token"]

    async def fetch(
        self, url: str, *, token: str, method: str = "GET", body: Any = None, **kw: Any
    ) -> HTTPResponse:
        """A request through the proxy, as `token`'s owner."""
        request = HTTPRequest(
            url if url.startswith("http") else f"{self.url}/{url.lstrip('/')}",
            method=method,
            body=None if body is None else (body if isinstance(body, str) else json.dumps(body)),
            headers={"Authorization": f"token {token}", **kw.pop("headers", {})},
            allow_nonstandard_methods=True,
            follow_redirects=False,
            request_timeout=kw.pop("timeout", 120),
        )
        return await AsyncHTTPClient().fetch(request, raise_error=False)

    async def api(
        self, path: str, *, method: str = "GET", body: Any = None, token: str | None = None
    ) -> HTTPResponse:
        request = HTTPRequest(
            f"{self.url}/hub/api/{path}",
            method=method,
            body=None if body is None else json.dumps(body),
            headers={"Authorization": f"token {token or self.service_token}"},
            allow_nonstandard_methods=True,
            request_timeout=60,
        )
        return await AsyncHTTPClient().fetch(request, raise_error=False)
