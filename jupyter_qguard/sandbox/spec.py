"""What the provisioner asks the launcher to apply, and the names of the layers.

The provisioner (trusted, in the server) decides; the launcher (in the kernel process, before
any agent code) applies and reports. The spec travels as JSON in one environment variable that
the launcher removes before ipykernel starts.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

SPEC_VAR = "QGUARD_SANDBOX_SPEC"

# Every layer, in the order the launcher applies them.
LAYERS = ("env", "cgroup", "nonroot", "namespaces", "idmap", "rlimits", "landlock", "seccomp")
DEFAULT_MINIMUM = ("env", "nonroot", "landlock", "seccomp")

# What the confined process is: an agent kernel (launch.py, ipykernel) or an agent's own
# process (agent_launch.py, `jupyter qguard agent run -- COMMAND`).
PROFILE_KERNEL = "kernel"
PROFILE_AGENT_PROCESS = "agent-process"
# An agent process reaches the network only through the two listeners of its own network
# namespace, which need that namespace: without it there is no such process.
AGENT_PROCESS_MINIMUM = ("env", "nonroot", "namespaces", "landlock", "seccomp")

# Every `.git` (directory or `gitdir:` file) at any depth of the workspace is read-only inside
# the kernel and fixed in place (workspace_guard.protect_git): hooks, config, commondir, info/,
# modules/ all run or steer what the person's git does next.
GIT_NAME = ".git"

# Relative to the workspace: other places that make code run on someone's next start, kept
# read-only inside the kernel even though the workspace around them is writable.
PROTECTED_NAMES = (
    ".jupyter",
    ".ipython",
    ".local",
    ".config",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".zshenv",
    ".ssh",
    ".aws",
    ".qiskit",
    ".gnupg",
    ".pythonrc",
    ".pythonstartup",
)


@dataclass
class SandboxSpec:
    workspace: str
    kernel_dir: str
    minimum: list[str] = field(default_factory=lambda: list(DEFAULT_MINIMUM))
    disabled: list[str] = field(default_factory=list)
    kernel_uid: int | None = None  # set when the server runs as root
    kernel_gid: int | None = None
    rlimits: dict[str, int] = field(default_factory=dict)
    # The kernel's own cgroup, made by the provisioner (cgroup.KernelCgroup.to_spec()), or
    # {"why": ...} when it could not be had; None: no cgroup layer (agent processes).
    cgroup: dict[str, Any] | None = None
    extra_read_paths: list[str] = field(default_factory=list)
    # The workspace is (or holds) the server user's home: its top level is where shell rc
    # files, ~/.jupyter and ~/.local live, so there the kernel writes only inside existing
    # entries that are not protected, and creates nothing new at the top.
    guard_top_level: bool = False
    # The folder the kernel works in (the notebook's). The interpreter starts elsewhere (a
    # directory the agent cannot write) and enters it only once every layer is in force;
    # "" = it stays where it was started.
    cwd: str = ""
    # Started with an agent token: the directories (absolute, inside the workspace) its
    # manifest lets it write, as Landlock write rules instead of the whole workspace (None:
    # the whole workspace; a missing one is created at start), and the manifest's read `deny`
    # patterns (workspace-relative fnmatch patterns, `*` matching `/` too), whose existing
    # matches are hidden in the kernel's mount namespace at start (without a mount namespace,
    # a kernel with hide patterns does not start).
    write_paths: list[str] | None = None
    hide_patterns: list[str] = field(default_factory=list)
    # The agent-process profile only (PROFILE_AGENT_PROCESS). `kernel_dir` is then the run's
    # own directory (its HOME and TMPDIR live there). The command (argv, and the executable
    # resolved by the trusted CLI), the whole environment it gets, and the loopback TCP
    # listeners made in its network namespace, by name ("proxy", "jupyter") and port: the
    # only ports it may connect to. `foreground_tty`: the terminal descriptor whose
    # foreground process group it becomes (-1: none), as a shell makes a job it starts.
    profile: str = PROFILE_KERNEL
    command: list[str] = field(default_factory=list)
    executable: str = ""
    command_env: dict[str, str] = field(default_factory=dict)
    tcp_ports: dict[str, int] = field(default_factory=dict)
    foreground_tty: int = -1

    def to_env(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_env(cls) -> SandboxSpec:
        raw = os.environ.get(SPEC_VAR)
        if not raw:
            raise RuntimeError(f"{SPEC_VAR} is not set: the kernel was not started by qguard")
        return cls(**json.loads(raw))
