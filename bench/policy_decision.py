"""Policy decision time with the default pack, built once, queried per job (issue 4 target:
p50 ≤ 0.5 ms). 10,000 jobs with varied inputs, so no answer is cached."""

from __future__ import annotations

import random
import statistics
import time

from common import ROOT, fig, percentile, record

from jupyter_qguard.policy.engine import PolicyEngine

JOBS = 10_000


def main() -> None:
    engine = PolicyEngine(ROOT / "policies")
    rng = random.Random(1)
    backends = ["aer_simulator", "fake_brisbane", "fake_torino", "unknown_backend"]
    times = []
    for i in range(JOBS):
        policy_input = {
            "job": {
                "backend": rng.choice(backends),
                "shots": rng.randint(1, 200_000),
                "seed": i,
                "max_cost": rng.choice([None, 1.0, 100.0]),
            },
            "backend": {"name": "x", "provider": "y", "qubits": 127},
            "lint": {
                "findings": []
                if i % 7
                else [{"severity": "error", "code": "qubits", "message": "too many qubits"}]
            },
            "cost": {"estimate": rng.random() * 80, "currency": "USD"},
            "usage": {
                "spent_today": rng.random() * 220,
                "jobs_window": rng.randint(0, 60),
                "baseline_window": rng.randint(0, 10),
            },
            "requester": {"user": f"user{i % 5}"},
            "workstation_tier": rng.choice(["standard", "sandbox"]),
        }
        t = time.perf_counter()
        engine.decide(policy_input)
        times.append((time.perf_counter() - t) * 1000)
    record(
        "policy_decision",
        f"The default policy pack deciding {JOBS} varied inputs (regopy), per decision",
        {
            "p50": fig(round(statistics.median(times), 4), "ms", target=0.5),
            "p99": fig(round(percentile(times, 99), 4), "ms"),
            "decisions": fig(JOBS, "decisions"),
        },
    )


if __name__ == "__main__":
    main()
