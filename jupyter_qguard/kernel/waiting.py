"""Waiting for a job in a notebook: one live status line, and an interrupt that stops the wait,
never the job. Shared by the magics, the Qiskit backend and the PennyLane device."""

from __future__ import annotations

from typing import Any

from .jobs import QGuardJob, describe


class _Line:
    """Plain text: agent outputs are rendered as untrusted, so no HTML is needed."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class StatusLine:
    """One display line per job, updated in place (a no-op outside IPython)."""

    def __init__(self, job: QGuardJob) -> None:
        self.job = job
        self._handle: Any = None
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is not None:
                self._handle = display(_Line(describe(job._status)), display_id=True)
        except ImportError:
            pass

    def show(self, status: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.update(_Line(describe(status)))


def wait_for_counts(
    job: QGuardJob, timeout: float | None = None, line: StatusLine | None = None
) -> Any:
    """The job's Counts, once it completes. Interrupting stops the waiting and says how to go
    on; the job itself goes on (cancel it with `%qguard cancel ID`)."""
    line = line or StatusLine(job)
    try:
        return job.result(timeout=timeout, on_change=line.show)
    except KeyboardInterrupt:
        line.show(
            {
                **job._status,
                "reason": "stopped waiting (the job goes on; "
                f"`%qguard status {job.job_id}`, `%qguard cancel {job.job_id}`)",
            }
        )
        raise
