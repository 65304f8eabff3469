"""`jupyter qguard` on the command line."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from jupyter_qguard.broker.jobs import State
from jupyter_qguard.broker.store import Store, sqlite_url

EXE = str(Path(sys.executable).with_name("jupyter"))


def run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "cfg")}
    return subprocess.run(
        [EXE, "qguard", *args], capture_output=True, text=True, env=env, timeout=60
    )


def _fields(backend: str, notebook: str | None = None) -> dict:
    return dict(
        requester={"user": "ada", "kernel_id": "k" * 32, "notebook": notebook, "cell_id": None},
        backend=backend,
        shots=100,
        seed=None,
        max_cost=None,
        request={
            "program": {"sdk": "qiskit", "format": "qpy", "sha256": "a" * 64, "payload_b64": "AA=="}
        },
        program_sha256="a" * 64,
        files={},
        policy_version="p" * 64,
        digest="d" * 64,
        decision={},
    )


def test_help_and_bare_command(tmp_path):
    r = run("--help", home=tmp_path)
    assert r.returncode == 0 and "jobs" in r.stdout
    r = run(home=tmp_path)
    assert r.returncode == 2
    expected = (
        "agent, agent-token, audit, broker, bundle, credentials, doctor, fakecloud, jobs, mfa, "
        "policy"
    )
    assert f"Subcommands: {expected}" in r.stdout


def test_credentials_set_list_delete_through_the_servers_keyring_setting(tmp_path):
    # The CLI reads QGuardApp.keyring_backend from the server's config, as the server does.
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    keyring_file = tmp_path / "keyring.cfg"
    (cfg / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "QGuardApp": {
                    "keyring_backend": "keyrings.alt.file.PlaintextKeyring",
                    "keyring_backend_options": {"file_path": str(keyring_file)},
                }
            }
        )
    )
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_CONFIG_DIR": str(cfg)}
    secret = "fc-key-5d41402abc4b2a76b9719d911017c592"
    r = subprocess.run(
        [EXE, "qguard", "credentials", "set", "fakecloud"],
        input=secret + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    # keyrings.alt's plaintext file keeps values base64-encoded
    assert base64.b64encode(secret.encode()).decode() in keyring_file.read_text()
    listed = run("credentials", "list", home=tmp_path)
    assert listed.returncode == 0
    [header, row] = listed.stdout.strip().splitlines()
    assert header.split() == ["PROVIDER", "FINGERPRINT"]
    assert row.split()[0] == "fakecloud" and len(row.split()[1]) == 8
    assert secret not in listed.stdout
    assert run("credentials", "delete", "fakecloud", home=tmp_path).returncode == 0
    again = run("credentials", "list", home=tmp_path)
    assert "fakecloud" not in again.stdout


def test_jobs_lists_the_store_as_a_table_and_json(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    store = Store(sqlite_url(str(state / "qguard.db")))
    a = store.create_job(actor="kernel:x", **_fields("aer_hw", "exp.ipynb"))
    store.transition(a["id"], State.PENDING_APPROVAL, actor="broker")
    b = store.create_job(actor="kernel:x", **_fields("aer_simulator"))
    store.transition(
        b["id"], State.REJECTED, actor="broker", reason="the circuit has no measurements"
    )
    store.close()

    r = run("jobs", f"--QGuardApp.state_dir={state}", home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "STATE", "BACKEND", "SHOTS"]
    assert len(lines) == 3
    assert a["id"][:12] in r.stdout and "pending_approval" in r.stdout and "exp.ipynb" in r.stdout
    assert "the circuit has no measurements" in r.stdout

    r = run("jobs", "--json", "--state=rejected", f"--QGuardApp.state_dir={state}", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in json.loads(r.stdout)] == [b["id"]]


def test_jobs_without_state_says_so(tmp_path):
    r = run("jobs", f"--QGuardApp.state_dir={tmp_path / 'nothing'}", home=tmp_path)
    assert r.returncode == 1
    assert "no qguard state at" in r.stderr


def test_policy_eval_and_check(tmp_path):
    job = tmp_path / "job.json"
    job.write_text(
        json.dumps({"schema": "qguard.job/v1", "backend": "fake_brisbane", "shots": 4000})
    )
    r = run("policy", "eval", str(job), home=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ALLOW (policy ")
    assert lines[1:] == ["  approvals required: 1; step-up MFA: no", "  cost estimate: 1.70 USD"]
    r = run(
        "policy",
        "eval",
        str(job),
        "--backend=fake_torino",
        "--workstation-tier=sandbox",
        home=tmp_path,
    )
    assert r.returncode == 1
    assert (
        "  - this workstation is in tier sandbox, where only simulators may run "
        "(backend fake_torino is premium)"
    ) in r.stdout.splitlines()

    good = run(
        "policy", "check", str(Path(__file__).resolve().parents[1] / "policies"), home=tmp_path
    )
    assert good.returncode == 0 and "fake_torino          tier premium" in good.stdout
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "p.rego").write_text("package qguard.x\n\nx := opa.runtime()\n")
    r = run("policy", "check", str(bad), home=tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "policy pack refused: p.rego:3 uses opa.runtime, which reads the OPA runtime environment: "
        "a qguard policy must decide from its input and its own data only"
    )
