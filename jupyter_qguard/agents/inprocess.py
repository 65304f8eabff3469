"""Server extensions that let an AI agent act inside the Jupyter server, with its authority.

Jupyter AI's personas (Jupyternaut's bash and file tools, the ACP agents: Claude Code, Codex,
...), notebook-intelligence's tools, jupyter-server-mcp's MCP port and jupyter-mcp-server's
in-server `/mcp` run in the server's own process or its children, as the server's OS user. They
never present an agent token, so nothing in agents/ tells them from the person: a shell tool of
theirs can read the server's `jpserver-*.json` (the user's token) and approve a hardware job with
one POST to /qguard/api/jobs/<id>/approve.

`QGuardApp.inprocess_agents` says what qguard does while one is enabled:

- `require_mfa`: every approval of a job that is not on a simulator needs a TOTP code, whatever
  the policy decided (the broker's `approve`; broker/service.py `mfa_reasons`);
- `refuse`: the server does not start;
- `allow`: a warning at start, nothing else.

Which extensions are enabled is read from the running server's ExtensionManager (the server
imported them; this module never does), and for `jupyter qguard doctor` from the Jupyter config
files, as `jupyter server extension list` reads them, without starting a server.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.extension.config import ExtensionConfigManager
from traitlets.config import Application, Config

# Module name (a jpserver_extensions key, an extension point's module, or its ExtensionApp's
# name) -> what it lets an agent do. Checked against each package's metadata: Jupyter AI 3's
# `jupyter_ai` is a meta-package whose server extensions are the separate packages below (each
# with its own jupyter_server_config.d file); Jupyter AI 2's `jupyter_ai` was one extension.
DEFAULT_EXTENSIONS: dict[str, str] = {
    "jupyter_ai": "Jupyter AI 2's chat agents run in the server process, with its authority",
    "jupyter_ai_persona_manager": "runs every installed Jupyter AI persona (entry points "
    "jupyter_ai.personas) inside the server process, with its authority",
    "jupyter_ai_jupyternaut": "Jupyternaut's tools run shell commands (bash) and read and write "
    "any file as the server's user",
    "jupyter_ai_acp_client": "starts ACP agents (Claude Code, Codex, Copilot, ...) as "
    "subprocesses of the server, with file read/write and terminals as the server's user",
    "jupyter_ai_tools": "tools for AI agents that run shell commands (bash), edit notebooks and "
    "files and run cells, as the server's user",
    "jupyterlab_commands_toolkit": "lets an agent's tools run any JupyterLab command in the "
    "person's open browser tab",
    "jupyter_server_mcp": "opens an MCP port with no authentication whose tools (notebooks, "
    "files, JupyterLab commands) act as the server's user, also outside the root directory",
    "notebook_intelligence": "its agent tools run shell commands, read and write files and run "
    "notebook cells as the server's user; Claude Code and ACP agents run as its subprocesses",
    "jupyter_mcp_server": "serves /mcp in the server: a client with the user's token edits "
    "notebooks, reads files and runs code in kernels it starts itself (any kernelspec)",
}

# jupyter-server-mcp (0.4.1, jupyter_server_mcp/extension.py and mcp_server.py): its
# ExtensionApp `MCPExtensionApp` has `mcp_port` (0: a free port, written to
# jpserver-mcp-<pid>.json in the runtime dir); the port is bound by `MCPServer` on its `host`.
MCP_EXTENSION = "jupyter_server_mcp"
MCP_APP_CLASS = "MCPExtensionApp"
MCP_PORT_TRAIT = "mcp_port"
MCP_DEFAULT_PORT = 3001
MCP_HOST_CLASS = "MCPServer"
MCP_DEFAULT_HOST = "localhost"

MODES = ("require_mfa", "refuse", "allow")
SETTING = "QGuardApp.inprocess_agents"


@dataclass(frozen=True)
class McpEndpoint:
    """Where jupyter-server-mcp listens, and where that was read."""

    host: str
    port: int | None
    source: str

    def describe(self) -> str:
        if self.port == 0:
            where = f"{self.host}:<a free port, named in jpserver-mcp-<pid>.json>"
        elif self.port is None:
            where = f"{self.host}:<unreadable port>"
        else:
            where = f"{self.host}:{self.port}"
        return f"MCP port {where} with no authentication, {self.source}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "authenticated": False,
            "source": self.source,
        }


@dataclass
class InProcessAgent:
    """One enabled extension of the table: its name there, what it allows, how it was found."""

    name: str
    allows: str
    found_as: list[str] = field(default_factory=list)
    mcp: McpEndpoint | None = None

    def describe(self) -> str:
        extra = f"; {self.mcp.describe()}" if self.mcp else ""
        return f"{self.name} ({self.allows}{extra})"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "allows": self.allows}
        if self.found_as:
            out["found_as"] = list(self.found_as)
        if self.mcp is not None:
            out["mcp"] = self.mcp.as_dict()
        return out


def _matches(key: str, module: str) -> bool:
    return module == key or module.startswith(key + ".")


def _port(value: Any) -> int | None:
    # A command-line value for a class the config has not loaded stays a string
    # (traitlets' DeferredConfigString) until a trait parses it.
    try:
        return int(str(value))
    except ValueError:
        return None


def _configured(config: Any, section: str, name: str) -> Any:
    # dict.get: a traitlets Config makes a missing section on item access.
    part = dict.get(config, section) if config is not None else None
    return dict.get(part, name) if isinstance(part, dict) else None


def mcp_endpoint(app: Any, config: Any) -> McpEndpoint:
    """jupyter-server-mcp's port: its ExtensionApp's trait when the server linked it (the value
    its config and command line gave it), else the server config's, else the documented 3001."""
    host_value = _configured(
        getattr(app, "config", None) if app is not None else config, MCP_HOST_CLASS, "host"
    )
    host = str(host_value) if host_value else MCP_DEFAULT_HOST
    if app is not None and app.has_trait(MCP_PORT_TRAIT):
        return McpEndpoint(
            host, _port(getattr(app, MCP_PORT_TRAIT)), f"from {MCP_APP_CLASS}.{MCP_PORT_TRAIT}"
        )
    value = _configured(config, MCP_APP_CLASS, MCP_PORT_TRAIT)
    if value is not None:
        return McpEndpoint(
            host, _port(value), f"from {MCP_APP_CLASS}.{MCP_PORT_TRAIT} in the config"
        )
    return McpEndpoint(
        host,
        MCP_DEFAULT_PORT,
        f"its documented default: nothing sets {MCP_APP_CLASS}.{MCP_PORT_TRAIT}",
    )


def enabled_in_server(manager: Any, table: dict[str, str], config: Any) -> list[InProcessAgent]:
    """The table's extensions that the running server's ExtensionManager has enabled. A package
    counts under a key when its name, one of its extension points' modules or one of their
    ExtensionApps' names is the key or inside it (jupyter_server_mcp.extension)."""
    found: dict[str, InProcessAgent] = {}
    for package_name, package in sorted(manager.extensions.items()):
        if not package.enabled:
            continue
        points = list(package.extension_points.items())
        names = [package_name]
        names += [point.module_name for _, point in points]
        names += [point_name for point_name, _ in points]
        for key, allows in table.items():
            if not any(_matches(key, n) for n in names):
                continue
            agent = found.setdefault(key, InProcessAgent(key, allows))
            agent.found_as.append(package_name)
            if key == MCP_EXTENSION:
                apps = [p.app for _, p in points if p.app is not None and p.app.name == key]
                agent.mcp = mcp_endpoint(apps[0] if apps else None, config)
    return [found[k] for k in sorted(found)]


# -- what qguard does about them ---------------------------------------------------------------


def action(mode: str, *, team: bool) -> str:
    """What qguard does while such an extension is enabled, in words."""
    if mode == "refuse":
        return "the server does not start"
    if mode == "allow":
        return "nothing beyond this warning: approvals are held to the policy's MFA only"
    if team:
        return (
            "approvals are made on the team broker's pages, not in this server; whether they "
            "need a code is the team policy's"
        )
    return "every approval of a job that is not on a simulator needs a TOTP code"


@dataclass
class Gate:
    """What enforce() found at start and decided, for the broker (apply) and the audit log."""

    mode: str
    agents: list[InProcessAgent]
    team: bool = False

    @property
    def names(self) -> str:
        return ", ".join(a.name for a in self.agents)

    @property
    def mfa_reason(self) -> str | None:
        """The sentence the broker gives with each approval it holds to MFA; None: none."""
        if self.mode != "require_mfa" or not self.agents or self.team:
            return None
        one = len(self.agents) == 1
        return (
            f"in-server agent extension{'' if one else 's'} {self.names} "
            f"{'is' if one else 'are'} enabled and can act with this server's authority, so "
            f"approving a job that is not on a simulator needs step-up MFA ({SETTING} = "
            "require_mfa)"
        )


def warning_lines(gate: Gate) -> list[str]:
    does = action(gate.mode, team=gate.team)
    return [
        f"qguard: in-server agent extension {agent.describe()} is enabled; {SETTING} = "
        f"{gate.mode}: {does}"
        for agent in gate.agents
    ]


def refusal_line(gate: Gate) -> str:
    return (
        f"qguard: not starting: in-server agent extension(s) {gate.names} can act with this "
        f"server's authority (and approve jobs with the user's token); disable them (jupyter "
        f"server extension disable NAME) or set {SETTING} to require_mfa or allow"
    )


def enforce(app: Any) -> Gate:
    """At the extension's initialize: log one warning per in-server agent extension, and stop
    the server in `refuse` mode. jupyter_server catches Exceptions from an extension's loading
    and goes on without it, so the refusal is its own way of stopping: log.critical, then the
    application's exit(1) (traitlets Application.exit: SystemExit, which it does not catch)."""
    serverapp = app.serverapp
    gate = Gate(
        mode=app.inprocess_agents,
        agents=enabled_in_server(
            serverapp.extension_manager, dict(app.inprocess_agent_extensions), serverapp.config
        ),
        team=bool(app.team_broker_url),
    )
    for line in warning_lines(gate):
        app.log.warning(line)
    if gate.mode == "refuse" and gate.agents:
        app.log.critical(refusal_line(gate))
        app.exit(1)
    return gate


def apply(gate: Gate, broker: Any) -> None:
    """Hand the broker the MFA reason (require_mfa) and put what was found in the audit log."""
    broker.forced_mfa_reason = gate.mfa_reason
    if gate.agents:
        broker.record(
            "server.inprocess_agents",
            mode=gate.mode,
            extensions=[a.as_dict() for a in gate.agents],
            mfa_forced=gate.mfa_reason is not None,
        )


# -- jupyter qguard doctor: the same, from the config files ------------------------------------


def _enabled_where(config_paths: list[str], traitlets_config: Any) -> dict[str, tuple[bool, str]]:
    """{extension: (enabled, where)} as the server would see it: ServerApp.jpserver_extensions
    (config files, command line) first, then the jupyter_server_config.d files of each config
    directory, the first directory in Jupyter's order winning (ServerApp.find_server_extensions)."""
    out: dict[str, tuple[bool, str]] = {}
    for path in config_paths:
        manager = ExtensionConfigManager(read_config_path=[path])
        for name, enabled in manager.get_jpserver_extensions().items():
            out.setdefault(name, (bool(enabled), path))
    own = _configured(traitlets_config, "ServerApp", "jpserver_extensions") or {}
    for name, enabled in dict(own).items():
        out[name] = (bool(enabled), "ServerApp.jpserver_extensions")
    return out


def _installed(name: str) -> bool:
    # find_spec of the top-level package only: a dotted name would import its parents.
    try:
        return importlib.util.find_spec(name.split(".", 1)[0]) is not None
    except (ImportError, ValueError):
        return False


def keyring_note(keyring_backend: str, keyring_options: dict[str, Any]) -> dict[str, Any]:
    """Whether the TOTP secret is readable by a process of the same OS user: what a code asked
    of the person is worth against an in-server agent."""
    if keyring_backend.startswith("keyrings.alt.file."):
        where = keyring_options.get("file_path") or "the backend's default file"
        return {
            "keyring_backend": keyring_backend,
            "readable_by_same_user": True,
            "note": f"the TOTP secret is in a file ({where}) any process of this OS user, an "
            "in-server agent included, can read and compute codes from: team mode, or agents "
            "outside the server as another OS user, keep it out of their reach",
        }
    return {
        "keyring_backend": keyring_backend or "the OS keyring that `keyring` picks",
        "readable_by_same_user": None,
        "note": "an OS keyring is no boundary against a process of the same OS user either (an "
        "unlocked Secret Service collection or the Windows Credential Manager give items to any "
        "of its programs; the macOS Keychain lets in the Python that stored them): team mode, "
        "or agents outside the server as another OS user, keep the secret out of their reach",
    }


def doctor_report(
    config_paths: list[str],
    config: Any,
    *,
    mode: str,
    table: dict[str, str],
    team: bool,
    keyring_backend: str,
    keyring_options: dict[str, Any],
) -> dict[str, Any]:
    """The in-server agent extensions the Jupyter config enables, what they allow, and what
    `inprocess_agents` will do about them when the server starts."""
    enabled = _enabled_where(config_paths, config)
    rows = []
    for name, (on, where) in sorted(enabled.items()):
        keys = [k for k in table if _matches(k, name)]
        if not on or not keys:
            continue
        agent = InProcessAgent(keys[0], table[keys[0]], [name])
        if keys[0] == MCP_EXTENSION:
            agent.mcp = mcp_endpoint(None, config)
        rows.append({**agent.as_dict(), "enabled_in": where, "installed": _installed(name)})
    effective = [r for r in rows if r["installed"]]
    if effective:
        does = action(mode, team=team)
    else:
        does = "nothing: none of them is installed" if rows else "nothing: none is enabled"
    return {
        "mode": mode,
        "extensions": rows,
        "action": does,
        "server_starts": not (mode == "refuse" and effective),
        "totp_secret": keyring_note(keyring_backend, keyring_options),
    }


def format_doctor(rep: dict[str, Any]) -> list[str]:
    lines = ["In-server agent extensions (they act with the server's authority, no agent token):"]
    if not rep["extensions"]:
        lines.append("  none enabled in the Jupyter config.")
        return lines
    for row in rep["extensions"]:
        state = "" if row["installed"] else " [not installed: the server will skip it]"
        lines.append(f"  {row['name']}{state}: {row['allows']}")
        if row.get("mcp"):
            mcp = row["mcp"]
            port = "a free port" if mcp["port"] == 0 else mcp["port"]
            lines.append(f"    MCP port {mcp['host']}:{port}, UNAUTHENTICATED, {mcp['source']}")
        lines.append(f"    enabled in {row['enabled_in']}")
    lines.append(f"  {SETTING} = {rep['mode']}: {rep['action']}")
    if rep["mode"] == "require_mfa" and any(r["installed"] for r in rep["extensions"]):
        lines.append(f"  TOTP secret: {rep['totp_secret']['note']}")
    return lines


def with_extension_config(config_paths: list[str], server_config: Config) -> Config:
    """The server's config over jupyter-server-mcp's own config file (an ExtensionApp loads
    jupyter_{name}_config, then takes the server's config over it), for the doctor."""
    loader = Application()  # only its config-file loading
    loader.load_config_file(f"jupyter_{MCP_EXTENSION}_config", path=config_paths)
    merged = Config()
    merged.merge(loader.config)
    merged.merge(server_config)
    return merged
