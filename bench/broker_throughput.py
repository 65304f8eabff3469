"""Broker throughput: 20 agent kernels each submit 50 simulator jobs at once; and the server's
memory with the extension loaded, idle and after those 1,000 jobs.

A real server, 20 real qguard-agent kernels driven over their websockets at the same time. The
clock runs from the moment every kernel has been told to start submitting to the moment the
last job is completed (simulator jobs run without approval, on Aer). Then every job is looked
up: none lost (each completed, with counts) and each in the audit log (its received and
completed entries).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

from common import fig, record, settled_rss
from support.jupyter_proc import ServerProcess

KERNELS = 20
JOBS_EACH = 50
ARGS = [
    # 1,000 jobs in seconds is a burst by the default pack's measure: lift the floor for this run.
    "--QGuardApp.policy_data={'limits': {'burst_floor': 100000}}",
    "--QGuardApp.channel_burst=1000",
    "--QGuardApp.secret_scan=off",
]
PREPARE = """
import json, time
from qiskit import QuantumCircuit
from jupyter_qguard.kernel.jobs import submit
bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1); bell.measure_all()
"""
SUBMIT = f"""
jobs = [submit(bell, backend='aer_simulator', shots=100, seed=i) for i in range({JOBS_EACH})]
states = [job.wait(timeout=600)['state'] for job in jobs]
print(json.dumps({{"ids": [j.job_id for j in jobs], "states": states, "done": time.time()}}))
"""


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qg-bench-") as tmp:
        server = ServerProcess(Path(tmp), extra_args=ARGS).start()
        try:
            idle = await settled_rss(server)
            kernels = [await server.start_kernel(notebook=f"k{i}.ipynb") for i in range(KERNELS)]
            for k in kernels:
                res = await k.run(PREPARE)
                assert res["error"] is None, res
            started = time.time()
            results = await asyncio.gather(*(k.run(SUBMIT, timeout=900) for k in kernels))
            elapsed = max(json.loads(r["stdout"].strip().splitlines()[-1])["done"] for r in results)
            elapsed -= started
            ids, states = [], []
            for res in results:
                assert res["error"] is None, res
                out = json.loads(res["stdout"].strip().splitlines()[-1])
                ids += out["ids"]
                states += out["states"]
            stored = {j["id"]: j for j in (await server.json("qguard/api/jobs?limit=1000"))["jobs"]}
            completed = [
                i
                for i in ids
                if stored.get(i, {}).get("state") == "completed" and stored[i].get("result")
            ]
            audit = server.state / "audit" / "log.jsonl"
            seen: dict[str, set[str]] = {}
            for line in audit.read_text().splitlines():
                entry = json.loads(line)
                if isinstance(entry.get("job"), str):
                    mark = entry["kind"] + (f":{entry['to']}" if "to" in entry else "")
                    seen.setdefault(entry["job"], set()).add(mark)
            wanted = {"job.received", "job.transition:completed"}
            in_audit = [i for i in ids if wanted <= seen.get(i, set())]
            after = await settled_rss(server)
            for k in kernels:
                k.close()
        finally:
            server.stop()
    total = KERNELS * JOBS_EACH
    record(
        "broker_throughput",
        f"{KERNELS} agent kernels submit {JOBS_EACH} simulator jobs each at once (Bell, 100 "
        "shots, run on Aer without approval): from the start signal to the last completion",
        {
            "jobs_per_second": fig(round(total / elapsed, 1), "jobs/s"),
            "elapsed": fig(round(elapsed, 2), "s"),
            "jobs": fig(len(ids), "jobs", target=total, limit="min"),
            "lost": fig(total - len(completed), "jobs", target=0),
            "not_in_audit_log": fig(total - len(in_audit), "jobs", target=0),
            "states_other_than_completed": fig(
                sum(s != "completed" for s in states), "jobs", target=0
            ),
        },
    )
    record(
        "server_memory",
        "Resident memory of the Jupyter server with the extension loaded (kernels are their own "
        "processes, not counted)",
        {
            "idle": fig(round(idle, 1), "MB"),
            "after_1000_jobs": fig(round(after, 1), "MB"),
            "growth": fig(round(after - idle, 1), "MB"),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
