"""`make bench`: every benchmark, each in its own process, into a fresh bench/results.json;
then the README's table (bench/table.py)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, machine

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "submit_to_pending.py",
    "hardware_e2e.py",
    "broker_throughput.py",
    "sandbox_overhead.py",
    "policy_decision.py",
    "lint_time.py",
    "watch_latency.py",
    "audit_log.py",
    "bound_file_hashing.py",
    "mcp_tool_call.py",
    "egress_proxy.py",
]


def main() -> int:
    started = time.monotonic()
    # A fresh file: every figure in it comes from this run.
    RESULTS.write_text(
        json.dumps(
            {
                "machine": machine(),
                "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "benchmarks": {},
            },
            indent=2,
        )
        + "\n"
    )
    failed = []
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        began = time.monotonic()
        if subprocess.call([sys.executable, str(HERE / name)], cwd=HERE) != 0:
            failed.append(name)
        print(f"== {name}: {time.monotonic() - began:.0f} s", flush=True)
    data = json.loads(RESULTS.read_text())
    data["suite_seconds"] = round(time.monotonic() - started, 1)
    data["failed"] = failed
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"== all: {data['suite_seconds']:.0f} s; failed: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
