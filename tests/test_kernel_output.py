"""The agent kernel holds no descriptor of the server's: stdin is /dev/null, stdout and stderr
are pipes the server reads and shows in its log, a line at a time, cut, rate-limited and with
every control character shown escaped. A real server, real agent kernels."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any

import pytest
from support.jupyter_proc import ServerProcess, kernel_processes

from jupyter_qguard.sandbox.kernel_output import KernelOutput, neutralise

ESCAPES = "qg-esc-{} \x1b[2J\x1b]0;pwned\x07 \r\x08\x00\x9b\u202e\u2066 end"
SHOWN = "qg-esc-{} \\x1b[2J\\x1b]0;pwned\\x07 \\x0d\\x08\\x00\\x9b\\u202e\\u2066 end"
LINE_CAP = 2000  # QGuardProvisioner.output_line_bytes
RATE = 200  # QGuardProvisioner.output_lines_per_second
FLOOD = 10_000

# What the kernel tries with its descriptors: the ones it was given (1, 2, which ipykernel has
# turned into its own capture pipes by then) and the originals ipykernel keeps (fileno()).
FD_ATTEMPTS = """
import errno, json, os, sys
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
fds = {"1": 1, "2": 2, "orig_out": sys.stdout.fileno(), "orig_err": sys.stderr.fileno()}
out = {}
for name, fd in fds.items():
    out["ftruncate " + name] = attempt(lambda: os.ftruncate(fd, 0))
    out["lseek " + name] = attempt(lambda: os.lseek(fd, 0, os.SEEK_SET))
    out["isfifo " + name] = __import__("stat").S_ISFIFO(os.fstat(fd).st_mode)
print(json.dumps(out))
"""

WRITE_ALL = """
def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
"""


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass  # closed while listing
    return out


def fd_inodes(pid: int) -> dict[tuple[int, int], str]:
    """(st_dev, st_ino) of everything `pid` holds open -> what it is (but eventfds and epoll
    instances: every anon_inode descriptor of the system shares one inode)."""
    out = {}
    for fd, target in fd_targets(pid).items():
        if target.startswith("anon_inode:"):
            continue
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        out[(st.st_dev, st.st_ino)] = target
    return out


def is_special(target: str) -> bool:
    return target.startswith(("socket:", "pipe:", "anon_inode:"))


def log_lines(server: ServerProcess, kernel_id: str, stream: str) -> list[str]:
    prefix = f" ServerApp] kernel {kernel_id} {stream}: "
    text = server.log_path.read_bytes().decode("utf-8", "backslashreplace")
    return [line.split(prefix, 1)[1] for line in text.splitlines() if prefix in line]


def dropped(server: ServerProcess, kernel_id: str) -> list[int]:
    text = server.log_path.read_text(errors="backslashreplace")
    pattern = rf"kernel {kernel_id}: (\d+) lines of output dropped \(more than {RATE} a second\)"
    return [int(n) for n in re.findall(pattern, text)]


async def until_logged(server: ServerProcess, kernel_id: str, stream: str, line: str) -> None:
    for _ in range(100):
        if line in log_lines(server, kernel_id, stream):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{stream} line {line[:80]!r} not in the server log")


async def kernel_dir_of(server: ServerProcess, kernel_id: str) -> str:
    sandbox = await server.json("qguard/api/sandbox")
    return next(k["kernel_dir"] for k in sandbox["kernels"] if k["kernel_id"] == kernel_id)


async def test_kernel_output_goes_through_a_pipe_the_server_reads(tmp_path):
    server = ServerProcess(tmp_path).start()
    try:
        kernel = await server.start_kernel()
        kid = kernel.id
        before = server.log_path.read_bytes()

        # Its descriptors are pipes: neither truncated nor sought, whichever it picks.
        res = await kernel.run(FD_ATTEMPTS)
        assert res["error"] is None, res
        attempts = json.loads(res["stdout"].strip().splitlines()[-1])
        assert attempts == {
            f"{op} {name}": outcome
            for name in ("1", "2", "orig_out", "orig_err")
            for op, outcome in (("ftruncate", "EINVAL"), ("lseek", "ESPIPE"), ("isfifo", True))
        }

        # Escape sequences and control characters, on fd 1 and on fd 2.
        code = (
            "import os\n"
            f"os.write(1, {(ESCAPES.format('out') + chr(10)).encode()!r})\n"
            f"os.write(2, {(ESCAPES.format('err') + chr(10)).encode()!r})\n"
        )
        assert (await kernel.run(code))["error"] is None
        await until_logged(server, kid, "stdout", SHOWN.format("out"))
        await until_logged(server, kid, "stderr", SHOWN.format("err"))

        # A 1 MB line, cut.
        code = f"import os\n{WRITE_ALL}\nwrite_all(1, b'L' * 1_000_000 + b'\\n')\n"
        assert (await kernel.run(code, timeout=180))["error"] is None
        await until_logged(
            server, kid, "stdout", "L" * LINE_CAP + f"... ({1_000_000 - LINE_CAP} bytes cut)"
        )

        # 10,000 lines at once: the first second's RATE lines shown, the rest counted.
        code = (
            f"import os, time\n{WRITE_ALL}\ntime.sleep(1.5)\n"  # a rate window of its own
            f"write_all(1, b''.join(b'qg-flood-%05d\\n' % i for i in range({FLOOD})))\n"
        )
        assert (await kernel.run(code, timeout=180))["error"] is None
        for _ in range(100):
            flood = [x for x in log_lines(server, kid, "stdout") if x.startswith("qg-flood-")]
            if len(flood) + sum(dropped(server, kid)) == FLOOD:
                break
            await asyncio.sleep(0.1)
        assert len(flood) + sum(dropped(server, kid)) == FLOOD
        assert flood[:RATE] == [f"qg-flood-{i:05d}" for i in range(RATE)]
        assert flood == sorted(flood)
        assert len(flood) < FLOOD // 2  # bounded by the rate, not by the flood

        # The server's log was written after, never rewritten; no raw escape reached it.
        after = server.log_path.read_bytes()
        assert after.startswith(before) and len(after) > len(before)
        for raw in (b"\x1b", b"\x07", b"\x00", b"\r", b"\x08", "\u202e".encode()):
            assert raw not in after, raw

        # What each of its processes holds: /dev/null, pipes, sockets; no file of the server's.
        kdir = await kernel_dir_of(server, kid)
        server_open = fd_inodes(server.proc.pid)
        log_inode = (os.stat(server.log_path).st_dev, os.stat(server.log_path).st_ino)
        assert log_inode in server_open  # the server's stdout and stderr
        pids = kernel_processes(kid)
        assert len(pids) >= 1
        shared_pipes = set()
        for pid in pids:
            targets = fd_targets(pid)
            assert targets[0] == "/dev/null", (pid, targets)
            assert targets[1].startswith("pipe:") and targets[2].startswith("pipe:"), targets
            files = {t for t in targets.values() if not is_special(t)}
            assert {t for t in files if not t.startswith(kdir + "/")} == {"/dev/null"}, files
            inodes = fd_inodes(pid)
            assert log_inode not in inodes
            for key, target in inodes.items():
                if key in server_open:
                    assert target.startswith("pipe:") or target == "/dev/null", target
                    if target.startswith("pipe:"):
                        shared_pipes.add(key)
        # The two it shares with the server: the read ends of its stdout and stderr.
        assert len(shared_pipes) == 2
        kernel.close()
    finally:
        server.stop()


async def test_output_pipes_survive_restarts_and_close_at_shutdown(tmp_path):
    server = ServerProcess(tmp_path).start()
    try:
        kernel = await server.start_kernel()
        kid = kernel.id

        def our_pipes() -> set[tuple[int, int]]:
            srv = fd_inodes(server.proc.pid)
            return {
                k
                for pid in kernel_processes(kid)
                for k, t in fd_inodes(pid).items()
                if k in srv and t.startswith("pipe:")
            }

        first = our_pipes()
        assert len(first) == 2
        kernel.close()

        # A restart through the REST API: new pipes, the old ones closed in the server.
        r = await server.fetch(f"api/kernels/{kid}/restart", method="POST", body={})
        assert r.code == 200
        kernel = await reconnect(server, kid)
        second = our_pipes()
        assert len(second) == 2 and not second & first
        assert not first & set(fd_inodes(server.proc.pid))
        assert (await kernel.run("import os; os.write(1, b'qg-after-restart\\n')"))["error"] is None
        await until_logged(server, kid, "stdout", "qg-after-restart")

        # The kernel dies (the server restarts it): its last words, written just before,
        # still reach the log, read from the pipe after the process is gone.
        pids = set(kernel_processes(kid))
        code = "import os, sys\nos.write(sys.stderr.fileno(), b'qg-last-words')\nos._exit(3)"
        await kernel.ws.write_message(json.dumps(kernel._msg("execute_request", {"code": code})))
        kernel.close()
        for _ in range(300):
            now = set(kernel_processes(kid))
            if now and not now & pids:
                break
            await asyncio.sleep(0.1)
        await until_logged(server, kid, "stderr", "qg-last-words")
        kernel = await reconnect(server, kid)
        third = our_pipes()
        assert len(third) == 2 and not third & second
        assert not second & set(fd_inodes(server.proc.pid))
        res = await kernel.run("import os; os.write(2, b'qg-after-crash\\n'); print(1 + 1)")
        assert res["error"] is None and res["stdout"] == "2\n", res
        await until_logged(server, kid, "stderr", "qg-after-crash")
        kernel.close()

        # Shut down: the server holds none of its pipes any more.
        r = await server.fetch(f"api/kernels/{kid}", method="DELETE")
        assert r.code == 204
        assert not third & set(fd_inodes(server.proc.pid))
    finally:
        server.stop()


async def reconnect(server: ServerProcess, kernel_id: str) -> Any:
    from support.jupyter_proc import KernelWS

    ws = await server.websocket(f"api/kernels/{kernel_id}/channels")
    kernel = KernelWS(kernel_id, ws)
    await kernel.wait_ready()
    return kernel


# -- the reader itself -----------------------------------------------------------------------


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def recorder():
    log = logging.getLogger("qguard-test-kernel-output")
    log.propagate = False
    handler = Recorder()
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    yield log, handler
    log.removeHandler(handler)


def test_neutralise_shows_every_control_escaped():
    assert neutralise("a\tb") == "a\tb"  # tab stays
    assert neutralise("\x1b[31mred\x1b[0m") == "\\x1b[31mred\\x1b[0m"
    assert neutralise("\x7f\x85\x9b") == "\\x7f\\x85\\x9b"
    assert neutralise("\u202eevil\u2069\u2028") == "\\u202eevil\\u2069\\u2028"
    assert neutralise("été ✓") == "été ✓"


async def test_reader_lines_cut_flood_and_last_line(recorder):
    log, handler = recorder
    out = KernelOutput("k1", log, max_line_bytes=10, max_lines_per_second=3)
    w_out, w_err = out.open()

    async def settle(count: int) -> None:
        for _ in range(100):
            if len(handler.lines) >= count:
                return
            await asyncio.sleep(0.02)

    os.write(w_out, b"short\n" + b"x" * 25 + b"\nbad \xff\x1b\n")
    await settle(3)
    os.write(w_err, b"one\ntwo\nthree\nfour\n")  # beyond this second's 3 lines: dropped
    await settle(4)  # the drops are reported when the window ends
    os.write(w_err, b"no newline")
    os.close(w_out)
    os.close(w_err)
    await settle(5)  # the end of the pipe ends the last line
    out.close()
    assert handler.lines == [
        ("INFO", "kernel k1 stdout: short"),
        ("INFO", "kernel k1 stdout: xxxxxxxxxx... (15 bytes cut)"),
        ("INFO", "kernel k1 stdout: bad \\xff\\x1b"),
        ("WARNING", "kernel k1: 4 lines of output dropped (more than 3 a second)"),
        ("WARNING", "kernel k1 stderr: no newline"),
    ]
    assert out._pipes == {}


def test_reader_leaves_no_descriptor_open(recorder):
    log, _ = recorder

    async def run() -> tuple[int, int]:
        out = KernelOutput("k2", log, max_line_bytes=100, max_lines_per_second=10)
        ends = out.open()
        for fd in ends:
            os.close(fd)
        out.close()
        return ends

    before = set(os.listdir("/proc/self/fd"))
    asyncio.run(run())
    assert set(os.listdir("/proc/self/fd")) == before
