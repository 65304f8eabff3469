# Sent into the agent kernel by the escape suite (not imported by the tests themselves).
# Each probe is an expression; its outcome is recorded exactly: ["ok", repr], ["errno", NAME],
# ["gaierror", code], ["exit", returncode] or ["exc", type name].
import ctypes
import errno
import json
import os
import socket
import subprocess
import sys

import pyseccomp as _sc

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def NR(name):
    """A syscall's number; a number passes as it is (calls newer than libseccomp's table)."""
    if isinstance(name, int):
        return name
    return _sc.resolve_syscall(_sc.system_arch(), name)


def sys_call(name, *args):
    """A raw syscall through ctypes: ['ok', value] or the errno name."""
    r = libc.syscall(
        ctypes.c_long(NR(name)), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    )
    if r == -1:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def sock(family, kind, proto=0):
    s = socket.socket(family, kind, proto)
    s.close()
    return "created"


def connect_unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return "connected"
    finally:
        s.close()


def read(path):
    with open(path, "rb") as f:
        return len(f.read())


def write(path, data=b"x"):
    with open(path, "wb") as f:
        f.write(data)
    return "written"


def in_child(code):
    """Run code in a fresh Python child process; its printed outcome is the result.
    PRELUDE (this file's text) is defined in the kernel by the suite before it runs this."""
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + "\nprint(json.dumps(outcome(lambda: " + code + ")))"],  # noqa: F821
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return ["exit", r.returncode]
    return json.loads(r.stdout.strip().splitlines()[-1])


def in_fork(code):
    """Run code in a forked copy of the kernel; the outcome comes back through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        out = outcome(lambda: eval(code))
        os.write(wfd, json.dumps(out).encode())
        os._exit(0)
    os.close(wfd)
    data = b""
    while chunk := os.read(rfd, 65536):
        data += chunk
    os.close(rfd)
    os.waitpid(pid, 0)
    return json.loads(data)


def outcome(fn):
    try:
        value = fn()
    except socket.gaierror as e:
        return ["gaierror", e.errno]
    except __import__("urllib.error").error.URLError as e:  # carries the OSError it met
        reason = e.reason
        if isinstance(reason, OSError):
            return ["errno", errno.errorcode.get(reason.errno, str(reason.errno))]
        return ["exc", type(e).__name__]
    except OSError as e:
        return ["errno", errno.errorcode.get(e.errno, str(e.errno))]
    except BaseException as e:
        return ["exc", type(e).__name__]
    if (
        isinstance(value, list)
        and len(value) == 2
        and value[0] in ("ok", "errno", "exit", "exc", "gaierror")
    ):
        return value
    return ["ok", value if isinstance(value, (bool, int, str, type(None))) else repr(value)[:200]]


def mount_options(path):
    """The per-mount options (ro, nosuid, nodev, ...) of the topmost mount at `path`, read from
    /proc/self/mountinfo (later lines are mounted on top of earlier ones); None if no mount
    sits there."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                found = fields[5].split(",")
    return found


def import_from_workspace(name):
    """Write NAME.py in the working directory and import it: [its value, whether a
    __pycache__ appeared beside it, whether its bytecode is under sys.pycache_prefix]."""
    import importlib
    import importlib.util

    path = os.path.join(os.getcwd(), name + ".py")
    with open(path, "w") as f:
        f.write("VALUE = 7\n")
    importlib.invalidate_caches()
    module = importlib.import_module(name)
    cached = importlib.util.cache_from_source(path)
    return [
        module.VALUE,
        os.path.isdir("__pycache__"),
        cached.startswith(sys.pycache_prefix + "/") and os.path.exists(cached),
    ]
