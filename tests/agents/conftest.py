"""Fixtures the agent tests share."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def tokens(jp_serverapp: Any, broker: Any) -> Any:
    """The server's agent tokens (agents/tokens.py), as `jupyter qguard agent-token` keeps them."""
    return jp_serverapp.web_app.settings["qguard_agent_tokens"]


@pytest.fixture
def forged_spec(jp_data_dir: Path) -> str:
    """A kernelspec that copies qguard-agent's name, display name and metadata flag but not its
    provisioner: what counts is the provisioner."""
    forged = jp_data_dir / "kernels" / "qguard-agentx"
    forged.mkdir(parents=True)
    (forged / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (qguard agent)",
                "language": "python",
                "metadata": {"qguard": {"agent": True}},
            }
        )
    )
    return "qguard-agentx"
