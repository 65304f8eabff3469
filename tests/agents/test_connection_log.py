"""The CLI's queue of connection records (agents/connection_log.py): numbered, delivered once
even when the run ends while a batch is on its way, and kept while the server refuses."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from jupyter_qguard.agents.connection_log import ConnectionLog, DeliveryFailed

LOG = logging.getLogger("test")


class SlowServer:
    """Writes a batch at once and answers late, like a server under load: a batch whose
    delivery is cancelled after the write has been written all the same."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.written: list[int] = []
        self.refuse = False

    async def deliver(self, records: list[dict[str, Any]], dropped: int) -> None:
        if self.refuse:
            raise DeliveryFailed("HTTP 503: the audit log is not available")
        self.written += [r["seq"] for r in records]
        await asyncio.sleep(self.delay)


async def test_ending_the_run_mid_delivery_sends_each_record_once() -> None:
    server = SlowServer(delay=0.3)
    records = ConnectionLog(server.deliver, LOG, interval=0.05, batch=1)
    records.start()
    records.add({"via": "proxy", "allowed": False})
    await asyncio.sleep(0.1)  # the loop is waiting for the server's answer
    assert server.written == [0]
    assert await records.close() is True
    assert server.written == [0]
    assert records.delivered == 1


async def test_records_are_numbered_and_kept_while_the_server_refuses() -> None:
    server = SlowServer(delay=0)
    server.refuse = True
    records = ConnectionLog(server.deliver, LOG, interval=0.05)
    for allowed in (True, False, True):
        records.add({"via": "proxy", "allowed": allowed})
    assert await records.send_pending() is False
    assert records.refusing() == "HTTP 503: the audit log is not available"
    server.refuse = False
    assert await records.close(timeout=2) is True
    assert server.written == [0, 1, 2]
    assert records.refusing() is None


async def test_records_added_from_many_threads_are_each_delivered_once_in_order(caplog) -> None:
    # The relays add a record from each connection's own thread, while the loop delivers.
    server = SlowServer(delay=0.001)
    records = ConnectionLog(server.deliver, LOG, interval=0.01, batch=50)
    records.start()

    def connections(n: int) -> None:
        for i in range(500):
            records.add({"via": "proxy", "thread": n, "i": i})

    threads = [threading.Thread(target=connections, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    assert await records.close() is True
    assert server.written == list(range(4000))
    assert records.delivered == 4000
    # After close, a straggler is not queued where nobody sends it: it is logged.
    records.add({"via": "proxy"})
    assert records.delivered == 4000 and server.written == list(range(4000))
    assert caplog.messages[-1] == (
        "a connection record came after the run's were sent: {'via': 'proxy'}"
    )
