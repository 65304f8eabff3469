"""The one way trusted code opens workspace paths: no link followed on any component, regular
files only, a size cap; both with openat2 and with the per-component fallback."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from jupyter_qguard import workspace_io as wio


@pytest.fixture(params=["openat2", "fallback"])
def mode(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(wio, "_have_openat2", False)
    else:
        monkeypatch.setattr(wio, "_have_openat2", None)
    return request.param


@pytest.fixture
def world(tmp_path):
    ws = tmp_path / "ws"
    outside = tmp_path / "secret"
    (ws / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "credentials").write_text("aws_secret_access_key = SECRET\n")
    (ws / "sub" / "ok.txt").write_text("fine\n")
    return ws, outside


def test_regular_file_is_read(world, mode):
    ws, _ = world
    assert wio.read_regular(ws, "sub/ok.txt", max_bytes=100) == b"fine\n"
    assert (
        wio.sha256_regular(ws, "./sub/ok.txt", max_bytes=None)
        == hashlib.sha256(b"fine\n").hexdigest()
    )


def test_final_symlink_is_refused(world, mode):
    ws, outside = world
    os.symlink(outside / "credentials", ws / "link.json")
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.read_regular(ws, "link.json", max_bytes=1 << 20)
    assert err.value.code == "symlink"
    assert str(err.value).startswith("link.json: is a symbolic link")


def test_symlinked_parent_is_refused(world, mode):
    ws, outside = world
    os.symlink(outside, ws / "aws")
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.sha256_regular(ws, "aws/credentials", max_bytes=None)
    assert err.value.code == "symlink"


def test_relative_link_inside_is_refused_too(world, mode):
    # Even a link that stays inside: a reader that follows none cannot be turned by a swap.
    ws, _ = world
    os.symlink("sub/ok.txt", ws / "inner")
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.read_regular(ws, "inner", max_bytes=100)
    assert err.value.code == "symlink"


def test_dotdot_and_absolute_are_refused(world, mode):
    ws, _ = world
    for rel in ("../secret/credentials", "/etc/passwd", "sub/../../secret/credentials"):
        with pytest.raises(wio.UnsafeWorkspacePath) as err:
            wio.read_regular(ws, rel, max_bytes=100)
        assert err.value.code == "outside"


def test_fifo_is_refused_without_blocking(world, mode):
    ws, _ = world
    os.mkfifo(ws / "pipe")
    done = threading.Event()
    result: list[BaseException] = []

    def read():
        try:
            wio.read_regular(ws, "pipe", max_bytes=100)
        except BaseException as exc:  # handed to the test thread
            result.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(2), "opening a FIFO blocked the reader"
    assert isinstance(result[0], wio.UnsafeWorkspacePath)
    assert result[0].code == "not_regular"
    assert "is a FIFO" in str(result[0])


def test_socket_is_refused(world, mode, tmp_path):
    ws, _ = world
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(ws / "sock"))
    try:
        with pytest.raises(wio.UnsafeWorkspacePath) as err:
            wio.read_regular(ws, "sock", max_bytes=100)
        assert err.value.code == "not_regular"
        assert "socket" in str(err.value)
    finally:
        s.close()


def test_sparse_file_over_cap_is_refused_before_reading(world, mode):
    ws, _ = world
    with open(ws / "sparse.bin", "wb") as f:
        f.truncate(2 << 30)  # 2 GiB of nothing
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.sha256_regular(ws, "sparse.bin", max_bytes=64 << 20)
    assert err.value.code == "too_large"
    assert str(err.value) == "sparse.bin: is 2048 MiB, over the limit of 64 MiB"


def test_directory_is_refused(world, mode):
    ws, _ = world
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.read_regular(ws, "sub", max_bytes=100)
    assert err.value.code == "not_regular"


def test_write_replaces_atomically_and_refuses_linked_parent(world, mode):
    ws, outside = world
    wio.write_beneath(ws, "new/dir/file.txt", b"restored")
    assert (ws / "new/dir/file.txt").read_bytes() == b"restored"
    os.symlink(outside, ws / "swapped")
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.write_beneath(ws, "swapped/credentials", b"overwritten")
    assert err.value.code == "symlink"
    assert (outside / "credentials").read_text() == "aws_secret_access_key = SECRET\n"
    # A link as the final name is not replaced either (nor followed).
    os.symlink(outside / "credentials", ws / "final")
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.write_beneath(ws, "final", b"x")
    assert err.value.code == "symlink"
    # Removing a link removes the link, never its target.
    wio.write_beneath(ws, "final", None)
    assert not os.path.lexists(ws / "final")
    assert (outside / "credentials").exists()


def test_walk_does_not_enter_links(world, mode):
    ws, outside = world
    os.symlink(outside, ws / "aws")
    seen = dict(wio.walk(ws))
    assert "aws" in seen and os.path.islink(ws / "aws")
    assert not any(rel.startswith("aws/") for rel in seen)
    assert "sub/ok.txt" in seen


def test_walk_stops_at_cap(world):
    ws, _ = world
    for i in range(50):
        (ws / f"f{i}").write_text("x")
    assert len(list(wio.walk(ws, max_entries=10))) == 10


def test_openat2_is_used_on_this_kernel():
    wio._have_openat2 = None
    with wio.root_fd("/") as fd:
        os.close(wio.open_beneath(fd, "etc", os.O_RDONLY | os.O_DIRECTORY))
    assert wio._have_openat2 is True
