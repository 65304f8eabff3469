"""Cost estimates from the price models in the policy pack's data.json.

Models, as providers bill: `free`; `per_shot` (a fee per task plus a price per shot);
`per_second` (QPU time, estimated from the shots and the backend's time per shot).
"""

from __future__ import annotations

from typing import Any

DEFAULT_SECONDS_PER_SHOT = 0.001


def estimate(price: dict[str, Any] | None, *, shots: int) -> dict[str, Any]:
    price = price or {"model": "free"}
    model = price.get("model", "free")
    currency = price.get("currency", "USD")
    if model == "free":
        amount = 0.0
    elif model == "per_shot":
        amount = float(price.get("per_task", 0.0)) + shots * float(price.get("per_shot", 0.0))
    elif model == "per_second":
        seconds = max(
            float(price.get("minimum_seconds", 1.0)),
            shots * float(price.get("seconds_per_shot", DEFAULT_SECONDS_PER_SHOT)),
        )
        amount = seconds * float(price.get("per_second", 0.0))
    else:
        raise ValueError(f"unknown price model {model!r}")
    return {"estimate": round(amount, 6), "currency": currency, "model": model}
