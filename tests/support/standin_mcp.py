"""A stand-in for jupyter-server-mcp: an ExtensionApp with its app name (`jupyter_server_mcp`)
and its port trait (`MCPExtensionApp.mcp_port`, default 3001), so that qguard reads the port
the way it reads the real one's. It opens no port.

Enabled with `"jpserver_extensions": {"support.standin_mcp": true}`."""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp
from traitlets import Int


class MCPExtensionApp(ExtensionApp):
    name = "jupyter_server_mcp"
    mcp_port = Int(3001, help="As jupyter_server_mcp.extension.MCPExtensionApp's.").tag(config=True)


def _jupyter_server_extension_points() -> list[dict[str, object]]:
    return [{"module": "support.standin_mcp", "app": MCPExtensionApp}]
