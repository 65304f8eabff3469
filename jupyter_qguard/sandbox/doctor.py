"""`jupyter qguard doctor`: which sandbox layers this machine can give an agent kernel, and
plaintext credentials lying where agents (or anything else) could find them — by name only."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from .probe import probe_all
from .spec import DEFAULT_MINIMUM, LAYERS

# Names that hold a credential (narrower than what never reaches a kernel: AWS_CA_BUNDLE is a
# path, not a secret, yet it stays out of kernels all the same).
CREDENTIAL_NAME = re.compile(
    r".*(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL).*", re.I
)
CREDENTIAL_FILES = (
    "~/.qiskit/qiskit-ibm.json",
    "~/.qiskit/qiskitrc",
    "~/.aws/credentials",
    "~/.aws/config",
    "~/.azure/accessTokens.json",
    "~/.config/gcloud/application_default_credentials.json",
    "~/.netrc",
    "~/.pypirc",
)


def plaintext_credentials(environ: dict[str, str] | None = None) -> dict[str, list[str]]:
    environ = dict(os.environ if environ is None else environ)
    files = [p for p in CREDENTIAL_FILES if Path(os.path.expanduser(p)).is_file()]
    names = sorted(n for n, v in environ.items() if v and CREDENTIAL_NAME.fullmatch(n))
    return {"files": files, "environment": names}


def report(workspace: str | None = None, minimum: list[str] | None = None) -> dict[str, Any]:
    layers = probe_all(workspace)
    minimum = list(minimum or DEFAULT_MINIMUM)
    missing = [n for n in minimum if not layers.get(n, {}).get("available")]
    return {
        "layers": layers,
        "minimum": minimum,
        "agent_kernels_can_start": not missing,
        "missing": missing,
        "plaintext_credentials": plaintext_credentials(),
    }


def format_report(rep: dict[str, Any]) -> str:
    lines = ["qguard sandbox on this machine", ""]
    for name in LAYERS:
        info = rep["layers"].get(name, {})
        mark = "yes" if info.get("available") else ("n/a" if info.get("needed") is False else "NO ")
        req = "required" if name in rep["minimum"] else "optional"
        detail = (
            info.get("how")
            or info.get("why")
            or ", ".join(f"{k}={v}" for k, v in info.items() if k != "available")
        )
        lines.append(f"  {name:<11} {mark}  {req:<8}  {detail}")
    lines.append("")
    if rep["agent_kernels_can_start"]:
        lines.append("Agent kernels can start: the minimum isolation is available.")
    else:
        lines.append("Agent kernels will NOT start; missing: " + ", ".join(rep["missing"]))
    creds = rep["plaintext_credentials"]
    lines.append("")
    if creds["files"] or creds["environment"]:
        lines.append("Plaintext credentials found (names only; move them into the keyring):")
        lines += [f"  file: {f}" for f in creds["files"]]
        lines += [f"  environment: {n}" for n in creds["environment"]]
    else:
        lines.append("No plaintext credentials found in the usual places.")
    return "\n".join(lines)
