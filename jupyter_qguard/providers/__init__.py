"""Hardware and simulator providers, found through the `jupyter_qguard.providers` entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from .base import Provider

GROUP = "jupyter_qguard.providers"


def provider_classes() -> dict[str, type[Provider]]:
    found: dict[str, type[Provider]] = {}
    for ep in entry_points(group=GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            raise TypeError(f"entry point {ep.name} in {GROUP} is not a Provider subclass")
        found[ep.name] = cls
    return found


__all__ = ["GROUP", "Provider", "provider_classes"]
