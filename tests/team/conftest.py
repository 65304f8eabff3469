"""Fixtures of the team-mode tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support.team import start_team


@pytest.fixture
def team(postgres: Any) -> Any:
    """A hub running qguard's broker as its service, on a fresh PostgreSQL database, with the
    fake cloud: (hub, cloud, the service's keyring file). Under /tmp: users' homes live in it."""
    base = Path(tempfile.mkdtemp(prefix="qguard-hub-"))
    hub, cloud, keyring = start_team(base, postgres.new_database())
    try:
        yield hub, cloud, keyring
    finally:
        hub.stop()
        cloud.stop()
        shutil.rmtree(base, ignore_errors=True)
