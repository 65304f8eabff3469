"""Signed checkpoints of the audit log, in the C2SP forms anyone's tooling reads.

A checkpoint (c2sp.org/tlog-checkpoint) is the note text

    <origin>
    <tree size, decimal>
    <root hash, base64>

signed as a C2SP signed note (c2sp.org/signed-note): a blank line, then one line per signature,
"— <key name> <base64(4-byte key id || Ed25519 signature of the text)>". The key id is the first
four bytes of SHA-256(key name || 0x0A || 0x01 || public key). The verifier key is written in the
usual vkey form, "<name>+<key id hex>+<base64(0x01 || public key)>".

Only public keys live here; the private key is signed with through `credentials.NoteSigner`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

ED25519 = b"\x01"
SIG_PREFIX = "\u2014 "  # em dash, space
KEY_NAME = re.compile(r"[^\s+]+")


class NoteError(ValueError):
    """A note or key that is malformed, or a signature that does not verify."""


class Signer(Protocol):
    public_key: bytes

    def sign(self, message: bytes) -> bytes: ...


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public_key).digest()[:4]


@dataclass(frozen=True)
class VerifierKey:
    name: str
    public_key: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public_key)

    def vkey(self) -> str:
        b64 = base64.b64encode(ED25519 + self.public_key).decode()
        return f"{self.name}+{self.id.hex()}+{b64}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # the base64 may hold "+" too
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key id hex>+<base64 key>")
        name, kid, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError("the verifier key is not base64") from None
        if not KEY_NAME.fullmatch(name) or raw[:1] != ED25519 or len(raw) != 33:
            raise NoteError("not an Ed25519 verifier key")
        key = cls(name, raw[1:])
        if key.id.hex() != kid:
            raise NoteError("the verifier key's id does not match its name and key")
        return key

    def verify(self, text: bytes, signature: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"

    def sign(self, name: str, signer: Signer) -> str:
        """The signed note."""
        body = self.text().encode()
        sig = base64.b64encode(key_id(name, signer.public_key) + signer.sign(body)).decode()
        return f"{self.text()}\n{SIG_PREFIX}{name} {sig}\n"


def open_note(note: str, key: VerifierKey) -> Checkpoint:
    """The checkpoint in `note`, if `key` signed it; NoteError otherwise."""
    text, sep, sigs = note.partition("\n\n")
    # The text may not hold a blank line of its own (a checkpoint has none), so the first one
    # separates it from the signatures.
    if not sep or not sigs.endswith("\n"):
        raise NoteError("not a signed note (no blank line before the signatures)")
    text += "\n"
    verified = False
    for line in sigs[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"malformed signature line {line!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError:
            raise NoteError("a signature is not base64") from None
        if name != key.name or raw[:4] != key.id:
            continue  # someone else's signature: ignored, as the spec says
        if not key.verify(text.encode(), raw[4:]):
            raise NoteError(f"the signature of {name} does not verify: the note was altered")
        verified = True
    if not verified:
        raise NoteError(f"the note carries no signature of {key.name}")
    lines = text.split("\n")
    try:
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
    except (IndexError, ValueError):
        raise NoteError("the note is not a checkpoint (origin, size, root)") from None
    if size < 0 or len(root) != 32 or not origin:
        raise NoteError("the note is not a checkpoint (origin, size, root)")
    return Checkpoint(origin, size, root)
