"""The server's side of the change feed: runs the watcher, records each change with who made it,
voids approvals whose files changed, serves diffs and reverts.

Attribution: a change belongs to an agent kernel when one was executing when the change began
(or finished executing after that), else to the person. Both signals come from the server's view
of the kernels (execution state and last activity, which the server's kernel manager updates
from the kernel's messages): when in doubt the agent is named, since wrongly blaming the agent
is safer than wrongly clearing it. Root-mode kernels run as a uid of their own, so there a file
owned by a kernel's uid also names the agent.

Alerts: an agent kernel's change to a file a person's own tools run later (bytecode, `.git`,
`conftest.py`, `Makefile`, `.vscode/`...: toolfiles.TOOL_FILES) raises an alert event naming
the file and why it matters.

Reverts write through `workspace_io.write_beneath`: every folder on the way is opened without
following links and the file is renamed into place relative to its folder's descriptor, so a
revert never writes through a link nor outside the workspace. Restoring under a folder that is
now a link is refused with a sentence saying so; a link (or FIFO...) now at the file's own path
is removed (never followed) and the file put back in its place.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import workspace_io as wio
from .snapshots import SnapshotNotFound, SnapshotStore
from .toolfiles import alert_text, tool_file
from .watcher import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, Change, WorkspaceWatcher

log = logging.getLogger("jupyter_qguard.watch")

# A kernel whose last activity is this close before a change's first event counts as its author:
# the write and the kernel's final "idle" can arrive in either order.
ACTIVITY_SLACK_SECONDS = 1.0
# Alerts for tool files, one per file, at most this many from one batch (an agent's `git init`
# writes dozens of files); the rest are named together in one more alert.
MAX_TOOL_ALERTS = 20
_ENTRY_WORDS = {**wio.ENTRY_WORDS, "directory": "a folder", "other": "a special file"}


class ChangeError(ValueError):
    """A revert or a read that cannot be done; the message says why."""


class ChangeTracker:
    def __init__(
        self,
        *,
        broker: Any,
        root: str,
        objects_dir: Path,
        agent_activity: Callable[[], dict[str, tuple[str, float]]],
        agent_edits: Any = None,
        person: str,
        ignore: list[str] | None,
        debounce_seconds: float,
        max_file_bytes: int,
        max_total_bytes: int,
        max_age_seconds: float,
        max_entries: int | None = DEFAULT_MAX_ENTRIES,
        max_depth: int | None = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.broker = broker
        self.root = str(Path(root).resolve())
        self.snapshots = SnapshotStore(objects_dir, max_object_bytes=max_file_bytes)
        self.agent_activity = agent_activity
        # agents.collaboration.AgentEdits: what agents wrote through the contents API or a
        # collaboration room (the server writes it, so no agent kernel was busy).
        self.agent_edits = agent_edits
        self.person = person
        self.max_total_bytes = max_total_bytes
        self.max_age_seconds = max_age_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        # Paths being reverted: (actor, change undone, future of the recorded revert).
        self._reverting: dict[str, tuple[str, int, asyncio.Future[dict[str, Any]]]] = {}
        self.watcher = WorkspaceWatcher(
            self.root,
            self._from_watcher,
            store=self.snapshots,
            ignore=ignore,
            debounce_seconds=debounce_seconds,
            max_file_bytes=max_file_bytes,
            max_entries=max_entries,
            max_depth=max_depth,
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The initial scan snapshots the workspace (seconds for 10,000 files): off the loop.
        await self._loop.run_in_executor(None, self.watcher.start)
        log.info(
            "qguard: watching %s (%.1f s initial scan)",
            self.root,
            self.watcher.initial_scan_seconds,
        )
        if self.watcher.truncated:
            self.broker.events.publish(
                {
                    "type": "alert",
                    "kind": "watch_limit",
                    "message": "the change feed does not cover the whole workspace: the "
                    f"watcher {self.watcher.truncated}",
                }
            )

    async def stop(self) -> None:
        if self._loop is not None:
            await self._loop.run_in_executor(None, self.watcher.stop)

    # -- from the watcher's thread ----------------------------------------------------------

    def _from_watcher(self, changes: list[Change]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Who was active is read now, on the watcher's thread: a few hundred ms after the write.
        active = self.agent_activity()
        asyncio.run_coroutine_threadsafe(self.record(changes, active), loop)

    def _authors(self, change: Change, active: dict[str, tuple[str, float]]) -> list[str]:
        return sorted(
            kernel_id
            for kernel_id, (state, last_activity) in active.items()
            if state == "busy" or last_activity >= change.at - ACTIVITY_SLACK_SECONDS
        )

    async def record(
        self, changes: list[Change], active: dict[str, tuple[str, float]]
    ) -> list[dict[str, Any]]:
        rows = []
        for c in changes:
            reverting = self._reverting.get(c.path)
            if reverting is not None:
                # The server wrote this file back on a person's request.
                who, reverts, kernels = reverting[0], reverting[1], []
            else:
                kernels, reverts = self._authors(c, active), None
                agent = self.agent_edits.author(c.path, c.at) if self.agent_edits else None
                if agent is not None:
                    who = f"agent:{agent}"
                else:
                    who = f"kernel:{kernels[0]}" if kernels else f"user:{self.person}"
            rows.append(
                {
                    "at": _utc(c.at),
                    "seen_at": _utc(c.seen_at),
                    "path": c.path,
                    "kind": c.kind,
                    "before_sha": c.before_sha,
                    "after_sha": c.after_sha,
                    "before_size": c.before_size,
                    "size": c.size,
                    "before_stored": c.before_stored,
                    "after_stored": c.after_stored,
                    "actor": who,
                    "kernels": kernels,
                    "moved_from": c.moved_from,
                    "moved_to": c.moved_to,
                    "reverts": reverts,
                    "entry_type": c.entry_type,
                    "before_entry_type": c.before_entry_type,
                    "link_target": c.link_target,
                    "before_link_target": c.before_link_target,
                }
            )
        try:
            stored = await self.broker._db(self.broker.store.add_changes, rows)
        except Exception:
            log.exception("qguard: could not record %d workspace change(s)", len(rows))
            return []
        for row in stored:
            self.broker.events.publish({"type": "change", "change": row})
            reverting = self._reverting.get(row["path"])
            if reverting is not None and not reverting[2].done():
                reverting[2].set_result(row)
        self._alert_tool_files(stored)
        await self.broker.void_for_changes(stored)
        await self._scan_changed([r["path"] for r in stored if r["after_sha"]])
        return stored

    def _alert_tool_files(self, rows: list[dict[str, Any]]) -> None:
        """An agent kernel changed a file a person's own tools run later: say which, and why
        that matters (toolfiles.TOOL_FILES)."""
        found = []
        for row in rows:
            if not str(row["actor"]).startswith(("kernel:", "agent:")):
                continue
            rule = tool_file(row["path"])
            if rule is not None:
                found.append((row, rule))
        for row, rule in found[:MAX_TOOL_ALERTS]:
            self.broker.events.publish(
                {
                    "type": "alert",
                    "kind": "tool_file",
                    "path": row["path"],
                    "change": row["id"],
                    "actor": row["actor"],
                    "kernels": row["kernels"],
                    "tool": rule.tool,
                    "message": alert_text(
                        row["path"], row["kind"], rule, row.get("entry_type", "file")
                    ),
                }
            )
        rest = found[MAX_TOOL_ALERTS:]
        if rest:
            paths = [row["path"] for row, _ in rest]
            self.broker.events.publish(
                {
                    "type": "alert",
                    "kind": "tool_file",
                    "paths": paths[:100],
                    "changes": [row["id"] for row, _ in rest][:100],
                    "actor": rest[0][0]["actor"],
                    "message": f"agent kernel changed {len(rest)} more files that the "
                    f"person's own tools run, among them {', '.join(paths[:5])}",
                }
            )

    async def _scan_changed(self, paths: list[str]) -> None:
        """A likely secret written into the workspace (where agent kernels read) raises an
        alert naming file, cell and line; never the value."""
        if not paths or self.broker.secret_scan.get("mode", "off") == "off":
            return
        from . import secrets

        max_bytes = int(self.broker.secret_scan.get("max_bytes", 5 << 20))
        for path in paths:
            report = await asyncio.to_thread(
                secrets.scan_file, Path(self.root), path, max_bytes=max_bytes
            )
            if report.findings:
                self.broker.events.publish(
                    {
                        "type": "alert",
                        "kind": "secrets",
                        "path": path,
                        "findings": [f.describe() for f in report.findings],
                    }
                )

    # -- REST -------------------------------------------------------------------------------

    async def list(self, *, since_id: int, since: dt.datetime | None, limit: int) -> list[dict]:
        return await self.broker._db(
            self.broker.store.changes, since_id=since_id, since=since, limit=limit
        )

    async def get(self, change_id: int) -> dict[str, Any]:
        change = await self.broker._db(self.broker.store.change, change_id)
        if change is None:
            raise KeyError(change_id)
        loop = asyncio.get_running_loop()
        change["diff"] = await loop.run_in_executor(None, self._diff, change)
        return change

    async def latest_diffs(self, paths: list[str]) -> list[dict[str, Any]]:
        """For an approver: how each bound file last changed, and who changed it."""
        latest = await self.broker._db(self.broker.store.latest_changes, paths)
        loop = asyncio.get_running_loop()
        out = []
        for path in paths:
            change = latest.get(path)
            if change is None:
                out.append({"path": path, "change": None})
                continue
            change["diff"] = await loop.run_in_executor(None, self._diff, change)
            out.append({"path": path, "change": change})
        return out

    def _content(self, sha: str | None, stored: bool) -> bytes | None:
        if sha is None:
            return None
        if not stored:
            raise ChangeError("this version was over the snapshot size cap and was not kept")
        try:
            return self.snapshots.get(sha)
        except SnapshotNotFound:
            raise ChangeError("this version's snapshot was pruned (older than kept)") from None

    def _diff(self, change: dict[str, Any]) -> dict[str, Any]:
        from .diff import diff, entry_diff

        before_entry = change.get("before_entry_type", "file")
        after_entry = change.get("entry_type", "file")
        if not {before_entry, after_entry} <= {"file", None}:
            # A link, FIFO...: what was there and what is, never anything read through it.
            return entry_diff(change)
        if change["before_sha"] is None and change["after_sha"] is None:
            return {
                "path": change["path"],
                "unavailable": "no content was read on either side of this change (a link, "
                "FIFO, socket or device, or a file over the size limit or unreadable)",
            }
        try:
            before = self._content(change["before_sha"], change["before_stored"])
            after = self._content(change["after_sha"], change["after_stored"])
        except ChangeError as exc:
            return {"path": change["path"], "unavailable": str(exc)}
        return diff(change["path"], before, after)

    async def revert(self, change_id: int, actor: str) -> dict[str, Any]:
        """Put the file back as it was before the change (delete it if the change created it).
        The revert is itself a change, recorded as the person's, pointing at the one undone."""
        change = await self.broker._db(self.broker.store.change, change_id)
        if change is None:
            raise KeyError(change_id)
        path = change["path"]
        if change["kind"] != "created" and change["before_sha"] is None:
            raise ChangeError(_unknown_before(change))
        before = self._content(change["before_sha"], change["before_stored"])
        loop = asyncio.get_running_loop()
        if path in self._reverting:
            raise ChangeError(f"{path} is being reverted already")
        done: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._reverting[path] = (f"user:{actor}", change_id, done)
        try:
            await loop.run_in_executor(None, self._write_back, path, before)
            # Report it at once (the watcher's rescan delivers it through record()), as the
            # person's, rather than after the debounce with a guessed author.
            await loop.run_in_executor(None, self.watcher.rescan)
            try:
                # Recorded by now, or on its way from the watcher's debounced path.
                recorded = await asyncio.wait_for(asyncio.shield(done), 3)
            except TimeoutError:
                recorded = None  # the bytes were already those: nothing changed
        finally:
            self._reverting.pop(path, None)
        return {"reverted": change_id, "change": recorded}

    def _write_back(self, rel: str, content: bytes | None) -> None:
        """Write `content` at `rel` (None: remove what is there), never through a link."""
        try:
            rel = wio.normalize(rel)
        except wio.UnsafeWorkspacePath as exc:
            raise ChangeError(str(exc)) from None
        blocked = self._blocked_parent(rel)
        if blocked is not None:
            raise ChangeError(blocked)
        try:
            if content is not None:
                current = wio.lstat_beneath(self.root, rel)
                if current is not None and not (
                    stat.S_ISREG(current.st_mode) or stat.S_ISDIR(current.st_mode)
                ):
                    # A link, FIFO... where the file was: removed (a link itself, never its
                    # target), so that the file can be put back in its place.
                    wio.write_beneath(self.root, rel, None)
            # Atomic, and relative to descriptors opened without following links: a folder
            # swapped for a link after the check above is refused here, not written through.
            wio.write_beneath(self.root, rel, content)
        except wio.UnsafeWorkspacePath as exc:
            raise ChangeError(
                self._blocked_parent(rel) or f"{rel} was not restored: it {exc.why}"
            ) from None
        except OSError as exc:
            raise ChangeError(f"{rel} was not restored: {exc.strerror or exc}") from None

    def _blocked_parent(self, rel: str) -> str | None:
        """Why `rel` cannot be written (a folder on the way is now a link, or not a folder), as
        the sentence the person sees; None when every folder there is a real one (or missing,
        then created as a real one)."""
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            st = wio.lstat_beneath(self.root, prefix)
            if st is None:
                return None
            if stat.S_ISLNK(st.st_mode):
                return (
                    f"{rel} was not restored: {prefix} is now a symbolic link, and a revert "
                    "never writes through a link; remove or rename the link, then revert again"
                )
            if not stat.S_ISDIR(st.st_mode):
                what = _ENTRY_WORDS.get(wio.entry_type(st.st_mode), "a file")
                return f"{rel} was not restored: {prefix} is now {what}, not a folder"
        return None

    async def prune(self) -> None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.max_age_seconds)
        keep = set(self.watcher.known_hashes())
        keep |= await self.broker._db(self.broker.store.change_hashes, since)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(
            None,
            lambda: self.snapshots.prune(
                max_age_seconds=self.max_age_seconds,
                max_total_bytes=self.max_total_bytes,
                keep=keep,
            ),
        )


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _unknown_before(change: dict[str, Any]) -> str:
    before = change.get("before_entry_type", "file")
    if before not in ("file", None):
        return (
            f"{change['path']} was {_ENTRY_WORDS.get(before, 'a special file')} before this "
            "change; a revert restores file contents only, never a link or a special file"
        )
    return (
        f"{change['path']}: its content before this change was never read (the file was over "
        "the size limit, unreadable, or not a regular file), so it cannot be restored"
    )
