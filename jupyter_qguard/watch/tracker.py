"""The server's side of the change feed: runs the watcher, records each change with who made it,
voids approvals whose files changed, serves diffs and reverts.

Attribution: a change belongs to an agent kernel when one was executing when the change began
(or finished executing after that), else to the person. Both signals come from the server's view
of the kernels (execution state and last activity, which the server's kernel manager updates
from the kernel's messages): when in doubt the agent is named, since wrongly blaming the agent
is safer than wrongly clearing it. File ownership names nobody: a root server's kernels write
through an idmapped mount, so their files land as the owner's. What does name a kernel that is
not executing is its processes' own write counters (kernel_io.py, when the app gives the
kernels' processes): a kernel whose processes wrote just before a change counts as active, so
a thread or child left writing after its cell returned is named too.

Disk: each agent kernel has a write budget (budget.py): what the changes attributed to it add
to the workspace; past it the kernel is stopped, through the `stop_kernel` callback the app
gives (the server's kernel manager), with the reason in an alert event, the server log and a
`kernel.stop` audit entry. Agent writes that eat into the room the audit log keeps on its disk
raise an alert, and stop the writing kernels before the reserve is reached (disk.py). The
snapshot store's cap is restored as soon as a batch of changes takes the store past it, and
agent kernels' content goes first (`prune`).

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
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from .. import workspace_io as wio
from .budget import WriteBudget
from .disk import DiskWatch
from .kernel_io import WriteActivity
from .snapshots import PruneResult, SnapshotNotFound, SnapshotStore
from .toolfiles import alert_text, tool_file
from .watcher import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, Change, WorkspaceWatcher

log = logging.getLogger("jupyter_qguard.watch")

# A kernel whose last activity is this close before a change's first event counts as its author:
# the write and the kernel's final "idle" can arrive in either order.
ACTIVITY_SLACK_SECONDS = 1.0
# Alerts for tool files, one per file, at most this many from one batch (an agent's `git init`
# writes dozens of files); the rest are named together in one more alert.
MAX_TOOL_ALERTS = 20
# Once a batch of changes takes the snapshot store past its cap, it is pruned to this share of
# the cap, so that an agent's churn costs one prune every few files rather than one per file.
PRUNE_TO_SHARE = 0.9
# Jobs whose bound files' snapshots are never pruned: they wait for a person, or run soon.
LIVE_JOB_STATES = ("pending_approval", "approved", "queued")
AGENT_ACTORS = ("kernel:", "agent:")
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
        write_budget: int = 0,
        stop_kernel: Callable[[str, str], Awaitable[None]] | None = None,
        kernel_roots: Callable[[], dict[str, int]] | None = None,
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
        self.budget = WriteBudget(write_budget)
        # Called with (kernel id, reason) to stop an agent kernel (the app: its kernel manager).
        self.stop_kernel = stop_kernel
        self._stopped: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.writes = WriteActivity(kernel_roots) if kernel_roots is not None else None
        audit = getattr(broker, "audit", None)
        self.disk = (
            DiskWatch(audit.dir, audit.min_free_bytes, self.root) if audit is not None else None
        )
        self._prune_lock = asyncio.Lock()
        self._cap_prune: asyncio.Task[Any] | None = None
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
        if self.writes is not None:
            self.writes.start()
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
        if self.writes is not None:
            await asyncio.to_thread(self.writes.stop)

    # -- from the watcher's thread ----------------------------------------------------------

    def _from_watcher(self, changes: list[Change]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Who was active is read now, on the watcher's thread: a few hundred ms after the write.
        active = self.agent_activity()
        if self.writes is not None:
            # A kernel whose processes wrote since the last sample (half a second) was active
            # then, executing or not.
            wrote = self.writes.sample()
            active = {
                k: (state, max(last, wrote.get(k, 0.0))) for k, (state, last) in active.items()
            }
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
        self._police_disk(stored)
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

    def _police_disk(self, rows: list[dict[str, Any]]) -> None:
        """Count what agent kernels added (their write budget), watch the audit log's disk,
        and restore the snapshot store's cap: after each batch of recorded changes."""
        self.budget.forget(list(self.broker.kernels))
        for overrun in self.budget.charge(rows):
            self._stop(
                overrun.kernel_id,
                overrun.reason,
                kind="write_budget",
                added_bytes=overrun.added,
                budget_bytes=overrun.budget,
                paths=list(overrun.paths),
            )
        grew = self.budget.grew(rows)
        finding = None
        if self.disk is not None and grew:
            remaining = {k: self.budget.remaining(k) for k in grew}
            finding = self.disk.check(grew, remaining)
        if finding is not None:
            fresh = [k for k in finding.kernels if k not in self._stopped]
            if finding.level in ("stop", "full"):
                for kernel_id in fresh:
                    self._stop(
                        kernel_id,
                        finding.stop_reason(kernel_id),
                        kind="disk",
                        alert=False,
                        free_bytes=finding.free,
                        reserve_bytes=finding.reserve,
                    )
            if finding.rose or (finding.level != "low" and fresh):
                log.warning("qguard: %s", finding.message)
                self.broker.events.publish(
                    {
                        "type": "alert",
                        "kind": "disk",
                        "level": finding.level,
                        "kernels": list(finding.kernels),
                        "free_bytes": finding.free,
                        "reserve_bytes": finding.reserve,
                        "audit_dir": finding.audit_dir,
                        "message": finding.message,
                    }
                )
        if any(r["after_stored"] for r in rows):
            self._restore_cap_soon()

    def _stop(
        self, kernel_id: str, reason: str, *, kind: str, alert: bool = True, **fields: Any
    ) -> None:
        """Stop an agent kernel, once, saying why: the server log, the audit log (a
        `kernel.stop` entry) and, unless the caller raises its own, an alert event."""
        if kernel_id in self._stopped:
            return
        self._stopped.add(kernel_id)
        log.warning("qguard: %s", reason)
        self.broker.record("kernel.stop", kernel=kernel_id, reason=reason, cause=kind, **fields)
        if alert:
            self.broker.events.publish(
                {"type": "alert", "kind": kind, "kernel": kernel_id, "message": reason, **fields}
            )
        if self.stop_kernel is None:
            log.error("qguard: no way to stop kernel %s here (no stop_kernel given)", kernel_id)
            return
        task = asyncio.ensure_future(self._stop_now(kernel_id, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_now(self, kernel_id: str, reason: str) -> None:
        assert self.stop_kernel is not None
        try:
            await self.stop_kernel(kernel_id, reason)
        except Exception:
            log.exception("qguard: stopping kernel %s failed", kernel_id)

    def _restore_cap_soon(self) -> None:
        """Prune in the background if the store is past its cap (one prune at a time; a
        batch that arrives during one is covered by the next check)."""
        if self._cap_prune is not None and not self._cap_prune.done():
            return
        self._cap_prune = asyncio.ensure_future(self._restore_cap())

    async def _restore_cap(self) -> None:
        try:
            total = await asyncio.to_thread(self.snapshots.size_total)
            if total > self.max_total_bytes:
                result = await self.prune(int(self.max_total_bytes * PRUNE_TO_SHARE))
                log.info(
                    "qguard: the snapshot store was past its cap (%d bytes): %d objects "
                    "removed, %d bytes left",
                    self.max_total_bytes,
                    result.removed,
                    result.total_bytes,
                )
        except Exception:
            log.exception("qguard: restoring the snapshot store's cap failed")

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
                        # What the panel shows: the first finding, and how many there are.
                        "message": "what looks like a secret is in the workspace, where agent "
                        f"kernels can read it: {report.findings[0].describe()}"
                        + (
                            f" (and {len(report.findings) - 1} more)"
                            if len(report.findings) > 1
                            else ""
                        ),
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

    async def prune(self, max_total_bytes: int | None = None) -> PruneResult:
        """Remove old snapshots, then keep the store under its cap (`max_total_bytes`, by
        default the configured one). Never removed: the person's content (what the person
        wrote, files as they were before an agent changed them, current files last written
        by the person) referred to by a recent change or by the watcher's baseline, and what
        a live job needs (its bound files' current content and their newest change's before
        and after: the review shows that diff). Agent kernels' content goes first, least
        recently used first (`classify`)."""
        async with self._prune_lock:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.max_age_seconds)
            refs = await self.broker._db(self.broker.store.change_refs, since)
            current = await asyncio.to_thread(self.watcher.known_files)
            person, agent = classify(refs, current)
            keep = person | await self._live_job_hashes(current)
            cap = self.max_total_bytes if max_total_bytes is None else max_total_bytes
            return await asyncio.to_thread(
                self.snapshots.prune,
                max_age_seconds=self.max_age_seconds,
                max_total_bytes=cap,
                keep=keep,
                evict_first=agent - keep,
            )

    async def _live_job_hashes(self, current: dict[str, str]) -> set[str]:
        jobs = await self.broker._db(
            self.broker.store.list, states=list(LIVE_JOB_STATES), limit=100000
        )
        paths = sorted({p for job in jobs for p in job.get("files") or {}})
        if not paths:
            return set()
        latest = await self.broker._db(self.broker.store.latest_changes, paths)
        out = {current[p] for p in paths if p in current}
        for change in latest.values():
            out |= {h for h in (change["before_sha"], change["after_sha"]) if h}
        return out


def classify(
    refs: Iterable[tuple[str, str, str | None, str | None]], current: dict[str, str]
) -> tuple[set[str], set[str]]:
    """(the person's content, agent kernels' content) among these changes (path, actor,
    before, after; oldest first) and the current files (path -> hash).

    A change's `after` is its author's. Its `before` is the author of the change before it
    at that path, or the person's when there is none (the file was there before the window:
    an agent deleting or overwriting it destroys the person's content, the one thing a revert
    must be able to bring back). A current file is its last change's author's. Content that is
    both (an agent copied a person's file) is the person's."""
    by_agent: dict[str, bool] = {}
    person: set[str] = set()
    agent: set[str] = set()
    for path, actor, before, after in refs:
        mine = str(actor).startswith(AGENT_ACTORS)
        if before:
            (agent if by_agent.get(path, False) else person).add(before)
        if after:
            (agent if mine else person).add(after)
        by_agent[path] = mine
    for path, sha in current.items():
        (agent if by_agent.get(path, False) else person).add(sha)
    return person, agent - person


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
