"""The agent kernel's environment: an allowlist, never a denylist.

Only names that match the allowlist pass; on top of that, names that look like credentials or
point at credential stores (agent sockets, D-Bus, the hub's API) never pass, even if someone
widens the allowlist to `*`. HOME and the per-user directories point into the kernel's own
runtime directory, so nothing in the real home is read or written through them.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..kernel.client import CHANNEL_FD_VAR

DEFAULT_ALLOWLIST: tuple[str, ...] = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TERM",
    "COLORTERM",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "PAGER",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "JPY_SESSION_NAME",
)

# Checked after the allowlist and case-insensitively; a match never reaches the kernel.
NEVER_PASS: tuple[str, ...] = (
    r".*(TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|API_?KEY|_KEY|AUTH).*",
    r"AWS_.*",
    r"AMAZON_.*",
    r"BRAKET_.*",
    r"QISKIT_.*",
    r"IBM.*",
    r"IONQ_.*",
    r"AZURE_.*",
    r"GOOGLE_.*",
    r"GCLOUD_.*",
    r"GITHUB_.*",
    r"JUPYTERHUB_.*",
    r"JPY_API_TOKEN",
    r"SSH_.*",
    r"GPG_.*",
    r"DBUS_.*",
    r"KRB5.*",
    r"XDG_RUNTIME_DIR",
    r"DISPLAY",
    r"WAYLAND_DISPLAY",
    r"KEYRING_.*",
    r"PYTHON_KEYRING_.*",
    r"PYTHONSTARTUP",
    r"PYTHONPATH",
    r"PYTHONHOME",
    r"LD_.*",
)
NEVER_PASS_RE = re.compile("|".join(f"(?:{p})" for p in NEVER_PASS), re.IGNORECASE)

KERNEL_ID_VAR = "QGUARD_KERNEL_ID"


def allowed(name: str, allowlist: Iterable[str]) -> bool:
    if NEVER_PASS_RE.fullmatch(name):
        return False
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in allowlist)


def sandbox_home_layout(kernel_dir: Path) -> dict[str, str]:
    """Per-kernel HOME and friends, created 0700 inside the kernel's own directory."""
    home = kernel_dir / "home"
    dirs = {
        "HOME": home,
        "IPYTHONDIR": home / ".ipython",
        "MPLCONFIGDIR": home / ".config" / "matplotlib",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "XDG_DATA_HOME": home / ".local" / "share",
        "JUPYTER_CONFIG_DIR": home / ".jupyter",
        "JUPYTER_DATA_DIR": home / ".local" / "share" / "jupyter",
        "JUPYTER_RUNTIME_DIR": home / ".local" / "share" / "jupyter" / "runtime",
        "TMPDIR": kernel_dir / "tmp",
    }
    for path in dirs.values():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return {name: str(path) for name, path in dirs.items()}


def kernel_environment(
    source: Mapping[str, str],
    *,
    allowlist: Iterable[str],
    kernel_dir: Path,
    channel_fd: int,
    kernel_id: str,
) -> tuple[dict[str, str], dict[str, object]]:
    """Build the kernel's environment; return it and a report for doctor/whoami."""
    allowlist = list(allowlist)
    env = {k: v for k, v in source.items() if allowed(k, allowlist)}
    dropped = sorted(set(source) - set(env))
    env.update(sandbox_home_layout(kernel_dir))
    env.update(
        {
            CHANNEL_FD_VAR: str(channel_fd),
            KERNEL_ID_VAR: kernel_id,
            # The kernel's Python ignores user site-packages (a .pth there would run code) and
            # any keyring is the null one, so a library that reaches for credentials finds none.
            "PYTHONNOUSERSITE": "1",
            "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
            "PYTHONDONTWRITEBYTECODE": "1",
            # A root server's kernel runs as a uid no account has; name it for getpass & co.
            "USER": "qguard-agent",
            "LOGNAME": "qguard-agent",
        }
    )
    report = {"active": True, "kept": sorted(env), "dropped_count": len(dropped)}
    return env, report
