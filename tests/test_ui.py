"""Browser tests of the approval panel (`ui-tests/`, Playwright with Debian's chromium), against a
real server with the guard, real agent kernels and the built lab extension.

Set-up is part of the test, as in CI: chromium is installed with apt-get when it is missing (as
root), the test runner with `npm ci` from ui-tests/package-lock.json (no browser download)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
from support.jupyter_proc import ServerProcess

UI = Path(__file__).resolve().parents[1] / "ui-tests"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = UI / "artifacts"
BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "aer_hw": {"provider": "aer", "qubits": 28},
}
POLICY = {
    "backends": {"aer_hw": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}}}
}
APPROVE_CELL = """\
from qiskit import QuantumCircuit
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
job = %qguard submit bell --backend aer_hw --shots 200 --seed 3
print("job", job.job_id)
counts = job.result()
print("counts", dict(sorted(counts.items())))
"""


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    assert os.geteuid() == 0, f"{CHROMIUM} is missing: install Debian's chromium (as root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, env=env).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(install, check=True, env=env)


def ensure_runner() -> None:
    if (UI / "node_modules" / ".bin" / "playwright").exists():
        return
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=UI, check=True, env=env)


def agent_notebook(path: Path, source: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "qguard-agent",
        "display_name": "Python 3 (qguard agent)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)


def test_the_panel_in_a_real_browser(tmp_path):
    ensure_chromium()
    ensure_runner()
    server = ServerProcess(
        tmp_path,
        extra_args=[
            f"--QGuardApp.backends={json.dumps(BACKENDS)}",
            f"--QGuardApp.policy_data={json.dumps(POLICY)}",
            "--QGuardApp.keyring_backend=keyrings.alt.file.PlaintextKeyring",
            "--QGuardApp.keyring_backend_options="
            + json.dumps({"file_path": str(tmp_path / "keyring.cfg")}),
        ],
    )
    server.root.mkdir(parents=True)
    agent_notebook(server.root / "approve.ipynb", APPROVE_CELL)
    for name in ("deny", "dark"):
        agent_notebook(server.root / f"{name}.ipynb", APPROVE_CELL)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    server.start()
    try:
        res = subprocess.run(
            [str(UI / "node_modules" / ".bin" / "playwright"), "test"],
            cwd=UI,
            env={
                **os.environ,
                "QGUARD_URL": server.url,
                "QGUARD_TOKEN": server.token,
                "QGUARD_ARTIFACTS": str(ARTIFACTS),
                "QGUARD_CHROMIUM": CHROMIUM,
            },
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        server.stop()
    sys.stdout.write(res.stdout[-6000:])
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    for theme in ("light", "dark"):
        assert (ARTIFACTS / f"panel-pending-{theme}.png").stat().st_size > 10_000
