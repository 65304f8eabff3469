"""What a confined agent process may read besides the system and the workspace, and what of the
person's must be hidden from it.

Landlock gives the agent nothing outside the system dirs, Python's paths, /etc (less
credentials), the workspace and its run directory; so the person's credentials are out of
reach wherever they lie outside the workspace. Two things widen that, and both are checked
here:

- the command's install tree (the venv or prefix its executable lives in, and that of the
  interpreter of a script), read-only and executable, and the `--read` paths the person adds.
  None of them may cover one of the person's sensitive paths or their home as a whole;
- the workspace itself, when it is (or holds) the home: then the sensitive names inside it
  are hidden in the agent's mount namespace (as the manifest's `deny` matches are), not only
  kept read-only.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path

# The person's credentials, keyrings, agent sockets' homes, shell history and the places that
# hold Jupyter's own tokens, relative to their home.
SENSITIVE_IN_HOME = (
    ".qiskit",
    ".aws",
    ".azure",
    ".config/gcloud",
    ".braket",
    ".ssh",
    ".gnupg",
    ".netrc",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
    ".docker",
    ".kube",
    ".jupyter",
    ".ipython",
    ".local/share/python_keyring",
    ".local/share/keyrings",
    ".local/share/jupyter/runtime",
    ".bash_history",
    ".zsh_history",
    ".python_history",
    ".sqlite_history",
    ".psql_history",
    ".mysql_history",
    ".node_repl_history",
    ".lesshst",
    ".viminfo",
    ".local/share/fish",
    ".claude",
    ".claude.json",
)
# A run's own directory (its HOME and TMPDIR) in the temp dir: qguard-run-<CLI pid>-<random>.
RUN_DIR_PREFIX = "qguard-run-"
SYSTEM_TREES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
SHEBANG_BYTES = 256


class ReadRefused(ValueError):
    """A read path that would show the agent something of the person's."""


def sensitive_paths(home: str, extra: list[str]) -> list[str]:
    """Absolute paths (existing or not) the agent must never read."""
    paths = {os.path.join(home, rel) for rel in SENSITIVE_IN_HOME}
    paths.update(p for p in extra if p)
    return sorted(os.path.realpath(p) for p in paths)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def hide_patterns(workspace: str, sensitive: list[str]) -> list[str]:
    """The sensitive paths inside the workspace, as workspace-relative patterns that match
    each exactly (hide patterns are fnmatch patterns)."""
    out = []
    for path in sensitive:
        if _under(path, workspace) and path != workspace:
            out.append(glob.escape(os.path.relpath(path, workspace)))
    return sorted(set(out))


def check_reads(paths: list[str], sensitive: list[str], home: str) -> None:
    """ReadRefused when a read path is the home, lies above it, or covers a sensitive path."""
    home = os.path.realpath(home)
    for path in paths:
        real = os.path.realpath(path)
        if _under(home, real):
            raise ReadRefused(
                f"{path} holds the home directory {home}: an agent must not read all of it; "
                "give --read a narrower path"
            )
        covered = [s for s in sensitive if _under(s, real)]
        if covered:
            raise ReadRefused(
                f"{path} holds {covered[0]}, which an agent must never read; give --read a "
                "narrower path"
            )


def _venv_of(path: str) -> str | None:
    """The virtual environment (a directory with pyvenv.cfg) `path` lies in, if any."""
    d = os.path.dirname(path)
    for _ in range(4):
        if os.path.isfile(os.path.join(d, "pyvenv.cfg")):
            return d
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return None


def _venv_base(venv: str) -> str | None:
    """The interpreter a venv was made from (pyvenv.cfg's `home`: its bin directory)."""
    try:
        text = Path(venv, "pyvenv.cfg").read_text("utf-8", "replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home" and value.strip():
            return os.path.join(value.strip(), "python3")
    return None


def _trees_of(exe: str) -> list[str]:
    """The install tree of one executable: its venv, or the bin/lib of its prefix, or its
    own directory."""
    out: list[str] = []
    for path in dict.fromkeys((exe, os.path.realpath(exe))):
        venv = _venv_of(path)
        if venv is not None:
            out.append(venv)
            base = _venv_base(venv)
            if base is not None:
                out.extend(_prefix_dirs(os.path.realpath(base)))
            continue
        out.extend(_prefix_dirs(path))
    return out


def _prefix_dirs(path: str) -> list[str]:
    d = os.path.dirname(path)
    if os.path.basename(d) != "bin":
        return [d]
    prefix = os.path.dirname(d)
    # bin and lib, never the whole prefix: a `pip install --user` script's prefix is
    # ~/.local, whose share/ holds the person's keyring and Jupyter runtime files.
    return [
        p for p in (d, *(os.path.join(prefix, n) for n in ("lib", "lib64"))) if os.path.isdir(p)
    ]


def _interpreter(exe: str, path_env: str) -> str | None:
    """The interpreter a script's `#!` line names (through `env`), if any."""
    try:
        with open(exe, "rb") as f:
            first = f.read(SHEBANG_BYTES).split(b"\n", 1)[0]
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return shutil.which(names[0], path=path_env) if names else None
    return words[0]


def install_trees(exe: str, path_env: str) -> list[str]:
    """What the command needs to read and run besides the system: its own tree and that of a
    script's interpreter. System trees are left out (readable anyway)."""
    trees = _trees_of(exe)
    interpreter = _interpreter(os.path.realpath(exe), path_env)
    if interpreter is not None and os.path.exists(interpreter):
        trees += _trees_of(interpreter)
    out = []
    for tree in dict.fromkeys(os.path.realpath(t) for t in trees):
        if not any(_under(tree, s) for s in SYSTEM_TREES) and os.path.exists(tree):
            out.append(tree)
    return out


def sweep_run_dirs(root: str = "") -> list[str]:
    """Remove run directories whose CLI is gone (killed before it could clean up): this
    user's, or (as root) those of the uids runs get."""
    from ..sandbox import identity

    removed = []
    base = root or tempfile.gettempdir()
    for path in glob.glob(os.path.join(glob.escape(base), RUN_DIR_PREFIX + "*-*")):
        try:
            pid = int(os.path.basename(path)[len(RUN_DIR_PREFIX) :].split("-", 1)[0])
        except ValueError:
            continue
        if identity.remove_if_orphaned(path, pid):
            removed.append(path)
    return removed
