"""QGuardApp: the jupyter_qguard server extension. Settings, wiring and lifecycle."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from tornado import web
from traitlets import Bool, Dict, Enum, Float, Int, List, Type, Unicode, default, validate

from . import live_notebooks, log_redaction
from ._version import __version__
from .agents import collaboration_files, kernel_choice, notebook_trust
from .agents.authorizer import AGENT_EDITS_KEY, install_agent_auth
from .agents.identity import SETTINGS_KEY as AGENT_TOKENS_KEY
from .agents.inprocess import DEFAULT_EXTENSIONS as INPROCESS_AGENT_EXTENSIONS
from .agents.inprocess import MODES as INPROCESS_AGENT_MODES
from .agents.inprocess import apply as apply_inprocess_gate
from .agents.inprocess import enforce as enforce_inprocess_agents
from .agents.tokens import AgentTokens
from .audit.log import AuditLog, origin_for
from .broker import runtime
from .broker.hashing import DEFAULT_MAX_BYTES as DEFAULT_MAX_BOUND_FILE_BYTES
from .broker.hashing import DEFAULT_TIMEOUT as DEFAULT_BOUND_FILE_TIMEOUT
from .broker.service import Broker
from .broker.store import Store, sqlite_url
from .fsutil import read_or_create_key
from .handlers import ROUTES
from .isolation import drop_workspace_from_sys_path
from .policy.engine import PolicyEngine
from .providers import provider_classes
from .sandbox import cgroup, rlimits
from .sandbox.environment import DEFAULT_ALLOWLIST
from .sandbox.provisioner import sweep_stale_kernel_dirs
from .sandbox.spec import DEFAULT_MINIMUM, LAYERS
from .watch.watcher import DEFAULT_IGNORE

DEFAULT_BACKENDS: dict[str, dict[str, Any]] = {
    "aer_simulator": {
        "provider": "aer",
        "qubits": 28,
        "description": "Qiskit Aer, on this machine.",
    },
}


# The snapshot store is pruned this often (a walk of its objects).
PRUNE_EVERY_SECONDS = 3600.0


class QGuardApp(ExtensionApp):
    name = "jupyter_qguard"
    description = "Guarded quantum jobs for AI agents: sandboxed kernels, a broker, human approval."
    version = __version__
    load_other_extensions = True

    state_dir = Unicode(
        help="Where the broker keeps its state (database, audit log, bundles, snapshots). "
        "Default: <jupyter data dir>/qguard. Must not be inside the server's root directory, "
        "which agent kernels can write.",
    ).tag(config=True)

    db_url = Unicode(
        help="SQLAlchemy URL of the broker's store. Default: SQLite file qguard.db in state_dir. "
        "Team mode uses a postgresql:// URL.",
    ).tag(config=True)

    backends = Dict(
        default_value=DEFAULT_BACKENDS,
        help="How this server reaches each backend: {name: {provider, qubits, description, "
        "options, snapshot}}. `snapshot` names a device calibration snapshot shipped with "
        "qiskit-ibm-runtime (fake_brisbane, fake_torino, ...): lint transpiles to its target and "
        "the preflight simulation uses its noise model. Whether a backend may be used, its "
        "tier and price are the policy pack's (data.json, or policy_data).",
    ).tag(config=True)

    keyring_backend = Unicode(
        "",
        help="Keyring backend holding provider credentials (service 'jupyter-qguard'), as a "
        "dotted class path, e.g. keyrings.alt.file.PlaintextKeyring. Empty: the OS keyring "
        "that `keyring` picks. `jupyter qguard credentials` reads the same setting.",
    ).tag(config=True)

    keyring_backend_options = Dict(
        help="Properties set on the keyring backend, e.g. {'file_path': '/path/keyring.cfg'}.",
    ).tag(config=True)

    approval_ttl = Float(
        3600.0,
        help="Seconds a request may wait for approval before it expires.",
    ).tag(config=True)

    expiry_check_interval = Float(
        15.0, help="Seconds between sweeps that expire stale approval requests."
    ).tag(config=True)

    wait_max_seconds = Float(
        30.0, help="Longest a kernel's `wait` call may block before it must ask again."
    ).tag(config=True)

    channel_max_request_bytes = Int(
        8 * 1024 * 1024, help="Largest request line a kernel may send on its broker channel."
    ).tag(config=True)

    channel_rate = Float(
        50.0, help="Requests per second a kernel may make on its channel (sustained)."
    ).tag(config=True)

    channel_burst = Int(200, help="Requests a kernel may make in a burst.").tag(config=True)

    kernel_env_allowlist = List(
        Unicode(),
        default_value=list(DEFAULT_ALLOWLIST),
        help="Environment variable names (fnmatch patterns) passed to agent kernels. Names that "
        "look like credentials (*TOKEN*, *KEY*, AWS_*, QISKIT_*, JUPYTERHUB_*, SSH_*, DBUS_*, ...) "
        "never pass, whatever this says.",
    ).tag(config=True)

    kernel_runtime_root = Unicode(
        "",
        help="Directory under which each agent kernel gets its own 0700 directory (connection "
        "file, ipc sockets, HOME). Keep it short: unix socket paths are limited to 107 bytes. "
        "Default: the system temp dir.",
    ).tag(config=True)

    policy_dir = Unicode(
        help="Directory of the policy pack (*.rego, package qguard.decision, and data.json). "
        "Default: the pack installed with jupyter_qguard (share/jupyter_qguard/policies). It is "
        "rebuilt when its files change; a pack that does not load keeps the server from "
        "starting, and a broken edit keeps the previous pack in force.",
    ).tag(config=True)

    policy_data = Dict(
        help="Data merged over the pack's data.json (for example more backends with their tier "
        "and price). Part of the policy version, so changing it voids pending approvals.",
    ).tag(config=True)

    watch_enabled = Bool(
        True,
        help="Watch the workspace: record every file change with its author (an agent kernel "
        "or the person) and a snapshot, void approvals whose files change, allow reverts.",
    ).tag(config=True)

    watch_ignore = List(
        Unicode(),
        default_value=list(DEFAULT_IGNORE),
        help="Glob patterns (relative to the workspace) the watcher ignores. Files a person's "
        "tools run (bytecode, .git, conftest.py, Makefile, ...: watch/toolfiles.py) are never "
        "ignored, whatever the patterns say.",
    ).tag(config=True)

    watch_debounce_seconds = Float(
        0.2, help="Quiet time after the last write before a change is reported."
    ).tag(config=True)

    snapshot_max_file_bytes = Int(
        16 * 1024 * 1024,
        help="Largest file whose contents are kept in the snapshot store (larger: hash only).",
    ).tag(config=True)

    snapshot_max_total_bytes = Int(
        1024 * 1024 * 1024, help="Size cap of the snapshot store (least recently used go first)."
    ).tag(config=True)

    snapshot_max_age_seconds = Float(
        7 * 24 * 3600.0,
        help="Snapshots older than this are pruned, unless a file's current content or a "
        "recent change still refers to them.",
    ).tag(config=True)

    kernel_write_budget_bytes = Int(
        4 * 1024 * 1024 * 1024,
        help="What one agent kernel may add to the workspace (files it created or grew, less "
        "what it deleted, as the change feed attributes them): past it the kernel is stopped, "
        "saying why (an alert, the server log, the audit log); its files stay. 0: no budget. "
        "kernel_rlimits' file_size bounds each file at once; this bounds them together.",
    ).tag(config=True)

    secret_scan = Enum(
        ["block", "warn", "off"],
        default_value="block",
        help="Scan the workspace for likely secrets (detect-secrets; notebooks by cell) before "
        "an agent kernel starts, and each changed file: `block` refuses to start the kernel and "
        "names the file, cell and line (never the value); `warn` starts it and raises an alert.",
    ).tag(config=True)

    secret_scan_max_bytes = Int(
        5 * 1024 * 1024, help="Files larger than this are not scanned for secrets."
    ).tag(config=True)

    workstation_tier = Unicode(
        "standard",
        help="This workstation's tier, given to the policy (the default pack knows 'standard' "
        "and 'sandbox', where only simulators may run).",
    ).tag(config=True)

    rate_window_seconds = Float(
        600.0, help="Length of the window in which the policy counts a requester's jobs."
    ).tag(config=True)

    rate_baseline_windows = Int(
        6, help="How many earlier windows make the baseline a burst is compared with."
    ).tag(config=True)

    lint_timeout_seconds = Float(
        30.0,
        help="Longest the broker spends parsing and transpiling one program for lint; a "
        "program that takes longer is rejected with that reason.",
    ).tag(config=True)

    preflight_shots = Int(
        1024, help="Most shots of the preflight simulation shown with a request for approval."
    ).tag(config=True)

    backend_refresh_seconds = Float(
        60.0,
        help="Seconds between asking the providers about their devices (status, calibration "
        "snapshot id). A job records the calibration known when it was checked; a run on a "
        "different one is marked as calibration drift in its result.",
    ).tag(config=True)

    preflight_timeout_seconds = Float(
        10.0,
        help="Longest the preflight simulation may run; past it the request goes to the "
        "approver without a preview, saying so.",
    ).tag(config=True)

    max_bound_file_bytes = Int(
        DEFAULT_MAX_BOUND_FILE_BYTES,
        help="Largest workspace file a job may depend on (its `files`, the notebook included), "
        "in bytes; default 128 MiB. A bigger one is refused when the job is submitted, with a "
        "sentence saying the limit, as is one that is not a regular file (a FIFO, socket or "
        "device) or is reached through a symbolic link. Bound files are hashed off the "
        "broker's database thread and the event loop; notebooks over 1 MiB are parsed in a "
        "separate worker process.",
    ).tag(config=True)

    bound_file_timeout_seconds = Float(
        DEFAULT_BOUND_FILE_TIMEOUT,
        help="Longest the broker spends hashing the files one job depends on. A request whose "
        "files take longer is refused with that reason; a job whose files cannot be hashed "
        "again in time right before it is submitted goes back to the person (voided).",
    ).tag(config=True)

    sandbox_minimum = List(
        Unicode(),
        default_value=list(DEFAULT_MINIMUM),
        help="Sandbox layers an agent kernel must have, or it does not start (fail closed). "
        f"Layers: {', '.join(LAYERS)}.",
    ).tag(config=True)

    sandbox_disabled = List(
        Unicode(),
        default_value=[],
        help="Sandbox layers not to apply, as if this machine lacked them (for diagnosis). A "
        "disabled layer that is part of sandbox_minimum stops agent kernels from starting.",
    ).tag(config=True)

    kernel_rlimits = Dict(
        help="rlimits of agent kernels: memory (bytes of address space), cpu_seconds, "
        "processes, file_size (bytes), open_files; 0 leaves one as it is. Default: half the "
        "machine's memory, 256 processes, 8 GiB files, 4096 open files, no CPU cap.",
    ).tag(config=True)

    kernel_cgroup_limits = Dict(
        help="The cgroup of each agent kernel, all of its processes together: memory_max "
        "(bytes; swap none), pids_max (tasks: processes and threads), cpus (a cap in cores, "
        "may be fractional), cpu_weight (1-10000, 100 being every other cgroup's); 0 leaves "
        "one unlimited. Default: half the machine's memory, 512 tasks, no cap on cores and a "
        "weight of 100, so that all of the kernel's processes together get one share when the "
        "server wants the CPU too, and a compute-bound cell loses nothing otherwise. Where this "
        "machine gives no cgroup (`jupyter qguard doctor` says why), only kernel_rlimits "
        "apply, each process alone.",
    ).tag(config=True)

    kernel_extra_read_paths = List(
        Unicode(),
        default_value=[],
        help="Extra paths agent kernels may read (and execute), e.g. a data set outside the "
        "workspace or a toolchain outside /usr.",
    ).tag(config=True)

    requester_user = Unicode(
        "", help="Name recorded as the requester's user. Default: the OS user of the server."
    ).tag(config=True)

    audit_dir = Unicode(
        help="The audit log (log.jsonl, signed checkpoints, verifier key). Default: "
        "<state_dir>/audit. Like state_dir, outside the server's root directory.",
    ).tag(config=True)

    audit_witness_dir = Unicode(
        help="The witness: a second place that keeps the newest signed checkpoint and refuses "
        "older ones, so a log put back to an older copy is found. Point it at another disk or "
        "machine (a mount), or a directory another account owns; empty string: no witness. "
        "Default: <state_dir>-witness, next to the state dir.",
    ).tag(config=True)

    audit_checkpoint_seconds = Float(
        60.0,
        help="Sign a checkpoint at most this often when the log has grown (one is also signed "
        "at every hardware submission, every bundle and at shutdown).",
    ).tag(config=True)

    audit_min_free_bytes = Int(
        16 * 1024 * 1024,
        help="Free space the audit log keeps in reserve: below it, entries that something "
        "irreversible waits on (a new job, an approval, a submission) are refused, so a job "
        "is never half-recorded on a full disk.",
    ).tag(config=True)

    bundles_dir = Unicode(
        help="Reproducibility bundles, one directory per hardware job. Default: "
        "<state_dir>/bundles.",
    ).tag(config=True)

    mfa_single_user = Bool(
        True,
        help="Step-up MFA checks every approval against the TOTP of the server's user "
        "(requester_user, or the OS user): right for a desktop, where Jupyter's own user "
        "names are per-browser. Team servers set False: each approver enrolls under their hub "
        "user name (`jupyter qguard mfa enroll --user NAME`).",
    ).tag(config=True)

    inprocess_agents = Enum(
        list(INPROCESS_AGENT_MODES),
        default_value="require_mfa",
        help="What to do while a server extension that lets an AI agent act with this server's "
        "authority is enabled (inprocess_agent_extensions: Jupyter AI's personas, "
        "notebook-intelligence, jupyter-server-mcp, jupyter-mcp-server's /mcp): such an agent "
        "never shows an agent token and can read the user's token. `require_mfa`: every "
        "approval of a job that is not on a simulator needs a TOTP code, whatever the policy "
        "says; `refuse`: the server does not start; `allow`: a warning at start only.",
    ).tag(config=True)

    inprocess_agent_extensions = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        default_value=dict(INPROCESS_AGENT_EXTENSIONS),
        help="Server extensions that let an agent act with this server's authority: module "
        "name (a jpserver_extensions name, an extension point's module or its ExtensionApp's "
        "name; submodules count) -> what it allows, as the start warning and `jupyter qguard "
        "doctor` say it. Setting it replaces the table (the defaults are "
        "jupyter_qguard.agents.inprocess.DEFAULT_EXTENSIONS).",
    ).tag(config=True)

    agent_tokens = Bool(
        True,
        help="Recognize agent tokens (`jupyter qguard agent-token create`) and hold them to "
        "their manifest: the server's identity provider and authorizer become qguard's "
        "(agents/identity.py, agents/authorizer.py), which leave the user's own login as it "
        "was. Only where ServerApp.identity_provider_class and authorizer_class are still "
        "jupyter_server's defaults; a deployment with its own keeps them (and a warning says "
        "agent tokens are not recognized).",
    ).tag(config=True)

    agent_kernel_name = Unicode(
        "qguard-agent",
        help="The kernelspec an agent token's kernel starts with when the agent asks for one "
        "that does not run under the qguard provisioner (jupyter-mcp-server asks for python3): "
        "agents never get an unsandboxed kernel. Must name a kernelspec that runs under the "
        "qguard provisioner, or agents cannot start kernels (a warning at start says so).",
    ).tag(config=True)

    team_broker_url = Unicode(
        help="Team mode (JupyterHub): the URL of the team's broker service as this server "
        "reaches it, with its prefix (e.g. http://127.0.0.1:10101/services/qguard/). Job "
        "requests of this server's agent kernels go there, authenticated with the server's "
        "hub token (JUPYTERHUB_API_TOKEN); this server then holds no provider credential. "
        "Default: $QGUARD_TEAM_BROKER_URL; empty: the broker runs in this server.",
    ).tag(config=True)

    @default("team_broker_url")
    def _default_team_broker_url(self) -> str:
        return os.environ.get("QGUARD_TEAM_BROKER_URL", "")

    store_class = Type(
        default_value=Store, klass=Store, help="The broker store implementation."
    ).tag(config=True)

    broker_class = Type(default_value=Broker, klass=Broker, help="The broker implementation.").tag(
        config=True
    )

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.join(jupyter_data_dir(), "qguard")

    @default("audit_dir")
    def _default_audit_dir(self) -> str:
        return os.path.join(self.state_dir, "audit")

    @default("audit_witness_dir")
    def _default_witness_dir(self) -> str:
        return os.path.normpath(self.state_dir) + "-witness"

    @default("bundles_dir")
    def _default_bundles_dir(self) -> str:
        return os.path.join(self.state_dir, "bundles")

    @default("db_url")
    def _default_db_url(self) -> str:
        return sqlite_url(os.path.join(self.state_dir, "qguard.db"))

    @default("policy_dir")
    def _default_policy_dir(self) -> str:
        return os.path.join(sys.prefix, "share", "jupyter_qguard", "policies")

    @default("kernel_rlimits")
    def _default_rlimits(self) -> dict[str, int]:
        return rlimits.defaults()

    @default("kernel_cgroup_limits")
    def _default_cgroup_limits(self) -> dict[str, int]:
        return cgroup.default_limits()

    @validate("kernel_cgroup_limits")
    def _validate_cgroup_limits(self, proposal: Any) -> dict[str, Any]:
        value = {**cgroup.default_limits(), **proposal["value"]}
        unknown = set(value) - {"memory_max", "pids_max", "cpus", "cpu_weight"}
        if unknown:
            raise ValueError(f"unknown kernel_cgroup_limits {sorted(unknown)}")
        for name, limit in value.items():
            if not isinstance(limit, int | float) or isinstance(limit, bool) or limit < 0:
                raise ValueError(f"kernel_cgroup_limits[{name!r}] must be a number >= 0")
        return value

    @validate("sandbox_minimum", "sandbox_disabled")
    def _validate_layers(self, proposal: Any) -> list[str]:
        unknown = set(proposal["value"]) - set(LAYERS)
        if unknown:
            raise ValueError(f"unknown sandbox layers {sorted(unknown)}; known: {list(LAYERS)}")
        return proposal["value"]

    @validate("max_bound_file_bytes", "bound_file_timeout_seconds")
    def _validate_positive(self, proposal: Any) -> Any:
        if proposal["value"] <= 0:
            raise ValueError(f"QGuardApp.{proposal['trait'].name} must be more than 0")
        return proposal["value"]

    @validate("kernel_write_budget_bytes")
    def _validate_write_budget(self, proposal: Any) -> int:
        if proposal["value"] < 0:
            raise ValueError("QGuardApp.kernel_write_budget_bytes must be 0 (none) or more")
        return int(proposal["value"])

    @validate("backends")
    def _validate_backends(self, proposal: Any) -> dict[str, Any]:
        for name, spec in proposal["value"].items():
            if not isinstance(spec, dict) or "provider" not in spec:
                raise ValueError(f"backend {name!r} needs at least 'provider'")
        return proposal["value"]

    # -- wiring ---------------------------------------------------------------------------

    def _check_state_dir(self) -> Path:
        root = Path(self.serverapp.root_dir).expanduser().resolve()
        # The broker's state and the policy pack must be out of the agent's reach.
        for setting in ("state_dir", "policy_dir", "audit_dir", "audit_witness_dir", "bundles_dir"):
            if not getattr(self, setting):
                continue
            path = Path(getattr(self, setting)).expanduser().resolve()
            if path == root or root in path.parents:
                raise ValueError(
                    f"QGuardApp.{setting} ({path}) is inside the server's root directory "
                    f"({root}), where agent kernels can write. Choose a directory outside it."
                )
        state = Path(self.state_dir).expanduser().resolve()
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        return state

    async def _notebook_for_kernel(self, kernel_id: str) -> str | None:
        try:
            session = await self.serverapp.session_manager.get_session(kernel_id=kernel_id)
        except (web.HTTPError, KeyError, TypeError):
            return None
        if session.get("type") == "notebook" and str(session.get("path", "")).endswith(".ipynb"):
            return session["path"]
        return None

    def credential_store(self) -> Any:
        from .credentials import CredentialStore, backend_from_name

        if not self.keyring_backend:
            return CredentialStore()
        return CredentialStore(
            backend_from_name(self.keyring_backend, **self.keyring_backend_options)
        )

    def _providers(self) -> dict[str, Any]:
        # Aer is always there: it parses programs and runs the preflight preview.
        wanted = {spec["provider"] for spec in self.backends.values()} | {"aer"}
        classes = provider_classes()
        missing = wanted - set(classes)
        if missing:
            self.log.warning("qguard: no provider installed for %s", ", ".join(sorted(missing)))
        store = self._credentials
        providers = {
            name: classes[name](parent=self, log=self.log) for name in wanted & set(classes)
        }
        for provider in providers.values():
            provider.credentials = store
            # Every provider reads an agent's program only in the aer provider's workers.
            provider.programs = providers.get("aer")
        return providers

    def initialize_settings(self) -> None:
        # Before anything is logged: no token in any line the server writes from now on.
        log_redaction.install()
        # First: in `refuse` mode the server stops here, before any state is touched.
        inprocess_gate = enforce_inprocess_agents(self)
        self._check_state_dir()
        # A server started as `python -m jupyter_server` from the workspace (or with PYTHONPATH
        # into it) would import from there, and hand that sys.path to every worker it spawns.
        dropped = drop_workspace_from_sys_path(self.serverapp.root_dir)
        if dropped:
            self.log.warning(
                "qguard: removed %s from sys.path: the workspace is untrusted input, and the "
                "server and its workers never import from it (start the server as `jupyter lab` "
                "or `python -I -m jupyter_server`)",
                ", ".join(repr(e) for e in dropped),
            )
        if self.team_broker_url:
            from .hub.forwarder import ForwardingBroker

            # Team mode: this server forwards to the team's broker and holds no provider, so
            # no credential (hub/forwarder.py); what stays here is the kernels' side.
            broker = self.build_broker(
                ForwardingBroker,
                providers={},
                workspace_root=self.serverapp.root_dir,
                service_url=self.team_broker_url,
                service_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
            )
        else:
            broker = self.build_broker(
                self.broker_class,
                providers=None,
                workspace_root=self.serverapp.root_dir,
            )
        self._fingerprint_key()
        self.settings["qguard_broker"] = broker
        apply_inprocess_gate(inprocess_gate, broker)
        # Agent tokens (jupyter qguard agent-token): read by agents/identity.py on each request
        # that presents one, in the same database as the jobs.
        self.settings[AGENT_TOKENS_KEY] = AgentTokens(
            broker.store.engine, policy_dir=self.policy_dir
        )
        # What agents get from the kernel and session managers (a qguard kernel whatever they
        # ask for, listings of their own) and who edited what: agents/kernel_choice.py.
        kernel_choice.wire(self.settings, self.serverapp, broker, self.agent_kernel_name)
        live_notebooks.install(broker, self.serverapp)
        # A notebook an agent's token saves is never signed by that save (the notary would sign
        # it when its cells say they are trusted): agents/notebook_trust.py.
        contents = self.serverapp.contents_manager
        contents.register_pre_save_hook(notebook_trust.before_save)
        contents.register_post_save_hook(notebook_trust.after_save)
        runtime.set_current(broker)
        self.log.info(
            "qguard: state in %s, store %s",
            self.state_dir,
            broker.store.engine.url.render_as_string(hide_password=True),
        )

    def build_broker(
        self,
        broker_class: type[Broker],
        *,
        providers: dict[str, Any] | None,
        workspace_root: str,
        **extra: Any,
    ) -> Broker:
        """The broker with its store, policy, keyring, audit log and providers (None: those
        of QGuardApp.backends), from these settings. Shared by the server extension and the
        team broker service (hub/command.py), which has no workspace of its own."""
        policy = PolicyEngine(self.policy_dir, self.policy_data)  # PolicyError: do not start
        self.log.info("qguard: policy pack %s, version %s", self.policy_dir, policy.version[:12])
        store = self.store_class(self.db_url)
        self._credentials = credentials = self.credential_store()
        audit = self.open_audit(credentials)
        store.audit = audit
        serverapp = getattr(self, "serverapp", None)
        broker = broker_class(
            store=store,
            backends=self.backends,
            providers=self._providers() if providers is None else providers,
            workspace_root=workspace_root,
            approval_ttl=self.approval_ttl,
            wait_max_seconds=self.wait_max_seconds,
            notebook_for_kernel=self._notebook_for_kernel if serverapp is not None else None,
            user=self.requester_user or None,
            kernel_settings={
                "env_allowlist": list(self.kernel_env_allowlist),
                "runtime_root": self.kernel_runtime_root,
                "workspace": workspace_root,
                "minimum": list(self.sandbox_minimum),
                "disabled": list(self.sandbox_disabled),
                "rlimits": dict(self.kernel_rlimits),
                "cgroup": dict(self.kernel_cgroup_limits),
                "extra_read_paths": list(self.kernel_extra_read_paths),
            },
            policy=policy,
            workstation_tier=self.workstation_tier,
            rate_window=self.rate_window_seconds,
            baseline_windows=self.rate_baseline_windows,
            lint_timeout=self.lint_timeout_seconds,
            preflight_shots=self.preflight_shots,
            preflight_timeout=self.preflight_timeout_seconds,
            max_bound_file_bytes=self.max_bound_file_bytes,
            bound_file_timeout=self.bound_file_timeout_seconds,
            channel_settings={
                "max_request_bytes": self.channel_max_request_bytes,
                "rate": self.channel_rate,
                "burst": self.channel_burst,
            },
            **extra,
        )
        broker.audit = audit
        broker.credentials = credentials
        broker.bundles_dir = Path(self.bundles_dir)
        broker.sbom_cache_dir = Path(self.state_dir) / "sbom-cache"
        # A team broker checks each approver's own code, whatever the setting says.
        broker.mfa_single_user = self.mfa_single_user and broker.mfa_single_user
        credentials.on_use = self._credential_used
        broker.secret_scan = {
            "mode": self.secret_scan,
            "ignore": list(self.watch_ignore),
            "max_bytes": self.secret_scan_max_bytes,
            "max_files": 50000,
        }
        self.broker = broker
        return broker

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        super()._link_jupyter_server_extension(serverapp)
        # Linking comes before the server makes its identity provider and authorizer, so they
        # can be set here (a config file in jupyter_server_config.d only enables extensions).
        if self.agent_tokens:
            install_agent_auth(serverapp, self.log)
        # Before jupyter-server-ydoc links (extensions link in name order): its state files go
        # to the state directory instead of the workspace.
        collaboration_files.keep_out_of_workspace(serverapp, self.state_dir, self.log)

    def initialize_handlers(self) -> None:
        self.handlers.extend(ROUTES)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        for path in sweep_stale_kernel_dirs(self.kernel_runtime_root):
            self.log.info("qguard: removed %s, left by a server that no longer runs", path)
        for path in cgroup.sweep_leftovers():
            self.log.info("qguard: removed cgroup %s, left by a server that no longer runs", path)
        await self.broker.start()
        if self.watch_enabled:
            await self._start_watching()
        self._sweeper = asyncio.ensure_future(self._sweep_expired())

    async def _sweep_expired(self) -> None:
        loop = asyncio.get_running_loop()
        refreshed = pruned = signed = loop.time()
        while True:
            await asyncio.sleep(min(self.expiry_check_interval, self.backend_refresh_seconds))
            try:
                self.broker.reload_policy()
                await self.broker.expire_stale()
                if loop.time() - refreshed >= self.backend_refresh_seconds:
                    refreshed = loop.time()
                    await self.broker.refresh_backends()
                tracker = getattr(self, "tracker", None)
                if tracker is not None and loop.time() - pruned >= PRUNE_EVERY_SECONDS:
                    pruned = loop.time()
                    await tracker.prune()
                if loop.time() - signed >= self.audit_checkpoint_seconds:
                    signed = loop.time()
                    await asyncio.to_thread(self.broker.checkpoint)
            except Exception:
                self.log.exception("qguard: periodic sweep failed")

    def open_audit(self, credentials: Any) -> AuditLog:
        from .credentials import CredentialError, audit_signer

        try:
            signer = audit_signer(credentials)
        except CredentialError as exc:
            # Entries are still chained and hashed; only the signed checkpoints are missing,
            # and `audit verify` and the doctor say so.
            self.log.error("qguard: no audit signing key, checkpoints are not signed: %s", exc)
            signer = None
        audit = AuditLog(
            self.audit_dir,
            signer=signer,
            origin=origin_for(Path(self.state_dir)),
            witness_dir=self.audit_witness_dir or None,
            min_free_bytes=self.audit_min_free_bytes,
        )
        if audit.recovered:
            self.log.warning(
                "qguard: the audit log's last entry was cut short (a crash?); it was set aside "
                "in %s and the cut recorded",
                audit.recovered["kept_in"],
            )
        return audit

    def _credential_used(self, provider: str, fingerprint: str, purpose: str) -> None:
        broker = getattr(self, "broker", None)
        if broker is not None:
            broker.record("credential.use", name=provider, fingerprint=fingerprint, purpose=purpose)

    def _fingerprint_key(self) -> None:
        """Secret-scan fingerprints keyed per server (stable across restarts, useless
        elsewhere): the key lives in the state dir, which kernels cannot read."""
        from .watch import secrets

        key = read_or_create_key(Path(self.state_dir) / "secret-fingerprint.key")
        secrets.set_fingerprint_key(key)

    def _agent_kernel_managers(self) -> list[tuple[str, Any]]:
        """(kernel id, kernel manager) of each agent kernel the server still runs."""
        out = []
        for kernel_id in list(self.broker.kernels):
            try:
                out.append((kernel_id, self.serverapp.kernel_manager.get_kernel(kernel_id)))
            except KeyError:
                continue
        return out

    def _agent_activity(self) -> dict[str, tuple[str, float]]:
        """(execution state, last activity) of each agent kernel, as the server sees them."""
        out = {}
        for kernel_id, km in self._agent_kernel_managers():
            last = getattr(km, "last_activity", None)
            out[kernel_id] = (
                str(getattr(km, "execution_state", "")),
                last.timestamp() if last is not None else 0.0,
            )
        return out

    def _agent_kernel_roots(self) -> dict[str, int]:
        """The host pid of each running agent kernel's top process (its tree is the kernel's
        processes: the change feed reads their write counters)."""
        out = {}
        for kernel_id, km in self._agent_kernel_managers():
            provisioner = getattr(km, "provisioner", None)
            pid = getattr(provisioner, "pid", None)
            if pid and getattr(provisioner, "process", None) is not None:
                out[kernel_id] = int(pid)
        return out

    async def _stop_agent_kernel(self, kernel_id: str, reason: str) -> None:
        """Stop an agent kernel for good (not restarted); the tracker has said why. Killed at
        once (`now`: a polite shutdown request gives a hostile kernel seconds more to write),
        its provisioner told first that the end was asked for (no "died on its own")."""
        km = self.serverapp.kernel_manager
        if kernel_id not in km:
            return
        provisioner = getattr(km.get_kernel(kernel_id), "provisioner", None)
        if provisioner is not None:
            await provisioner.shutdown_requested(restart=False)
        await km.shutdown_kernel(kernel_id, now=True)

    async def _start_watching(self) -> None:
        from .watch.tracker import ChangeTracker

        self.tracker = ChangeTracker(
            broker=self.broker,
            root=self.serverapp.root_dir,
            objects_dir=Path(self.state_dir) / "objects",
            agent_activity=self._agent_activity,
            agent_edits=self.settings.get(AGENT_EDITS_KEY),
            person=self.broker.user,
            ignore=list(self.watch_ignore),
            debounce_seconds=self.watch_debounce_seconds,
            max_file_bytes=self.snapshot_max_file_bytes,
            max_total_bytes=self.snapshot_max_total_bytes,
            max_age_seconds=self.snapshot_max_age_seconds,
            write_budget=self.kernel_write_budget_bytes,
            stop_kernel=self._stop_agent_kernel,
            kernel_roots=self._agent_kernel_roots,
        )
        self.broker.tracker = self.tracker
        await self.tracker.start()

    async def stop_extension(self) -> None:
        sweeper = getattr(self, "_sweeper", None)
        if sweeper is not None:
            sweeper.cancel()
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            await tracker.stop()
        runtime.set_current(None)
        broker = getattr(self, "broker", None)  # absent if initialization failed
        if broker is not None:
            await broker.stop()


main = launch_new_instance = QGuardApp.launch_instance
