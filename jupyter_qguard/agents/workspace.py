"""Where an agent's contents request leads on disk: every path it touches, checked on the real
path, not the lexical one.

jupyter_server checks a contents path lexically (root + path, inside the root) and then follows
whatever it meets on the way: it reads through a symlink, writes to a symlink's target (also a
dangling one: `atomic_writing` resolves it), copies checkpoints through a symlinked
`.ipynb_checkpoints`, backs a file up into its `.~name` intermediate (through a link too) and,
reading a notebook that does not parse, renames that intermediate over the notebook. An agent's
kernel can make such links in the workspace, and a person may have made some. So for an agent
identity every path a request will touch must be made of real entries under the server's root:
each component `lstat`ed (one syscall a component, on the event loop), none a symbolic link, the
last one a regular file or a folder (never a FIFO, socket or device: reading one blocks the
server), or missing (a name about to be created). Those paths are
- the path itself, and its atomic-write intermediate `.~name` (a regular file, if present);
- for writes and checkpoint requests, the `.ipynb_checkpoints` folder and the checkpoint file
  jupyter_server's FileCheckpoints would use (its `checkpoint_path`, replayed here without its
  side effect: it creates the folder). A checkpoint that would go to the system temp dir (the
  folder is not writable) is outside the root, so refused.

With no link on the way, the real path is the lexical one: inside the root, and the manifest
(checked on the same path by the Authorizer) holds for it.

This is a check before the use: an entry swapped for a link between the check and the server's
own open is not seen here. Closing that needs agent kernels unable to make links (the sandbox's
part) or a contents manager that opens without following links.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from jupyter_server.services.contents.filecheckpoints import FileCheckpoints
from jupyter_server.services.contents.fileio import FileManagerMixin

from .. import workspace_io as wio

DEFAULT_CHECKPOINT_ID = "checkpoint"  # FileCheckpoints keeps one checkpoint per file, this one


class PathRefused(Exception):
    """An agent's request would touch a path that is not a real entry under the root; the
    message says which and why, in one sentence (it goes to the server log)."""


def _kind(mode: int) -> str:
    return wio.ENTRY_WORDS.get(wio.entry_type(mode), "not a regular file")


class RealPaths:
    """The paths of one contents manager, as an agent's requests may use them."""

    def __init__(self, contents_manager: Any) -> None:
        if not isinstance(contents_manager, FileManagerMixin):
            # Not files on this disk (or not files qguard can follow): nothing can be checked,
            # so nothing is allowed.
            raise PathRefused(
                f"the server's contents manager ({type(contents_manager).__name__}) does not "
                "keep files qguard can check, so agents get no contents access"
            )
        self.root = os.path.abspath(contents_manager.root_dir)
        self.checkpoints = contents_manager.checkpoints

    @staticmethod
    def parts(path: str) -> list[str]:
        """The components of an API path as the contents manager joins them to the root."""
        if "\x00" in path:
            raise PathRefused(f"{path!r} holds a NUL byte")
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PathRefused(f"{path} climbs out with '..'")
        return parts

    def _walk(self, parts: list[str], *, folder_ok: bool) -> os.stat_result | None:
        """lstat each component under the root; the last one's stat, None if it is missing."""
        cur = self.root
        st = None
        for i, part in enumerate(parts):
            cur = os.path.join(cur, part)
            shown = "/".join(parts[: i + 1])
            try:
                st = os.lstat(cur)
            except (FileNotFoundError, NotADirectoryError):
                return None  # Nothing there: a name to be created, or the server's own 404.
            except (OSError, ValueError) as exc:
                raise PathRefused(f"{shown} cannot be checked ({exc})") from None
            if stat.S_ISLNK(st.st_mode):
                raise PathRefused(f"{shown} is a symbolic link")
            if i == len(parts) - 1:
                regular = stat.S_ISREG(st.st_mode)
                if not (regular or (folder_ok and stat.S_ISDIR(st.st_mode))):
                    wanted = "a regular file or a folder" if folder_ok else "a regular file"
                    raise PathRefused(f"{shown} is {_kind(st.st_mode)}, not {wanted}")
        return st

    def entry(self, path: str) -> os.stat_result | None:
        """The path (a regular file, a folder, or missing) and its atomic-write intermediate;
        returns the path's stat (None: missing)."""
        parts = self.parts(path)
        st = self._walk(parts, folder_ok=True)
        if parts:
            self._walk([*parts[:-1], ".~" + parts[-1]], folder_ok=False)
        return st

    def checkpoint(self, path: str, checkpoint_id: str = DEFAULT_CHECKPOINT_ID) -> None:
        """The checkpoint folder and file FileCheckpoints.checkpoint_path gives for `path`."""
        cp = self.checkpoints
        if not isinstance(cp, FileCheckpoints):
            raise PathRefused(
                f"checkpoints are kept by {type(cp).__name__}, not files qguard can check"
            )
        folder = cp.checkpoint_dir
        if os.path.isabs(folder) or os.pardir in folder.split(os.sep):
            raise PathRefused(f"checkpoints are kept in {folder}, outside the file's folder")
        parts = self.parts(path)
        parent, name = parts[:-1], parts[-1] if parts else ""
        basename, ext = os.path.splitext(name)
        parent_os = os.path.join(os.path.abspath(cp.root_dir), *parent)
        cp_file = os.path.join(parent_os, folder, f"{basename}-{checkpoint_id}{ext}")
        rel = os.path.relpath(cp_file, self.root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise PathRefused(f"the checkpoint of {path} would be outside the server's root")
        cp_parts = rel.split(os.sep)
        self._walk(cp_parts, folder_ok=False)
        self._walk([*cp_parts[:-1], ".~" + cp_parts[-1]], folder_ok=False)
        # FileCheckpoints moves checkpoints to the system temp dir when the file's folder is
        # not writable: outside the root, and in a directory anyone can write.
        if not os.access(os.path.dirname(os.path.join(parent_os, folder)), os.W_OK):
            raise PathRefused(
                f"the checkpoint of {path} would go to the system temp dir (its folder is "
                "missing or not writable)"
            )
