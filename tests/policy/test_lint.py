"""Quantum lint on crafted circuits, for Qiskit and for PennyLane (whose tapes reach the broker
as OpenQASM): the facts the worker finds and the findings the policy sees."""

from __future__ import annotations

import io
import json

import pytest
from qiskit import QuantumCircuit, qpy

from jupyter_qguard.policy.lint import lint
from jupyter_qguard.providers.aer_worker import inspect_program


def qpy_bytes(qc: QuantumCircuit) -> bytes:
    buf = io.BytesIO()
    qpy.dump(qc, buf)
    return buf.getvalue()


def test_condition_on_an_unwritten_clbit_is_an_error():
    qc = QuantumCircuit(2, 2)
    with qc.if_test((qc.clbits[1], 1)):
        qc.x(0)
    qc.measure([0, 1], [0, 1])
    facts = inspect_program("qpy", qpy_bytes(qc))
    assert facts["clbits_read_before_written"] == [1]
    findings = lint(facts, backend="aer_simulator", qubits=28)["findings"]
    assert findings == [
        {
            "severity": "error",
            "code": "clbit-read-before-write",
            "message": (
                "classical bit(s) 1 are read by a condition before any measurement writes them"
            ),
        }
    ]


def test_condition_after_its_measurement_is_fine():
    qc = QuantumCircuit(2, 2)
    qc.h(0)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.x(1)
    qc.measure(1, 1)
    facts = inspect_program("qpy", qpy_bytes(qc))
    assert facts["clbits_read_before_written"] == []
    assert lint(facts, backend="aer_simulator", qubits=28)["findings"] == []


def test_transpiled_depth_and_two_qubit_count():
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(1, 2)
    qc.measure_all()
    facts = inspect_program("qpy", qpy_bytes(qc), "aer")
    assert facts["transpiled"]["two_qubit_gates"] == 2
    assert facts["transpiled"]["depth"] >= 4
    findings = lint(facts, backend="aer_hw", qubits=28, max_depth=2)["findings"]
    assert [f["code"] for f in findings] == ["deep-circuit"]
    assert findings[0]["severity"] == "warning"
    assert "after transpiling to aer_hw (2 two-qubit gates) is over 2" in findings[0]["message"]


def test_too_many_qubits_no_measurement_and_unbound_parameter_together():
    from qiskit.circuit import Parameter

    qc = QuantumCircuit(30)
    qc.rx(Parameter("t"), 0)
    facts = inspect_program("qpy", qpy_bytes(qc))
    codes = [f["code"] for f in lint(facts, backend="small", qubits=5)["findings"]]
    assert codes == ["too-many-qubits", "no-measurements", "unbound-parameters"]


def pennylane_qasm(wires: int, measure: bool) -> str:
    import pennylane as qml

    ops = [qml.Hadamard(0)] + [qml.CNOT([i, i + 1]) for i in range(wires - 1)]
    measurements = [qml.counts(wires=range(wires))] if measure else []
    tape = qml.tape.QuantumScript(ops, measurements)
    return qml.to_openqasm(tape, measure_all=measure)


def test_pennylane_tape_facts_through_openqasm():
    facts = inspect_program("qasm2", pennylane_qasm(4, measure=True).encode())
    assert (facts["num_qubits"], facts["has_measurements"]) == (4, True)
    assert lint(facts, backend="aer_simulator", qubits=28)["findings"] == []
    facts = inspect_program("qasm2", pennylane_qasm(6, measure=False).encode())
    codes = [f["code"] for f in lint(facts, backend="small", qubits=5)["findings"]]
    assert codes == ["too-many-qubits", "no-measurements"]


SUBMIT_QASM = """
import base64, hashlib
from jupyter_qguard.kernel.client import client
from jupyter_qguard.kernel.jobs import QGuardJob
def submit_qasm(text, backend, shots=10):
    payload = text.encode()
    program = {"sdk": "pennylane", "format": "qasm2", "sha256": hashlib.sha256(payload).hexdigest(),
               "payload_b64": base64.b64encode(payload).decode()}
    job = {"schema": "qguard.job/v1", "program": program, "backend": backend, "shots": shots}
    return QGuardJob(client().call("submit", {"job": job}))
"""


@pytest.mark.parametrize(
    "qguard_config",
    [
        {
            "policy_data": {
                "backends": {"aer_hw": {"tier": "hardware", "provider": "aer"}},
                "lint": {"max_depth_warning": 3},
            }
        }
    ],
    indirect=True,
)
async def test_lint_reaches_the_decision(start_kernel, jp_fetch):
    import pennylane as qml  # noqa: F401 - the kernel imports it too

    k = await start_kernel()
    assert (await k.run(SUBMIT_QASM))["error"] is None
    ok = json.dumps(pennylane_qasm(4, measure=True))
    bad = json.dumps(pennylane_qasm(30, measure=False))
    res = await k.run(
        f"a = submit_qasm({ok}, 'aer_hw')\nb = submit_qasm({bad}, 'aer_simulator')\n"
        "print(a.state, b.state)"
    )
    assert res["stdout"].split() == ["pending_approval", "rejected"]
    r = await jp_fetch("qguard", "api", "jobs")
    by_backend = {j["backend"]: j for j in json.loads(r.body)["jobs"]}
    pending = by_backend["aer_hw"]
    assert [f["code"] for f in pending["decision"]["lint"]["findings"]] == ["deep-circuit"]
    assert pending["decision"]["notes"][0].startswith("lint: depth ")
    rejected = by_backend["aer_simulator"]
    assert rejected["reason"] == (
        "lint: the circuit has no measurements, so a run would return no counts; "
        "lint: the circuit uses 30 qubits; aer_simulator has 28"
    )


def test_a_circuit_wider_than_the_target_is_linted_not_rejected_as_unreadable():
    qc = QuantumCircuit(40)
    qc.h(0)
    qc.measure_all()
    facts = inspect_program("qpy", qpy_bytes(qc), "aer")
    assert facts["transpiled"]["skipped"].startswith("40 qubits do not fit in ")
    findings = lint(facts, backend="aer_hw", qubits=28, max_depth=10)["findings"]
    assert [f["code"] for f in findings] == ["too-many-qubits"]


def test_transpiled_to_a_device_snapshot_and_too_wide_for_it():
    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cx(0, 2)
    qc.measure_all()
    facts = inspect_program("qpy", qpy_bytes(qc), "fake_brisbane")
    assert facts["transpiled"]["target"] == "fake_brisbane"
    # ECR is Brisbane's only two-qubit gate; qubits 1 and 2 are not both next to 0 there, so
    # routing may add swaps: at least the two CX, each at least one ECR
    assert facts["transpiled"]["two_qubit_gates"] >= 2
    wide = QuantumCircuit(128)
    wide.h(0)
    wide.measure_all()
    wide_facts = inspect_program("qpy", qpy_bytes(wide), "fake_brisbane")
    assert wide_facts["transpiled"] == {
        "target": "fake_brisbane",
        "skipped": "128 qubits do not fit in 127",
    }
    findings = lint(wide_facts, backend="ibm_brisbane", qubits=127)["findings"]
    assert findings[0]["message"] == "the circuit uses 128 qubits; ibm_brisbane has 127"


def test_an_unknown_snapshot_is_a_clear_error():
    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    with pytest.raises(ValueError) as info:
        inspect_program("qpy", qpy_bytes(qc), "fake_nowhere")
    assert str(info.value) == "no calibration snapshot named 'fake_nowhere' is installed"


def _spoof_facts(*gates_and_qubits) -> list[str]:
    qc = QuantumCircuit(3)
    for gate, qubits in gates_and_qubits:
        qc.append(gate, qubits)
    qc.measure_all()
    return inspect_program("qpy", qpy_bytes(qc))["spoofed_gates"]


def _custom(name, num_qubits, body, label=None, params=()):
    from qiskit.circuit import Gate

    gate = Gate(name, num_qubits, list(params), label=label)
    gate.definition = body
    return gate


def test_gates_that_pass_for_standard_ones_are_found_by_what_they_do():
    from qiskit.circuit.library import HGate, RZGate, XGate

    x_body = QuantumCircuit(1)
    x_body.x(0)
    h_body = QuantumCircuit(1)
    h_body.h(0)
    rx_body = QuantumCircuit(1)
    rx_body.rx(0.3, 0)
    rz_body = QuantumCircuit(1)
    rz_body.rz(0.3, 0)
    wide_body = QuantumCircuit(2)
    wide_body.cx(0, 1)
    # A harmless-looking gate that hides the spoof one level down.
    outer_body = QuantumCircuit(2)
    outer_body.append(_custom("h", 1, x_body), [1])
    outer_body.cx(0, 1)
    assert _spoof_facts(
        (_custom("h", 1, x_body, label="H"), [0]),
        (XGate(label="H"), [1]),
        (_custom("rz", 1, rx_body, params=[0.3]), [0]),
        (_custom("x", 2, wide_body), [0, 1]),
        (_custom("oracle", 2, outer_body), [1, 2]),
    ) == [
        "gate 'h' (label 'H') is defined as X, not the standard h",
        "gate 'x' (label 'H') is X, not the standard h",
        "gate 'rz' is defined as a circuit of rx, not the standard rz",
        "gate 'x' acts on 2 qubit(s), not the standard x, which acts on 1",
        "gate 'h' is defined as X, not the standard h",
    ]
    # What they claim to be is what they are: nothing to say.
    assert (
        _spoof_facts(
            (_custom("my_h", 1, h_body, label="H"), [0]),
            (_custom("rz", 1, rz_body, params=[0.3]), [0]),
            (HGate(label="H"), [1]),
            (RZGate(0.3, label="Rz(0.3)"), [2]),
            (_custom("prep", 1, x_body, label="Prep"), [2]),
        )
        == []
    )
    findings = lint(
        {**inspect_program("qpy", qpy_bytes(QuantumCircuit(1, 1))), "spoofed_gates": ["why"]},
        backend="aer_hw",
        qubits=28,
    )["findings"]
    assert {"severity": "error", "code": "spoofed-gate", "message": "why"} in findings


def test_a_spoof_inside_control_flow_is_found_and_the_drawing_shows_names_not_labels():
    from qiskit.circuit.library import XGate

    from jupyter_qguard.providers.aer_worker import draw_program

    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    with qc.if_test((qc.clbits[0], 1)):
        qc.append(XGate(label="H"), [0])
    qc.measure(0, 0)
    payload = qpy_bytes(qc)
    assert inspect_program("qpy", payload)["spoofed_gates"] == [
        "gate 'x' (label 'H') is X, not the standard h"
    ]
    plain = QuantumCircuit(1, 1)
    plain.append(XGate(label="H"), [0])
    plain.measure(0, 0)
    drawn = draw_program("qpy", qpy_bytes(plain))
    assert drawn["target"] is None and "┤ X ├" in drawn["drawing"] and "H" not in drawn["drawing"]


def test_qpy_before_format_13_is_refused_before_it_is_read():
    import qiskit

    from jupyter_qguard.providers.aer_worker import MIN_QPY_VERSION, load_circuit

    # The installed Qiskit has the CVE-2025-2000 fix and writes nothing older than 13.
    major, minor, patch = (int(x) for x in qiskit.__version__.split(".")[:3])
    assert (major, minor, patch) >= (1, 4, 2)
    assert qpy.QPY_COMPATIBILITY_VERSION >= MIN_QPY_VERSION == 13
    qc = QuantumCircuit(1, 1)
    qc.measure(0, 0)
    data = qpy_bytes(qc)
    assert load_circuit("qpy", data).num_qubits == 1
    for version in (3, 10, 12):
        with pytest.raises(ValueError) as info:
            load_circuit("qpy", data[:6] + bytes([version]) + data[7:])
        assert str(info.value).startswith(f"QPY format version {version} is refused: ")
    with pytest.raises(ValueError) as info:
        load_circuit("qpy", b"PICKLE" + data[6:])
    assert str(info.value) == "not a QPY file (it does not start with the QISKIT header)"
