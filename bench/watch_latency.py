"""The workspace change feed in a 10,000-file workspace (issue 7 targets: write → its diff
available over REST p95 ≤ 300 ms; the watcher's resident memory ≤ 150 MB).

A real `jupyter server` with the extension: 100 writes, each timed from the write until
GET /qguard/api/changes/{id} returns its diff. The watcher's memory is the server's resident
set with the watcher on, less the same server's with it off.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from common import fig, percentile, record, settled_rss
from support.jupyter_proc import ServerProcess

FILES = 10_000
WRITES = 100


def fill(root: Path) -> None:
    for i in range(FILES):
        d = root / f"dir{i // 500:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i:05d}.py").write_text(f"# file {i}\nx = {i}\n")


async def first_reported_write(server: ServerProcess) -> int:
    """Write a file until the feed reports it; the id of that change."""
    sentinel = server.root / "sentinel.txt"
    for attempt in range(600):
        sentinel.write_text(f"attempt {attempt}\n")
        for _ in range(20):
            rows = (await server.json("qguard/api/changes?limit=1000"))["changes"]
            seen = [r["id"] for r in rows if r["path"] == "sentinel.txt"]
            if seen:
                return max(r["id"] for r in rows)
            await asyncio.sleep(0.05)
    raise TimeoutError("the watcher reported no change")


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qg-bench-watch-") as tmp:
        base = Path(tmp)
        off = ServerProcess(base / "off", extra_args=["--QGuardApp.watch_enabled=False"])
        fill(off.root)
        off.start()
        try:
            rss_off = await settled_rss(off)
        finally:
            off.stop()

        server = ServerProcess(base / "on")
        fill(server.root)
        started = time.monotonic()
        server.start()
        try:
            rss_on = await settled_rss(server)
            ready = time.monotonic() - started
            # The watcher's first scan of 10,000 files may still be running: a write it reads as
            # part of its baseline is no change. Time only writes made once one is reported.
            last = await first_reported_write(server)
            latencies = []
            for i in range(WRITES):
                path = server.root / f"dir{i % 20:02d}" / f"file{i:05d}.py"
                t = time.monotonic()
                path.write_text(f"# file {i}\nx = {i}\ny = {i * 2}\n")
                rel = path.relative_to(server.root).as_posix()
                change = None
                while change is None:
                    rows = (await server.json(f"qguard/api/changes?since={last}"))["changes"]
                    change = next((r for r in rows if r["path"] == rel), None)
                    if change is None:
                        await asyncio.sleep(0.01)
                detail = await server.json(f"qguard/api/changes/{change['id']}")
                assert detail["diff"]["kind"] == "text"
                latencies.append((time.monotonic() - t) * 1000)
                last = change["id"]
        finally:
            server.stop()
    record(
        "watch_write_to_diff",
        f"A file written in a {FILES:,}-file workspace until its diff is served over REST "
        f"({WRITES} writes); the watcher's memory",
        {
            "p50": fig(round(statistics.median(latencies), 1), "ms"),
            "p95": fig(round(percentile(latencies, 95), 1), "ms", target=300),
            "max": fig(round(max(latencies), 1), "ms"),
            "server_ready": fig(round(ready, 2), "s"),
            "watcher_rss": fig(round(rss_on - rss_off, 1), "MB", target=150),
            "server_rss_watch_on": fig(round(rss_on, 1), "MB"),
            "server_rss_watch_off": fig(round(rss_off, 1), "MB"),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
