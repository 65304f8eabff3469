"""The %qguard line and cell magics."""

from __future__ import annotations

import argparse
import ast
import shlex
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class

from .client import QGuardError, client
from .jobs import QGuardJob, describe, submit, to_counts
from .waiting import StatusLine, wait_for_counts

USAGE = """\
%qguard submit CIRCUIT --backend NAME --shots N [--seed S] [--wait] [--timeout SEC]
%%qguard submit --backend NAME --shots N [--seed S] [--wait]
    (in a cell: the cell's last expression is the circuit)
%qguard status JOB | result JOB | cancel JOB | jobs | backends | whoami"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise QGuardUsageError(f"{message}\nusage:\n{USAGE}")


class QGuardUsageError(QGuardError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="%qguard", add_help=False)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", add_help=False)
    s.add_argument("circuit", nargs="?")
    s.add_argument("--backend", required=True)
    s.add_argument("--shots", type=int, required=True)
    s.add_argument("--seed", type=int)
    s.add_argument("--max-cost", type=float, dest="max_cost")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float)
    for name in ("status", "result", "cancel"):
        sub.add_parser(name, add_help=False).add_argument("job")
    for name in ("jobs", "backends", "whoami"):
        sub.add_parser(name, add_help=False)
    return p


class Table:
    """A plain-text table (agent outputs are rendered untrusted, so no HTML is needed)."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str]) -> None:
        self.rows, self.columns = rows, columns

    def __repr__(self) -> str:
        cells = [
            [str(r.get(c, "") if r.get(c) is not None else "") for c in self.columns]
            for r in self.rows
        ]
        widths = [
            max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)
        ]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join(lines) if self.rows else "(none)"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))


@magics_class
class QGuardMagics(Magics):
    @line_cell_magic
    def qguard(self, line: str, cell: str | None = None) -> Any:
        try:
            args = _parser().parse_args(shlex.split(line))
        except QGuardUsageError as exc:
            print(exc)
            return None
        handler = getattr(self, f"_cmd_{args.command}")
        return handler(args, cell)

    # -- submit ---------------------------------------------------------------------------

    def _circuit_from_cell(self, cell: str) -> Any:
        tree = ast.parse(cell)
        if not tree.body or not isinstance(tree.body[-1], ast.Expr):
            raise QGuardUsageError(
                "%%qguard submit: the cell must end with an expression (the circuit)"
            )
        body = ast.Module(body=tree.body[:-1], type_ignores=[])
        last = ast.Expression(body=tree.body[-1].value)
        ns = self.shell.user_ns
        exec(compile(body, "<qguard cell>", "exec"), ns)
        return eval(compile(last, "<qguard cell>", "eval"), ns)

    def _cmd_submit(self, args: argparse.Namespace, cell: str | None) -> Any:
        if cell is not None:
            if args.circuit:
                raise QGuardUsageError(
                    "%%qguard submit takes the circuit from the cell, not a name"
                )
            circuit = self._circuit_from_cell(cell)
            source = cell
        else:
            if not args.circuit:
                raise QGuardUsageError(f"%qguard submit: name the circuit\nusage:\n{USAGE}")
            circuit = self.shell.ev(args.circuit)
            source = self._current_cell_source()
        job = submit(
            circuit,
            backend=args.backend,
            shots=args.shots,
            seed=args.seed,
            max_cost=args.max_cost,
            source=source,
        )
        self.shell.user_ns["qguard_last_job"] = job
        line = StatusLine(job)
        if not args.wait:
            return job
        return wait_for_counts(job, timeout=args.timeout, line=line)

    def _current_cell_source(self) -> str | None:
        hist = self.shell.user_ns.get("In")
        return hist[-1] if hist else None

    # -- the rest -------------------------------------------------------------------------

    def _cmd_status(self, args: argparse.Namespace, cell: str | None) -> Any:
        return client().call("status", {"job_id": args.job})

    def _cmd_result(self, args: argparse.Namespace, cell: str | None) -> Any:
        return to_counts(client().call("result", {"job_id": args.job})["result"])

    def _cmd_cancel(self, args: argparse.Namespace, cell: str | None) -> Any:
        status = QGuardJob({"id": args.job, "state": "?", "backend": "?"}).cancel()
        print(describe(status))
        return None

    def _cmd_jobs(self, args: argparse.Namespace, cell: str | None) -> Any:
        rows = client().call("jobs", {})
        return Table(rows, ["id", "state", "backend", "shots", "created_at", "reason"])

    def _cmd_backends(self, args: argparse.Namespace, cell: str | None) -> Any:
        return Table(client().call("backends", {}), ["name", "provider", "tier", "qubits"])

    def _cmd_whoami(self, args: argparse.Namespace, cell: str | None) -> Any:
        return client().call("whoami", {})


def load_ipython_extension(ipython: Any) -> None:
    from . import ibm_runtime

    ipython.register_magics(QGuardMagics)
    # Code written for qiskit-ibm-runtime talks to the broker instead of IBM's cloud.
    ibm_runtime.install()
