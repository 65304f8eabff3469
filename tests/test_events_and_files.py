"""The events websocket, notebook binding, approval expiry and the fail-closed provisioner."""

from __future__ import annotations

import asyncio
import json

import nbformat
import pytest
from support.helpers import BELL, approve

from jupyter_qguard.broker import runtime
from jupyter_qguard.broker.filehash import notebook_code_hash


async def test_events_websocket_pushes_job_changes(start_kernel, jp_ws_fetch):
    ws = await jp_ws_fetch("qguard", "api", "events")
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run("job = %qguard submit bell --backend aer_hw --shots 10\nprint(job.job_id)")
    job_id = res["stdout"].strip()
    states = []
    while "pending_approval" not in states:
        event = json.loads(await asyncio.wait_for(ws.read_message(), 10))
        assert event["type"] == "job"
        if event["job"]["id"] == job_id:
            states.append(event["job"]["state"])
            assert "payload_b64" not in event["job"]["program"]
    assert states == ["received", "pending_approval"]
    ws.close()


def _notebook(path, sources):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nb.cells.insert(1, nbformat.v4.new_markdown_cell("# notes"))
    nbformat.write(nb, path)
    return nb


async def test_job_binds_the_notebook_by_its_code_cells(start_kernel, jp_root_dir, jp_fetch):
    _notebook(jp_root_dir / "exp.ipynb", [BELL, "x = 1"])
    k = await start_kernel(path="exp.ipynb")
    await k.run(BELL)
    await k.run("job = %qguard submit bell --backend aer_hw --shots 10")
    r = await jp_fetch("qguard", "api", "jobs", params={"state": "pending_approval"})
    job = json.loads(r.body)["jobs"][0]
    assert job["requester"]["notebook"] == "exp.ipynb"
    assert job["files"] == {
        "exp.ipynb": notebook_code_hash((jp_root_dir / "exp.ipynb").read_bytes())
    }


def test_notebook_hash_ignores_outputs_and_metadata_but_not_code(tmp_path):
    p = tmp_path / "a.ipynb"
    nb = _notebook(p, ["a = 1", "b = 2"])
    base = notebook_code_hash(p.read_bytes())
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="hello")]
    nb.cells[0].execution_count = 7
    nb.metadata["kernelspec"] = {"name": "qguard-agent"}
    nb.cells[1].source = "# a markdown edit"
    nbformat.write(nb, p)
    assert notebook_code_hash(p.read_bytes()) == base
    nb.cells[2].source = "b = 3"
    nbformat.write(nb, p)
    assert notebook_code_hash(p.read_bytes()) != base
    nb.cells[2].source = "b = 2"
    nb.cells.insert(0, nbformat.v4.new_code_cell(""))
    nbformat.write(nb, p)
    assert notebook_code_hash(p.read_bytes()) != base


async def test_stated_file_hash_must_match_and_paths_stay_inside(start_kernel, jp_root_dir):
    (jp_root_dir / "data.txt").write_text("v1")
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run(
        "from jupyter_qguard.kernel.jobs import submit\n"
        "submit(bell, backend='aer_hw', shots=10, files={'data.txt': '0' * 64})"
    )
    assert res["error"]["ename"] == "QGuardError"
    assert "files/data.txt: changed between the request and its arrival" in res["error"]["evalue"]
    for bad in ["../outside.txt", "/etc/passwd"]:
        res = await k.run(f"submit(bell, backend='aer_hw', shots=10, files={{{bad!r}: None}})")
        assert res["error"]["ename"] == "QGuardError"
        assert "inside the workspace" in res["error"]["evalue"], res


@pytest.mark.parametrize(
    "qguard_config", [{"approval_ttl": 0.5, "expiry_check_interval": 0.2}], indirect=True
)
async def test_pending_approval_expires_after_the_ttl(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run("counts = %qguard submit bell --backend aer_hw --shots 10 --wait")
    assert res["error"]["ename"] == "QGuardDenied"
    assert "expired" in res["error"]["evalue"]
    r = await jp_fetch("qguard", "api", "jobs", params={"state": "expired"})
    job = json.loads(r.body)["jobs"][0]
    r = await approve(jp_fetch, job, raise_error=False)
    assert r.code == 409


async def test_rejections_reach_the_kernel_with_a_reason(start_kernel):
    k = await start_kernel()
    await k.run(
        "from qiskit import QuantumCircuit\nfrom qiskit.circuit import Parameter\n"
        "big = QuantumCircuit(30); big.measure_all()\n"
        "nomeas = QuantumCircuit(2); nomeas.h(0)\n"
        "th = Parameter('th'); par = QuantumCircuit(1); par.rx(th, 0); par.measure_all()"
    )
    cases = {
        "big": "the circuit uses 30 qubits; aer_simulator has 28",
        "nomeas": "the circuit has no measurements",
        "par": "1 unbound parameter(s)",
    }
    for name, reason in cases.items():
        res = await k.run(f"%qguard submit {name} --backend aer_simulator --shots 10 --wait")
        assert res["error"]["ename"] == "QGuardDenied", res
        assert "rejected" in res["error"]["evalue"] and reason in res["error"]["evalue"], res
    res = await k.run("%qguard submit big --backend no_such_backend --shots 10 --wait")
    assert (
        "backend no_such_backend is not on this policy's list of allowed backends"
        in res["error"]["evalue"]
    )


async def test_agent_kernel_refuses_to_start_without_a_broker(jp_serverapp, jp_fetch, broker):
    runtime.set_current(None)
    try:
        r = await jp_fetch(
            "api",
            "kernels",
            method="POST",
            body=json.dumps({"name": "qguard-agent"}),
            raise_error=False,
        )
        assert r.code == 503
        assert "qguard broker is not running" in r.body.decode()
        assert jp_serverapp.kernel_manager.list_kernel_ids() == []
    finally:
        runtime.set_current(broker)


async def test_magics_usage_and_listing(start_kernel):
    k = await start_kernel()
    res = await k.run("%qguard frobnicate")
    assert "usage:" in res["stdout"]
    res = await k.run("%qguard backends")
    assert res["error"] is None
    listing = res["results"][0]
    assert "aer_simulator" in listing and "aer_hw" in listing and "hardware" in listing
    await k.run(BELL)
    await k.run("%qguard submit bell --backend aer_simulator --shots 5 --wait")
    res = await k.run("%qguard jobs")
    assert "completed" in res["results"][0]
    who = await k.run("w = %qguard whoami")
    assert who["error"] is None
    w = await k.value("w")
    assert w["kernel_id"] == k.id
    assert w["sandbox"]["env"]["active"] is True


async def test_cell_magic_takes_the_last_expression(start_kernel):
    k = await start_kernel()
    res = await k.run(
        "%%qguard submit --backend aer_simulator --shots 64 --seed 5 --wait\n"
        "from qiskit import QuantumCircuit\n"
        "qc = QuantumCircuit(1)\nqc.x(0)\nqc.measure_all()\nqc"
    )
    assert res["error"] is None, res
    assert "Counts" not in res["stderr"]
    assert res["results"] == ["{'1': 64}"]


async def test_cancel_from_the_kernel(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run("job = %qguard submit bell --backend aer_hw --shots 10\nprint(job.job_id)")
    job_id = res["stdout"].strip()
    res = await k.run(f"%qguard cancel {job_id}")
    assert "cancelled" in res["stdout"]
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    assert json.loads(r.body)["state"] == "cancelled"
    # a kernel cannot see, or cancel, another kernel's job
    other = await start_kernel()
    res = await other.run(f"%qguard status {job_id}")
    assert res["error"]["ename"] == "QGuardError" and f"no job {job_id}" in res["error"]["evalue"]
