"""`jupyter qguard audit verify`: find what was done to the log, and where.

One pass over the log hashes every entry (chain and Merkle tree together) and notes where the
order of `seq` or the chain breaks; then the signed checkpoints (the local ones and the witness's)
are compared with the tree heads of the log at their sizes. What is reported, each with the entry
where it starts:

- torn: the last line has no line end (a crash or power loss cut the write short);
- malformed: a line is not an entry (edited by hand);
- deleted / duplicated / reordered: the entries' own indices (`seq`) skip, repeat or go back;
- edited: an entry's hash is not the one the next entry recorded;
- rewritten: the chain is whole but the tree differs from a signed checkpoint (the chain was
  recomputed after an edit); located between the last checkpoint that still matches and the
  first that does not;
- truncated: a signed checkpoint covers more entries than the log holds;
- rollback: the witness holds a newer checkpoint than the log and its own checkpoint (both were
  put back to an older copy); forked: the witness saw another tree of that size;
- signature: a checkpoint does not verify with the trusted key.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .log import CHECKPOINT_NAME, CHECKPOINTS_NAME, GENESIS, LOG_NAME
from .merkle import CompactTree, leaf_hash
from .note import Checkpoint, NoteError, VerifierKey, open_note
from .witness import Witness

MAX_PROBLEMS = 50


@dataclass
class Problem:
    kind: str
    entry: int | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "entry": self.entry, "message": self.message}


@dataclass
class Report:
    entries: int = 0
    checkpoint_size: int | None = None
    witness_size: int | None = None
    key: str | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_entry(self) -> int | None:
        located = [p.entry for p in self.problems if p.entry is not None]
        return min(located) if located else None

    def add(self, kind: str, entry: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind, entry, message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoint_size": self.checkpoint_size,
            "witness_size": self.witness_size,
            "key": self.key,
            "first_bad_entry": self.first_bad_entry,
            "problems": [p.as_dict() for p in self.problems],
        }

    def text(self) -> str:
        head = (
            f"{self.entries} entries; newest signed checkpoint covers "
            f"{self.checkpoint_size if self.checkpoint_size is not None else 'none'}; witness "
            f"{self.witness_size if self.witness_size is not None else 'none'}"
        )
        if self.ok:
            return f"OK: {head}; every entry and checkpoint checks out (key {self.key})"
        lines = [f"FAILED: {head}; first bad entry: {self.first_bad_entry}"]
        lines += [f"  [{p.kind}] {p.message}" for p in self.problems]
        return "\n".join(lines)


def _checkpoints(directory: Path, key: VerifierKey, report: Report) -> list[Checkpoint]:
    """Every signed checkpoint kept next to the log, checked; the newest (`checkpoint`) too."""
    notes: list[str] = []
    history = directory / CHECKPOINTS_NAME
    if history.exists():
        for n, raw in enumerate(history.read_bytes().splitlines()):
            try:
                notes.append(json.loads(raw)["note"])
            except (ValueError, KeyError, TypeError):
                report.add("signature", None, f"{CHECKPOINTS_NAME} line {n + 1} is not a record")
    newest = directory / CHECKPOINT_NAME
    if newest.exists():
        notes.append(newest.read_text())
    out: dict[int, Checkpoint] = {}
    for note in notes:
        try:
            cp = open_note(note, key)
        except NoteError as exc:
            report.add("signature", None, f"a checkpoint does not verify: {exc}")
            continue
        if cp.origin != key.name:
            report.add("signature", None, f"a checkpoint names another log ({cp.origin})")
            continue
        if cp.size in out and out[cp.size].root != cp.root:
            report.add("signature", cp.size, f"two signed checkpoints of size {cp.size} differ")
        out[cp.size] = cp
    return [out[s] for s in sorted(out)]


def verify(directory: Path, key: VerifierKey, *, witness_dir: Path | None = None) -> Report:
    directory = Path(directory)
    report = Report(key=key.vkey())
    checkpoints = _checkpoints(directory, key, report)
    witnessed: Checkpoint | None = None
    if witness_dir is not None:
        try:
            held = Witness(witness_dir).latest(key)
        except NoteError as exc:
            report.add("signature", None, f"the witness's checkpoint does not verify: {exc}")
            held = None
        if held is not None:
            witnessed = held[0]
            report.witness_size = witnessed.size
    if checkpoints:
        report.checkpoint_size = checkpoints[-1].size
    wanted = {cp.size for cp in checkpoints} | ({witnessed.size} if witnessed else set())
    roots: dict[int, bytes] = {0: CompactTree().root()}

    tree = CompactTree()
    seqs = array("q")
    breaks: list[int] = []
    malformed: list[int] = []
    torn: int | None = None
    prev = GENESIS
    path = directory / LOG_NAME
    if path.exists():
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    torn = len(raw)
                    break
                line = raw[:-1]
                leaf = leaf_hash(line)
                try:
                    entry = json.loads(line)
                    seq, recorded = entry["seq"], entry["prev"]
                    if not isinstance(seq, int) or not isinstance(recorded, str):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    malformed.append(tree.size)
                    seq, recorded = -1, prev
                seqs.append(seq)
                if recorded != prev:
                    breaks.append(tree.size)
                prev = leaf.hex()
                tree.append(leaf)
                if tree.size in wanted:
                    roots[tree.size] = tree.root()
    n = report.entries = tree.size

    for i in malformed:
        report.add("malformed", i, f"entry {i} is not a well-formed entry: it was edited")
    anomalies = _order(report, seqs)
    for i in breaks:
        if i in anomalies or i - 1 in anomalies or i in malformed or i - 1 in malformed:
            continue  # already explained
        report.add(
            "edited",
            i - 1,
            f"entry {i - 1} was changed after it was written: its hash is not the one entry {i} "
            "recorded",
        )
    if torn is not None:
        report.add(
            "torn",
            n,
            f"entry {n} is cut short ({torn} bytes and no line end), as a crash or power loss "
            f"during the write leaves it; the {n} entries before it are intact",
        )
    chain_problems = bool(report.problems)

    # Signed tree heads against the log.
    good = 0
    for cp in checkpoints:
        if cp.size > n:
            signed = checkpoints[-1].size  # the newest says how much is gone
            if torn is not None and signed == n + 1:
                report.add(
                    "truncated",
                    n,
                    f"checkpoint {signed} was signed with entry {n} whole; it is cut short now",
                )
            else:
                report.add(
                    "truncated",
                    n,
                    f"the log holds {n} entries but a signed checkpoint covers {signed}: "
                    f"entries {n}..{signed - 1} were removed",
                )
            break
        if roots[cp.size] == cp.root:
            good = cp.size
            continue
        if not chain_problems:
            where = (
                f"entry {good} was changed"
                if cp.size - good == 1
                else f"an entry between {good} and {cp.size - 1} was changed"
            )
            report.add(
                "rewritten",
                good,
                f"{where}: the log's first {cp.size} entries are not the ones checkpoint "
                f"{cp.size} signed, though the hash chain is whole (it was recomputed)",
            )
        break

    if witnessed is not None:
        newest = report.checkpoint_size or 0
        if witnessed.size > n and newest < witnessed.size:
            report.add(
                "rollback",
                n,
                f"the witness holds a signed checkpoint of {witnessed.size} entries, but the log "
                f"has {n} and its own newest checkpoint covers {newest}: the log was put back "
                f"to an older copy (entries {n}..{witnessed.size - 1} are gone)",
            )
        elif witnessed.size > n:
            pass  # reported as truncated above: the local checkpoint still says so
        elif roots[witnessed.size] != witnessed.root and not chain_problems:
            report.add(
                "forked",
                None,
                f"the log's first {witnessed.size} entries are not the ones the witness saw",
            )
    return report


def _order(report: Report, seqs: array) -> set[int]:
    """Report deletions, duplicates and reordering from the entries' own indices; return the
    positions they explain."""
    off = [i for i, s in enumerate(seqs) if s != i and s != -1]
    if not off:
        return set()
    counts = Counter(s for s in seqs if s >= 0)
    top = max(counts)
    missing = [k for k in range(top + 1) if k not in counts]
    dups = sorted(k for k, c in counts.items() if c > 1)
    first = off[0]
    if missing:
        span = (
            f"entry {missing[0]} is"
            if len(missing) == 1
            else f"{len(missing)} entries ({missing[0]}, ...) are"
        )
        where = (
            f"the log starts at entry {seqs[first]}"
            if missing[0] == 0
            else f"the log goes from entry {missing[0] - 1} to entry {seqs[first]}"
        )
        report.add("deleted", missing[0], f"{span} missing: {where}")
    elif dups:
        report.add("duplicated", dups[0], f"entry {dups[0]} appears {counts[dups[0]]} times")
    else:
        report.add(
            "reordered",
            first,
            f"entries are out of order from position {first}: it holds entry {seqs[first]}",
        )
    return set(off)
