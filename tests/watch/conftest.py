"""Fixtures of the watcher's tests: a workspace, a snapshot store, and real watchers on them
(stopped at the end)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.watching import Recorder

from jupyter_qguard.watch.snapshots import SnapshotStore
from jupyter_qguard.watch.watcher import WorkspaceWatcher


@pytest.fixture
def ws(tmp_path) -> Path:
    root = tmp_path / "workspace"
    root.mkdir()
    return root


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "state" / "objects")


@pytest.fixture
def start_watcher(ws, store):
    watchers: list[WorkspaceWatcher] = []

    def start(**kwargs) -> tuple[WorkspaceWatcher, Recorder]:
        recorder = Recorder()
        kwargs.setdefault("store", store)
        watcher = WorkspaceWatcher(ws, recorder, **kwargs)
        watcher.start()
        watchers.append(watcher)
        return watcher, recorder

    yield start
    for watcher in watchers:
        watcher.stop()
