"""A stand-in for an in-server AI agent extension (Jupyter AI's personas, notebook-intelligence):
a real, tiny server extension that jupyter_server imports, links and loads like theirs. It does
nothing an agent does; the tests play the agent (they read the user's token from the server's
runtime file and approve with it), and name this module in QGuardApp.inprocess_agent_extensions.

Enabled with `"jpserver_extensions": {"support.standin_agent": true}`; `support` must be
importable (tests/ on sys.path)."""

from __future__ import annotations

from typing import Any

NAME = "support.standin_agent"
WHAT_IT_ALLOWS = "the test's stand-in: runs tools with the server's authority"
LOADED_KEY = "standin_agent_loaded"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    # Proof, for the tests, that the server really loaded it.
    serverapp.web_app.settings[LOADED_KEY] = True
    serverapp.log.info("%s: loaded", NAME)
