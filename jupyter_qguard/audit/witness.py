"""The witness: a second copy of the newest checkpoint, somewhere else, that only moves forward.

Someone who can rewrite the state dir can put back an older log together with its older (and
genuinely signed) checkpoint; only a copy kept elsewhere still shows the newer tree head. The
witness accepts a checkpoint only if it is signed by the key it first saw and its tree is not
smaller than the one it holds (the same size must come with the same root), so rolling the log
back cannot roll the witness back through the server.
"""

from __future__ import annotations

from pathlib import Path

from ..fsutil import write_atomic
from .note import Checkpoint, NoteError, VerifierKey, open_note

CHECKPOINT_NAME = "checkpoint"
KEY_NAME = "verifier.key"


class WitnessRefused(RuntimeError):
    """The witness did not take a checkpoint (older, forked, or signed by another key)."""


class Witness:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def key(self) -> VerifierKey | None:
        try:
            return VerifierKey.parse((self.dir / KEY_NAME).read_text())
        except FileNotFoundError:
            return None

    def latest(self, key: VerifierKey | None = None) -> tuple[Checkpoint, str] | None:
        """The held checkpoint and its note, checked against `key` (default: the held key)."""
        try:
            note = (self.dir / CHECKPOINT_NAME).read_text()
        except FileNotFoundError:
            return None
        key = key or self.key()
        if key is None:
            raise NoteError(f"the witness in {self.dir} holds a checkpoint but no key")
        return open_note(note, key), note

    def update(self, note: str, key: VerifierKey) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        held_key = self.key()
        if held_key is None:
            write_atomic(self.dir / KEY_NAME, key.vkey() + "\n")
        elif held_key != key:
            raise WitnessRefused(
                f"it trusts key {held_key.vkey()}, not {key.vkey()} (a new signing key needs the "
                "witness's key file replaced by hand)"
            )
        try:
            new = open_note(note, key)
            held = self.latest(key)
        except NoteError as exc:
            raise WitnessRefused(str(exc)) from None
        if held is not None:
            old = held[0]
            if new.size < old.size:
                raise WitnessRefused(f"it holds a larger tree ({old.size} > {new.size} entries)")
            if new.size == old.size and new.root != old.root:
                raise WitnessRefused(f"it holds a different tree of the same size {new.size}")
        write_atomic(self.dir / CHECKPOINT_NAME, note)
