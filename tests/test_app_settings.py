"""Settings: every one a documented traitlet; state never inside the workspace."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from jupyter_qguard.app import QGuardApp


def test_every_setting_is_a_configurable_trait_with_help():
    traits = QGuardApp.class_own_traits(config=True)
    assert {"state_dir", "db_url", "backends", "approval_ttl", "kernel_env_allowlist"} <= set(
        traits
    )
    for name, trait in traits.items():
        assert trait.help and len(trait.help) > 20, f"QGuardApp.{name} has no help"


def test_backends_need_a_provider():
    with pytest.raises(Exception, match="needs at least 'provider'"):
        QGuardApp(config=Config({"QGuardApp": {"backends": {"x": {"qubits": 5}}}}))


def test_state_dir_inside_the_workspace_is_refused(jp_configurable_serverapp, jp_root_dir):
    with pytest.raises(ValueError, match="inside the server's root directory"):
        jp_configurable_serverapp(
            config=Config(
                {
                    "ServerApp": {
                        "jpserver_extensions": {"jupyter_qguard": True},
                        "reraise_server_extension_failures": True,
                    },
                    "QGuardApp": {"state_dir": str(jp_root_dir / ".qguard")},
                }
            )
        )


def test_policy_dir_inside_the_workspace_is_refused(
    jp_configurable_serverapp, jp_root_dir, tmp_path
):
    with pytest.raises(ValueError, match=r"QGuardApp.policy_dir .* is inside the server's root"):
        jp_configurable_serverapp(
            config=Config(
                {
                    "ServerApp": {
                        "jpserver_extensions": {"jupyter_qguard": True},
                        "reraise_server_extension_failures": True,
                    },
                    "QGuardApp": {
                        "state_dir": str(tmp_path / "state"),
                        "policy_dir": str(jp_root_dir / "policies"),
                    },
                }
            )
        )
