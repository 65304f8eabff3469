"""An agent's capability manifest: the files it may read and write through the contents API, the
backends it may ask for, its limits per job and over time, and (for `jupyter qguard agent run`)
the hosts its process may reach through the egress proxy.

Manifests are YAML or JSON, validated against `policies/agents/manifest.schema.json`; the default
one is `policies/agents/default.yaml`. A token keeps the manifest it was made with (its text is
stored with the token), so editing the file later changes nothing until a new token is made.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

import yaml


class ManifestError(ValueError):
    """A manifest that cannot be read or does not follow the schema; says where and why."""


def agents_dir(policy_dir: str | Path) -> Path:
    return Path(policy_dir) / "agents"


@cache
def _validator(schema_path: Path) -> Any:
    # Imported at the first parse, not with this module: `jupyter qguard agent run` uses its
    # helpers but never validates (the server does), and jsonschema's import takes seconds.
    import jsonschema

    schema = json.loads(schema_path.read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@dataclass(frozen=True)
class Manifest:
    data: dict[str, Any]
    source: str

    @classmethod
    def parse(cls, text: str, *, source: str, policy_dir: str | Path) -> Manifest:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ManifestError(f"{source}: not valid YAML or JSON ({exc})") from None
        validator = _validator(agents_dir(policy_dir) / "manifest.schema.json")
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(top)"
            raise ManifestError(f"{source}: {where}: {first.message}")
        for entry in data.get("network", {}).get("allow", []):
            if not 1 <= int(entry.rpartition(":")[2]) <= 65535:
                raise ManifestError(f"{source}: network/allow: {entry!r}: no such port")
        return cls(data=data, source=source)

    @classmethod
    def load(cls, path: str | Path | None, *, policy_dir: str | Path) -> Manifest:
        """The manifest at `path`, or the default one of the policy pack."""
        file = Path(path) if path else agents_dir(policy_dir) / "default.yaml"
        try:
            text = file.read_text("utf-8")
        except OSError as exc:
            raise ManifestError(f"{file}: {exc.strerror or exc}") from None
        return cls.parse(text, source=str(file) if path else "default", policy_dir=policy_dir)

    # -- files -------------------------------------------------------------------------------

    def may_read(self, path: str) -> bool:
        return self._allowed(path, "read")

    def may_write(self, path: str) -> bool:
        return self._allowed(path, "write")

    def _allowed(self, path: str, how: str) -> bool:
        rel = normalize(path)
        if rel is None:
            return False
        contents = self.data["contents"]
        if any(fnmatchcase(rel, p) for p in contents.get("deny", [])):
            return False
        return any(fnmatchcase(rel, p) for p in contents[how])

    # -- network: exact host:port pairs, for an agent process's egress proxy -----------------

    @property
    def network_allow(self) -> frozenset[tuple[str, int]]:
        """(host, port) pairs, the host lowercased and an IPv6 address without brackets."""
        return frozenset(
            split_host_port(entry) for entry in self.data.get("network", {}).get("allow", [])
        )

    # -- jobs: the policy decides (glob.match on the backend patterns) -----------------------

    @property
    def limits(self) -> dict[str, Any]:
        return dict(self.data["limits"])

    def for_policy(self) -> dict[str, Any]:
        """What the policy reads (input.requester.manifest): backends as patterns and limits."""
        return {"backends": list(self.data["backends"]), "limits": self.limits}


def normalize(path: str) -> str | None:
    """A contents path as the server's root sees it ("" is the root); None if it climbs out,
    or holds a backslash or a NUL byte. (jupyter_server splits API paths at "/" only: on this
    OS `agent\\x` is a file named so at the root, which reading the backslash as a separator
    would take for one in agent/.)"""
    if "\\" in path or "\x00" in path:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return posixpath.join(*parts) if parts else ""


def split_host_port(text: str) -> tuple[str, int]:
    """'api.example.com:443' -> ('api.example.com', 443); '[::1]:8080' -> ('::1', 8080).
    ValueError when it is neither."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"{text!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, [addr]:port")
    return host.lower().rstrip("."), int(port)
