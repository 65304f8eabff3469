"""`python -m jupyter_qguard.fakecloud` (and `jupyter qguard fakecloud`): run the fake cloud."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp, base_aliases
from jupyter_core.paths import jupyter_data_dir
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets import Float, Int, TraitError, Unicode, validate

from .._version import __version__

LOOPBACK = "127.0.0.1"
# How long a stop waits for open requests (long polls among them) before closing them.
SHUTDOWN_GRACE_SECONDS = 2.0


def read_or_create_key(path: Path) -> str:
    """The key in `path`; a new random one (written 0600, never printed) if there is none."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # Another process made it first: use theirs.
        else:
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            return key
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"the key file {path} is empty")
    return key


class FakeCloudCommand(JupyterApp):
    name = "jupyter-qguard-fakecloud"
    version = __version__
    description = (
        "Run the fake quantum cloud on 127.0.0.1: a stand-in for a provider's API (tokens, "
        "idempotent jobs, noisy simulations of FakeBrisbane/FakeTorino, prices, usage, "
        "injectable faults). Prints one JSON line with its URL when it listens."
    )

    port = Int(0, help="TCP port on 127.0.0.1 (0: a free one, printed on start).").tag(config=True)
    ip = Unicode(LOOPBACK, help="Listening address: 127.0.0.1 only.").tag(config=True)
    api_key_file = Unicode(
        "",
        help="File holding the API key (created with a new random key if missing). Default: "
        "<state_dir>/api_key, or <jupyter data dir>/qguard/fakecloud/api_key.",
    ).tag(config=True)
    admin_key_file = Unicode(
        "",
        help="File holding the admin key (created if missing). Empty: no admin API (404).",
    ).tag(config=True)
    state_dir = Unicode(
        "", help="Keep jobs and usage here across restarts (empty: in memory only)."
    ).tag(config=True)
    token_ttl = Float(
        60.0, help="Lifetime of access tokens, in seconds (default and maximum)."
    ).tag(config=True)
    workers = Int(2, help="Simulator worker processes.").tag(config=True)
    record_tokens = Unicode(
        "",
        help="Tests only: append every access token issued to this file, so a test can check "
        "that none of them reached the broker's state, its log or an agent kernel.",
    ).tag(config=True)

    aliases = {
        **base_aliases,
        "port": "FakeCloudCommand.port",
        "api-key-file": "FakeCloudCommand.api_key_file",
        "admin-key-file": "FakeCloudCommand.admin_key_file",
        "state-dir": "FakeCloudCommand.state_dir",
        "token-ttl": "FakeCloudCommand.token_ttl",
        "workers": "FakeCloudCommand.workers",
        "record-tokens": "FakeCloudCommand.record_tokens",
    }

    @validate("ip")
    def _loopback_only(self, proposal: Any) -> str:
        # A provider stand-in with a test admin API must never be reachable from elsewhere.
        if proposal["value"] != LOOPBACK:
            raise TraitError(f"the fake cloud listens on {LOOPBACK} only")
        return proposal["value"]

    @validate("port")
    def _valid_port(self, proposal: Any) -> int:
        if not 0 <= proposal["value"] <= 65535:
            raise TraitError("port must be from 0 to 65535")
        return proposal["value"]

    @validate("token_ttl")
    def _positive_ttl(self, proposal: Any) -> float:
        if not proposal["value"] > 0:
            raise TraitError("token_ttl must be more than 0 seconds")
        return proposal["value"]

    @validate("workers")
    def _some_workers(self, proposal: Any) -> int:
        if proposal["value"] < 1:
            raise TraitError("workers must be 1 or more")
        return proposal["value"]

    def key_path(self) -> Path:
        if self.api_key_file:
            return Path(self.api_key_file)
        if self.state_dir:
            return Path(self.state_dir) / "api_key"
        return Path(jupyter_data_dir()) / "qguard" / "fakecloud" / "api_key"

    def start(self) -> None:
        try:
            api_key = read_or_create_key(self.key_path())
            admin_key = (
                read_or_create_key(Path(self.admin_key_file)) if self.admin_key_file else None
            )
        except (OSError, ValueError) as exc:
            self.log.error("cannot read the keys: %s", exc)
            self.exit(1)
        asyncio.run(self.serve(api_key, admin_key))

    async def serve(self, api_key: str, admin_key: str | None) -> None:
        from .jobs import Cloud
        from .server import MAX_BODY_BYTES, make_app

        cloud = Cloud(
            api_key=api_key,
            admin_key=admin_key,
            token_ttl=self.token_ttl,
            workers=self.workers,
            state_dir=self.state_dir or None,
            log=self.log,
            record_tokens=self.record_tokens or None,
        )
        await cloud.start()
        sockets = bind_sockets(self.port, address=self.ip)
        server = HTTPServer(make_app(cloud, self.log), max_body_size=MAX_BODY_BYTES)
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        sys.stdout.write(
            json.dumps(
                {
                    "url": f"http://{LOOPBACK}:{port}",
                    "pid": os.getpid(),
                    "api_key_file": str(self.key_path()),
                }
            )
            + "\n"
        )
        sys.stdout.flush()
        self.log.info("fake cloud listening on http://%s:%d", LOOPBACK, port)

        await stop.wait()
        self.log.info("stopping")
        server.stop()
        try:
            await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE_SECONDS)
        except TimeoutError:
            pass
        await cloud.stop()


def main(argv: list[str] | None = None) -> None:
    FakeCloudCommand.launch_instance(argv=argv)
