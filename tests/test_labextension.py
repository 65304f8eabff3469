"""The JupyterLab extension (labextension/): built by the wheel's build hook, installed where
JupyterLab finds prebuilt extensions, listed as enabled and compatible, settings documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from jupyter_qguard import __version__

NAME = "jupyter-qguard"
SOURCE = Path(__file__).resolve().parents[1] / "labextension"
INSTALLED = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / NAME
SCHEMAS = [
    SOURCE / "schema" / "plugin.json",
    INSTALLED / "schemas" / NAME / "plugin.json",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_jupyterlab_lists_it_enabled_and_ok():
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # The listing goes to the log (stderr), coloured.
    text = ANSI.sub("", proc.stdout + proc.stderr)
    rows = [" ".join(line.split()) for line in text.splitlines() if line.split()[:1] == [NAME]]
    assert rows == [f"{NAME} v{__version__} enabled OK (python, jupyter_qguard)"], text


def test_npm_package_version_is_the_python_one():
    assert json.loads((SOURCE / "package.json").read_text())["version"] == __version__


def test_installed_build_loads_an_existing_remote_entry():
    meta = json.loads((INSTALLED / "package.json").read_text())
    build = meta["jupyterlab"]["_build"]
    assert re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", build["load"]), build
    assert (INSTALLED / build["load"]).is_file()
    assert build["extension"] == "./extension"
    install = json.loads((INSTALLED / "install.json").read_text())
    assert install["packageManager"] == "python"
    assert install["packageName"] == "jupyter_qguard"


@pytest.mark.parametrize("path", SCHEMAS, ids=["source", "installed"])
def test_every_setting_has_a_title_a_description_and_a_valid_default(path: Path):
    schema = json.loads(path.read_text())
    properties = schema["properties"]
    assert len(properties) >= 2
    for name, prop in properties.items():
        assert prop.get("title", "").strip(), name
        assert prop.get("description", "").strip(), name
        assert "default" in prop, name
    jsonschema.validate({k: p["default"] for k, p in properties.items()}, schema)


def test_the_plugin_reads_only_settings_the_schema_declares():
    source = (SOURCE / "src" / "index.ts").read_text()
    read = set(re.findall(r"settings\.get\('(\w+)'\)", source))
    declared = set(json.loads((SOURCE / "schema" / "plugin.json").read_text())["properties"])
    assert read == declared
