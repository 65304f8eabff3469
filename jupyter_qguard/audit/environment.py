"""The kernel environment of a hardware job, for its reproducibility bundle: a manifest (Python,
packages, versions, RECORD hashes) and a CycloneDX 1.6 SBOM, cached per environment hash.

The manifest reads each distribution's RECORD rather than hashing installed files: RECORD
already holds a hash of every file pip wrote, so hashing it is fast and still pins the files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import platform
import re
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from cyclonedx.model import HashAlgorithm, HashType, Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion
from packageurl import PackageURL

from ..fsutil import write_atomic

# Namespace of the SBOM serial numbers: uuid5(namespace, environment hash).
_SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://jupyter-qguard/sbom/environment")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _canonical_name(name: str) -> str:
    """PEP 503 normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _record_bytes(dist: metadata.Distribution) -> bytes | None:
    # read_text() opens in text mode (newline translation), so hash the file's own bytes when
    # the distribution is on disk; `_path` is private but present on every PathDistribution.
    base = getattr(dist, "_path", None)
    if isinstance(base, Path):
        try:
            return (base / "RECORD").read_bytes()
        except OSError:
            return None
    text = dist.read_text("RECORD")
    return None if text is None else text.encode()


def _package(dist: metadata.Distribution, name: str, version: str) -> dict[str, Any]:
    record = _record_bytes(dist)
    if record is None:  # egg-info and other installs without RECORD
        return {
            "name": name,
            "version": version,
            "record_sha256": None,
            "files": 0,
            "files_sha256": None,
        }
    rows = [r for r in csv.reader(record.decode("utf-8", "replace").splitlines()) if r]
    # RECORD lists itself (and .pyc files) without a hash; only hashed rows pin content.
    pairs = sorted(f"{r[0]},{r[1]}" for r in rows if len(r) > 1 and r[1])
    return {
        "name": name,
        "version": version,
        "record_sha256": hashlib.sha256(record).hexdigest(),
        "files": len(rows),
        "files_sha256": hashlib.sha256("".join(p + "\n" for p in pairs).encode()).hexdigest(),
    }


def _environment_hash(python: dict[str, Any], packages: list[dict[str, Any]]) -> str:
    # Only what defines the environment: the executable path and OS build string differ
    # between machines holding the same environment.
    keyed = {"version": python["version"], "implementation": python["implementation"]}
    return hashlib.sha256(canonical({"python": keyed, "packages": packages})).hexdigest()


def manifest(path: list[str] | None = None) -> dict[str, Any]:
    """The environment seen through `path` (sys.path-like; None: this interpreter's sys.path)."""
    found: dict[str, dict[str, Any]] = {}
    dists = metadata.distributions() if path is None else metadata.distributions(path=path)
    for dist in dists:
        # Parsed once: dist.name and dist.version would each parse METADATA again.
        meta = dist.metadata
        raw = meta["Name"]
        if not raw:  # broken metadata: not importable as a distribution either
            continue
        name = _canonical_name(raw)
        # The first on the path shadows later copies, as it does for import.
        if name not in found:
            found[name] = _package(dist, name, meta["Version"] or "")
    packages = sorted(found.values(), key=lambda p: (p["name"], p["version"]))
    python = {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
    }
    return {
        "python": python,
        "packages": packages,
        "environment_hash": _environment_hash(python, packages),
    }


def _build(env: dict[str, Any]) -> bytes:
    env_hash = env["environment_hash"]
    root = Component(
        # CycloneDX: "platform" is "a runtime environment which interprets or executes
        # software", which is what an interpreter with its installed packages is.
        type=ComponentType.PLATFORM,
        name="python-environment",
        version=env["python"]["version"],
        bom_ref=f"python-environment:{env_hash}",
        properties=[
            Property(name="jupyter-qguard:environment_hash", value=env_hash),
            Property(name="jupyter-qguard:implementation", value=env["python"]["implementation"]),
        ],
    )
    components = []
    for p in env["packages"]:
        purl = PackageURL(type="pypi", name=p["name"], version=p["version"])
        hashes = []
        if p.get("files_sha256"):
            hashes = [HashType(alg=HashAlgorithm.SHA_256, content=p["files_sha256"])]
        components.append(
            Component(
                type=ComponentType.LIBRARY,
                name=p["name"],
                version=p["version"],
                purl=purl,
                bom_ref=purl.to_string(),
                hashes=hashes,
            )
        )
    bom = Bom(components=components, serial_number=uuid.uuid5(_SERIAL_NAMESPACE, env_hash))
    bom.metadata.component = root
    # No timestamp: the document is then a pure function of the environment (rebuilding it
    # gives the same bytes, so a bundle's SBOM can be checked by regenerating it).
    bom.metadata.timestamp = None  # type: ignore[assignment]
    # The environment is made of its packages; without this edge the library warns that the
    # dependency graph is incomplete.
    bom.register_dependency(root, components)
    return make_outputter(bom, OutputFormat.JSON, SchemaVersion.V1_6).output_as_string().encode()


def sbom(env: dict[str, Any], cache_dir: Path) -> bytes:
    """CycloneDX 1.6 JSON SBOM of the manifest `env`, cached as cache_dir/<hash>.cdx.json."""
    env_hash = env.get("environment_hash", "")
    # The hash names a file, and a cached SBOM must describe the environment it is filed under.
    if not isinstance(env_hash, str) or not _HEX64.fullmatch(env_hash):
        raise ValueError("environment_hash is not a sha256 hex digest")
    if _environment_hash(env["python"], env["packages"]) != env_hash:
        raise ValueError("environment_hash does not match the manifest")
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{env_hash}.cdx.json"
    try:
        cached = target.read_bytes()
        json.loads(cached)
        return cached
    except (OSError, ValueError):  # missing, unreadable or corrupt: rebuild
        pass
    data = _build(env)
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(target, data)
    return data
