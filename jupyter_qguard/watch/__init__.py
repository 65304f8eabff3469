"""The workspace change feed: a watcher that reports every file change with the content hashes
before and after, a content-addressed store that keeps both, and a diff a browser shows as text.

The server owns all three (the store under `<state_dir>/objects`, which kernels cannot write);
the watcher calls back on its own thread and the server hops to its event loop. The diff is
`jupyter_qguard.watch.diff.diff` (not re-exported here: the name would hide the module, and it
imports nbdime, which a watcher alone does not need).

`TOOL_FILES` (from `toolfiles`) lists the workspace files a person's own tools run later (git,
pytest, make, editors, shells, their own kernels): always in the feed, an alert when an agent
kernel changes one.
"""

from .snapshots import (
    PruneResult,
    PutResult,
    SnapshotCorrupt,
    SnapshotNotFound,
    SnapshotStore,
    is_sha256,
)
from .toolfiles import TOOL_FILES, ToolFile, tool_file
from .watcher import DEFAULT_IGNORE, Change, WorkspaceWatcher

__all__ = [
    "DEFAULT_IGNORE",
    "Change",
    "PruneResult",
    "PutResult",
    "SnapshotCorrupt",
    "SnapshotNotFound",
    "SnapshotStore",
    "TOOL_FILES",
    "ToolFile",
    "WorkspaceWatcher",
    "is_sha256",
    "tool_file",
]
