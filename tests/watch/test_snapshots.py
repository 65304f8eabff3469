"""The content-addressed snapshot store: dedup, atomic objects, private modes, size cap, pruning."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time

import pytest

from jupyter_qguard.watch import snapshots
from jupyter_qguard.watch.snapshots import SnapshotCorrupt, SnapshotNotFound, SnapshotStore


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def objects(root) -> list[str]:
    return sorted(p.name for p in root.glob("??/*"))


def test_put_get_dedup_layout_and_modes(tmp_path):
    store = SnapshotStore(tmp_path / "objects")
    first = store.put(b"hello")
    again = store.put(b"hello")
    other = store.put(b"world!")
    assert first == again == snapshots.PutResult(sha(b"hello"), 5, True)
    assert other == snapshots.PutResult(sha(b"world!"), 6, True)
    assert objects(tmp_path / "objects") == sorted([sha(b"hello"), sha(b"world!")])
    path = tmp_path / "objects" / sha(b"hello")[:2] / sha(b"hello")
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "objects").stat().st_mode) == 0o700
    assert store.get(sha(b"hello")) == b"hello"
    assert store.has(sha(b"world!")) and not store.has(sha(b"nope"))
    assert store.size_total() == 11
    assert len(store) == 2
    # The empty file is content like any other.
    assert store.put(b"") == snapshots.PutResult(sha(b""), 0, True)
    assert store.get(sha(b"")) == b""
    assert os.listdir(tmp_path / "objects" / "tmp") == []


def test_size_total_is_kept_across_instances_and_counts_each_object_once(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    store.put(b"a" * 100)
    store.put(b"b" * 50)
    assert SnapshotStore(tmp_path / "o").size_total() == 150
    store.put(b"a" * 100)
    assert store.size_total() == 150


def test_content_over_the_cap_is_hashed_not_stored(tmp_path):
    store = SnapshotStore(tmp_path / "o", max_object_bytes=10)
    assert store.put(b"0123456789") == snapshots.PutResult(sha(b"0123456789"), 10, True)
    big = b"0123456789X"
    assert store.put(big) == snapshots.PutResult(sha(big), 11, False)
    assert not store.has(sha(big))
    with pytest.raises(SnapshotNotFound):
        store.get(sha(big))
    assert store.size_total() == 10


def test_names_that_are_not_hashes_are_refused(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    (tmp_path / "secret").write_bytes(b"x")
    for name in ["../secret", "..", "", "A" * 64, sha(b"x")[:63], sha(b"x").upper()]:
        assert not store.has(name)
        with pytest.raises(SnapshotNotFound):
            store.get(name)


def test_a_failed_write_leaves_no_object_and_no_temp_file(tmp_path, monkeypatch):
    store = SnapshotStore(tmp_path / "o")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snapshots.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        store.put(b"partial?")
    assert not store.has(sha(b"partial?"))
    assert objects(tmp_path / "o") == []
    assert os.listdir(tmp_path / "o" / "tmp") == []
    assert store.size_total() == 0


def test_readers_never_see_a_partial_object(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    data = os.urandom(8 * 1024 * 1024)
    path = tmp_path / "o" / sha(data)[:2] / sha(data)
    seen_sizes: set[int] = set()
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen_sizes.add(path.stat().st_size)
            except FileNotFoundError:
                seen_sizes.add(-1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for durable in (False, True):
            store.put(data, durable=durable)
            # Remove it so the second round writes it again under the reader's eyes.
            assert store.get(sha(data)) == data
            path.unlink()
            store._total = None
    finally:
        done.set()
        thread.join()
    assert seen_sizes <= {-1, len(data)}


def test_concurrent_puts_of_the_same_content_store_it_once(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    store.size_total()  # the running total is live from here on
    data = os.urandom(256 * 1024)
    barrier = threading.Barrier(8)
    results = []

    def put():
        barrier.wait()
        results.append(store.put(data))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.sha256 for r in results} == {sha(data)} and all(r.stored for r in results)
    assert objects(tmp_path / "o") == [sha(data)]
    assert store.size_total() == len(data)
    assert os.listdir(tmp_path / "o" / "tmp") == []


def test_a_damaged_object_is_reported_removed_and_rewritten_by_put(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    key = store.put(b"original").sha256
    path = tmp_path / "o" / key[:2] / key
    path.chmod(0o600)
    path.write_bytes(b"tampered")  # same length
    with pytest.raises(SnapshotCorrupt):
        store.get(key)
    assert not path.exists()
    assert store.put(b"original").stored
    assert store.get(key) == b"original"
    # A truncated object (wrong size) is rewritten by put without a get first.
    path.write_bytes(b"orig")
    assert store.put(b"original").stored
    assert path.read_bytes() == b"original"
    assert store.size_total() == 8


def _aged(store: SnapshotStore, data: bytes, age: float) -> str:
    key = store.put(data).sha256
    when = time.time() - age
    os.utime(store.root / key[:2] / key, (when, when))
    return key


def test_prune_by_age_keeps_recent_and_kept_objects(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    old = _aged(store, b"old" * 10, 1000)
    old_kept = _aged(store, b"kept" * 10, 2000)
    recent = _aged(store, b"recent" * 10, 10)
    result = store.prune(max_age_seconds=500, max_total_bytes=None, keep={old_kept})
    assert result == snapshots.PruneResult(removed=1, freed_bytes=30, total_bytes=40 + 60)
    assert not store.has(old)
    assert store.has(old_kept) and store.has(recent)


def test_prune_by_size_removes_least_recently_used_first(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    o1 = _aged(store, b"1" * 100, 400)
    o2 = _aged(store, b"2" * 200, 300)
    o3 = _aged(store, b"3" * 300, 200)
    o4 = _aged(store, b"4" * 400, 100)
    assert store.size_total() == 1000
    result = store.prune(max_age_seconds=None, max_total_bytes=600, keep={o1})
    # o1 is the oldest but kept; o2 then o3 go, and 100 + 400 = 500 <= 600.
    assert result == snapshots.PruneResult(removed=2, freed_bytes=500, total_bytes=500)
    assert [store.has(k) for k in (o1, o2, o3, o4)] == [True, False, False, True]
    assert store.size_total() == 500


def test_prune_cap_is_best_effort_when_kept_objects_exceed_it(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    a = _aged(store, b"a" * 100, 50)
    b = _aged(store, b"b" * 100, 40)
    result = store.prune(max_age_seconds=None, max_total_bytes=10, keep={a, b})
    assert result == snapshots.PruneResult(removed=0, freed_bytes=0, total_bytes=200)


def test_prune_to_the_cap_takes_evict_first_objects_first_oldest_first(tmp_path):
    """Agent churn (evict_first) goes before the person's older unkept objects, oldest first;
    a kept object among them stays."""
    store = SnapshotStore(tmp_path / "o")
    person_old = _aged(store, b"p" * 100, 900)
    agent = [_aged(store, bytes([65 + i]) * 100, 500 - 100 * i) for i in range(4)]
    bound = agent[0]
    result = store.prune(max_age_seconds=None, max_total_bytes=300, keep={bound}, evict_first=agent)
    # 500 bytes, a cap of 300: agent[1] and agent[2] (the oldest not kept) go, not person_old.
    assert result == snapshots.PruneResult(removed=2, freed_bytes=200, total_bytes=300)
    assert [store.has(k) for k in (person_old, *agent)] == [True, True, False, False, True]


def test_get_and_repeated_put_count_as_use(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    read = _aged(store, b"read later", 1000)
    reput = _aged(store, b"put again", 1000)
    untouched = _aged(store, b"untouched", 1000)
    store.get(read)
    store.put(b"put again")
    result = store.prune(max_age_seconds=500, max_total_bytes=None)
    assert result.removed == 1
    assert store.has(read) and store.has(reput) and not store.has(untouched)


def test_prune_clears_stale_temp_files_only(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    stale = tmp_path / "o" / "tmp" / "crashed"
    fresh = tmp_path / "o" / "tmp" / "writing"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    when = time.time() - 7200
    os.utime(stale, (when, when))
    store.prune(max_age_seconds=None, max_total_bytes=None)
    assert not stale.exists() and fresh.exists()


def test_non_durable_puts_are_flushed_in_one_call(tmp_path):
    store = SnapshotStore(tmp_path / "o")
    keys = [store.put(f"file {i}".encode(), durable=False).sha256 for i in range(50)]
    store.flush()
    assert [store.get(k) for k in keys] == [f"file {i}".encode() for i in range(50)]
