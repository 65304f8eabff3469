"""Device calibration snapshots shipped with qiskit-ibm-runtime (FakeBrisbane, FakeTorino, ...),
found by backend name. Shared by the broker's simulator workers, the fake cloud and the agent
kernel (which may import this module: it holds nothing of the broker)."""

from __future__ import annotations


def snapshot_class(name: str) -> type:
    """The fake-backend class whose `backend_name` is `name` (`fake_brisbane`, ...)."""
    from qiskit_ibm_runtime import fake_provider
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    # By the class attribute: FakeProviderForBackendV2() would build all ~60 devices.
    for cls in vars(fake_provider).values():
        if (
            isinstance(cls, type)
            and issubclass(cls, FakeBackendV2)
            and getattr(cls, "backend_name", None) == name
        ):
            return cls
    raise ValueError(f"no calibration snapshot named {name!r} is installed")
