"""Broker state in SQL through SQLAlchemy 2: SQLite by default, PostgreSQL in team mode.

Every state change goes through `transition()`, which updates the job row only if it is still
in an expected state (compare-and-set) and writes the event row in the same transaction, so a
crash leaves either both or neither, and two racing callers cannot both move a job.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from ..audit.log import AuditLog, AuditUnavailable
from .jobs import AUDIT_OPTIONAL, State, can_transition

log = logging.getLogger(__name__)

# States in which a job's cost counts against the budget (DESIGN.md, "Audit and bundles").
RESERVED = (State.APPROVED, State.QUEUED, State.SUBMITTED, State.COMPLETED)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps are stored as UTC and always come back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.astimezone(dt.UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "qguard_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    requester: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The requester's user, as a column so budgets and rates are SQL, not JSON paths.
    requester_user: Mapped[str] = mapped_column(String(256), index=True, default="")
    # The kernel that asked (from the channel, never the kernel's word): per-kernel rates.
    requester_kernel: Mapped[str] = mapped_column(String(64), index=True, default="")
    # The cost estimate: reserved against the budget while the job is approved, queued,
    # submitted or completed; released (not counted) if it fails or is cancelled.
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    backend: Mapped[str] = mapped_column(String(128), index=True)
    shots: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The validated request as received (program payload included), so a restarted broker can
    # still run it and a reviewer can see exactly what was asked.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    program_sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[dict[str, str]] = mapped_column(JSON)
    policy_version: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))
    decision: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    provider_job_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Distinct approvers of the current digest, kept with the job so a status read is one row.
    approvals_given: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str] = mapped_column(String(64), unique=True)


class JobEvent(Base):
    __tablename__ = "qguard_job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("qguard_jobs.id"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    from_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    to_state: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class Approval(Base):
    __tablename__ = "qguard_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("qguard_jobs.id"), index=True)
    approver: Mapped[str] = mapped_column(String(256))
    digest: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class MfaStep(Base):
    """TOTP time steps already used, per person: a code is accepted once only (RFC 6238, 5.2)."""

    __tablename__ = "qguard_mfa_steps"
    __table_args__ = (UniqueConstraint("user", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(256), index=True)
    step: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class WorkspaceChange(Base):
    """One file change the watcher saw, with who made it (an agent kernel or the person)."""

    __tablename__ = "qguard_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    path: Mapped[str] = mapped_column(Text, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    before_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    after_sha: Mapped[str | None] = mapped_column(String(64), nullable=True)
    before_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    before_stored: Mapped[bool] = mapped_column(default=False)
    after_stored: Mapped[bool] = mapped_column(default=False)
    # "kernel:<id>" when an agent kernel was executing at the time, else "user:<name>".
    actor: Mapped[str] = mapped_column(String(256))
    kernels: Mapped[list[str]] = mapped_column(JSON, default=list)
    moved_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    moved_to: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The change this one undid (POST .../revert), if it is a revert.
    reverts: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # What the entry was before and after, when not a regular file (directory, symlink, fifo,
    # socket, ...): such entries are recorded, never opened; a link with its text.
    entry_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    before_entry_type: Mapped[str | None] = mapped_column(String(16), nullable=True)
    link_target: Mapped[str | None] = mapped_column(Text, nullable=True)
    before_link_target: Mapped[str | None] = mapped_column(Text, nullable=True)


# Columns added to tables after their first release, nullable, added to an existing database
# when the store opens it (create_all creates missing tables, never missing columns).
ADDED_COLUMNS = {
    "qguard_changes": ("entry_type", "before_entry_type", "link_target", "before_link_target"),
}


def _add_missing_columns(engine: Engine) -> None:
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    tables = {t.name: t for t in Base.metadata.sorted_tables}
    with engine.begin() as conn:
        have = inspect(conn)
        ops = None
        for table, names in ADDED_COLUMNS.items():
            present = {c["name"] for c in have.get_columns(table)}
            for name in names:
                if name in present:
                    continue
                ops = ops or Operations(MigrationContext.configure(conn))
                column = tables[table].c[name]
                ops.add_column(table, Column(name, column.type, nullable=True))


def _change_dict(c: WorkspaceChange) -> dict[str, Any]:
    return {
        "id": c.id,
        "at": c.at.isoformat(),
        "seen_at": c.seen_at.isoformat(),
        "path": c.path,
        "kind": c.kind,
        "before_sha": c.before_sha,
        "after_sha": c.after_sha,
        "before_size": c.before_size,
        "size": c.size,
        "before_stored": c.before_stored,
        "after_stored": c.after_stored,
        "actor": c.actor,
        "kernels": list(c.kernels or []),
        "moved_from": c.moved_from,
        "moved_to": c.moved_to,
        "reverts": c.reverts,
        **_entry_types(c),
        "link_target": c.link_target,
        "before_link_target": c.before_link_target,
    }


def _entry_types(c: WorkspaceChange) -> dict[str, str | None]:
    """None on a side means nothing was there. A row written before the columns existed has
    neither: its entries were files, but for the missing side of a creation or deletion."""
    if c.entry_type is None and c.before_entry_type is None:
        return {
            "entry_type": None if c.kind == "deleted" else "file",
            "before_entry_type": None if c.kind == "created" else "file",
        }
    return {"entry_type": c.entry_type, "before_entry_type": c.before_entry_type}


class TransitionConflict(RuntimeError):
    """The job was not in a state from which the requested transition is allowed."""

    def __init__(self, job_id: str, current: str | None, target: str) -> None:
        self.job_id, self.current, self.target = job_id, current, target
        where = "does not exist" if current is None else f"is {current}"
        super().__init__(f"job {job_id} {where}; it cannot become {target}")


def _job_dict(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "requester": job.requester,
        "cost": job.cost,
        "backend": job.backend,
        "shots": job.shots,
        "seed": job.seed,
        "max_cost": job.max_cost,
        "program": {k: v for k, v in job.request["program"].items() if k != "payload_b64"},
        "files": job.files,
        "policy_version": job.policy_version,
        "digest": job.digest,
        "decision": job.decision,
        "reason": job.reason,
        "result": job.result,
        "provider_job_id": job.provider_job_id,
        "approvals_given": job.approvals_given or 0,
    }


class Store:
    """Synchronous store; the broker calls it from one worker thread, never from the event loop."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, echo=echo, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._lock = threading.Lock()
        # Job moves are written to the audit log inside their transaction: an entry that cannot
        # be written rolls the move back (unless stopping is all it does: AUDIT_OPTIONAL).
        self.audit: AuditLog | None = None
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._lock, self._session.begin() as session:
            yield session

    # -- writes ---------------------------------------------------------------------------

    def _audit(self, kind: str, *, optional: bool, sync: bool = False, **fields: Any) -> None:
        if self.audit is None:
            return
        try:
            self.audit.append(kind, sync=sync, critical=not optional, **fields)
        except AuditUnavailable as exc:
            if not optional:
                raise
            log.error("qguard: %s went ahead without its audit entry: %s", kind, exc)

    def create_job(self, *, actor: str, **fields: Any) -> dict[str, Any]:
        now = utcnow()
        job = Job(
            id=fields.pop("id", None) or uuid.uuid4().hex,
            state=State.RECEIVED.value,
            created_at=now,
            updated_at=now,
            idempotency_key=uuid.uuid4().hex,
            **fields,
        )
        with self._tx() as session:
            session.add(job)
            session.flush()
            session.add(
                JobEvent(
                    job_id=job.id,
                    at=now,
                    from_state=None,
                    to_state=State.RECEIVED.value,
                    actor=actor,
                    detail={},
                )
            )
            self._audit(
                "job.received",
                optional=False,
                job=job.id,
                actor=actor,
                user=job.requester_user,
                kernel=job.requester_kernel,
                notebook=(job.requester or {}).get("notebook"),
                cell=(job.requester or {}).get("cell_id"),
                # Which agent (by its token's name) drove the kernel, if one did.
                agent=(job.requester or {}).get("agent"),
                backend=job.backend,
                shots=job.shots,
                seed=job.seed,
                program_sha256=job.program_sha256,
                files=job.files,
                digest=job.digest,
                policy_version=job.policy_version,
            )
            return _job_dict(job)

    def transition(
        self,
        job_id: str,
        target: State,
        *,
        actor: str,
        detail: dict[str, Any] | None = None,
        expect: Iterable[State] | None = None,
        **updates: Any,
    ) -> dict[str, Any]:
        """Move a job to `target` and record the event, atomically; raise TransitionConflict.

        `expect` narrows the states the caller accepts the job to be in (default: every state
        from which `target` is allowed).
        """
        now = utcnow()
        with self._tx() as session:
            job = session.get(Job, job_id)
            current = job.state if job else None
            allowed = current is not None and can_transition(current, target)
            if expect is not None:
                allowed = allowed and current in {State(s).value for s in expect}
            if not allowed:
                raise TransitionConflict(job_id, current, target.value)
            res = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == current)
                .values(state=target.value, updated_at=now, **updates)
            )
            if res.rowcount != 1:  # lost a race with another writer
                raise TransitionConflict(job_id, current, target.value)
            session.add(
                JobEvent(
                    job_id=job_id,
                    at=now,
                    from_state=current,
                    to_state=target.value,
                    actor=actor,
                    detail=detail or {},
                )
            )
            self._audit(
                "job.transition",
                optional=target in AUDIT_OPTIONAL,
                # The submission's entry is on disk before any provider is called.
                sync=target == State.SUBMITTED,
                job=job_id,
                **{"from": current, "to": target.value},
                actor=actor,
                reason=updates.get("reason"),
                detail=detail or {},
            )
            session.flush()
            session.refresh(job)
            return _job_dict(job)

    def add_approval(
        self, job_id: str, approver: str, digest: str, *, mfa: list[str] | None = None
    ) -> int:
        """Record one approval; return how many distinct approvers the job now has. `mfa`: why
        it needed a TOTP code (checked before), kept in its audit entry."""
        with self._tx() as session:
            session.add(Approval(job_id=job_id, approver=approver, digest=digest, at=utcnow()))
            session.flush()
            rows = session.scalars(
                select(Approval.approver).where(
                    Approval.job_id == job_id, Approval.digest == digest
                )
            ).all()
            given = len(set(rows))
            session.execute(update(Job).where(Job.id == job_id).values(approvals_given=given))
            self._audit(
                "job.approval",
                optional=False,
                job=job_id,
                approver=approver,
                digest=digest,
                approvals_given=given,
                **({"mfa": mfa} if mfa else {}),
            )
            return given

    def claim_mfa_step(self, user: str, step: int) -> bool:
        """Take a TOTP time step for `user`; False if it, or a later one, was taken before."""
        try:
            with self._tx() as session:
                last = session.scalar(
                    select(MfaStep.step).where(MfaStep.user == user).order_by(MfaStep.step.desc())
                )
                if last is not None and step <= last:
                    return False
                session.add(MfaStep(user=user, step=step, at=utcnow()))
                return True
        except IntegrityError:  # another server took the same step at the same moment
            return False

    # -- reads ----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._tx() as session:
            job = session.get(Job, job_id)
            return _job_dict(job) if job else None

    def run_inputs(self, job_id: str) -> tuple[dict[str, Any], str] | None:
        """The stored request (payload included) and the job's idempotency key."""
        with self._tx() as session:
            job = session.get(Job, job_id)
            return (dict(job.request), job.idempotency_key) if job else None

    def approvals(self, job_id: str) -> list[dict[str, Any]]:
        with self._tx() as session:
            rows = session.scalars(
                select(Approval).where(Approval.job_id == job_id).order_by(Approval.id)
            )
            return [
                {"approver": a.approver, "digest": a.digest, "at": a.at.isoformat()} for a in rows
            ]

    def set_provider_job_id(self, job_id: str, provider_job_id: str) -> None:
        with self._tx() as session:
            session.execute(
                update(Job).where(Job.id == job_id).values(provider_job_id=provider_job_id)
            )

    def get_with_history(self, job_id: str) -> dict[str, Any] | None:
        with self._tx() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            out = _job_dict(job)
            out["events"] = [
                {
                    "at": e.at.isoformat(),
                    "from": e.from_state,
                    "to": e.to_state,
                    "actor": e.actor,
                    "detail": e.detail,
                }
                for e in session.scalars(
                    select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
                )
            ]
            out["approvals"] = [
                {"approver": a.approver, "digest": a.digest, "at": a.at.isoformat()}
                for a in session.scalars(
                    select(Approval).where(Approval.job_id == job_id).order_by(Approval.id)
                )
            ]
            return out

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        notebook: str | None = None,
        kernel_id: str | None = None,
        backend: str | None = None,
        user: str | None = None,
        before: dt.datetime | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Newest first. `before` pages back: pass the last row's `created_at`."""
        with self._tx() as session:
            q = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit)
            if states:
                q = q.where(Job.state.in_(list(states)))
            if backend:
                q = q.where(Job.backend == backend)
            if user:
                q = q.where(Job.requester_user == user)
            if before is not None:
                q = q.where(Job.created_at < before)
            rows = [_job_dict(j) for j in session.scalars(q)]
        # Requester filters run in Python: JSON path queries differ between SQLite and PostgreSQL.
        if notebook is not None or kernel_id is not None:
            rows = [
                r
                for r in rows
                if (notebook is not None and r["requester"].get("notebook") == notebook)
                or (kernel_id is not None and r["requester"].get("kernel_id") == kernel_id)
            ]
        return rows

    def agent_jobs_since(
        self, agent: str, since: dt.datetime, *, exclude: str | None = None
    ) -> int:
        """Jobs an agent asked for since `since` (filtered in Python: JSON paths differ between
        SQLite and PostgreSQL)."""
        with self._tx() as session:
            rows = session.execute(select(Job.id, Job.requester).where(Job.created_at >= since))
            return sum(
                1 for jid, req in rows if jid != exclude and (req or {}).get("agent") == agent
            )

    def spent_since(self, users: Iterable[str], day_start: dt.datetime) -> float:
        """What these requesters together have reserved or spent since `day_start` (a group's
        budget in team mode)."""
        from sqlalchemy import func

        names = sorted(set(users))
        if not names:
            return 0.0
        with self._tx() as session:
            spent = session.scalar(
                select(func.coalesce(func.sum(Job.cost), 0.0)).where(
                    Job.requester_user.in_(names),
                    Job.created_at >= day_start,
                    Job.state.in_([s.value for s in RESERVED]),
                )
            )
        return float(spent)

    def usage(
        self,
        user: str,
        *,
        kernel_id: str | None = None,
        day_start: dt.datetime,
        window_start: dt.datetime,
        baseline_start: dt.datetime,
    ) -> dict[str, float | int]:
        """What a user spent today and how many jobs they, and one kernel of theirs, asked for
        in the current window and in the baseline before it."""
        from sqlalchemy import func

        def count(*where: Any) -> int:
            return int(session.scalar(select(func.count()).select_from(Job).where(*where)) or 0)

        with self._tx() as session:
            spent = session.scalar(
                select(func.coalesce(func.sum(Job.cost), 0.0)).where(
                    Job.requester_user == user,
                    Job.created_at >= day_start,
                    Job.state.in_([s.value for s in RESERVED]),
                )
            )
            in_window = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.requester_user == user, Job.created_at >= window_start)
            )
            in_baseline = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.requester_user == user,
                    Job.created_at >= baseline_start,
                    Job.created_at < window_start,
                )
            )
        out: dict[str, float | int] = {
            "spent_today": float(spent),
            "jobs_window": int(in_window),
            "jobs_baseline": int(in_baseline),
        }
        if kernel_id is not None:
            with self._tx() as session:
                mine = Job.requester_kernel == kernel_id
                out["kernel_jobs_window"] = count(mine, Job.created_at >= window_start)
                out["kernel_jobs_baseline"] = count(
                    mine, Job.created_at >= baseline_start, Job.created_at < window_start
                )
        return out

    # -- workspace changes ----------------------------------------------------------------

    def add_changes(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        with self._tx() as session:
            objs = [WorkspaceChange(**row) for row in rows]
            session.add_all(objs)
            session.flush()
            return [_change_dict(o) for o in objs]

    def changes(
        self, *, since_id: int = 0, since: dt.datetime | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        with self._tx() as session:
            q = select(WorkspaceChange).where(WorkspaceChange.id > since_id)
            if since is not None:
                q = q.where(WorkspaceChange.at >= since)
            q = q.order_by(WorkspaceChange.id).limit(limit)
            return [_change_dict(o) for o in session.scalars(q)]

    def latest_changes(self, paths: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The newest recorded change of each of these paths (those that have one)."""
        out: dict[str, dict[str, Any]] = {}
        with self._tx() as session:
            for path in paths:
                obj = session.scalars(
                    select(WorkspaceChange)
                    .where(WorkspaceChange.path == path)
                    .order_by(WorkspaceChange.id.desc())
                    .limit(1)
                ).first()
                if obj is not None:
                    out[path] = _change_dict(obj)
        return out

    def change(self, change_id: int) -> dict[str, Any] | None:
        with self._tx() as session:
            obj = session.get(WorkspaceChange, change_id)
            return _change_dict(obj) if obj else None

    def change_hashes(self, since: dt.datetime) -> set[str]:
        """Snapshot hashes recent changes refer to (kept when the store is pruned)."""
        with self._tx() as session:
            rows = session.execute(
                select(WorkspaceChange.before_sha, WorkspaceChange.after_sha).where(
                    WorkspaceChange.at >= since
                )
            ).all()
        return {h for row in rows for h in row if h}

    def change_refs(self, since: dt.datetime) -> list[tuple[str, str, str | None, str | None]]:
        """(path, actor, before_sha, after_sha) of the changes since `since`, oldest first:
        what the snapshot store's pruning needs to tell the agents' content from the person's."""
        with self._tx() as session:
            rows = session.execute(
                select(
                    WorkspaceChange.path,
                    WorkspaceChange.actor,
                    WorkspaceChange.before_sha,
                    WorkspaceChange.after_sha,
                )
                .where(WorkspaceChange.at >= since)
                .order_by(WorkspaceChange.id)
            ).all()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        found = self.get_with_history(job_id)
        return found["events"] if found else []


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: the CLI can read while the server writes. FULL sync: a committed transition survives
    # a power cut, which is what "nothing lost on a crash" needs.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


__all__ = ["Store", "TransitionConflict", "sqlite_url", "utcnow"]
