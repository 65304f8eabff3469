"""What an agent identity may do. Everyone else (the user's own login) is allowed as before.

An agent may only:
- create sessions and kernels whose kernelspec runs under the qguard provisioner (read from the
  kernelspec's metadata and resolved through jupyter_client's provisioner entry points: a spec
  that is merely *named* qguard-agent is not enough), and read, use, interrupt, restart or stop
  kernels that run under it (checked on the running kernel's provisioner object);
- execute in those kernels (the kernel websocket); the broker is told which agent drives which
  kernel, so its requests are the agent's;
- read and write files within its manifest's paths through the contents and files routes.

Everything else is refused: listing sessions or kernels (which would show the user's), other
kernelspecs, terminals, kernelspecs and config, nbconvert, the qguard API (approve, deny,
admin), shutdown, and any route or resource not named above.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from functools import cache
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import unquote

from jupyter_server.auth.authorizer import AllowAllAuthorizer, Authorizer
from jupyter_server.auth.identity import PasswordIdentityProvider
from tornado import web

from ..sandbox.provisioner import QGuardProvisioner
from .identity import QGuardIdentityProvider, agent_of, relative_path
from .tokens import Agent

log = logging.getLogger(__name__)

_KERNEL = re.compile(r"api/kernels/(?P<id>[^/]+)(/(?P<op>interrupt|restart|channels))?")
_SESSION = re.compile(r"api/sessions/(?P<id>[^/]+)")
_CHECKPOINTS = re.compile(r"(?P<path>.*?)/checkpoints(/[^/]+)?")


@cache
def qguard_provisioner_names() -> frozenset[str]:
    """Provisioner entry point names whose class is (or extends) the qguard provisioner."""
    names = set()
    for ep in entry_points(group="jupyter_client.kernel_provisioners"):
        try:
            cls = ep.load()
        except Exception:  # a broken third-party provisioner is simply not ours
            continue
        if isinstance(cls, type) and issubclass(cls, QGuardProvisioner):
            names.add(ep.name)
    return frozenset(names)


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
            return True  # The user's own identity: unchanged.
        rules = _AgentRequest(handler, agent)
        if resource == "contents":
            allowed = rules.contents()
        elif resource in ("kernels", "sessions"):
            allowed = await rules.kernels_and_sessions(resource)
        else:
            allowed = False
        if not allowed:
            log.warning(
                "qguard: agent %s refused: %s %s (%s %s)",
                agent.name,
                handler.request.method,
                handler.request.path,
                action,
                resource,
            )
        return allowed


class _AgentRequest:
    def __init__(self, handler: web.RequestHandler, agent: Agent) -> None:
        self.handler = handler
        self.agent = agent
        self.method = (handler.request.method or "").upper()
        self.route = relative_path(handler)

    def body(self) -> dict[str, Any]:
        try:
            data = json.loads(self.handler.request.body or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    # -- kernels and sessions ------------------------------------------------------------------

    async def kernels_and_sessions(self, resource: str) -> bool:
        if self.route in ("api/kernels", "api/sessions"):
            if self.method != "POST":
                return False  # Listing would show the user's own kernels and notebooks.
            body = self.body()
            if resource == "kernels":
                return self._spec_is_qguard(body.get("name"))
            return self._new_session_allowed(body)
        m = _KERNEL.fullmatch(self.route)
        if m and resource == "kernels":
            return self._kernel_is_qguard(m["id"])
        m = _SESSION.fullmatch(self.route)
        if m and resource == "sessions":
            sm = self.handler.settings["session_manager"]
            try:
                session = await sm.get_session(session_id=m["id"])
            except web.HTTPError:
                return False
            if not self._kernel_is_qguard(session["kernel"]["id"]):
                return False
            if self.method == "PATCH":
                return self._new_session_allowed(self.body(), patch=True)
            return True
        return False

    def _new_session_allowed(self, body: dict[str, Any], *, patch: bool = False) -> bool:
        path = body.get("path")
        # The session's path is the notebook a job is bound to: the agent must be able to read it.
        if isinstance(path, str) and path and not self.agent.manifest.may_read(path):
            return False
        kernel = body.get("kernel")
        if not isinstance(kernel, dict):
            return patch  # PATCH may rename only; POST must say which kernel (or take default).
        if kernel.get("id"):
            return self._kernel_is_qguard(str(kernel["id"]))
        return self._spec_is_qguard(kernel.get("name"))

    def _spec_is_qguard(self, name: Any) -> bool:
        km = self.handler.settings["kernel_manager"]
        name = name or km.default_kernel_name
        if not isinstance(name, str):
            return False
        try:
            spec = self.handler.settings["kernel_spec_manager"].get_kernel_spec(name)
        except Exception:
            return False
        provisioner = (spec.metadata or {}).get("kernel_provisioner", {})
        return provisioner.get("provisioner_name") in qguard_provisioner_names()

    def _kernel_is_qguard(self, kernel_id: str) -> bool:
        """Runs under the qguard provisioner; the broker learns that this agent drives it."""
        km = self.handler.settings["kernel_manager"]
        try:
            kernel = km.get_kernel(kernel_id)
        except KeyError:
            return False
        if not isinstance(getattr(kernel, "provisioner", None), QGuardProvisioner):
            return False
        broker = self.handler.settings.get("qguard_broker")
        if broker is not None:
            broker.note_agent(kernel_id, self.agent)
        return True

    # -- contents ------------------------------------------------------------------------------

    def contents(self) -> bool:
        manifest = self.agent.manifest
        # Decoded once, as tornado decodes it for the handler; ".." is refused by the manifest.
        route = unquote(self.route)
        if route.startswith("files/"):
            return self.method in ("GET", "HEAD") and manifest.may_read(route[len("files/") :])
        if not (route == "api/contents" or route.startswith("api/contents/")):
            return False
        path = route[len("api/contents") :].strip("/")
        m = _CHECKPOINTS.fullmatch(path)
        if m:
            path = m["path"]
            return manifest.may_read(path) if self.method == "GET" else manifest.may_write(path)
        if self.method in ("GET", "HEAD"):
            return manifest.may_read(path)
        if self.method in ("PUT", "DELETE"):
            return manifest.may_write(path)
        if self.method == "PATCH":  # rename: both names must be writable
            new = self.body().get("path")
            return isinstance(new, str) and manifest.may_write(path) and manifest.may_write(new)
        if self.method == "POST":  # a new file in the directory `path`, or a copy into it
            source = self.body().get("copy_from")
            if source is not None and not (isinstance(source, str) and manifest.may_read(source)):
                return False
            return manifest.may_write(posixpath.join(path, "Untitled"))
        return False
