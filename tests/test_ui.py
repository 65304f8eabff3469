"""Browser tests of the approval panel (`ui-tests/`, Playwright with Debian's chromium), against a
real server with the guard, real agent kernels and the built lab extension.

Set-up is part of the test, as in CI: chromium is installed with apt-get when it is missing (as
root), the test runner with `npm ci` from ui-tests/package-lock.json (no browser download)."""

from __future__ import annotations

import getpass
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from support.browser import CHROMIUM, UI, ensure_chromium, ensure_runner
from support.jupyter_proc import ServerProcess

from jupyter_qguard import credentials as cr

ARTIFACTS = UI / "artifacts"
BACKENDS = {
    "aer_simulator": {"provider": "aer", "qubits": 28},
    "aer_hw": {"provider": "aer", "qubits": 28},
    "aer_guarded": {"provider": "aer", "qubits": 28},
}
POLICY = {
    "backends": {
        "aer_hw": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}},
        # One approval, with a second factor: the step-up test.
        "aer_guarded": {"tier": "stepup", "provider": "aer", "price": {"model": "free"}},
    },
    "tiers": {"stepup": {"approvals": 1, "mfa": True}},
}
BELL = """\
from qiskit import QuantumCircuit
bell = QuantumCircuit(2)
bell.h(0)
bell.cx(0, 1)
bell.measure_all()
"""
SUBMIT_AND_WAIT = """\
job = %qguard submit bell --backend {backend} --shots 200 --seed 3
print("job", job.job_id)
counts = job.result()
print("counts", dict(sorted(counts.items())))
"""
APPROVE_CELL = BELL + SUBMIT_AND_WAIT.format(backend="aer_hw")
STEPUP_CELL = BELL + SUBMIT_AND_WAIT.format(backend="aer_guarded")
# Each payload records that it ran, then does what an attacker in the page would: list the
# pending jobs with the user's cookie and approve each one with its digest.
ATTACK = (
    "(function(tag){window.qguardRan=(window.qguardRan||[]).concat([tag]);"
    "var x=(document.cookie.match(/_xsrf=([^;]+)/)||[])[1]||'';"
    "fetch('/qguard/api/jobs?state=pending_approval').then(function(r){return r.json()})"
    ".then(function(d){d.jobs.forEach(function(j){fetch('/qguard/api/jobs/'+j.id+'/approve',"
    "{method:'POST',headers:{'X-XSRFToken':x,'Content-Type':'application/json'},"
    "body:JSON.stringify({digest:j.digest})})})})})"
)
PAYLOADS_CELL = f"""\
from IPython.display import HTML, SVG, Javascript, Markdown, display
ATTACK = {ATTACK!r}
display(Javascript(ATTACK + "('javascript')"))
display(HTML(
    "<b id='qguard-html'>html</b><script>" + ATTACK + "('html-script')</script>"
    '<img src="data:," onerror="' + ATTACK + "('html-onerror')" + '">'
))
display(SVG(
    '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="20" onload="'
    + ATTACK + "('svg-onload')" + '"><script>' + ATTACK + "('svg-script')</script>"
    '<rect width="20" height="20"/></svg>'
))
display(Markdown(
    "**markdown** <img src='data:,' onerror=\\"" + ATTACK + "('markdown-onerror')\\">"
    "\\n\\n<script>" + ATTACK + "('markdown-script')</script>"
    "\\n\\n<button data-commandlinker-command='notebook:trust'>trust me</button>"
))
print("payloads shown")
"""
SUBMIT_CELL = (
    BELL
    + """\
job = %qguard submit bell --backend aer_hw --shots 100 --seed 5
print("job", job.job_id)
"""
)


def notebook(path: Path, *sources: str, kernel: str = "qguard-agent") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": kernel,
        "display_name": "Python 3 (qguard agent)" if kernel == "qguard-agent" else "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, path)


def agent_token(state: Path) -> str:
    """A token for the agent "bot" (default manifest), made as `jupyter qguard agent-token
    create` makes it, in the database the server will use."""
    from jupyter_qguard.agents.manifest import Manifest
    from jupyter_qguard.agents.tokens import AgentTokens
    from jupyter_qguard.broker.store import Store, sqlite_url

    state.mkdir(parents=True, exist_ok=True)
    store = Store(sqlite_url(str(state / "qguard.db")))
    pack = Path(sys.prefix) / "share" / "jupyter_qguard" / "policies"
    try:
        tokens = AgentTokens(store.engine, policy_dir=pack)
        _, token = tokens.create("bot", Manifest.load(None, policy_dir=pack))
    finally:
        store.close()
    return token


def enroll_totp(keyring_file: Path) -> str:
    """The server user's TOTP secret, enrolled as `jupyter qguard mfa enroll` does; the step-up
    test computes codes from it as an authenticator app would."""
    store = cr.CredentialStore(
        cr.backend_from_name("keyrings.alt.file.PlaintextKeyring", file_path=str(keyring_file))
    )
    out = io.StringIO()
    assert cr.cli_mfa_enroll(store, getpass.getuser(), qr=False, out=out) == 0
    [uri] = [line for line in out.getvalue().splitlines() if line.startswith("otpauth://")]
    return uri.split("secret=", 1)[1].split("&", 1)[0]


# Installing chromium on a fresh machine, then ten browser tests against one server.
@pytest.mark.timeout(1500)
def test_the_panel_in_a_real_browser(tmp_path):
    ensure_chromium()
    ensure_runner()
    server = ServerProcess(
        tmp_path,
        extra_args=[
            f"--QGuardApp.backends={json.dumps(BACKENDS)}",
            # A Python literal: traitlets reads it with literal_eval (JSON's true is not one).
            f"--QGuardApp.policy_data={POLICY!r}",
            "--QGuardApp.keyring_backend=keyrings.alt.file.PlaintextKeyring",
            "--QGuardApp.keyring_backend_options="
            + json.dumps({"file_path": str(tmp_path / "keyring.cfg")}),
        ],
    )
    server.root.mkdir(parents=True)
    for name in ("approve", "deny", "dark", "voided"):
        notebook(server.root / f"{name}.ipynb", APPROVE_CELL)
    notebook(server.root / "stepup.ipynb", STEPUP_CELL)
    notebook(server.root / "alerts.ipynb", 'open("conftest.py", "w").write("")\nprint("written")')
    notebook(server.root / "outputs.ipynb", SUBMIT_CELL, PAYLOADS_CELL)
    # The same payloads in an ordinary kernel: they run there, which shows the test can fail.
    notebook(server.root / "control.ipynb", PAYLOADS_CELL, kernel="python3")
    secret = enroll_totp(tmp_path / "keyring.cfg")
    agent = agent_token(server.state)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    log = ARTIFACTS / "playwright.log"
    server.start()
    try:
        # To a file, not a pipe: what ran is still there if the run is cut short.
        with log.open("w") as out:
            code = subprocess.run(
                [str(UI / "node_modules" / ".bin" / "playwright"), "test"],
                cwd=UI,
                env={
                    **os.environ,
                    "QGUARD_URL": server.url,
                    "QGUARD_TOKEN": server.token,
                    "QGUARD_ARTIFACTS": str(ARTIFACTS),
                    "QGUARD_CHROMIUM": CHROMIUM,
                    "QGUARD_TOTP_SECRET": secret,
                    "QGUARD_AGENT_TOKEN": agent,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            ).returncode
    finally:
        server.stop()
    report = log.read_text()
    sys.stdout.write(report[-6000:])
    # The agent's token went over the wire in a header and a websocket URL: never into the log.
    assert agent.split("_")[-1] not in server.log_path.read_text()
    assert code == 0, report[-8000:]
    assert "10 passed" in report, report[-3000:]
    for theme in ("light", "dark"):
        assert (ARTIFACTS / f"panel-pending-{theme}.png").stat().st_size > 10_000
