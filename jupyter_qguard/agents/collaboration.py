"""Collaboration rooms (jupyter-collaboration) for agents, and who edited what.

jupyter-mcp-server's notebook tools edit notebooks the way JupyterLab does with collaboration
on: `PUT /api/collaboration/session/<path>` (which gives the file an id), then the room
websocket `/api/collaboration/room/<format>:<type>:<file id>`. An agent may use both for a path
its manifest lets it read AND write (a room is both), and only for a real, regular file under
the root (no link on the way: workspace.RealPaths). A room is named by a file id: it is
resolved to its path with the server's file id manager before anything else. The global
awareness room (who is looking at what, everyone's cursor) is refused, and so are forks,
timelines, undo/redo and `/api/fileid` (not agent routes at all: identity.AGENT_ROUTES).

Edits an agent makes in a room reach the disk when the room saves, from the server's own
task, long after the request: so the room's connection notes each document update the agent
sends (`AgentEdits`), and the change tracker attributes the next change of that path to it.
Contents API writes by an agent are noted the same way.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tornado import web

from .workspace import PathRefused, RealPaths

AWARENESS_ROOM = "JupyterLab:globalAwareness"
# A room saves `document_save_delay` (1 s by default) after the last change; the watcher sees
# the write a debounce later. An agent's update counts for its path this long.
EDIT_WINDOW_SECONDS = 15.0
# y-protocols: a SYNC message (0) of type step 2 (1) or update (2) carries document changes;
# step 1 (0) only asks for them, and awareness (1) is presence.
_SYNC, _SYNC_STEP2, _SYNC_UPDATE = 0, 1, 2


def room_handler_classes() -> tuple[type, ...]:
    """(session handler, room websocket handler) of jupyter-collaboration, or () if it is not
    installed."""
    try:
        from jupyter_server_ydoc.handlers import DocSessionHandler, YDocWebSocketHandler
    except ImportError:
        return ()
    return (DocSessionHandler, YDocWebSocketHandler)


def is_room_handler(handler: web.RequestHandler) -> bool:
    classes = room_handler_classes()
    return bool(classes) and isinstance(handler, classes)


def room_path(handler: web.RequestHandler, disk: RealPaths) -> str:
    """The workspace path a collaboration request is about (checked to be a real, regular
    file), or PathRefused saying why not."""
    from jupyter_server_ydoc.handlers import DocSessionHandler

    arg = str(handler.path_args[0] if handler.path_args else "")
    if isinstance(handler, DocSessionHandler):
        if (handler.request.method or "").upper() != "PUT":
            raise PathRefused("collaboration sessions are opened with PUT only")
        path = arg.strip("/")
    else:
        path = _path_of_room(handler, arg)
    disk.entry(path)
    return path


def _path_of_room(handler: web.RequestHandler, room_id: str) -> str:
    if room_id == AWARENESS_ROOM:
        raise PathRefused("agents may not join the global awareness room")
    parts = room_id.split(":", 2)
    if len(parts) != 3 or not parts[2]:
        raise PathRefused(f"{room_id!r} is not a document room")
    manager = handler.settings.get("file_id_manager")
    path = manager.get_path(parts[2]) if manager is not None else None
    if not path:
        raise PathRefused(f"room {room_id} names no file this server knows")
    return str(path).strip("/")


def note_room_edits(handler: web.RequestHandler, path: str, agent: Any, edits: AgentEdits) -> None:
    """Each document update the agent sends in this room counts as its edit of `path`."""
    on_message = handler.on_message  # type: ignore[attr-defined]

    async def on_message_noted(message: Any) -> Any:
        data = bytes(message) if isinstance(message, bytes | bytearray | memoryview) else b""
        if len(data) > 1 and data[0] == _SYNC and data[1] in (_SYNC_STEP2, _SYNC_UPDATE):
            edits.note(path, agent)
        return await on_message(message)

    handler.on_message = on_message_noted  # type: ignore[attr-defined]


class AgentEdits:
    """Which agent last edited a workspace path, and when (wall clock, as the watcher's
    change times). Thread-safe: the tracker reads it from the watcher's thread."""

    def __init__(self, window_seconds: float = EDIT_WINDOW_SECONDS) -> None:
        self.window = window_seconds
        self._lock = threading.Lock()
        self._last: dict[str, tuple[str, float]] = {}

    def note(self, path: str, agent: Any) -> None:
        path = path.strip("/")
        if not path:
            return
        with self._lock:
            self._last[path] = (agent.name, time.time())
            if len(self._last) > 10_000:  # a busy agent: keep the newest half
                newest = sorted(self._last.items(), key=lambda kv: kv[1][1])[5_000:]
                self._last = dict(newest)

    def author(self, path: str, at: float) -> str | None:
        """The agent whose edit of `path` explains a change seen at `at`, or None."""
        with self._lock:
            last = self._last.get(path)
        if last is None:
            return None
        name, when = last
        return name if when - 1.0 <= at <= when + self.window else None
