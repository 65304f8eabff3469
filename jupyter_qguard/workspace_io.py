"""Reading and writing the workspace, which is untrusted input.

An agent kernel may have left symlinks (to `~/.aws`, the runtime dir, the policy pack), FIFOs
that block whoever opens them for reading, sockets, sparse files of terabytes, or it may swap a
folder for a link between a check and a use. Every trusted reader or writer of a workspace path
(bound-file hashing, the watcher and its snapshots, diffs, the secret scan, reverts, bundles)
goes through this module, which:

- opens each path relative to a descriptor of the workspace root, without following a link on
  any component: `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` where
  the kernel has it (Linux 5.6+), else `O_NOFOLLOW` on every component, one `openat` at a time
  (a component swapped for a link between two steps is then refused, not followed);
- takes regular files only: opened `O_NONBLOCK` (a FIFO opens at once and is refused, it never
  waits for a writer), `fstat` before any read; FIFOs, sockets and devices are refused with a
  reason a person can read;
- reads with a size cap, checked on the fstat and again while streaming (a file growing under
  the reader cannot blow past it).

The errors are `UnsafeWorkspacePath` (a ValueError) whose message is one readable sentence.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2): not wrapped by Python's os module. The syscall number is the same on every
# architecture that has the unified table (x86_64, aarch64, riscv64, ...).
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None  # learnt on first use


class UnsafeWorkspacePath(ValueError):
    """A workspace path trusted code will not open: outside the root, through a link, not a
    regular file, or over the size cap. The message says which, in one sentence."""

    def __init__(self, rel: str, why: str, *, code: str) -> None:
        super().__init__(f"{rel}: {why}")
        self.rel = rel
        self.why = why
        self.code = code  # symlink | outside | not_regular | too_large | missing | unreadable


@dataclass(frozen=True)
class Opened:
    fd: int
    st: os.stat_result


# A path already in normal form: no component empty, "." or "..". (The watcher opens every
# file of the workspace: this skips pathlib on nearly all of them.)
_PLAIN = re.compile(r"(?!\.\.?(?:/|$))[^/]+(?:/(?!\.\.?(?:/|$))[^/]+)*")


def normalize(rel: str) -> str:
    """A workspace-relative posix path ("" is the root); refuses absolute paths and `..`. A
    backslash is an ordinary character of a name here, as it is on Linux (turning it into a
    separator would let `d\\x` stand for, and be read as, the other file `d/x`)."""
    if "\0" in rel:
        # C would read the path only up to it: "a.txt\0/x" would open a.txt.
        raise UnsafeWorkspacePath(rel, "is not a path (it holds a NUL character)", code="outside")
    if _PLAIN.fullmatch(rel):
        return rel
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise UnsafeWorkspacePath(rel, "must be a path inside the workspace", code="outside")
    return "/".join(p for p in pure.parts if p not in ("", "."))


_TMPFILE = getattr(os, "O_TMPFILE", 0)
_HOW_SIZE = ctypes.sizeof(_OpenHow)
_hows: dict[tuple[int, int], _OpenHow] = {}  # built once per (flags, mode): read-only after


def _openat2(dir_fd: int, rel: str, flags: int, mode: int) -> int:
    # openat2 refuses a mode without O_CREAT/O_TMPFILE (EINVAL), unlike openat.
    # (O_TMPFILE carries O_DIRECTORY's bit: test all of its bits.)
    creating = flags & os.O_CREAT or (_TMPFILE and flags & _TMPFILE == _TMPFILE)
    key = (flags, mode if creating else 0)
    how = _hows.get(key)
    if how is None:
        how = _hows.setdefault(key, _OpenHow(flags | os.O_CLOEXEC, key[1], _RESOLVE))
    fd = _libc.syscall(_SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), _HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return int(fd)


def _openat_nofollow(dir_fd: int, rel: str, flags: int, mode: int) -> int:
    """The fallback: one component at a time, never following a link."""
    parts = rel.split("/") if rel else []
    cur = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = _open_dir_nofollow(part, cur)
            os.close(cur)
            cur = nxt
        if not parts:
            return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=cur)
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
    finally:
        os.close(cur)


def _open_dir_nofollow(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:
        # O_NOFOLLOW|O_DIRECTORY on a link says ENOTDIR; say ELOOP as openat2 does.
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
        raise


def open_beneath(root_fd: int, rel: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """A descriptor for `rel` under the directory `root_fd`, no link followed on the way;
    OSError as the kernel gave it (ELOOP for a link, EXDEV for a way out)."""
    global _have_openat2
    rel = normalize(rel)
    flags |= os.O_NOCTTY
    if _have_openat2 is not False:
        try:
            fd = _openat2(root_fd, rel or ".", flags, mode)
            _have_openat2 = True
            return fd
        except OSError as exc:
            # ENOSYS: an older kernel; EPERM: a seccomp filter that does not know openat2.
            if exc.errno not in (errno.ENOSYS, errno.EPERM) or _have_openat2:
                raise
            _have_openat2 = False
    return _openat_nofollow(root_fd, rel, flags, mode)


@contextmanager
def root_fd(root: str | os.PathLike[str]) -> Iterator[int]:
    """A descriptor of the workspace root itself (which the person chose: it may be a link)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _refusal(rel: str, exc: OSError) -> UnsafeWorkspacePath:
    if exc.errno == errno.ELOOP:
        return UnsafeWorkspacePath(
            rel,
            "is a symbolic link, or goes through one; trusted code does not follow links "
            "in the workspace",
            code="symlink",
        )
    if exc.errno == errno.EXDEV:
        return UnsafeWorkspacePath(rel, "leads outside the workspace", code="outside")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return UnsafeWorkspacePath(rel, "does not exist", code="missing")
    if exc.errno == errno.ENXIO:  # open(2) of a unix socket
        return UnsafeWorkspacePath(rel, "is a socket, not a regular file", code="not_regular")
    return UnsafeWorkspacePath(
        rel,
        f"cannot be read ({exc.strerror or errno.errorcode.get(exc.errno or 0)})",
        code="unreadable",
    )


def _kind(mode: int) -> str:
    return ENTRY_WORDS.get(entry_type(mode), "not a regular file")


def mib(n: int) -> str:
    """A size for a sentence; never rounded onto a limit it exceeds ("is 128 MiB, over the
    limit of 128 MiB" for a byte too many): whole MiB, else one decimal, else bytes."""
    if n < 1 << 20:
        return f"{n} bytes"
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    text = f"{n / (1 << 20):.1f}"
    return f"{n} bytes" if text.endswith(".0") else f"{text} MiB"


def open_regular(root_dir_fd: int, rel: str, *, max_bytes: int | None) -> Opened:
    """Open a regular file for reading (O_NONBLOCK, fstat first); refuse anything else, and a
    file over `max_bytes`. The caller closes `fd`."""
    rel = normalize(rel)
    try:
        fd = open_beneath(root_dir_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise _refusal(rel, exc) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeWorkspacePath(
                rel, f"is {_kind(st.st_mode)}; only regular files are read", code="not_regular"
            )
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnsafeWorkspacePath(
                rel, f"is {mib(st.st_size)}, over the limit of {mib(max_bytes)}", code="too_large"
            )
        # Reads of a regular file never block; clear the flag so they also never return EAGAIN.
        os.set_blocking(fd, True)
        return Opened(fd, st)
    except BaseException:
        os.close(fd)
        raise


def _stream(fd: int, rel: str, max_bytes: int | None) -> Iterator[bytes]:
    total = 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise UnsafeWorkspacePath(
                rel, f"grew over the limit of {mib(max_bytes)} while being read", code="too_large"
            )
        yield chunk


def read_opened(opened: Opened, rel: str, *, max_bytes: int | None) -> bytes:
    """Every byte of a file `open_regular` gave (the caller still closes it); too_large if it
    grew over `max_bytes` while being read. The first read is sized to the file."""
    limit = None if max_bytes is None else max_bytes + 1
    want = opened.st.st_size + 1 if limit is None else min(opened.st.st_size + 1, limit)
    parts = []
    total = 0
    while True:
        chunk = os.read(opened.fd, max(want, 1))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise UnsafeWorkspacePath(
                rel, f"grew over the limit of {mib(max_bytes)} while being read", code="too_large"
            )
        want = CHUNK if limit is None else min(CHUNK, limit - total)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_regular(root: str | os.PathLike[str], rel: str, *, max_bytes: int) -> bytes:
    """The bytes of a regular file of the workspace, at most `max_bytes` of them."""
    with root_fd(root) as rfd:
        opened = open_regular(rfd, rel, max_bytes=max_bytes)
        try:
            return b"".join(_stream(opened.fd, rel, max_bytes))
        finally:
            os.close(opened.fd)


def sha256_regular(root: str | os.PathLike[str], rel: str, *, max_bytes: int | None) -> str:
    """SHA-256 of a regular file of the workspace, streamed (hashlib releases the GIL)."""
    with root_fd(root) as rfd:
        opened = open_regular(rfd, rel, max_bytes=max_bytes)
        try:
            digest = hashlib.sha256()
            for chunk in _stream(opened.fd, rel, max_bytes):
                digest.update(chunk)
            return digest.hexdigest()
        finally:
            os.close(opened.fd)


# What an entry_type other than "file" is called in a sentence.
ENTRY_WORDS = {
    "directory": "a directory",
    "symlink": "a symbolic link",
    "fifo": "a FIFO",
    "socket": "a socket",
    "char_device": "a character device",
    "block_device": "a block device",
}


def entry_type(mode: int) -> str:
    """A name for what an lstat found: file, directory, symlink, fifo, socket, char_device,
    block_device (or other)."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "char_device"),
        (stat.S_ISBLK, "block_device"),
    ):
        if test(mode):
            return name
    return "other"


def _open_parent_of(root_dir_fd: int, rel: str) -> tuple[int, str]:
    """(descriptor of the entry's directory, the entry's name); OSError as open_beneath's."""
    parent, _, name = rel.rpartition("/")
    pfd = open_beneath(root_dir_fd, parent, os.O_RDONLY | os.O_DIRECTORY) if parent else None
    return (os.dup(root_dir_fd) if pfd is None else pfd), name


def lstat_at(root_dir_fd: int, rel: str) -> os.stat_result | None:
    """The entry's own stat (a link is not followed) under the directory `root_dir_fd`, reached
    without following any link on the way; None if it or a parent is missing, or a parent is
    a link (or not a directory)."""
    rel = normalize(rel)
    if not rel:
        return os.fstat(root_dir_fd)
    try:
        pfd, name = _open_parent_of(root_dir_fd, rel)
    except OSError:
        return None
    try:
        return os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(pfd)


def readlink_at(root_dir_fd: int, rel: str) -> str | None:
    """The text of the link `rel` (never followed; no link followed on the way either), or
    None if it is not a link (any more) or cannot be reached."""
    rel = normalize(rel)
    if not rel:
        return None
    try:
        pfd, name = _open_parent_of(root_dir_fd, rel)
    except OSError:
        return None
    try:
        return os.readlink(name, dir_fd=pfd)
    except OSError:
        return None
    finally:
        os.close(pfd)


def lstat_beneath(root: str | os.PathLike[str], rel: str) -> os.stat_result | None:
    """The entry's own stat (a link is not followed), reached without following any link on
    the way; None if it or a parent is missing or a parent is a link."""
    with root_fd(root) as rfd:
        return lstat_at(rfd, rel)


def write_beneath(
    root: str | os.PathLike[str], rel: str, data: bytes | None, *, mode: int | None = None
) -> None:
    """Replace (or, with data None, remove) the workspace file `rel` atomically, with every
    directory on the way opened without following links and the final rename made relative
    to that directory's descriptor: a parent swapped for a link is refused, never written
    through. Missing parents are created (as real directories, never through links)."""
    rel = normalize(rel)
    if not rel:
        raise UnsafeWorkspacePath(rel, "is the workspace itself", code="not_regular")
    parent, _, name = rel.rpartition("/")
    with root_fd(root) as rfd:
        pfd = _open_parent(rfd, parent, rel, create=data is not None)
        try:
            if data is None:
                try:
                    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                except FileNotFoundError:
                    return
                if stat.S_ISDIR(st.st_mode):
                    raise UnsafeWorkspacePath(rel, "is a directory", code="not_regular")
                os.unlink(name, dir_fd=pfd)  # unlinks a link itself, never its target
                return
            try:
                old = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None and stat.S_ISLNK(old.st_mode):
                raise UnsafeWorkspacePath(
                    rel, "is a symbolic link; trusted code does not replace links", code="symlink"
                )
            if old is not None and not stat.S_ISREG(old.st_mode):
                raise UnsafeWorkspacePath(
                    rel,
                    f"is {_kind(old.st_mode)}; only regular files are replaced",
                    code="not_regular",
                )
            tmp = f".qguard-{os.urandom(6).hex()}.tmp"
            want = mode if mode is not None else (old.st_mode & 0o777 if old else 0o644)
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                want,
                dir_fd=pfd,
            )
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fchmod(fd, want)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, name, src_dir_fd=pfd, dst_dir_fd=pfd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=pfd)
                except FileNotFoundError:
                    pass
                raise
        finally:
            os.close(pfd)


def _open_parent(rfd: int, parent: str, rel: str, *, create: bool) -> int:
    if not parent:
        return os.dup(rfd)
    cur = os.dup(rfd)
    try:
        for part in parent.split("/"):
            try:
                nxt = _open_dir_nofollow(part, cur)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o755, dir_fd=cur)
                except FileExistsError:
                    pass
                nxt = _open_dir_nofollow(part, cur)
            os.close(cur)
            cur = nxt
        return cur
    except OSError as exc:
        os.close(cur)
        raise _refusal(rel, exc) from None


class Walk:
    """Every entry under the root (or under `under`) as (relative path, its own lstat), links
    never followed: a link is yielded as a link, never entered. Each directory is opened from
    the root descriptor with no link followed on any component (a folder swapped for a link
    mid-walk is refused, not entered), listed lazily and closed before the next one: the walk
    holds two descriptors whatever the tree's shape.

    Bounded: at most `max_entries` entries are listed in all (a directory of a million entries
    costs `max_entries` reads, not a million), and directories more than `max_depth` levels
    below the root are not entered. When a bound stopped it, `truncated` holds a sentence
    saying which. `sort`: each directory's entries in name order (the whole listing of a
    directory is then read before its first entry is yielded, still within `max_entries`).
    `enter(rel, st)`: whether to descend into a directory (default: always). `on_error(rel,
    exc)`: a directory that could not be opened or listed (default: skipped silently).
    Order: a directory's entries, then its subdirectories' trees in turn."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        under: str = "",
        max_entries: int | None = None,
        max_depth: int | None = None,
        sort: bool = False,
        enter: Callable[[str, os.stat_result], bool] | None = None,
        on_error: Callable[[str, OSError], None] | None = None,
    ) -> None:
        self.root = root
        self.under = normalize(under)
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.sort = sort
        self.enter = enter
        self.on_error = on_error
        self.listed = 0
        self.truncated: str | None = None

    def __iter__(self) -> Iterator[tuple[str, os.stat_result]]:
        self.listed = 0
        self.truncated = None
        with root_fd(self.root) as rfd:
            start_depth = len(self.under.split("/")) if self.under else 0
            stack: list[tuple[str, int]] = [(self.under, start_depth)]
            while stack:
                rel_dir, depth = stack.pop()
                subdirs: list[str] = []
                for rel, st in self._list(rfd, rel_dir):
                    yield rel, st
                    if not stat.S_ISDIR(st.st_mode):
                        continue
                    if self.max_depth is not None and depth + 1 > self.max_depth:
                        self.truncated = self.truncated or (
                            f"did not enter folders more than {self.max_depth} levels deep"
                        )
                        continue
                    if self.enter is None or self.enter(rel, st):
                        subdirs.append(rel)
                if self._over():
                    if (stack or subdirs) and self.truncated is None:
                        self._stop()  # directories left that were not listed
                    return
                stack.extend((sub, depth + 1) for sub in reversed(subdirs))

    def _over(self) -> bool:
        return self.max_entries is not None and self.listed >= self.max_entries

    def _list(self, rfd: int, rel_dir: str) -> Iterator[tuple[str, os.stat_result]]:
        try:
            dfd = open_beneath(rfd, rel_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            if self.on_error is not None:
                self.on_error(rel_dir, exc)
            return
        prefix = f"{rel_dir}/" if rel_dir else ""
        try:
            with os.scandir(dfd) as it:  # scandir works on its own duplicate of dfd
                entries = it if not self.sort else self._sorted(it)
                for entry in entries:
                    if not self.sort:
                        if self._over():
                            self._stop()
                            return
                        self.listed += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    yield prefix + entry.name, st
        except OSError as exc:
            if self.on_error is not None:
                self.on_error(rel_dir, exc)
        finally:
            os.close(dfd)

    def _sorted(self, it: Iterator[os.DirEntry[str]]) -> list[os.DirEntry[str]]:
        entries = []
        for entry in it:
            if self._over():
                self._stop()
                break
            self.listed += 1
            entries.append(entry)
        entries.sort(key=lambda e: e.name)
        return entries

    def _stop(self) -> None:
        self.truncated = f"stopped listing after {self.max_entries:,} entries"


def walk(
    root: str | os.PathLike[str],
    *,
    under: str = "",
    max_entries: int | None = None,
    max_depth: int | None = None,
    sort: bool = False,
    enter: Callable[[str, os.stat_result], bool] | None = None,
    on_error: Callable[[str, OSError], None] | None = None,
) -> Walk:
    """See `Walk`: iterate it for (relative path, lstat); read `.truncated` afterwards."""
    return Walk(
        root,
        under=under,
        max_entries=max_entries,
        max_depth=max_depth,
        sort=sort,
        enter=enter,
        on_error=on_error,
    )
