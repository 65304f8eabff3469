"""A hardware job through a real server and the fake cloud leaves an audit trail and a bundle:
`jupyter qguard audit verify|show` and `bundle verify|replay` (the real command line) check them,
a changed byte anywhere in the bundle is caught, and the replay of a Bell job is within 0.05 TVD."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.broker_flow import KEYRING, server_for, submit_and_approve, until
from support.fakecloud_proc import FakeCloud
from support.helpers import BELL


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fc = FakeCloud(tmp_path_factory.mktemp("cloud")).start()
    yield fc
    fc.stop()


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cloud: FakeCloud) -> dict[str, Any]:
    """One Bell job on fake_brisbane, approved and completed; the server then stopped."""
    import asyncio

    tmp = tmp_path_factory.mktemp("server")
    server = server_for(tmp, cloud)

    async def run() -> dict[str, Any]:
        server.start()
        try:
            kernel = await server.start_kernel()
            assert (await kernel.run(BELL))["error"] is None
            job = await submit_and_approve(server, kernel, shots=4000)
            done = await until(server, job["id"], {"completed", "failed"})
            assert done["state"] == "completed", done.get("reason")
            bundle = server.state / "bundles" / job["id"]
            for _ in range(300):
                if (bundle / "checkpoint.note").exists():
                    break
                await asyncio.sleep(0.1)
            listed = await server.json(f"qguard/api/audit?job={job['id']}")
            kernel.close()
            return {"job": done, "bundle": bundle, "rest": listed}
        finally:
            server.stop()

    out = asyncio.run(run())
    return {**out, "server": server, "tmp": tmp}


def cli(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    """`jupyter qguard ...` against the server's state, with its keyring."""
    keyring_file = server.base / "keyring" / "keyring.cfg"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_qguard.cli",
            *args,
            f"--QGuardApp.state_dir={server.state}",
            f"--QGuardApp.keyring_backend={KEYRING}",
            f"--QGuardApp.keyring_backend_options={json.dumps({'file_path': str(keyring_file)})}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JUPYTER_PLATFORM_DIRS": "1"},
    )


def test_the_job_is_audited_from_request_to_result(finished):
    job_id = finished["job"]["id"]
    entries = finished["rest"]["entries"]
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "job.received"
    moves = [(e["from"], e["to"]) for e in entries if e["kind"] == "job.transition"]
    assert moves == [
        ("received", "pending_approval"),
        ("pending_approval", "approved"),
        ("approved", "queued"),
        ("queued", "submitted"),
        ("submitted", "completed"),
    ]
    assert "job.approval" in kinds and kinds[-1] == "bundle.sealed"
    assert all(e["job"] == job_id for e in entries)
    log = (finished["server"].state / "audit" / "log.jsonl").read_text()
    every = [json.loads(line) for line in log.splitlines()]
    by_kind = {e["kind"] for e in every}
    assert {"server.start", "policy.load", "sandbox.start", "credential.use"} <= by_kind
    used = [e for e in every if e["kind"] == "credential.use"]
    assert {e["name"] for e in used} == {"fakecloud"}
    assert all(len(e["fingerprint"]) == 8 for e in used)
    # The submission entry is written before the key is used to create the job at the cloud.
    submitted = next(e["seq"] for e in entries if e.get("to") == "submitted")
    creates = [e["seq"] for e in used if e["purpose"].startswith("create token")]
    assert creates and min(creates) > submitted


def test_audit_verify_and_show_from_the_command_line(finished):
    server = finished["server"]
    res = cli(server, "audit", "verify", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["entries"] == report["checkpoint_size"] == report["witness_size"]
    assert report["key_source"] == "the signing key in the keyring"
    shown = cli(server, "audit", "show", "--job", finished["job"]["id"])
    assert shown.returncode == 0, shown.stderr
    assert "queued → submitted by broker" in shown.stdout


def test_the_bundle_holds_what_the_issue_lists_and_verifies(finished):
    bundle: Path = finished["bundle"]
    names = {p.name for p in bundle.iterdir()}
    assert names == {
        "request.json",
        "program.qpy",
        "program.qasm3",
        "environment.json",
        "sbom.cdx.json",
        "job.json",
        "calibration.json",
        "result.json",
        "manifest.json",
        "inclusion.json",
        "checkpoint.note",
        "verifier.key",
    }
    job = json.loads((bundle / "job.json").read_text())
    assert job["seed"] == 5 and job["provider_job_id"] == finished["job"]["provider_job_id"]
    assert [a["digest"] for a in job["approvals"]] == [finished["job"]["digest"]]
    assert "OPENQASM 3" in (bundle / "program.qasm3").read_text()
    calibration = json.loads((bundle / "calibration.json").read_text())
    result = json.loads((bundle / "result.json").read_text())
    assert calibration["calibration_id"] == result["provider"]["calibration_id"]
    env = json.loads((bundle / "environment.json").read_text())
    assert any(p["name"] == "qiskit" for p in env["packages"])
    sbom = json.loads((bundle / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.6"
    res = cli(finished["server"], "bundle", "verify", str(bundle), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and report["trusted"] is True and report["entries"] == 8


def test_bundle_verify_catches_a_changed_byte_anywhere(finished, tmp_path):
    from jupyter_qguard.audit import bundle as bundles
    from jupyter_qguard.audit.note import VerifierKey

    original: Path = finished["bundle"]
    key = VerifierKey.parse((original / "verifier.key").read_text())
    rng = random.Random(8)
    checked = 0
    for path in sorted(original.iterdir()):
        size = path.stat().st_size
        for offset in {0, size - 1, *rng.sample(range(size), min(size, 6))}:
            copy = tmp_path / f"{path.name}-{offset}"
            shutil.copytree(original, copy)
            data = bytearray((copy / path.name).read_bytes())
            data[offset] ^= 0x01
            (copy / path.name).write_bytes(bytes(data))
            report = bundles.verify(copy, key)
            assert not report["ok"], f"a flipped bit at {path.name}:{offset} went unnoticed"
            shutil.rmtree(copy)
            checked += 1
    assert checked > 60
    assert bundles.verify(original, key)["ok"]


def test_replaying_the_bell_job_stays_within_0_05_tvd(finished):
    res = cli(finished["server"], "bundle", "replay", str(finished["bundle"]), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["shots"] == 4000 and out["seed"] != 5
    assert out["recorded"] != out["replayed"]  # a fresh run, not the recorded one again
    assert out["tvd"] < 0.05, out
    # The noise model is in: both runs have some 01/10 counts.
    assert out["replayed"].get("01", 0) + out["replayed"].get("10", 0) > 0


def test_an_exported_log_verifies_elsewhere_and_its_tampering_shows(finished, tmp_path):
    import tarfile

    out = tmp_path / "export.tar.gz"
    res = cli(finished["server"], "audit", "export", "--out", str(out))
    assert res.returncode == 0, res.stderr
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "x", filter="data")
    assert {"audit/log.jsonl", "audit/checkpoint", "witness/checkpoint"} <= names
    here = tmp_path / "x"
    args = ("--dir", str(here / "audit"), "--witness", str(here / "witness"))
    key = ("--key", str(here / "witness" / "verifier.key"))
    res = cli(finished["server"], "audit", "verify", *args, *key, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["key_source"].startswith("--key")
    log = here / "audit" / "log.jsonl"
    rows = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(rows[:-2]))  # the last two entries gone
    res = cli(finished["server"], "audit", "verify", *args, *key)
    assert res.returncode == 1
    n = len(rows) - 2
    assert f"FAILED: {n} entries" in res.stdout and f"first bad entry: {n}" in res.stdout
    assert f"entries {n}..{n + 1} were removed" in res.stdout
