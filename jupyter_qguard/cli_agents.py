"""`jupyter qguard agent-token create|list|revoke`: tokens for agents that reach Jupyter from
outside (Jupyter AI, MCP servers, scripts). A token is printed once, when it is made; the server
keeps its SHA-256 digest only.

`jupyter qguard agent run --name NAME [--manifest FILE] [--url URL] -- COMMAND ARGS...`: run an
agent's own process confined, with a token of its run's own (agents/run.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Int, List, Unicode

from .agents.manifest import Manifest, ManifestError
from .cli import QGuardCommand, format_table
from .cli_audit import _group

if TYPE_CHECKING:
    # Imported where used: the store behind them loads jsonschema, seconds that `agent run`
    # (an MCP server's start) should not wait for.
    from .agents.tokens import AgentTokens


class AgentTokenSubcommand(QGuardCommand):
    def tokens(self) -> AgentTokens:
        from .agents.tokens import AgentTokens
        from .broker.store import Store

        settings = self.qguard_settings()
        # The first token may come before the server ever ran: make the state directory.
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._store = Store(settings.db_url)
        return AgentTokens(self._store.engine, policy_dir=settings.policy_dir)

    def fail(self, message: str) -> None:
        print(f"jupyter qguard agent-token: {message}", file=sys.stderr)
        self.exit(1)


class AgentTokenCreate(AgentTokenSubcommand):
    name = "jupyter-qguard-agent-token-create"
    description = "Make a token for an agent; it is printed once and stored hashed."

    agent_name = Unicode("", help="The agent's name, shown in the panel and the audit log.").tag(
        config=True
    )
    manifest = Unicode(
        "", help="Capability manifest (YAML or JSON). Default: the policy pack's agents/default."
    ).tag(config=True)
    ttl = Unicode("", help="Lifetime: 90m, 12h, 7d, 2w. Default: until revoked.").tag(config=True)
    as_json = Bool(False, help="Print JSON (with the token) instead of text.").tag(config=True)

    aliases = {
        **QGuardCommand.aliases,
        "name": "AgentTokenCreate.agent_name",
        "manifest": "AgentTokenCreate.manifest",
        "ttl": "AgentTokenCreate.ttl",
    }
    flags = {"json": ({"AgentTokenCreate": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        from .agents.tokens import AgentTokenError, parse_ttl

        if not self.agent_name:
            self.fail("--name is required")
        settings = self.qguard_settings()
        try:
            manifest = Manifest.load(self.manifest or None, policy_dir=settings.policy_dir)
            ttl = parse_ttl(self.ttl) if self.ttl else None
            row, token = self.tokens().create(self.agent_name, manifest, ttl=ttl)
        except (ManifestError, AgentTokenError) as exc:
            self.fail(str(exc))
            return
        if self.as_json:
            print(json.dumps({**row, "token": token}, indent=2))
            return
        print(token)
        expires = row["expires_at"] or "never (revoke it with `jupyter qguard agent-token revoke`)"
        print(
            f"\nagent {row['name']}, token id {row['id']}, manifest {row['manifest']}, "
            f"expires {expires}.\nThis is the only time the token is shown: give it to the agent "
            "as `Authorization: token <token>`.",
            file=sys.stderr,
        )


class AgentTokenList(AgentTokenSubcommand):
    name = "jupyter-qguard-agent-token-list"
    description = "List agent tokens (never the tokens themselves)."
    as_json = Bool(False, help="Print JSON instead of a table.").tag(config=True)
    flags = {"json": ({"AgentTokenList": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        rows: list[dict[str, Any]] = self.tokens().list()
        if self.as_json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no agent tokens")
        else:

            def minute(iso: str | None) -> str:
                return iso[:16].replace("T", " ") if iso else "never"

            shown = [
                {**r, "created_at": minute(r["created_at"]), "expires_at": minute(r["expires_at"])}
                for r in rows
            ]
            columns = [
                ("id", "ID", 12),
                ("name", "NAME", 24),
                ("state", "STATE", 8),
                ("created_at", "CREATED (UTC)", 16),
                ("expires_at", "EXPIRES (UTC)", 16),
                ("manifest", "MANIFEST", 1024),
            ]
            print(format_table(shown, columns))


class AgentTokenRevoke(AgentTokenSubcommand):
    name = "jupyter-qguard-agent-token-revoke"
    description = "Revoke a token by id, or every token of an agent by name. Takes effect at once."

    def start(self) -> None:
        if len(self.extra_args) != 1:
            self.fail("give one token id or agent name")
        count = self.tokens().revoke(self.extra_args[0])
        if count == 0:
            self.fail(f"no live token with id or name {self.extra_args[0]!r}")
        print(f"revoked {count} token{'s' if count != 1 else ''}")


AgentTokenCommand = _group(
    "AgentTokenCommand",
    "Tokens for agents: they can drive sandboxed kernels and files in their manifest, no more.",
    {"create": AgentTokenCreate, "list": AgentTokenList, "revoke": AgentTokenRevoke},
)


class AgentRunCommand(QGuardCommand):
    name = "jupyter-qguard-agent-run"
    description = (
        "Run COMMAND (an MCP server, an agent CLI, an ACP agent) confined as an agent kernel is: "
        "the workspace as its manifest says, a HOME of its own, none of your credentials, the "
        "network only to its manifest's hosts through an audited egress proxy, and a token of "
        "its run's own. Usage: jupyter qguard agent run --name NAME [--manifest FILE] "
        "[--url URL] -- COMMAND ARGS..."
    )
    agent_name = Unicode(
        "", help="The agent's name (its token's, in the panel and the audit log)."
    ).tag(config=True)
    manifest = Unicode(
        "", help="Capability manifest (YAML or JSON). Default: the server's agents/default."
    ).tag(config=True)
    url = Unicode(
        "", help="The Jupyter server. Default: JUPYTER_URL, else the one running server."
    ).tag(config=True)
    lease = Int(60, help="Seconds the run's token lives without a renewal (5-600).").tag(
        config=True
    )
    read = List(
        Unicode(), help="More paths the agent may read (and run), beside its install tree."
    ).tag(config=True)
    env = List(
        Unicode(), help="More environment for the agent: NAME (its value here) or NAME=VALUE."
    ).tag(config=True)

    aliases = {
        **QGuardCommand.aliases,
        "name": "AgentRunCommand.agent_name",
        "manifest": "AgentRunCommand.manifest",
        "url": "AgentRunCommand.url",
        "lease": "AgentRunCommand.lease",
        "read": "AgentRunCommand.read",
        "env": "AgentRunCommand.env",
    }

    def private_paths(self) -> list[str]:
        """Where the server keeps its state, audit log and keyring file, and where Jupyter
        keeps the person's tokens and config: never the agent's to read, wherever they are.
        Read from the config (QGuardApp's own defaults) without importing the server."""
        from jupyter_core.paths import jupyter_config_dir, jupyter_data_dir, jupyter_runtime_dir

        cfg = self.config.get("QGuardApp", {})
        state = cfg.get("state_dir") or os.path.join(jupyter_data_dir(), "qguard")
        paths = [state, jupyter_runtime_dir(), jupyter_config_dir()]
        paths += [cfg.get(k, "") for k in ("audit_dir", "audit_witness_dir", "bundles_dir")]
        paths.append(dict(cfg.get("keyring_backend_options", {})).get("file_path", ""))
        return [str(p) for p in paths if p]

    def fail(self, message: str, code: int = 1) -> None:
        # stderr only, ever: stdout is the agent's (an MCP server's JSON-RPC).
        print(f"jupyter qguard agent run: {message}", file=sys.stderr)
        self.exit(code)

    def start(self) -> None:
        import asyncio

        from .agents.run import AgentRun, RunFailed, RunOptions
        from .agents.run_api import ServerNotFound, find_server

        if not self.agent_name:
            self.fail("--name is required", 2)
        if not self.extra_args:
            self.fail("give the command after --: jupyter qguard agent run --name N -- CMD", 2)
        options = RunOptions(
            name=self.agent_name,
            command=list(self.extra_args),
            manifest=self.manifest,
            url=self.url,
            lease_seconds=self.lease,
            read=list(self.read),
            env=list(self.env),
            sensitive=self.private_paths(),
        )
        try:
            server = find_server(self.url, os.environ)
            code = asyncio.run(AgentRun(options, server, self.log).main())
        except ServerNotFound as exc:
            self.fail(str(exc))
            return
        except RunFailed as exc:
            self.fail(str(exc), exc.code)
            return
        self.exit(code)


AgentCommand = _group(
    "AgentCommand",
    "Agent processes: run one confined (jupyter qguard agent run).",
    {"run": AgentRunCommand},
)
