"""Agents' programs are parsed, linted, drawn and simulated only in sandboxed program workers
(jupyter_qguard/sandbox/worker_pool.py, worker_launch.py): what such a worker can reach, for a
root server and an unprivileged one; a worker past lint_timeout killed (its processes gone)
and replaced; QPY older than format 13 refused (CVE-2025-2000); gates that pass for standard
ones refused; and the review drawing the circuit as it will run, the source labelled as the
kernel's own word."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.helpers import BELL, wait_for

from jupyter_qguard.broker.service import SOURCE_NOTE

UNPRIVILEGED = "qgtest"

BRISBANE = {
    "backends": {
        "aer_simulator": {"provider": "aer", "qubits": 28},
        "aer_hw": {"provider": "aer", "qubits": 28},
        "aer_brisbane": {"provider": "aer", "qubits": 127, "snapshot": "fake_brisbane"},
    },
    "policy_data": {
        "backends": {
            "aer_hw": {"tier": "hardware", "provider": "aer"},
            "aer_brisbane": {"tier": "hardware", "provider": "aer"},
        }
    },
    "preflight_timeout_seconds": 60,
}


async def _job(jp_fetch, job_id):
    r = await jp_fetch("qguard", "api", "jobs", job_id)
    return json.loads(r.body)


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it, now."""
    out = [pid]
    for p in out:
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                out += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                pass
    return out


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for whoever reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


# -- what a worker can reach ------------------------------------------------------------------


def _listeners(base: Path) -> tuple[socket.socket, socket.socket]:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(base / "bus"))
    unix.listen(8)
    os.chmod(base / "bus", 0o777)
    return tcp, unix


async def test_the_servers_program_worker_reaches_no_network_keyring_state_or_workspace(
    broker, jp_root_dir, tmp_path
):
    """The real server's own pool (root here): each attempt fails with its exact errno, and
    nothing lands in the workspace."""
    aer = broker.providers["aer"]
    keyring = tmp_path / "keyring.cfg"  # conftest's keyring file: the audit key is in it
    state = tmp_path / "qguard-state"
    assert keyring.read_bytes() and state.is_dir()  # there, and readable to the server
    tcp, unix = _listeners(tmp_path)
    planted = jp_root_dir / "written-by-a-worker.txt"
    try:
        port = tcp.getsockname()[1]
        seen = await aer.probe(
            {
                "tcp": [["127.0.0.1", port]],
                "unix": [str(tmp_path / "bus")],
                "read": [str(keyring), str(state / "qguard.db")],
                "list": [str(state), str(jp_root_dir)],
                "write": [str(planted)],
            }
        )
    finally:
        tcp.close()
        unix.close()
    assert seen["tcp"] == {f"127.0.0.1:{port}": "EPERM"}  # seccomp: no socket but AF_UNIX
    assert seen["unix"] == {str(tmp_path / "bus"): "EPERM"}  # seccomp: no connect() at all
    assert seen["read"] == {str(keyring): "EACCES", str(state / "qguard.db"): "EACCES"}
    assert seen["list"] == {str(state): "EACCES", str(jp_root_dir): "EACCES"}
    assert seen["write"] == {str(planted): "EACCES"}
    assert not planted.exists()
    # A uid of its own (the server is root), in a pid namespace of its own.
    assert seen["uid"] not in (0, os.getuid()) and seen["pid"] == 2
    [report, *_] = aer.pool().reports()
    for layer in ("env", "nonroot", "namespaces", "rlimits", "landlock", "seccomp"):
        assert report[layer]["active"], (layer, report[layer])
    assert report["seccomp"]["profile"] == "kernel"  # the agent kernel's filter


PROBE_SCRIPT = r"""
import asyncio, io, json, os, socket, sys

from qiskit import QuantumCircuit, qpy

from jupyter_qguard.providers.aer import AerProvider
from jupyter_qguard.sandbox import rlimits
from jupyter_qguard.sandbox.environment import DEFAULT_ALLOWLIST

plan = json.loads(sys.argv[1])


def unconfined():
    # The same attempts from this process, as the server's user: each must succeed, or the
    # worker's failures below would prove nothing.
    out = {}
    with socket.create_connection(tuple(plan["tcp"][0]), timeout=2):
        out["tcp"] = "ok"
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(plan["unix"][0])
        out["unix"] = "ok"
    out["read"] = [len(open(p, "rb").read()) > 0 for p in plan["read"]]
    out["list"] = [isinstance(os.listdir(p), list) for p in plan["list"]]
    return out


async def main():
    aer = AerProvider()
    # What app.py hands the broker as kernel_settings (the defaults).
    aer.sandbox = {"rlimits": rlimits.defaults(), "env_allowlist": list(DEFAULT_ALLOWLIST)}
    await aer.start()
    try:
        seen = await aer.probe(plan)
        qc = QuantumCircuit(2)
        qc.h(0)
        qc.cx(0, 1)
        qc.measure_all()
        buf = io.BytesIO()
        qpy.dump(qc, buf)
        facts = await aer.inspect("qpy", buf.getvalue(), "aer")
        report = aer.pool().reports()[0]
    finally:
        await aer.stop()
    layers = {k: bool(v.get("active")) for k, v in report.items() if isinstance(v, dict)}
    print(json.dumps({"unconfined": unconfined(), "seen": seen, "layers": layers,
                      "facts": facts.as_dict(), "uid": os.getuid()}))


asyncio.run(main())
"""


@pytest.mark.parametrize("mode", ["root", "user"])
def test_a_program_worker_reaches_nothing_for_a_root_or_an_unprivileged_server(mode):
    """The pool as a server of each kind runs it (a fresh process as root, or as `qgtest`):
    the worker fails every attempt its server's user would make succeed, and still lints."""
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (CI does) to test both kinds of server")
    user = None
    if mode == "user":
        try:
            user = pwd.getpwnam(UNPRIVILEGED)
        except KeyError:
            pytest.fail(f"user {UNPRIVILEGED} missing: run tests/setup-unprivileged.sh")
    base = Path(tempfile.mkdtemp(prefix="qg-worker-probe-"))
    # The workers' own directories, beside the world rather than in it (a root server's worker
    # would otherwise find the world's 0700 folder covered by an empty tmpfs: ENOENT, not the
    # Landlock refusal this test is about).
    tmp = Path(tempfile.mkdtemp(prefix="qg-worker-tmp-"))
    try:
        home, state, workspace = (base / n for n in ("home", "state", "workspace"))
        keyring = home / ".local/share/python_keyring/keyring_pass.cfg"
        keyring.parent.mkdir(parents=True)
        keyring.write_text("[jupyter-qguard]\nsecret = qguard-worker-probe\n")
        for d in (state, workspace):
            d.mkdir()
        (state / "qguard.db").write_bytes(b"SQLite format 3\x00")
        script = base / "probe.py"
        script.write_text(PROBE_SCRIPT)
        tcp, unix = _listeners(base)
        if user is not None:
            os.chown(tmp, user.pw_uid, user.pw_gid)
            for root, dirs, files in os.walk(base):
                for n in [root, *(os.path.join(root, x) for x in dirs + files)]:
                    os.lchown(n, user.pw_uid, user.pw_gid)
        planted = workspace / "written-by-a-worker.txt"
        plan = {
            "tcp": [["127.0.0.1", tcp.getsockname()[1]]],
            "unix": [str(base / "bus")],
            "read": [str(keyring), str(state / "qguard.db")],
            "list": [str(state), str(workspace)],
            "write": [str(planted)],
        }
        as_user = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        env["TMPDIR"] = str(tmp)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", str(script), json.dumps(plan)],
                capture_output=True,
                text=True,
                timeout=240,
                cwd=str(base),
                env=env,
                extra_groups=[] if user is not None else None,
                **as_user,
            )
        finally:
            tcp.close()
            unix.close()
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    assert out["uid"] == (0 if user is None else user.pw_uid)
    assert out["unconfined"] == {
        "tcp": "ok",
        "unix": "ok",
        "read": [True, True],
        "list": [True, True],
    }
    seen = out["seen"]
    assert list(seen["tcp"].values()) == ["EPERM"]
    assert seen["unix"] == {str(base / "bus"): "EPERM"}
    assert seen["read"] == {str(keyring): "EACCES", str(state / "qguard.db"): "EACCES"}
    assert seen["list"] == {str(state): "EACCES", str(workspace): "EACCES"}
    assert seen["write"] == {str(planted): "EACCES"}
    if user is None:
        assert seen["uid"] != 0  # a uid of its own
    else:
        assert seen["uid"] == user.pw_uid  # the same uid, in a user namespace
    assert seen["pid"] == 2  # a pid namespace of its own
    for layer in ("env", "nonroot", "namespaces", "rlimits", "landlock", "seccomp"):
        assert out["layers"][layer], (layer, out["layers"])
    assert out["facts"]["num_qubits"] == 2 and out["facts"]["has_measurements"] is True


# -- a worker past its time --------------------------------------------------------------------

SLOW = """
import random
from qiskit import QuantumCircuit
from jupyter_qguard.kernel.jobs import submit
random.seed(1)
slow = QuantumCircuit(100)
for _ in range(20000):
    a, b = random.sample(range(100), 2)
    slow.cx(a, b)
slow.measure_all()
"""


@pytest.mark.parametrize("qguard_config", [{**BRISBANE, "lint_timeout_seconds": 3}], indirect=True)
async def test_a_worker_past_lint_timeout_is_killed_and_the_next_job_still_lints(
    start_kernel, jp_fetch, broker
):
    pool = broker.providers["aer"].pool()
    # None before an agent kernel comes (a server no kernel uses starts no sandbox) ...
    assert pool.pids() == {"idle": [], "busy": []}
    k = await start_kernel()
    # ... then both warm (Qiskit, Aer, the Brisbane snapshot), started as the kernel started.
    await wait_for(lambda: len(pool.pids()["idle"]) == 2, timeout=180)
    assert (await k.run(SLOW + BELL))["error"] is None
    # Routing 20,000 CX over Brisbane takes far longer than 3 s (~30 s here).
    cell = asyncio.ensure_future(
        k.run("j = submit(slow, backend='aer_brisbane', shots=10)\nprint(j.job_id, j.state)")
    )
    busy = await wait_for(lambda: pool.pids()["busy"], timeout=30)
    [pid] = busy
    processes = _tree(pid)
    assert len(processes) == 3  # the supervisor, its pid namespace's init, the worker
    res = await cell
    job_id, state = res["stdout"].split()
    assert state == "rejected"
    job = await _job(jp_fetch, job_id)
    assert job["reason"] == "the program could not be analysed within 3 s"
    # Killed, with everything below it, and no longer in the pool.
    await wait_for(lambda: not any(_running(p) for p in processes), timeout=10)
    assert pid not in pool.pids()["idle"] + pool.pids()["busy"]
    # The next job lints at once, on the other worker; the pool is whole again soon.
    res = await k.run(
        "b = submit(bell, backend='aer_brisbane', shots=10)\nprint(b.job_id, b.state)"
    )
    bell_id, bell_state = res["stdout"].split()
    assert bell_state == "pending_approval"
    transpiled = (await _job(jp_fetch, bell_id))["decision"]["lint"]["facts"]["transpiled"]
    assert transpiled["target"] == "fake_brisbane" and transpiled["two_qubit_gates"] == 1
    await wait_for(lambda: len(pool.pids()["idle"]) == 2, timeout=180)
    assert pid not in pool.pids()["idle"]


# -- what runs is what is reviewed ---------------------------------------------------------------

SPOOFS = """
from qiskit import QuantumCircuit
from qiskit.circuit import Gate
from qiskit.circuit.library import XGate
from jupyter_qguard.kernel.jobs import submit

def circuit(gate):
    qc = QuantumCircuit(2)
    qc.append(gate, [0])
    qc.cx(0, 1)
    qc.measure_all()
    return qc

x_body = QuantumCircuit(1)
x_body.x(0)
fake_h = Gate('h', 1, [], label='H')  # drawn as H, named h, defined as X
fake_h.definition = x_body
prep_body = QuantumCircuit(1)
prep_body.h(0)
honest = Gate('prep', 1, [], label='Prep')  # a custom gate that claims to be nothing standard
honest.definition = prep_body
for name, gate in [('fake_h', fake_h), ('labelled_x', XGate(label='H')), ('honest', honest)]:
    job = submit(circuit(gate), backend='aer_hw', shots=10)
    print(name, job.job_id, job.state)
"""


async def test_a_gate_that_passes_for_a_standard_one_is_refused(start_kernel, jp_fetch):
    k = await start_kernel()
    res = await k.run(SPOOFS)
    assert res["error"] is None, res
    rows = {line.split()[0]: line.split()[1:] for line in res["stdout"].splitlines()}
    assert [rows[n][1] for n in ("fake_h", "labelled_x", "honest")] == [
        "rejected",
        "rejected",
        "pending_approval",
    ]
    fake = await _job(jp_fetch, rows["fake_h"][0])
    assert fake["reason"] == "lint: gate 'h' (label 'H') is defined as X, not the standard h"
    assert fake["decision"]["lint"]["findings"] == [
        {
            "severity": "error",
            "code": "spoofed-gate",
            "message": "gate 'h' (label 'H') is defined as X, not the standard h",
        }
    ]
    labelled = await _job(jp_fetch, rows["labelled_x"][0])
    assert labelled["reason"] == "lint: gate 'x' (label 'H') is X, not the standard h"


QPY_12 = """
import base64, hashlib, io
from qiskit import qpy
from jupyter_qguard.kernel.client import client
from jupyter_qguard.kernel.jobs import QGuardJob
buf = io.BytesIO()
qpy.dump(bell, buf)
data = buf.getvalue()
assert data[:6] == b"QISKIT" and data[6] >= 13
old = data[:6] + bytes([12]) + data[7:]  # a header of format 12: its loader is not read at all
program = {"sdk": "qiskit", "format": "qpy", "sha256": hashlib.sha256(old).hexdigest(),
           "payload_b64": base64.b64encode(old).decode()}
job = QGuardJob(client().call("submit", {"job": {"schema": "qguard.job/v1", "program": program,
                                               "backend": "aer_hw", "shots": 10}}))
print(job.job_id, job.state)
"""


async def test_qpy_older_than_format_13_is_refused_with_its_reason(start_kernel, jp_fetch):
    k = await start_kernel()
    res = await k.run(BELL + QPY_12)
    assert res["error"] is None, res
    job_id, state = res["stdout"].split()
    assert state == "rejected"
    assert (await _job(jp_fetch, job_id))["reason"] == (
        "the program cannot be read as qpy: QPY format version 12 is refused: versions before "
        "13 encode expressions the way CVE-2025-2000 abused (sympy/symengine); dump the "
        "circuit again with Qiskit 1.3 or later (QPY 13 and up)"
    )


@pytest.mark.parametrize("qguard_config", [BRISBANE], indirect=True)
async def test_the_review_draws_an_unrouted_circuit_in_the_backends_gates(start_kernel, jp_fetch):
    k = await start_kernel()
    source = "bell.h(0); bell.cx(0, 1)  # what the kernel says it sends"
    res = await k.run(
        BELL + "from jupyter_qguard.kernel.jobs import submit\n"
        f"j = submit(bell, backend='aer_brisbane', shots=10, source={source!r})\n"
        "print(j.job_id, j.state)"
    )
    job_id, state = res["stdout"].split()
    assert state == "pending_approval"
    r = await jp_fetch("qguard", "api", "jobs", job_id, "review")
    review = json.loads(r.body)
    assert review["drawing_target"] == "fake_brisbane" and review["drawing_note"] is None
    drawing = review["drawing"]
    # Brisbane's gates (ECR, √X, Rz), not the H and CX the program was written in.
    assert "Ecr" in drawing and "√X" in drawing and "Rz(" in drawing, drawing
    assert "┤ H ├" not in drawing
    assert review["source"] == source
    assert (review["source_origin"], review["source_verified"]) == ("kernel", False)
    assert review["source_note"] == SOURCE_NOTE
