"""A notebook an agent writes is never trusted because of that write.

jupyter_server signs a notebook on save when the notary's `check_cells` passes
(`ContentsManager.check_and_sign`), and the cells' `metadata.trusted` it reads come from the
client: an agent could PUT a notebook whose cells say `trusted: true` next to a script output, and
the person's page would run the script when it opens the notebook. Two contents-manager hooks,
registered by QGuardApp, close it for saves made for an agent (`current_agent()`, set by the
Authorizer in the request's task; FileContentsManager and AsyncFileContentsManager call both
hooks from `save` on the event loop thread, so the request's context is the one they see):

- `before_save` (pre-save) marks every cell untrusted, so `check_cells` fails on any cell with
  a rich output. It also refuses (400) what `check_cells` cannot judge: a notebook that is not
  nbformat 4, or an output whose type nbformat 4 does not have (`check_cells` deems
  `update_display_data` safe, JupyterLab renders its data).
- `after_save` (post-save): a notebook with no rich output at all passes `check_cells` whatever
  the cells say, and was just signed; its signature is removed again unless the very same
  content was already trusted before (a copy of a notebook the person trusted stays as it was).

Trusting a notebook outright (`POST /api/contents/<nb>/trust`) is refused by the Authorizer.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import nbformat
from tornado.web import HTTPError

from .context import current_agent

OUTPUT_TYPES = frozenset({"execute_result", "display_data", "stream", "error"})

# The agent's notebook save in progress: (path, model, digest of what check_and_sign signs,
# whether that digest was trusted before the save).
_pending: ContextVar[tuple[str, dict[str, Any], str, bool] | None] = ContextVar(
    "qguard_agent_notebook_save", default=None
)


def _cells(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, dict) or content.get("nbformat") != 4:
        raise HTTPError(400, "qguard: an agent may save nbformat 4 notebooks only")
    cells = content.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise HTTPError(400, "qguard: the notebook's cells must be a list of objects")
    return cells


def _untrust(cells: list[dict[str, Any]]) -> None:
    for cell in cells:
        metadata = cell.setdefault("metadata", {})
        if not isinstance(metadata, dict):
            raise HTTPError(400, "qguard: a cell's metadata must be an object")
        metadata["trusted"] = False
        if cell.get("cell_type") != "code":
            continue
        outputs = cell.get("outputs", [])
        if not isinstance(outputs, list):
            raise HTTPError(400, "qguard: a code cell's outputs must be a list")
        for output in outputs:
            kind = output.get("output_type") if isinstance(output, dict) else None
            if kind not in OUTPUT_TYPES:
                raise HTTPError(
                    400,
                    f"qguard: an agent may not save an output of type {kind!r} (nbformat 4 "
                    f"has {', '.join(sorted(OUTPUT_TYPES))})",
                )


def _signed_digest(model: dict[str, Any], notary: Any) -> str | None:
    """The digest check_and_sign will store for this model, None if it will not sign."""
    nb = nbformat.from_dict(model["content"])  # a copy, as the contents manager makes it
    if not notary.check_cells(nb):  # (which drops the cells' `trusted`, as there)
        return None
    return str(notary.compute_signature(nb))


def before_save(model: Any, path: str, contents_manager: Any, **_: Any) -> None:
    """Pre-save hook: an agent's notebook is saved with every cell untrusted."""
    if current_agent() is None or not isinstance(model, dict):
        return
    if model.get("type") != "notebook" or "content" not in model:
        return  # (without content the contents manager refuses the save itself)
    # jupyter_server goes on saving when a pre-save hook fails with anything but an HTTPError:
    # every failure here must be one, or the notebook could be signed.
    try:
        _untrust(_cells(model.get("content")))
        notary = contents_manager.notary
        digest = _signed_digest(model, notary)
        if digest is None:
            _pending.set(None)
            return
        known = bool(notary.store.check_signature(digest, notary.algorithm))
        _pending.set((path.strip("/"), model, digest, known))
    except HTTPError:
        raise
    except Exception as exc:
        raise HTTPError(400, f"qguard: this notebook cannot be checked for trust ({exc})") from exc


def after_save(model: Any, os_path: str, contents_manager: Any, **_: Any) -> None:
    """Post-save hook: remove the signature an agent's save of a notebook without rich output
    got from check_and_sign."""
    pending = _pending.get()
    if pending is None:
        return
    _pending.set(None)
    path, saved, digest, known = pending
    if not isinstance(model, dict) or str(model.get("path", "")).strip("/") != path:
        return
    notary = contents_manager.notary
    # Another pre-save hook after this one may have changed the content: then the digest
    # signed is the one of the content as saved (and was not known before, as far as we know).
    now = _signed_digest(saved, notary)
    for signed in {digest, now} - {None}:
        if signed == digest and known:
            continue
        notary.store.remove_signature(signed, notary.algorithm)
