"""The fake cloud's catalog: backends, their price models, and their calibrations."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

# The same price models as the policy pack's data.json, so the broker's estimate and the bill
# agree in form (the bill uses the real shot count and the modelled execution time).
CATALOG: dict[str, dict[str, Any]] = {
    "fake_brisbane": {
        "tier": "hardware",
        "price": {"model": "per_shot", "per_task": 0.30, "per_shot": 0.00035, "currency": "USD"},
    },
    "fake_torino": {
        "tier": "premium",
        "price": {
            "model": "per_second",
            "per_second": 1.60,
            "currency": "USD",
            "billed_on": "execution_seconds",
        },
    },
}

CURRENCY = "USD"

# Drift makes a device worse, as it does between calibrations: coherence times shrink, error
# rates grow (within the bounds the noise model accepts).
_T_FACTOR = (0.5, 0.9)
_READOUT_FACTOR = (1.3, 2.0)
_GATE_FACTOR = (1.5, 3.0)
_MAX_ERROR = 0.5


def cost(backend: str, shots: int, execution_seconds: float) -> dict[str, Any]:
    price = CATALOG[backend]["price"]
    if price["model"] == "per_shot":
        amount = price["per_task"] + shots * price["per_shot"]
    else:
        amount = execution_seconds * price["per_second"]
    return {"amount": round(amount, 6), "currency": price["currency"]}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def with_calibration_id(calibration: dict[str, Any]) -> dict[str, Any]:
    """Name a calibration by its content: the same numbers always give the same id."""
    digest = hashlib.sha256(
        canonical({"qubits": calibration["qubits"], "gates": calibration["gates"]})
    ).hexdigest()
    return {**calibration, "calibration_id": f"{calibration['backend']}-{digest[:12]}"}


def drifted(calibration: dict[str, Any], seed: int, at: str) -> dict[str, Any]:
    """A new calibration: every qubit's and gate's figures perturbed (reproducibly, by seed)."""
    rng = random.Random(seed)
    new = copy.deepcopy(calibration)
    new.pop("calibration_id", None)
    for q in new["qubits"]:
        for key in ("t1_us", "t2_us"):
            if q[key] is not None:
                q[key] *= rng.uniform(*_T_FACTOR)
        for key in ("readout_error", "prob_meas0_prep1", "prob_meas1_prep0"):
            if q[key] is not None:
                q[key] = min(_MAX_ERROR, q[key] * rng.uniform(*_READOUT_FACTOR))
    for g in new["gates"]:
        if g["error"]:
            g["error"] = min(_MAX_ERROR, g["error"] * rng.uniform(*_GATE_FACTOR))
    new["last_update"] = at
    new["drifts"] = [*calibration.get("drifts", []), {"seed": seed, "at": at}]
    return with_calibration_id(new)
