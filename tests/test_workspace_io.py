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


def test_walk_holds_few_descriptors_whatever_the_shape(world, mode):
    # One descriptor per directory waiting to be listed ran out of them (EMFILE) on a folder
    # with many subfolders, and the walk then skipped them silently.
    import resource

    ws, _ = world
    for i in range(300):
        (ws / "many" / f"d{i:03d}").mkdir(parents=True)
        (ws / "many" / f"d{i:03d}" / "f").write_text("x")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 20, hard))
    try:
        seen = dict(wio.walk(ws))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert sum(rel.endswith("/f") and rel.startswith("many/") for rel in seen) == 300


def test_walk_lists_lazily_and_says_why_it_stopped(world):
    ws, _ = world
    (ws / "big").mkdir()
    for i in range(2000):
        (ws / "big" / f"f{i}").write_text("")
    walk = wio.walk(ws, max_entries=100)
    assert len(list(walk)) == 100
    assert (walk.listed, walk.truncated) == (100, "stopped listing after 100 entries")
    everything = wio.walk(ws)
    assert len(list(everything)) == 2000 + 3 and everything.truncated is None
    exact = wio.walk(ws / "sub", max_entries=1)
    assert [rel for rel, _ in exact] == ["ok.txt"] and exact.truncated is None


def test_walk_depth_bound_order_and_under(world):
    ws, _ = world
    (ws / "a" / "b" / "c").mkdir(parents=True)
    (ws / "a" / "z.txt").write_text("")
    (ws / "a" / "b" / "c" / "deep.txt").write_text("")
    walk = wio.walk(ws, max_depth=2, sort=True)
    assert [rel for rel, _ in walk] == ["a", "sub", "a/b", "a/z.txt", "a/b/c", "sub/ok.txt"]
    assert walk.truncated == "did not enter folders more than 2 levels deep"
    assert [rel for rel, _ in wio.walk(ws, under="a/b")] == ["a/b/c", "a/b/c/deep.txt"]


def test_walk_never_enters_a_folder_swapped_for_a_link_mid_walk(world, mode):
    ws, outside = world
    errors = []

    def swap_then_enter(rel, st):
        # Listed as a real folder; a link by the time the walk opens it.
        os.rename(ws / rel, ws / f"{rel}-old")
        os.symlink(outside, ws / rel)
        return True

    walk = wio.walk(ws, enter=swap_then_enter, on_error=lambda rel, exc: errors.append(rel))
    seen = [rel for rel, _ in walk]
    assert seen == ["sub"]
    assert [(rel, os.path.islink(ws / rel)) for rel in errors] == [("sub", True)]
    assert wio.lstat_beneath(ws, "sub/credentials") is None
    with wio.root_fd(ws) as rfd:
        assert wio.readlink_at(rfd, "sub") == str(outside)


def test_a_backslash_is_part_of_a_name_and_nul_is_refused(world, mode):
    ws, _ = world
    (ws / "sub\\ok.txt").write_text("the other one\n")
    assert wio.read_regular(ws, "sub\\ok.txt", max_bytes=100) == b"the other one\n"
    assert wio.read_regular(ws, "sub/ok.txt", max_bytes=100) == b"fine\n"
    with pytest.raises(wio.UnsafeWorkspacePath) as err:
        wio.read_regular(ws, "sub/ok.txt\0/../../secret/credentials", max_bytes=100)
    assert err.value.code == "outside"
