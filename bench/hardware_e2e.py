"""One hardware job end to end on the fake cloud, stage by stage: submit in an agent kernel →
the pending_approval event on the panel's websocket → approval over REST → the result in the
kernel. The stages after the approval are split by the job's own history (queued, submitted,
completed: the broker's clock, on this machine like the others).

A real server, a real qguard-agent kernel, the fake cloud as a real process, its key in a file
keyring. ROUNDS jobs, one after the other; medians.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import fig, record
from support.broker_flow import server_for
from support.fakecloud_proc import FakeCloud

ROUNDS = 5
PREPARE = """
import json, time
from qiskit import QuantumCircuit
from jupyter_qguard.kernel.jobs import submit
bell = QuantumCircuit(2); bell.h(0); bell.cx(0, 1); bell.measure_all()
"""
SUBMIT = """
t = time.time()
job = submit(bell, backend='fake_brisbane', shots=1000, seed={seed})
print(json.dumps({{"id": job.job_id, "t": t}}))
"""
RESULT = """
counts = job.result(timeout=300)
print(json.dumps({"t": time.time(), "shots": sum(counts.values())}))
"""


def at(event: dict) -> float:
    return dt.datetime.fromisoformat(event["at"]).timestamp()


async def one_round(server, kernel, ws_events: asyncio.Queue, seed: int) -> dict[str, float]:
    res = await kernel.run(SUBMIT.format(seed=seed))
    assert res["error"] is None, res
    sent = json.loads(res["stdout"].strip().splitlines()[-1])
    while True:
        event, arrived = await asyncio.wait_for(ws_events.get(), 120)
        if event["job"]["id"] == sent["id"] and event["job"]["state"] == "pending_approval":
            break
    waiting = asyncio.ensure_future(kernel.run(RESULT, timeout=300))
    await asyncio.sleep(0.3)  # the cell is waiting on the broker when the approval comes
    job = await server.json(f"qguard/api/jobs/{sent['id']}")
    t_approve = time.time()
    await server.json(
        f"qguard/api/jobs/{sent['id']}/approve", method="POST", body={"digest": job["digest"]}
    )
    t_approved = time.time()
    res = await waiting
    assert res["error"] is None, res
    got = json.loads(res["stdout"].strip().splitlines()[-1])
    assert got["shots"] == 1000, got
    history = await server.json(f"qguard/api/jobs/{sent['id']}?history=1")
    moves = {e["to"]: at(e) for e in history["events"]}
    return {
        "submit_to_pending_event": (arrived - sent["t"]) * 1000,
        "approve_request": (t_approved - t_approve) * 1000,
        "approved_to_submitted": (moves["submitted"] - moves["approved"]) * 1000,
        "at_the_provider": (moves["completed"] - moves["submitted"]) * 1000,
        "completed_to_result_in_kernel": (got["t"] - moves["completed"]) * 1000,
        "total_without_the_person": (arrived - sent["t"] + got["t"] - t_approve) * 1000,
    }


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qg-bench-") as tmp:
        base = Path(tmp)
        (base / "cloud").mkdir()
        cloud = FakeCloud(base / "cloud").start()
        server = server_for(base, cloud).start()
        try:
            ws = await server.websocket("qguard/api/events")
            events: asyncio.Queue = asyncio.Queue()

            async def listen() -> None:
                while (raw := await ws.read_message()) is not None:
                    message = json.loads(raw)
                    if "job" in message:
                        events.put_nowait((message, time.time()))

            listener = asyncio.ensure_future(listen())
            kernel = await server.start_kernel(notebook="e2e.ipynb")
            assert (await kernel.run(PREPARE))["error"] is None
            rounds = [await one_round(server, kernel, events, seed) for seed in range(ROUNDS)]
            listener.cancel()
            kernel.close()
        finally:
            server.stop()
            cloud.stop()
    figures = {
        stage: fig(round(statistics.median(r[stage] for r in rounds), 1), "ms")
        for stage in rounds[0]
    }
    record(
        "hardware_job_end_to_end",
        f"One fake_brisbane job (1,000 shots) on the fake cloud, median of {ROUNDS}: submit → "
        "pending event (lint, policy, noisy preflight) → approve over REST → queued and "
        "submitted → run at the provider → result in the kernel",
        figures,
    )


if __name__ == "__main__":
    asyncio.run(main())
