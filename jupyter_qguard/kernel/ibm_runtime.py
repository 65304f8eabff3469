"""Code written for qiskit-ibm-runtime, run unchanged in the agent kernel, through the broker.

In an agent kernel, `qiskit_ibm_runtime.QiskitRuntimeService` is this module's class (patched in
when the agent imports qiskit_ibm_runtime): it holds no token and never reaches the network.
Supported:

- `QiskitRuntimeService(...)` with any arguments (a token given is not used: the broker has the
  credential); `service.backend(name)`, `service.backends(...)`, `service.least_busy(...)`;
  `service.active_account()`, `service.saved_accounts()`, `service.channel`;
- on the backends it returns (QGuardBackend): `SamplerV2(mode=backend)` and
  `EstimatorV2(mode=backend)` of qiskit-ibm-runtime, whose `.run([pub])` runs each circuit as a
  broker job (waiting for approval on hardware) and whose `job.result()` has the usual shape;
  `transpile(circuit, backend)` and `generate_preset_pass_manager(backend=backend)` work on the
  device's calibration snapshot.

Everything else of the service (sessions and batches on IBM's side, `service.job(id)`,
`service.jobs()`, `save_account`, `delete_account`, `instances()`, ...) raises
`QGuardUnsupported` naming what to use instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .client import QGuardError

if TYPE_CHECKING:
    # Imported when first used: qiskit at kernel start would slow every agent kernel's start.
    from .qiskit_backend import QGuardBackend

SUPPORTED = (
    "QiskitRuntimeService(...), service.backend(name), service.backends(), "
    "service.least_busy(), SamplerV2(mode=backend), EstimatorV2(mode=backend)"
)


class QGuardUnsupported(QGuardError, NotImplementedError):
    """A qiskit-ibm-runtime call the guarded kernel does not offer."""


class QiskitRuntimeService:
    """Stands where qiskit_ibm_runtime.QiskitRuntimeService stands, in an agent kernel."""

    channel = "qguard"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("token"):
            warnings.warn(
                "qguard: the token given to QiskitRuntimeService is not used; the broker holds "
                "the credential and submits approved jobs itself",
                stacklevel=2,
            )
        self._backends: list[QGuardBackend] | None = None

    def __repr__(self) -> str:
        return "<QiskitRuntimeService (qguard broker)>"

    def _all(self) -> list[QGuardBackend]:
        if self._backends is None:
            from .qiskit_backend import backends

            self._backends = backends()
        return self._backends

    def backends(
        self,
        name: str | None = None,
        min_num_qubits: int | None = None,
        operational: bool | None = None,
        simulator: bool | None = None,
        **_filters: Any,
    ) -> list[QGuardBackend]:
        found = self._all()
        if name is not None:
            found = [b for b in found if b.name == name]
        if min_num_qubits is not None:
            found = [b for b in found if (b.info.get("qubits") or 0) >= min_num_qubits]
        if simulator is not None:
            found = [b for b in found if (b.info.get("tier") == "simulator") == simulator]
        if operational:
            found = [b for b in found if b.info.get("status") in (None, "online")]
        return found

    def backend(self, name: str | None = None, **_kwargs: Any) -> QGuardBackend:
        if name is None:
            raise QGuardUnsupported("service.backend() needs a backend name in a qguard kernel")
        found = self.backends(name=name)
        if not found:
            names = ", ".join(sorted(b.name for b in self._all()))
            raise QGuardUnsupported(f"no backend {name!r} here; the broker offers: {names}")
        return found[0]

    def least_busy(
        self, min_num_qubits: int | None = None, simulator: bool | None = False, **kwargs: Any
    ) -> QGuardBackend:
        found = self.backends(min_num_qubits=min_num_qubits, simulator=simulator, **kwargs)
        if not found:
            raise QGuardUnsupported("no backend of the broker matches these filters")
        # The broker does not report queue lengths: the first match, by name.
        return sorted(found, key=lambda b: b.name)[0]

    def active_account(self) -> dict[str, Any]:
        return {"channel": "qguard", "token": None, "instance": None}

    @staticmethod
    def saved_accounts(*_args: Any, **_kwargs: Any) -> dict[str, Any]:
        return {}

    @staticmethod
    def save_account(*_args: Any, **_kwargs: Any) -> None:
        raise QGuardUnsupported(
            "save_account: credentials stay with the broker (`jupyter qguard credentials set "
            "ibm`, run by a person outside the agent kernel)"
        )

    def __getattr__(self, name: str) -> Any:
        raise QGuardUnsupported(
            f"QiskitRuntimeService.{name} is not available in a qguard agent kernel; "
            f"supported: {SUPPORTED}"
        )


def patch(module: ModuleType) -> None:
    """Point the package's service at ours (the primitives stay qiskit-ibm-runtime's own)."""
    module.QiskitRuntimeService = QiskitRuntimeService  # type: ignore[attr-defined]
    service_module = sys.modules.get("qiskit_ibm_runtime.qiskit_runtime_service")
    if service_module is not None:
        service_module.QiskitRuntimeService = QiskitRuntimeService  # type: ignore[attr-defined]


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches qiskit_ibm_runtime right after it is first imported: importing it at kernel start
    would cost every kernel a second and a half."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "qiskit_ibm_runtime":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            patch(module)

        loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec


def install() -> None:
    if "qiskit_ibm_runtime" in sys.modules:
        patch(sys.modules["qiskit_ibm_runtime"])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())
