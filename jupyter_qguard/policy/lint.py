"""Quantum lint: facts about a program (parsed in a worker process) turned into findings with a
severity and a message, which the policy reads (an `error` finding is a deny in the default
pack)."""

from __future__ import annotations

from typing import Any


def finding(severity: str, code: str, message: str) -> dict[str, str]:
    return {"severity": severity, "code": code, "message": message}


def lint(
    facts: dict[str, Any], *, backend: str, qubits: int | None, max_depth: int | None = None
) -> dict[str, Any]:
    findings = []
    if qubits is not None and facts["num_qubits"] > qubits:
        findings.append(
            finding(
                "error",
                "too-many-qubits",
                f"the circuit uses {facts['num_qubits']} qubits; {backend} has {qubits}",
            )
        )
    if not facts["has_measurements"]:
        findings.append(
            finding(
                "error",
                "no-measurements",
                "the circuit has no measurements, so a run would return no counts",
            )
        )
    if facts["num_parameters"]:
        findings.append(
            finding(
                "error",
                "unbound-parameters",
                f"the circuit has {facts['num_parameters']} unbound parameter(s); bind them first",
            )
        )
    unwritten = facts.get("clbits_read_before_written") or []
    if unwritten:
        findings.append(
            finding(
                "error",
                "clbit-read-before-write",
                f"classical bit(s) {', '.join(map(str, unwritten))} are read by a condition before "
                "any measurement writes them",
            )
        )
    # The approver reads the drawing and the operation names; the backend runs the gate the
    # name (or the drawing's label) says, whatever the definition beside it.
    for message in facts.get("spoofed_gates") or []:
        findings.append(finding("error", "spoofed-gate", str(message)))
    transpiled = facts.get("transpiled")
    if (
        transpiled
        and "depth" in transpiled
        and max_depth is not None
        and transpiled["depth"] > max_depth
    ):
        findings.append(
            finding(
                "warning",
                "deep-circuit",
                f"depth {transpiled['depth']} after transpiling to {backend} "
                f"({transpiled['two_qubit_gates']} two-qubit gates) is over {max_depth}; "
                "results may be mostly noise",
            )
        )
    return {"findings": findings, "facts": facts}
