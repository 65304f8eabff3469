"""Notebooks open in a collaboration room (jupyter-collaboration), as their live document has
them.

With collaboration on, a cell reaches the disk only when its room saves (a second or so after
the last edit). A job a cell requests binds its notebook's code at request time, so the broker
asks here first: the live document's code-cell hash (what the room is about to save), else the
file's. Uses jupyter-server-ydoc's public `get_document`; never creates a room.
"""

from __future__ import annotations

import logging
from typing import Any

from .broker.filehash import notebook_dict_code_hash

log = logging.getLogger(__name__)

YDOC_EXTENSION = "jupyter_server_ydoc"


class LiveNotebooks:
    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp

    def _ydoc_app(self) -> Any:
        apps = self.serverapp.extension_manager.extension_apps.get(YDOC_EXTENSION) or ()
        return next(iter(apps), None)

    async def code_hash(self, path: str) -> str | None:
        """The code-cell hash of the notebook's live document, or None when no room holds it
        (or collaboration is off)."""
        app = self._ydoc_app()
        if app is None or not hasattr(app, "get_document"):
            return None
        try:
            doc = await app.get_document(
                path=path, content_type="notebook", file_format="json", copy=False
            )
        except Exception:  # a room in trouble: the file on disk is what is bound
            log.exception("qguard: could not read the live document of %s", path)
            return None
        if doc is None:
            return None
        return notebook_dict_code_hash(doc.get())


def install(broker: Any, serverapp: Any) -> None:
    """Set on the broker when jupyter-server-ydoc is among the server's extensions."""
    if YDOC_EXTENSION in serverapp.extension_manager.extension_apps:
        broker.live_notebooks = LiveNotebooks(serverapp)
