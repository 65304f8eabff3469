"""A content-addressed store of file snapshots: the "before" and "after" of workspace changes.

Objects live at `<root>/<sha[:2]>/<sha>` (SHA-256 of the bytes, lower-case hex), in directories
0700 and files 0600: the store sits under the broker's state dir, which kernels cannot write,
and a snapshot can hold anything the agent wrote, so nobody else should read it either.

An object appears under its name only once complete: it is written to `<root>/tmp/`, fsynced and
renamed into place, so a reader (or a crash) never sees a partial object. `get` re-hashes what it
reads, so an object damaged on disk is reported, never served as if it were the snapshot.

"Least recently used" is tracked through the object's mtime, which `put` (of content already
stored) and `get` bump: atime is unreliable (relatime, noatime mounts).

The store never reads the workspace (the watcher hands it bytes it read through workspace_io),
and it does not trust its own directory blindly either: objects are opened O_NOFOLLOW and
O_NONBLOCK and read only if they are regular files within the per-object cap, and a shard
directory that is a link is refused, so that even a store misplaced where a kernel can write
never serves, or writes through, something planted there.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_OBJECT_BYTES = 16 * 1024 * 1024

_SHA_RE = re.compile(r"[0-9a-f]{64}")
# A temp file this old belongs to no write still in progress: a crash left it.
_STALE_TMP_SECONDS = 3600.0


class SnapshotNotFound(KeyError):
    """No object with that hash (never stored, over the size cap, or pruned)."""


class SnapshotCorrupt(ValueError):
    """An object whose bytes no longer hash to its name; it has been removed."""


@dataclass(frozen=True)
class PutResult:
    """What `put` did: `stored` is False when the content was over the per-object cap, in which
    case only `sha256` and `size` are known and `get(sha256)` will raise SnapshotNotFound."""

    sha256: str
    size: int
    stored: bool


@dataclass(frozen=True)
class PruneResult:
    removed: int
    freed_bytes: int
    total_bytes: int


def is_sha256(value: object) -> bool:
    """A lower-case hex SHA-256, the only object names the store accepts (no path tricks)."""
    return isinstance(value, str) and _SHA_RE.fullmatch(value) is not None


class SnapshotStore:
    """Content-addressed, deduplicating, thread-safe within one process."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        self.root = Path(root)
        self.max_object_bytes = max_object_bytes
        self._tmp = self.root / "tmp"
        self._root_s = os.fspath(self.root)
        self._tmp_s = os.fspath(self._tmp)
        self._shards: set[str] = set()
        self._lock = threading.Lock()
        # Bytes in objects, computed by one scan on first use and kept up to date after that.
        self._total: int | None = None
        _make_private_dir(self.root)
        _make_private_dir(self._tmp)

    # -- writing ---------------------------------------------------------------------------

    def put(self, data: bytes, *, durable: bool = True) -> PutResult:
        """Store `data` (once: the same content is stored once) and return its hash.

        `durable=False` skips the fsync of the object; the caller then owes a `flush()` (the
        watcher's initial scan stores thousands of files and flushes once). The object is still
        renamed into place only once fully written, so it is never seen partial by this process.
        """
        sha = hashlib.sha256(data).hexdigest()
        size = len(data)
        if size > self.max_object_bytes:
            return PutResult(sha, size, stored=False)
        # Plain string paths: pathlib's overhead was a tenth of the watcher's start-up scan.
        shard = f"{self._root_s}/{sha[:2]}"
        path = f"{shard}/{sha}"
        if self._touch_if_present(path, size):
            return PutResult(sha, size, stored=True)
        if shard not in self._shards:
            _make_private_dir(Path(shard))
            self._shards.add(shard)
        tmp = f"{self._tmp_s}/{sha[:16]}.{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        placed = False
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                # Checked again under the lock: another thread may have stored it meanwhile,
                # and the running total must count each object once.
                previous = _size_or_none(path)
                if previous == size:
                    _touch(path)
                    return PutResult(sha, size, stored=True)
                os.replace(tmp, path)
                placed = True
                if self._total is not None:
                    self._total += size - (previous or 0)
            if durable:
                _fsync_dir(shard)
        finally:
            if not placed:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
        return PutResult(sha, size, stored=True)

    def flush(self) -> None:
        """Make every object written with `durable=False` durable, with one syncfs(2)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if not _syncfs(fd):
                os.sync()
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------------------

    def has(self, sha: str) -> bool:
        return is_sha256(sha) and self._path(sha).is_file()

    def get(self, sha: str) -> bytes:
        """The bytes stored under `sha`; SnapshotNotFound if absent, SnapshotCorrupt if damaged."""
        if not is_sha256(sha):
            raise SnapshotNotFound(sha)
        path = self._path(sha)
        data = self._read(path)
        if data is None:
            raise SnapshotNotFound(sha)
        if hashlib.sha256(data).hexdigest() != sha:
            log.error("snapshot %s is corrupt; removing it", sha)
            self._remove(path)
            raise SnapshotCorrupt(f"snapshot {sha} is corrupt")
        _touch(path)
        return data

    def size_total(self) -> int:
        """Bytes held in objects (not counting directories or temp files)."""
        with self._lock:
            if self._total is None:
                self._total = sum(st.st_size for _, _, st in self._objects())
            return self._total

    def __len__(self) -> int:
        return sum(1 for _ in self._objects())

    # -- pruning ---------------------------------------------------------------------------

    def prune(
        self,
        max_age_seconds: float | None,
        max_total_bytes: int | None,
        keep: Iterable[str] = (),
        evict_first: Iterable[str] = (),
    ) -> PruneResult:
        """Remove objects not used for `max_age_seconds`, then, while more than
        `max_total_bytes` remain, the objects in `evict_first` (least recently used first),
        then the other least recently used ones; never an object in `keep`.

        The cap is best effort: if the kept objects alone exceed it, they all stay. The caller
        must keep what is still referenced: pending jobs, recent changes and the watcher's
        current baseline (`WorkspaceWatcher.known_hashes()`), or a later revert loses its
        "before". `evict_first` is what may go before anything else (the tracker passes what
        agent kernels wrote: their churn must not push out the person's snapshots).
        """
        keep_set = set(keep)
        first_set = set(evict_first) - keep_set
        now = time.time()
        self._remove_stale_tmp(now)
        first: list[tuple[float, int, Path]] = []
        rest: list[tuple[float, int, Path]] = []
        total = 0
        for sha, path, st in self._objects():
            total += st.st_size
            if sha in first_set:
                first.append((st.st_mtime, st.st_size, path))
            elif sha not in keep_set:
                rest.append((st.st_mtime, st.st_size, path))
        first.sort(key=lambda item: item[0])
        rest.sort(key=lambda item: item[0])
        removed = 0
        freed = 0
        gone: set[Path] = set()
        if max_age_seconds is not None:
            for mtime, size, path in first + rest:
                if now - mtime > max_age_seconds and self._remove(path):
                    removed += 1
                    freed += size
                    gone.add(path)
        if max_total_bytes is not None:
            for _mtime, size, path in first + rest:
                if total - freed <= max_total_bytes:
                    break
                if path not in gone and self._remove(path):
                    removed += 1
                    freed += size
        with self._lock:
            # A fresh scan's figure, less what went: objects put meanwhile are counted by put.
            self._total = None
        return PruneResult(removed, freed, self.size_total())

    # -- internals -------------------------------------------------------------------------

    def _read(self, path: Path) -> bytes | None:
        """An object's bytes; None if absent, or not a regular file within the cap (a link,
        a FIFO, something grown: never followed, never waited on, never served)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):
                log.error("snapshot store: %s is not a regular file; ignoring it", path.name)
                return None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_object_bytes:
                log.error("snapshot store: %s is not a regular object; ignoring it", path.name)
                return None
            parts = []
            total = 0
            while chunk := os.read(fd, max(st.st_size - total, 0) + 1):
                parts.append(chunk)
                total += len(chunk)
                if total > self.max_object_bytes:
                    return None
            return b"".join(parts)
        finally:
            os.close(fd)

    def _path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha

    def _touch_if_present(self, path: str | Path, size: int) -> bool:
        """Bump an existing object's mtime (it was just used) and say whether it is there. An
        object of the wrong size (damaged) counts as absent, so put rewrites it."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        if st.st_size != size:
            return False
        _touch(path)
        return True

    def _objects(self) -> Iterable[tuple[str, Path, os.stat_result]]:
        try:
            shards = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for shard in shards:
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            try:
                entries = list(os.scandir(shard.path))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not is_sha256(entry.name) or entry.name[:2] != shard.name:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield entry.name, Path(entry.path), st

    def _remove(self, path: Path) -> bool:
        with self._lock:
            size = _size_or_none(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            if self._total is not None and size is not None:
                self._total -= size
            return True

    def _remove_stale_tmp(self, now: float) -> None:
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime > _STALE_TMP_SECONDS:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass


def _make_private_dir(path: Path) -> None:
    if path.is_symlink():
        raise OSError(errno.ELOOP, "the snapshot store will not use a link as a directory", path)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode passes through the umask and leaves existing dirs alone: set it explicitly.
    if (path.stat().st_mode & 0o777) != 0o700:
        path.chmod(0o700)


def _size_or_none(path: str | Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _touch(path: str | Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> bool:
    """syncfs(2) on the filesystem of `fd` (Linux); False where it is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.syncfs(fd) == 0)
    except (OSError, AttributeError):
        return False
