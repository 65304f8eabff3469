"""Listing latency while the broker hashes a 100 MiB notebook a job depends on (issue 18
target: `GET /qguard/api/jobs` p95 ≤ 50 ms during it).

A real `jupyter server` with the extension and a real agent kernel: the kernel submits a job
bound to a 100 MiB notebook (many code cells with stream outputs, JSON that takes about a second
of GIL to parse) several times; meanwhile another client lists jobs in a loop, and each listing
made while a submission is in flight is timed. The notebook is hashed off the database thread
and off the event loop, in the broker's hashing worker process (broker/hashing.py); the same
listings with nothing being hashed are the baseline.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import fig, percentile, record
from support.helpers import big_notebook
from support.jupyter_proc import ServerProcess

from jupyter_qguard.broker.filehash import notebook_code_hash

ROUNDS = 5
SIZE = 100 << 20
HW = [
    "--QGuardApp.backends={'bench_hw': {'provider': 'aer', 'qubits': 28}}",
    "--QGuardApp.policy_data={'backends': {'bench_hw': {'tier': 'hardware', 'provider': 'aer'}}}",
]
SETUP = """
from qiskit import QuantumCircuit
from jupyter_qguard.kernel.jobs import submit
bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1); bell.measure_all()
"""
SUBMIT = """
import time
t = time.monotonic()
job = submit(bell, backend='bench_hw', shots=10, files={'long.ipynb': None})
print(job.job_id, time.monotonic() - t)
"""


async def listings_while(server: ServerProcess, work: asyncio.Future | None, n: int = 0) -> list:
    """Latencies (ms) of listings made until `work` is done (or `n` of them)."""
    out: list[float] = []
    while (work is not None and not work.done()) or (work is None and len(out) < n):
        started = time.monotonic()
        await server.fetch("qguard/api/jobs?limit=50")
        out.append((time.monotonic() - started) * 1000)
        await asyncio.sleep(0.01)
    return out


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qg-bench-hash-") as tmp:
        server = ServerProcess(Path(tmp), extra_args=HW).start()
        try:
            data = big_notebook(SIZE)
            (server.root / "long.ipynb").write_bytes(data)
            want = notebook_code_hash(data)
            kernel = await server.start_kernel()
            res = await kernel.run(SETUP)
            if res["error"]:
                raise RuntimeError(res["error"])
            # The server's start-up work (Aer workers' warm-up, the watcher's first scan) is
            # done once 20 listings in a row are quick.
            fast = 0
            while fast < 20:
                fast = fast + 1 if (await listings_while(server, None, 1))[0] < 25 else 0
            idle = await listings_while(server, None, 200)
            during: list[float] = []
            hashing: list[float] = []
            for _ in range(ROUNDS):
                cell = asyncio.ensure_future(kernel.run(SUBMIT, timeout=300))
                during += await listings_while(server, cell)
                res = cell.result()
                if res["error"]:
                    raise RuntimeError(res["error"])
                job_id, seconds = res["stdout"].split()[-2:]
                hashing.append(float(seconds))
                job = await server.json(f"qguard/api/jobs/{job_id}")
                assert job["files"] == {"long.ipynb": want}, job["files"]
            kernel.close()
        finally:
            server.stop()
    record(
        "bound_file_hashing",
        f"GET /qguard/api/jobs while the broker hashes a {len(data) >> 20} MiB notebook a job "
        f"depends on ({ROUNDS} submissions; the notebook parsed in the hashing worker process, "
        "off the database thread and the event loop); the same listings with nothing hashed",
        {
            "listing_p50": fig(round(statistics.median(during), 1), "ms"),
            "listing_p95": fig(round(percentile(during, 95), 1), "ms", target=50),
            "listing_max": fig(round(max(during), 1), "ms"),
            "listings": fig(len(during), "requests"),
            "idle_listing_p95": fig(round(percentile(idle, 95), 1), "ms"),
            "submit_with_hashing": fig(round(statistics.median(hashing), 2), "s"),
        },
    )
    print(json.dumps({"during": sorted(during)[-5:]}))


if __name__ == "__main__":
    asyncio.run(main())
