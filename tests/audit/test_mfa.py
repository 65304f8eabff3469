"""Step-up MFA for premium approvals: a TOTP secret enrolled in the (file) keyring, codes checked
on the server, each accepted once only; the command line shows the otpauth URI and a QR code."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys

import pyotp
import pytest
from support.helpers import BELL, approve, wait_for

from jupyter_qguard import credentials as cr

PREMIUM = {
    "policy_data": {
        "backends": {
            "aer_premium": {"tier": "premium", "provider": "aer", "price": {"model": "free"}}
        }
    },
    "backends": {
        "aer_simulator": {"provider": "aer", "qubits": 28},
        "aer_premium": {"provider": "aer", "qubits": 28},
    },
}


def enroll(store: cr.CredentialStore, user: str) -> pyotp.TOTP:
    """Enroll as the command does, and read the URI back as an authenticator app would."""
    out = io.StringIO()
    assert cr.cli_mfa_enroll(store, user, qr=False, out=out) == 0
    [uri] = [line for line in out.getvalue().splitlines() if line.startswith("otpauth://")]
    totp = pyotp.parse_uri(uri)
    assert totp.name == user and totp.issuer == "jupyter-qguard"
    return totp


def code_at(totp: pyotp.TOTP, steps_ahead: int = 0) -> str:
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=totp.interval * steps_ahead)
    return totp.at(now)


async def body_of(r):
    return json.loads(r.body)


@pytest.mark.parametrize("qguard_config", [PREMIUM], indirect=True)
async def test_premium_approvals_need_a_fresh_totp_code_each(start_kernel, jp_fetch, broker):
    broker.user = "ada"
    totp = enroll(broker.credentials, "ada")
    k = await start_kernel()
    await k.run(BELL)
    await k.run("p = %qguard submit bell --backend aer_premium --shots 10")
    [p] = json.loads((await jp_fetch("qguard", "api", "jobs")).body)["jobs"]
    assert (p["state"], p["decision"]["mfa_required"]) == ("pending_approval", True)

    r = await approve(jp_fetch, p, raise_error=False)
    assert (r.code, r.reason) == (403, "mfa_required")
    assert "send the current code of ada's authenticator app" in (await body_of(r))["message"]

    good = code_at(totp)
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    r = await approve(jp_fetch, p, otp=wrong, raise_error=False)
    assert r.code == 409
    assert (await body_of(r))["message"] == "the MFA code is wrong or has expired"

    r = await approve(jp_fetch, p, otp=good)
    assert r.code == 200 and json.loads(r.body)["approvals_given"] == 1

    # The same code for the second approver: refused, whoever sends it.
    r = await approve(jp_fetch, p, otp=good, raise_error=False)
    assert r.code == 409
    assert (await body_of(r))["message"] == (
        "this MFA code was already used: wait for the next one (codes are single-use)"
    )
    # The next code (one step ahead, inside the ±1 step window) is accepted: the job runs.
    r = await approve(jp_fetch, p, otp=code_at(totp, 1))
    assert r.code == 200

    async def completed():
        job = await broker.get(p["id"])
        return job if job["state"] == "completed" else None

    done = await wait_for(completed, timeout=60)
    assert sum(done["result"]["counts"].values()) == 10

    entries = broker.audit.tail(50, p["id"])
    verdicts = [(e["kind"], e.get("why")) for e in entries if e["kind"].startswith("mfa.")]
    assert verdicts == [
        ("mfa.refused", "wrong"),
        ("mfa.verified", None),
        ("mfa.refused", "reused"),
        ("mfa.verified", None),
    ]
    log = broker.audit.path.read_text()
    assert good not in log.replace(p["digest"], "") and wrong not in log.replace(p["digest"], "")


def test_time_steps_are_single_use_and_skew_is_bounded(tmp_path):
    store = cr.CredentialStore(
        cr.backend_from_name(
            "keyrings.alt.file.PlaintextKeyring", file_path=str(tmp_path / "k.cfg")
        )
    )
    totp = enroll(store, "bob")
    now = dt.datetime.now(dt.UTC)
    step = totp.timecode(now)
    assert cr.mfa_time_step(store, "bob", totp.at(now), at=now) == step
    assert cr.mfa_time_step(store, "bob", totp.at(now - dt.timedelta(seconds=30)), at=now) == (
        step - 1
    )
    assert cr.mfa_time_step(store, "bob", totp.at(now - dt.timedelta(seconds=90)), at=now) is None
    assert cr.mfa_time_step(store, "bob", "12345", at=now) is None  # wrong length
    # Enrolling again without --replace keeps the secret.
    assert cr.cli_mfa_enroll(store, "bob", qr=False, out=io.StringIO(), err=io.StringIO()) == 1
    assert cr.mfa_time_step(store, "bob", totp.at(now), at=now) == step
    with pytest.raises(cr.CredentialError, match="no MFA enrolled for carol"):
        cr.mfa_time_step(store, "carol", "123456")


def test_mfa_enroll_on_the_command_line_shows_uri_and_qr(tmp_path):
    keyring_file = tmp_path / "keyring.cfg"
    args = [
        f"--QGuardApp.state_dir={tmp_path / 'state'}",
        "--QGuardApp.keyring_backend=keyrings.alt.file.PlaintextKeyring",
        f"--QGuardApp.keyring_backend_options={json.dumps({'file_path': str(keyring_file)})}",
    ]
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jupyter_qguard.cli", *cmd, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    assert run("mfa", "status", "--user", "ada").returncode == 1
    res = run("mfa", "enroll", "--user", "ada")
    assert res.returncode == 0, res.stderr
    [uri] = [line for line in res.stdout.splitlines() if line.startswith("otpauth://totp/")]
    assert "issuer=jupyter-qguard" in uri
    assert "█" in res.stdout or "▀" in res.stdout  # the terminal QR code
    assert run("mfa", "status", "--user", "ada").stdout.strip() == "ada: enrolled"
    store = cr.CredentialStore(
        cr.backend_from_name("keyrings.alt.file.PlaintextKeyring", file_path=str(keyring_file))
    )
    totp = pyotp.parse_uri(uri)
    assert cr.mfa_time_step(store, "ada", totp.now()) is not None
    assert run("mfa", "delete", "--user", "ada").returncode == 0
    assert not cr.mfa_enrolled(store, "ada")
