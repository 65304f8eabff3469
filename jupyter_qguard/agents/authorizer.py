"""What an agent identity may do. Everyone else (the user's own login) is allowed as before.

An agent may only:
- read `GET /api/status` (MCP servers poll it before each kernel start) and the kernelspecs
  that run under the qguard provisioner (the listing shows no other);
- create sessions and kernels: whatever kernelspec it names, the kernel runs under the qguard
  provisioner (a spec that does not is replaced by `QGuardApp.agent_kernel_name`:
  kernel_choice.py; "runs under" is read from the spec's metadata and resolved through
  jupyter_client's provisioner entry points, provisioners.py), and read, use, interrupt,
  restart or stop kernels that run under it (checked on the running kernel's provisioner
  object) and that its own token started (the broker's `kernel_starter`): never the user's,
  nor another agent's; sessions likewise, by their kernel; listings show only those;
- execute in those kernels (the kernel websocket); the broker is told which agent drives which
  kernel, so its requests are the agent's;
- read and write files within its manifest's paths through the contents and files routes, on
  the real path: every path the request touches (the file, its `.~` intermediate, its
  checkpoint folder and file) is a real entry under the root, no symbolic link on the way
  (workspace.py);
- use collaboration rooms (jupyter-collaboration) of paths its manifest lets it read and write,
  the room's file id resolved to its path first (collaboration.py); its edits there and its
  contents writes are noted, so the change feed names it;
- never trust (sign) a notebook: `/trust` is refused, and its saves are never signed
  (notebook_trust.py).

Everything else is refused: terminals, other kernelspecs, config, nbconvert, the awareness room,
forks and timelines, file ids, the qguard API (approve, deny, admin), shutdown, and any route
or resource not named above.

Each agent request admitted sets `context.current_agent()` for the rest of its task: the kernel
provisioner's `pre_launch` (a kernel the agent starts) and the contents manager's save hooks
read it. Tornado runs each request in a task of its own, so it never reaches the next request on
the same connection.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.authorizer import AllowAllAuthorizer, Authorizer
from jupyter_server.auth.identity import PasswordIdentityProvider
from jupyter_server.base.handlers import AuthenticatedFileHandler
from jupyter_server.files.handlers import FilesHandler
from jupyter_server.services.contents.handlers import (
    CheckpointsHandler,
    ContentsHandler,
    ModifyCheckpointsHandler,
    TrustNotebooksHandler,
)
from jupyter_server.services.contents.manager import copy_pat
from tornado import web

from .. import workspace_io as wio
from ..sandbox.provisioner import QGuardProvisioner
from . import collaboration
from .context import set_current_agent
from .identity import QGuardIdentityProvider, agent_of, relative_path
from .provisioners import runs_under_qguard
from .tokens import Agent
from .workspace import DEFAULT_CHECKPOINT_ID, PathRefused, RealPaths

log = logging.getLogger(__name__)

# handler.settings keys (set by the extension): the AgentKernelChoice and the AgentEdits.
AGENT_KERNELS_KEY = "qguard_agent_kernels"
AGENT_EDITS_KEY = "qguard_agent_edits"

_KERNEL = re.compile(r"api/kernels/(?P<id>[^/]+)(/(?P<op>interrupt|restart|channels))?")
_SESSION = re.compile(r"api/sessions/(?P<id>[^/]+)")


def install_agent_auth(serverapp: Any, log: logging.Logger) -> None:
    """Make the server's identity provider and authorizer qguard's, unless it has its own."""
    ours = {
        "identity_provider_class": (PasswordIdentityProvider, QGuardIdentityProvider),
        "authorizer_class": (AllowAllAuthorizer, QGuardAuthorizer),
    }
    for trait, (default, qguard) in ours.items():
        current = getattr(serverapp, trait)
        if current is default:
            setattr(serverapp, trait, qguard)
        elif not (isinstance(current, type) and issubclass(current, qguard)):
            log.warning(
                "qguard: ServerApp.%s is %s, not qguard's: agent tokens will not be recognized "
                "(or not held to their manifests). Extend %s.%s to have both.",
                trait,
                current,
                qguard.__module__,
                qguard.__name__,
            )


class QGuardAuthorizer(Authorizer):
    async def is_authorized(  # type: ignore[override]
        self, handler: web.RequestHandler, user: Any, action: str, resource: str
    ) -> bool:
        agent = agent_of(user)
        if agent is None:
            # The user's own identity: unchanged, but for one thing an agent may have left in
            # the workspace: opening a FIFO (or a device) for reading would hang the server's
            # worker thread, or its event loop on the files route.
            why = _special_file_read(handler) if resource == "contents" else None
            if why:
                log.warning(
                    "qguard: refused %s %s: %s", handler.request.method, handler.request.path, why
                )
                return False
            return True
        rules = _AgentRequest(handler, agent)
        if resource == "contents":
            allowed = await rules.contents()
        elif resource in ("kernels", "sessions"):
            allowed = await rules.kernels_and_sessions(resource)
        elif resource == "api":
            allowed = rules.status()
        elif resource == "kernelspecs":
            allowed = rules.kernelspecs()
        else:
            allowed = False
        if not allowed:
            log.warning(
                "qguard: agent %s refused: %s %s (%s %s)%s",
                agent.name,
                handler.request.method,
                handler.request.path,
                action,
                resource,
                f": {rules.why}" if rules.why else "",
            )
            return False
        # For the rest of this request's task: the provisioner's pre_launch, the kernel and
        # session managers' listings and the contents manager's save hooks learn which agent
        # this is.
        set_current_agent(agent)
        edits = handler.settings.get(AGENT_EDITS_KEY)
        if edits is not None:
            for path in rules.written:
                edits.note(path, agent)
            if rules.room is not None:
                collaboration.note_room_edits(handler, rules.room, agent, edits)
        return True


def _special_file_read(handler: web.RequestHandler) -> str | None:
    """Why a read of the contents or files route must not open its target, or None: the
    target (links followed, as jupyter_server follows them for the person) is a FIFO, socket or
    device. Reads only; a stat, never an open."""
    if (handler.request.method or "").upper() not in ("GET", "HEAD"):
        return None
    if isinstance(handler, AuthenticatedFileHandler | FilesHandler):
        path = handler.path_args[0] if handler.path_args else ""
    elif isinstance(handler, ContentsHandler):
        path = str(handler.path_kwargs.get("path") or "")
    else:
        return None
    root = getattr(getattr(handler, "contents_manager", None), "root_dir", None)
    if not root or not path.strip("/"):
        return None
    try:
        mode = os.stat(os.path.join(root, path.strip("/"))).st_mode
    except (OSError, ValueError):
        return None  # the handler answers 404 or its own error
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = wio.ENTRY_WORDS.get(wio.entry_type(mode), "a special file")
    return f"{path.strip('/')} is {kind}, not a regular file; it is not opened"


class _AgentRequest:
    def __init__(self, handler: web.RequestHandler, agent: Agent) -> None:
        self.handler = handler
        self.agent = agent
        self.method = (handler.request.method or "").upper()
        self.route = relative_path(handler)
        self.why = ""  # why a request is refused, for the log
        self.written: list[str] = []  # paths this request writes, renames or deletes
        self.room: str | None = None  # the path of the collaboration room it opens

    def refuse(self, why: str) -> bool:
        self.why = why
        return False

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.handler.request.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def status(self) -> bool:
        if self.route == "api/status" and self.method in ("GET", "HEAD"):
            return True
        return self.refuse("agents may read /api/status only")

    def kernelspecs(self) -> bool:
        """The listing (kernel_choice.py shows an agent the qguard kernelspecs only) and one
        of those."""
        if self.method not in ("GET", "HEAD"):
            return self.refuse("kernelspecs are read-only")
        if self.route == "api/kernelspecs":
            return True
        name = self.route.rsplit("/", 1)[-1]
        if runs_under_qguard(self.handler.settings["kernel_spec_manager"], name):
            return True
        return self.refuse(f"kernelspec {name} does not run under the qguard provisioner")

    # -- kernels and sessions ------------------------------------------------------------------

    async def kernels_and_sessions(self, resource: str) -> bool:
        if self.route in ("api/kernels", "api/sessions"):
            if self.method == "GET":
                # kernel_choice.py filters the listing down to what this agent started.
                return True
            if self.method != "POST":
                return self.refuse(f"{self.method} {self.route} is not for agents")
            body = self.body()
            if resource == "kernels":
                return self._spec_is_qguard(body.get("name"))
            return self._new_session_allowed(body)
        m = _KERNEL.fullmatch(self.route)
        if m and resource == "kernels":
            return self._kernel_is_its_own(m["id"])
        m = _SESSION.fullmatch(self.route)
        if m and resource == "sessions":
            sm = self.handler.settings["session_manager"]
            try:
                session = await sm.get_session(session_id=m["id"])
            except (web.HTTPError, KeyError):
                return self.refuse(f"no session {m['id']}")
            kernel = session.get("kernel") or {}
            if not self._kernel_is_its_own(str(kernel.get("id"))):
                return False
            if self.method == "PATCH":
                return self._new_session_allowed(self.body(), patch=True)
            return True
        return self.refuse("not a kernel or session route agents may use")

    def _new_session_allowed(self, body: dict[str, Any], *, patch: bool = False) -> bool:
        path = body.get("path")
        # The session's path is the notebook a job is bound to: the agent must be able to read it.
        if isinstance(path, str) and path and not self.agent.manifest.may_read(path):
            return self.refuse(f"its manifest does not let it read {path}")
        kernel = body.get("kernel")
        if not isinstance(kernel, dict):
            # PATCH may rename only; POST must say which kernel (or take default).
            return patch or self.refuse("a new session must name its kernel")
        if kernel.get("id"):
            return self._kernel_is_its_own(str(kernel["id"]))
        return self._spec_is_qguard(kernel.get("name"))

    def _spec_is_qguard(self, name: Any) -> bool:
        """The kernel this request starts will run under the qguard provisioner: the spec it
        names does, or the kernel manager will start the agent kernelspec instead."""
        ksm = self.handler.settings["kernel_spec_manager"]
        if runs_under_qguard(ksm, name):
            return True
        choice = self.handler.settings.get(AGENT_KERNELS_KEY)
        if choice is None:
            return self.refuse(
                f"kernelspec {name} does not run under the qguard provisioner, and no agent "
                "kernelspec is set to start instead"
            )
        problem = choice.problem()
        return self.refuse(problem) if problem else True

    def _kernel_is_its_own(self, kernel_id: str) -> bool:
        """Runs under the qguard provisioner and was started with this agent's token; the broker
        learns that this agent drives it."""
        km = self.handler.settings["kernel_manager"]
        try:
            kernel = km.get_kernel(kernel_id)
        except KeyError:
            return self.refuse(f"no kernel {kernel_id}")
        if not isinstance(getattr(kernel, "provisioner", None), QGuardProvisioner):
            return self.refuse(f"kernel {kernel_id} does not run under the qguard provisioner")
        broker = self.handler.settings.get("qguard_broker")
        if broker is None:
            return self.refuse("no qguard broker runs, so no kernel's starter is known")
        # The token that started it (recorded by the provisioner from current_agent() in
        # pre_launch): the user's kernels and other agents' are not this agent's to drive.
        if broker.kernel_starter(kernel_id) != self.agent.token_id:
            return self.refuse(f"kernel {kernel_id} was not started with this agent's token")
        broker.note_agent(kernel_id, self.agent)
        return True

    # -- contents ------------------------------------------------------------------------------

    async def contents(self) -> bool:
        handler = self.handler
        if isinstance(handler, TrustNotebooksHandler):
            return self.refuse("agents may not trust (sign) notebooks")
        try:
            disk = RealPaths(handler.contents_manager)  # type: ignore[attr-defined]
            if isinstance(handler, AuthenticatedFileHandler | FilesHandler):
                self._files(disk)
            elif isinstance(handler, CheckpointsHandler | ModifyCheckpointsHandler):
                self._checkpoints(disk)
            elif isinstance(handler, ContentsHandler):
                await self._contents(disk)
            elif collaboration.is_room_handler(handler):
                path = collaboration.room_path(handler, disk)
                self._may("read", path)
                self._may("write", path)
                if handler.request.method == "GET":  # the room websocket
                    self.room = path
            else:
                return self.refuse(f"{type(handler).__name__} is not a route agents may use")
        except PathRefused as exc:
            return self.refuse(str(exc))
        return True

    def _path(self) -> str:
        """The contents path as tornado decoded it for the handler."""
        return str(self.handler.path_kwargs.get("path") or "").strip("/")

    def _may(self, how: str, path: str) -> None:
        manifest = self.agent.manifest
        if not (manifest.may_read(path) if how == "read" else manifest.may_write(path)):
            raise PathRefused(f"its manifest does not let it {how} {path or '/'}")

    def _written(self, disk: RealPaths, path: str) -> None:
        """A path a request writes, renames or deletes: its checkpoint moves with it (and a
        notebook's save makes one)."""
        self._may("write", path)
        disk.entry(path)
        disk.checkpoint(path)
        self.written.append(path)

    def _files(self, disk: RealPaths) -> None:
        if self.method not in ("GET", "HEAD"):
            raise PathRefused("the files route is read-only")
        path = self.handler.path_args[0] if self.handler.path_args else ""
        if path.startswith("/"):
            raise PathRefused(f"{path} is not a path inside the server's root")
        self._may("read", path)
        disk.entry(path)

    def _checkpoints(self, disk: RealPaths) -> None:
        path = self._path()
        checkpoint_id = self.handler.path_kwargs.get("checkpoint_id") or DEFAULT_CHECKPOINT_ID
        listing = isinstance(self.handler, CheckpointsHandler) and self.method == "GET"
        self._may("read" if listing else "write", path)
        disk.entry(path)
        disk.checkpoint(path, checkpoint_id)

    async def _contents(self, disk: RealPaths) -> None:
        path = self._path()
        if self.method == "GET":
            self._may("read", path)
            disk.entry(path)
        elif self.method in ("PUT", "DELETE"):
            self._written(disk, path)
        elif self.method == "PATCH":  # rename: both names
            new = self.body().get("path")
            if not isinstance(new, str):
                raise PathRefused("a rename must name the new path")
            self._written(disk, path)
            self._written(disk, new.strip("/"))
        elif self.method == "POST":
            self._written(disk, await self._created(disk, path))
        else:
            raise PathRefused(f"{self.method} is not a contents method agents may use")

    async def _created(self, disk: RealPaths, path: str) -> str:
        """The path a POST into the folder `path` creates: a copy, or an untitled file, notebook
        or folder, named as the contents manager will name it (a name it takes as free because
        nothing exists there may still be a dangling link, which the server would write
        through)."""
        try:
            return await self._named(disk, path)
        except web.HTTPError as exc:  # the contents manager's own refusal (a path outside)
            raise PathRefused(f"{path}: {exc.log_message or exc.status_code}") from None

    async def _named(self, disk: RealPaths, path: str) -> str:
        cm = self.handler.contents_manager  # type: ignore[attr-defined]
        body = self.body()
        source = body.get("copy_from")
        if source:
            if not isinstance(source, str):
                raise PathRefused("copy_from must be a path")
            source = source.strip("/")
            self._may("read", source)
            st = disk.entry(source)
            if st is not None and stat.S_ISDIR(st.st_mode):
                # FileContentsManager copies a folder with shutil.copytree, which copies what
                # the links inside it point to.
                raise PathRefused(f"agents may not copy folders ({source})")
            if not await ensure_async(cm.dir_exists(path)):
                return path  # a copy to that very name
            name = copy_pat.sub(".", source.rsplit("/", 1)[-1])
            name = await ensure_async(cm.increment_filename(name, path, insert="-Copy"))
            return f"{path}/{name}".strip("/")
        kind, ext = body.get("type", ""), body.get("ext", "")
        if not isinstance(ext, str):
            raise PathRefused("ext must be a string")
        if kind not in (None, "", "directory", "file", "notebook"):
            kind = "file"
        kind = kind or ("notebook" if ext == ".ipynb" else "file")
        insert = ""
        if kind == "directory":
            untitled, insert = cm.untitled_directory, " "
        elif kind == "notebook":
            untitled, ext = cm.untitled_notebook, ".ipynb"
        else:
            untitled = cm.untitled_file
        name = await ensure_async(cm.increment_filename(untitled + ext, path, insert=insert))
        return f"{path}/{name}".strip("/")
