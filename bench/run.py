"""`make bench`: run every benchmark, each in its own process; figures go to bench/results.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "submit_to_pending.py",
    "sandbox_overhead.py",
    "policy_decision.py",
    "lint_time.py",
    "watch_latency.py",
    "audit_log.py",
]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed += subprocess.call([sys.executable, str(HERE / name)], cwd=HERE) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
