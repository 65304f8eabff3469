"""Real program workers for providers built directly in tests: a real AerProvider's pool,
confined as the server's are (the settings app.py hands the broker by default); and a tripwire
on this process's program loaders, for tests that show a provider leaves parsing to them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import qiskit

from jupyter_qguard.providers import aer_worker
from jupyter_qguard.providers.aer import AerProvider
from jupyter_qguard.sandbox import rlimits
from jupyter_qguard.sandbox.environment import DEFAULT_ALLOWLIST


class ProgramWorkers:
    """What a provider's `programs` is in the server (AerProvider.call), with the pool on an
    event loop of its own thread: each test runs on a loop of its own, and a worker (a sandbox
    and Qiskit's import) is started once per module rather than once per test."""

    def __init__(self) -> None:
        self.aer = AerProvider(workers=1)
        self.aer.sandbox = {"rlimits": rlimits.defaults(), "env_allowlist": list(DEFAULT_ALLOWLIST)}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.calls: list[str] = []

    async def call(self, fn: str, *args: Any, timeout: float | None = None) -> Any:
        self.calls.append(fn)
        future = asyncio.run_coroutine_threadsafe(
            self.aer.call(fn, *args, timeout=timeout), self.loop
        )
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.aer.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def program_workers() -> Iterator[ProgramWorkers]:
    workers = ProgramWorkers()
    try:
        yield workers
    finally:
        workers.close()


@pytest.fixture
def programs(program_workers: ProgramWorkers) -> ProgramWorkers:
    """The module's workers, with this test's calls recorded from nothing."""
    program_workers.calls = []
    return program_workers


@pytest.fixture
def nothing_parsed_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every program loader of this process (the server's) fails the test if it is called."""

    def tripwire(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a program was parsed in the server process")

    monkeypatch.setattr(aer_worker, "load_circuit", tripwire)
    monkeypatch.setattr(qiskit.qpy, "load", tripwire)
    monkeypatch.setattr(qiskit.qasm2, "loads", tripwire)
    monkeypatch.setattr(qiskit.qasm3, "loads", tripwire)
