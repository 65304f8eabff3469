"""Shared by the benchmarks: the machine's description and the results file."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
# The benchmarks drive a real server the way the tests do.
sys.path.insert(0, str(ROOT / "tests"))


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def record(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """Merge one benchmark's figures into bench/results.json and print them."""
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["machine"] = machine()
    data.setdefault("benchmarks", {})[name] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({name: result}, indent=2))
    return result
