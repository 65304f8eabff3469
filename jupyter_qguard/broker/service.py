"""The broker pipeline: receive → check → (approve) → queue → submit → result.

All state lives in the store; this object only holds what can be rebuilt from it (tasks,
waiters, subscribers). Store calls run on one worker thread, provider work in the provider's
own workers: the server's event loop never blocks on either.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .. import credentials as creds
from .. import workspace_io as wio
from ..audit import bundle as bundles
from ..audit import environment
from ..audit.log import AuditLog, AuditUnavailable
from ..audit.witness import WitnessRefused
from ..policy import cost as cost_model
from ..policy.engine import PolicyEngine, PolicyError
from ..policy.lint import lint
from ..providers.base import Provider, ProviderError, RunSpec
from .events import EventBus, JobWaiters
from .filehash import WorkspacePathError
from .hashing import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, BoundFileHasher
from .jobs import (
    CANCELLABLE,
    TERMINAL,
    InvalidRequest,
    State,
    approval_digest,
    validate_request,
)
from .store import Store, TransitionConflict, utcnow

log = logging.getLogger("jupyter_qguard.broker")

BROKER = "broker"
EXPIRED_REASON = "the approval window closed before anyone approved"
# The default pack's burst denials (per requester and per kernel) say this; they raise an alert.
BURST_MARK = "in the current window is far above"
# The policy pack's tier of local and remote simulators (data.json `tiers`): the one tier an
# in-server agent's presence never holds to step-up MFA (agents/inprocess.py).
SIMULATOR_TIER = "simulator"
POLICY_MFA_REASON = "the policy asks for step-up MFA to approve this job"
SOURCE_NOTE = (
    "the kernel's own description of the program, unverified: what runs is the program the "
    "drawing and the lint were made from"
)


class JobNotFound(LookupError):
    pass


class DigestMismatch(ValueError):
    """The digest the approver saw is not the job's current digest."""


class BrokerError(RuntimeError):
    pass


class SecretsInWorkspace(PermissionError):
    """Likely secrets in the workspace an agent kernel would read; the message names where."""


class ApprovalRefused(ValueError):
    """The approval cannot be applied (policy, two-person rule, MFA); the job stays pending."""


class MfaRequired(ApprovalRefused):
    """The approval needs a TOTP code and came without one (the UI asks for it and retries)."""


class Broker:
    def __init__(
        self,
        *,
        store: Store,
        backends: dict[str, dict[str, Any]],
        providers: dict[str, Provider],
        workspace_root: str,
        approval_ttl: float,
        wait_max_seconds: float,
        notebook_for_kernel: Callable[[str], Awaitable[str | None]] | None = None,
        user: str | None = None,
        kernel_settings: dict[str, Any] | None = None,
        channel_settings: dict[str, Any] | None = None,
        policy: PolicyEngine,
        workstation_tier: str = "standard",
        rate_window: float = 600.0,
        baseline_windows: int = 6,
        lint_timeout: float = 30.0,
        preflight_shots: int = 1024,
        preflight_timeout: float = 10.0,
        max_bound_file_bytes: int = DEFAULT_MAX_BYTES,
        bound_file_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.store = store
        self.backends = backends
        self.providers = providers
        self.workspace_root = str(Path(workspace_root).resolve())
        self.approval_ttl = approval_ttl
        self.wait_max_seconds = wait_max_seconds
        self.notebook_for_kernel = notebook_for_kernel
        self.user = user or getpass.getuser()
        self.kernel_settings = kernel_settings or {}
        self.channel_settings = channel_settings or {}
        self.events = EventBus()
        self.waiters = JobWaiters()
        self.kernels: dict[str, dict[str, Any]] = {}
        # Agents (agents/tokens.Agent) that drove a kernel over its websocket, as the Authorizer
        # saw them: that kernel's requests are theirs (the latest one's).
        self.kernel_agents: dict[str, Any] = {}
        self._db_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qguard-db")
        # The files jobs depend on are hashed here, never on the database thread or the event
        # loop (broker/hashing.py): the agent's files cannot stall listings or approvals.
        self.hasher = BoundFileHasher(
            self.workspace_root, max_bytes=max_bound_file_bytes, timeout=bound_file_timeout
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._probe: asyncio.Future[dict[str, Any]] | None = None
        self.policy = policy
        self.workstation_tier = workstation_tier
        # Program facts by (program hash, backend): the same circuit is parsed and transpiled
        # once, however often it is asked for.
        self._facts_cache: dict[tuple[str, str | None], Any] = {}
        self.lint_timeout = lint_timeout
        self.preflight_shots = preflight_shots
        self.preflight_timeout = preflight_timeout
        self.rate_window = rate_window
        self.baseline_windows = baseline_windows
        # What providers last said of their devices, by backend name (status, calibration id).
        self.reported: dict[str, dict[str, Any]] = {}
        # The workspace change feed (watch.tracker.ChangeTracker), when the app runs one.
        self.tracker: Any = None
        # {mode: block|warn|off, ignore, max_bytes, max_files}: the scan before agent kernels.
        self.secret_scan: dict[str, Any] = {"mode": "off"}
        # The audit log (set by the app, shared with the store), where bundles go, and the
        # keyring (TOTP secrets for step-up approvals).
        self.audit: AuditLog | None = None
        self.bundles_dir: Path | None = None
        self.sbom_cache_dir: Path | None = None
        self.credentials: Any = None
        # One person per server (a desktop): every approval is checked against the TOTP of the
        # server's user. Team servers check each approver's own.
        self.mfa_single_user = True
        # live_notebooks.LiveNotebooks when jupyter-collaboration runs (set by the extension).
        self.live_notebooks: Any = None
        # Set by the app while an in-server agent extension is enabled and QGuardApp.
        # inprocess_agents is require_mfa (agents/inprocess.py): such an agent can use the
        # user's token, so every approval of a job not on a simulator needs a TOTP code too.
        self.forced_mfa_reason: str | None = None
        self.events.observer = self._observe

    # -- audit ----------------------------------------------------------------------------

    def record(self, kind: str, /, **fields: Any) -> None:
        """An audit entry that must not stop the work at hand (a failure is logged)."""
        if self.audit is None:
            return
        try:
            self.audit.append(kind, **fields)
        except AuditUnavailable as exc:
            log.error("qguard: audit entry %s not written: %s", kind, exc)

    def _observe(self, event: dict[str, Any]) -> None:
        if event.get("type") == "alert":
            fields = {k: v for k, v in event.items() if k != "type"}
            fields["alert"] = fields.pop("kind", None)
            self.record("alert", **fields)

    def checkpoint(self, *, force: bool = False) -> None:
        """Sign the log's tree head (blocking: call it off the event loop)."""
        if self.audit is None:
            return
        try:
            self.audit.checkpoint(force=force)
        except (AuditUnavailable, WitnessRefused) as exc:
            log.error("qguard: audit checkpoint: %s", exc)
            self.events.publish({"type": "audit", "ok": False, "message": str(exc)})

    @property
    def policy_version(self) -> str:
        return self.policy.version

    def reload_policy(self) -> None:
        """Pick up edits of the policy pack (the agent kernel can never write it)."""
        try:
            if self.policy.reload_if_changed():
                log.info("qguard: policy pack reloaded, version %s", self.policy.version[:12])
                self.record("policy.load", version=self.policy.version, reloaded=True)
                self.events.publish({"type": "policy", "version": self.policy.version})
        except PolicyError as exc:
            log.error("qguard: policy pack change refused, the previous one stays: %s", exc)

    # -- plumbing -------------------------------------------------------------------------

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_pool, lambda: fn(*args, **kwargs))

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("qguard task %s failed", task.get_name(), exc_info=task.exception())

    def _changed(self, job: dict[str, Any], kind: str = "job") -> dict[str, Any]:
        self.with_mfa(job)
        self.events.publish({"type": kind, "job": job})
        self.waiters.notify(job["id"])
        return job

    async def _move(
        self,
        job_id: str,
        target: State,
        *,
        actor: str,
        detail: dict[str, Any] | None = None,
        expect: set[State] | None = None,
        **updates: Any,
    ) -> dict[str, Any]:
        job = await self._db(
            self.store.transition,
            job_id,
            target,
            actor=actor,
            detail=detail,
            expect=expect,
            **updates,
        )
        return self._changed(job)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self.record(
            "server.start",
            user=self.user,
            backends=sorted(self.backends),
            workstation_tier=self.workstation_tier,
        )
        self.record("policy.load", version=self.policy.version, reloaded=False)
        self._probe = asyncio.ensure_future(self._run_probe())
        aer = self.providers.get("aer")
        if aer is not None and hasattr(aer, "sandbox"):
            # Programs are parsed in workers confined as the agent kernels are.
            aer.sandbox = dict(self.kernel_settings)
        for provider in self.providers.values():
            await provider.start()
        snapshots = {str(b["snapshot"]) for b in self.backends.values() if b.get("snapshot")}
        if snapshots and hasattr(aer, "warm_snapshots"):
            aer.warm_snapshots(snapshots)
        # In the background: a provider that is down must not keep the server from starting.
        self._spawn(self.refresh_backends(), "refresh-backends")
        await self.recover()

    async def refresh_backends(self) -> None:
        """Ask each provider what it says of its devices; keep the last good answer."""
        for name, provider in self.providers.items():
            try:
                reports = await asyncio.wait_for(provider.backends(), 15)
            except Exception as exc:
                log.warning("qguard: provider %s did not list its backends: %s", name, exc)
                continue
            for report in reports:
                remote = report.get("name")
                for backend, spec in self.backends.items():
                    if spec.get("provider") == name and (
                        spec.get("options", {}).get("remote_name", backend) == remote
                    ):
                        self.reported[backend] = report

    async def stop(self) -> None:
        if self._probe is not None:
            # Let a probe still running finish (well under a second), so its child process
            # is reaped rather than left to the garbage collector.
            try:
                await asyncio.wait_for(asyncio.shield(self._probe), 30)
            except Exception:
                log.warning("qguard: the sandbox probe did not finish before shutdown")
        for kernel_id in list(self.kernels):
            self.detach_kernel(kernel_id, forget=True)
        for task in list(self._tasks):
            task.cancel()
        for provider in self.providers.values():
            await provider.stop()
        self.record("server.stop")
        await self._db(self.checkpoint)
        self._db_pool.shutdown(wait=True)
        self.hasher.close()
        self.store.close()

    async def recover(self) -> None:
        """Resume from the store after a restart: nothing is lost, nothing runs twice."""
        for job in await self._db(self.store.list, states=[State.RECEIVED.value], limit=100000):
            # A request that crashed mid-check never reached a person or a provider: re-checking
            # it could run a simulator job the kernel no longer waits for, so reject it instead.
            await self._move(
                job["id"],
                State.REJECTED,
                actor=BROKER,
                reason="the broker restarted while checking this request; submit it again",
            )
        for job in await self._db(self.store.list, states=[State.APPROVED.value], limit=100000):
            await self._enqueue(job["id"], actor=BROKER)
        for job in await self._db(self.store.list, states=[State.QUEUED.value], limit=100000):
            self._spawn(self._execute(job["id"]), f"execute-{job['id']}")
        for job in await self._db(self.store.list, states=[State.SUBMITTED.value], limit=100000):
            self._spawn(self._resume_submitted(job["id"]), f"resume-{job['id']}")

    # -- kernels --------------------------------------------------------------------------

    def attach_kernel(self, kernel_id: str, sock: socket.socket, info: dict[str, Any]) -> None:
        """Serve a new agent kernel's channel (called by the provisioner at each launch)."""
        from .channel import KernelChannel

        self.detach_kernel(kernel_id, forget=False)
        channel = KernelChannel(self, kernel_id, sock, **self.channel_settings)
        self.kernels[kernel_id] = {**info, "channel": channel}
        self._spawn(channel.serve(), f"channel-{kernel_id}")
        for provider in self.providers.values():
            provider.prewarm()  # the program workers this kernel's first job will need

    def detach_kernel(self, kernel_id: str, *, forget: bool) -> None:
        info = self.kernels.get(kernel_id)
        if info is not None and info.get("channel") is not None:
            info["channel"].close()
            info["channel"] = None
        if forget:
            self.kernels.pop(kernel_id, None)
            self.kernel_agents.pop(kernel_id, None)

    def note_agent(self, kernel_id: str, agent: Any) -> None:
        """An agent identity uses this kernel (the Authorizer says so on each of its requests)."""
        known = self.kernel_agents.get(kernel_id)
        if known is None or known.token_id != agent.token_id:
            self.kernel_agents[kernel_id] = agent
            self.record("agent.kernel", kernel=kernel_id, agent=agent.name, agent_id=agent.token_id)

    def kernel_starter(self, kernel_id: str) -> str | None:
        """The token id of the agent whose token started this kernel; None if a person started
        it or the kernel is unknown. An agent token may attach only to kernels it started.
        Set by the provisioner at the kernel's first launch and kept across its restarts."""
        starter = self.kernels.get(kernel_id, {}).get("starter")
        return None if starter is None else starter.token_id

    def kernel_report(self, kernel_id: str) -> dict[str, Any] | None:
        info = self.kernels.get(kernel_id)
        if info is None:
            return None
        return {
            "kernel_id": kernel_id,
            "kernel_dir": info.get("kernel_dir"),
            "sandbox": info.get("sandbox", {}),
            "connected": info.get("channel") is not None,
        }

    def record_sandbox(self, kernel_id: str, ok: bool, layers: dict[str, Any]) -> None:
        """What the launcher applied, as it reported once before any agent code ran."""
        sandbox = self.kernels.setdefault(kernel_id, {}).setdefault("sandbox", {})
        sandbox["ok"] = ok
        sandbox["applied"] = layers
        sandbox["active"] = sorted(n for n, v in layers.items() if v.get("active"))
        self.record(
            "sandbox.start",
            kernel=kernel_id,
            ok=ok,
            active=sandbox["active"],
            inactive={n: v.get("why") for n, v in layers.items() if not v.get("active")},
        )
        if not ok:
            why = {n: v.get("why") for n, v in layers.items() if not v.get("active")}
            log.error("qguard: kernel %s refused to start: %s", kernel_id, why)

    async def sandbox_probe(self) -> dict[str, Any]:
        """This machine's sandbox layers, probed once (in a child process) and kept."""
        if self._probe is None:
            self._probe = asyncio.ensure_future(self._run_probe())
        return await asyncio.shield(self._probe)

    async def _run_probe(self) -> dict[str, Any]:
        from ..isolation import ISOLATED_CWD, isolated_command

        # Isolated, from "/": `python -m` from the server's working directory (often the
        # workspace) would import whatever an agent left there before probing anything.
        proc = await asyncio.create_subprocess_exec(
            *isolated_command("-m", "jupyter_qguard.sandbox.probe"),
            "--workspace",
            self.workspace_root,
            cwd=ISOLATED_CWD,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            log.error("qguard: the sandbox probe failed: %s", why[0])
            return {}
        return json.loads(out)

    async def requester_for(self, kernel_id: str, cell_id: str | None) -> dict[str, Any]:
        notebook = None
        if self.notebook_for_kernel is not None:
            notebook = await self.notebook_for_kernel(kernel_id)
        requester: dict[str, Any] = {
            "user": self.user,
            "kind": "user",
            "kernel_id": kernel_id,
            "notebook": notebook,
            # The cell id is the kernel's own word (from the execute request's metadata); it is
            # kept for orientation and marked as such, never used for a decision.
            "cell_id": cell_id,
            "cell_id_source": "kernel",
        }
        agent = self.kernel_agents.get(kernel_id)
        if agent is not None:
            # From the agent's token, as the server authenticated it; feeds the policy.
            requester.update(
                kind="agent",
                agent=agent.name,
                agent_id=agent.token_id,
                manifest=agent.manifest.for_policy(),
            )
        return requester

    # -- submit ---------------------------------------------------------------------------

    def backend_list(self) -> list[dict[str, Any]]:
        """Each backend: how it is reached (config), its tier (policy) and what its provider
        last reported (qubits, status, calibration snapshot)."""
        out = []
        for name, spec in sorted(self.backends.items()):
            report = self.reported.get(name, {})
            out.append(
                {
                    "name": name,
                    "provider": spec.get("provider"),
                    "tier": self.policy.data.get("backends", {}).get(name, {}).get("tier"),
                    "qubits": spec.get("qubits") or report.get("num_qubits"),
                    "target": self.lint_target(spec),
                    "status": report.get("status"),
                    "calibration_id": report.get("calibration_id"),
                    "description": spec.get("description", ""),
                }
            )
        return out

    def _bound_files(
        self, requested: dict[str, str | None], notebook: str | None
    ) -> dict[str, str]:
        """Hash every bound file ourselves; a hash the kernel states must match what is on disk.
        Blocking (run through `self.hasher.run`); BoundFileRefused for a file that is not a
        regular file of the workspace reached without links, over the cap, or too slow. Paths
        are kept normalized ("./a//b" is "a/b"), as the change feed names them."""
        wanted = dict(requested)
        if notebook:
            wanted.setdefault(notebook, None)
        deadline = self.hasher.deadline()
        out: dict[str, str] = {}
        for rel, stated in sorted(wanted.items()):
            actual = self.hasher.hash(rel, deadline)
            if stated is not None and stated != actual:
                raise InvalidRequest(
                    f"files/{rel}: changed between the request and its arrival "
                    f"(stated {stated[:12]}…, now {actual[:12]}…)"
                )
            out[wio.normalize(rel)] = actual
        return out

    async def submit(self, request: Any, kernel_id: str) -> dict[str, Any]:
        payload = validate_request(request)  # raises InvalidRequest: nothing stored
        requester = await self.requester_for(kernel_id, request.get("cell_id"))
        try:
            files = await self.hasher.run(
                self._bound_files, request.get("files", {}), requester["notebook"]
            )
        except WorkspacePathError as exc:  # hashing.BoundFileRefused among them
            raise InvalidRequest(f"files: {exc}") from None
        notebook = requester["notebook"]
        if notebook and self.live_notebooks is not None:
            # A notebook open in a collaboration room is bound as its live document has it:
            # the cell that made this request may reach the disk only at the room's next
            # save, which would otherwise void the request it made.
            live = await self.live_notebooks.code_hash(notebook)
            if live is not None:
                files[wio.normalize(notebook)] = live
        return await self.admit(request, payload, requester, files)

    async def admit(
        self,
        request: dict[str, Any],
        payload: bytes,
        requester: dict[str, Any],
        files: dict[str, str],
    ) -> dict[str, Any]:
        """Store a validated request with who asked and its bound files' hashes, then check it.
        Here the server found both itself; in team mode the user's server did (hub/)."""
        kernel_id = requester["kernel_id"]
        program = request["program"]
        fields = {
            "requester": requester,
            "requester_user": requester["user"],
            "requester_kernel": kernel_id,
            "backend": request["backend"],
            "shots": request["shots"],
            "seed": request.get("seed"),
            "max_cost": request.get("max_cost"),
            "request": request,
            "program_sha256": program["sha256"],
            "files": files,
            "policy_version": self.policy_version,
            "digest": approval_digest(
                program_sha256=program["sha256"],
                backend=request["backend"],
                shots=request["shots"],
                seed=request.get("seed"),
                max_cost=request.get("max_cost"),
                files=files,
                policy_version=self.policy_version,
            ),
            "decision": {},
        }
        job = self._changed(
            await self._db(self.store.create_job, actor=f"kernel:{kernel_id}", **fields)
        )
        try:
            return await self._check(job, payload)
        except Exception as exc:
            log.exception("checking job %s failed", job["id"])
            return await self._move(
                job["id"],
                State.REJECTED,
                actor=BROKER,
                reason=f"internal error while checking: {exc}",
            )

    @staticmethod
    def lint_target(backend: dict[str, Any] | None) -> str | None:
        """What to transpile to for lint: the device snapshot a backend names, Aer's own target
        for a plain Aer backend, nothing for a backend with neither."""
        if backend is None:
            return None
        if backend.get("snapshot"):
            return str(backend["snapshot"])
        return "aer" if backend.get("provider") == "aer" else None

    def _usage(
        self, user: str, kernel_id: str | None, job: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        now = utcnow()
        window = dt.timedelta(seconds=self.rate_window)
        u = self.store.usage(
            user,
            kernel_id=kernel_id,
            day_start=now.replace(hour=0, minute=0, second=0, microsecond=0),
            window_start=now - window,
            baseline_start=now - window * (1 + self.baseline_windows),
        )
        usage: dict[str, Any] = {
            "spent_today": round(u["spent_today"], 6),
            "jobs_window": u["jobs_window"],
            "baseline_window": round(u["jobs_baseline"] / self.baseline_windows),
        }
        if kernel_id is not None:
            # One kernel's own rate: a new agent kernel flooding the broker stands out even
            # when its user's overall baseline is high.
            usage["kernel"] = {
                "id": kernel_id,
                "jobs_window": u["kernel_jobs_window"],
                "baseline_window": round(u["kernel_jobs_baseline"] / self.baseline_windows),
            }
        requester = (job or {}).get("requester") or {}
        if requester.get("kind") == "agent":
            # The agent's own rate, over its manifest's window, this job not counted.
            per = int(requester["manifest"]["limits"]["rate"]["per_seconds"])
            usage["agent"] = {
                "name": requester["agent"],
                "per_seconds": per,
                "jobs_window": self.store.agent_jobs_since(
                    requester["agent"], now - dt.timedelta(seconds=per), exclude=job["id"]
                ),
            }
        return usage

    async def policy_input(
        self, job: dict[str, Any], lint_report: dict[str, Any]
    ) -> dict[str, Any]:
        reach = self.backends.get(job["backend"]) or {}
        pack = self.policy.data.get("backends", {}).get(job["backend"], {})
        estimate = cost_model.estimate(pack.get("price"), shots=job["shots"])
        return {
            "job": {k: job[k] for k in ("backend", "shots", "seed", "max_cost")},
            "backend": {
                "name": job["backend"],
                "provider": reach.get("provider") or pack.get("provider"),
                "tier": pack.get("tier"),
                "qubits": reach.get("qubits"),
                "price": pack.get("price"),
            },
            "lint": {"findings": lint_report["findings"]},
            "cost": estimate,
            "usage": await self._db(
                self._usage, job["requester"]["user"], job["requester"].get("kernel_id"), job
            ),
            "requester": job["requester"],
            "workstation_tier": self.workstation_tier,
        }

    async def _check(self, job: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """Lint, then policy: the policy decides, from the lint findings among the rest."""
        reach = self.backends.get(job["backend"])
        # Programs are parsed and transpiled in Aer's worker processes, never in the server.
        inspector = self.providers.get("aer")
        if inspector is None or not hasattr(inspector, "inspect"):
            return await self._reject(job, "no provider is installed to read the program")
        key = (job["program"]["sha256"], self.lint_target(reach))
        facts = self._facts_cache.get(key)
        if facts is None:
            try:
                # The bound is the analysis's own, in its worker: not the wait for a worker,
                # which on a busy machine may still be starting (a sandbox and Qiskit's import)
                # when a fresh server's first job comes.
                facts = await inspector.inspect(
                    job["program"]["format"], payload, key[1], timeout=self.lint_timeout
                )
            except ProviderError as exc:
                return await self._reject(job, str(exc))
            except TimeoutError:
                return await self._reject(
                    job, f"the program could not be analysed within {self.lint_timeout:g} s"
                )
            self._facts_cache[key] = facts
            while len(self._facts_cache) > 512:
                self._facts_cache.pop(next(iter(self._facts_cache)))
        qubits = reach.get("qubits") if reach else None
        max_depth = self.policy.data.get("lint", {}).get("max_depth_warning")
        lint_report = lint(
            facts.as_dict(), backend=job["backend"], qubits=qubits, max_depth=max_depth
        )
        self.reload_policy()
        policy_input = await self.policy_input(job, lint_report)
        decision = self.policy.decide(policy_input)
        deny = list(decision.deny)
        if decision.allow and reach is None:
            deny = [
                f"backend {job['backend']} is allowed by the policy, but no provider for it "
                "is configured on this server (QGuardApp.backends)"
            ]
        record = {
            **decision.as_dict(),
            "allow": not deny,
            "deny": deny,
            "tier": policy_input["backend"]["tier"],
            "lint": lint_report,
            "cost": policy_input["cost"],
            "usage": policy_input["usage"],
            "workstation_tier": self.workstation_tier,
            # The device calibration the approver sees; the run reports its own.
            "calibration_id": self.reported.get(job["backend"], {}).get("calibration_id"),
        }
        if any(BURST_MARK in d for d in deny):
            self.events.publish(
                {
                    "type": "alert",
                    "kind": "burst",
                    "job": job["id"],
                    "requester": job["requester"],
                    "usage": policy_input["usage"],
                    "message": next(d for d in deny if BURST_MARK in d),
                }
            )
        updates = {"decision": record, "cost": policy_input["cost"]["estimate"]}
        if job["policy_version"] != self.policy.version:
            # The pack changed between the digest and now: bind the version that decided.
            updates["policy_version"] = self.policy.version
            updates["digest"] = approval_digest(
                program_sha256=job["program"]["sha256"],
                backend=job["backend"],
                shots=job["shots"],
                seed=job["seed"],
                max_cost=job["max_cost"],
                files=job["files"],
                policy_version=self.policy.version,
            )
        if deny:
            return await self._move(
                job["id"], State.REJECTED, actor=BROKER, reason="; ".join(deny), **updates
            )
        needed = decision.approvals_required
        if needed > 0:
            record["preflight"] = await self._preflight(job, payload)
        if needed == 0:
            await self._move(
                job["id"],
                State.QUEUED,
                actor=BROKER,
                detail={"why": "the policy runs it without approval"},
                **updates,
            )
            self._spawn(self._execute(job["id"]), f"execute-{job['id']}")
            return await self._db(self.store.get, job["id"])
        return await self._move(
            job["id"],
            State.PENDING_APPROVAL,
            actor=BROKER,
            detail={"why": f"the policy asks for {needed} approval(s)"},
            **updates,
        )

    async def _preflight(self, job: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """Run the job on Aer before a person sees it, bounded in shots and time, so the
        approver sees what the program does: with the target device's noise model where its
        backend names a calibration snapshot, noiseless otherwise."""
        aer = self.providers.get("aer")
        if aer is None or not hasattr(aer, "simulate"):
            return {"skipped": "no local simulator is installed"}
        noise = (self.backends.get(job["backend"]) or {}).get("snapshot")
        shots = min(job["shots"], self.preflight_shots)
        too_slow = {"skipped": f"the simulation took longer than {self.preflight_timeout:g} s"}
        started = asyncio.get_running_loop().time()
        try:
            result = await asyncio.wait_for(
                aer.simulate(
                    job["program"]["format"],
                    payload,
                    shots=shots,
                    seed=job["seed"] if job["seed"] is not None else 0,
                    noise=noise,
                ),
                self.preflight_timeout,
            )
        except TimeoutError:
            return too_slow
        except Exception as exc:
            return {"skipped": f"the simulation failed: {exc}"}
        seconds = asyncio.get_running_loop().time() - started
        if seconds > self.preflight_timeout:
            # The answer came in while the loop was busy past the bound (wait_for takes a
            # result that is ready over its timer): the bound is the rule, whichever fired.
            return too_slow
        return {
            "counts": result["counts"],
            "shots": shots,
            "noise_model": noise,
            "seconds": round(seconds, 3),
        }

    async def _reject(
        self, job: dict[str, Any], reason: str, decision: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        updates: dict[str, Any] = {"reason": reason}
        if decision is not None:
            updates["decision"] = decision
        return await self._move(job["id"], State.REJECTED, actor=BROKER, **updates)

    # -- the human ------------------------------------------------------------------------

    async def get(self, job_id: str, *, history: bool = False) -> dict[str, Any]:
        job = await self._db(self.store.get_with_history if history else self.store.get, job_id)
        if job is None:
            raise JobNotFound(job_id)
        return self.with_mfa(job)

    def mfa_reasons(self, job: dict[str, Any]) -> list[str]:
        """Why approving `job` needs a TOTP code; empty: it needs none. The policy's word, and
        an in-server agent extension's presence for a job whose backend is not in the pack's
        simulator tier (as the policy saw it when it checked the job; a pack changed since
        voids the job at approval)."""
        decision = job.get("decision") or {}
        reasons = [POLICY_MFA_REASON] if decision.get("mfa_required") else []
        if self.forced_mfa_reason and decision.get("tier") != SIMULATOR_TIER:
            reasons.append(self.forced_mfa_reason)
        return reasons

    def with_mfa(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job with `mfa` {required, reasons}: what the panel shows by the code field."""
        reasons = self.mfa_reasons(job)
        job["mfa"] = {"required": bool(reasons), "reasons": reasons}
        return job

    async def review(self, job_id: str) -> dict[str, Any]:
        """What an approver looks at beyond the job itself: the circuit drawn as it will run
        (transpiled for the backend's target, in a program worker, within lint_timeout), the
        kernel's own source text (labelled as such: nothing checks it against the program),
        how each bound file last changed, and the budget left today."""
        job = await self.get(job_id)
        request, _ = await self._db(self.store.run_inputs, job_id)
        program = request["program"]
        target = self.lint_target(self.backends.get(job["backend"]))
        drawn: dict[str, Any] = {"drawing": None, "target": None, "why_not": None}
        try:
            drawn = await self.providers["aer"].draw(  # type: ignore[attr-defined]
                program["format"],
                base64.b64decode(program["payload_b64"]),
                target,
                timeout=self.lint_timeout,
            )
        except TimeoutError:
            drawn["why_not"] = f"drawing it took longer than {self.lint_timeout:g} s"
        except Exception as exc:
            drawn["why_not"] = f"it could not be drawn: {exc}"
        if drawn["drawing"] is None:
            log.info("qguard: no drawing for job %s: %s", job_id, drawn["why_not"])
        files = (
            await self.tracker.latest_diffs(sorted(job["files"]))
            if self.tracker is not None
            else [{"path": p, "change": None} for p in sorted(job["files"])]
        )
        limits = self.policy.data.get("limits") or {}
        limit = (limits.get("daily_budget_by_user") or {}).get(
            job["requester"]["user"], limits.get("daily_budget_per_user")
        )
        usage = await self._db(self._usage, job["requester"]["user"], None)
        cost = (job.get("decision") or {}).get("cost") or {}
        spent = float(usage.get("spent_today") or 0.0)
        return {
            "job_id": job_id,
            "source": program.get("source"),
            # The source is text the kernel sent beside the program: it may say anything.
            "source_origin": "kernel",
            "source_verified": False,
            "source_note": SOURCE_NOTE,
            "format": program["format"],
            "drawing": drawn["drawing"],
            # What the drawing shows: the circuit transpiled for this target (the gates the
            # backend runs), or, with None, the program as sent (`drawing_note` says why).
            "drawing_target": drawn["target"],
            "drawing_note": drawn["why_not"],
            "files": files,
            "budget": {
                "daily": limit,
                "spent_today": spent,
                "left": None if limit is None else round(float(limit) - spent, 6),
                "this_job": cost.get("estimate"),
                "currency": cost.get("currency", "USD"),
            },
        }

    def _expired(self, job: dict[str, Any]) -> bool:
        created = dt.datetime.fromisoformat(job["created_at"])
        return (utcnow() - created).total_seconds() > self.approval_ttl

    async def _refuse_approval(self, job_id: str, end: State, reason: str) -> None:
        """End a job that can no longer be approved, and refuse the approval at hand."""
        await self._move(job_id, end, actor=BROKER, reason=reason)
        raise TransitionConflict(job_id, end.value, State.APPROVED.value)

    async def approve(
        self, job_id: str, approver: str, digest: str, otp: str | None = None
    ) -> dict[str, Any]:
        job = await self.get(job_id)
        if job["state"] != State.PENDING_APPROVAL:
            raise TransitionConflict(job_id, job["state"], State.APPROVED.value)
        if self._expired(job):
            await self._refuse_approval(job_id, State.EXPIRED, EXPIRED_REASON)
        if digest != job["digest"]:
            raise DigestMismatch(
                "the digest you approved is not this job's current digest: the request changed "
                "after you saw it; review it again"
            )
        decision = job["decision"]
        if decision.get("approvals_required", 1) > 1 and approver == job["requester"]["user"]:
            raise ApprovalRefused(
                "this job needs approvals from other people than the one who asked for it "
                f"({job['requester']['user']})"
            )
        mfa_reasons = self.mfa_reasons(job)
        if mfa_reasons:
            await self._check_mfa(job_id, approver, otp, mfa_reasons)
        # Budgets and rates move while a job waits: ask the policy again before reserving.
        self.reload_policy()
        if self.policy.version != job["policy_version"]:
            await self._refuse_approval(
                job_id, State.VOIDED, "the policy pack changed after the request was checked"
            )
        now = self.policy.decide(
            await self.policy_input(job, decision.get("lint", {"findings": []}))
        )
        if not now.allow:
            raise ApprovalRefused("the policy no longer allows this job: " + "; ".join(now.deny))
        count = await self._db(
            self.store.add_approval, job_id, approver, digest, mfa=mfa_reasons or None
        )
        needed = int(job["decision"].get("approvals_required", 1))
        if count < needed:
            return self._changed(await self.get(job_id), kind="approval")
        await self._move(
            job_id,
            State.APPROVED,
            actor=f"user:{approver}",
            expect={State.PENDING_APPROVAL},
            detail={"digest": digest},
        )
        return await self._enqueue(job_id, actor=f"user:{approver}")

    async def _check_mfa(
        self, job_id: str, approver: str, otp: str | None, reasons: list[str]
    ) -> None:
        """Step-up MFA: a TOTP code of the approver's, checked here and used once only.
        `reasons` (mfa_reasons) are said in the refusals and kept in the audit entries."""
        person = self.user if self.mfa_single_user else approver
        why = "; ".join(reasons)
        if self.credentials is None or not await self._db(
            creds.mfa_enrolled, self.credentials, person
        ):
            self.record(
                "approval.refused",
                job=job_id,
                approver=approver,
                why="mfa_not_enrolled",
                mfa=reasons,
            )
            raise ApprovalRefused(
                f"{why}, and {person} has no MFA enrolled: run `jupyter qguard mfa enroll` on "
                "the server"
            )
        if not otp:
            self.record(
                "approval.refused", job=job_id, approver=approver, why="mfa_required", mfa=reasons
            )
            raise MfaRequired(f"{why}: send the current code of {person}'s authenticator app")
        step = await self._db(creds.mfa_time_step, self.credentials, person, otp)
        if step is None:
            self.record(
                "mfa.refused", job=job_id, user=person, approver=approver, why="wrong", mfa=reasons
            )
            raise ApprovalRefused("the MFA code is wrong or has expired")
        if not await self._db(self.store.claim_mfa_step, person, step):
            self.record(
                "mfa.refused", job=job_id, user=person, approver=approver, why="reused", mfa=reasons
            )
            raise ApprovalRefused(
                "this MFA code was already used: wait for the next one (codes are single-use)"
            )
        self.record(
            "mfa.verified", job=job_id, user=person, approver=approver, step=step, mfa=reasons
        )

    async def _enqueue(self, job_id: str, *, actor: str) -> dict[str, Any]:
        job = await self._move(job_id, State.QUEUED, actor=actor, expect={State.APPROVED})
        self._spawn(self._execute(job_id), f"execute-{job_id}")
        return job

    async def deny(self, job_id: str, actor: str, reason: str) -> dict[str, Any]:
        await self.get(job_id)
        return await self._move(
            job_id,
            State.DENIED,
            actor=f"user:{actor}",
            reason=reason,
            expect={State.PENDING_APPROVAL},
        )

    async def cancel(self, job_id: str, actor: str) -> dict[str, Any]:
        job = await self.get(job_id)
        if State(job["state"]) not in CANCELLABLE:
            raise TransitionConflict(job_id, job["state"], State.CANCELLED.value)
        return await self._move(
            job_id,
            State.CANCELLED,
            actor=actor,
            reason=f"cancelled by {actor}",
            expect=set(CANCELLABLE),
        )

    async def expire_stale(self) -> int:
        """Expire pending approvals older than the TTL; return how many."""
        n = 0
        for job in await self._db(
            self.store.list, states=[State.PENDING_APPROVAL.value], limit=100000
        ):
            if self._expired(job):
                try:
                    await self._move(
                        job["id"],
                        State.EXPIRED,
                        actor=BROKER,
                        reason=EXPIRED_REASON,
                    )
                    n += 1
                except TransitionConflict:
                    pass
        return n

    async def list_jobs(
        self,
        *,
        states: list[str] | None,
        limit: int,
        backend: str | None = None,
        user: str | None = None,
        before: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        jobs = await self._db(
            self.store.list, states=states, limit=limit, backend=backend, user=user, before=before
        )
        return [self.with_mfa(job) for job in jobs]

    async def jobs_for(
        self, *, kernel_id: str, notebook: str | None, limit: int
    ) -> list[dict[str, Any]]:
        rows = await self._db(self.store.list, kernel_id=kernel_id, notebook=notebook, limit=100000)
        return rows[:limit]

    # -- waiting --------------------------------------------------------------------------

    async def wait(
        self, job_id: str, *, timeout: float, unless_state: str | None = None
    ) -> dict[str, Any]:
        """Return when the job leaves `unless_state` (or is terminal), or after `timeout` s."""
        timeout = max(0.0, min(timeout, self.wait_max_seconds))
        ev = self.waiters.register(job_id)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                job = await self.get(job_id)
                if State(job["state"]) in TERMINAL or (
                    unless_state is not None and job["state"] != unless_state
                ):
                    return job
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return job
                ev.clear()
                try:
                    await asyncio.wait_for(ev.wait(), remaining)
                except TimeoutError:
                    return await self.get(job_id)
        finally:
            self.waiters.unregister(job_id, ev)

    # -- execution ------------------------------------------------------------------------

    async def _spec(self, job_id: str) -> tuple[dict[str, Any], RunSpec, Provider]:
        job = await self.get(job_id)
        request, key = await self._db(self.store.run_inputs, job_id)
        backend = self.backends[job["backend"]]
        provider = self.providers[backend["provider"]]
        spec = RunSpec(
            job_id=job_id,
            backend=job["backend"],
            program_format=request["program"]["format"],
            payload=base64.b64decode(request["program"]["payload_b64"]),
            shots=job["shots"],
            seed=job["seed"],
            idempotency_key=key,
            options={
                **backend.get("options", {}),
                **({"snapshot": backend["snapshot"]} if backend.get("snapshot") else {}),
            },
        )
        return job, spec, provider

    async def scan_for_secrets(self) -> dict[str, Any] | None:
        """Scan the workspace before an agent kernel starts. In mode `block`, findings (or a
        scan cut short) raise SecretsInWorkspace; in `warn` they are logged and raise an alert."""
        mode = self.secret_scan.get("mode", "off")
        if mode == "off":
            return None
        from ..watch import secrets

        report = await asyncio.to_thread(
            secrets.scan_workspace,
            Path(self.workspace_root),
            ignore=self.secret_scan.get("ignore", secrets.DEFAULT_IGNORE),
            max_bytes=int(self.secret_scan.get("max_bytes", 5 << 20)),
            max_files=int(self.secret_scan.get("max_files", 50000)),
        )
        found = [f.describe() for f in report.findings]
        if not found and not report.truncated:
            return report.as_dict()
        where = "; ".join(found[:10]) + (f"; and {len(found) - 10} more" if len(found) > 10 else "")
        text = (
            f"the workspace holds {len(found)} likely secret(s) an agent kernel could read: "
            f"{where}. Move credentials to the keyring (`jupyter qguard credentials set ...`) "
            "and out of the workspace"
            if found
            else f"the secret scan stopped after {report.files_scanned} files: the workspace "
            "was not fully checked"
        )
        self.events.publish({"type": "alert", "kind": "secrets", "findings": found})
        if mode == "block":
            raise SecretsInWorkspace(
                f"qguard: {text}, or set QGuardApp.secret_scan = 'warn' to start anyway."
            )
        log.warning("qguard: %s", text)
        return report.as_dict()

    async def void_for_changes(
        self, changes: list[dict[str, Any]], *, user: str | None = None
    ) -> list[str]:
        """Void the approval of every pending or approved job bound to a file that changed
        (compared by the bound hash: a notebook saved with new outputs only is the same).
        `user`: only that requester's jobs (in team mode each server speaks for its own)."""
        by_path = {c["path"]: c for c in changes}
        voided = []
        for job in await self._db(
            self.store.list,
            states=[State.PENDING_APPROVAL.value, State.APPROVED.value],
            limit=100000,
            user=user,
        ):
            touched = {p: h for p, h in job["files"].items() if p in by_path}
            if not touched:
                continue
            changed = await self.hasher.run(
                self._changed_files, touched, by_path, job["requester"]["user"]
            )
            if not changed:
                continue
            first = by_path[changed[0]]
            reason = (
                f"{', '.join(changed)} changed after the request (change #{first['id']} by "
                f"{first['actor']}); the request must be approved again"
            )
            try:
                await self._move(
                    job["id"],
                    State.VOIDED,
                    actor=BROKER,
                    reason=reason,
                    expect={State.PENDING_APPROVAL, State.APPROVED},
                    detail={"changes": [by_path[p]["id"] for p in changed]},
                )
                voided.append(job["id"])
            except TransitionConflict:
                pass
        return voided

    def _changed_files(
        self, files: dict[str, str], changes: dict[str, Any] | None = None, user: str = ""
    ) -> list[str]:
        """Bound files whose hash is no longer the one in the job (missing ones included),
        read from the workspace; one that cannot be hashed now (a link, a FIFO, over the cap,
        too slow) counts as changed. Blocking: run through `self.hasher.run`. (Team mode reads
        the hashes the user's server reported.)"""
        deadline = self.hasher.deadline()
        return [
            rel
            for rel, bound in sorted(files.items())
            if self.hasher.hash_or_none(rel, deadline) != bound
        ]

    async def _execute(self, job_id: str) -> None:
        try:
            job, spec, provider = await self._spec(job_id)
            if int((job.get("decision") or {}).get("approvals_required") or 0) > 0:
                # The last look before anything leaves: a person approved these files' contents,
                # and a change the watcher missed (or made while it was down) voids that.
                changed = await self.hasher.run(
                    self._changed_files, job["files"], None, job["requester"]["user"]
                )
                if changed:
                    await self._move(
                        job_id,
                        State.VOIDED,
                        actor=BROKER,
                        expect={State.QUEUED},
                        reason=f"{', '.join(changed)} changed after the approval; the request "
                        "must be approved again",
                        detail={"changed": changed},
                    )
                    return
            # queued → submitted first: only one executor can win this compare-and-set, so a
            # job is handed to a provider at most once even if two tasks race for it.
            await self._move(
                job_id,
                State.SUBMITTED,
                actor=BROKER,
                expect={State.QUEUED},
                detail={"idempotency_key": spec.idempotency_key},
            )
        except TransitionConflict:
            return  # cancelled meanwhile, or another executor took it
        except AuditUnavailable as exc:
            log.error("qguard: job %s not submitted: %s", job_id, exc)
            await self._fail(
                job_id,
                f"{exc}; the submission could not be recorded, so nothing was sent to "
                f"{spec.backend}",
                expect={State.QUEUED},
            )
            return
        except Exception as exc:
            log.exception("preparing job %s failed", job_id)
            await self._fail(job_id, f"could not prepare the job: {exc}", expect={State.QUEUED})
            return
        # The signed tree head now covers the submission (and goes to the witness).
        await self._db(self.checkpoint)
        try:
            provider_job_id = await provider.submit(spec)
            await self._db(self.store.set_provider_job_id, job_id, provider_job_id)
            result = await provider.result(spec, provider_job_id)
        except ProviderError as exc:
            await self._fail(job_id, str(exc))
            await self._seal(job_id, spec, provider)
            return
        except Exception as exc:
            log.exception("job %s failed", job_id)
            await self._fail(job_id, f"{type(exc).__name__}: {exc}")
            await self._seal(job_id, spec, provider)
            return
        await self._complete(job, result)
        await self._seal(job_id, spec, provider)

    async def _resume_submitted(self, job_id: str) -> None:
        job, spec, provider = await self._spec(job_id)
        try:
            result = await provider.recover(spec, job["provider_job_id"])
        except Exception as exc:
            await self._fail(job_id, f"could not recover after a restart: {exc}")
            await self._seal(job_id, spec, provider)
            return
        await self._complete(job, result)
        await self._seal(job_id, spec, provider)

    async def _complete(self, job: dict[str, Any], result: dict[str, Any]) -> None:
        # `job` as read before the run: its decision (and calibration) does not change after.
        job_id = job["id"]
        checked = (job.get("decision") or {}).get("calibration_id")
        ran = (result.get("provider") or {}).get("calibration_id")
        if checked and ran and checked != ran:
            result = {
                **result,
                "calibration_drift": {
                    "checked_with": checked,
                    "ran_with": ran,
                    "note": "the device was recalibrated after this job was checked and "
                    "approved; the preflight preview used the earlier calibration",
                },
            }
        try:
            await self._move(
                job_id,
                State.COMPLETED,
                actor=BROKER,
                result=result,
                detail={"shots": result.get("shots")},
            )
        except TransitionConflict:
            log.warning("job %s finished but was no longer submitted", job_id)

    # -- reproducibility bundles -----------------------------------------------------------

    def is_hardware(self, backend: str) -> bool:
        return (self.backends.get(backend) or {}).get("provider", "aer") != "aer"

    async def _seal(self, job_id: str, spec: RunSpec, provider: Provider) -> None:
        """Leave the bundle of a hardware job that reached its provider. A failure here is
        logged and raised as an alert: the job itself is done either way."""
        job = await self.get(job_id, history=True)
        if not self.is_hardware(job["backend"]) or self.bundles_dir is None:
            return
        if self.audit is None:
            log.error("qguard: no audit log, so no bundle for job %s", job_id)
            return
        try:
            path = await self.write_bundle(job, spec, provider)
        except Exception as exc:
            log.exception("qguard: the bundle of job %s could not be written", job_id)
            self.events.publish(
                {"type": "alert", "kind": "bundle", "job": job_id, "message": str(exc)}
            )
            return
        log.info("qguard: job %s bundle in %s", job_id, path)

    def code_path(self) -> list[str]:
        """sys.path without the workspace root, for a bundle's environment record. A server
        started from the root (`python -m jupyter_server` there) has it first on sys.path, and
        what an agent left there (a `qiskit-9.9.dist-info` shadowing the real one, a RECORD
        that is a FIFO, a link or terabytes) must not be read into a bundle, nor read at all.
        (A virtualenv inside the workspace stays: the server's packages are really there.)"""
        root = Path(self.workspace_root)
        return [entry for entry in sys.path if Path(entry or os.curdir).resolve() != root]

    async def write_bundle(self, job: dict[str, Any], spec: RunSpec, provider: Provider) -> Path:
        assert self.bundles_dir is not None and self.audit is not None
        aer = self.providers["aer"]
        exported = await aer.export(  # type: ignore[attr-defined]
            spec.program_format, spec.payload, timeout=self.lint_timeout
        )
        backend = self.backends.get(job["backend"]) or {}
        try:
            calibration = await provider.calibration(spec) or {
                "unavailable": f"provider {backend.get('provider')} publishes no calibration"
            }
        except Exception as exc:
            calibration = {"unavailable": f"reading it failed: {exc}"}
        request, _ = await self._db(self.store.run_inputs, job["id"])
        approvals = await self._db(self.store.approvals, job["id"])
        env = await asyncio.to_thread(environment.manifest, self.code_path())
        sbom_dir = self.sbom_cache_dir or self.bundles_dir / ".sbom-cache"
        sbom = await asyncio.to_thread(environment.sbom, env, sbom_dir)
        files: dict[str, Any] = {
            "request.json": {
                **request,
                "program": {k: v for k, v in request["program"].items() if k != "payload_b64"},
            },
            "environment.json": env,
            "sbom.cdx.json": sbom,
            "calibration.json": calibration,
            "result.json": job.get("result") or {"state": job["state"], "reason": job["reason"]},
            "job.json": {
                "id": job["id"],
                "state": job["state"],
                "backend": job["backend"],
                "provider": backend.get("provider"),
                "snapshot": backend.get("snapshot") or calibration.get("backend"),
                "shots": job["shots"],
                "seed": job["seed"],
                "max_cost": job["max_cost"],
                "cost": job["cost"],
                "digest": job["digest"],
                "policy_version": job["policy_version"],
                "decision": job["decision"],
                "requester": job["requester"],
                "files": job["files"],
                "approvals": approvals,
                "provider_job_id": job["provider_job_id"],
                "idempotency_key": spec.idempotency_key,
                "events": job.get("events", []),
                "program_errors": exported["errors"],
            },
        }
        if exported["qpy"] is not None:
            files["program.qpy"] = exported["qpy"]
        if exported["qasm3"] is not None:
            files["program.qasm3"] = exported["qasm3"]
        path = self.bundles_dir / job["id"]

        def build() -> Path:
            manifest = bundles.write(path, job["id"], files)
            bundles.seal(path, job["id"], manifest, self.audit)  # type: ignore[arg-type]
            return path

        return await self._db(build)

    async def _fail(self, job_id: str, reason: str, expect: set[State] | None = None) -> None:
        try:
            await self._move(job_id, State.FAILED, actor=BROKER, reason=reason, expect=expect)
        except TransitionConflict:
            log.warning("job %s failed (%s) but was no longer running", job_id, reason)
