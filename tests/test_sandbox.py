"""The sandbox fails closed, says why, and ordinary notebook work still runs inside it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys

import pytest

from jupyter_qguard.sandbox.spec import SPEC_VAR, SandboxSpec


@pytest.mark.parametrize("qguard_config", [{"sandbox_disabled": ["landlock"]}], indirect=True)
async def test_missing_required_layer_refuses_the_kernel_with_the_reason(
    jp_fetch, jp_serverapp, broker
):
    r = await jp_fetch(
        "api",
        "kernels",
        method="POST",
        body=json.dumps({"name": "qguard-agent"}),
        raise_error=False,
    )
    assert r.code == 503
    message = json.loads(r.body)["message"]
    assert "cannot start" in message
    assert "landlock: disabled by configuration (QGuardApp.sandbox_disabled)" in message
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []


@pytest.mark.parametrize("qguard_config", [{"sandbox_disabled": ["namespaces"]}], indirect=True)
async def test_optional_layer_off_still_starts_and_is_reported(start_kernel):
    k = await start_kernel()
    await k.run("w = %qguard whoami")
    sandbox = (await k.value("w"))["sandbox"]
    assert "namespaces" not in sandbox["active"]
    assert sandbox["applied"]["namespaces"] == {"active": False, "why": "disabled by configuration"}
    assert {"env", "nonroot", "landlock", "seccomp"} <= set(sandbox["active"])
    # no pid namespace of its own: then no /proc at all, or the server's environ would show
    res = await k.run(
        "import os\ntry:\n    os.listdir('/proc')\nexcept OSError as e:\n    print(e.errno)"
    )
    assert res["stdout"].strip() == "13"


def test_launcher_refuses_when_a_layer_fails_at_apply_time(tmp_path):
    """The second line of defence: even past the server's check, the launcher exits (code 3)
    and tells the broker, before any agent code could run."""
    server_end, kernel_end = socket.socketpair()
    spec = SandboxSpec(
        workspace=str(tmp_path),
        kernel_dir=str(tmp_path),
        minimum=["seccomp"],
        disabled=["seccomp", "namespaces", "idmap"],
    )
    if os.geteuid() == 0:
        spec.kernel_uid = spec.kernel_gid = 2_100_999_999
    env = {**os.environ, SPEC_VAR: spec.to_env(), "QGUARD_CHANNEL_FD": str(kernel_end.fileno())}
    proc = subprocess.run(
        [sys.executable, "-m", "jupyter_qguard.sandbox.launch", "-f", "unused.json"],
        env=env,
        pass_fds=(kernel_end.fileno(),),
        capture_output=True,
        text=True,
        timeout=60,
    )
    kernel_end.close()
    assert proc.returncode == 3
    assert "minimum isolation not met: seccomp (disabled by configuration)" in proc.stderr
    report = json.loads(server_end.makefile().readline())
    assert report["method"] == "sandbox_report" and report["params"]["ok"] is False
    server_end.close()


async def test_sandbox_api_reports_machine_and_kernels(start_kernel, jp_fetch):
    k = await start_kernel()
    await k.run("1")
    r = await jp_fetch("qguard", "api", "sandbox")
    body = json.loads(r.body)
    assert body["machine"]["landlock"]["available"] is True
    [kernel] = [x for x in body["kernels"] if x["kernel_id"] == k.id]
    assert kernel["sandbox"]["ok"] is True
    assert kernel["sandbox"]["applied"]["seccomp"]["connect"] == "denied"


def test_doctor_names_credentials_but_never_values(tmp_path):
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    (home / ".aws/credentials").write_text("[default]\naws_secret_access_key = s3cr3t-value\n")
    env = {
        **os.environ,
        "HOME": str(home),
        "MY_API_TOKEN": "tok-value-123",
        "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
    }
    exe = os.path.join(os.path.dirname(sys.executable), "jupyter")
    r = subprocess.run(
        [exe, "qguard", "doctor", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["agent_kernels_can_start"] is True
    for layer in ("env", "nonroot", "landlock", "seccomp", "namespaces", "rlimits"):
        assert rep["layers"][layer]["available"] is True, layer
    assert rep["layers"]["landlock"]["abi"] >= 1
    assert "~/.aws/credentials" in rep["plaintext_credentials"]["files"]
    assert "MY_API_TOKEN" in rep["plaintext_credentials"]["environment"]
    assert "s3cr3t-value" not in r.stdout and "tok-value-123" not in r.stdout
    text = subprocess.run(
        [exe, "qguard", "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "landlock" in text.stdout and "Agent kernels can start" in text.stdout


COMPAT = {
    "numpy_scipy_pandas": (
        "import numpy as np, scipy.linalg as la, pandas as pd\n"
        "print(round(float(la.det(np.eye(3) * 2)), 3), pd.DataFrame({'a': [1, 2]}).a.sum())",
        "8.0 3",
    ),
    "matplotlib_inline": (
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3]); plt.show()\n"
        "print(plt.get_backend())",
        "inline",
    ),
    "qiskit_transpile": (
        "from qiskit import QuantumCircuit, transpile\n"
        "qc = QuantumCircuit(3); qc.h(0); qc.cx(0, 1); qc.ccx(0, 1, 2)\n"
        "t = transpile(qc, basis_gates=['cx', 'rz', 'sx', 'x'], optimization_level=1)\n"
        "print(set(t.count_ops()) <= {'cx', 'rz', 'sx', 'x'})",
        "True",
    ),
    "aer_statevector_20q": (
        "from qiskit import QuantumCircuit\nfrom qiskit_aer import AerSimulator\n"
        "qc = QuantumCircuit(20); qc.h(range(20)); qc.measure_all()\n"
        "r = AerSimulator(method='statevector').run(qc, shots=100, seed_simulator=1).result()\n"
        "print(sum(r.get_counts().values()))",
        "100",
    ),
    "aer_density_matrix": (
        "from qiskit import QuantumCircuit\nfrom qiskit_aer import AerSimulator\n"
        "qc = QuantumCircuit(10); qc.h(0); qc.cx(0, range(1, 10)); qc.measure_all()\n"
        "r = AerSimulator(method='density_matrix').run(qc, shots=200, seed_simulator=1).result()\n"
        "print(sorted(r.get_counts()) == ['0' * 10, '1' * 10])",
        "True",
    ),
    "pennylane_default_and_lightning": (
        "import pennylane as qml\nout = []\n"
        "for name in ('default.qubit', 'lightning.qubit'):\n"
        "    dev = qml.device(name, wires=2)\n"
        "    @qml.qnode(dev)\n"
        "    def f():\n"
        "        qml.Hadamard(0); qml.CNOT([0, 1])\n"
        "        return qml.expval(qml.PauliZ(0) @ qml.PauliZ(1))\n"
        "    out.append(round(float(f()), 6))\n"
        "print(out)",
        "[1.0, 1.0]",
    ),
    "multiprocessing_fork": (
        "import multiprocessing as mp\nctx = mp.get_context('fork')\n"
        "def sq(x):\n    return x * x\n"
        "with ctx.Pool(2) as pool:\n    print(sum(pool.map(sq, range(10))))",
        "285",
    ),
    "forked_children_print": (
        "import multiprocessing as mp\n"
        "def hello(i):\n    print(f'child-says-{i}', flush=True)\n    return i\n"
        "with mp.get_context('fork').Pool(2) as pool:\n    pool.map(hello, range(3))\n"
        "import time; time.sleep(0.5)",
        ("child-says-0", "child-says-1", "child-says-2"),
    ),
    "shell_and_subprocess_output": (
        "open('listed.txt', 'w').write('x')\n!ls listed.txt\nimport subprocess\n"
        "subprocess.run(['echo', 'from-child'])",
        ("listed.txt", "from-child"),
    ),
    # %pip of a package that is there already: pip runs in the sandbox (no network needed).
    "pip_install_present_package": (
        "%pip install --no-input numpy",
        "Requirement already satisfied: numpy",
    ),
    # Catalyst's JIT compiles through MLIR/LLVM and links with the system C compiler (cc).
    "catalyst_qjit": (
        "import pennylane as qml\nfrom catalyst import qjit\n"
        "dev = qml.device('lightning.qubit', wires=2)\n"
        "@qjit\n@qml.qnode(dev)\n"
        "def f(x):\n"
        "    qml.RX(x, wires=0); qml.CNOT(wires=[0, 1])\n"
        "    return qml.expval(qml.PauliZ(1))\n"
        "print('catalyst', round(float(f(0.5)), 6))",
        "catalyst 0.877583",
    ),
    "workspace_files": (
        "import os\nos.makedirs('out/sub', exist_ok=True)\n"
        "open('out/sub/a.txt', 'w').write('hello')\n"
        "os.rename('out/sub/a.txt', 'out/b.txt')\nprint(open('out/b.txt').read())",
        "hello",
    ),
}


@pytest.mark.parametrize("case", sorted(COMPAT))
async def test_ordinary_work_runs_inside_the_sandbox(start_kernel, case):
    code, expected = COMPAT[case]
    k = await start_kernel()
    res = await k.run(code, timeout=180)
    assert res["error"] is None, res
    for part in (expected,) if isinstance(expected, str) else expected:
        assert part in res["stdout"], res


async def test_interrupt_and_restart(start_kernel, jp_fetch):
    k = await start_kernel()
    cell = asyncio.ensure_future(k.run("import time\nwhile True:\n    time.sleep(0.05)"))
    await asyncio.sleep(1.0)
    await k.manager.interrupt_kernel()
    res = await asyncio.wait_for(cell, 30)
    assert res["error"]["ename"] == "KeyboardInterrupt"
    await k.run("x = 41")
    r = await jp_fetch("api", "kernels", k.id, "restart", method="POST", body="")
    assert r.code == 200
    await k.client.wait_for_ready(timeout=60)
    res = await k.run("print('x' in dir())")
    assert res["stdout"].strip() == "False"
    w = await k.run("w = %qguard whoami\nprint(sorted(w['sandbox']['active']))")
    assert "seccomp" in w["stdout"] and "landlock" in w["stdout"]
