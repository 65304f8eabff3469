"""`jupyter qguard bundle replay`: run a bundle's program again on Aer, with the noise model of
the calibration the bundle recorded, and compare with the recorded result.

The run is the fake cloud's own simulation (`fakecloud.simulate.run_job`): the program is
transpiled to the device snapshot's target, and the noise of the recorded calibration (gate and
readout errors, T1/T2 of the qubits the circuit uses) is applied. The total variation distance
½ Σ |p(x) − q(x)| between the two count distributions says how far the run strays from what
was recorded: shot noise alone gives a few hundredths at a few thousand shots.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from .bundle import load


class ReplayError(RuntimeError):
    """The bundle lacks what a replay needs (the message says what)."""


def tvd(a: dict[str, int], b: dict[str, int]) -> float:
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        raise ReplayError("a result with no shots cannot be compared")
    keys = set(a) | set(b)
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in keys)


def replay(directory: Path, *, seed: int | None = None, shots: int | None = None) -> dict[str, Any]:
    from ..fakecloud import simulate

    job = load(directory, "job.json")
    result = load(directory, "result.json")
    calibration = load(directory, "calibration.json")
    snapshot = job.get("snapshot")
    if not snapshot:
        raise ReplayError("the bundle names no device snapshot to transpile and simulate on")
    if not isinstance(calibration, dict) or "qubits" not in calibration:
        raise ReplayError(
            "the bundle holds no calibration to build a noise model from: "
            f"{calibration.get('unavailable', 'calibration.json is empty')}"
        )
    recorded = {str(k): int(v) for k, v in (result.get("counts") or {}).items()}
    if not recorded:
        raise ReplayError("the bundle's result holds no counts")
    shots = shots or sum(recorded.values())
    # A fresh seed by default: replaying with the recorded one would only repeat the sampling.
    seed = secrets.randbelow(2**31) if seed is None else seed
    run = simulate.run_job(
        snapshot, calibration, "qpy", (directory / "program.qpy").read_bytes(), shots, seed
    )
    return {
        "job": job.get("id"),
        "backend": job.get("backend"),
        "snapshot": snapshot,
        "calibration_id": calibration.get("calibration_id"),
        "ran_with_calibration_id": (result.get("provider") or {}).get("calibration_id"),
        "shots": shots,
        "seed": seed,
        "recorded": recorded,
        "replayed": run["counts"],
        "tvd": round(tvd(recorded, run["counts"]), 6),
    }
