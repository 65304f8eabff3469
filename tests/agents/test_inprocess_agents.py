"""In-server agent extensions (Jupyter AI, notebook-intelligence, jupyter-server-mcp,
jupyter-mcp-server's /mcp) act with the server's authority and never show an agent token; while
one is enabled, QGuardApp.inprocess_agents decides: every hardware approval needs a TOTP code
(require_mfa, the default), the server does not start (refuse), or a warning only (allow).

The in-server agent is a stand-in (tests/support/standin_agent.py), a real server extension;
where the test plays the agent it reads the user's token from the server's runtime file, as a
shell tool of such an agent can."""

from __future__ import annotations

import datetime as dt
import getpass
import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyotp
import pytest
from support import log_records, standin_agent
from support.broker_flow import KEYRING, server_for, until
from support.fakecloud_proc import FakeCloud
from support.helpers import BELL, approve
from support.jupyter_proc import ServerProcess
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from traitlets.config import Config

from jupyter_qguard import credentials as cr

TESTS = Path(__file__).resolve().parents[1]
STANDIN = standin_agent.NAME
TABLE = {STANDIN: standin_agent.WHAT_IT_ALLOWS}
REASON = (
    f"in-server agent extension {STANDIN} is enabled and can act with this server's "
    "authority, so approving a job that is not on a simulator needs step-up MFA "
    "(QGuardApp.inprocess_agents = require_mfa)"
)
WARNING = (
    f"qguard: in-server agent extension {STANDIN} ({standin_agent.WHAT_IT_ALLOWS}) is enabled; "
    "QGuardApp.inprocess_agents = {mode}: {does}"
)
DOES = {
    "require_mfa": "every approval of a job that is not on a simulator needs a TOTP code",
    "allow": "nothing beyond this warning: approvals are held to the policy's MFA only",
}
REFUSAL = (
    f"qguard: not starting: in-server agent extension(s) {STANDIN} can act with this server's "
    "authority (and approve jobs with the user's token); disable them (jupyter server "
    "extension disable NAME) or set QGuardApp.inprocess_agents to require_mfa or allow"
)


# -- a real server process, with the stand-in -------------------------------------------------


def with_standin(server: ServerProcess, *args: str) -> ServerProcess:
    """The stand-in enabled as `jupyter server extension enable` enables an extension (a file
    in the user's jupyter_server_config.d), and named in the table. `support` is imported from
    tests/, so the server runs without -I, with tests/ on PYTHONPATH (qguard drops the
    workspace, its cwd, from sys.path and says so)."""
    enabled = server.base / "home" / ".jupyter" / "jupyter_server_config.d" / "standin.json"
    enabled.parent.mkdir(parents=True, exist_ok=True)
    enabled.write_text(json.dumps({"ServerApp": {"jpserver_extensions": {STANDIN: True}}}))
    server.launcher = [sys.executable, "-m", "jupyter_server"]
    server.extra_env = {**server.extra_env, "PYTHONPATH": str(TESTS)}
    # A Python literal: traitlets reads a Dict from the command line with literal_eval.
    server.extra_args += [f"--QGuardApp.inprocess_agent_extensions={TABLE!r}", *args]
    return server


def log_lines(server: ServerProcess, level: str) -> list[str]:
    """The server log's messages at one level ("W", "C", ...), without the bracketed prefix."""
    return [
        line.split("] ", 1)[1]
        for line in server.log_path.read_text().splitlines()
        if line.startswith(f"[{level} ") and "] " in line
    ]


def the_users_token(server: ServerProcess) -> str:
    """What a shell tool running as the server's user reads: the server's runtime file."""
    runtime = server.base / "home" / ".local/share/jupyter/runtime"
    [info] = [json.loads(p.read_text()) for p in runtime.glob("jpserver-*.json")]
    return info["token"]


async def post_approval(
    server: ServerProcess, token: str, job: dict[str, Any], otp: str | None = None
) -> HTTPResponse:
    body = {"digest": job["digest"], **({"otp": otp} if otp is not None else {})}
    req = HTTPRequest(
        f"{server.url}/qguard/api/jobs/{job['id']}/approve",
        method="POST",
        headers={"Authorization": f"token {token}"},
        body=json.dumps(body),
        request_timeout=60,
    )
    return await AsyncHTTPClient().fetch(req, raise_error=False)


def audit_entries(server: ServerProcess) -> list[dict[str, Any]]:
    path = server.state / "audit" / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def enroll(store: cr.CredentialStore, user: str) -> pyotp.TOTP:
    """As `jupyter qguard mfa enroll` does; the URI read back as an authenticator app would."""
    out = io.StringIO()
    assert cr.cli_mfa_enroll(store, user, qr=False, out=out) == 0
    [uri] = [line for line in out.getvalue().splitlines() if line.startswith("otpauth://")]
    return pyotp.parse_uri(uri)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Any:
    fc = FakeCloud(tmp_path_factory.mktemp("cloud")).start()
    yield fc
    fc.stop()


async def test_hardware_approval_needs_a_totp_code_while_one_is_enabled(tmp_path, cloud):
    # A patient lint: the first parse starts Aer's workers, slow on a busy 2-core machine.
    server = with_standin(
        server_for(tmp_path, cloud, "--QGuardApp.lint_timeout_seconds=180")
    ).start()
    try:
        # The start log names the extension, what it allows and what qguard does about it.
        warnings = log_lines(server, "W")
        assert WARNING.format(mode="require_mfa", does=DOES["require_mfa"]) in warnings
        kernel = await server.start_kernel()
        assert (await kernel.run(BELL))["error"] is None
        # A simulator job still runs at once (its tier needs no approval, so no code either).
        sim = await kernel.run(
            "counts = %qguard submit bell --backend aer_simulator --shots 10 --seed 1 --wait\n"
            "print(sum(counts.values()))"
        )
        assert sim["error"] is None and sim["stdout"].split()[-1] == "10", sim
        res = await kernel.run(
            "job = %qguard submit bell --backend fake_brisbane --shots 200 --seed 5\n"
            "print(job.job_id)"
        )
        assert res["error"] is None, res
        job = await until(server, res["stdout"].split()[-1], {"pending_approval"})
        # The job's JSON (what the panel reads) says a code is needed, and why.
        assert job["decision"]["mfa_required"] is False  # the policy alone would not ask
        assert job["mfa"] == {"required": True, "reasons": [REASON]}

        # The agent's way in: the user's token, from the server's runtime file.
        token = the_users_token(server)
        assert token == server.token
        r = await post_approval(server, token, job)
        assert r.code == 409
        assert json.loads(r.body)["message"] == (
            f"{REASON}, and {getpass.getuser()} has no MFA enrolled: run `jupyter qguard mfa "
            "enroll` on the server"
        )
        keyring_file = tmp_path / "keyring" / "keyring.cfg"
        store = cr.CredentialStore(cr.backend_from_name(KEYRING, file_path=str(keyring_file)))
        totp = enroll(store, getpass.getuser())
        r = await post_approval(server, token, job)
        assert (r.code, r.reason) == (403, "mfa_required")
        assert json.loads(r.body)["message"] == (
            f"{REASON}: send the current code of {getpass.getuser()}'s authenticator app"
        )
        assert (await server.json(f"qguard/api/jobs/{job['id']}"))["state"] == "pending_approval"
        now = dt.datetime.now(dt.UTC)
        valid = {totp.at(now + dt.timedelta(seconds=30 * k)) for k in (-1, 0, 1)}
        wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
        r = await post_approval(server, token, job, otp=wrong)
        assert (r.code, json.loads(r.body)["message"]) == (
            409,
            "the MFA code is wrong or has expired",
        )
        # The person, with their authenticator's code: approved, and it runs.
        r = await post_approval(server, server.token, job, otp=totp.now())
        assert r.code == 200, r.body
        done = await until(server, job["id"], {"completed", "failed"})
        assert done["state"] == "completed", done.get("reason")
        assert sum(done["result"]["counts"].values()) == 200
        kernel.close()
    finally:
        server.stop()

    entries = audit_entries(server)
    [found] = [e for e in entries if e["kind"] == "server.inprocess_agents"]
    assert (found["mode"], found["mfa_forced"]) == ("require_mfa", True)
    assert found["extensions"] == [
        {"name": STANDIN, "allows": standin_agent.WHAT_IT_ALLOWS, "found_as": [STANDIN]}
    ]
    mine = [e for e in entries if e.get("job") == job["id"]]
    refused = [(e["why"], e["mfa"]) for e in mine if e["kind"] == "approval.refused"]
    assert refused == [("mfa_not_enrolled", [REASON]), ("mfa_required", [REASON])]
    checks = [(e["kind"], e.get("why"), e["mfa"]) for e in mine if e["kind"].startswith("mfa.")]
    assert checks == [("mfa.refused", "wrong", [REASON]), ("mfa.verified", None, [REASON])]
    [approval] = [e for e in mine if e["kind"] == "job.approval"]
    assert approval["mfa"] == [REASON]


def test_refuse_mode_a_real_server_exits_non_zero_naming_it(tmp_path):
    server = with_standin(ServerProcess(tmp_path), "--QGuardApp.inprocess_agents=refuse")
    with pytest.raises(RuntimeError, match="server exited"):
        server.start()
    assert server.stop() == 1  # it had exited: its status
    assert log_lines(server, "C") == [REFUSAL]
    # It stopped before touching any state (no database, no audit log), and never listened.
    assert not (server.state / "qguard.db").exists() and not (server.state / "audit").exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


# -- the in-process server of pytest-jupyter ----------------------------------------------------

# Aer standing in for hardware (tests/conftest.py: aer_hw has the hardware tier); the default
# pack's simulator tier given an approval here, to show it never needs a code.
SIMULATOR_NEEDS_APPROVAL = {
    "backends": {"aer_hw": {"tier": "hardware", "provider": "aer", "price": {"model": "free"}}},
    "tiers": {"simulator": {"approvals": 1, "mfa": False}},
}


@pytest.fixture
def start_log() -> Any:
    """What QGuardApp logs while the in-process server starts (support/log_records.py)."""
    log_records.clear()
    yield log_records
    log_records.clear()


@pytest.fixture
def server_extras(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Extra server config: parametrize it (indirect=True)."""
    return dict(getattr(request, "param", {}))


@pytest.fixture
def jp_server_config(jp_server_config: Config, server_extras: dict, start_log: Any) -> Config:
    config = Config(json.loads(json.dumps(jp_server_config)))
    config.merge(Config(server_extras))
    config.QGuardApp.logging_config = start_log.logging_config("QGuardApp")
    return config


def standin_config(mode: str | None = None, **extra: Any) -> dict[str, Any]:
    qguard = {"inprocess_agent_extensions": {**TABLE, **extra.pop("table", {})}}
    if mode:
        qguard["inprocess_agents"] = mode
    qguard.update(extra.pop("qguard", {}))
    return {
        "ServerApp": {
            "jpserver_extensions": {
                "jupyter_qguard": True,
                STANDIN: True,
                **extra.pop("extensions", {}),
            }
        },
        "QGuardApp": qguard,
        **extra,
    }


async def pending_job(start_kernel: Any, jp_fetch: Any, backend: str) -> dict[str, Any]:
    k = await start_kernel()
    assert (await k.run(BELL))["error"] is None
    res = await k.run(f"j = %qguard submit bell --backend {backend} --shots 10\nprint(j.job_id)")
    assert res["error"] is None, res
    job_id = res["stdout"].split()[-1]
    job = json.loads((await jp_fetch("qguard", "api", "jobs", job_id)).body)
    assert job["state"] == "pending_approval", job
    return job


@pytest.mark.parametrize("server_extras", [standin_config("allow")], indirect=True)
async def test_allow_mode_only_warns(start_kernel, jp_fetch, broker, jp_serverapp, start_log):
    assert jp_serverapp.web_app.settings[standin_agent.LOADED_KEY] is True
    assert WARNING.format(mode="allow", does=DOES["allow"]) in start_log.messages(logging.WARNING)
    assert broker.forced_mfa_reason is None
    job = await pending_job(start_kernel, jp_fetch, "aer_hw")
    assert job["mfa"] == {"required": False, "reasons": []}
    r = await approve(jp_fetch, job)
    assert r.code == 200 and json.loads(r.body)["state"] in ("queued", "submitted", "completed")


async def test_without_one_approvals_are_as_before(
    start_kernel, jp_fetch, broker, jp_serverapp, start_log
):
    assert standin_agent.LOADED_KEY not in jp_serverapp.web_app.settings
    assert broker.forced_mfa_reason is None
    assert start_log.messages(logging.INFO)  # the start log was read
    assert not [m for m in start_log.messages(logging.WARNING) if "in-server agent" in m]
    job = await pending_job(start_kernel, jp_fetch, "aer_hw")
    assert job["mfa"] == {"required": False, "reasons": []}
    r = await approve(jp_fetch, job)
    assert r.code == 200 and json.loads(r.body)["state"] in ("queued", "submitted", "completed")
    entries = broker.audit.tail(50, job["id"])
    assert not [e for e in entries if e["kind"] == "approval.refused"]
    [approval] = [e for e in entries if e["kind"] == "job.approval"]
    assert "mfa" not in approval


MCP_TABLE = {"jupyter_server_mcp": "the MCP stand-in's port"}


@pytest.mark.parametrize(
    "server_extras",
    [
        standin_config(
            table=MCP_TABLE,
            extensions={"support.standin_mcp": True},
            qguard={"policy_data": SIMULATOR_NEEDS_APPROVAL},
            MCPExtensionApp={"mcp_port": 4555},
        )
    ],
    indirect=True,
)
async def test_require_mfa_spares_simulators_and_reports_the_mcp_port(
    start_kernel, jp_fetch, broker, start_log
):
    warnings = start_log.messages(logging.WARNING)
    does = DOES["require_mfa"]
    assert (
        "qguard: in-server agent extension jupyter_server_mcp (the MCP stand-in's port; MCP port "
        "localhost:4555 with no authentication, from MCPExtensionApp.mcp_port) is enabled; "
        f"QGuardApp.inprocess_agents = require_mfa: {does}"
    ) in warnings
    assert WARNING.format(mode="require_mfa", does=does) in warnings
    both = (
        f"in-server agent extensions jupyter_server_mcp, {STANDIN} are enabled and can act "
        "with this server's authority, so approving a job that is not on a simulator needs "
        "step-up MFA (QGuardApp.inprocess_agents = require_mfa)"
    )
    assert broker.forced_mfa_reason == both
    # A simulator job that the pack sends for approval: no code, the extensions notwithstanding.
    sim = await pending_job(start_kernel, jp_fetch, "aer_simulator")
    assert sim["decision"]["tier"] == "simulator"
    assert sim["mfa"] == {"required": False, "reasons": []}
    assert (await approve(jp_fetch, sim)).code == 200
    # Hardware: 403 mfa_required (a code enrolled, none sent), pending still; the listing says
    # so too.
    enroll(broker.credentials, broker.user)
    hw = await pending_job(start_kernel, jp_fetch, "aer_hw")
    r = await approve(jp_fetch, hw, raise_error=False)
    assert (r.code, r.reason) == (403, "mfa_required")
    listed = json.loads(
        (await jp_fetch("qguard", "api", "jobs", params={"state": "pending_approval"})).body
    )
    [row] = [j for j in listed["jobs"] if j["id"] == hw["id"]]
    assert (row["state"], row["mfa"]) == ("pending_approval", {"required": True, "reasons": [both]})


# -- the panel, in a real browser (ui-tests/inprocess/, Playwright with Debian's chromium) --------

PANEL_CELL = BELL + (
    "job = %qguard submit bell --backend aer_hw --shots 100 --seed 3\n"
    'print("job", job.job_id)\n'
    "counts = job.result()\n"
    'print("counts", dict(sorted(counts.items())))\n'
)


@pytest.mark.timeout(1200)
def test_the_panel_says_why_next_to_the_code_field(tmp_path):
    import nbformat
    from support.browser import CHROMIUM, UI, ensure_chromium, ensure_runner

    ensure_chromium()
    ensure_runner()
    keyring_file = tmp_path / "keyring.cfg"
    keyring_options = json.dumps({"file_path": str(keyring_file)})
    server = with_standin(
        ServerProcess(
            tmp_path,
            extra_args=[
                f"--QGuardApp.backends={json.dumps({'aer_hw': {'provider': 'aer', 'qubits': 28}})}",
                f"--QGuardApp.policy_data={SIMULATOR_NEEDS_APPROVAL!r}",
                f"--QGuardApp.keyring_backend={KEYRING}",
                f"--QGuardApp.keyring_backend_options={keyring_options}",
                "--QGuardApp.lint_timeout_seconds=180",
            ],
        )
    )
    server.root.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "qguard-agent",
        "display_name": "Python 3 (qguard agent)",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(PANEL_CELL)]
    nbformat.write(nb, server.root / "inprocess.ipynb")
    store = cr.CredentialStore(cr.backend_from_name(KEYRING, file_path=str(keyring_file)))
    secret = enroll(store, getpass.getuser()).secret
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    log = artifacts / "playwright.log"
    server.start()
    try:
        with log.open("w") as out:
            code = subprocess.run(
                [
                    str(UI / "node_modules" / ".bin" / "playwright"),
                    "test",
                    "--config",
                    "playwright.inprocess.config.ts",
                ],
                cwd=UI,
                env={
                    **os.environ,
                    "QGUARD_URL": server.url,
                    "QGUARD_TOKEN": server.token,
                    "QGUARD_ARTIFACTS": str(artifacts),
                    "QGUARD_CHROMIUM": CHROMIUM,
                    "QGUARD_TOTP_SECRET": secret,
                    "QGUARD_INPROCESS_EXTENSION": STANDIN,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            ).returncode
    finally:
        server.stop()
    report = log.read_text()
    assert code == 0, report[-8000:]
    assert "1 passed" in report, report[-3000:]
    assert (artifacts / "dialog-inprocess.png").stat().st_size > 10_000


# -- jupyter qguard doctor ----------------------------------------------------------------------


def doctor(config_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "JPY_"))},
        "JUPYTER_CONFIG_DIR": str(config_dir),
        "HOME": str(config_dir.parent),
        # The stand-in is "installed" where the doctor looks (find_spec, no import).
        "PYTHONPATH": str(TESTS),
    }
    exe = os.path.join(os.path.dirname(sys.executable), "jupyter")
    return subprocess.run(
        [exe, "qguard", "doctor", *args], env=env, capture_output=True, text=True, timeout=180
    )


def test_doctor_lists_what_the_config_enables(tmp_path):
    cfg = tmp_path / "cfg"
    (cfg / "jupyter_server_config.d").mkdir(parents=True)
    # As `jupyter server extension enable` writes it, plus the real jupyter-server-mcp's name
    # (not installed here: the doctor says so, and reports its port all the same).
    (cfg / "jupyter_server_config.d" / "agents.json").write_text(
        json.dumps(
            {"ServerApp": {"jpserver_extensions": {STANDIN: True, "jupyter_server_mcp": True}}}
        )
    )
    table = {**TABLE, "jupyter_server_mcp": "an MCP port"}
    (cfg / "jupyter_server_config.json").write_text(
        json.dumps({"QGuardApp": {"inprocess_agent_extensions": table}})
    )
    r = doctor(cfg, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)["inprocess_agents"]
    assert rep == {
        "mode": "require_mfa",
        "extensions": [
            {
                "name": "jupyter_server_mcp",
                "allows": "an MCP port",
                "found_as": ["jupyter_server_mcp"],
                "mcp": {
                    "host": "localhost",
                    "port": 3001,
                    "authenticated": False,
                    "source": "its documented default: nothing sets MCPExtensionApp.mcp_port",
                },
                "enabled_in": str(cfg),
                "installed": False,
            },
            {
                "name": STANDIN,
                "allows": standin_agent.WHAT_IT_ALLOWS,
                "found_as": [STANDIN],
                "enabled_in": str(cfg),
                "installed": True,
            },
        ],
        "action": DOES["require_mfa"],
        "server_starts": True,
        "totp_secret": rep["totp_secret"],
    }
    assert rep["totp_secret"]["readable_by_same_user"] is None  # the OS keyring, unknown here

    # The port as its own config file sets it; refuse: the server would not start (exit 1);
    # the file keyring: the secret is readable by the agent, and the text says so.
    (cfg / "jupyter_jupyter_server_mcp_config.json").write_text(
        json.dumps({"MCPExtensionApp": {"mcp_port": 4555}})
    )
    (cfg / "jupyter_server_config.json").write_text(
        json.dumps(
            {
                "QGuardApp": {
                    "inprocess_agent_extensions": table,
                    "inprocess_agents": "refuse",
                    "keyring_backend": KEYRING,
                }
            }
        )
    )
    r = doctor(cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    text = r.stdout.split("In-server agent extensions", 1)[1].splitlines()
    assert text == [
        " (they act with the server's authority, no agent token):",
        "  jupyter_server_mcp [not installed: the server will skip it]: an MCP port",
        "    MCP port localhost:4555, UNAUTHENTICATED, from MCPExtensionApp.mcp_port in the config",
        f"    enabled in {cfg}",
        f"  {STANDIN}: {standin_agent.WHAT_IT_ALLOWS}",
        f"    enabled in {cfg}",
        "  QGuardApp.inprocess_agents = refuse: the server does not start",
    ]
    r = doctor(cfg, "--json", "--QGuardApp.inprocess_agents=require_mfa")
    rep = json.loads(r.stdout)["inprocess_agents"]
    assert r.returncode == 0 and rep["server_starts"] is True
    assert rep["totp_secret"]["readable_by_same_user"] is True


def test_doctor_without_any(tmp_path):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    r = doctor(cfg)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith(
        "In-server agent extensions (they act with the server's authority, no agent token):\n"
        "  none enabled in the Jupyter config."
    )
