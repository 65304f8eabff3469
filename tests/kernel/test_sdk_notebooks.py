"""Ordinary SDK notebooks, executed with nbclient in qguard-agent kernels of a real server: every
hardware call becomes a broker job that waits for the person (this test, approving over REST),
and nothing reaches a provider before approval."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from support.helpers import approve

HARDWARE = {
    "backends": {
        "aer_simulator": {"provider": "aer", "qubits": 28},
        # Aer with Brisbane's snapshot: its target for transpile, its noise for the run
        "fake_brisbane": {"provider": "aer", "qubits": 127, "snapshot": "fake_brisbane"},
    },
    "policy_data": {
        "backends": {"fake_brisbane": {"tier": "hardware", "provider": "aer"}},
        "limits": {"burst_floor": 100},
    },
    "preflight_timeout_seconds": 60,
}

BELL = """
from qiskit import QuantumCircuit
qc = QuantumCircuit(2)
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
"""

QISKIT_NOTEBOOK = [
    BELL,
    """
from qiskit import transpile
from jupyter_qguard.kernel import get_backend
backend = get_backend("fake_brisbane")
tqc = transpile(qc, backend, optimization_level=1, seed_transpiler=1)
assert tqc.num_qubits == 127 and set(tqc.count_ops()) <= set(backend.operation_names) | {"barrier"}
job = backend.run(tqc, shots=2000, seed_simulator=11)
counts = job.result().get_counts()
""",
    """
from qiskit.primitives import BackendSamplerV2, BackendEstimatorV2
from qiskit.quantum_info import SparsePauliOp
# Seeded, as the backend.run above: a noisy estimate near a threshold must not flake.
sampled = BackendSamplerV2(backend=backend, options={"seed_simulator": 12}).run(
    [tqc], shots=1000
).result()
sampler_counts = sampled[0].data.meas.get_counts()
qc_nomeas = qc.remove_final_measurements(inplace=False)
tqc_e = transpile(qc_nomeas, backend, optimization_level=1, seed_transpiler=1)
zz = SparsePauliOp("ZZ").apply_layout(tqc_e.layout)
estimator = BackendEstimatorV2(
    backend=backend, options={"default_precision": 0.05, "seed_simulator": 13}
)
zz_value = float(estimator.run([(tqc_e, zz)]).result()[0].data.evs)
print(json.dumps({"counts": counts, "sampler": sampler_counts, "zz": zz_value}))
""",
]

IBM_NOTEBOOK = [
    BELL,
    """
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2
from qiskit.transpiler import generate_preset_pass_manager

service = QiskitRuntimeService()
backend = service.backend("fake_brisbane")
pm = generate_preset_pass_manager(backend=backend, optimization_level=1)
isa = pm.run(qc)
sampler = SamplerV2(mode=backend)
job = sampler.run([isa], shots=2000)
result = job.result()
counts = result[0].data.meas.get_counts()
print(json.dumps({"counts": counts, "service": repr(service)}))
""",
]


PENNYLANE_NOTEBOOK = [
    """
import pennylane as qml

dev = qml.device("qguard.hardware", wires=2, backend="fake_brisbane", shots=2000, seed=5)


@qml.qnode(dev)
def bell_counts():
    qml.Hadamard(0)
    qml.CNOT([0, 1])
    return qml.counts()


@qml.qnode(dev)
def bell_zz():
    qml.Hadamard(0)
    qml.CNOT([0, 1])
    return qml.expval(qml.PauliZ(0) @ qml.PauliZ(1))


counts = {str(k): int(v) for k, v in bell_counts().items()}
zz = float(bell_zz())
print(json.dumps({"counts": counts, "zz": zz}))
""",
]


def notebook(cells: list[str]) -> Any:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import json")] + [
        nbformat.v4.new_code_cell(c.strip()) for c in cells
    ]
    nb.metadata["kernelspec"] = {
        "name": "qguard-agent",
        "display_name": "qguard",
        "language": "python",
    }
    return nb


async def run_with_approver(jp_fetch: Any, kernel: Any, cells: list[str]) -> tuple[dict, list]:
    """Execute the notebook; approve each request once it waits, after checking that nothing of
    it reached a provider. Returns the last cell's JSON output and the approved jobs."""
    nb = notebook(cells)
    client = NotebookClient(nb, km=kernel.manager, timeout=600, kernel_name="qguard-agent")
    run = asyncio.ensure_future(client.async_execute())
    approved: list[dict] = []
    while not run.done():
        r = await jp_fetch("qguard", "api", "jobs", params={"state": "pending_approval"})
        for job in json.loads(r.body)["jobs"]:
            r = await jp_fetch("qguard", "api", "jobs", job["id"])
            steps = [e["to"] for e in json.loads(r.body)["events"]]
            assert steps == ["received", "pending_approval"], steps
            await approve(jp_fetch, job)
            approved.append(job)
        await asyncio.sleep(0.2)
    await run
    outputs = [o for o in nb.cells[-1].outputs if o.get("name") == "stdout"]
    return json.loads(outputs[-1]["text"].strip().splitlines()[-1]), approved


async def job_steps(jp_fetch: Any, job_id: str) -> list[str]:
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    return [e["to"] for e in json.loads(r.body)["events"]]


def assert_noisy_bell(counts: dict[str, int], shots: int) -> None:
    assert sum(counts.values()) == shots
    # Brisbane's noise: mostly 00 and 11, about half each
    assert counts.get("00", 0) + counts.get("11", 0) > 0.85 * shots
    assert 0.4 * shots < counts.get("00", 0) < 0.6 * shots


@pytest.mark.parametrize("qguard_config", [HARDWARE], indirect=True)
async def test_qiskit_transpile_run_sampler_estimator(start_kernel, jp_fetch):
    kernel = await start_kernel()
    out, approved = await run_with_approver(jp_fetch, kernel, QISKIT_NOTEBOOK)
    assert_noisy_bell(out["counts"], 2000)
    assert_noisy_bell(out["sampler"], 1000)
    # <ZZ> of a Bell state is 1; readout and gate noise take a little off
    assert 0.8 < out["zz"] <= 1.0
    # backend.run, the sampler and the estimator: three requests, each approved
    assert len(approved) == 3
    for job in approved:
        steps = await job_steps(jp_fetch, job["id"])
        assert steps == [
            "received",
            "pending_approval",
            "approved",
            "queued",
            "submitted",
            "completed",
        ]


@pytest.mark.parametrize("qguard_config", [HARDWARE], indirect=True)
async def test_code_written_for_qiskit_ibm_runtime_runs_unchanged(start_kernel, jp_fetch):
    kernel = await start_kernel()
    out, approved = await run_with_approver(jp_fetch, kernel, IBM_NOTEBOOK)
    assert out["service"] == "<QiskitRuntimeService (qguard broker)>"
    assert_noisy_bell(out["counts"], 2000)
    assert [j["backend"] for j in approved] == ["fake_brisbane"]
    assert approved[0]["shots"] == 2000


@pytest.mark.parametrize("qguard_config", [HARDWARE], indirect=True)
async def test_a_pennylane_qnode_on_qguard_hardware(start_kernel, jp_fetch):
    kernel = await start_kernel()
    out, approved = await run_with_approver(jp_fetch, kernel, PENNYLANE_NOTEBOOK)
    assert_noisy_bell(out["counts"], 2000)
    assert 0.8 < out["zz"] <= 1.0
    # one tape, one job, each: counts, then the expectation value
    assert [(j["backend"], j["shots"], j["program"]["sdk"]) for j in approved] == [
        ("fake_brisbane", 2000, "pennylane")
    ] * 2
    for job in approved:
        steps = await job_steps(jp_fetch, job["id"])
        assert steps.index("approved") < steps.index("submitted")
