"""Whether a kernelspec runs under the qguard provisioner: read from the spec's metadata and
resolved through jupyter_client's provisioner entry points. A spec that is merely *named*
qguard-agent is not enough, and one that names a provisioner extending qguard's is."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from ..sandbox.provisioner import QGuardProvisioner


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


def runs_under_qguard(kernel_spec_manager: Any, name: Any) -> bool:
    """The kernelspec `name` exists and names a qguard provisioner."""
    if not isinstance(name, str) or not name:
        return False
    try:
        spec = kernel_spec_manager.get_kernel_spec(name)
    except Exception:  # no such kernelspec (NoSuchKernel), or one that cannot be read
        return False
    provisioner = (spec.metadata or {}).get("kernel_provisioner", {})
    return provisioner.get("provisioner_name") in qguard_provisioner_names()
