"""Time from `submit` in an agent kernel to the `pending_approval` event on the websocket.

It includes the lint, the policy decision and the preflight simulation (Bell, 10 shots).
A real server, a real qguard-agent kernel: the kernel stamps the wall clock right before each
submit, the benchmark stamps the arrival of the job's pending_approval event on the panel's
websocket; both run on this machine, so the clocks agree.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import fig, percentile, record
from support.jupyter_proc import ServerProcess

JOBS = 200
HW = [
    "--QGuardApp.backends={'bench_hw': {'provider': 'aer', 'qubits': 28}}",
    # 200 jobs in seconds is a burst by the default pack's measure: lift the floor for this run
    "--QGuardApp.policy_data={'backends': {'bench_hw': {'tier': 'hardware', 'provider': 'aer'}},"
    " 'limits': {'burst_floor': 100000}}",
]

KERNEL_CODE = f"""
import json, time
from qiskit import QuantumCircuit
from jupyter_qguard.kernel.jobs import submit
bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1); bell.measure_all()
submit(bell, backend='bench_hw', shots=10)  # warm-up, not counted
stamps = {{}}
for i in range({JOBS}):
    t = time.time()
    job = submit(bell, backend='bench_hw', shots=10, seed=i)
    stamps[job.job_id] = t
print(json.dumps(stamps))
"""


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qg-bench-") as tmp:
        server = ServerProcess(
            Path(tmp),
            extra_args=[*HW, "--QGuardApp.channel_burst=1000"],
        ).start()
        try:
            ws = await server.websocket("qguard/api/events")
            kernel = await server.start_kernel()
            arrivals: dict[str, float] = {}

            async def listen() -> None:
                while True:
                    raw = await ws.read_message()
                    if raw is None:
                        return
                    event = json.loads(raw)
                    if event["job"]["state"] == "pending_approval":
                        arrivals.setdefault(event["job"]["id"], time.time())

            listener = asyncio.ensure_future(listen())
            res = await kernel.run(KERNEL_CODE, timeout=600)
            if res["error"]:
                raise RuntimeError(res["error"])
            stamps = json.loads(res["stdout"].strip().splitlines()[-1])
            deadline = time.monotonic() + 30
            while not stamps.keys() <= arrivals.keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            listener.cancel()
            latencies = [(arrivals[j] - t) * 1000 for j, t in stamps.items() if j in arrivals]
            record(
                "submit_to_pending_event",
                f"submit() in an agent kernel to the job's pending_approval event on the "
                f"panel's websocket (lint, policy, preflight), {JOBS} jobs in a row",
                {
                    "median": fig(round(statistics.median(latencies), 2), "ms"),
                    "p95": fig(round(percentile(latencies, 95), 2), "ms"),
                    "max": fig(round(max(latencies), 2), "ms"),
                    "received": fig(len(latencies), "events", target=JOBS, limit="min"),
                },
            )
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
