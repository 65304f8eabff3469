"""Namespaces and mounts, set up by the launcher before privileges go.

- pid (with its own /proc), net (nothing but a down loopback), mount, ipc, uts and cgroup
  namespaces;
  an unprivileged server needs a user namespace for them, a root server does not;
- in the new mount namespace: empty tmpfs over /run (D-Bus, keyring and agent sockets live
  there) and /dev/shm; the workspace as a mount of its own, `nosuid,nodev` (for a root server
  idmapped, so the kernel's uid writes it as its owner); inside it, every `.git` read-only,
  the protected paths read-only, and the manifest's denied files hidden.

The workspace is untrusted input here: this code runs with the server's privilege (root, for a
root server), while another agent kernel may be changing the same tree. So the workspace is
walked and mounted on through file descriptors opened without following any symlink
(`syscalls.open_beneath`), and every mount is attached to the very file the walk opened
(`move_mount` onto an fd), never to a path resolved again later.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import syscalls as sc
from .spec import PROTECTED_NAMES
from .workspace_guard import (
    READ_ONLY_ATTRS,
    WORKSPACE_ATTRS,
    bind_onto_itself,
    hide,
    protect_git,
    scan_workspace,
)


def idmapped_tree(workspace: str, kernel_uid: int, kernel_gid: int) -> int:
    """A detached copy of the workspace mount where the owner's files belong to the kernel's
    uid: writes by the kernel land on disk as the owner's. Must run before unshare(NEWPID)."""
    st = os.stat(workspace)
    ready_r, ready_w = os.pipe()  # child → parent: "I have my user namespace"
    done_r, done_w = os.pipe()  # parent → child: "you may go"
    pid = os.fork()
    if pid == 0:  # helper: owns the user namespace that describes the mapping
        code = 1
        try:
            os.close(ready_r)
            os.close(done_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(done_r)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError("the idmap helper could not create a user namespace")
        Path(f"/proc/{pid}/uid_map").write_text(f"{st.st_uid} {kernel_uid} 1\n")
        Path(f"/proc/{pid}/setgroups").write_text("deny\n")
        Path(f"/proc/{pid}/gid_map").write_text(f"{st.st_gid} {kernel_gid} 1\n")
        userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        try:
            tree = sc.open_tree(workspace, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
            sc.mount_setattr_idmap(tree, userns)
        finally:
            os.close(userns)
        return tree
    finally:
        os.close(ready_r)
        os.write(done_w, b"x")
        os.close(done_w)
        os.waitpid(pid, 0)


def enter(*, rootless: bool) -> list[str]:
    """unshare the namespaces; return their names. Raises OSError if the machine refuses."""
    # The cgroup namespace last joined is the kernel's "/" (cgroup.py): /proc/self/cgroup shows
    # nothing of the server's hierarchy, and a cgroupfs mounted inside would hold only its own.
    flags = (
        sc.CLONE_NEWNS
        | sc.CLONE_NEWPID
        | sc.CLONE_NEWNET
        | sc.CLONE_NEWIPC
        | sc.CLONE_NEWUTS
        | sc.CLONE_NEWCGROUP
    )
    uid, gid = os.getuid(), os.getgid()
    if rootless:
        flags |= sc.CLONE_NEWUSER
    sc.unshare(flags)
    names = ["mount", "pid", "net", "ipc", "uts", "cgroup"]
    if rootless:
        # The same ids inside as outside: files keep their owner, and since the uid is not 0
        # inside; the launcher then drops every capability the namespace gave.
        Path("/proc/self/setgroups").write_text("deny\n")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1\n")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1\n")
        names.insert(0, "user")
    return names


def closed_ancestors(paths: list[str]) -> dict[str, list[str]]:
    """For paths the kernel's uid could not reach (a parent without o+x, such as /root with
    Python installed under it): the topmost such directory, and the paths below it."""
    out: dict[str, list[str]] = {}
    for path in paths:
        parts = os.path.realpath(path).split("/")
        for i in range(2, len(parts)):
            parent = "/".join(parts[:i])
            try:
                mode = os.stat(parent).st_mode
            except OSError:
                break
            if not mode & 0o001:
                out.setdefault(parent, []).append(os.path.realpath(path))
                break
    return out


def reexpose(closed: dict[str, list[str]], rw: dict[str, int]) -> list[str]:
    """Cover each closed directory with an empty tmpfs (its other contents stay hidden: a
    root server's home holds its secrets) and bind back only what the kernel needs: Python's
    paths read-only, and `rw` (path → prepared mount fd) as given."""
    clones: list[tuple[str, int]] = []
    for paths in closed.values():
        for p in sorted(set(paths)):
            if p in rw or not os.path.exists(p):
                continue
            fd = sc.open_tree(p, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE)
            sc.mount_setattr(fd, sc.MOUNT_ATTR_RDONLY, recursive=True)
            clones.append((p, fd))
    # What each mount point must be once the tmpfs hides the original (a file given to read,
    # such as `agent run --read SCRIPT`, is bound onto a file, a folder onto a folder).
    folders = {p: os.path.isdir(p) for p, _ in [*clones, *rw.items()]}
    for top in closed:
        sc.mount("tmpfs", top, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=0755,size=1m")
    for p, fd in [*clones, *rw.items()]:
        if not any(p == t or p.startswith(t + "/") for t in closed):
            continue
        if folders[p]:
            os.makedirs(p, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        sc.move_mount(fd, p)
        os.close(fd)
    return sorted(closed)


def _covers(parent: str, paths: list[str]) -> bool:
    return any(p == parent or p.startswith(parent.rstrip("/") + "/") for p in paths)


def prepare_mounts(
    *,
    workspace: str,
    kernel_dir: str,
    idmapped: int | None,
    python_paths: list[str],
    hide_patterns: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """Inside the new mount namespace (before the pid-namespace fork)."""
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    done: dict[str, Any] = {"private_root": True}
    # The workspace becomes a mount of its own (a root server's idmapped tree, else a
    # recursive bind of itself), nosuid and nodev: a setuid file or a device node an agent
    # made there gives nothing to whoever runs it through this mount. The person's own view
    # of the workspace is untouched (these mounts exist in the kernel's namespace only).
    tree = (
        idmapped
        if idmapped is not None
        else sc.open_tree(workspace, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC | sc.AT_RECURSIVE)
    )
    sc.mount_setattr(tree, WORKSPACE_ATTRS, recursive=True)
    done["workspace"] = {
        "mount": "idmapped" if idmapped is not None else "bind",
        "attributes": ["nosuid", "nodev"],
    }
    # A root server: the kernel's uid must still reach Python and its two directories.
    closed = closed_ancestors([*python_paths, workspace, kernel_dir]) if python_paths else {}
    under = {p for p in (workspace, kernel_dir) if any(p.startswith(t + "/") for t in closed)}
    keep: dict[str, int] = {}
    for p in under:
        keep[p] = (
            tree if p == workspace else sc.open_tree(p, sc.OPEN_TREE_CLONE | sc.OPEN_TREE_CLOEXEC)
        )
    if workspace not in keep:
        sc.move_mount(tree, workspace)
        os.close(tree)
    if closed:
        done["covered"] = reexpose(closed, keep)
    stay = [workspace, kernel_dir]
    hidden = []
    for path in ("/run", "/var/run", "/dev/shm", "/tmp/.X11-unix"):
        real = os.path.realpath(path)
        if os.path.isdir(real) and not _covers(real, stay) and real not in hidden:
            sc.mount("tmpfs", real, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777,size=64m")
            hidden.append(real)
    done["emptied"] = hidden
    # A pty of its own (IPython's `!cmd` runs through one) from a private devpts instance:
    # the person's terminals in the shared /dev/pts stay out of reach.
    try:
        sc.mount(
            "devpts",
            "/dev/pts",
            "devpts",
            sc.MS_NOSUID | sc.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        )
        sc.mount("/dev/pts/ptmx", "/dev/ptmx", None, sc.MS_BIND)
        done["devpts"] = True
    except OSError as exc:
        done["devpts"] = f"no private devpts: {exc.strerror}"
    ws_fd = os.open(workspace, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        scan = scan_workspace(ws_fd, list(hide_patterns))
        done["walk"] = scan.summary()
        done["git"] = protect_git(workspace, ws_fd, scan)
        protected = []
        for name in PROTECTED_NAMES:
            if bind_onto_itself(ws_fd, name, READ_ONLY_ATTRS):
                protected.append(name)
        done["read_only"] = protected
        if hide_patterns:
            done["hidden"] = hide(workspace, ws_fd, scan)
    finally:
        os.close(ws_fd)
    return done


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1)


def _relay(child: int, *, reap_all: bool, watch_parent: bool = False) -> None:
    """Forward signals to `child`, wait for it, and exit with its status (never returns).

    With watch_parent, also end the child when this process's parent (the Jupyter server)
    goes away, even by kill -9: the kernel must not outlive the server that guards it.
    """
    os.closerange(3, 1 << 16)  # the channel, the spec: nothing here needs them
    for sig in FORWARDED:
        signal.signal(sig, lambda s, _f: os.kill(child, s))
    parent = os.getppid()
    status = 0
    while True:
        try:
            if watch_parent:
                pid, st = os.waitpid(child, os.WNOHANG)
                if pid == 0:
                    if os.getppid() != parent:
                        os.kill(child, signal.SIGKILL)
                    time.sleep(0.5)
                    continue
            else:
                pid, st = os.waitpid(-1 if reap_all else child, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if pid == child:
            status = st
            break
    sys.stdout.flush()
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    os._exit(code)


def fork_into_pid_namespace() -> None:
    """Returns in the process that becomes the kernel (pid 2 of the new pid namespace).

    Outside stays a supervisor (the process jupyter_client started and signals). Pid 1 of the
    namespace is a small init: it mounts the namespace's own /proc, reaps orphans and relays
    signals; if the supervisor is killed, pid 1 dies with it and takes the namespace along.
    """
    init = os.fork()
    if init != 0:
        _relay(init, reap_all=False, watch_parent=True)
    sc.mount("proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    kernel = os.fork()
    if kernel != 0:
        _relay(kernel, reap_all=True)
