"""What the watcher knows of one workspace entry, and how it looks at one.

Every look goes through `jupyter_qguard.workspace_io`, relative to a descriptor of the workspace
root: no link is followed on any component, only regular files are opened (O_NONBLOCK, fstat
first), so a folder swapped for a link to `~/.aws` is seen as a link, never read through, and a
FIFO never blocks the watcher. Entries that are not regular files (links, FIFOs, sockets,
devices) are known by their type (and a link by its text), never by content.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time

from .. import workspace_io as wio
from .snapshots import SnapshotStore

log = logging.getLogger("jupyter_qguard.watch.watcher")

# A stat signature taken this soon after the file's ctime may not change on the next write (the
# kernel's timestamps are coarse): such a file is re-read by the next rescan ("racily clean").
RACY_NS = 2_000_000_000
CHUNK = 1024 * 1024
# Link text is shown, never followed; PATH_MAX bounds it, this bounds what a change carries.
MAX_TARGET_CHARS = 1024

# A stat signature: hash((inode, size, mtime_ns, ctime_ns)), one int instead of a 4-tuple of
# big ints (~170 bytes a file less); a collision would need two stats of one file to collide.
Sig = int


class Known:
    """What the watcher knows of one entry. `entry` is "file" or, for what is never read,
    "symlink", "fifo", "socket", "char_device", "block_device" or "other"; `target` is a
    link's text. For a file, `sha` None means over the cap and not hashed yet, or unreadable.
    `sig` None: look again on the next rescan instead of trusting stat."""

    __slots__ = ("entry", "sha", "sig", "size", "stored", "target")

    def __init__(
        self,
        sha: str | None,
        size: int,
        sig: Sig | None,
        stored: bool,
        entry: str = "file",
        target: str | None = None,
    ) -> None:
        self.sha = sha
        self.size = size
        self.sig = sig
        self.stored = stored
        self.entry = entry
        self.target = target

    @property
    def is_file(self) -> bool:
        return self.entry == "file"


def sig(st: os.stat_result) -> Sig:
    return hash((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def trusted_sig(st: os.stat_result) -> Sig | None:
    """The signature, or None when taken too soon after the file's last change to be trusted."""
    return None if time.time_ns() - st.st_ctime_ns < RACY_NS else sig(st)


def special(rfd: int, rel: str, st: os.stat_result, entry: str) -> Known:
    """A link, FIFO, socket or device: its type (and a link's text), nothing opened."""
    target = wio.readlink_at(rfd, rel) if entry == "symlink" else None
    if target is not None:
        # Only shown: well-formed text (a name that is not UTF-8 would not store or encode).
        target = target.encode("utf-8", "replace").decode("utf-8")[:MAX_TARGET_CHARS]
    return Known(None, st.st_size, trusted_sig(st), False, entry, target)


def observe(
    rfd: int,
    rel: str,
    *,
    store: SnapshotStore | None,
    max_file_bytes: int,
    durable: bool,
    max_hash_bytes: int | None = None,
    keep: bool = True,
    st: os.stat_result | None = None,
) -> Known | None:
    """The entry `rel` as it is now under the root descriptor `rfd`; None when nothing is
    there (or only a directory, or a parent is now a link: the path no longer leads anywhere
    without following one). A regular file's content goes to `store` when it fits under the
    cap and `keep` is true (else it is only hashed); one over `max_hash_bytes` (a sparse file
    of a terabyte) is not read at all, only known by its stat signature. `st`: the walk's lstat
    of it, if any."""
    for attempt in (0, 1):
        if st is None:
            st = wio.lstat_at(rfd, rel)
        if st is None or stat.S_ISDIR(st.st_mode):
            return None
        entry = wio.entry_type(st.st_mode)
        if entry != "file":
            return special(rfd, rel, st, entry)
        try:
            opened = wio.open_regular(rfd, rel, max_bytes=None)
        except wio.UnsafeWorkspacePath as exc:
            if exc.code in ("symlink", "not_regular") and attempt == 0:
                st = None  # replaced since the lstat (by a link, a FIFO...): look again
                continue
            if exc.code == "unreadable":
                log.warning("workspace watcher: cannot read %s: %s", rel, exc.why)
                return Known(None, st.st_size, trusted_sig(st), False)
            return None  # gone, or swapped again
        try:
            return _read(opened, rel, store, max_file_bytes, max_hash_bytes, durable, keep)
        except OSError as exc:
            log.warning("workspace watcher: cannot read %s: %s", rel, exc.strerror)
            return Known(None, st.st_size, trusted_sig(st), False)
        finally:
            os.close(opened.fd)
    return None


def _read(
    opened: wio.Opened,
    rel: str,
    store: SnapshotStore | None,
    max_file_bytes: int,
    max_hash_bytes: int | None,
    durable: bool,
    keep: bool,
) -> Known:
    fd, fst = opened.fd, opened.st
    # stat before read: a write after the stat changes ctime, so the next rescan cannot
    # mistake stale bytes for current ones.
    signature = trusted_sig(fst)
    if max_hash_bytes is not None and fst.st_size > max_hash_bytes:
        return Known(None, fst.st_size, signature, False)
    head = read_upto(fd, max_file_bytes + 1, fst.st_size)
    if len(head) <= max_file_bytes:
        if store is not None and keep:
            put = store.put(head, durable=durable)
            return Known(put.sha256, put.size, signature, put.stored)
        return Known(hashlib.sha256(head).hexdigest(), len(head), signature, False)
    digest = hashlib.sha256(head)
    size = len(head)
    del head
    while chunk := os.read(fd, CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if max_hash_bytes is not None and size > max_hash_bytes:
            return Known(None, size, None, False)  # grew past the bound while being read
    return Known(digest.hexdigest(), size, signature, False)


def read_upto(fd: int, limit: int, size_hint: int) -> bytes:
    """Up to `limit` bytes; a file of the size fstat gave is read in one call."""
    parts = []
    total = 0
    want = min(limit, size_hint + 1) if size_hint < 16 * CHUNK else CHUNK
    while total < limit:
        asked = min(want, limit - total)
        chunk = os.read(fd, asked)
        parts.append(chunk)
        total += len(chunk)
        if len(chunk) < asked:
            break  # a short read of a regular file is its end
        want = CHUNK
    return parts[0] if len(parts) == 1 else b"".join(parts)
