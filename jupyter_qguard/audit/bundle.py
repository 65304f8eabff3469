"""Reproducibility bundles: what a hardware job was, what ran it, and proof that the log saw it.

A bundle is a directory `<bundles dir>/<job id>/`:

  request.json      the request as the kernel sent it (the program's bytes are in the next two)
  program.qpy       the program as QPY             program.qasm3   and as OpenQASM 3
  environment.json  Python and every package, version and RECORD hashes (audit.environment)
  sbom.cdx.json     CycloneDX SBOM of that environment
  job.json          backend, shots, seed, digest, policy version and decision, requester,
                    approvals, provider job id, the job's states
  calibration.json  the device calibration the provider published when the job finished
  result.json       the result
  manifest.json     {"format": "qguard.bundle/v1", "job": id, "files": {name: sha256}} of the above
  inclusion.json    the job's audit entries, each with its RFC 9162 inclusion proof, among them
                    the `bundle.sealed` entry that holds manifest.json's SHA-256
  checkpoint.note   the signed checkpoint the proofs lead to
  verifier.key      the log's public key

So every byte is covered: a file by the manifest, the manifest by an entry, the entries by the
proofs, the proofs by the signed tree head, the signature by the key the verifier trusts.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from ..fsutil import write_atomic
from .log import AuditLog, job_lines
from .merkle import leaf_hash, verify_inclusion
from .note import NoteError, VerifierKey, open_note
from .verify import Problem

FORMAT = "qguard.bundle/v1"
MANIFEST = "manifest.json"
SEAL_FILES = ("inclusion.json", "checkpoint.note", "verifier.key")


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(directory: Path, job_id: str, files: dict[str, bytes | str | dict | list]) -> bytes:
    """Write the content files and their manifest; the manifest's bytes."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    hashes: dict[str, str] = {}
    for name, content in sorted(files.items()):
        if "/" in name or name in (MANIFEST, *SEAL_FILES):
            raise ValueError(f"not a bundle file name: {name!r}")
        data = (
            content.encode()
            if isinstance(content, str)
            else content
            if isinstance(content, bytes)
            else _json(content)
        )
        write_atomic(directory / name, data)
        hashes[name] = sha256(data)
    manifest = _json({"format": FORMAT, "job": job_id, "files": hashes})
    write_atomic(directory / MANIFEST, manifest)
    return manifest


def seal(directory: Path, job_id: str, manifest: bytes, audit: AuditLog) -> int:
    """Log the manifest's hash, sign a checkpoint, and put the proofs in the bundle. Returns
    the entry's index."""
    index = audit.append("bundle.sealed", job=job_id, manifest_sha256=sha256(manifest))
    note = audit.checkpoint(force=True)
    if note is None or audit.key is None:
        raise RuntimeError("the audit log has no signing key: the bundle cannot be sealed")
    size = int(note.split("\n")[1])
    found = list(job_lines(audit.path, job_id, size))
    proofs = audit.proofs([seq for seq, _ in found], size)
    entries = [
        {"line": line.decode(), **proof} for (_, line), proof in zip(found, proofs, strict=True)
    ]
    write_atomic(directory / "inclusion.json", _json({"size": size, "entries": entries}))
    write_atomic(directory / "checkpoint.note", note)
    write_atomic(directory / "verifier.key", audit.key.vkey() + "\n")
    return index


def verify(directory: Path, trusted: VerifierKey | None = None) -> dict[str, Any]:
    """Check every hash, the proofs and the signature. `trusted`: the key to hold the bundle
    to (without one, the bundle's own key is used and the report says so)."""
    problems: list[Problem] = []

    def bad(kind: str, message: str) -> None:
        problems.append(Problem(kind, None, message))

    out: dict[str, Any] = {"path": str(directory), "job": None, "key": None, "trusted": False}
    try:
        manifest_bytes = (directory / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("not a qguard bundle manifest")
    except (OSError, ValueError) as exc:
        bad("manifest", f"{MANIFEST}: {exc}")
        return {**out, "ok": False, "problems": [p.as_dict() for p in problems]}
    out["job"] = job_id = manifest.get("job")
    for name, expected in sorted(manifest["files"].items()):
        try:
            actual = sha256((directory / name).read_bytes())
        except OSError as exc:
            bad("missing", f"{name}: {exc.strerror}")
            continue
        if actual != expected:
            bad("changed", f"{name} changed: its SHA-256 is {actual}, the manifest says {expected}")
    extra = sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in manifest["files"] and p.name not in (MANIFEST, *SEAL_FILES)
    )
    for name in extra:
        bad("extra", f"{name} is not in the manifest")

    try:
        key_text = (directory / "verifier.key").read_text()
        key = VerifierKey.parse(key_text)
        if key_text != key.vkey() + "\n":
            raise NoteError("not written as qguard writes a key (one line)")
    except (OSError, NoteError, UnicodeDecodeError) as exc:
        bad("key", f"verifier.key: {exc}")
        return {**out, "ok": False, "problems": [p.as_dict() for p in problems]}
    out["key"] = key.vkey()
    if trusted is not None:
        out["trusted"] = key == trusted
        if key != trusted:
            bad("key", f"the bundle is signed by {key.vkey()}, not the trusted {trusted.vkey()}")
    try:
        checkpoint = open_note((directory / "checkpoint.note").read_text(), trusted or key)
    except (OSError, NoteError, UnicodeDecodeError) as exc:
        bad("signature", f"checkpoint.note: {exc}")
        return {**out, "ok": False, "problems": [p.as_dict() for p in problems]}
    out["checkpoint_size"] = checkpoint.size

    try:
        raw = (directory / "inclusion.json").read_bytes()
        inclusion = json.loads(raw)
        # Byte for byte as written: no edit hides in the whitespace.
        if raw != _json(inclusion):
            raise ValueError("it is not the file qguard wrote (its layout changed)")
        entries = inclusion["entries"]
        if inclusion["size"] != checkpoint.size or not isinstance(entries, list):
            raise ValueError("its tree size is not the checkpoint's")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        bad("proof", f"inclusion.json: {exc}")
        return {**out, "ok": False, "problems": [p.as_dict() for p in problems]}
    sealed = False
    for item in entries:
        try:
            line = item["line"].encode()
            leaf = leaf_hash(line)
            proof = [base64.b64decode(h, validate=True) for h in item["proof"]]
            index, size = int(item["index"]), int(item["size"])
            entry = json.loads(line)
        except (KeyError, TypeError, ValueError) as exc:
            bad("proof", f"inclusion.json: a malformed entry ({exc})")
            continue
        if leaf.hex() != item.get("leaf") or size != checkpoint.size:
            bad("proof", f"entry {index}: its leaf hash or tree size is not the one recorded")
        elif not verify_inclusion(leaf, index, size, proof, checkpoint.root):
            bad("proof", f"entry {index} is not in the signed tree: its proof fails")
        if entry.get("job") != job_id:
            bad("proof", f"entry {index} is not about job {job_id}")
        if entry.get("kind") == "bundle.sealed":
            sealed = entry.get("manifest_sha256") == sha256(manifest_bytes)
    if not sealed:
        bad("manifest", f"{MANIFEST} is not the one the audit log sealed for job {job_id}")
    out["entries"] = len(entries)
    return {**out, "ok": not problems, "problems": [p.as_dict() for p in problems]}


def load(directory: Path, name: str) -> Any:
    data = (directory / name).read_bytes()
    return json.loads(data) if name.endswith(".json") else data


def bundle_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
