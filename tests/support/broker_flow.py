"""A real server and the fake cloud, driven the way a person and an agent drive them: shared by
the provider tests and the audit tests."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from jupyter_qguard.credentials import CredentialStore, backend_from_name
from support.fakecloud_proc import FakeCloud
from support.jupyter_proc import ServerProcess

KEYRING = "keyrings.alt.file.PlaintextKeyring"
BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "fake_brisbane": {"provider": "fakecloud", "qubits": 127, "snapshot": "fake_brisbane"},
}


def server_for(
    tmp_path: Path, cloud: FakeCloud, *extra: str, backends: dict | None = None
) -> ServerProcess:
    """A server whose keyring (a file, outside its state dir) holds the fake cloud's key."""
    keyring_file = tmp_path / "keyring" / "keyring.cfg"
    keyring_file.parent.mkdir(exist_ok=True)
    store = CredentialStore(backend_from_name(KEYRING, file_path=str(keyring_file)))
    if not store.has("fakecloud"):
        store.set("fakecloud", cloud.api_key)
    return ServerProcess(
        tmp_path,
        extra_args=[
            "--log-level=DEBUG",
            f"--QGuardApp.backends={json.dumps(backends or BACKENDS)}",
            f"--QGuardApp.keyring_backend={KEYRING}",
            f"--QGuardApp.keyring_backend_options={json.dumps({'file_path': str(keyring_file)})}",
            f"--FakeCloudProvider.url={cloud.url}",
            "--FakeCloudProvider.backoff_initial=0.1",
            "--FakeCloudProvider.max_attempts=3",
            *extra,
        ],
    )


async def until(server: ServerProcess, job_id: str, states: set[str], timeout: float = 120) -> dict:
    job: dict = {}
    for _ in range(int(timeout / 0.2)):
        job = await server.json(f"qguard/api/jobs/{job_id}")
        if job["state"] in states:
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} is {job.get('state')}, not one of {states}")


async def submit_and_approve(server: ServerProcess, kernel: Any, shots: int = 1000) -> dict:
    res = await kernel.run(
        f"job = %qguard submit bell --backend fake_brisbane --shots {shots} --seed 5\n"
        "print(job.job_id)"
    )
    assert res["error"] is None, res
    job_id = res["stdout"].strip().splitlines()[-1]
    job = await until(server, job_id, {"pending_approval"})
    r = await server.fetch(
        f"qguard/api/jobs/{job_id}/approve", method="POST", body={"digest": job["digest"]}
    )
    assert r.code == 200
    return job
