"""`make demo`: JupyterLab with the guard, a sample notebook and the embedded defaults.

State goes to the usual place (<jupyter data dir>/qguard, SQLite); the workspace is a folder
of its own so the demo never touches the user's files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib.resources import files
from pathlib import Path

DEMO_BACKENDS = {
    "aer_simulator": {
        "provider": "aer",
        "qubits": 28,
        "description": "Qiskit Aer on this machine; runs without approval.",
    },
    "aer_as_hardware": {
        "provider": "aer",
        "qubits": 28,
        "description": "Aer, treated as hardware so the demo shows the approval step.",
    },
}
# The policy pack decides tiers: give the stand-in the hardware tier (one approval, free).
DEMO_POLICY_DATA = {
    "backends": {
        "aer_as_hardware": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}}
    }
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jupyter_qguard.demo")
    parser.add_argument("--port", type=int, default=8888)
    parser.add_argument("--workspace", default="demo-workspace")
    parser.add_argument("--no-browser", action="store_true")
    # Anything else (--IdentityProvider.token=..., ...) goes to JupyterLab as it is.
    args, passthrough = parser.parse_known_args(argv)

    workspace = Path(args.workspace).resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    sample = workspace / "qguard-demo.ipynb"
    if not sample.exists():
        sample.write_bytes(files("jupyter_qguard.demo").joinpath("qguard-demo.ipynb").read_bytes())

    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        f"--ServerApp.root_dir={workspace}",
        f"--ServerApp.port={args.port}",
        "--ServerApp.ip=127.0.0.1",
        f"--QGuardApp.backends={json.dumps(DEMO_BACKENDS)}",
        f"--QGuardApp.policy_data={json.dumps(DEMO_POLICY_DATA)}",
        "--LabApp.default_url=/lab/tree/qguard-demo.ipynb",
        *passthrough,
    ]
    if args.no_browser or not (os.environ.get("DISPLAY") or sys.platform == "darwin"):
        cmd.append("--ServerApp.open_browser=False")
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    print("qguard demo: workspace", workspace)
    print("qguard demo: approve a pending job with (token from the URL below):")
    print(
        f"  curl -H 'Authorization: token TOKEN' http://127.0.0.1:{args.port}/qguard/api/jobs"
        "?state=pending_approval"
    )
    print(
        "  curl -X POST -H 'Authorization: token TOKEN' -d '{\"digest\": \"DIGEST\"}' "
        f"http://127.0.0.1:{args.port}/qguard/api/jobs/JOB_ID/approve"
    )
    sys.stdout.flush()
    os.execv(sys.executable, cmd)


if __name__ == "__main__":
    main()
