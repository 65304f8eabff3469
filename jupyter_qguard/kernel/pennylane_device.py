"""The PennyLane device `qguard.hardware`: every circuit becomes one qguard job.

    dev = qml.device("qguard.hardware", wires=2, backend="fake_brisbane", shots=1000)

Each tape PennyLane hands the device (after its preprocessing) is written as OpenQASM 2 and
submitted to the broker as one job, which a person approves for a hardware backend. The counts
that come back are turned into shot samples, and PennyLane's own measurement processes compute
expectation values, probabilities, samples and counts from them, exactly as `default.qubit`
does on its sampling path.

This runs inside the agent kernel: it imports only pennylane, numpy and `jupyter_qguard.kernel`
(never broker, provider or credential code); the broker is reached over the kernel's channel.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pennylane as qml
from pennylane.devices import Device, ExecutionConfig
from pennylane.devices.modifiers import single_tape_support
from pennylane.devices.preprocess import (
    decompose,
    null_postprocessing,
    validate_device_wires,
    validate_measurements,
    validate_observables,
)
from pennylane.exceptions import DeviceError, PennyLaneDeprecationWarning
from pennylane.measurements import (
    CountsMP,
    ExpectationMP,
    MeasurementProcess,
    ProbabilityMP,
    SampleMP,
    Shots,
    VarianceMP,
)
from pennylane.operation import Operator
from pennylane.ops import Conditional, MidMeasure, SProd, Sum
from pennylane.tape import QuantumScript, QuantumScriptBatch
from pennylane.transforms import broadcast_expand, diagonalize_measurements, split_non_commuting
from pennylane.transforms.core import CompilePipeline, transform
from pennylane.typing import PostprocessingFn, Result, ResultBatch

from .client import BrokerClient, QGuardError
from .jobs import TERMINAL, QGuardJob, encode_qasm, submit_program
from .waiting import StatusLine, wait_for_counts

DEVICE_NAME = "qguard.hardware"

# Gates the device sends as they are. Each has an OpenQASM 2 name in PennyLane's serializer and
# in the qelib1.inc that the broker's parser (qiskit.qasm2 with LEGACY_CUSTOM_INSTRUCTIONS) knows;
# everything else is decomposed into these. GlobalPhase is left out on purpose: the serializer
# would write `gphase`, which qelib1.inc lacks, and a global phase changes no measured statistic
# (PennyLane decomposes it into nothing).
QASM_GATES = frozenset(
    {
        "Identity",
        "PauliX",
        "PauliY",
        "PauliZ",
        "Hadamard",
        "S",
        "Adjoint(S)",
        "T",
        "Adjoint(T)",
        "RX",
        "RY",
        "RZ",
        "PhaseShift",
        "U1",
        "U2",
        "U3",
        "CNOT",
        "CZ",
        "CRX",
        "CRY",
        "CRZ",
        "SWAP",
        "Toffoli",
        "CSWAP",
    }
)

# Measurement processes computed from shot samples. Exact types: subclasses such as the shadow
# or state measurements need more than computational-basis samples.
SUPPORTED_MEASUREMENTS = (ExpectationMP, VarianceMP, SampleMP, CountsMP, ProbabilityMP)

SUPPORTED_TEXT = (
    "qml.expval, qml.var, qml.sample, qml.counts and qml.probs, of Pauli words (PauliX, PauliY, "
    "PauliZ, Identity and their tensor products) or of the computational basis; qml.expval also "
    "takes sums of Pauli words (one job per qubit-wise commuting group)"
)

ANALYTIC_REFUSED = (
    f"{DEVICE_NAME} runs circuits on hardware, which takes shots: analytic execution "
    "(shots=None) is not possible. Give the device shots (qml.device('qguard.hardware', "
    "wires=..., backend=..., shots=1000)) or the QNode (qml.set_shots(qnode, shots=1000))."
)

MCM_REFUSED = (
    f"{DEVICE_NAME} does not support mid-circuit measurements or classically controlled "
    "operations: its jobs measure every qubit once, at the end"
)


def _is_pauli_word(obs: Operator) -> bool:
    return bool(qml.pauli.is_pauli_word(obs))


def _is_pauli_sum(obs: Operator) -> bool:
    """A sum (or scaled sum) of Pauli words: `split_non_commuting` splits it into words."""
    if not isinstance(obs, (Sum, SProd)):
        return False
    _, terms = obs.terms()
    return all(_is_pauli_word(term) for term in terms)


def _supported_observable(mp: MeasurementProcess) -> bool:
    if mp.obs is None:
        return True  # the computational basis
    if _is_pauli_word(mp.obs):
        return True
    return isinstance(mp, ExpectationMP) and _is_pauli_sum(mp.obs)


def _is_diagonal_word(obs: Operator) -> bool:
    """After `diagonalize_measurements`, observables are products of PauliZ and Identity."""
    if isinstance(obs, SProd):
        return _is_diagonal_word(obs.base)
    if isinstance(obs, qml.ops.Prod):
        return all(_is_diagonal_word(factor) for factor in obs.operands)
    return isinstance(obs, (qml.PauliZ, qml.Identity))


def _supported_measurement(mp: MeasurementProcess) -> bool:
    return type(mp) in SUPPORTED_MEASUREMENTS


def _require_shots(tape: QuantumScript) -> None:
    if not tape.shots:
        raise DeviceError(ANALYTIC_REFUSED)


@transform
def check_hardware_run(
    tape: QuantumScript, name: str = DEVICE_NAME
) -> tuple[QuantumScriptBatch, PostprocessingFn]:
    """Refuse, before any job exists, what a run on hardware cannot give: analytic results,
    mid-circuit measurements, and measurements other than samples of Pauli words."""
    _require_shots(tape)
    for op in tape.operations:
        if isinstance(op, (MidMeasure, Conditional)):
            raise DeviceError(f"{MCM_REFUSED} (found {op})")
    for mp in tape.measurements:
        if mp.mv is not None:
            raise DeviceError(f"{MCM_REFUSED} (found {mp})")
        if not _supported_measurement(mp):
            raise DeviceError(f"{name} cannot measure {mp}: it supports {SUPPORTED_TEXT}")
        if not _supported_observable(mp):
            raise DeviceError(
                f"{name} cannot measure {mp}: the observable {mp.obs} is not a Pauli word; "
                f"it supports {SUPPORTED_TEXT}"
            )
    return (tape,), null_postprocessing


@transform
def split_into_bases(tape: QuantumScript) -> tuple[QuantumScriptBatch, PostprocessingFn]:
    """`split_non_commuting` (qubit-wise commuting groups), one tape per measurement basis.

    When only Identity terms are measured it makes no tape at all (nothing needs a job), and
    PennyLane 0.45 then gives `()` for a shot vector instead of a value per bin; that case is
    completed here from its result for plain shots."""
    tapes, postprocess = split_non_commuting(tape, grouping_strategy="qwc")
    if tapes or not tape.shots.has_partitioned_shots:
        return tapes, postprocess
    _, single = split_non_commuting(
        tape.copy(shots=tape.shots.total_shots), grouping_strategy="qwc"
    )
    value = single([])
    bins = tape.shots.num_copies
    return (), lambda results: tuple(value for _ in range(bins))


def tape_to_qasm(tape: QuantumScript, wires: Iterable[Any]) -> str:
    """The OpenQASM 2 program of a preprocessed tape: qubit q[i] is device wire i, measured into
    classical bit c[i]; `rotations=True` appends the diagonalizing gates of any observable left
    (after `diagonalize_measurements` there are none, the observables are PauliZ words)."""
    if tape.num_wires == 0:
        raise DeviceError(f"{DEVICE_NAME} got a circuit that acts on and measures no wire")
    return qml.to_openqasm(tape, wires=qml.wires.Wires(wires), rotations=True, measure_all=True)


def counts_to_samples(
    counts: Mapping[str, int], num_bits: int, rng: np.random.Generator
) -> np.ndarray:
    """Qiskit counts as a (shots, num_bits) array of 0/1 whose column i is classical bit i.

    Qiskit writes classical bit 0 as the RIGHTMOST character of a key, so each key is read
    backwards. The rows are shuffled: counts keep no shot order, and shot vectors split the
    rows into consecutive bins, which must not see the outcomes sorted."""
    rows: list[list[int]] = []
    repeats: list[int] = []
    for key, n in counts.items():
        bits = str(key).replace(" ", "")
        if bits.startswith("0x"):
            bits = format(int(bits, 16), "b")
        bits = bits.zfill(num_bits)
        if len(bits) != num_bits or set(bits) - {"0", "1"}:
            raise DeviceError(
                f"the job's counts have the outcome {key!r}; expected {num_bits} classical bits"
            )
        rows.append([int(b) for b in reversed(bits)])
        repeats.append(int(n))
    if not rows or sum(repeats) == 0:
        raise DeviceError("the job came back without any counts")
    samples = np.repeat(np.asarray(rows, dtype=np.int64), repeats, axis=0)
    rng.shuffle(samples, axis=0)
    return samples


def _cell_source() -> str | None:
    """The source of the cell being run, kept with the job for the person who approves it."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        history = shell.user_ns.get("In") if shell is not None else None
    except Exception:
        return None
    return history[-1] if history else None


def _cancel_unfinished(jobs: Sequence[QGuardJob]) -> None:
    """Best effort: the batch cannot be completed, so its other jobs should not wait for a
    person's approval (or run and cost money) for nothing."""
    for job in jobs:
        if job.state in TERMINAL:
            continue
        try:
            job.cancel()
        except QGuardError:
            pass  # already final, or the broker refused: nothing more to do here


@single_tape_support
class QGuardDevice(Device):
    """PennyLane device that runs each circuit as a qguard job on `backend`.

    Args:
        wires: number of wires, or their labels (required: a job has a fixed qubit count).
        backend: the qguard backend name (`%qguard backends` lists them).
        shots: shots per circuit (an int or a shot vector); required at execution, either here
            or with `qml.set_shots`. A shot vector runs one job with the total number of shots
            and splits its samples into the bins, in order.
        seed: passed with every job; the broker's simulators honour it, hardware ignores it. It
            also seeds the shuffling of the returned counts into samples.
        timeout: seconds to wait for each job (None: until it ends). When it runs out, or on
            Ctrl-C, waiting stops with an error but the job goes on.
        max_cost: the most a job may cost, passed to the broker with every job.
        broker: the broker channel; by default the agent kernel's own.
    """

    def __init__(
        self,
        wires: int | Iterable[Any] | None = None,
        *,
        backend: str | None = None,
        shots: int | Sequence[Any] | Shots | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        max_cost: float | None = None,
        broker: BrokerClient | Any | None = None,
    ) -> None:
        if wires is None:
            raise ValueError(
                f"{DEVICE_NAME} needs wires: qml.device('{DEVICE_NAME}', wires=2, backend=...)"
            )
        if not isinstance(backend, str) or not backend:
            raise ValueError(f"{DEVICE_NAME} needs backend=NAME (`%qguard backends` lists them)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, not {seed!r}")
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout}")
        if max_cost is not None and not max_cost >= 0:
            raise ValueError(f"max_cost must be a non-negative number or None, not {max_cost}")
        with warnings.catch_warnings():
            # PennyLane deprecates shots on simulator devices in favour of qml.set_shots; for a
            # device whose every run is a paid, approved hardware job, the shot count is part of
            # the device, and the QNode still takes it from here as its default.
            warnings.filterwarnings(
                "ignore",
                message="Setting shots on device is deprecated",
                category=PennyLaneDeprecationWarning,
            )
            super().__init__(wires=wires, shots=shots)
        self.backend = backend
        self.seed = seed
        self.timeout = timeout
        self.max_cost = max_cost
        self._broker = broker

    @property
    def name(self) -> str:
        return DEVICE_NAME

    def __repr__(self) -> str:
        shots = self.shots.total_shots if self.shots else None
        return (
            f"<{DEVICE_NAME} device (backend={self.backend}, wires={len(self.wires)}, "
            f"shots={shots}) at {hex(id(self))}>"
        )

    def preprocess_transforms(
        self, execution_config: ExecutionConfig | None = None
    ) -> CompilePipeline:
        program = CompilePipeline()
        # First, so that the person sees why before anything is split or decomposed.
        program.add_transform(check_hardware_run, name=self.name)
        program.add_transform(validate_device_wires, self.wires, name=self.name)
        program.add_transform(broadcast_expand)
        # One job measures in one basis per qubit: non-commuting observables (and the terms of
        # a sum) go to separate tapes, each measured in a basis where all its words are diagonal.
        program.add_transform(split_into_bases)
        program.add_transform(diagonalize_measurements)
        program.add_transform(
            decompose,
            stopping_condition=_in_qasm_gates,
            target_gates=set(QASM_GATES),
            skip_initial_state_prep=False,
            name=self.name,
        )
        program.add_transform(
            validate_measurements,
            analytic_measurements=_never,
            sample_measurements=_supported_measurement,
            name=self.name,
        )
        program.add_transform(
            validate_observables, stopping_condition=_is_diagonal_word, name=self.name
        )
        return program

    def execute(
        self,
        circuits: QuantumScriptBatch,
        execution_config: ExecutionConfig | None = None,
    ) -> ResultBatch:
        circuits = tuple(circuits)
        for tape in circuits:
            _require_shots(tape)
        # Everything is written before anything is submitted: a circuit that cannot be written
        # must not leave the batch's other jobs waiting for approval.
        programs = [tape_to_qasm(tape, self.wires) for tape in circuits]
        if self.tracker.active:
            self.tracker.update(batches=1, batch_len=len(circuits))
            self.tracker.record()

        source = _cell_source()
        submitted: list[tuple[QGuardJob, StatusLine]] = []
        results: list[Result] = []
        try:
            # All jobs first, so that a person can approve a whole batch (e.g. the shifted
            # circuits of a gradient) at once; then the results, in order.
            for tape, qasm in zip(circuits, programs, strict=True):
                job = submit_program(
                    encode_qasm(qasm, sdk="pennylane", source=source),
                    backend=self.backend,
                    shots=tape.shots.total_shots,
                    seed=self.seed,
                    max_cost=self.max_cost,
                    broker=self._broker,
                )
                submitted.append((job, StatusLine(job)))
            for tape, (job, line) in zip(circuits, submitted, strict=True):
                counts = wait_for_counts(job, timeout=self.timeout, line=line)
                result = self._results_from_counts(tape, counts)
                results.append(result)
                if self.tracker.active:
                    self.tracker.update(
                        executions=1,
                        shots=tape.shots.total_shots,
                        jobs=1,
                        job_id=job.job_id,
                        results=result,
                    )
                    self.tracker.record()
        except QGuardError:
            # Refused, denied or failed: the batch has no result. Waiting that stops (timeout,
            # Ctrl-C) is not an error of the jobs, and leaves them going.
            _cancel_unfinished([job for job, _ in submitted])
            raise
        return tuple(results)

    def _results_from_counts(self, tape: QuantumScript, counts: Mapping[str, int]) -> Result:
        """The tape's measurements from the job's counts, shaped as `default.qubit` shapes
        them: one value per measurement, and per bin of a shot vector."""
        shots = tape.shots
        samples = counts_to_samples(counts, len(self.wires), np.random.default_rng(self.seed))
        if shots.has_partitioned_shots and samples.shape[0] != shots.total_shots:
            raise DeviceError(
                f"the job returned {samples.shape[0]} shots, not the {shots.total_shots} the "
                "shot vector needs"
            )
        # Column i holds classical bit i, which measured q[i], which is device wire i. The
        # measurements' observables were diagonalized before the job, so PennyLane's
        # process_samples maps the bits to their eigenvalues, as on default.qubit's sampling path.
        per_bin: list[Any] = []
        for lower, upper in shots.bins():
            chunk = samples[lower:upper]
            values = tuple(
                mp.process_samples(chunk, wire_order=self.wires) for mp in tape.measurements
            )
            per_bin.append(values[0] if len(values) == 1 else values)
        if shots.has_partitioned_shots:
            return tuple(per_bin)
        return per_bin[0]


def _in_qasm_gates(op: Operator) -> bool:
    return op.name in QASM_GATES


def _never(mp: MeasurementProcess) -> bool:
    return False


__all__: list[str] = [
    "DEVICE_NAME",
    "QASM_GATES",
    "QGuardDevice",
    "check_hardware_run",
    "split_into_bases",
    "counts_to_samples",
    "tape_to_qasm",
]
