"""In-process publish/subscribe of broker events, for the websocket and for long-polls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class EventBus:
    """Fan-out of events to subscriber queues. A slow subscriber loses its oldest events,
    never blocks the broker."""

    def __init__(self, maxsize: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._maxsize = maxsize
        # Sees every event first (the broker writes alerts to the audit log through it).
        self.observer: Callable[[dict[str, Any]], None] | None = None

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._maxsize)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subscribers.discard(q)

    def publish(self, event: dict[str, Any]) -> None:
        if self.observer is not None:
            self.observer(event)
        for q in list(self._subscribers):
            if q.full():
                try:
                    q.get_nowait()
                except asyncio.QueueEmpty:
                    pass
            q.put_nowait(event)


class JobWaiters:
    """Wake long-polls waiting on a particular job when it changes."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def register(self, job_id: str) -> asyncio.Event:
        ev = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(ev)
        return ev

    def unregister(self, job_id: str, ev: asyncio.Event) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(ev)
            if not waiters:
                del self._waiters[job_id]

    def notify(self, job_id: str) -> None:
        for ev in self._waiters.get(job_id, ()):
            ev.set()
