"""What the broker needs from a provider: inspect a program, submit it, get its result."""

from __future__ import annotations

import re
from abc import ABCMeta, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from traitlets import Float, MetaHasTraits
from traitlets.config import LoggingConfigurable

from ..sandbox.worker_pool import WorkerFailed, WorkerTimedOut


@dataclass(frozen=True)
class RunSpec:
    """One approved run, as the broker hands it to a provider."""

    job_id: str
    backend: str
    program_format: str
    payload: bytes
    shots: int
    seed: int | None
    idempotency_key: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProgramFacts:
    """What the broker learns by parsing a program (never by trusting the kernel's word)."""

    num_qubits: int
    num_clbits: int
    depth: int
    has_measurements: bool
    num_parameters: int
    operations: dict[str, int]
    clbits_read_before_written: list[int] = field(default_factory=list)
    transpiled: dict[str, Any] | None = None
    # Gates that pass for a standard gate they are not (providers/spoofed_gates.py).
    spoofed_gates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "num_qubits": self.num_qubits,
            "num_clbits": self.num_clbits,
            "depth": self.depth,
            "has_measurements": self.has_measurements,
            "num_parameters": self.num_parameters,
            "operations": self.operations,
            "clbits_read_before_written": self.clbits_read_before_written,
            "transpiled": self.transpiled,
            "spoofed_gates": self.spoofed_gates,
        }


class ProviderError(RuntimeError):
    """A provider failed a job; the message is shown to the person and the agent."""


BITSTRING = re.compile(r"[01]+")
NOT_COUNTS = "the program worker answered with something that is not counts of this job's shots"


def checked_counts(counts: Any, shots: int, width: int | None = None) -> dict[str, int]:
    """Counts a program worker answered (a local-testing run's), checked as untrusted:
    bitstrings of one length (`width`, when given), positive ints adding up to the shots.
    ProviderError(NOT_COUNTS) otherwise."""
    if (
        not isinstance(counts, dict)
        or not counts
        or not all(isinstance(k, str) and BITSTRING.fullmatch(k) for k in counts)
        or len({len(k) for k in counts}) != 1
        or (width is not None and len(next(iter(counts))) != width)
        or not all(type(v) is int and v > 0 for v in counts.values())
        or sum(counts.values()) != shots
    ):
        raise ProviderError(NOT_COUNTS)
    return dict(counts)


class _ProviderMeta(MetaHasTraits, ABCMeta):
    """Lets a traitlets class declare abstract methods."""


class Provider(LoggingConfigurable, metaclass=_ProviderMeta):
    """Base class of providers, registered as `jupyter_qguard.providers` entry points.

    `submit` returns the provider's job id once the job is accepted; `result` waits for it.
    The broker records the provider job id before waiting, so after a restart `recover` can
    find a submitted job again instead of submitting it twice.
    """

    #: True when a run has no effect outside this machine and costs nothing, so that a run cut
    #: short by a broker restart may simply be run again with the same seed.
    local: bool = False

    #: The server's `credentials.CredentialStore`, set by the app. Providers pass it to
    #: `credentials` functions and never read a secret themselves.
    credentials: Any = None

    #: The broker's program workers (the aer provider: `AerProvider.call`), set by the app. An
    #: agent's program is read only there (aer_worker.py says why), for every provider.
    programs: Any = None

    program_timeout = Float(
        300.0,
        config=True,
        help="Seconds a program worker may take to prepare a program for this provider (read, "
        "check, transpile or convert it; in local testing, simulate it) before it is killed.",
    )

    async def in_worker(self, fn: str, *args: Any) -> Any:
        """`fn` of the program workers' table, run in one of them within `program_timeout`.
        ProviderError when it raised there (with its one-line reason, which is as untrusted
        as the program), took too long (its worker killed) or no worker answered. What it
        returns is untrusted too: the caller checks its shape."""
        if self.programs is None:
            raise ProviderError("no program workers to read the program in (the aer provider's)")
        try:
            return await self.programs.call(fn, *args, timeout=self.program_timeout)
        except WorkerFailed as exc:
            raise ProviderError(f"the program could not be prepared: {exc}") from None
        except WorkerTimedOut:
            raise ProviderError(
                f"the program could not be prepared within {self.program_timeout:g} s"
            ) from None

    async def backends(self) -> list[dict[str, Any]]:
        """What the provider reports of its devices: name, num_qubits, calibration_id, ..."""
        return []

    async def calibration(self, spec: RunSpec) -> dict[str, Any] | None:
        """The device's current calibration (qubit and gate figures, `calibration_id`) for a
        reproducibility bundle; None when the provider publishes none."""
        return None

    async def start(self) -> None:
        """Warm up (connections, worker processes). Called once when the broker starts."""

    def prewarm(self) -> None:
        """Start, in the background, what a first job will need: an agent kernel came (called
        at each kernel launch). A server no kernel ever uses starts none of it."""

    async def stop(self) -> None:
        """Release what `start` took."""

    @abstractmethod
    async def submit(self, spec: RunSpec) -> str:
        """Hand the run to the provider; return the provider's job id."""

    @abstractmethod
    async def result(self, spec: RunSpec, provider_job_id: str) -> dict[str, Any]:
        """Wait for the provider's result: `{"counts": {bitstring: n}, ...}`."""

    async def recover(self, spec: RunSpec, provider_job_id: str | None) -> dict[str, Any]:
        """Finish a job that was `submitted` when the broker stopped."""
        if provider_job_id is None:
            raise ProviderError("the broker stopped before the provider acknowledged the job")
        return await self.result(spec, provider_job_id)
