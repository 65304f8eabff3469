"""`make demo`: JupyterLab with the guard, a sample notebook and the embedded defaults.

State goes to the usual place (<jupyter data dir>/qguard, SQLite); the fake cloud, its state
and the demo's file keyring to <jupyter data dir>/qguard-demo; the workspace is a folder of its
own so the demo never touches the user's files.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import select
import signal
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

from ..credentials import CredentialStore, backend_from_name, store_key_file
from ..isolation import ISOLATED_CWD, isolated_command

DEMO_BACKENDS = {
    "aer_simulator": {
        "provider": "aer",
        "qubits": 28,
        "description": "Qiskit Aer on this machine; runs without approval.",
    },
    "fake_brisbane": {
        "provider": "fakecloud",
        "qubits": 127,
        "snapshot": "fake_brisbane",
        "description": "The loopback fake cloud's Brisbane (tier hardware: one approval).",
    },
    "fake_torino": {
        "provider": "fakecloud",
        "qubits": 133,
        "snapshot": "fake_torino",
        "description": "The fake cloud's Torino (tier premium: two approvers and MFA).",
    },
}
KEYRING = "keyrings.alt.file.PlaintextKeyring"


def start_fake_cloud(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The loopback fake cloud, with its own state and API key under `home`."""
    # Isolated, from "/": the demo's working directory is often the workspace, and `python -m`
    # would import from it first.
    proc = subprocess.Popen(
        isolated_command(
            "-m", "jupyter_qguard.fakecloud", "--port", "0", "--state-dir", str(home / "fakecloud")
        ),
        cwd=ISOLATED_CWD,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    if not ready:
        proc.kill()
        raise SystemExit("qguard demo: the fake cloud did not start within 120 s")
    info = json.loads(proc.stdout.readline())
    return proc, info["url"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jupyter_qguard.demo")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--workspace", default="demo-workspace")
    parser.add_argument("--no-browser", action="store_true")
    # Anything else (--IdentityProvider.token=..., ...) goes to JupyterLab as it is. Without
    # a token given (there, or in JUPYTER_TOKEN), the demo makes one.
    args, passthrough = parser.parse_known_args(argv)

    workspace = Path(args.workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    sample = workspace / "qguard-demo.ipynb"
    if not sample.exists():
        sample.write_bytes(files("jupyter_qguard.demo").joinpath("qguard-demo.ipynb").read_bytes())

    # The embedded defaults: the demo's own file keyring (outside the workspace, where agent
    # kernels cannot read), holding the fake cloud's key, so "hardware" works out of the box.
    home = Path(jupyter_data_dir()) / "qguard-demo"
    (home / "fakecloud").mkdir(parents=True, exist_ok=True)
    cloud, cloud_url = start_fake_cloud(home)
    keyring_options = {"file_path": str(home / "keyring.cfg")}
    store = CredentialStore(backend_from_name(KEYRING, **keyring_options))
    fingerprint = store_key_file(store, "fakecloud", home / "fakecloud" / "api_key")
    print(f"qguard demo: fake cloud at {cloud_url}, its key in the keyring ({fingerprint})")

    # JupyterLab isolated too (`-I`: its working directory, perhaps the workspace itself, is
    # not on its sys.path), as `jupyter lab` (a console script) would be: otherwise the server
    # would import what an agent left in the workspace at its next start.
    cmd = [
        *isolated_command("-m", "jupyterlab"),
        f"--ServerApp.root_dir={workspace}",
        f"--ServerApp.port={args.port}",
        "--ServerApp.ip=127.0.0.1",
        f"--QGuardApp.backends={json.dumps(DEMO_BACKENDS)}",
        f"--QGuardApp.keyring_backend={KEYRING}",
        f"--QGuardApp.keyring_backend_options={json.dumps(keyring_options)}",
        f"--FakeCloudProvider.url={cloud_url}",
        "--LabApp.default_url=/lab/tree/qguard-demo.ipynb",
        *passthrough,
    ]
    if args.no_browser or not (os.environ.get("DISPLAY") or sys.platform == "darwin"):
        cmd.append("--ServerApp.open_browser=False")
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    # The server's log shows no token (log_redaction.py), so the demo picks it and says the
    # URL itself; handed over in the environment, not argv, which any user's `ps` shows.
    env = dict(os.environ)
    given = any(a.startswith("--IdentityProvider.token") for a in passthrough)
    token = env.get("JUPYTER_TOKEN") or ("TOKEN" if given else secrets.token_hex(24))
    if not given:
        env["JUPYTER_TOKEN"] = token
    base = f"http://127.0.0.1:{args.port}"
    print("qguard demo: workspace", workspace)
    print(f"qguard demo: open {base}/lab/tree/qguard-demo.ipynb?token={token}")
    print("qguard demo: approve a pending job with:")
    print(f"  curl -H 'Authorization: token {token}' {base}/qguard/api/jobs?state=pending_approval")
    print(
        f"  curl -X POST -H 'Authorization: token {token}' -d '{{\"digest\": \"DIGEST\"}}' "
        f"{base}/qguard/api/jobs/JOB_ID/approve"
    )
    sys.stdout.flush()
    lab = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        lab.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        code = lab.wait()
    finally:
        cloud.terminate()
        try:
            cloud.wait(20)
        except subprocess.TimeoutExpired:
            cloud.kill()
    sys.exit(code)


if __name__ == "__main__":
    main()
