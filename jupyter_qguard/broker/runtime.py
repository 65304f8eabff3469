"""The broker running in this server process, for the kernel provisioner to find.

jupyter_client creates provisioners itself, with no handle on server extensions, so the
extension publishes its broker here when it starts and withdraws it when it stops. No broker
means no agent kernel: the provisioner refuses to launch rather than start one unguarded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import Broker

_current: Broker | None = None


class BrokerNotRunning(RuntimeError):
    pass


def set_current(broker: Broker | None) -> None:
    global _current
    _current = broker


def current() -> Broker:
    if _current is None:
        raise BrokerNotRunning(
            "The qguard broker is not running in this Jupyter server, so a qguard agent kernel "
            "cannot start. Start JupyterLab or Jupyter Server with the jupyter_qguard server "
            "extension enabled (`jupyter server extension list` shows it)."
        )
    return _current
