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
import stat
from collections.abc import Iterator
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


def normalize(rel: str) -> str:
    """A workspace-relative posix path ("" is the root); refuses absolute paths and `..`."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise UnsafeWorkspacePath(rel, "must be a path inside the workspace", code="outside")
    return "/".join(p for p in pure.parts if p not in ("", "."))


def _openat2(dir_fd: int, rel: str, flags: int, mode: int) -> int:
    # openat2 refuses a mode without O_CREAT/O_TMPFILE (EINVAL), unlike openat.
    # (O_TMPFILE carries O_DIRECTORY's bit: test all of its bits.)
    tmpfile = getattr(os, "O_TMPFILE", 0)
    creating = flags & os.O_CREAT or (tmpfile and flags & tmpfile == tmpfile)
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creating else 0, _RESOLVE)
    fd = _libc.syscall(
        _SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how)
    )
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
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


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


def lstat_beneath(root: str | os.PathLike[str], rel: str) -> os.stat_result | None:
    """The entry's own stat (a link is not followed), reached without following any link on
    the way; None if it or a parent is missing or a parent is a link."""
    rel = normalize(rel)
    if not rel:
        return os.stat(root)
    parent, _, name = rel.rpartition("/")
    with root_fd(root) as rfd:
        try:
            pfd = open_beneath(rfd, parent, os.O_RDONLY | os.O_DIRECTORY) if parent else os.dup(rfd)
        except OSError:
            return None
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except OSError:
            return None
        finally:
            os.close(pfd)


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


def walk(
    root: str | os.PathLike[str], *, max_entries: int | None = None
) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under the root as (relative path, its own lstat), depth first, links never
    followed (a link is yielded as a link; a directory is entered through a descriptor opened
    O_NOFOLLOW from its parent's, so one swapped for a link mid-walk is skipped, not entered).
    Stops after `max_entries` entries."""
    count = 0
    with root_fd(root) as rfd:
        stack: list[tuple[str, int]] = [("", os.dup(rfd))]
        try:
            while stack:
                prefix, dfd = stack.pop()
                try:
                    try:
                        with os.scandir(dfd) as it:
                            entries = list(it)
                    except OSError:
                        continue
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        count += 1
                        if max_entries is not None and count > max_entries:
                            return
                        rel = f"{prefix}{entry.name}"
                        yield rel, st
                        if stat.S_ISDIR(st.st_mode):
                            try:
                                sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                            except OSError:
                                continue
                            stack.append((rel + "/", sub))
                finally:
                    os.close(dfd)
        finally:
            for _, fd in stack:
                os.close(fd)
