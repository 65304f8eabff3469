"""The PennyLane device `qguard.hardware`, against a stand-in for the broker socket that does
what the broker does with a PennyLane program: parse the OpenQASM 2 with qiskit's loader
(LEGACY_CUSTOM_INSTRUCTIONS) and simulate it on Aer with the job's seed. Statistics are checked
against exact values or within 4 standard deviations. (The end-to-end notebook tests run the
device in a real agent kernel against a real server.)"""

from __future__ import annotations

import base64
import hashlib
import importlib
import math
import subprocess
import sys
import time
import warnings
from importlib.metadata import EntryPoint
from typing import Any

import numpy as np
import pennylane as qml
import pytest
from pennylane.exceptions import DeviceError
from qiskit import qasm2, transpile
from qiskit_aer import AerSimulator

from jupyter_qguard.kernel.jobs import QGuardDenied
from jupyter_qguard.kernel.pennylane_device import (
    QASM_GATES,
    QGuardDevice,
    counts_to_samples,
    tape_to_qasm,
)

SUPPORTED = (
    "qml.expval, qml.var, qml.sample, qml.counts and qml.probs, of Pauli words (PauliX, PauliY, "
    "PauliZ, Identity and their tensor products) or of the computational basis; qml.expval also "
    "takes sums of Pauli words (one job per qubit-wise commuting group)"
)


class AerBroker:
    """Answers the device's broker calls. Jobs are `pending_approval` when submitted, as for a
    hardware backend; asking for their status finds them completed, except the ones listed in
    `deny` (denied by a person) and `hold` (never approved)."""

    def __init__(self, deny: set[int] = frozenset(), hold: set[int] = frozenset()) -> None:
        self.requests: list[dict[str, Any]] = []
        self.qasm: list[str] = []
        self.counts: list[dict[str, int]] = []
        self.cancelled: list[str] = []
        self.deny, self.hold = set(deny), set(hold)
        self.status: dict[str, dict[str, Any]] = {}
        self.sim = AerSimulator()

    def call(self, method: str, params: dict[str, Any]) -> Any:
        return getattr(self, f"_{method}")(params)

    def _submit(self, params: dict[str, Any]) -> dict[str, Any]:
        job = params["job"]
        program = job["program"]
        payload = base64.b64decode(program["payload_b64"])
        assert hashlib.sha256(payload).hexdigest() == program["sha256"]
        text = payload.decode("utf-8")
        # As the broker parses PennyLane programs: a program it cannot load fails here.
        circuit = qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
        result = self.sim.run(
            transpile(circuit, self.sim), shots=job["shots"], seed_simulator=job["seed"]
        ).result()
        index = len(self.requests)
        self.requests.append(job)
        self.qasm.append(text)
        self.counts.append({str(k): int(v) for k, v in result.get_counts().items()})
        job_id = f"job-{index:04d}"
        self.status[job_id] = {"id": job_id, "state": "pending_approval", "backend": job["backend"]}
        return dict(self.status[job_id])

    def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        status = self.status[params["job_id"]]
        index = int(params["job_id"].split("-")[1])
        if status["state"] == "pending_approval" and index not in self.hold:
            status["state"] = "denied" if index in self.deny else "completed"
            if index in self.deny:
                status["reason"] = "denied by alice"
        return dict(status)

    def _wait(self, params: dict[str, Any]) -> dict[str, Any]:
        status = self._status(params)
        if status["state"] == "pending_approval":
            time.sleep(min(params["timeout"], 0.05))
        return status

    def _result(self, params: dict[str, Any]) -> dict[str, Any]:
        index = int(params["job_id"].split("-")[1])
        return {"result": {"counts": self.counts[index]}}

    def _cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        self.cancelled.append(params["job_id"])
        self.status[params["job_id"]]["state"] = "cancelled"
        return dict(self.status[params["job_id"]])


def device(broker: AerBroker, wires: Any = 2, shots: Any = 2000, seed: int | None = 11, **kw):
    return QGuardDevice(wires=wires, backend="aer_hw", shots=shots, seed=seed, broker=broker, **kw)


def within_4_sigma(estimate: float, exact: float, variance: float, shots: int) -> bool:
    return abs(estimate - exact) <= 4 * math.sqrt(variance / shots) + 1e-12


def bell() -> None:
    qml.Hadamard(0)
    qml.CNOT([0, 1])


# -- statistics --------------------------------------------------------------------------------


def test_bell_counts_are_only_00_and_11_near_half_and_one_job():
    broker = AerBroker()

    @qml.qnode(device(broker))
    def circuit():
        bell()
        return qml.counts()

    counts = circuit()
    assert set(counts) == {"00", "11"}
    assert sum(counts.values()) == 2000
    assert within_4_sigma(counts["00"] / 2000, 0.5, 0.25, 2000)
    assert len(broker.requests) == 1
    job = broker.requests[0]
    assert (job["backend"], job["shots"], job["seed"]) == ("aer_hw", 2000, 11)
    assert (job["program"]["sdk"], job["program"]["format"]) == ("pennylane", "qasm2")


def test_probs_of_bell():
    broker = AerBroker()

    @qml.qnode(device(broker))
    def circuit():
        bell()
        return qml.probs(wires=[0, 1])

    probs = circuit()
    assert probs.shape == (4,)
    assert probs[1] == 0.0 and probs[2] == 0.0
    assert probs[0] + probs[3] == pytest.approx(1.0)
    assert within_4_sigma(probs[0], 0.5, 0.25, 2000)


def test_pauli_word_expvals_of_bell_are_exact():
    """Phi+ is a +1 eigenstate of Z0 Z1 and X0 X1 and a -1 eigenstate of Y0 Y1: every shot
    must agree, so the values are exact if the rotations and the bit order are right."""
    broker = AerBroker()

    @qml.qnode(device(broker))
    def circuit():
        bell()
        return qml.expval(qml.PauliZ(0) @ qml.PauliZ(1))

    @qml.qnode(device(broker))
    def xx_yy():
        bell()
        return qml.expval(qml.PauliX(0) @ qml.PauliX(1)), qml.expval(qml.PauliY(0) @ qml.PauliY(1))

    assert circuit() == 1.0
    assert xx_yy() == (1.0, -1.0)
    # XX and YY commute but not qubit-wise: one job per measurement basis, ZZ's plus two.
    assert len(broker.requests) == 3
    body = [line for line in broker.qasm[0].splitlines()[4:] if not line.startswith("measure")]
    assert body == ["h q[0];", "cx q[0],q[1];"]  # Z words need no rotation
    body = [line for line in broker.qasm[1].splitlines()[4:] if not line.startswith("measure")]
    assert len(body) > 2  # the X (or Y) words' rotations follow the Bell pair


def test_zx_expval_and_single_qubit_x():
    broker = AerBroker()

    @qml.qnode(device(broker))
    def circuit():
        qml.Hadamard(1)
        return qml.expval(qml.PauliZ(0) @ qml.PauliX(1)), qml.expval(qml.PauliX(1))

    assert circuit() == (1.0, 1.0)
    assert len(broker.requests) == 1  # qubit-wise commuting: one basis, one job


@pytest.mark.parametrize("theta", [0.0, 0.4, 1.1, 2.0, math.pi / 2, 3.0])
def test_ry_expval_z_is_cos_theta_within_4_sigma(theta):
    broker = AerBroker()

    @qml.qnode(device(broker, wires=1, shots=4000, seed=5))
    def circuit(t):
        qml.RY(t, wires=0)
        return qml.expval(qml.PauliZ(0)), qml.var(qml.PauliZ(0))

    expval, var = circuit(theta)
    assert within_4_sigma(expval, math.cos(theta), 1 - math.cos(theta) ** 2, 4000)
    assert var == pytest.approx(1 - expval**2)


def test_expval_y_after_rx_half_pi_is_minus_one():
    broker = AerBroker()

    @qml.qnode(device(broker, wires=1))
    def circuit():
        qml.RX(math.pi / 2, wires=0)
        return qml.expval(qml.PauliY(0))

    assert circuit() == -1.0


def test_sum_of_pauli_words_is_split_into_bases():
    broker = AerBroker()

    @qml.qnode(device(broker))
    def circuit():
        qml.Hadamard(1)
        return qml.expval(0.5 * qml.PauliZ(0) + 2.0 * qml.PauliX(1) + 3.0 * qml.Identity(0))

    assert circuit() == pytest.approx(5.5)
    assert len(broker.requests) == 1


def test_parameter_shift_gradient_within_4_sigma():
    broker = AerBroker()

    @qml.qnode(device(broker, wires=1, shots=4000, seed=3), diff_method="parameter-shift")
    def circuit(t):
        qml.RY(t, wires=0)
        return qml.expval(qml.PauliZ(0))

    grad = qml.grad(circuit)(qml.numpy.array(0.8, requires_grad=True))
    # (f(t + pi/2) - f(t - pi/2)) / 2: each term has variance sin^2 / shots.
    assert abs(grad - (-math.sin(0.8))) <= 4 * math.sqrt(2 * math.sin(0.8) ** 2 / 4000) / 2
    assert len(broker.requests) >= 2


# -- samples and bit order ---------------------------------------------------------------------


def test_x_on_wire_0_of_3_gives_rows_1_0_0():
    broker = AerBroker()

    @qml.qnode(device(broker, wires=3, shots=50))
    def circuit():
        qml.PauliX(0)
        return qml.sample()

    samples = circuit()
    assert samples.shape == (50, 3)
    assert samples.dtype.kind == "i"
    assert (samples == np.array([1, 0, 0])).all()
    # Qiskit writes classical bit 0 rightmost: the device had to read the key backwards.
    assert broker.counts == [{"001": 50}]


def test_sample_wire_subsets_and_labels():
    broker = AerBroker()

    @qml.qnode(device(broker, wires=["a", "b", "c"], shots=20))
    def circuit():
        qml.PauliX("b")
        return qml.sample(wires=["c", "b"]), qml.sample(wires="b"), qml.sample(qml.PauliZ("b"))

    pair, single, eigen = circuit()
    assert pair.shape == (20, 2) and (pair == np.array([0, 1])).all()
    assert single.shape == (20, 1) and (single == 1).all()
    assert eigen.shape == (20,) and (eigen == -1.0).all()
    assert broker.counts == [{"010": 20}]


def test_bell_samples_shape_and_correlation():
    broker = AerBroker()

    @qml.qnode(device(broker, shots=300))
    def circuit():
        bell()
        return qml.sample()

    samples = circuit()
    assert samples.shape == (300, 2)
    assert (samples[:, 0] == samples[:, 1]).all()
    assert 0 < samples[:, 0].sum() < 300


def test_counts_to_samples_reads_keys_backwards_and_pads():
    rng = np.random.default_rng(0)
    samples = counts_to_samples({"011": 2, "100": 1, "1": 1, "0x4": 1}, 3, rng)
    rows = sorted(map(tuple, samples.tolist()))
    assert rows == [(0, 0, 1), (0, 0, 1), (1, 0, 0), (1, 1, 0), (1, 1, 0)]
    with pytest.raises(DeviceError) as err:
        counts_to_samples({"0110": 3}, 3, rng)
    assert str(err.value) == "the job's counts have the outcome '0110'; expected 3 classical bits"
    with pytest.raises(DeviceError) as err:
        counts_to_samples({}, 3, rng)
    assert str(err.value) == "the job came back without any counts"


# -- shots ---------------------------------------------------------------------------------------


ANALYTIC = (
    "qguard.hardware runs circuits on hardware, which takes shots: analytic execution "
    "(shots=None) is not possible. Give the device shots (qml.device('qguard.hardware', "
    "wires=..., backend=..., shots=1000)) or the QNode (qml.set_shots(qnode, shots=1000))."
)


def test_analytic_execution_is_refused_with_the_message():
    broker = AerBroker()

    @qml.qnode(device(broker, shots=None))
    def circuit():
        bell()
        return qml.expval(qml.PauliZ(0))

    with pytest.raises(DeviceError) as err:
        circuit()
    assert str(err.value) == ANALYTIC
    # Straight to execute, without PennyLane's preprocessing, too.
    tape = qml.tape.QuantumScript([qml.Hadamard(0)], [qml.expval(qml.PauliZ(0))])
    with pytest.raises(DeviceError) as err:
        device(broker).execute(tape)
    assert str(err.value) == ANALYTIC
    assert broker.requests == []
    # Shots given on the QNode instead of the device are enough.
    assert qml.set_shots(circuit, shots=100)() == pytest.approx(0.0, abs=0.4)
    assert broker.requests[0]["shots"] == 100


def test_shot_vector_is_one_job_split_into_bins():
    broker = AerBroker()

    @qml.qnode(device(broker, wires=2, shots=[100, (50, 2)]))
    def circuit():
        qml.PauliX(1)
        return qml.expval(qml.PauliZ(1)), qml.sample(wires=[0, 1])

    result = circuit()
    assert len(result) == 3
    for (expval, samples), n in zip(result, [100, 50, 50], strict=True):
        assert expval == -1.0
        assert samples.shape == (n, 2) and (samples == np.array([0, 1])).all()
    assert [r["shots"] for r in broker.requests] == [200]


def test_shot_vector_bins_are_not_sorted_outcomes():
    """Counts keep no order: the bins must each see a fair share of both outcomes."""
    broker = AerBroker()

    @qml.qnode(device(broker, wires=1, shots=[(500, 4)]))
    def circuit():
        qml.Hadamard(0)
        return qml.expval(qml.PauliZ(0))

    for value in circuit():
        assert within_4_sigma(value, 0.0, 1.0, 500)


def test_identity_only_expval_needs_no_job_even_with_a_shot_vector():
    broker = AerBroker()
    dev = device(broker, wires=1, shots=[10, 20])

    @qml.qnode(dev)
    def circuit():
        return qml.expval(qml.Identity(0))

    assert circuit() == (1.0, 1.0)
    assert broker.requests == []


def test_seed_goes_with_every_job_and_repeats_the_samples():
    broker = AerBroker()

    def run(seed: int | None) -> np.ndarray:
        @qml.qnode(device(broker, shots=200, seed=seed))
        def circuit():
            qml.Hadamard(0)
            qml.Hadamard(1)
            return qml.sample()

        return circuit()

    first, second = run(42), run(42)
    assert (first == second).all()
    run(None)
    assert [r["seed"] for r in broker.requests] == [42, 42, None]


# -- one job per tape, and the QASM ---------------------------------------------------------


def test_execute_submits_one_job_per_tape_before_waiting():
    broker = AerBroker()
    dev = device(broker, wires=2, shots=100)
    tapes = [
        qml.tape.QuantumScript([qml.PauliX(0)], [qml.expval(qml.PauliZ(0))], shots=100),
        qml.tape.QuantumScript([qml.PauliX(1)], [qml.probs(wires=[0, 1])], shots=100),
        qml.tape.QuantumScript([], [qml.expval(qml.PauliZ(1))], shots=100),
    ]
    program, config = dev.preprocess()
    batch, postprocess = program(tapes)
    assert len(batch) == 3
    results = postprocess(dev.execute(batch, config))
    assert results[0] == -1.0
    assert list(results[1]) == [0.0, 1.0, 0.0, 0.0]
    assert results[2] == 1.0
    assert len(broker.requests) == 3
    for text in broker.qasm:
        assert text.count("measure ") == 2


def test_the_qasm_uses_only_qasm2_gates_and_parses():
    """Every gate the device sends as it is, and some that it must decompose (state prep,
    QFT, a controlled rotation, a global phase, Ising): the program parses with the broker's
    loader, measures each wire into its own bit, and has no `gphase` (not in qelib1.inc)."""
    from pennylane.io.to_openqasm import OPENQASM_GATES

    assert set(QASM_GATES) <= set(OPENQASM_GATES)
    broker = AerBroker()

    @qml.qnode(device(broker, wires=3, shots=10))
    def circuit():
        qml.StatePrep(np.array([1, 1, 1, 1j]) / 2, wires=[0, 1])
        for op in (qml.Identity, qml.PauliX, qml.PauliY, qml.PauliZ, qml.Hadamard):
            op(wires=0)
        qml.S(0), qml.adjoint(qml.S(0)), qml.T(1), qml.adjoint(qml.T(1))
        qml.RX(0.1, 0), qml.RY(0.2, 1), qml.RZ(0.3, 2), qml.PhaseShift(0.4, 0)
        qml.U1(0.5, 1), qml.U2(0.6, 0.7, 2), qml.U3(0.8, 0.9, 1.0, 0)
        qml.CNOT([0, 1]), qml.CZ([1, 2]), qml.CRX(0.1, [0, 2]), qml.CRY(0.2, [2, 1])
        qml.CRZ(0.3, [1, 0]), qml.SWAP([0, 2]), qml.Toffoli([0, 1, 2]), qml.CSWAP([2, 0, 1])
        qml.QFT(wires=[0, 1, 2])
        qml.ctrl(qml.RX(0.3, 0), [1, 2])
        qml.GlobalPhase(0.2)
        qml.IsingXX(0.3, [0, 1])
        return qml.probs()

    probs = circuit()
    assert probs.sum() == pytest.approx(1.0)
    (text,) = broker.qasm
    assert text.startswith('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\n')
    assert text.endswith("measure q[0] -> c[0];\nmeasure q[1] -> c[1];\nmeasure q[2] -> c[2];\n")
    assert "gphase" not in text
    parsed = qasm2.loads(text, custom_instructions=qasm2.LEGACY_CUSTOM_INSTRUCTIONS)
    assert parsed.num_qubits == 3 and parsed.num_clbits == 3
    assert parsed.count_ops()["measure"] == 3


def test_tape_to_qasm_appends_rotations_and_maps_wires():
    tape = qml.tape.QuantumScript([qml.PauliX("b")], [qml.expval(qml.PauliX("c"))], shots=10)
    text = tape_to_qasm(tape, ["a", "b", "c"])
    assert text == (
        'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\nx q[1];\nh q[2];\n'
        "measure q[0] -> c[0];\nmeasure q[1] -> c[1];\nmeasure q[2] -> c[2];\n"
    )


# -- refusals ------------------------------------------------------------------------------------


def refused(circuit_fn, wires: Any = 2) -> str:
    broker = AerBroker()
    with pytest.raises(DeviceError) as err:
        qml.QNode(circuit_fn, device(broker, wires=wires))()
    assert broker.requests == []
    return str(err.value)


def test_unsupported_measurements_are_refused_saying_what_is_supported():
    assert refused(lambda: qml.state()) == (
        f"qguard.hardware cannot measure state(wires=[]): it supports {SUPPORTED}"
    )
    assert refused(lambda: qml.vn_entropy(wires=0)) == (
        f"qguard.hardware cannot measure vnentropy: it supports {SUPPORTED}"
    )
    assert refused(lambda: qml.expval(qml.Hadamard(0))) == (
        "qguard.hardware cannot measure expval(H(0)): the observable H(0) is not a Pauli word; "
        f"it supports {SUPPORTED}"
    )
    assert refused(lambda: qml.var(qml.PauliZ(0) + qml.PauliX(1))) == (
        "qguard.hardware cannot measure var(Z(0) + X(1)): the observable Z(0) + X(1) is not a "
        f"Pauli word; it supports {SUPPORTED}"
    )


def test_mid_circuit_measurements_are_refused():
    def circuit():
        m = qml.measure(0)
        qml.cond(m, qml.PauliX)(1)
        return qml.expval(qml.PauliZ(1))

    assert refused(circuit) == (
        "qguard.hardware does not support mid-circuit measurements or classically controlled "
        "operations: its jobs measure every qubit once, at the end "
        "(found MidMeasure(wires=[0], postselect=None, reset=False))"
    )


def test_constructor_needs_wires_and_backend():
    with pytest.raises(ValueError) as err:
        QGuardDevice(backend="aer_hw", shots=10)
    assert str(err.value) == (
        "qguard.hardware needs wires: qml.device('qguard.hardware', wires=2, backend=...)"
    )
    with pytest.raises(ValueError) as err:
        QGuardDevice(wires=2, shots=10)
    assert str(err.value) == "qguard.hardware needs backend=NAME (`%qguard backends` lists them)"
    with pytest.raises(ValueError) as err:
        QGuardDevice(wires=2, backend="aer_hw", seed=-1)
    assert str(err.value) == "seed must be a non-negative integer or None, not -1"
    dev = QGuardDevice(wires=2, backend="aer_hw", shots=1000, seed=7, timeout=30.0)
    assert (dev.name, dev.backend, dev.seed, dev.timeout) == ("qguard.hardware", "aer_hw", 7, 30.0)
    assert dev.shots.total_shots == 1000 and list(dev.wires) == [0, 1]


def test_qml_device_builds_it_from_the_plugin_entry_point(monkeypatch):
    """As `qml.device` loads it once the package declares the entry point (the same one)."""
    constructor = importlib.import_module("pennylane.devices.device_constructor")
    entry = EntryPoint(
        name="qguard.hardware",
        value="jupyter_qguard.kernel.pennylane_device:QGuardDevice",
        group="pennylane.plugins",
    )
    monkeypatch.setitem(constructor.plugin_devices, "qguard.hardware", entry)
    broker = AerBroker()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dev = qml.device(
            "qguard.hardware",
            wires=2,
            backend="aer_hw",
            shots=1000,
            seed=None,
            timeout=None,
            broker=broker,
        )
    # Shots on a device are deprecated for simulators; here they are the device's job size.
    assert [str(w.message) for w in caught] == []
    assert isinstance(dev, QGuardDevice) and dev.name == "qguard.hardware"

    @qml.qnode(dev)
    def circuit():
        bell()
        return qml.expval(qml.PauliZ(0) @ qml.PauliZ(1))

    assert circuit() == 1.0
    assert [(r["shots"], r["seed"]) for r in broker.requests] == [(1000, None)]


# -- denied jobs, timeouts ---------------------------------------------------------------------


def test_a_denied_job_fails_the_batch_and_cancels_the_rest():
    broker = AerBroker(deny={1})
    dev = device(broker, wires=1, shots=10)
    tapes = [
        qml.tape.QuantumScript([qml.RY(t, 0)], [qml.expval(qml.PauliZ(0))], shots=10)
        for t in (0.1, 0.2, 0.3)
    ]
    with pytest.raises(QGuardDenied) as err:
        dev.execute(tapes)
    assert str(err.value) == "qguard job job-0001 on aer_hw: denied — denied by alice"
    assert len(broker.requests) == 3  # all submitted before any wait
    assert broker.cancelled == ["job-0002"]  # job-0000 completed, job-0001 is final


def test_a_timeout_stops_waiting_but_leaves_the_job():
    broker = AerBroker(hold={0})
    dev = device(broker, wires=1, shots=10, timeout=0.2)
    tape = qml.tape.QuantumScript([], [qml.expval(qml.PauliZ(0))], shots=10)
    with pytest.raises(TimeoutError) as err:
        dev.execute(tape)
    assert str(err.value) == "job job-0000 still pending_approval after 0.2 s"
    assert broker.cancelled == []


def test_the_device_imports_no_broker_provider_or_credential_code():
    code = (
        "import sys, jupyter_qguard.kernel.pennylane_device\n"
        "print(sorted(m for m in sys.modules if m.startswith(('jupyter_qguard.broker', "
        "'jupyter_qguard.providers', 'jupyter_qguard.credentials'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
