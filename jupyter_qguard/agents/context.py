"""Which agent, if any, is behind the request being served.

The Authorizer sets it when it admits an agent's request; code that runs for that request in
the same task (the kernel provisioner's `pre_launch` when an agent starts a kernel, the
contents manager's pre-save hook) reads it. A contextvar, not an attribute of the handler:
those callers never see the handler, and each request runs in a task with its own context.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

_current: ContextVar[Any] = ContextVar("qguard_current_agent", default=None)


def set_current_agent(agent: Any) -> None:
    """Called by the Authorizer for each agent request it admits."""
    _current.set(agent)


def current_agent() -> Any:
    """The agent (agents.tokens.Agent) behind the request being served, or None."""
    return _current.get()
