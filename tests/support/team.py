"""Team mode for tests: the broker service's config, a hub that runs it on a real PostgreSQL
with the fake cloud's key in the service's keyring, and the calls the tests make through the
hub's proxy (users' servers, agent kernels, the service's API)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pyotp
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_qguard import credentials as cr
from support.fakecloud_proc import FakeCloud
from support.hub import Hub
from support.jupyter_proc import KernelWS, environments

KEYRING = "keyrings.alt.file.PlaintextKeyring"
REQUEST, APPROVE = "custom:qguard:request", "custom:qguard:approve"
SERVICE = "access:services!service=qguard"
BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "fake_brisbane": {"provider": "fakecloud", "qubits": 127},
    "fake_torino": {"provider": "fakecloud", "qubits": 133},
}
POLICY = {
    "backends": {
        "fake_brisbane": {
            "tier": "hardware",
            "provider": "fakecloud",
            "price": {"model": "per_shot", "per_task": 1.0, "per_shot": 0.0, "currency": "USD"},
        },
        "fake_torino": {
            "tier": "premium",
            "provider": "fakecloud",
            "price": {"model": "per_shot", "per_task": 2.0, "per_shot": 0.0, "currency": "USD"},
        },
    },
    # physics (alice, bob) may spend 3.5 a day together; each person 200 on their own.
    "limits": {"daily_budget_per_group": {"physics": 3.5}},
}
BROKER_CONFIG = """\
c = get_config()  # noqa: F821
c.QGuardApp.state_dir = {state!r}
c.QGuardApp.db_url = {db!r}
c.QGuardApp.keyring_backend = {keyring_backend!r}
c.QGuardApp.keyring_backend_options = {{"file_path": {keyring!r}}}
c.QGuardApp.backends = {backends!r}
c.QGuardApp.policy_data = {policy!r}
c.FakeCloudProvider.url = {cloud!r}
c.FakeCloudProvider.backoff_initial = 0.1
c.QGuardBrokerService.log_level = "DEBUG"
"""
BELL = """\
from qiskit import QuantumCircuit
from jupyter_qguard.kernel.jobs import submit
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
"""


def enroll(keyring: Path, user: str) -> pyotp.TOTP:
    """TOTP for `user` in the service's keyring, as `jupyter qguard mfa enroll --user` does."""
    store = cr.CredentialStore(cr.backend_from_name(KEYRING, file_path=str(keyring)))
    out = io.StringIO()
    assert cr.cli_mfa_enroll(store, user, qr=False, out=out) == 0
    [uri] = [line for line in out.getvalue().splitlines() if line.startswith("otpauth://")]
    return pyotp.parse_uri(uri)


def body(r: Any) -> Any:
    return json.loads(r.body)


async def service_ready(hub: Hub, token: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await hub.fetch(hub.service_url + "api/me", token=token)
        if r.code == 200:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"the qguard service did not answer: {hub.log_path.read_text()[-4000:]}")


async def agent_kernel(hub: Hub, user: str, token: str, notebook: str) -> KernelWS:
    """A qguard-agent kernel in `user`'s server, started and driven through the hub's proxy,
    for a notebook saved there first (its hash is bound to the requests)."""
    nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}
    r = await hub.fetch(
        f"user/{user}/api/contents/{notebook}",
        token=token,
        method="PUT",
        body={"type": "notebook", "format": "json", "content": nb},
    )
    assert r.code in (200, 201), (r.code, r.body)
    r = await hub.fetch(
        f"user/{user}/api/sessions",
        token=token,
        method="POST",
        body={
            "path": notebook,
            "type": "notebook",
            "name": notebook,
            "kernel": {"name": "qguard-agent"},
        },
    )
    assert r.code == 201, (r.code, r.body)
    kernel_id = body(r)["kernel"]["id"]
    ws = await websocket_connect(
        HTTPRequest(
            _ws(hub, f"user/{user}/api/kernels/{kernel_id}/channels"),
            headers={"Authorization": f"token {token}"},
        )
    )
    k = KernelWS(kernel_id, ws)
    await k.wait_ready()
    return k


def _ws(hub: Hub, path: str) -> str:
    return hub.url.replace("http://", "ws://") + "/" + path


async def job_of(hub: Hub, token: str, job_id: str) -> dict[str, Any]:
    r = await hub.fetch(hub.service_url + f"api/jobs/{job_id}", token=token)
    assert r.code == 200, (r.code, r.body)
    return body(r)


async def until(hub: Hub, token: str, job_id: str, states: set[str], timeout: float = 180) -> dict:
    job: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await hub.fetch(hub.service_url + f"api/jobs/{job_id}", token=token, timeout=20)
        if r.code == 200:
            job = body(r)
            if job["state"] in states:
                return job
        await asyncio.sleep(0.3)
    raise AssertionError(f"job {job_id} is {job.get('state')}, not in {states}")


async def approve(hub: Hub, token: str, job: dict[str, Any], otp: str | None = None) -> Any:
    payload: dict[str, Any] = {"digest": job["digest"]}
    if otp is not None:
        payload["otp"] = otp
    return await hub.fetch(
        hub.service_url + f"api/jobs/{job['id']}/approve", token=token, method="POST", body=payload
    )


def service_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"broker" in cmd and b"--hub" in cmd:
            pids.append(int(entry))
    return pids


def server_hub_token(user: str) -> str:
    """The hub token of `user`'s running server, read from its environment the way anything
    running in that server can (an in-server agent's shell tool): JUPYTERHUB_API_TOKEN."""
    for _, raw in environments():
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        if env.get(b"JUPYTERHUB_USER") == user.encode() and b"QGUARD_KERNEL_ID" not in env:
            token = env.get(b"JUPYTERHUB_API_TOKEN")
            if token:
                return token.decode()
    raise AssertionError(f"no running server of {user} with a hub token")


def processes_under(base: Path) -> list[int]:
    """Users' servers and their kernels: processes whose HOME is a user's home under `base`."""
    return [
        pid
        for pid, env in environments()
        if any(f"HOME={base}/{u}".encode() in env for u in ("alice", "bob"))
        or b"QGUARD_KERNEL_ID=" in env
    ]


def start_team(base: Path, database_url: str) -> tuple[Hub, FakeCloud, Path]:
    """The fake cloud, its key in the service's keyring, the broker's config, and the hub that
    runs the broker; stop them with stop_team()."""
    cloud_dir = base / "cloud"
    cloud_dir.mkdir(parents=True)
    cloud = FakeCloud(cloud_dir).start()
    keyring = base / "qguard-service" / "keyring.cfg"
    keyring.parent.mkdir(parents=True)
    store = cr.CredentialStore(cr.backend_from_name(KEYRING, file_path=str(keyring)))
    store.set("fakecloud", cloud.api_key)
    config = base / "broker_config.py"
    config.write_text(
        BROKER_CONFIG.format(
            state=str(base / "qguard-service" / "state"),
            db=database_url,
            keyring_backend=KEYRING,
            keyring=str(keyring),
            backends=BACKENDS,
            policy=POLICY,
            cloud=cloud.url,
        )
    )
    try:
        hub = Hub(base, team_config=config).start()
    except Exception:
        cloud.stop()
        raise
    return hub, cloud, keyring
