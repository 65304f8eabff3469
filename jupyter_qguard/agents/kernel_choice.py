"""What an agent gets from the server's kernel and session managers.

MCP servers and agent CLIs are written for a plain Jupyter server: jupyter-mcp-server asks for
the `python3` kernelspec (hard-coded) and lists kernels and sessions to find its own. For an
agent request (the Authorizer admitted it and set `context.current_agent()` for its task):

- a kernel it starts, whatever kernelspec it names, is `QGuardApp.agent_kernel_name` unless the
  named spec already runs under the qguard provisioner: never an unsandboxed kernel;
- listing kernels or sessions shows only the kernels its own token started (and their
  sessions), not the person's nor another agent's, and listing kernelspecs only those that
  run under the qguard provisioner: filtered listings, not a 403, so the client's own
  bookkeeping keeps working.

The managers are the server's own instances (their classes are configurable, and other
extensions bring their own), so qguard wraps those instances' methods rather than asking for
classes of its own. Requests without an agent pass straight through.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

from jupyter_core.utils import ensure_async

from .context import current_agent
from .provisioners import runs_under_qguard

log = logging.getLogger(__name__)

_WRAPPED = "_qguard_agent_view"


class AgentKernelChoice:
    """Holds the agent kernelspec's name and the broker (which knows who started what)."""

    def __init__(self, *, kernel_spec_manager: Any, broker: Any, agent_kernel_name: str) -> None:
        self.kernel_spec_manager = kernel_spec_manager
        self.broker = broker
        self.agent_kernel_name = agent_kernel_name

    def problem(self) -> str | None:
        """Why agents could not get a kernel at all (None: they can): the configured
        kernelspec is missing or does not run under the qguard provisioner."""
        name = self.agent_kernel_name
        if runs_under_qguard(self.kernel_spec_manager, name):
            return None
        return (
            f"QGuardApp.agent_kernel_name is {name!r}, which is not a kernelspec that runs under "
            "the qguard provisioner: agents cannot start kernels"
        )

    def kernel_name_for(self, agent: Any, asked: Any) -> str:
        """The kernelspec an agent's kernel is started with."""
        if isinstance(asked, str) and asked and runs_under_qguard(self.kernel_spec_manager, asked):
            return asked
        chosen = self.agent_kernel_name
        if asked != chosen:
            log.info(
                "qguard: agent %s asked for kernelspec %r; it gets %r (agents run in qguard "
                "kernels only)",
                agent.name,
                asked,
                chosen,
            )
        return chosen

    def is_its_own(self, agent: Any, kernel_id: Any) -> bool:
        return bool(kernel_id) and self.broker.kernel_starter(str(kernel_id)) == agent.token_id


def wire(settings: dict[str, Any], serverapp: Any, broker: Any, agent_kernel_name: str) -> None:
    """The extension's part at start: the kernel choice and the edit notes in the web app's
    settings (the Authorizer reads them there), the managers wrapped, and a warning if agents
    could not get a kernel at all."""
    from .authorizer import AGENT_EDITS_KEY, AGENT_KERNELS_KEY
    from .collaboration import AgentEdits

    choice = AgentKernelChoice(
        kernel_spec_manager=serverapp.kernel_spec_manager,
        broker=broker,
        agent_kernel_name=agent_kernel_name,
    )
    settings[AGENT_KERNELS_KEY] = choice
    settings.setdefault(AGENT_EDITS_KEY, AgentEdits())
    install(serverapp.kernel_manager, serverapp.session_manager, choice)
    problem = choice.problem()
    if problem:
        log.warning("qguard: %s", problem)


def install(kernel_manager: Any, session_manager: Any, choice: AgentKernelChoice) -> None:
    """Wrap the server's managers once (a second call, as in a test server reused, is a
    no-op)."""
    if getattr(kernel_manager, _WRAPPED, None) is not None:
        setattr(kernel_manager, _WRAPPED, choice)
        return
    setattr(kernel_manager, _WRAPPED, choice)
    start_kernel = kernel_manager.start_kernel
    list_kernels = kernel_manager.list_kernels
    list_sessions = session_manager.list_sessions

    @functools.wraps(start_kernel)
    async def start_kernel_for_agent(*args: Any, **kwargs: Any) -> Any:
        agent = current_agent()
        if agent is not None:
            kwargs["kernel_name"] = getattr(kernel_manager, _WRAPPED).kernel_name_for(
                agent, kwargs.get("kernel_name") or kernel_manager.default_kernel_name
            )
        return await ensure_async(start_kernel(*args, **kwargs))

    @functools.wraps(list_kernels)
    def list_kernels_for_agent(*args: Any, **kwargs: Any) -> Any:
        kernels = list_kernels(*args, **kwargs)
        agent = current_agent()
        if agent is None:
            return kernels
        mine = getattr(kernel_manager, _WRAPPED)
        return [k for k in kernels if mine.is_its_own(agent, k.get("id"))]

    @functools.wraps(list_sessions)
    async def list_sessions_for_agent(*args: Any, **kwargs: Any) -> Any:
        sessions = await ensure_async(list_sessions(*args, **kwargs))
        agent = current_agent()
        if agent is None:
            return sessions
        mine = getattr(kernel_manager, _WRAPPED)
        return [s for s in sessions if mine.is_its_own(agent, (s.get("kernel") or {}).get("id"))]

    kernel_manager.start_kernel = start_kernel_for_agent
    kernel_manager.list_kernels = list_kernels_for_agent
    session_manager.list_sessions = list_sessions_for_agent
    _install_kernelspecs(choice.kernel_spec_manager)


def _install_kernelspecs(kernel_spec_manager: Any) -> None:
    get_all_specs = kernel_spec_manager.get_all_specs

    def only_qguard(specs: dict[str, Any]) -> dict[str, Any]:
        if current_agent() is None:
            return specs
        return {n: s for n, s in specs.items() if runs_under_qguard(kernel_spec_manager, n)}

    # Sync or async as the original: other callers (JupyterLab's page) call it directly.
    if inspect.iscoroutinefunction(get_all_specs):

        @functools.wraps(get_all_specs)
        async def get_all_specs_async(*args: Any, **kwargs: Any) -> Any:
            return only_qguard(await get_all_specs(*args, **kwargs))

        kernel_spec_manager.get_all_specs = get_all_specs_async
    else:

        @functools.wraps(get_all_specs)
        def get_all_specs_sync(*args: Any, **kwargs: Any) -> Any:
            return only_qguard(get_all_specs(*args, **kwargs))

        kernel_spec_manager.get_all_specs = get_all_specs_sync
