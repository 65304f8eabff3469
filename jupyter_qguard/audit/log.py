"""The audit log: append-only JSON lines, hash-chained and Merkle-hashed, with signed checkpoints.

Files in the audit directory (under the state dir, which no kernel can write):

- `log.jsonl`: one entry per line, serialized one way only (`canonical`: sorted keys, no spaces,
  ASCII). Each entry holds `seq` (its index), `at`, `kind`, `prev` (hex of the previous entry's
  hash, zeros for the first) and the kind's fields. An entry's hash is its RFC 6962 leaf hash,
  SHA-256(0x00 || line without newline), so one hash serves the chain and the Merkle tree.
- `checkpoint`: the newest signed checkpoint (C2SP note), `checkpoints.jsonl`: all of them, and
  `verifier.key`: the public key. Each checkpoint is also handed to the witness (a second
  location) that refuses to go backwards.

Writes open, append and close the file every time: nothing holds the file open, a write to a
directory made read-only or a full disk fails at once, and a failed write is cut back off so the
log never keeps half a line. Ordinary entries are not fsynced (the page cache is enough for a
record of what happened); an entry that must be on disk before something irreversible happens
(a hardware submission) is written with `sync=True` and the caller goes ahead only if that
returned. Values under secret-like keys are replaced by a salted HMAC before they are written.
"""

from __future__ import annotations

import base64
import datetime as dt
import errno
import hashlib
import hmac
import json
import os
import re
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from ..fsutil import append_bytes, read_or_create_key, write_atomic
from .merkle import CompactTree, inclusion_proof, leaf_hash
from .note import Checkpoint, Signer, VerifierKey
from .witness import Witness, WitnessRefused

GENESIS = "0" * 64
LOG_NAME = "log.jsonl"
CHECKPOINT_NAME = "checkpoint"
CHECKPOINTS_NAME = "checkpoints.jsonl"
VERIFIER_NAME = "verifier.key"
SALT_NAME = "hmac.salt"

# Field names whose values are never written as they are (matched on the last word).
SECRET_FIELD = re.compile(
    r"(?i)(^|_)(token|secret|password|passwd|passphrase|api_?key|otp|totp|code|authorization|"
    r"cookie|private_key)$"
)


class AuditUnavailable(RuntimeError):
    """The audit log cannot be written; whatever needed the entry must not go ahead."""


def canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def utc_stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leaves(Sequence[bytes]):
    """Leaf hashes packed in one bytearray (32 bytes each): a million entries is 32 MB, not
    the ~80 MB a list of bytes objects costs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def append(self, leaf: bytes) -> None:
        self._buf += leaf

    def __len__(self) -> int:
        return len(self._buf) // 32

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            return [bytes(self._buf[j * 32 : j * 32 + 32]) for j in range(start, stop, step)]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return bytes(self._buf[i * 32 : i * 32 + 32])


def job_lines(
    path: Path, job: str | None = None, size: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(index, line without its newline) of the whole entries among the first `size` (all by
    default), of one job's if given. The job is matched on the raw line (its canonical form has
    `"job":"<id>"`), so only matching lines are parsed."""
    if not path.exists():
        return
    needle = f'"job":"{job}"'.encode() if job else None
    with open(path, "rb") as f:
        for seq, line in enumerate(f):
            if seq == size or not line.endswith(b"\n"):
                return  # the end asked for, or a last line cut short
            if needle is None or needle in line:
                yield seq, line[:-1]


def read_tail(path: Path, limit: int, job: str | None = None) -> list[dict[str, Any]]:
    """The last `limit` entries (of one job's, if given), oldest first."""
    out: deque[bytes] = deque((line for _, line in job_lines(path, job)), maxlen=limit)
    return [json.loads(line) for line in out]


def origin_for(state_dir: Path) -> str:
    """A checkpoint origin (and key name) naming this log: host and state dir, no spaces or
    plus signs (C2SP key names)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", os.uname().nodename) or "localhost"
    where = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
    return f"qguard.local/{host}/{where}"


class AuditLog:
    def __init__(
        self,
        directory: Path | str,
        *,
        signer: Signer | None,
        origin: str,
        witness_dir: Path | str | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.dir = Path(directory)
        self.min_free_bytes = min_free_bytes
        self.path = self.dir / LOG_NAME
        self.origin = origin
        self.signer = signer
        self.key = VerifierKey(origin, signer.public_key) if signer is not None else None
        self.witness = Witness(Path(witness_dir)) if witness_dir else None
        self._lock = threading.Lock()
        self._tree = CompactTree()
        self.leaves = Leaves()
        self._last = GENESIS
        self._size = 0  # bytes of the log this object wrote or read: the next write starts here
        self._signed_size = -1
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._salt = read_or_create_key(self.dir / SALT_NAME)
        self.recovered = self._load()

    # -- startup ----------------------------------------------------------------------------

    def _load(self) -> dict[str, Any] | None:
        """Hash what is there; cut off a last line a crash left unfinished (it is kept aside
        and the cut is the next entry). Returns what was cut, if anything."""
        if not self.path.exists():
            return None
        torn = None
        with open(self.path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    torn = line
                    break
                leaf = leaf_hash(line[:-1])
                self._tree.append(leaf)
                self.leaves.append(leaf)
                self._last = leaf.hex()
                self._size += len(line)
        if torn is None:
            return None
        kept = self.dir / f"torn-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%f}.bin"
        kept.write_bytes(torn)
        os.truncate(self.path, self._size)
        info = {
            "entry": self._tree.size,
            "bytes": len(torn),
            "sha256": hashlib.sha256(torn).hexdigest(),
            "kept_in": kept.name,
        }
        self.append("audit.recovered", torn=info)
        return info

    # -- writing ----------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._tree.size

    def hmac(self, value: str) -> str:
        return "hmac-sha256:" + hmac.new(self._salt, value.encode(), hashlib.sha256).hexdigest()

    def redact(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: self.redact(v, k) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact(v, key) for v in value]
        if key and SECRET_FIELD.search(key) and isinstance(value, str | int) and value != "":
            return self.hmac(str(value))
        return value

    def append(
        self, kind: str, /, *, sync: bool = False, critical: bool = False, **fields: Any
    ) -> int:
        """Write one entry; its index. AuditUnavailable if it is not in the log.

        `critical`: something that cannot be undone waits on this entry; refuse it while the
        disk is nearly full, so the log never runs out of room half-way through a job."""
        if critical and self.min_free_bytes:
            self._check_room()
        with self._lock:
            entry = {
                **self.redact(fields),
                "seq": self._tree.size,
                "at": utc_stamp(),
                "kind": kind,
                "prev": self._last,
            }
            line = canonical(entry)
            self._write(line + b"\n", sync=sync)
            leaf = leaf_hash(line)
            self._tree.append(leaf)
            self.leaves.append(leaf)
            self._last = leaf.hex()
            return entry["seq"]

    def _write(self, data: bytes, *, sync: bool) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._unavailable(exc) from None
        try:
            at = os.fstat(fd).st_size
            if at < self._size:
                raise AuditUnavailable(
                    f"the audit log {self.path} is shorter than this server wrote it ({at} "
                    f"bytes, not {self._size}): it was cut or replaced; nothing is written until "
                    "`jupyter qguard audit verify` has been run and the server restarted"
                )
            if at > self._size:
                # Bytes of a write that failed half-way (or a foreign append): not ours to keep.
                os.ftruncate(fd, self._size)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
            self._size += len(data)
        except OSError as exc:
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass  # the next write cuts it (see above)
            raise self._unavailable(exc) from None
        finally:
            os.close(fd)

    def free_bytes(self) -> int:
        """Free space (for a non-root writer) on the filesystem the log itself is written to:
        the audit directory's own, whatever the state dir or the workspace are on (a separate
        disk, a mount, a link to elsewhere: the directory is opened, and its filesystem asked)."""
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstatvfs(fd)
        finally:
            os.close(fd)
        return st.f_bavail * st.f_frsize

    def _check_room(self) -> None:
        try:
            free = self.free_bytes()
        except OSError as exc:
            raise self._unavailable(exc) from None
        if free < self.min_free_bytes:
            raise AuditUnavailable(
                f"the audit log {self.path} cannot be written: the disk is full ({free} bytes "
                f"free, it keeps {self.min_free_bytes} in reserve)"
            )

    def _unavailable(self, exc: OSError) -> AuditUnavailable:
        why = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only",
            errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted",
        }.get(exc.errno or 0, os.strerror(exc.errno) if exc.errno else str(exc))
        return AuditUnavailable(f"the audit log {self.path} cannot be written: {why}")

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self, *, force: bool = False) -> str | None:
        """Sign the current tree head, keep it, hand it to the witness; the signed note, or
        None when nothing changed since the last one (or there is no signing key)."""
        if self.signer is None or self.key is None:
            return None
        with self._lock:
            size = self._tree.size
            if size == self._signed_size and not force:
                return None
            cp = Checkpoint(self.origin, size, self._tree.root())
            note = cp.sign(self.origin, self.signer)
            record = canonical({"size": size, "at": utc_stamp(), "note": note}) + b"\n"
            try:
                write_atomic(self.dir / VERIFIER_NAME, self.key.vkey() + "\n")
                write_atomic(self.dir / CHECKPOINT_NAME, note)
                append_bytes(self.dir / CHECKPOINTS_NAME, record)
            except OSError as exc:
                raise self._unavailable(exc) from None
            self._signed_size = size
        if self.witness is not None:
            try:
                self.witness.update(note, self.key)
            except (OSError, WitnessRefused) as exc:
                raise WitnessRefused(f"the witness did not take checkpoint {size}: {exc}") from exc
        return note

    def proofs(self, indices: list[int], size: int) -> list[dict[str, Any]]:
        """Inclusion proofs of these entries in the tree of the first `size` entries (the
        leaves are unpacked once for all of them)."""
        leaves = self.leaves[:size]
        return [
            {
                "index": index,
                "size": size,
                "leaf": leaves[index].hex(),
                "proof": [base64.b64encode(h).decode() for h in inclusion_proof(leaves, index)],
            }
            for index in indices
        ]

    def tail(self, limit: int, job: str | None = None) -> list[dict[str, Any]]:
        return read_tail(self.path, limit, job)
