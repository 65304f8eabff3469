"""The real MCP clients, as an agent's desktop runs them: jupyter-mcp-server started over stdio
and driven by the `mcp` SDK's client (tests/support/mcp_driver.py), both from a venv of their
own (tests/mcp/requirements.txt, pinned), made on first use or by `make test`
(`python tests/support/mcp_client.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "tests" / "mcp" / "requirements.txt"
DRIVER = Path(__file__).resolve().parent / "mcp_driver.py"
VENV = Path(os.environ.get("QGUARD_MCP_VENV", ROOT / ".venv-mcp"))
STAMP = "qguard-requirements.sha256"


def mcp_venv() -> Path:
    """The clients' venv, (re)made when missing or when the pinned requirements changed."""
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / STAMP
    if stamp.is_file() and stamp.read_text().strip() == want and server_command().exists():
        return VENV
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(want + "\n")
    # The unprivileged test user runs these clients too.
    for d in (VENV, *VENV.parents):
        mode = os.stat(d).st_mode
        if not mode & 0o001:
            try:
                os.chmod(d, mode | 0o001)
            except PermissionError:  # not ours: the test user's setup says if it matters
                pass
    return VENV


def server_command() -> Path:
    return VENV / "bin" / "jupyter-mcp-server"


def stdio_command() -> list[str]:
    """jupyter-mcp-server as an MCP client's configuration starts it."""
    return [str(server_command()), "start", "--transport", "stdio"]


def run(
    url: str,
    token: str,
    calls: list[tuple[str, dict[str, Any]]],
    *,
    repeat: tuple[str, dict[str, Any], int] | None = None,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    timeout: float = 900,
) -> dict[str, Any]:
    """Start jupyter-mcp-server (over stdio, its default setup: JUPYTER_URL and JUPYTER_TOKEN)
    and call `calls` in order; its answers, the tool list, and its stderr. With `command`
    (jupyter-mcp-server wrapped in `jupyter qguard agent run`, say), `env` is its whole
    environment and `url`/`token` are not used."""
    base = mcp_venv()
    with tempfile.TemporaryDirectory(prefix="qguard-mcp-") as home:
        os.chmod(home, 0o755)  # the driver's script, read by whoever the command runs as
        if command is None:
            server_env = {
                "PATH": f"{base / 'bin'}:/usr/bin:/bin",
                "HOME": home,
                "JUPYTER_URL": url,
                "JUPYTER_TOKEN": token,
                **(env or {}),
            }
        else:
            server_env = dict(env or {})
        cmd = command or stdio_command()
        script = {
            "command": cmd[0],
            "args": cmd[1:],
            "env": server_env,
            "calls": [list(c) for c in calls],
            "repeat": list(repeat) if repeat else None,
        }
        path = Path(home) / "script.json"
        path.write_text(json.dumps(script))
        done = subprocess.run(
            [str(base / "bin" / "python"), str(DRIVER), str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=home,
        )
    if done.returncode != 0 or not done.stdout.strip():
        raise AssertionError(f"the MCP driver failed ({done.returncode}): {done.stderr[-4000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["stderr"] = done.stderr
    return out


def texts(answer: dict[str, Any]) -> str:
    return "\n".join(answer.get("texts", []))


if __name__ == "__main__":
    print(mcp_venv(), file=sys.stderr)
