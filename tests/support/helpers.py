"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import json
from typing import Any


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll an async or sync predicate until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def approve(
    jp_fetch: Any,
    job: dict[str, Any],
    *,
    digest: str | None = None,
    otp: str | None = None,
    raise_error: bool = True,
) -> Any:
    """POST the approval of `job` (by default with its own digest), as the person would."""
    body: dict[str, Any] = {"digest": job["digest"] if digest is None else digest}
    if otp is not None:
        body["otp"] = otp
    return await jp_fetch(
        "qguard",
        "api",
        "jobs",
        job["id"],
        "approve",
        method="POST",
        body=json.dumps(body),
        raise_error=raise_error,
    )


BELL = """
from qiskit import QuantumCircuit
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
"""


def stored_job(store: Any, *, user: str, backend: str, state: str | None) -> dict[str, Any]:
    """A job put straight into the server's store (for views of it: history, refusals)."""
    from jupyter_qguard.broker.jobs import State

    job = store.create_job(
        actor="kernel:test",
        requester={"user": user, "kernel_id": "k" * 32, "notebook": "a.ipynb", "cell_id": None},
        requester_user=user,
        backend=backend,
        shots=100,
        seed=None,
        max_cost=None,
        request={"program": {"sdk": "qiskit", "format": "qpy", "sha256": "a" * 64}},
        program_sha256="a" * 64,
        files={},
        policy_version="p" * 64,
        digest="d" * 64,
        decision={},
    )
    if state:
        job = store.transition(job["id"], State(state), actor="broker", reason="test")
    return job


def big_notebook(target: int) -> bytes:
    """A notebook of about `target` bytes, made the way a long session makes one: many code
    cells, each with a stream output of 100 lines (JSON that takes ~1 s of GIL to parse).
    For tests/test_bound_files.py and bench/bound_file_hashing.py."""
    cells = []
    size = 0
    line = "x" * 60 + "\n"
    i = 0
    while size < target:
        text = [f"{j:06d} {line}" for j in range(100)]
        cells.append(
            {
                "cell_type": "code",
                "id": f"c{i}",
                "metadata": {},
                "execution_count": i,
                "source": [f"v{i} = {i}\n", f"print(v{i})"],
                "outputs": [{"output_type": "stream", "name": "stdout", "text": text}],
            }
        )
        size += 100 * 72 + 200
        i += 1
    nb = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    return json.dumps(nb).encode()
