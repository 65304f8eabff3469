"""The environment manifest (real venv and hand-made dist-info dirs) and its CycloneDX SBOM:
schema-valid, one component per package, byte-for-byte reproducible, cached per environment."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import stat
import time
import uuid
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from jupyter_qguard.audit import environment
from jupyter_qguard.audit.environment import canonical, manifest, sbom

KEYS = {"name", "version", "record_sha256", "files", "files_sha256"}
H1 = "sha256=" + "a" * 43
H2 = "sha256=" + "b" * 43
H3 = "sha256=" + "c" * 43


def make_dist(site: Path, name: str, version: str, rows: list[str] | None) -> Path:
    """A dist-info dir as an installer leaves it; rows=None: no RECORD at all."""
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if rows is not None:
        (info / "RECORD").write_bytes("".join(r + "\n" for r in rows).encode())
    return info


def files_hash(pairs: list[str]) -> str:
    return hashlib.sha256("".join(p + "\n" for p in sorted(pairs)).encode()).hexdigest()


ALPHA_ROWS = [
    "alpha_pkg/__init__.py," + H1 + ",10",
    "alpha_pkg/core.py," + H2 + ",20",
    "Alpha_Pkg-1.0.dist-info/RECORD,,",
]
BETA_ROWS = ['"beta/a,b.py",' + H3 + ",5", "beta-2.0.dist-info/RECORD,,"]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    s = tmp_path / "site"
    make_dist(s, "Alpha_Pkg", "1.0", ALPHA_ROWS)
    make_dist(s, "beta", "2.0", BETA_ROWS)
    return s


@pytest.fixture(scope="module")
def real_env() -> dict:
    return manifest()


# -- manifest ---------------------------------------------------------------------------------


def test_real_venv_manifest(real_env):
    by_name = {p["name"]: p for p in real_env["packages"]}
    assert by_name["qiskit"]["version"] == metadata.version("qiskit")
    for p in real_env["packages"]:
        assert set(p) == KEYS
        assert p["name"] == re.sub(r"[-_.]+", "-", p["name"]).lower()
    names = [(p["name"], p["version"]) for p in real_env["packages"]]
    assert names == sorted(names)
    assert len({p["name"] for p in real_env["packages"]}) == len(names)
    assert real_env["python"]["version"] == platform.python_version()
    assert real_env["environment_hash"] == manifest()["environment_hash"]


def test_real_record_hash_is_the_file_bytes(real_env):
    dist = metadata.distribution("qiskit")
    record = next(f for f in dist.files or [] if f.name == "RECORD")
    want = hashlib.sha256(Path(record.locate()).read_bytes()).hexdigest()
    qiskit = next(p for p in real_env["packages"] if p["name"] == "qiskit")
    assert qiskit["record_sha256"] == want
    assert qiskit["files"] > 100


def test_manifest_is_fast():
    start = time.perf_counter()
    manifest()
    assert time.perf_counter() - start < 1.0


def test_hand_made_dists_exact(site):
    env = manifest(path=[str(site)])
    alpha_record = (site / "Alpha_Pkg-1.0.dist-info" / "RECORD").read_bytes()
    beta_record = (site / "beta-2.0.dist-info" / "RECORD").read_bytes()
    assert env["packages"] == [
        {
            "name": "alpha-pkg",
            "version": "1.0",
            "record_sha256": hashlib.sha256(alpha_record).hexdigest(),
            "files": 3,
            "files_sha256": files_hash(["alpha_pkg/__init__.py," + H1, "alpha_pkg/core.py," + H2]),
        },
        {
            "name": "beta",
            "version": "2.0",
            "record_sha256": hashlib.sha256(beta_record).hexdigest(),
            "files": 2,
            # A quoted path with a comma is one path (RECORD is CSV).
            "files_sha256": files_hash(["beta/a,b.py," + H3]),
        },
    ]
    # The hash covers Python version/implementation and packages, not machine-local paths.
    keyed = {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "packages": env["packages"],
    }
    assert env["environment_hash"] == hashlib.sha256(canonical(keyed)).hexdigest()
    assert canonical({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'


def test_changed_record_row_changes_hashes(site):
    before = manifest(path=[str(site)])
    record = site / "Alpha_Pkg-1.0.dist-info" / "RECORD"
    record.write_bytes(record.read_bytes().replace(H2.encode(), H3.encode()))
    after = manifest(path=[str(site)])
    assert before["packages"][0]["files_sha256"] != after["packages"][0]["files_sha256"]
    assert before["packages"][0]["record_sha256"] != after["packages"][0]["record_sha256"]
    assert before["packages"][1] == after["packages"][1]
    assert before["environment_hash"] != after["environment_hash"]


def test_size_only_change_keeps_files_hash(site):
    before = manifest(path=[str(site)])["packages"][0]
    record = site / "Alpha_Pkg-1.0.dist-info" / "RECORD"
    record.write_bytes(record.read_bytes().replace(b",10\n", b",11\n"))
    after = manifest(path=[str(site)])["packages"][0]
    assert after["files_sha256"] == before["files_sha256"]
    assert after["record_sha256"] != before["record_sha256"]


def test_duplicate_on_path_counted_once_first_wins(tmp_path, site):
    same = tmp_path / "same"
    make_dist(same, "Alpha_Pkg", "1.0", ALPHA_ROWS)
    once = manifest(path=[str(site)])
    assert manifest(path=[str(site), str(same)]) == once

    newer = tmp_path / "newer"
    make_dist(newer, "alpha.pkg", "1.1", ALPHA_ROWS)
    first_old = manifest(path=[str(site), str(newer)])["packages"]
    first_new = manifest(path=[str(newer), str(site)])["packages"]
    assert [(p["name"], p["version"]) for p in first_old] == [("alpha-pkg", "1.0"), ("beta", "2.0")]
    assert [(p["name"], p["version"]) for p in first_new] == [("alpha-pkg", "1.1"), ("beta", "2.0")]


def test_dist_without_record(tmp_path):
    make_dist(tmp_path, "legacy", "0.1", None)
    assert manifest(path=[str(tmp_path)])["packages"] == [
        {
            "name": "legacy",
            "version": "0.1",
            "record_sha256": None,
            "files": 0,
            "files_sha256": None,
        }
    ]


# -- sbom -------------------------------------------------------------------------------------


def test_sbom_valid_and_components_are_packages(site, tmp_path):
    env = manifest(path=[str(site)])
    data = sbom(env, tmp_path / "cache")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    doc = json.loads(data)
    assert doc["specVersion"] == "1.6"
    got = sorted(
        (c["type"], c["name"], c["version"], c["purl"], c["hashes"][0]["content"])
        for c in doc["components"]
    )
    assert got == [
        (
            "library",
            "alpha-pkg",
            "1.0",
            "pkg:pypi/alpha-pkg@1.0",
            env["packages"][0]["files_sha256"],
        ),
        ("library", "beta", "2.0", "pkg:pypi/beta@2.0", env["packages"][1]["files_sha256"]),
    ]
    root = doc["metadata"]["component"]
    assert (root["type"], root["name"], root["version"]) == (
        "platform",
        "python-environment",
        platform.python_version(),
    )
    # The environment depends on every package: the dependency graph is complete.
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert sorted(deps[root["bom-ref"]]) == ["pkg:pypi/alpha-pkg@1.0", "pkg:pypi/beta@2.0"]
    assert (
        doc["serialNumber"]
        == uuid.uuid5(environment._SERIAL_NAMESPACE, env["environment_hash"]).urn
    )


def test_sbom_no_record_has_no_hashes(tmp_path):
    make_dist(tmp_path / "site", "legacy", "0.1", None)
    env = manifest(path=[str(tmp_path / "site")])
    data = sbom(env, tmp_path / "cache")
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    (component,) = json.loads(data)["components"]
    assert "hashes" not in component


def test_same_env_same_bytes_anywhere(site, tmp_path):
    env = manifest(path=[str(site)])
    # Separate caches: each document is built afresh, and they must still agree.
    a = sbom(env, tmp_path / "c1")
    b = sbom(env, tmp_path / "c2")
    assert a == b
    other = manifest(path=[str(site / "Alpha_Pkg-1.0.dist-info" / "..")])
    assert sbom(other, tmp_path / "c3") == a
    make_dist(site, "gamma", "3.0", [])
    changed = sbom(manifest(path=[str(site)]), tmp_path / "c4")
    assert json.loads(changed)["serialNumber"] != json.loads(a)["serialNumber"]


def test_cache_file_modes_and_atomic(site, tmp_path):
    env = manifest(path=[str(site)])
    cache = tmp_path / "deep" / "cache"
    data = sbom(env, cache)
    entry = cache / f"{env['environment_hash']}.cdx.json"
    assert entry.read_bytes() == data
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert [p.name for p in cache.iterdir()] == [entry.name]  # no temp file left behind


def test_cache_hit_returns_cached_bytes(site, tmp_path):
    env = manifest(path=[str(site)])
    cache = tmp_path / "cache"
    sbom(env, cache)
    entry = cache / f"{env['environment_hash']}.cdx.json"
    planted = b'{"planted": true}'
    entry.write_bytes(planted)
    assert sbom(env, cache) == planted


def test_corrupt_cache_is_rebuilt(site, tmp_path):
    env = manifest(path=[str(site)])
    cache = tmp_path / "cache"
    good = sbom(env, cache)
    entry = cache / f"{env['environment_hash']}.cdx.json"
    for junk in (b"not json", b"\xff\xfe{", b""):
        entry.write_bytes(junk)
        assert sbom(env, cache) == good
        assert entry.read_bytes() == good


def test_sbom_rejects_bad_hash(site, tmp_path):
    env = manifest(path=[str(site)])
    with pytest.raises(ValueError, match="sha256"):
        sbom({**env, "environment_hash": "../../etc/passwd"}, tmp_path / "cache")
    with pytest.raises(ValueError, match="match"):
        sbom({**env, "environment_hash": "0" * 64}, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_sbom_real_venv(real_env, tmp_path):
    start = time.perf_counter()
    with warnings.catch_warnings():
        # e.g. the library's "dependency graph is incomplete" UserWarning
        warnings.simplefilter("error")
        data = sbom(real_env, tmp_path / "cache")
    assert time.perf_counter() - start < 10
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode()) is None
    purls = {c["purl"] for c in json.loads(data)["components"]}
    assert f"pkg:pypi/qiskit@{metadata.version('qiskit')}" in purls
    assert len(purls) == len(real_env["packages"])
