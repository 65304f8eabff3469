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


# What an agent kernel may do to the workspace that the person's own tools later touch, and
# which layer says no (the rest of the workspace stays the agent's to write).
WORKSPACE_RULES = {
    "interpreter": "started with -I outside the workspace; enters the notebook's folder only "
    "once confined; bytecode goes to the kernel's own directory (sys.pycache_prefix)",
    "symlinks": "refused (seccomp: symlink, symlinkat give EPERM); hard links stay",
    "setuid_setgid": "refused (seccomp: chmod/open/creat/mknod with S_ISUID or S_ISGID give "
    "EPERM); the workspace is mounted nosuid,nodev for the kernel",
    "git": "every .git at any depth (and what a gitdir: file or commondir names) read-only, "
    "and fixed in place with its folders up to the workspace root (needs namespaces); a new "
    ".git elsewhere is flagged by the watcher",
    "manifest": "an agent token's write scopes are the kernel's Landlock write rules; its "
    "denied files are hidden at start (needs namespaces, else the kernel does not start)",
}


def report(workspace: str | None = None, minimum: list[str] | None = None) -> dict[str, Any]:
    layers = probe_all(workspace)
    minimum = list(minimum or DEFAULT_MINIMUM)
    missing = [n for n in minimum if not layers.get(n, {}).get("available")]
    return {
        "layers": layers,
        "minimum": minimum,
        "agent_kernels_can_start": not missing,
        "missing": missing,
        "workspace_rules": dict(WORKSPACE_RULES),
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
    cgroup = rep["layers"].get("cgroup", {})
    if cgroup and not cgroup.get("available"):
        lines.append(
            "  (no cgroup per kernel here: only the rlimits bound agent kernels, each process "
            "alone, so many processes may each take the address-space cap)"
        )
    lines.append("")
    if rep["agent_kernels_can_start"]:
        lines.append("Agent kernels can start: the minimum isolation is available.")
    else:
        lines.append("Agent kernels will NOT start; missing: " + ", ".join(rep["missing"]))
    rules = rep.get("workspace_rules", {})
    if rules:
        ns_ok = rep["layers"].get("namespaces", {}).get("available")
        lines.append("")
        lines.append("What agent kernels may not do to the workspace:")
        lines += [f"  {name:<13} {text}" for name, text in rules.items()]
        if not ns_ok:
            lines.append(
                "  (no mount namespace here: .git is not read-only in agent kernels, and kernels "
                "of agent tokens that deny files will not start)"
            )
    creds = rep["plaintext_credentials"]
    lines.append("")
    if creds["files"] or creds["environment"]:
        lines.append("Plaintext credentials found (names only; move them into the keyring):")
        lines += [f"  file: {f}" for f in creds["files"]]
        lines += [f"  environment: {n}" for n in creds["environment"]]
    else:
        lines.append("No plaintext credentials found in the usual places.")
    if "inprocess_agents" in rep:
        from ..agents.inprocess import format_doctor

        lines.append("")
        lines += format_doctor(rep["inprocess_agents"])
    return "\n".join(lines)
