"""Throughput of `jupyter qguard agent run`'s egress proxy: a 10 MB download from a loopback
stand-in, by a confined agent through the proxy, against the same download made directly
(issue 19 target: ratio of the times ≤ 1.5). Median of 40 downloads each, same client code,
same stand-in, one run; in five rounds that alternate the two sides, so that the machine's
drift (a download takes 3 ms or 11 ms here depending on the minute) weighs on both alike; and
the best download of each side, the fixed cost without the neighbours' noise."""

from __future__ import annotations

import http.server
import json
import statistics
import subprocess
import sys
import threading

from common import compare, fig, record
from support.agent_run import MODEL_HOST, RunWorld

SIZE = 10 * 1000 * 1000
DOWNLOADS = 8
ROUNDS = 5
BODY = b"q" * SIZE
# The downloader: the same code on both sides (urllib takes HTTP_PROXY from the environment
# inside the run; outside there is none). It lets the machine settle first (inside the run,
# the server is still recording the run's start: the first downloads took 2-3x the rest) and
# makes one download untimed. Prints one JSON list of seconds.
CLIENT_CODE = f"""
import json, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
def download():
    with urllib.request.urlopen(url, timeout=120) as r:
        size = len(r.read())
    assert size == {SIZE}, size
time.sleep(1.0)
download()
out = []
for _ in range(n):
    t = time.perf_counter()
    download()
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""


class Big(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(SIZE))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    stand_in = http.server.ThreadingHTTPServer((MODEL_HOST, 0), Big)
    threading.Thread(target=stand_in.serve_forever, daemon=True).start()
    addr = f"{MODEL_HOST}:{stand_in.server_address[1]}"
    url = f"http://{addr}/model.bin"
    world = RunWorld("root").build()
    try:
        world.start()
        script = world.base / "download.py"
        script.write_text(CLIENT_CODE)
        manifest = world.base / "bench-manifest.yaml"
        manifest.write_text(world.manifest.read_text().replace(world.model_addr, addr))
        proxied: list[float] = []
        direct: list[float] = []
        for _ in range(ROUNDS):
            done = world.run(
                "--name",
                "bench-proxy",
                "--manifest",
                str(manifest),
                "--read",
                str(script),
                command=[world.python, str(script), url, str(DOWNLOADS)],
                stdin=subprocess.DEVNULL,
                timeout=900,
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.decode(errors="replace")[-3000:])
            proxied += json.loads(done.stdout.decode().splitlines()[-1])
            direct_run = subprocess.run(
                [sys.executable, "-I", str(script), url, str(DOWNLOADS)],
                capture_output=True,
                text=True,
                timeout=900,
            )
            direct += json.loads(direct_run.stdout.splitlines()[-1])
    finally:
        world.stop()
        stand_in.shutdown()
    plain, guarded = statistics.median(direct), statistics.median(proxied)

    record(
        "egress_proxy",
        f"a {SIZE // 1_000_000} MB download from a loopback stand-in, median of "
        f"{ROUNDS * DOWNLOADS} in {ROUNDS} alternating rounds (and the best of each): "
        "made directly (plain) and by an agent under `jupyter qguard agent run`, through its "
        "egress proxy (qguard); the same urllib client on both sides",
        {
            **compare(plain * 1000, guarded * 1000, "ms", target_ratio=1.5, digits=3),
            "best_plain": fig(round(min(direct) * 1000, 1), "ms"),
            "best_qguard": fig(round(min(proxied) * 1000, 1), "ms"),
            "best_ratio": fig(round(min(proxied) / min(direct), 3), "x"),
            "proxied_throughput": fig(round(SIZE / guarded / 1e6, 1), "MB/s"),
        },
    )


if __name__ == "__main__":
    main()
