"""`jupyter qguard ...`: the command line of the broker's owner."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp
from sqlalchemy.engine import make_url
from traitlets import Bool, Int, Unicode

from ._version import __version__


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

    aliases = {"state": "JobsCommand.state", "limit": "JobsCommand.limit"}
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
        "Probe each sandbox layer on this machine (available or not, and why), and list "
        "plaintext credentials in the usual places by name."
    )
    as_json = Bool(False, help="Print JSON instead of text.").tag(config=True)
    flags = {"json": ({"DoctorCommand": {"as_json": True}}, "Print JSON instead of text.")}

    def start(self) -> None:
        from .sandbox import doctor

        settings = self.qguard_settings()
        rep = doctor.report(minimum=list(settings.sandbox_minimum))
        print(json.dumps(rep, indent=2) if self.as_json else doctor.format_report(rep))
        self.exit(0 if rep["agent_kernels_can_start"] else 1)


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
