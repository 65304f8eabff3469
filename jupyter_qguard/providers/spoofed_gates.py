"""Gates that pass for standard ones: a custom gate named `h`, or any gate labelled `H`, is
drawn (and, by name, compiled and simulated) as a Hadamard whatever its definition says. The
approver would read one circuit and the backend run another, so such a gate is a lint error.

Runs in the program worker (it is part of parsing the agent's program). For every gate whose
name or label names a standard gate (`h`, `H`, `Rz(π/2)`, `CX`...) and that is not that very
standard gate, the operator of what it is (its matrix, or its definition's) is compared with
the standard gate's, up to global phase (standard gates have at most MAX_QUBITS qubits; a gate
of another width is refused without building a matrix). Control-flow blocks and custom
definitions are walked too (a spoof nested in a harmless-looking gate is still a spoof).
"""

from __future__ import annotations

import re
from typing import Any

MAX_QUBITS = 4
# Bounds of the walk (a program past them is refused: what was not checked is not passed).
MAX_INSTRUCTIONS = 1_000_000
MAX_CHECKS = 5_000
MAX_DEPTH = 16
MAX_MESSAGES = 20
# "H", "Rz(π/2)", "cx", "√X": the name a drawing box shows, before any parameters.
_LABEL_NAME = re.compile(r"^\s*([^\s(]+)\s*(?:\(.*\))?\s*$")
# What Qiskit's drawings show for standard gates whose box is not their name.
_DRAWN_AS = {"√x": "sx", "√xdg": "sxdg", "i": "id"}

_STANDARD: dict[str, Any] | None = None


def standard_gates() -> dict[str, Any]:
    """Qiskit's standard gates by name (gates only: measure, reset, delay are not)."""
    global _STANDARD
    if _STANDARD is None:
        from qiskit.circuit import Gate
        from qiskit.circuit.library import get_standard_gate_name_mapping

        _STANDARD = {
            name: gate
            for name, gate in get_standard_gate_name_mapping().items()
            if isinstance(gate, Gate) and gate.num_qubits <= MAX_QUBITS
        }
    return _STANDARD


def _claims(op: Any) -> list[str]:
    """Standard gate names the operation claims to be, by its name and by its label."""
    std = standard_gates()
    out = []
    if op.name in std:
        out.append(op.name)
    label = getattr(op, "label", None)
    if isinstance(label, str):
        m = _LABEL_NAME.match(label)
        name = m.group(1).lower() if m else ""
        name = _DRAWN_AS.get(name, name)
        if name in std and name not in out:
            out.append(name)
    return out


def _custom(op: Any) -> bool:
    """A gate or instruction the program defined itself (QPY brings those as plain Gate or
    Instruction objects with their definition), not one of Qiskit's classes."""
    from qiskit.circuit import Gate, Instruction

    return op.__class__ in (Gate, Instruction)


def _is_the_standard(op: Any, name: str) -> bool:
    """`op` is the standard gate `name` itself (by name and class), whatever its label."""
    std = standard_gates()[name]
    return op.name == name and getattr(op, "base_class", type(op)) is std.base_class


def _unbound(params: list[Any]) -> bool:
    from qiskit.circuit import ParameterExpression

    return any(isinstance(p, ParameterExpression) and p.parameters for p in params)


def _what_it_is(op: Any, op_matrix: Any) -> str:
    """A short name for what the gate does: the standard gate its matrix equals (`X`), else
    the operations of its definition."""
    from qiskit.quantum_info import Operator

    for name, gate in standard_gates().items():
        if gate.params or gate.num_qubits != op.num_qubits:
            continue
        if Operator(gate).equiv(op_matrix):
            return name.upper()
    definition = op.definition if _custom(op) else None
    if definition is not None and len(definition.data):
        names = list(dict.fromkeys(i.operation.name for i in definition.data))
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        return f"a circuit of {shown}"
    return op.name.upper()


def _check(op: Any, claimed: str) -> str | None:
    """Why `op` is not the standard `claimed` gate it passes for (None: it is, or it cannot
    be told: unbound parameters, which lint refuses on their own)."""
    from qiskit.quantum_info import Operator

    std = standard_gates()[claimed]
    label = getattr(op, "label", None)
    who = f"gate {op.name!r}" + (f" (label {label!r})" if isinstance(label, str) else "")
    verb = "is defined as" if getattr(op, "_standard_gate", None) is None else "is"
    if op.num_qubits != std.num_qubits:
        return (
            f"{who} acts on {op.num_qubits} qubit(s), not the standard {claimed}, "
            f"which acts on {std.num_qubits}"
        )
    if _unbound(list(op.params)):
        return None
    if std.params:
        if len(op.params) != len(std.params):
            return (
                f"{who} takes {len(op.params)} parameter(s), not the standard {claimed}, "
                f"which takes {len(std.params)}"
            )
        try:
            expected = Operator(std.base_class(*(float(p) for p in op.params)))
        except (TypeError, ValueError):
            return f"{who} has parameters the standard {claimed} cannot take"
    else:
        expected = Operator(std)
    if _custom(op) and op.definition is None:
        return None  # opaque: nothing says it is anything but the gate of that name
    try:
        op_matrix = Operator(op)
    except Exception:
        return f"{who} {verb} something that is not a unitary gate, not the standard {claimed}"
    if op_matrix.equiv(expected):
        return None
    return f"{who} {verb} {_what_it_is(op, op_matrix)}, not the standard {claimed}"


class _TooMuch(Exception):
    pass


def spoofed_gates(qc: Any) -> list[str]:
    """One sentence per gate that passes for a standard gate it is not. A program whose custom
    gates are too many, too large or nested too deep to check gets one sentence saying so:
    what was not checked is not passed."""
    from qiskit.circuit import ControlFlowOp

    messages: list[str] = []
    checked: set[Any] = set()
    walked: set[int] = set()
    # Holds every object whose id() is a key above, so no id is reused during the walk.
    keep: list[Any] = []
    budget = {"instructions": MAX_INSTRUCTIONS, "checks": MAX_CHECKS}

    def spend(what: str) -> None:
        budget[what] -= 1
        if budget[what] < 0:
            raise _TooMuch

    def walk(circuit: Any, depth: int, inside: bool) -> None:
        for inst in circuit.data:
            if inside:
                spend("instructions")
            op = inst.operation
            if isinstance(op, ControlFlowOp):
                for block in op.blocks:
                    if depth >= MAX_DEPTH:
                        raise _TooMuch
                    walk(block, depth + 1, inside)
                continue
            custom = _custom(op)
            for claimed in _claims(op):
                if _is_the_standard(op, claimed):
                    continue  # its own name; a label naming another gate is its own claim
                key = (claimed, id(op.definition) if custom else type(op), op.name)
                key += (getattr(op, "label", None), repr(getattr(op, "params", None)))
                if key in checked:
                    continue
                checked.add(key)
                keep.append(op)
                spend("checks")
                why = _check(op, claimed)
                if why is not None and why not in messages and len(messages) < MAX_MESSAGES:
                    messages.append(why)
            # A custom gate's definition (as the program brought it; a library gate's is
            # Qiskit's own, and made on demand) is what may run in its place.
            if custom and op.definition is not None and id(op.definition) not in walked:
                if depth >= MAX_DEPTH:
                    raise _TooMuch
                walked.add(id(op.definition))
                keep.append(op.definition)
                walk(op.definition, depth + 1, True)

    try:
        walk(qc, 0, False)
    except _TooMuch:
        messages.append(
            "the program's custom gates are too many, too large or nested too deep (over "
            f"{MAX_INSTRUCTIONS} instructions in their definitions, {MAX_CHECKS} gates named "
            f"like standard ones, or {MAX_DEPTH} levels) to check that none passes for a "
            "standard gate it is not"
        )
    return messages
