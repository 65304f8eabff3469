"""Code that runs inside agent kernels. It never imports broker or credential code: all it
can do is ask the broker over the kernel's own channel."""

from typing import Any

__all__ = ["backends", "get_backend"]


def get_backend(name: str) -> Any:
    """A broker backend as a Qiskit BackendV2 (`transpile` to it; `run` waits for approval)."""
    from .qiskit_backend import get_backend as _get

    return _get(name)


def backends() -> list[Any]:
    """Every backend the broker offers this kernel, as Qiskit BackendV2 objects."""
    from .qiskit_backend import backends as _all

    return _all()
