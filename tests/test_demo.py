"""`make demo` starts JupyterLab with the guard, and its sample notebook runs as written."""

from __future__ import annotations

import asyncio
import json
import sys

from support.jupyter_proc import ServerProcess


async def test_demo_notebook_runs_and_waits_for_approval(tmp_path):
    workspace = tmp_path / "workspace"
    server = ServerProcess(tmp_path)
    server.launcher = [
        sys.executable,
        "-m",
        "jupyter_qguard.demo",
        "--workspace",
        str(workspace),
        "--port",
        str(server.port),
        "--no-browser",
    ]
    server.start()
    try:
        r = await server.fetch("lab")
        assert r.code == 200
        nb = json.loads((workspace / "qguard-demo.ipynb").read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "qguard-agent"
        code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        kernel = await server.start_kernel(nb["metadata"]["kernelspec"]["name"])
        for cell in code[:-1]:
            res = await kernel.run(cell)
            assert res["error"] is None, (cell, res)
        assert "'11'" in (await kernel.run("print(counts)"))["stdout"]
        pending = (await server.json("qguard/api/jobs?state=pending_approval"))["jobs"]
        assert [j["backend"] for j in pending] == ["fake_brisbane"]
        assert pending[0]["decision"]["preflight"]["noise_model"] == "fake_brisbane"
        last = asyncio.ensure_future(kernel.run(code[-1]))
        await asyncio.sleep(0.5)
        assert not last.done()
        await server.fetch(
            f"qguard/api/jobs/{pending[0]['id']}/approve",
            method="POST",
            body={"digest": pending[0]["digest"]},
        )
        res = await asyncio.wait_for(last, 120)
        assert res["error"] is None, res
        counts = (await kernel.run("print(sum(counts.values()))"))["stdout"].strip()
        assert counts == "500"
    finally:
        server.stop()
