"""A cgroup of its own for each agent kernel: memory, tasks and CPU bounded across all of its
processes together (rlimits bound each process alone: 256 processes of half the RAM each).

Trusted code does all of it. The provisioner (in the server) makes the cgroup before the
kernel starts and removes it when the kernel ends (kill -9 included: its cleanup runs then
too); the server removes those a killed server left behind when it starts. The launcher,
still with the server's privilege and before any namespace, moves itself in, so every process
of the kernel is in it from the start; the cgroup namespace it enters next makes that cgroup
the kernel's "/". The kernel cannot write cgroup files (Landlock gives /sys/fs/cgroup
read-only; a root server's kernel has a uid of its own besides), so it can neither leave its
cgroup nor raise its limits.

Where the machine allows:
- cgroup v2: memory.max, memory.swap.max=0, pids.max, cpu.max, cpu.weight and
  memory.oom.group=1 (an
  OOM ends the whole kernel, not one random process of it). A root server's go under the
  hierarchy's root; a plain user's under the parent of the server's own cgroup when that is
  the user's own (a subtree delegated to it, as systemd's user manager delegates
  user@UID.service to the units it runs).
- cgroup v1, for a root server where the memory, pids and cpu controllers are bound to v1
  hierarchies (memory.limit_in_bytes and memsw, pids.max, cpu.cfs_quota_us, cpu.shares), under the
  server's own cgroup in each. v1 has no memory.oom.group: the provisioner ends the whole
  kernel at its first OOM kill (`oom_kills`).
Otherwise `locate` says why, the layer is reported absent with that reason, and the rlimits
remain (per process).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROLLERS = ("memory", "pids", "cpu")
NODE_PREFIX = "qguard-"
CPU_PERIOD = 100_000
# cgroup v2's cpu.weight scale (1..10000, 100 the default of every other cgroup); v1's
# cpu.shares is the same ratio on a scale whose default is 1024.
# The default gives the kernel's processes together the weight of one other cgroup: however
# many they are (a pool of 64, a fork bomb), they get one cgroup's share. Not less: the server
# works for the kernel as it writes (the watcher hashes and records every file), and at 25 that
# work outweighed the kernel four to one, so 10,000 small writes took 1.25x a plain kernel's
# time on 2 cores (2.3x while the test suite ran beside it), where the layer should cost nothing.
DEFAULT_CPU_WEIGHT = 100
V1_NO_LIMIT = "-1"


class Unavailable(Exception):
    """No cgroup for agent kernels here; the message says why."""


def default_limits() -> dict[str, int]:
    """Half the machine's memory, 512 tasks, every core, at the CPU weight of one cgroup
    (0 means: no limit). Not a cap of all cores but one: a compute-bound cell (Aer's OpenMP
    threads) would lose a core's worth of speed even on an idle machine, half of it on two
    cores; as one weighted group, all of the kernel's processes get one share when the server
    wants the CPU too, whatever their number."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 16 << 30
    return {
        "memory_max": total // 2,
        "pids_max": 512,
        "cpus": 0,
        "cpu_weight": DEFAULT_CPU_WEIGHT,
    }


# -- where: the machine's hierarchies ------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    point: str
    fstype: str  # cgroup (v1) or cgroup2
    root: str  # the cgroup shown at the mount's top
    options: frozenset[str]


def _unescape(text: str) -> str:
    return text.encode().decode("unicode_escape") if "\\" in text else text


def _mounts() -> list[_Mount]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or not tail or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(",")) if len(tail) > 2 else frozenset()
        out.append(_Mount(_unescape(fields[4]), tail[0], _unescape(fields[3]), options))
    return out


def _own() -> dict[str, str]:
    """This process's cgroup in each hierarchy: controller name → path ("" for v2)."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(",") if names else [""]:
            out[name] = path
    return out


def _dir_of(mount: _Mount, path: str | None) -> str:
    root = mount.root.rstrip("/")
    if path is None or not (path == mount.root or path.startswith(root + "/")):
        raise Unavailable(f"this server's cgroup ({path}) is not below {mount.point}")
    return mount.point + path[len(root) :].rstrip("/")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass
class Place:
    """Where this server's kernel cgroups go: a node of this server's (`qguard-PID-START`)
    under each base directory (v2: one; v1: one per controller)."""

    version: int
    bases: dict[str, str]  # controller → directory (v2: the same for all three)
    _node_made: bool = field(default=False, repr=False)

    def node(self, controller: str) -> str:
        return os.path.join(self.bases[controller], _node_name())

    def ensure_node(self, limits: dict[str, int]) -> None:
        """This server's node, made once, with the same limits as one kernel's for all of its
        kernels together but tasks (so many kernels cannot take the machine either)."""
        if self._node_made:
            return
        if self.version == 2:
            base = self.bases["memory"]
            _enable_controllers(base)
            node = self.node("memory")
            os.makedirs(node, exist_ok=True)
            _enable_controllers(node)
            _write_v2(node, {**limits, "pids_max": 0}, group=False)
        else:
            for c in CONTROLLERS:
                os.makedirs(self.node(c), exist_ok=True)
            _write_v1({c: self.node(c) for c in CONTROLLERS}, {**limits, "pids_max": 0})
        self._node_made = True

    def create(self, name: str, limits: dict[str, int]) -> KernelCgroup:
        """A kernel's cgroup, with its limits written (OSError: none was made)."""
        self.ensure_node(limits)
        dirs = {c: os.path.join(self.node(c), name) for c in CONTROLLERS}
        cg = KernelCgroup(version=self.version, dirs=dirs, limits=dict(limits))
        made = []
        try:
            for d in dict.fromkeys(dirs.values()):
                os.mkdir(d)
                made.append(d)
            if self.version == 2:
                _write_v2(dirs["memory"], limits, group=True)
            else:
                _write_v1(dirs, limits)
        except OSError:
            for d in made:
                _rmdir(d)
            raise
        return cg

    def forget_node(self) -> None:
        """At server stop: this server's node, when no kernel cgroup is left in it."""
        for d in dict.fromkeys(self.node(c) for c in CONTROLLERS):
            _rmdir(d)
        self._node_made = False


def _enable_controllers(directory: str) -> None:
    have = set(_read(os.path.join(directory, "cgroup.subtree_control")).split())
    missing = [c for c in CONTROLLERS if c not in have]
    if not missing:
        return
    try:
        _write(
            os.path.join(directory, "cgroup.subtree_control"), " ".join("+" + c for c in missing)
        )
    except OSError as exc:
        raise Unavailable(
            f"cannot give the {', '.join(missing)} controllers to cgroups under {directory}: "
            f"{exc.strerror}" + (" (it holds processes)" if exc.errno == 16 else "")
        ) from None


def _write_v2(directory: str, limits: dict[str, int], *, group: bool) -> None:
    memory, pids, cpus = (
        limits.get("memory_max", 0),
        limits.get("pids_max", 0),
        limits.get("cpus", 0),
    )
    _write(os.path.join(directory, "memory.max"), str(memory) if memory else "max")
    swap = os.path.join(directory, "memory.swap.max")
    if os.path.exists(swap):
        # RAM only: a kernel swapping the machine to a crawl is what the limit is there to stop.
        _write(swap, "0")
    _write(os.path.join(directory, "pids.max"), str(pids) if pids else "max")
    quota = str(int(cpus * CPU_PERIOD)) if cpus else "max"
    _write(os.path.join(directory, "cpu.max"), f"{quota} {CPU_PERIOD}")
    weight = int(limits.get("cpu_weight", 0) or 100)
    _write(os.path.join(directory, "cpu.weight"), str(min(10000, max(1, weight))))
    if group:
        _write(os.path.join(directory, "memory.oom.group"), "1")


def _write_v1(dirs: dict[str, str], limits: dict[str, int]) -> None:
    memory, pids, cpus = (
        limits.get("memory_max", 0),
        limits.get("pids_max", 0),
        limits.get("cpus", 0),
    )
    mem = str(memory) if memory else V1_NO_LIMIT
    _write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), mem)
    memsw = os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):
        _write(memsw, mem)  # memory and swap together: RAM only, as on v2
    _write(os.path.join(dirs["pids"], "pids.max"), str(pids) if pids else "max")
    _write(os.path.join(dirs["cpu"], "cpu.cfs_period_us"), str(CPU_PERIOD))
    quota = str(int(cpus * CPU_PERIOD)) if cpus else V1_NO_LIMIT
    _write(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"), quota)
    weight = int(limits.get("cpu_weight", 0) or 100)
    _write(os.path.join(dirs["cpu"], "cpu.shares"), str(max(2, weight * 1024 // 100)))


_START = None


def _start_time(pid: int | str) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _node_name() -> str:
    global _START
    if _START is None:
        _START = _start_time("self") or "0"
    return f"{NODE_PREFIX}{os.getpid()}-{_START}"


def locate() -> Place:
    """Where this server's kernel cgroups can go; Unavailable (with why) when nowhere."""
    mounts, own = _mounts(), _own()
    reasons = []
    v2 = next((m for m in mounts if m.fstype == "cgroup2"), None)
    if v2 is None:
        reasons.append("no cgroup v2 file system is mounted")
    else:
        try:
            return _v2_place(v2, mounts, own)
        except Unavailable as exc:
            reasons.append(str(exc))
    try:
        return _v1_place(mounts, own)
    except Unavailable as exc:
        reasons.append(str(exc))
    raise Unavailable("; ".join(reasons))


def _v2_place(v2: _Mount, mounts: list[_Mount], own: dict[str, str]) -> Place:
    available = set(_read(os.path.join(v2.point, "cgroup.controllers")).split())
    missing = [c for c in CONTROLLERS if c not in available]
    if missing:
        on_v1 = [c for c in missing if any(m.fstype == "cgroup" and c in m.options for m in mounts)]
        raise Unavailable(
            f"cgroup v2 at {v2.point} has no {', '.join(missing)} controller"
            + (" (bound to cgroup v1)" if on_v1 else "")
        )
    if os.geteuid() == 0:
        return Place(version=2, bases=dict.fromkeys(CONTROLLERS, v2.point))
    ours = _dir_of(v2, own.get(""))
    base = os.path.dirname(ours)
    uid = os.geteuid()
    try:
        owner = os.stat(base).st_uid
    except OSError as exc:
        raise Unavailable(f"cgroup v2: {base}: {exc.strerror}") from None
    if owner != uid or not os.access(os.path.join(base, "cgroup.procs"), os.W_OK):
        raise Unavailable(
            f"cgroup v2: no subtree delegated to uid {uid} (the parent of this server's cgroup, "
            f"{base}, is not its own: run the server in a unit of systemd's user manager)"
        )
    return Place(version=2, bases=dict.fromkeys(CONTROLLERS, base))


def _v1_place(mounts: list[_Mount], own: dict[str, str]) -> Place:
    bases = {}
    for c in CONTROLLERS:
        m = next((m for m in mounts if m.fstype == "cgroup" and c in m.options), None)
        if m is None:
            raise Unavailable(f"no cgroup v1 hierarchy has the {c} controller")
        bases[c] = _dir_of(m, own.get(c))
    closed = [d for d in bases.values() if not os.access(d, os.W_OK)]
    if closed:
        raise Unavailable(f"cgroup v1 ({', '.join(closed)}) is not writable by uid {os.geteuid()}")
    return Place(version=1, bases=bases)


# -- one kernel's ---------------------------------------------------------------------------


@dataclass
class KernelCgroup:
    version: int
    dirs: dict[str, str]  # controller → the kernel's directory (v2: one for all three)
    limits: dict[str, int]

    @property
    def path(self) -> str:
        return self.dirs["memory"]

    def to_spec(self) -> dict[str, Any]:
        return {"version": self.version, "dirs": dict(self.dirs), "limits": dict(self.limits)}

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> KernelCgroup:
        return cls(version=int(data["version"]), dirs=dict(data["dirs"]), limits=data["limits"])

    # In the server, right after the launcher's process was started (provisioner.py).
    def adopt(self, pid: int) -> None:
        """Move the launcher in from outside, while its interpreter is still starting. A
        process's move into a cgroup waits for an RCU grace period (the cgroup core's
        threadgroup lock: 13-35 ms on a small VM, a fifth of the sandbox's cost at kernel
        start); made here, the wait overlaps the interpreter's start instead of coming after
        it. The launcher checks, and moves itself where this came late or failed."""
        for d in dict.fromkeys(self.dirs.values()):
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    # In the launcher, with the server's privilege, before namespaces and the uid drop.
    def join(self) -> dict[str, Any]:
        """Move this process in where the server has not already (its children follow) and
        say what is in force, as read back from the cgroup's own files."""
        for d in dict.fromkeys(d for _, d, _ in self._outside()):
            _write(os.path.join(d, "cgroup.procs"), str(os.getpid()))
        for c, d, current in self._outside():
            raise OSError(f"the launcher is not in {d} ({c}: {current})")
        return {"active": True, **self.in_force()}

    def _outside(self) -> list[tuple[str, str, str | None]]:
        """(controller, the kernel's directory, this process's cgroup there) wherever this
        process is not in the kernel's cgroup."""
        own = _own()
        out = []
        for c, d in self.dirs.items():
            current = own.get("" if self.version == 2 else c)
            if current is None or not d.endswith(current):
                out.append((c, d, current))
        return out

    def in_force(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "path": self.path,
            "dirs": sorted(set(self.dirs.values())),
        }
        if self.version == 2:
            d = self.path
            out["memory_max"] = _read(os.path.join(d, "memory.max"))
            out["pids_max"] = _read(os.path.join(d, "pids.max"))
            out["cpu_max"] = _read(os.path.join(d, "cpu.max"))
            out["cpu_weight"] = int(_read(os.path.join(d, "cpu.weight")))
            out["oom_group"] = _read(os.path.join(d, "memory.oom.group")) == "1"
        else:
            out["memory_max"] = _read(os.path.join(self.dirs["memory"], "memory.limit_in_bytes"))
            out["pids_max"] = _read(os.path.join(self.dirs["pids"], "pids.max"))
            quota = _read(os.path.join(self.dirs["cpu"], "cpu.cfs_quota_us"))
            period = _read(os.path.join(self.dirs["cpu"], "cpu.cfs_period_us"))
            shares = int(_read(os.path.join(self.dirs["cpu"], "cpu.shares")))
            out["cpu_weight"] = shares * 100 // 1024
            out["cpu_max"] = f"{'max' if quota == V1_NO_LIMIT else quota} {period}"
            # No memory.oom.group in v1: the provisioner ends the whole kernel instead.
            out["oom_group"] = "by the server, at the first OOM kill (cgroup v1)"
        return out

    # In the server.
    def oom_kills(self) -> int:
        """Processes of the kernel the OOM killer ended (memory.events or, on v1,
        memory.oom_control); 0 when the cgroup is gone."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = _read(os.path.join(self.path, name))
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def processes(self) -> set[int]:
        pids: set[int] = set()
        for d in dict.fromkeys(self.dirs.values()):
            try:
                pids.update(int(p) for p in _read(os.path.join(d, "cgroup.procs")).split())
            except OSError:
                pass
        pids.discard(0)  # a process outside this pid namespace
        return pids

    def kill(self) -> bool:
        """SIGKILL every process in it (cgroup.kill where there is one). True if any."""
        procs = self.processes()
        kill_file = os.path.join(self.path, "cgroup.kill")
        if self.version == 2 and os.path.exists(kill_file):
            try:
                _write(kill_file, "1")
                return bool(procs)
            except OSError:
                pass
        for pid in procs:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return bool(procs)

    def try_remove(self) -> bool:
        """Kill what is left and remove the directories; True when they are gone."""
        self.kill()
        gone = True
        for d in dict.fromkeys(self.dirs.values()):
            gone = _rmdir(d) and gone
        return gone

    async def remove(self, timeout: float = 5.0) -> bool:
        """try_remove until it works (dying processes leave their cgroup a moment later),
        without blocking the event loop."""
        deadline = time.monotonic() + timeout
        while not self.try_remove():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


# -- leftovers and the probe -----------------------------------------------------------------


def sweep_leftovers() -> list[str]:
    """At server start: the nodes (and kernel cgroups) of servers that no longer run (killed,
    crashed), their processes killed. Returns the directories removed."""
    try:
        place = locate()
    except (Unavailable, OSError):
        return []
    removed = []
    for c in dict.fromkeys(CONTROLLERS if place.version == 1 else ("memory",)):
        base = place.bases[c]
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            if not name.startswith(NODE_PREFIX) or not _server_gone(name):
                continue
            node = os.path.join(base, name)
            for _ in range(40):
                leaves = (
                    [e.path for e in os.scandir(node) if e.is_dir()] if os.path.isdir(node) else []
                )
                for leaf in leaves:
                    _kill_all(leaf)
                    if _rmdir(leaf):
                        removed.append(leaf)
                if _rmdir(node):
                    removed.append(node)
                    break
                time.sleep(0.05)
    return removed


def _server_gone(name: str) -> bool:
    try:
        pid, start = name[len(NODE_PREFIX) :].split("-", 1)
    except ValueError:
        return False
    return pid != str(os.getpid()) and _start_time(pid) != start


def _kill_all(directory: str) -> None:
    try:
        pids = [int(p) for p in _read(os.path.join(directory, "cgroup.procs")).split()]
    except OSError:
        return
    for pid in pids:
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def probe() -> dict[str, Any]:
    """For `doctor`: make a cgroup as the provisioner would, read it back, remove it."""
    try:
        place = locate()
        cg = place.create(
            f"probe-{os.getpid()}", {"memory_max": 64 << 20, "pids_max": 64, "cpus": 1}
        )
    except Unavailable as exc:
        return {"available": False, "why": f"{exc}; rlimits remain (each process alone)"}
    except OSError as exc:
        return {"available": False, "why": f"cannot make a cgroup: {exc}; rlimits remain"}
    try:
        info = cg.in_force()
    finally:
        cg.try_remove()
        place.forget_node()
    controls = (
        "memory.max, pids.max, cpu.max, memory.oom.group"
        if cg.version == 2
        else (
            "memory.limit_in_bytes, pids.max, cpu.cfs_quota_us; whole-kernel OOM kill by the server"
        )
    )
    return {
        "available": True,
        "version": info["version"],
        "how": f"cgroup v{cg.version}, one per kernel (memory: under {place.bases['memory']}): "
        f"{controls}",
    }


# -- the server's --------------------------------------------------------------------------

_place: Place | Unavailable | None = None


def server_place() -> Place:
    """This server's Place, located once (Unavailable, with why, every time when none)."""
    global _place
    if _place is None:
        try:
            _place = locate()
            # The server stops its extensions before its kernels: its node goes at exit,
            # once every kernel's cgroup is gone (a killed server's, at the next one's start).
            atexit.register(forget_server_node)
        except Unavailable as exc:
            _place = exc
        except OSError as exc:
            _place = Unavailable(f"cannot read this machine's cgroups: {exc}")
    if isinstance(_place, Unavailable):
        raise _place
    return _place


def forget_server_node() -> None:
    """At server exit: this server's node, if it made one and no kernel cgroup is left."""
    if isinstance(_place, Place) and _place._node_made:
        _place.forget_node()
