"""`jupyter qguard ...`: the command line of the broker's owner."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp
from sqlalchemy.engine import make_url
from traitlets import Bool, Int, Unicode

from ._version import __version__
from .fakecloud.command import FakeCloudCommand


def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, int]]) -> str:
    """columns: (key, heading, max width). Long values are cut with an ellipsis."""

    def cell(value: Any, width: int) -> str:
        text = "" if value is None else str(value)
        return text if len(text) <= width else text[: width - 1] + "…"

    cells = [[cell(r.get(k), w) for k, _, w in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, (_, h, _) in enumerate(columns)]
    out = ["  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths, strict=True)).rstrip()]
    out += [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(out)


class QGuardCommand(JupyterApp):
    """Base of subcommands: reads the server's config, so it finds the same state."""

    version = __version__
    # The broker's settings live in the server's config files (c.QGuardApp.*).
    config_file_name = Unicode("jupyter_server_config")

    def qguard_settings(self) -> Any:
        from .app import QGuardApp

        return QGuardApp(config=self.config)

    def open_store(self) -> Any:
        from .broker.store import Store

        settings = self.qguard_settings()
        url = make_url(settings.db_url)
        if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
            self.log.error(
                "no qguard state at %s (has the server with jupyter_qguard run yet?)", url.database
            )
            self.exit(1)
        return Store(settings.db_url)


class JobsCommand(QGuardCommand):
    name = "jupyter-qguard-jobs"
    description = "List the broker's jobs, newest first, as a table (or JSON with --json)."

    state = Unicode("", help="Only jobs in these states (comma-separated).").tag(config=True)
    limit = Int(50, help="How many jobs to show.").tag(config=True)
    as_json = Bool(False, help="Print JSON instead of a table.").tag(config=True)

    aliases = {**QGuardCommand.aliases, "state": "JobsCommand.state", "limit": "JobsCommand.limit"}
    flags = {"json": ({"JobsCommand": {"as_json": True}}, "Print JSON instead of a table.")}

    def start(self) -> None:
        store = self.open_store()
        try:
            states = [s for s in self.state.split(",") if s] or None
            jobs = store.list(states=states, limit=self.limit)
        finally:
            store.close()
        if self.as_json:
            print(json.dumps(jobs, indent=2))
            return
        if not jobs:
            print("no jobs")
            return
        rows = [
            {
                **j,
                "id": j["id"][:12],
                "created": j["created_at"][:19].replace("T", " "),
                "notebook": j["requester"].get("notebook") or "",
                "kernel": (j["requester"].get("kernel_id") or "")[:8],
            }
            for j in jobs
        ]
        print(
            format_table(
                rows,
                [
                    ("id", "ID", 12),
                    ("state", "STATE", 16),
                    ("backend", "BACKEND", 20),
                    ("shots", "SHOTS", 9),
                    ("created", "CREATED (UTC)", 19),
                    ("notebook", "NOTEBOOK", 30),
                    ("kernel", "KERNEL", 8),
                    ("reason", "REASON", 60),
                ],
            )
        )


class DoctorCommand(QGuardCommand):
    name = "jupyter-qguard-doctor"
    description = (
        "Probe each sandbox layer on this machine (available or not, and why), list "
        "plaintext credentials in the usual places by name, and the in-server agent "
        "extensions the Jupyter config enables (what they allow, what qguard does about them). "
        "Exits 1 when agent kernels or the server would not start."
    )
    as_json = Bool(False, help="Print JSON instead of text.").tag(config=True)
    flags = {"json": ({"DoctorCommand": {"as_json": True}}, "Print JSON instead of text.")}

    def start(self) -> None:
        from .agents import inprocess
        from .sandbox import doctor

        settings = self.qguard_settings()
        rep = doctor.report(minimum=list(settings.sandbox_minimum))
        # Read as the server would read its config (jupyter server extension list's way), with
        # no server started and no extension imported.
        rep["inprocess_agents"] = inprocess.doctor_report(
            self.config_file_paths,
            inprocess.with_extension_config(self.config_file_paths, self.config),
            mode=settings.inprocess_agents,
            table=dict(settings.inprocess_agent_extensions),
            team=bool(settings.team_broker_url),
            keyring_backend=settings.keyring_backend,
            keyring_options=dict(settings.keyring_backend_options),
        )
        print(json.dumps(rep, indent=2) if self.as_json else doctor.format_report(rep))
        ok = rep["agent_kernels_can_start"] and rep["inprocess_agents"]["server_starts"]
        self.exit(0 if ok else 1)


class PolicyCheckCommand(QGuardCommand):
    name = "jupyter-qguard-policy-check"
    description = "Validate a policy pack: loads, compiles, uses nothing outside itself."

    def start(self) -> None:
        from .policy.engine import PolicyEngine, PolicyError

        if len(self.extra_args) != 1:
            print("usage: jupyter qguard policy check DIR", file=sys.stderr)
            self.exit(2)
        try:
            engine = PolicyEngine(self.extra_args[0])
        except PolicyError as exc:
            print(f"policy pack refused: {exc}", file=sys.stderr)
            self.exit(1)
        backends = engine.data.get("backends", {})
        print(f"policy pack OK: version {engine.version}")
        for name, spec in sorted(backends.items()):
            print(f"  {name:<20} tier {spec.get('tier')}")


class PolicyEvalCommand(QGuardCommand):
    name = "jupyter-qguard-policy-eval"
    description = (
        "Print the decision of the configured policy pack for a job request or a full policy "
        "input (JSON file): allow or deny, reasons, approvals, MFA."
    )
    backend = Unicode("", help="Evaluate for this backend instead of the file's.").tag(config=True)
    workstation_tier = Unicode("", help="Workstation tier (default: the server's).").tag(
        config=True
    )
    aliases = {
        **QGuardCommand.aliases,
        "backend": "PolicyEvalCommand.backend",
        "workstation-tier": "PolicyEvalCommand.workstation_tier",
    }

    def start(self) -> None:
        from .policy import cost as cost_model
        from .policy.engine import PolicyEngine

        if len(self.extra_args) != 1:
            print("usage: jupyter qguard policy eval JOB.json [--backend NAME]", file=sys.stderr)
            self.exit(2)
        settings = self.qguard_settings()
        engine = PolicyEngine(settings.policy_dir, settings.policy_data)
        given = json.loads(Path(self.extra_args[0]).read_text())
        job = given.get("job", given)
        if self.backend:
            job = {**job, "backend": self.backend}
        pack = engine.data.get("backends", {}).get(job.get("backend"), {})
        policy_input = {
            "job": {k: job.get(k) for k in ("backend", "shots", "seed", "max_cost")},
            "backend": {
                "name": job.get("backend"),
                "tier": pack.get("tier"),
                "price": pack.get("price"),
                **(given["backend"] if isinstance(given.get("backend"), dict) else {}),
            },
            "lint": given.get("lint", {"findings": []}),
            "cost": given.get("cost")
            or cost_model.estimate(pack.get("price"), shots=int(job.get("shots") or 0)),
            "usage": given.get("usage", {"spent_today": 0, "jobs_window": 0, "baseline_window": 0}),
            "requester": given.get("requester", {"user": os.environ.get("USER", "you")}),
            "workstation_tier": self.workstation_tier or settings.workstation_tier,
        }
        d = engine.decide(policy_input)
        print("ALLOW" if d.allow else "DENY", f"(policy {engine.version[:12]})")
        for reason in d.deny:
            print(f"  - {reason}")
        if d.allow:
            print(
                f"  approvals required: {d.approvals_required}; step-up MFA: "
                f"{'yes' if d.mfa_required else 'no'}"
            )
        for note in d.notes:
            print(f"  note: {note}")
        print(
            f"  cost estimate: {policy_input['cost']['estimate']:.2f} "
            f"{policy_input['cost']['currency']}"
        )
        self.exit(0 if d.allow else 1)


class PolicyCommand(JupyterApp):
    name = "jupyter-qguard-policy"
    version = __version__
    description = "Evaluate and check policy packs."
    subcommands = {
        "eval": (PolicyEvalCommand, PolicyEvalCommand.description),
        "check": (PolicyCheckCommand, PolicyCheckCommand.description),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.print_help()
            self.exit(2)
        super().start()


class CredentialsSubcommand(QGuardCommand):
    """Base of `credentials ...`: the keyring backend is the server's (QGuardApp settings)."""

    def store(self) -> Any:
        return self.qguard_settings().credential_store()

    def provider_arg(self) -> str:
        if len(self.extra_args) != 1:
            self.log.error(
                "usage: jupyter qguard credentials %s PROVIDER", self.name.split("-")[-1]
            )
            self.exit(2)
        return str(self.extra_args[0])


class CredentialsSetCommand(CredentialsSubcommand):
    name = "jupyter-qguard-credentials-set"
    description = (
        "Store a provider's credential in the keyring (prompted twice, never echoed; read from "
        "stdin when it is not a terminal)."
    )

    def start(self) -> None:
        from . import credentials

        provider = self.provider_arg()
        self.exit(credentials.cli_set(self.store(), provider, stdin_isatty=sys.stdin.isatty()))


class CredentialsListCommand(CredentialsSubcommand):
    name = "jupyter-qguard-credentials-list"
    description = "List the providers with a credential in the keyring, with a fingerprint."

    def start(self) -> None:
        from . import credentials

        print(credentials.cli_list(self.store()))


class CredentialsDeleteCommand(CredentialsSubcommand):
    name = "jupyter-qguard-credentials-delete"
    description = "Delete a provider's credential from the keyring."

    def start(self) -> None:
        from . import credentials

        self.exit(credentials.cli_delete(self.store(), self.provider_arg()))


class CredentialsImportCommand(CredentialsSubcommand):
    name = "jupyter-qguard-credentials-import"
    # The list of places lives with the code that reads them (credentials.py).
    description = "Move plaintext credentials into the keyring; asks before deleting a file."
    overwrite = Bool(False, help="Replace a different value already in the keyring.").tag(
        config=True
    )
    flags = {
        "overwrite": (
            {"CredentialsImportCommand": {"overwrite": True}},
            "Replace a different value already in the keyring.",
        )
    }

    def start(self) -> None:
        from . import credentials

        self.exit(
            credentials.cli_import(
                self.store(),
                Path.home(),
                os.environ,
                credentials.ask_yes_no,
                overwrite=self.overwrite,
            )
        )


class CredentialsCommand(JupyterApp):
    name = "jupyter-qguard-credentials"
    version = __version__
    description = "Provider credentials in the OS keyring (service jupyter-qguard)."
    subcommands = {
        "set": (CredentialsSetCommand, CredentialsSetCommand.description),
        "list": (CredentialsListCommand, CredentialsListCommand.description),
        "delete": (CredentialsDeleteCommand, CredentialsDeleteCommand.description),
        "import": (CredentialsImportCommand, CredentialsImportCommand.description),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.print_help()
            self.exit(2)
        super().start()


class QGuardCLI(JupyterApp):
    name = "jupyter-qguard"
    version = __version__
    description = (
        "jupyter_qguard: agents run quantum code in sandboxed kernels; hardware jobs wait for a "
        "person's approval. Subcommands manage the broker's state."
    )
    subcommands = {
        "jobs": (JobsCommand, JobsCommand.description),
        "doctor": (DoctorCommand, DoctorCommand.description),
        "policy": (PolicyCommand, PolicyCommand.description),
        "credentials": (CredentialsCommand, CredentialsCommand.description),
        "fakecloud": (FakeCloudCommand, FakeCloudCommand.description),
        # By name: cli_audit builds on this module's base command.
        "audit": ("jupyter_qguard.cli_audit.AuditCommand", "The tamper-evident audit log."),
        "bundle": ("jupyter_qguard.cli_audit.BundleCommand", "Reproducibility bundles."),
        "mfa": ("jupyter_qguard.cli_audit.MfaCommand", "Step-up MFA (TOTP) for approvals."),
        "broker": (
            "jupyter_qguard.hub.command.QGuardBrokerService",
            "Run the team's broker as a JupyterHub service (--hub).",
        ),
        "agent-token": (
            "jupyter_qguard.cli_agents.AgentTokenCommand",
            "Tokens for agents that drive sandboxed kernels from outside.",
        ),
        "agent": (
            "jupyter_qguard.cli_agents.AgentCommand",
            "Run an agent process (an MCP server, an agent CLI) confined: `agent run`.",
        ),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.print_help()
            print("\nSubcommands: " + ", ".join(sorted(self.subcommands)))
            self.exit(2)
        super().start()


def main(argv: list[str] | None = None) -> None:
    QGuardCLI.launch_instance(argv=argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
