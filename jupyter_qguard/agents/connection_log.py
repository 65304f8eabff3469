"""The records of an agent run's connections, on their way to the server's audit log.

The egress proxy and the Jupyter forwarder add one record per connection; they are sent in
batches (every second, or as soon as a batch is full) to the run's `connections` route, which
writes one audit entry each. Fail closed: while a batch cannot be delivered (the server is
down, its audit log refuses), `refusing()` says why and the proxy and forwarder refuse new
connections; the CLI says so on stderr once when it starts and once when it is over. Records
are kept (up to a bound) and sent again, refusals included. Each record is numbered (`seq`),
so a batch sent again after its answer was lost is written once, and closing lets a delivery
under way finish instead of cancelling it halfway (which would send it twice).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

Deliver = Callable[[list[dict[str, Any]], int], Awaitable[None]]


class DeliveryFailed(Exception):
    """The server did not take a batch; the message says why, in one line."""


class ConnectionLog:
    def __init__(
        self,
        deliver: Deliver,
        log: logging.Logger,
        *,
        interval: float = 1.0,
        batch: int = 200,
        max_pending: int = 10_000,
    ) -> None:
        self._deliver = deliver
        self.log = log
        self.interval = interval
        self.batch = batch
        self.max_pending = max_pending
        self._pending: list[dict[str, Any]] = []
        self._dropped = 0
        self._failing: str | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        self.delivered = 0
        # add() comes from the relays' connection threads; the rest runs on the event loop.
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def refusing(self) -> str | None:
        return self._failing

    def add(self, record: dict[str, Any]) -> None:
        """Queue a record; thread-safe. The loop is woken only when a batch is full."""
        if self._closed:
            self.log.warning("a connection record came after the run's were sent: %s", record)
            return
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._dropped += 1  # told to the server (and so to the log) with the next batch
                return
            self._pending.append({**record, "seq": self._seq})
            self._seq += 1
            full = len(self._pending) >= self.batch
        if full and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:
                pass  # the loop is closed: close() has sent what it could already

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if not self._closing:
                await self.send_pending()

    async def send_pending(self) -> bool:
        """Deliver what is pending, batch by batch; False at the first batch refused."""
        while True:
            with self._lock:
                batch, dropped = self._pending[: self.batch], self._dropped
            if not batch and not dropped:
                return True
            try:
                await self._deliver(batch, dropped)
            except DeliveryFailed as exc:
                if self._failing is None:
                    self.log.error(
                        "the server does not take this run's connection records (%s): new "
                        "connections are refused until it does",
                        exc,
                    )
                self._failing = str(exc)
                return False
            with self._lock:
                del self._pending[: len(batch)]  # records added meanwhile stay, behind them
                self._dropped -= dropped
            self.delivered += len(batch)
            if self._failing is not None:
                self.log.warning("connection records are delivered again: connections allowed")
                self._failing = None

    async def close(self, timeout: float = 10.0) -> bool:
        """Stop the loop and deliver what is left (trying until `timeout`); whether all was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._task is not None:
            # Let a delivery under way end (cancelled halfway, the server may have written
            # the batch without the CLI knowing); the loop stops after it.
            self._closing = True
            self._wake.set()
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                pass  # the batch stays pending: sent again below, written once by its seq
        try:
            while not await self.send_pending():
                if loop.time() >= deadline:
                    self.log.error(
                        "%d connection records of this run could not be delivered: %s",
                        len(self._pending),
                        self._failing,
                    )
                    return False
                await asyncio.sleep(0.5)
            return True
        finally:
            self._closed = True
