"""The seccomp layer by itself: each profile loaded in a fresh process (as root and as the
unprivileged qgtest), attacked past its socket rules with a datagram socket and a TCP listener
bound outside, and checked with what ordinary work needs. The probes are in
tests/support/seccomp_probe.py; the in-kernel ones, under every layer, in tests/escape/."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyseccomp as sc
import pytest

from jupyter_qguard.sandbox import seccomp_numbers

PROBE = Path(__file__).resolve().parent / "support" / "seccomp_probe.py"
UNPRIVILEGED = "qgtest"


def E(name: str) -> list[str]:
    return ["errno", name]


def OK(value: object) -> list[object]:
    return ["ok", value]


# What both profiles answer alike: sockets that would send to a msg_name, the Fast Open flag,
# the syscalls newer than the installed libseccomp (by number), the rest of the filter, and
# the ordinary work that must keep running.
COMMON = {
    "unix_dgram_socketpair": E("EPERM"),
    "dgram_pair_sendmsg_outside": E("EPERM"),
    "unix_dgram_socket": E("EPERM"),
    "unix_raw_socket": E("EPERM"),  # AF_UNIX turns SOCK_RAW into SOCK_DGRAM
    "unix_dgram_sendmsg_outside": E("EPERM"),
    "unix_dgram_sendto_outside": E("EPERM"),
    "stream_pair_sendmsg_outside": E("EISCONN"),
    "stream_pair_sendmmsg_outside": E("EISCONN"),
    "seqpacket_pair_sendmsg_outside": OK("sp"),  # to its peer, not to the address
    "socketpair_inet": E("EPERM"),
    "fastopen_sendto": E("EPERM"),
    "fastopen_send_no_address": E("EPERM"),
    "fastopen_sendmsg": E("EPERM"),
    "fastopen_sendmmsg": E("EPERM"),
    "fastopen_unix_pair": E("EPERM"),
    "nr_quotactl_fd": E("EPERM"),
    "nr_statmount": E("EPERM"),
    "nr_listmount": E("EPERM"),
    "nr_open_tree_attr": E("EPERM"),
    "nr_lsm_set_self_attr": E("ENOSYS"),
    "nr_mseal": OK(0),
    "nr_file_getattr": E("EINVAL"),
    "tiocsti": E("EPERM"),
    "clone_newuser": E("EPERM"),
    "unshare_user": E("EPERM"),
    "seccomp_new_listener": E("EPERM"),
    "ptrace_traceme": E("EPERM"),
    "clone3": E("ENOSYS"),
    "openat2": E("ENOSYS"),
    "symlink": E("EPERM"),
    "chmod_setuid": E("EPERM"),
    "foreign_abi_x32": OK(31),  # SIGSYS: killed
    "pool_fork": OK(285),
    "asyncio_socketpair": OK("ping"),
    "zmq_inproc": OK("inproc"),
    "inherited_channel": OK("ping"),
    "stream_pair_works": OK("ok"),
}
EXPECTED = {
    "kernel": {
        **COMMON,
        "unix_stream_sendmsg_outside": E("ENOTSUP"),  # EOPNOTSUPP, the same number
        "unix_seqpacket_sendmsg_outside": E("ENOTCONN"),
        "tcp_sendmsg_name_unconnected": E("EPERM"),  # no TCP socket at all
        "zmq_ipc_bind": OK("bound"),
    },
    # no AF_UNIX socket() at all; TCP sockets, which ignore a msg_name without the flag
    "agent-process": {
        **COMMON,
        "unix_stream_sendmsg_outside": E("EPERM"),
        "unix_seqpacket_sendmsg_outside": E("EPERM"),
        "tcp_sendmsg_name_unconnected": E("EPIPE"),
        "zmq_ipc_bind": E("EPERM"),
    },
}
REFUSED_BY_NUMBER = ("quotactl_fd", "statmount", "listmount", "open_tree_attr", "lsm_set_self_attr")


def _as(mode: str) -> dict[str, Any]:
    if os.geteuid() != 0:
        pytest.fail("these tests run as root (CI does) to test both modes")
    if mode == "root":
        return {}
    try:
        pwd.getpwnam(UNPRIVILEGED)
    except KeyError:
        pytest.fail(f"user {UNPRIVILEGED} missing: run tests/setup-unprivileged.sh")
    return {"user": UNPRIVILEGED, "group": UNPRIVILEGED, "extra_groups": []}


@pytest.mark.parametrize("mode", ["root", "user"])
@pytest.mark.parametrize("profile", ["kernel", "agent-process"])
def test_profile_refuses_destinations_outside_connect_and_unknown_syscalls(
    profile: str, mode: str
) -> None:
    as_user = _as(mode)
    tmp = tempfile.mkdtemp(prefix="qguard-seccomp-")
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener = socket.socket()
    ours, theirs = socket.socketpair()
    try:
        if as_user:
            shutil.chown(tmp, UNPRIVILEGED, UNPRIVILEGED)
        dgram_path = os.path.join(tmp, "outside.sock")
        outside.bind(dgram_path)
        os.chmod(dgram_path, 0o666)  # anyone may send to it: only seccomp stands in the way
        outside.setblocking(False)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        ours.sendall(b"ping")
        proc = subprocess.run(
            [
                sys.executable,
                str(PROBE),
                profile,
                dgram_path,
                str(listener.getsockname()[1]),
                str(theirs.fileno()),
            ],
            pass_fds=(theirs.fileno(),),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
            **as_user,
        )
        theirs.close()
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["results"] == EXPECTED[profile]
        # nothing reached the listeners outside; the inherited channel answered
        with pytest.raises(BlockingIOError):
            outside.recv(64)
        with pytest.raises(BlockingIOError):
            listener.accept()
        ours.settimeout(5)
        assert ours.recv(64) == b"pong:ping"
        # the running kernel has these calls: the errnos above are the filter's
        for name in REFUSED_BY_NUMBER:
            assert got["before"][name][1] not in ("EPERM", "ENOSYS"), (name, got["before"])
        report = got["report"]
        assert report["unknown_syscalls"] == "ENOSYS"
        assert {"statmount", "listmount", "open_tree_attr", "quotactl_fd"} <= set(report["denied"])
        assert report["send_flags"] == "MSG_FASTOPEN refused"
    finally:
        for s in (outside, listener, ours, theirs):
            s.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_every_number_past_the_reviewed_table_is_unknown() -> None:
    """What the kernel itself answers ENOSYS today cannot show the filter's rule: its ranges
    do. Above the highest reviewed number everything is refused, to the x32 bit and past it."""
    for arch in (sc.Arch.X86_64, sc.Arch.AARCH64):
        ranges = seccomp_numbers.unknown_ranges(arch)
        top = seccomp_numbers.HIGHEST_REVIEWED
        assert ranges[-1] == (top + 1, 0xFFFFFFFF)
        for nr in (top + 1, 1023, 5000, 0x3FFFFFFF, 0x40000000 | 39):
            assert any(lo <= nr <= hi for lo, hi in ranges), (arch, nr)
        for nr in (0, 39, 202, 435, 437, 452, 462, 469):  # known: the name rules decide
            assert not any(lo <= nr <= hi for lo, hi in ranges), (arch, nr)
        # newer than libseccomp 2.5, and not known as ordinary
        assert any(lo <= 460 <= hi for lo, hi in ranges)
    x86 = seccomp_numbers.unknown_ranges(sc.Arch.X86_64)
    assert (337, 423) in x86  # x86_64's unassigned gap; 335 and 336 are uretprobe, uprobe
    arm = seccomp_numbers.unknown_ranges(sc.Arch.AARCH64)
    assert (244, 259) in arm and (295, 423) in arm


def test_number_tables_agree_with_libseccomp() -> None:
    """The tables name numbers libseccomp may not know; where it knows them, it agrees."""
    for arch in (sc.Arch.X86_64, sc.Arch.AARCH64):
        tables = {**seccomp_numbers.UNIFIED, **seccomp_numbers.ARCH_EXTRA.get(arch, {})}
        for nr, name in tables.items():
            assert sc.resolve_syscall(arch, name) in (-1, nr), (arch, name)
