"""Shared fixtures: a real Jupyter server (pytest-jupyter) with jupyter_qguard loaded, and real
agent kernels started by that server through the real `qguard` provisioner."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

pytest_plugins = ["pytest_jupyter.jupyter_server"]

INSTALLED_KERNELSPEC = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "qguard-agent"

TEST_BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "aer_hw": {"provider": "aer", "qubits": 28},
}
# Aer standing in for hardware: the policy pack gives it the hardware tier (one approval).
TEST_POLICY_DATA = {
    "backends": {"aer_hw": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}}}
}


# `make test` runs the suite in two xdist workers (--dist loadgroup): much of a test's time is
# spent waiting on kernels, servers and browsers, and a second worker fills it (the suite took
# ~35 min in one process on 2 cores). Each test file goes to one worker whole, so its
# module-scoped worlds start once; files that share a session-scoped world are one group.
SHARED_WORLDS = {
    # both read the escape suite's probe results (escape/conftest.py: escape_results)
    "test_escape.py": "escape-probes",
    "test_kernel_workspace.py": "escape-probes",
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = SHARED_WORLDS.get(item.path.name, item.nodeid.split("::")[0])
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture
def qguard_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Overrides of QGuardApp settings: parametrize it (indirect=True) to change them."""
    return dict(getattr(request, "param", {}))


SERVER_APP_CONFIG = json.loads(
    (Path(__file__).resolve().parents[1] / "jupyter-config" / "jupyter_server_config.d")
    .joinpath("jupyter_qguard.json")
    .read_text()
)["ServerApp"]


@pytest.fixture
def jp_server_config(tmp_path: Path, qguard_config: dict[str, Any]) -> Config:
    return Config(
        {
            # What `pip install` puts in etc/jupyter (the extension enabled).
            "ServerApp": SERVER_APP_CONFIG,
            "QGuardApp": {
                "state_dir": str(tmp_path / "qguard-state"),
                # A real keyring backend (a file): the audit signing key and TOTP secrets.
                "keyring_backend": "keyrings.alt.file.PlaintextKeyring",
                "keyring_backend_options": {"file_path": str(tmp_path / "keyring.cfg")},
                "backends": TEST_BACKENDS,
                "policy_data": TEST_POLICY_DATA,
                **qguard_config,
            },
        }
    )


@pytest.fixture(autouse=True)
def qguard_kernelspec(jp_kernel_dir: Path) -> Path:
    """pytest-jupyter isolates the Jupyter paths; put the kernelspec that `pip install .`
    installed into the isolated data dir (which also checks that it was installed)."""
    assert (INSTALLED_KERNELSPEC / "kernel.json").is_file(), (
        "pip install . did not install the kernelspec"
    )
    dest = jp_kernel_dir / "qguard-agent"
    shutil.copytree(INSTALLED_KERNELSPEC, dest)
    return dest


@pytest.fixture
def broker(jp_serverapp: Any, jp_asyncio_loop: Any) -> Any:
    """The running broker. pytest-jupyter never runs the server's post-start hooks, so start
    the extension here, as `jupyter server` does once its loop runs."""
    jp_asyncio_loop.run_until_complete(
        jp_serverapp.extension_manager.start_extension("jupyter_qguard")
    )
    return jp_serverapp.web_app.settings["qguard_broker"]


class Kernel:
    """A kernel started by the server, driven with jupyter_client's async client."""

    def __init__(self, server: Any, kernel_id: str) -> None:
        self.server, self.id = server, kernel_id
        self.manager = server.kernel_manager.get_kernel(kernel_id)
        self.client = self.manager.client()

    async def start(self) -> Kernel:
        self.client.start_channels()
        await self.client.wait_for_ready(timeout=90)
        return self

    async def run(self, code: str, timeout: float = 120) -> dict[str, Any]:
        """Execute a cell; return status, stdout, stderr, results (text/plain) and error."""
        out: dict[str, Any] = {
            "stdout": "",
            "stderr": "",
            "results": [],
            "displays": [],
            "error": None,
        }

        def hook(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "execute_result":
                out["results"].append(content["data"].get("text/plain", ""))
            elif kind in ("display_data", "update_display_data"):
                out["displays"].append(content["data"].get("text/plain", ""))
            elif kind == "error":
                out["error"] = {"ename": content["ename"], "evalue": content["evalue"]}

        reply = await self.client.execute_interactive(
            code, output_hook=hook, timeout=timeout, allow_stdin=False
        )
        out["status"] = reply["content"]["status"]
        return out

    async def value(self, expr: str) -> Any:
        """Evaluate an expression in the kernel and return it, JSON-decoded."""
        res = await self.run(f"import json as _j; print(_j.dumps({expr}))")
        assert res["error"] is None, res
        return json.loads(res["stdout"].strip().splitlines()[-1])

    def stop(self) -> None:
        self.client.stop_channels()


@pytest.fixture
def start_kernel(jp_fetch: Any, jp_serverapp: Any, broker: Any) -> Any:
    kernels: list[Kernel] = []

    async def start(name: str = "qguard-agent", path: str | None = None) -> Kernel:
        if path is None:
            r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": name}))
            kernel_id = json.loads(r.body)["id"]
        else:
            body = {"path": path, "type": "notebook", "name": path, "kernel": {"name": name}}
            r = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
            kernel_id = json.loads(r.body)["kernel"]["id"]
        kernel = await Kernel(jp_serverapp, kernel_id).start()
        kernels.append(kernel)
        return kernel

    yield start
    for k in kernels:
        k.stop()


@pytest.fixture(scope="session")
def postgres() -> Any:
    """One real PostgreSQL cluster for the session (tests/support/postgres.py)."""
    import tempfile

    from support.postgres import PostgresCluster

    # Under /tmp itself: the cluster's account must be able to reach its directory.
    base = Path(tempfile.mkdtemp(prefix="qguard-pg-"))
    cluster = PostgresCluster(base).start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind the store supports: the same code runs on both."""
    if request.param == "sqlite":
        from jupyter_qguard.broker.store import sqlite_url

        return sqlite_url(str(tmp_path / "q.db"))
    return request.getfixturevalue("postgres").new_database()
