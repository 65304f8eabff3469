"""A likely secret in the workspace stops agent kernels from starting (the message names the
notebook, the cell and the line, never the value); `warn` starts them and raises an alert."""

from __future__ import annotations

import json

import nbformat
import pytest

KEY = "AKIAIOSFODNN7EXAMPLE"  # AWS's documentation example key id


def plant(root):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import boto3"),
        nbformat.v4.new_code_cell(f"session = boto3.Session(\n    aws_access_key_id='{KEY}',\n)"),
    ]
    nbformat.write(nb, root / "leaky.ipynb")
    return nb


async def start(jp_fetch):
    return await jp_fetch(
        "api",
        "kernels",
        method="POST",
        body=json.dumps({"name": "qguard-agent"}),
        raise_error=False,
    )


async def test_a_key_in_a_notebook_cell_blocks_the_agent_kernel(jp_root_dir, jp_fetch, broker):
    nb = plant(jp_root_dir)
    r = await start(jp_fetch)
    assert r.code == 403
    message = json.loads(r.body)["message"]
    cell_id = nb.cells[1].id
    assert message == (
        "qguard: the workspace holds 1 likely secret(s) an agent kernel could read: "
        f"leaky.ipynb, cell 1 (id {cell_id}), line 2: AWS Access Key. Move credentials to "
        "the keyring (`jupyter qguard credentials set ...`) and out of the workspace, or set "
        "QGuardApp.secret_scan = 'warn' to start anyway."
    )
    assert KEY[4:] not in r.body.decode()
    # nothing started
    listed = json.loads((await jp_fetch("api", "kernels")).body)
    assert listed == []
    # the person removes it: the scan before the next start passes
    (jp_root_dir / "leaky.ipynb").unlink()
    report = await broker.scan_for_secrets()
    assert report["findings"] == [] and report["truncated"] is False


@pytest.mark.parametrize("qguard_config", [{"secret_scan": "warn"}], indirect=True)
async def test_warn_starts_the_kernel_and_raises_an_alert(
    jp_root_dir, jp_fetch, jp_ws_fetch, broker
):
    plant(jp_root_dir)
    ws = await jp_ws_fetch("qguard", "api", "events")
    r = await start(jp_fetch)
    assert r.code == 201
    while True:
        event = json.loads(await ws.read_message())
        if event["type"] == "alert":
            break
    assert event["kind"] == "secrets"
    assert [f.split(": ")[-1] for f in event["findings"]] == ["AWS Access Key"]
    # The panel's toast: one sentence, with where the finding is.
    assert event["message"] == (
        "what looks like a secret is in the workspace, where agent kernels can read it: "
        + event["findings"][0]
    )
    assert KEY[4:] not in json.dumps(event)


async def test_a_secret_written_into_the_workspace_raises_an_alert(
    jp_root_dir, jp_ws_fetch, broker
):
    ws = await jp_ws_fetch("qguard", "api", "events")
    (jp_root_dir / "config.py").write_text(f"AWS_KEY = '{KEY}'\n")
    while True:
        event = json.loads(await ws.read_message())
        if event["type"] == "alert" and event.get("path") == "config.py":
            break
    assert event["findings"] == ["config.py, line 1: AWS Access Key"]
    assert KEY[4:] not in json.dumps(event)
