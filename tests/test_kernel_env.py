"""The agent kernel starts with an allowlisted environment, whatever the server holds."""

from __future__ import annotations

import os

import pytest

from jupyter_qguard.sandbox.environment import DEFAULT_ALLOWLIST, allowed

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-1",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "QISKIT_IBM_TOKEN": "ibm-token-2",
    "JUPYTERHUB_API_TOKEN": "hub-token-3",
    "JPY_API_TOKEN": "hub-token-4",
    "SSH_AUTH_SOCK": "/tmp/ssh-agent.sock",
    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/run/user/0/bus",
    "MY_SERVICE_TOKEN": "svc-token-5",
    "OPENAI_API_KEY": "sk-6",
    "GITHUB_TOKEN": "ghp-7",
    "SOME_PASSWORD": "pw-8",
    "UNLISTED_HARMLESS": "plain-9",
    "LC_ALL": "C.UTF-8",
}

# Set by the provisioner itself, or by jupyter_client's launcher (JPY_PARENT_PID).
FIXED = {
    "HOME",
    "IPYTHONDIR",
    "MPLCONFIGDIR",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_DATA_HOME",
    "JUPYTER_CONFIG_DIR",
    "JUPYTER_DATA_DIR",
    "JUPYTER_RUNTIME_DIR",
    "TMPDIR",
    "QGUARD_CHANNEL_FD",
    "QGUARD_KERNEL_ID",
    "PYTHONNOUSERSITE",
    "PYTHON_KEYRING_BACKEND",
    "PYTHONDONTWRITEBYTECODE",
    "JPY_PARENT_PID",
    "USER",
    "LOGNAME",
    # read by the launcher, and removed from os.environ before ipykernel starts
    "QGUARD_SANDBOX_SPEC",
}

READ_INITIAL_ENV = (
    "sorted(k.split('=',1)[0] for k in "
    "open('/proc/self/environ','rb').read().decode().split('\\0') if k)"
)


@pytest.fixture
def secret_environ(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


async def test_kernel_environment_is_the_allowlist(secret_environ, start_kernel):
    k = await start_kernel()
    names = set(await k.value(READ_INITIAL_ENV))
    expected = {n for n in os.environ if allowed(n, DEFAULT_ALLOWLIST)} | FIXED
    assert names - expected == set()
    assert FIXED <= names
    assert "LC_ALL" in names
    for secret in SECRETS.keys() - {"LC_ALL"}:
        assert secret not in names
    values = await k.value("dict(__import__('os').environ)")
    joined = "\n".join(values.values())
    for name, value in SECRETS.items():
        if name != "LC_ALL":
            assert value not in joined
    home = values["HOME"]
    assert home.endswith("/home") and "/qg-" in home
    assert values["PYTHON_KEYRING_BACKEND"] == "keyring.backends.null.Keyring"


@pytest.mark.parametrize("qguard_config", [{"kernel_env_allowlist": ["*"]}], indirect=True)
async def test_widened_allowlist_still_drops_credentials(
    secret_environ, start_kernel, qguard_config
):
    k = await start_kernel()
    names = set(await k.value(READ_INITIAL_ENV))
    assert "UNLISTED_HARMLESS" in names  # the allowlist really was widened
    for secret in SECRETS.keys() - {"LC_ALL", "UNLISTED_HARMLESS"}:
        assert secret not in names


def test_allowlist_matching():
    assert allowed("LC_CTYPE", ["LC_*"])
    assert not allowed("LC_TOKEN", ["LC_*"])
    assert not allowed("ANYTHING", ["PATH"])
    assert not allowed("xauthority", ["*"])
    assert not allowed("LD_PRELOAD", ["*"])
    assert not allowed("PYTHONPATH", ["*"])
