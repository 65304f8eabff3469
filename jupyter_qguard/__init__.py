"""jupyter_qguard: agents run quantum code in a sandboxed kernel; hardware needs a human.

This module is imported both by the Jupyter server and inside agent kernels, so it imports
nothing heavy and nothing of the broker at import time.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import QGuardApp

    return [{"module": "jupyter_qguard", "app": QGuardApp}]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext jupyter_qguard` (automatic in qguard agent kernels): the %qguard magics."""
    from .kernel.magics import load_ipython_extension as load

    load(ipython)


__all__ = ["__version__"]
