"""The files a job depends on are the agent's (issue 18): a FIFO, a 2 GiB sparse file, a file
over the cap, a socket and links out of the workspace are refused at submission with their
reason, and a 100 MiB notebook is hashed by its code cells (in the hashing worker process),
while another client lists jobs and every listing stays fast.

The end-to-end tests drive a real `jupyter server` with the extension and a real agent kernel
submitting through its channel. With the old code (a blocking read_bytes() on the broker's one
database thread, links followed) the FIFO blocked every listing for good, the sparse and the
big file stalled them for seconds, the link was read, and the notebook's JSON held the GIL.
The hostile files are made by the test, beside the kernel: what the broker reads is the
workspace, whoever left it so.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from support.helpers import BELL, big_notebook
from support.jupyter_proc import KernelWS, ServerProcess
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jupyter_qguard.broker import hashing
from jupyter_qguard.broker.filehash import canonical_json as light_canonical_json
from jupyter_qguard.broker.filehash import hash_bytes, notebook_code_hash
from jupyter_qguard.broker.hashing import BoundFileHasher, BoundFileRefused
from jupyter_qguard.broker.jobs import InvalidRequest, canonical_json
from jupyter_qguard.broker.service import Broker
from jupyter_qguard.broker.store import Store, sqlite_url
from jupyter_qguard.hub.forwarder import ForwardingBroker
from jupyter_qguard.kernel.jobs import encode_qasm
from jupyter_qguard.policy.engine import PolicyEngine

PACK = str(Path(__file__).resolve().parents[1] / "policies")
HW = [
    "--QGuardApp.backends={'aer_hw': {'provider': 'aer', 'qubits': 28}}",
    "--QGuardApp.policy_data={'backends': {'aer_hw': {'tier': 'hardware', 'provider': 'aer'}}}",
]
# Every listing while the agent's file is hashed (or refused): none slower than the first
# figure, 95% of them faster than the second. A listing takes ~10 ms on 2 cores (the bench's
# target is p95 <= 50 ms); the p95 bound leaves room for 2 cores shared with other test runs.
# With the old code the FIFO held every listing for good, the 2 GiB file for >20 s, the 200 MiB
# file ~0.9 s and the notebook ~4 s (measured on this machine): the first bound catches each.
LISTING_MAX_MS = 250
LISTING_P95_MS = 100
LINK_REASON = (
    "is a symbolic link, or goes through one; trusted code does not follow links in the workspace"
)
MIB = 1 << 20


# -- a real server and an agent kernel -------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = ServerProcess(tmp_path_factory.mktemp("bound-files"), extra_args=HW).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kernel_id(server: ServerProcess) -> str:
    """One agent kernel for the module; each test talks to it over its own websocket."""

    async def start() -> str:
        kernel = await server.start_kernel()
        kernel.close()
        await settle(server)
        return kernel.id

    return asyncio.run(start())


async def connect(server: ServerProcess, kernel_id: str) -> KernelWS:
    kernel = KernelWS(kernel_id, await server.websocket(f"api/kernels/{kernel_id}/channels"))
    await kernel.wait_ready()
    res = await kernel.run(BELL + "from jupyter_qguard.kernel.jobs import submit\n")
    assert res["error"] is None, res
    return kernel


async def listing(server: ServerProcess) -> tuple[float, list[dict[str, Any]]]:
    """One `GET /qguard/api/jobs` as the panel makes it: (milliseconds, jobs)."""
    request = HTTPRequest(
        f"{server.url}/qguard/api/jobs?limit=50",
        headers={"Authorization": f"token {server.token}"},
        request_timeout=20,
    )
    started = time.monotonic()
    response = await AsyncHTTPClient().fetch(request)
    return (time.monotonic() - started) * 1000, json.loads(response.body)["jobs"]


async def settle(server: ServerProcess, timeout: float = 90) -> None:
    """Until the server's start-up work is done (the Aer workers' warm-up, the watcher's first
    scan, the kernel's start take the 2 cores for seconds) or the watcher has looked at a new
    file: 20 fast listings in a row (or `timeout`)."""
    deadline = time.monotonic() + timeout
    fast = 0
    while fast < 20 and time.monotonic() < deadline:
        ms, _ = await listing(server)
        fast = fast + 1 if ms < 25 else 0
        await asyncio.sleep(0.05)


async def while_listing(server: ServerProcess, work: Any) -> tuple[Any, list[float]]:
    """Run `work` (a coroutine) while another client lists jobs in a loop; its result and
    the latency of every listing made meanwhile (at least 20, and for 0.5 s after it)."""
    await listing(server)  # the connection is made before the clock runs
    latencies: list[float] = []
    done = asyncio.Event()

    async def lister() -> None:
        ended = None
        while ended is None or time.monotonic() - ended < 0.5 or len(latencies) < 20:
            ms, _ = await listing(server)
            latencies.append(ms)
            await asyncio.sleep(0.01)
            if ended is None and done.is_set():
                ended = time.monotonic()

    task = asyncio.ensure_future(lister())
    try:
        result = await work
    finally:
        done.set()
    await asyncio.wait_for(task, 60)
    return result, latencies


def assert_fast(latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    print(f"{len(ordered)} listings: median {ordered[len(ordered) // 2]:.1f} ms, p95 {p95:.1f} ms")
    assert len(ordered) >= 20
    assert ordered[-1] < LISTING_MAX_MS, f"slowest listing {ordered[-1]:.0f} ms: {ordered}"
    assert p95 < LISTING_P95_MS, f"p95 {p95:.0f} ms: {ordered}"


# -- refusals ----------------------------------------------------------------------------------


def _fifo(root: Path, base: Path) -> str:
    os.mkfifo(root / "pipe")  # no writer, ever: a blocking open or read would wait for good
    return "pipe"


def _sparse(root: Path, base: Path) -> str:
    with open(root / "sparse.bin", "wb") as f:
        f.truncate(2 << 30)
    return "sparse.bin"


def _over_cap(root: Path, base: Path) -> str:
    block = b"\x5a" * MIB
    with open(root / "data.bin", "wb") as f:
        for _ in range(200):
            f.write(block)
    return "data.bin"


def _socket(root: Path, base: Path) -> str:
    # Held open for the module: a listening unix socket in the workspace.
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "agent.sock"))
    sock.listen()
    _KEEP.append(sock)
    return "agent.sock"


def _link_out(root: Path, base: Path) -> str:
    secret = base / "outside-secret.txt"
    secret.write_text("aws_secret_access_key = not-for-the-agent\n")
    (root / "creds.json").symlink_to(secret)
    return "creds.json"


def _through_linked_dir(root: Path, base: Path) -> str:
    outside = base / "outside-dir"
    outside.mkdir()
    (outside / "config").write_text("token = not-for-the-agent\n")
    (root / "dotaws").symlink_to(outside, target_is_directory=True)
    return "dotaws/config"


_KEEP: list[socket.socket] = []

REFUSALS = {
    "fifo": (_fifo, "pipe: is a FIFO; only regular files are read"),
    "sparse-2GiB": (
        _sparse,
        "sparse.bin: is 2048 MiB, over the limit of 128 MiB for a file a job depends on",
    ),
    "200MiB": (
        _over_cap,
        "data.bin: is 200 MiB, over the limit of 128 MiB for a file a job depends on",
    ),
    "socket": (_socket, "agent.sock: is a socket, not a regular file"),
    "symlink-out": (_link_out, f"creds.json: {LINK_REASON}"),
    "through-linked-dir": (_through_linked_dir, f"dotaws/config: {LINK_REASON}"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_a_hostile_bound_file_is_refused_while_listings_stay_fast(server, kernel_id, case):
    make, reason = REFUSALS[case]
    rel = make(server.root, server.base)
    kernel = await connect(server, kernel_id)
    await settle(server)  # the watcher's look at the new file is not what is measured
    try:
        _, before = await listing(server)
        res, latencies = await while_listing(
            server,
            kernel.run(f"job = submit(bell, backend='aer_hw', shots=10, files={{{rel!r}: None}})"),
        )
        assert_fast(latencies)
        # The request is refused, in one line saying why; nothing is stored.
        assert res["error"] == {
            "ename": "QGuardError",
            "evalue": f"invalid job request: files: {reason}",
        }
        _, after = await listing(server)
        assert [j["id"] for j in after] == [j["id"] for j in before]
        # The broker is not wedged: the next request (a plain bound file) is taken at once.
        (server.root / "ok.txt").write_text(case)
        res = await kernel.run(
            "job = submit(bell, backend='aer_hw', shots=10, files={'ok.txt': None})\n"
            "print(job.job_id)"
        )
        assert res["error"] is None, res
        job = await server.json(f"qguard/api/jobs/{res['stdout'].split()[-1]}")
        assert job["files"] == {"ok.txt": hash_bytes("ok.txt", case.encode())}
    finally:
        kernel.close()


# -- a 100 MiB notebook ------------------------------------------------------------------------


async def until(server: ServerProcess, job_id: str, state: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await server.json(f"qguard/api/jobs/{job_id}")
        if job["state"] == state:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} is {job['state']}, not {state}")


async def test_a_100_mib_notebook_is_hashed_while_listings_stay_fast(server, kernel_id):
    data = big_notebook(100 * MIB)
    assert 100 * MIB <= len(data) < 128 * MIB
    (server.root / "long.ipynb").write_bytes(data)
    want = notebook_code_hash(data)
    kernel = await connect(server, kernel_id)
    await settle(server)
    try:
        res, latencies = await while_listing(
            server,
            kernel.run(
                "job = submit(bell, backend='aer_hw', shots=10, files={'long.ipynb': None})\n"
                "print(job.job_id)"
            ),
        )
        assert res["error"] is None, res
        assert_fast(latencies)
        job = await until(server, res["stdout"].split()[-1], "pending_approval")
        assert job["files"] == {"long.ipynb": want}

        # Approved: the last look before submission hashes it again, as fast for the others.
        async def approve_and_finish() -> dict:
            r = await server.fetch(
                f"qguard/api/jobs/{job['id']}/approve",
                method="POST",
                body={"digest": job["digest"]},
            )
            assert r.code == 200
            return await until(server, job["id"], "completed")

        done, latencies = await while_listing(server, approve_and_finish())
        assert [e["to"] for e in done["events"]][-3:] == ["queued", "submitted", "completed"]
        assert_fast(latencies)
    finally:
        kernel.close()


# -- the hasher on its own -----------------------------------------------------------------------


def test_the_light_canonical_json_is_the_jobs_one():
    value = {"b": [1, "é", None], "a": {"z": 1.5, "y": True}}
    assert light_canonical_json(value) == canonical_json(value)


def test_refusals_say_why_in_one_sentence(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    os.mkfifo(root / "pipe")
    (root / "dir").mkdir()
    (root / "a.txt").write_text("a")
    (root / "link").symlink_to(root / "a.txt")  # even to a file inside: links are not followed
    hasher = BoundFileHasher(str(root), max_bytes=1000)
    (root / "k.bin").write_bytes(b"k" * 1001)
    big = BoundFileHasher(str(root), max_bytes=2 * MIB)
    with open(root / "m.bin", "wb") as f:
        f.truncate(2 * MIB + 1)
    with pytest.raises(BoundFileRefused) as info:
        big.hash("m.bin")  # a byte too many is not rounded onto the limit
    assert str(info.value) == (
        "m.bin: is 2097153 bytes, over the limit of 2 MiB for a file a job depends on"
    )
    big.close()
    cases = {
        "pipe": ("not_regular", "pipe: is a FIFO; only regular files are read"),
        "dir": ("not_regular", "dir: is a directory; only regular files are read"),
        "link": ("symlink", f"link: {LINK_REASON}"),
        "missing.txt": ("missing", "missing.txt: does not exist"),
        "../a.txt": ("outside", "../a.txt: must be a path inside the workspace"),
        "/etc/passwd": ("outside", "/etc/passwd: must be a path inside the workspace"),
        ".": ("outside", ".: must name a file inside the workspace"),
        "k.bin": (
            "too_large",
            "k.bin: is 1001 bytes, over the limit of 1000 bytes for a file a job depends on",
        ),
    }
    for rel, (code, message) in cases.items():
        with pytest.raises(BoundFileRefused) as info:
            hasher.hash(rel)
        assert (info.value.code, str(info.value)) == (code, message), rel
        assert hasher.hash_or_none(rel) is None
    with pytest.raises(BoundFileRefused) as info:
        hasher.hash("./")
    assert str(info.value) == "./: must name a file inside the workspace"
    assert hasher.hash("./a.txt") == hash_bytes("a.txt", b"a")
    # Named by any spelling, a notebook is hashed as a notebook (its code cells).
    nb = json.dumps({"cells": [{"cell_type": "code", "source": "x = 1"}]}).encode()
    (root / "n.ipynb").write_bytes(nb + b"\n\n")
    assert hasher.hash("./n.ipynb/.") == notebook_code_hash(nb)
    hasher.close()


def test_a_device_is_refused():
    hasher = BoundFileHasher("/dev")
    with pytest.raises(BoundFileRefused) as info:
        hasher.hash("null")
    assert str(info.value) == "null: is a character device; only regular files are read"
    hasher.close()


def test_notebooks_small_in_a_thread_big_in_the_worker_and_equal(tmp_path):
    small = big_notebook(200_000)
    big = big_notebook(3 * MIB)
    (tmp_path / "small.ipynb").write_bytes(small)
    (tmp_path / "big.ipynb").write_bytes(big)
    (tmp_path / "broken.ipynb").write_bytes(b'{"cells": [' * 3 * MIB)  # not JSON: its bytes
    hasher = BoundFileHasher(str(tmp_path))
    try:
        assert hasher.hash("small.ipynb") == notebook_code_hash(small)
        assert hasher.workers_started == 0
        assert hasher.hash("big.ipynb") == notebook_code_hash(big)
        assert hasher.workers_started == 1
        assert hasher.hash("broken.ipynb") == hash_bytes(
            "broken.ipynb", (tmp_path / "broken.ipynb").read_bytes()
        )
        # Outputs and metadata are not what a notebook's hash binds.
        edited = json.loads(big)
        edited["cells"][0]["outputs"] = []
        edited["metadata"]["kernelspec"] = {"name": "qguard-agent"}
        (tmp_path / "big.ipynb").write_text(json.dumps(edited) + " " * 2 * MIB)
        assert hasher.hash("big.ipynb") == notebook_code_hash(big)
        assert hasher.workers_started == 1  # the same worker, kept
        # The worker opens the file itself, as the broker would: a link is refused there too.
        (tmp_path / "big.ipynb").unlink()
        (tmp_path / "big.ipynb").symlink_to(tmp_path / "small.ipynb")
        with pytest.raises(BoundFileRefused) as info:
            hasher.hash("big.ipynb")
        assert str(info.value) == f"big.ipynb: {LINK_REASON}"
    finally:
        hasher.close()


def test_a_notebook_too_slow_to_parse_is_refused_and_its_worker_replaced(tmp_path):
    data = big_notebook(60 * MIB)
    (tmp_path / "slow.ipynb").write_bytes(data)
    hasher = BoundFileHasher(str(tmp_path), timeout=0.05)
    try:
        with pytest.raises(BoundFileRefused) as info:
            hasher.hash("slow.ipynb")
        assert info.value.code == "timeout"
        assert str(info.value) == (
            "slow.ipynb: could not be hashed within 0.05 s, the time the files of one job may take"
        )
        hasher.timeout = 60
        assert hasher.hash("slow.ipynb") == notebook_code_hash(data)
        assert hasher.workers_started == 2  # the one stopped mid-parse, then a new one
    finally:
        hasher.close()


def test_a_worker_killed_mid_parse_is_replaced_and_the_hash_retried(tmp_path):
    import signal

    data = big_notebook(60 * MIB)
    (tmp_path / "long.ipynb").write_bytes(data)
    hasher = BoundFileHasher(str(tmp_path))
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.setdefault("sha", hasher.hash("long.ipynb")))
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not (hasher._pool and hasher._pool._processes) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        for pid in list(hasher._pool._processes):
            os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        thread.join(60)
        assert out["sha"] == notebook_code_hash(data)
        assert hasher.workers_started == 2
    finally:
        hasher.close()


def test_a_file_that_grows_past_the_cap_while_read_is_refused(tmp_path, monkeypatch):
    (tmp_path / "grows.bin").write_bytes(b"g" * 900)
    hasher = BoundFileHasher(str(tmp_path), max_bytes=1000)
    real_read = os.read

    def read_then_grow(fd: int, n: int) -> bytes:
        # The agent appends between the broker's fstat and its read.
        with open(tmp_path / "grows.bin", "ab") as f:
            f.write(b"g" * 500)
        return real_read(fd, n)

    monkeypatch.setattr(hashing.os, "read", read_then_grow)
    with pytest.raises(BoundFileRefused) as info:
        hasher.hash("grows.bin")
    assert str(info.value) == (
        "grows.bin: grew over the limit of 1000 bytes for a file a job depends on while being read"
    )
    hasher.close()


# -- the broker's three readers: submit, the re-hash before submission, the forwarder -------------


def broker_kwargs(root: Path, state: Path) -> dict[str, Any]:
    return {
        "store": Store(sqlite_url(str(state / "q.db"))),
        "backends": {},
        "providers": {},
        "workspace_root": str(root),
        "approval_ttl": 60.0,
        "wait_max_seconds": 5.0,
        "policy": PolicyEngine(PACK),
        "max_bound_file_bytes": 1000,
    }


def request(files: dict[str, str | None]) -> dict[str, Any]:
    return {
        "schema": "qguard.job/v1",
        "program": encode_qasm('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\n'),
        "backend": "aer_hw",
        "shots": 10,
        "seed": None,
        "max_cost": None,
        "files": files,
        "cell_id": None,
    }


def db_thread_free(broker: Broker) -> bool:
    """The database thread answers at once (nothing of the workspace's holds it)."""
    return broker._db_pool.submit(threading.get_ident).result(timeout=1) is not None


async def test_submit_and_the_last_look_never_use_the_database_thread(tmp_path):
    root, state = tmp_path / "ws", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    os.mkfifo(root / "pipe")
    (root / "a.txt").write_text("v1")
    broker = Broker(**broker_kwargs(root, state))
    try:
        with pytest.raises(InvalidRequest) as info:
            await broker.submit(request({"pipe": None}), "k-1")
        assert str(info.value) == "files: pipe: is a FIFO; only regular files are read"
        with pytest.raises(InvalidRequest) as info:
            await broker.submit(request({"./a.txt": "0" * 64}), "k-1")
        assert str(info.value).startswith(
            "files/./a.txt: changed between the request and its arrival (stated 000000000000…"
        )
        # Kept normalized, as the change feed names files.
        files = await broker.hasher.run(broker._bound_files, {"./a.txt": None}, None)
        assert files == {"a.txt": hash_bytes("a.txt", b"v1")}
        # The last look before submission: a bound file now a FIFO, a link, or over the cap
        # counts as changed, at once.
        (root / "a.txt").unlink()
        (root / "a.txt").symlink_to(root / "pipe")
        (root / "b.txt").write_text("b" * 1001)
        bound = {"a.txt": files["a.txt"], "b.txt": "0" * 64, "pipe": "0" * 64}
        started = time.monotonic()
        changed = await broker.hasher.run(broker._changed_files, bound, None, "me")
        assert changed == ["a.txt", "b.txt", "pipe"]
        assert time.monotonic() - started < 5
        assert db_thread_free(broker)
    finally:
        broker.hasher.close()
        broker._db_pool.shutdown()
        broker.store.close()


async def test_the_forwarder_reports_a_fifo_as_gone_without_reading_it(tmp_path):
    from tornado import web

    reported: list[Any] = []

    class Changes(web.RequestHandler):
        def post(self) -> None:
            reported.append(json.loads(self.request.body))
            self.finish({"voided": []})

    port_sock = socket.socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    app = web.Application([(r"/services/qguard/api/changes", Changes)])
    http = app.listen(port, address="127.0.0.1")
    root, state = tmp_path / "ws", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    os.mkfifo(root / "pipe")
    (root / "a.txt").write_text("v1")
    (root / "link.txt").symlink_to(root / "a.txt")
    broker = ForwardingBroker(
        service_url=f"http://127.0.0.1:{port}/services/qguard/",
        service_token="t",
        **broker_kwargs(root, state),
    )
    try:
        changes = [
            {"id": 1, "path": "pipe", "actor": "agent"},
            {"id": 2, "path": "a.txt", "actor": "agent"},
            {"id": 3, "path": "link.txt", "actor": "agent"},
        ]
        assert await asyncio.wait_for(broker.void_for_changes(changes), 10) == []
        assert reported == [
            {
                "changes": [
                    {"id": 1, "path": "pipe", "actor": "agent", "sha": None},
                    {"id": 2, "path": "a.txt", "actor": "agent", "sha": hash_bytes("a.txt", b"v1")},
                    {"id": 3, "path": "link.txt", "actor": "agent", "sha": None},
                ]
            }
        ]
        # Submission in team mode hashes here first: the FIFO never reaches the team broker.
        with pytest.raises(InvalidRequest) as info:
            await broker.submit(request({"pipe": None}), "k-1")
        assert str(info.value) == "files: pipe: is a FIFO; only regular files are read"
        assert len(reported) == 1
    finally:
        http.stop()
        broker.hasher.close()
        broker._db_pool.shutdown()
        broker.store.close()


# -- the settings ----------------------------------------------------------------------------


def test_the_cap_and_the_timeout_must_be_positive():
    from traitlets.config import Config

    from jupyter_qguard.app import QGuardApp

    for name in ("max_bound_file_bytes", "bound_file_timeout_seconds"):
        with pytest.raises(Exception, match=f"QGuardApp.{name} must be more than 0"):
            QGuardApp(config=Config({"QGuardApp": {name: 0}}))


@pytest.mark.parametrize(
    "qguard_config",
    [{"max_bound_file_bytes": 4096, "bound_file_timeout_seconds": 7.5}],
    indirect=True,
)
async def test_the_cap_is_the_setting(start_kernel, broker, jp_root_dir):
    assert (broker.hasher.max_bytes, broker.hasher.timeout) == (4096, 7.5)
    (jp_root_dir / "x.bin").write_bytes(b"x" * 5000)
    (jp_root_dir / "y.bin").write_bytes(b"y" * 4096)
    k = await start_kernel()
    await k.run(BELL)
    res = await k.run(
        "from jupyter_qguard.kernel.jobs import submit\n"
        "submit(bell, backend='aer_hw', shots=10, files={'x.bin': None})"
    )
    assert res["error"] == {
        "ename": "QGuardError",
        "evalue": "invalid job request: files: x.bin: is 5000 bytes, over the limit of 4096 "
        "bytes for a file a job depends on",
    }
    res = await k.run("print(submit(bell, backend='aer_hw', shots=10, files={'y.bin': None}))")
    assert res["error"] is None, res


# -- bundles ---------------------------------------------------------------------------------


def test_a_bundles_environment_never_reads_the_workspace(tmp_path, monkeypatch):
    """A server started from its workspace (`python -m jupyter_server` there) has the root on
    sys.path: a distribution the agent planted there must not enter the environment record of
    a bundle (nor be read: its RECORD is a FIFO here, which would hang the read)."""
    from jupyter_qguard.audit import environment

    root, state = tmp_path / "ws", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    dist = root / "qiskit-99.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qiskit\nVersion: 99.0\n")
    os.mkfifo(dist / "RECORD")
    broker = Broker(**broker_kwargs(root, state))
    try:
        monkeypatch.chdir(root)
        monkeypatch.setattr("sys.path", ["", str(root), str(root / "."), *sys.path])
        path = broker.code_path()
        assert "" not in path and str(root) not in path and str(root / ".") not in path
        env = environment.manifest(path)
        versions = {p["name"]: p["version"] for p in env["packages"]}
        assert versions["qiskit"] != "99.0" and versions["jupyter-qguard"]
    finally:
        broker.hasher.close()
        broker._db_pool.shutdown()
        broker.store.close()
