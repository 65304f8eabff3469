"""Workspace files that the person's own tools run later, kept here as data.

An agent kernel is confined; the person's git, pytest, make, editor, shell and own (unconfined)
kernels are not, and they run or import what they find in the workspace. A change to any of
these files is always in the change feed (no ignore pattern hides it, not even one a person
configured), and one made by an agent kernel raises an alert event that names the file and why
it matters (`alert_text`). `TOOL_FILES` is the list the README's table is written from.

Patterns (fnmatch, matched against workspace-relative posix paths):
- without a "/": the name of any path component, at any depth, so a matching directory covers
  everything under it (".git" is a `.git` directory or a `.git` file anywhere, and all inside);
- with a "/": any tail of the path starting at a component (".github/workflows/*" at any depth);
- starting with "/": anchored at the workspace root, covering everything under a match (these
  matter when the workspace is the person's home directory).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .. import workspace_io as wio


@dataclass(frozen=True)
class ToolFile:
    """One kind of file a person's tool runs: `patterns` (see the module docstring), the
    `tool` that runs it, and `why` it matters, as the end of an alert's sentence."""

    patterns: tuple[str, ...]
    tool: str
    why: str


TOOL_FILES: tuple[ToolFile, ...] = (
    ToolFile(
        (".git",),
        "git",
        "git's own state (hooks, config such as core.fsmonitor, gitdir and commondir pointers), "
        "which git acts on at the person's next git command",
    ),
    ToolFile(("__pycache__", "*.pyc"), "Python", "bytecode a person's own kernel would import"),
    ToolFile(
        ("sitecustomize.py", "usercustomize.py"),
        "Python",
        "a module every Python started with this folder on its path imports at start-up",
    ),
    ToolFile(
        ("*.pth",),
        "Python",
        "a path file whose import lines run at the start of every Python that reads this folder "
        "as a site directory",
    ),
    ToolFile(
        (".venv", "venv"),
        "Python",
        "a virtual environment whose interpreter, packages and scripts the person runs",
    ),
    ToolFile(("conftest.py",), "pytest", "code pytest imports when the person runs the tests"),
    ToolFile(
        ("pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml"),
        "pytest, tox, pip",
        "tool configuration: pytest plugins and options, tox commands, the build backend pip runs",
    ),
    ToolFile(("setup.py",), "pip", "code pip runs to build or install this folder"),
    ToolFile(("noxfile.py",), "nox", "code nox runs"),
    ToolFile(
        ("Makefile", "makefile", "GNUmakefile", "*.mk", "justfile", "Justfile"),
        "make, just",
        "recipes make or just runs in the person's shell",
    ),
    ToolFile(
        (".pre-commit-config.yaml", ".pre-commit-hooks.yaml"),
        "pre-commit",
        "hooks pre-commit installs and runs at the person's next commit",
    ),
    ToolFile(
        (".gitattributes",),
        "git",
        "selects the filter and diff drivers git runs on checkout, add and diff",
    ),
    ToolFile((".gitmodules",), "git", "submodule URLs and paths git fetches and checks out"),
    ToolFile(
        (".husky",),
        "git (husky)",
        "git hooks run at the person's next commit or push",
    ),
    ToolFile(
        (".github/workflows/*", ".github/actions/*", ".gitlab-ci.yml"),
        "CI",
        "a CI pipeline that runs with the repository's secrets after the next push",
    ),
    ToolFile(
        (".vscode", ".idea", ".devcontainer"),
        "editors",
        "editor settings, tasks and launch configurations the person's editor runs",
    ),
    ToolFile((".envrc",), "direnv", "shell code direnv runs when the person enters the folder"),
    ToolFile(
        (".env",),
        "dotenv, editors",
        "environment variables the person's editor, docker compose or python-dotenv load",
    ),
    ToolFile(
        (".ipython",),
        "IPython",
        "IPython startup files and configuration the person's own kernels run",
    ),
    ToolFile(
        (".jupyter",),
        "Jupyter",
        "Jupyter configuration the person's own server and kernels run",
    ),
    ToolFile((".pdbrc",), "pdb", "commands pdb runs when the person debugs in this folder"),
    ToolFile(
        (
            "/.bashrc",
            "/.bash_profile",
            "/.bash_login",
            "/.profile",
            "/.zshrc",
            "/.zshenv",
            "/.zprofile",
            "/.gitconfig",
            "/.ssh",
            "/.config",
            "/.local",
        ),
        "shell, ssh, user site",
        "a start-up file, configuration or user-site package the person's shell, ssh or Python "
        "runs (the workspace is the home directory)",
    ),
)


def _compile(kind: str) -> re.Pattern[str] | None:
    alternatives = []
    for index, rule in enumerate(TOOL_FILES):
        for pattern in rule.patterns:
            anchored = pattern.startswith("/")
            has_slash = "/" in pattern.lstrip("/")
            wanted = "anchored" if anchored else ("tail" if has_slash else "name")
            if wanted == kind:
                regex = fnmatch.translate(pattern.lstrip("/"))
                alternatives.append(f"(?P<r{index}_{len(alternatives)}>{regex})")
    return re.compile("|".join(alternatives)) if alternatives else None


_NAME = _compile("name")
_TAIL = _compile("tail")
_ANCHORED = _compile("anchored")


def _rule(match: re.Match[str] | None) -> ToolFile | None:
    if match is None:
        return None
    for name, value in match.groupdict().items():
        if value is not None and name.startswith("r") and "_" in name:
            return TOOL_FILES[int(name[1:].split("_")[0])]
    return None


def tool_file(rel: str) -> ToolFile | None:
    """The entry of TOOL_FILES that covers the workspace-relative path `rel`, if any."""
    parts = rel.split("/")
    for i, part in enumerate(parts):
        if _NAME is not None and (found := _rule(_NAME.match(part))):
            return found
        if _TAIL is not None and (found := _rule(_TAIL.match("/".join(parts[i:])))):
            return found
        if _ANCHORED is not None and (found := _rule(_ANCHORED.match("/".join(parts[: i + 1])))):
            return found
    return None


# A folder is named by its path alone ("agent kernel wrote .git: ...").
_ENTRY_WORDS = {
    **{k: v for k, v in wio.ENTRY_WORDS.items() if k != "directory"},
    "other": "a special file",
}


def alert_text(path: str, kind: str, rule: ToolFile, entry_type: str | None = "file") -> str:
    """The alert's sentence: "agent kernel wrote __pycache__/json.cpython-311.pyc: bytecode a
    person's own kernel would import"."""
    verb = "deleted" if kind == "deleted" else "wrote"
    what = _ENTRY_WORDS.get(entry_type or "file")
    shown = f"{path} as {what}" if what and kind != "deleted" else path
    return f"agent kernel {verb} {shown}: {rule.why}"
