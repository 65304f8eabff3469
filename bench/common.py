"""Shared by the benchmarks: the machine's description and the results file."""

from __future__ import annotations

import asyncio
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


def fig(
    value: float | int, unit: str, *, target: float | None = None, limit: str = "max"
) -> dict[str, Any]:
    """One figure with its unit; with a target, `limit` says which side is good ("max": the
    value must not exceed it, "min": it must reach it)."""
    out: dict[str, Any] = {"value": value, "unit": unit}
    if target is not None:
        assert limit in ("max", "min"), limit
        out["target"] = target
        out["limit"] = limit
    return out


def compare(
    plain: float, qguard: float, unit: str, *, target_ratio: float | None = None, digits: int = 4
) -> dict[str, dict[str, Any]]:
    """Both sides of a comparison, measured in the same run, and their ratio."""
    return {
        "plain": fig(round(plain, digits), unit),
        "qguard": fig(round(qguard, digits), unit),
        "ratio": fig(round(qguard / plain, 3), "x", target=target_ratio),
    }


def record(name: str, about: str, figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge one benchmark's figures into bench/results.json and print them."""
    for key, figure in figures.items():
        assert {"value", "unit"} <= set(figure), f"{name}/{key} needs a value and a unit"
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data["machine"] = machine()
    result = {"about": about, "figures": figures}
    data.setdefault("benchmarks", {})[name] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({name: result}, indent=2))
    return result


async def settled_rss(server: Any) -> float:
    """A running server's resident memory once it answers and has had 3 s to settle (the
    extension's start-up work, such as the watcher's initial scan, is done by then)."""
    await server.json("qguard/api/jobs")
    await asyncio.sleep(3)
    return rss_mb(server.proc.pid)


def rss_mb(pid: int) -> float:
    """Resident memory of one process, in MB (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")
