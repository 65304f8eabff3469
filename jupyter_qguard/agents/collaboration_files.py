"""jupyter-collaboration's own state files, out of the workspace.

By default jupyter-server-ydoc keeps its session file in
`<root>/.jupyter/collaboration_sessions.json` and its document history in `.jupyter_ystore.db`
in the server's working directory (usually the workspace too). Both are read back by the
server later: a session file or an SQLite database an agent wrote there would be parsed, and
its updates applied to notebooks the person opens. And a file the server writes there while an
agent kernel is busy looks like the agent's change. So when collaboration is enabled, qguard
points both into its own state directory, unless the person configured them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from traitlets import Unicode

SESSIONS_FILE = "collaboration/sessions.json"
YSTORE_FILE = "collaboration/ystore.db"


def keep_out_of_workspace(serverapp: Any, state_dir: str, log: Any) -> list[str]:
    """Set jupyter-server-ydoc's paths in the server's config (called while extensions link,
    before its own app reads the config). Returns what was set, for the log."""
    try:
        from jupyter_server_ydoc.stores import SQLiteYStore
    except ImportError:
        return []
    folder = Path(state_dir) / "collaboration"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = []
    ydoc = serverapp.config.YDocExtension
    if "session_store_path" not in ydoc:
        ydoc.session_store_path = os.path.join(state_dir, SESSIONS_FILE)
        done.append(f"sessions in {ydoc.session_store_path}")
    if "ystore_class" not in ydoc:
        # Rooms make their store with no config at all: the path must be the class's default.
        db_path = os.path.join(state_dir, YSTORE_FILE)
        ydoc.ystore_class = type(
            "QGuardStateDirYStore",
            (SQLiteYStore,),
            {
                "__module__": __name__,
                "__doc__": "jupyter-server-ydoc's SQLite store, in qguard's state directory.",
                "db_path": Unicode(db_path, config=True, help="Where the Y updates are kept."),
            },
        )
        done.append(f"document history in {db_path}")
    if done:
        log.info("qguard: jupyter-collaboration keeps its %s", " and ".join(done))
    return done
