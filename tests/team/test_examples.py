"""The team-mode deployment examples load, and name only settings that exist: the examples in
examples/team/ and docs/team-mode.md must keep matching the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from traitlets.config.loader import PyFileConfigLoader

from jupyter_qguard.app import QGuardApp
from jupyter_qguard.hub.command import QGuardBrokerService
from jupyter_qguard.policy.engine import PolicyEngine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "team"
SCOPES = {
    "custom:qguard:request",
    "custom:qguard:approve",
    "custom:qguard:admin",
    "custom:qguard:review",
}


def load(path: Path) -> Any:
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def test_the_hub_config_runs_the_broker_service_with_the_scopes_and_roles():
    c = load(EXAMPLES / "jupyterhub_config.py")
    assert set(c.JupyterHub.custom_scopes) == SCOPES
    [service] = [s for s in c.JupyterHub.services if s["name"] == "qguard"]
    assert service["command"][:4] == ["jupyter", "qguard", "broker", "--hub"]
    assert set(service["oauth_client_allowed_scopes"]) >= SCOPES - {"custom:qguard:review"}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert "custom:qguard:request" in roles["user"]["scopes"]
    assert roles["qguard-approvers"]["scopes"] == ["custom:qguard:approve", "custom:qguard:review"]
    assert roles["qguard-service"]["services"] == ["qguard"]
    assert {"custom:qguard:request", "access:services!service=qguard"} <= set(
        c.Spawner.server_token_scopes
    )
    # Whatever runs in a server can use its token: servers read the queue, never decide.
    assert "custom:qguard:review" in c.Spawner.server_token_scopes
    assert "custom:qguard:approve" not in c.Spawner.server_token_scopes
    port = service["url"].rsplit(":", 1)[1]
    assert c.Spawner.environment["QGUARD_TEAM_BROKER_URL"] == (
        f"http://127.0.0.1:{port}/services/qguard/"
    )


def test_the_broker_config_is_valid_for_the_broker(monkeypatch):
    monkeypatch.setenv("QGUARD_DB_PASSWORD", "pw/with:odd@chars")
    c = load(EXAMPLES / "broker_config.py")
    settings = QGuardApp(config=c)
    assert (
        settings.db_url == "postgresql+psycopg://qguard:pw%2Fwith%3Aodd%40chars@db-host:5432/qguard"
    )
    assert settings.mfa_single_user is False
    service = QGuardBrokerService(config=c)
    assert service.public_url == "/services/qguard/"
    # The policy data merges into the pack and the pack still decides.
    engine = PolicyEngine(str(ROOT / "policies"), settings.policy_data)
    assert engine.data["limits"]["daily_budget_per_group"]["approvers"] == 500.0
    assert set(settings.backends) >= {"aer_simulator", "fake_brisbane"}


def test_the_helm_values_hold_the_same_service_and_scopes():
    values = yaml.safe_load((EXAMPLES / "z2jh-values.yaml").read_text())
    hub = values["hub"]
    assert set(hub["config"]["JupyterHub"]["custom_scopes"]) == SCOPES
    service = hub["services"]["qguard"]
    assert "broker" in service["command"] and "--hub" in service["command"]
    assert set(service["oauth_client_allowed_scopes"]) >= SCOPES - {"custom:qguard:review"}
    server_scopes = hub["config"]["Spawner"]["server_token_scopes"]
    assert "custom:qguard:request" in server_scopes and "custom:qguard:review" in server_scopes
    assert "custom:qguard:approve" not in server_scopes
    assert values["hub"]["loadRoles"]["qguard-approvers"]["scopes"] == [
        "custom:qguard:approve",
        "custom:qguard:review",
    ]
    assert values["singleuser"]["extraEnv"]["QGUARD_TEAM_BROKER_URL"].endswith("/services/qguard/")


def test_every_setting_the_docs_and_examples_name_exists():
    traits = {
        "QGuardApp": set(QGuardApp.class_traits(config=True)),
        "QGuardBrokerService": set(QGuardBrokerService.class_traits(config=True)),
    }
    texts = [p.read_text() for p in (*EXAMPLES.iterdir(), ROOT / "docs" / "team-mode.md")]
    named = set()
    for text in texts:
        named |= set(re.findall(r"\b(QGuardApp|QGuardBrokerService)\.([a-z_]+)", text))
    assert named, "the examples name no setting?"
    unknown = sorted(f"{cls}.{name}" for cls, name in named if name not in traits[cls])
    assert unknown == []
