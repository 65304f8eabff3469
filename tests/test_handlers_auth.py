"""Every qguard handler is authenticated and authorized against a `qguard:` resource."""

from __future__ import annotations

import json
import re

import pytest
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_qguard.handlers import ROUTES

METHODS = ("get", "post", "put", "patch", "delete")
NO_BODY = ("get", "delete")  # tornado's client sends no body with these
ASKED: list[tuple[str, str]] = []


class DenyQGuard(Authorizer):
    """Allows everything but qguard resources, and records what it was asked."""

    def is_authorized(self, handler, user, action, resource):
        ASKED.append((action, resource))
        return not resource.startswith("qguard:")


def _endpoints():
    for pattern, handler in ROUTES:
        path = re.sub(r"\(\?P<job_id>[^)]*\)", "0" * 32, pattern)
        path = re.sub(r"\(\?P<change_id>[^)]*\)", "1", path)
        path = re.sub(r"\(\?P<kernel_id>[^)]*\)", "0" * 8, path)
        path = re.sub(r"\(\?P<run_id>[^)]*\)", "0" * 32, path).lstrip("/")
        for method in METHODS:
            if method in vars(handler):
                yield handler, method, path


ENDPOINTS = list(_endpoints())


def test_every_handler_method_has_both_decorators():
    assert len(ENDPOINTS) >= 5
    for handler, method, _ in ENDPOINTS:
        fn, files = getattr(handler, method), []
        while fn is not None:
            files.append(fn.__code__.co_filename.replace("\\", "/"))
            fn = getattr(fn, "__wrapped__", None)
        assert any(f.endswith("tornado/web.py") for f in files), (
            f"{handler.__name__}.{method} lacks @web.authenticated"
        )
        assert any(f.endswith("jupyter_server/auth/decorator.py") for f in files), (
            f"{handler.__name__}.{method} lacks @authorized"
        )
    for _, handler in ROUTES:
        assert handler.auth_resource.startswith("qguard:")


@pytest.fixture
def jp_server_config(tmp_path):
    return Config(
        {
            "ServerApp": {
                "jpserver_extensions": {"jupyter_qguard": True},
                "authorizer_class": DenyQGuard,
            },
            "QGuardApp": {"state_dir": str(tmp_path / "state")},
        }
    )


@pytest.mark.parametrize(
    "handler,method,path", ENDPOINTS, ids=[f"{m.upper()} {p}" for _, m, p in ENDPOINTS]
)
async def test_authorizer_is_consulted_and_refusal_is_403(
    jp_fetch, jp_ws_fetch, handler, method, path
):
    ASKED.clear()
    if path.endswith("events"):
        with pytest.raises(HTTPClientError) as err:
            await jp_ws_fetch(*path.split("/"))
        assert err.value.code == 403
    else:
        body = json.dumps({"digest": "0" * 64, "reason": "x"}) if method not in NO_BODY else None
        r = await jp_fetch(*path.split("/"), method=method.upper(), body=body, raise_error=False)
        assert r.code == 403
    assert [res for _, res in ASKED if res.startswith("qguard:")] == [handler.auth_resource]


@pytest.mark.parametrize(
    "handler,method,path", ENDPOINTS, ids=[f"{m.upper()} {p}" for _, m, p in ENDPOINTS]
)
async def test_unauthenticated_requests_are_refused(jp_fetch, jp_ws_fetch, handler, method, path):
    headers = {"Authorization": ""}
    if path.endswith("events"):
        with pytest.raises(HTTPClientError) as err:
            await jp_ws_fetch(*path.split("/"), headers=headers)
        assert err.value.code == 403
    else:
        body = "{}" if method not in NO_BODY else None
        r = await jp_fetch(
            *path.split("/"),
            method=method.upper(),
            body=body,
            headers=headers,
            raise_error=False,
            follow_redirects=False,
        )
        assert r.code == 403
