"""Real Chromium for the browser tests: Debian's package (apt-get when missing, as root) and the
`@playwright/test` runner from ui-tests/ (npm ci, no browser download)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.one_at_a_time import installing

UI = Path(__file__).resolve().parents[2] / "ui-tests"
CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM):
        return
    assert os.geteuid() == 0, f"{CHROMIUM} is missing: install Debian's chromium (as root)"
    with installing("apt"):
        if os.path.exists(CHROMIUM):  # the other worker installed it while this one waited
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env).returncode != 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
            subprocess.run(install, check=True, env=env)


def ensure_runner() -> None:
    playwright = UI / "node_modules" / ".bin" / "playwright"
    if playwright.exists():
        return
    with installing("ui-tests-npm"):
        if playwright.exists():
            return
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=UI, check=True, env=env)
