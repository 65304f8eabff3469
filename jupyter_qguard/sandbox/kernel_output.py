"""An agent kernel's stdout and stderr, read by the server.

The kernel gets pipes of its own for fds 1 and 2 (never the server's, which it could write
into, truncate, or fill with escape sequences for the person's terminal). The server reads
them on its event loop and logs each line, cut to a length, at a bounded rate, with control
characters and escape sequences shown escaped.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

# Shown escaped: C0 controls but tab (ESC, CR, BEL, backspace, ...), DEL, C1 controls, the line
# and paragraph separators, and the bidi controls that reorder what a terminal shows.
_UNSAFE = re.compile(
    "[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_READ_BYTES = 65536
# At cleanup, how much a pipe is read before it is closed (a writer that outlived the kernel
# could otherwise keep it open forever).
_DRAIN_BYTES = 1 << 20


def neutralise(text: str) -> str:
    """`text` with every control character or escape sequence shown escaped (`\\x1b`)."""

    def show(m: re.Match[str]) -> str:
        code = ord(m.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNSAFE.sub(show, text)


@dataclass
class _Pipe:
    name: str
    level: int
    line: bytearray = field(default_factory=bytearray)
    cut: int = 0


class KernelOutput:
    """A kernel's stdout and stderr: pipes read on the event loop, shown in the server log.

    Each line is logged as `kernel <id> stdout|stderr: <line>`, cut at `max_line_bytes` (saying
    how many bytes were cut), with control characters and escape sequences shown escaped;
    beyond `max_lines_per_second` lines are dropped, and how many is said once a second. Never
    blocks: one non-blocking read per wake-up. One object per kernel; `open()` makes the pipes
    of each launch, `close()` reads what is left and closes them."""

    def __init__(
        self, kernel_id: str, log: Any, *, max_line_bytes: int, max_lines_per_second: int
    ) -> None:
        self.kernel_id = kernel_id
        self.log = log
        self.max_line_bytes = max(1, max_line_bytes)
        self.max_lines_per_second = max(1, max_lines_per_second)
        self._pipes: dict[int, _Pipe] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window = float("-inf")
        self._in_window = 0
        self._dropped = 0
        self._report: asyncio.TimerHandle | None = None

    def open(self) -> tuple[int, int]:
        """New pipes for the next kernel process: its (stdout, stderr) descriptors."""
        self._loop = asyncio.get_running_loop()
        ends = []
        for name, level in (("stdout", logging.INFO), ("stderr", logging.WARNING)):
            read_end, write_end = os.pipe()  # both close-on-exec; Popen dup2s one onto 1 or 2
            os.set_blocking(read_end, False)
            self._pipes[read_end] = _Pipe(name, level)
            self._loop.add_reader(read_end, self._readable, read_end)
            ends.append(write_end)
        return ends[0], ends[1]

    def close(self) -> None:
        """Show what is left in the pipes (the process is gone), then close them."""
        for fd in list(self._pipes):
            left = _DRAIN_BYTES
            while left > 0 and fd in self._pipes:
                left -= self._read(fd)
            if fd in self._pipes:
                self._end(fd)
        self._report_dropped()

    # -- reading -------------------------------------------------------------------------

    def _readable(self, fd: int) -> None:
        self._read(fd)

    def _read(self, fd: int) -> int:
        """One read; returns how many bytes it took (0 when nothing more comes now)."""
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return _DRAIN_BYTES  # nothing buffered: stop draining
        except OSError as exc:
            if exc.errno != errno.EIO:
                self.log.warning("qguard: kernel %s output: %s", self.kernel_id, exc)
            data = b""
        if not data:
            self._end(fd)
            return _DRAIN_BYTES
        self._feed(self._pipes[fd], data)
        return len(data)

    def _feed(self, pipe: _Pipe, data: bytes) -> None:
        parts = data.split(b"\n")
        for i, part in enumerate(parts):
            room = self.max_line_bytes - len(pipe.line)
            if room > 0:
                pipe.line += part[:room]
            pipe.cut += max(0, len(part) - max(room, 0))
            if i < len(parts) - 1:  # a newline followed this part
                self._emit(pipe)

    def _end(self, fd: int) -> None:
        pipe = self._pipes.pop(fd)
        if pipe.line or pipe.cut:
            self._emit(pipe)  # a last line without its newline
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    # -- showing -------------------------------------------------------------------------

    def _emit(self, pipe: _Pipe) -> None:
        raw, cut = bytes(pipe.line), pipe.cut
        pipe.line.clear()
        pipe.cut = 0
        if not self._admit():
            return
        text = neutralise(raw.decode("utf-8", "backslashreplace"))
        if cut:
            text += f"... ({cut} bytes cut)"
        self.log.log(pipe.level, "kernel %s %s: %s", self.kernel_id, pipe.name, text)

    def _admit(self) -> bool:
        now = self._loop.time() if self._loop is not None else 0.0
        if now - self._window >= 1.0:
            self._report_dropped()
            self._window, self._in_window = now, 0
        if self._in_window < self.max_lines_per_second:
            self._in_window += 1
            return True
        self._dropped += 1
        if self._report is None and self._loop is not None:
            self._report = self._loop.call_at(self._window + 1.0, self._report_dropped)
        return False

    def _report_dropped(self) -> None:
        if self._report is not None:
            self._report.cancel()
            self._report = None
        if self._dropped:
            self.log.warning(
                "kernel %s: %d lines of output dropped (more than %d a second)",
                self.kernel_id,
                self._dropped,
                self.max_lines_per_second,
            )
            self._dropped = 0
