"""`jupyter qguard audit|bundle|mfa ...`: check the audit log, bundles, and enroll step-up MFA."""

from __future__ import annotations

import datetime as dt
import getpass
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

from jupyter_core.application import JupyterApp
from traitlets import Bool, Int, Unicode

from ._version import __version__
from .audit import bundle as bundles
from .audit.log import (
    CHECKPOINT_NAME,
    CHECKPOINTS_NAME,
    LOG_NAME,
    VERIFIER_NAME,
    origin_for,
    read_tail,
)
from .audit.note import NoteError, VerifierKey
from .audit.verify import verify
from .audit.witness import Witness
from .cli import QGuardCommand, format_table


def _group(name: str, description: str, subcommands: dict[str, Any]) -> type[JupyterApp]:
    """A command that only dispatches to its subcommands."""

    def start(self: JupyterApp) -> None:
        if self.subapp is None:
            self.print_help()
            self.exit(2)
        JupyterApp.start(self)

    return type(
        name,
        (JupyterApp,),
        {
            "name": f"jupyter-qguard-{name.lower().removesuffix('command')}",
            "version": __version__,
            "description": description,
            "subcommands": {k: (v, v.description) for k, v in subcommands.items()},
            "start": start,
        },
    )


class AuditSubcommand(QGuardCommand):
    def audit_dir(self) -> Path:
        return Path(self.qguard_settings().audit_dir)

    def trusted_key(self, key_file: str, audit_dir: Path, witness: Path | None) -> tuple[Any, str]:
        """The key to hold the log to, and where it came from: a file given, the signing key in
        the keyring, the witness's copy, or (weakest) the copy next to the log."""
        if key_file:
            return VerifierKey.parse(Path(key_file).read_text()), f"--key {key_file}"
        settings = self.qguard_settings()
        from .credentials import CredentialError, audit_signer

        try:
            signer = audit_signer(settings.credential_store(), create=False)
        except CredentialError:
            signer = None
        local = audit_dir / VERIFIER_NAME
        if signer is not None:
            name = (
                VerifierKey.parse(local.read_text()).name
                if local.exists()
                else origin_for(Path(settings.state_dir))
            )
            return VerifierKey(name, signer.public_key), "the signing key in the keyring"
        if witness is not None and Witness(witness).key() is not None:
            return Witness(witness).key(), f"the witness's copy ({witness})"
        return VerifierKey.parse(local.read_text()), f"the copy next to the log ({local})"


class AuditVerifyCommand(AuditSubcommand):
    name = "jupyter-qguard-audit-verify"
    description = (
        "Check the audit log: hash chain, order, signed checkpoints and the witness; name the "
        "first bad entry. Exit 0 if all is well, 1 if not."
    )
    as_json = Bool(False, help="Print the report as JSON.").tag(config=True)
    directory = Unicode("", help="An audit directory (default: the server's).").tag(config=True)
    witness = Unicode("", help="A witness directory (default: the server's).").tag(config=True)
    key = Unicode("", help="A verifier key file (default: see the docs).").tag(config=True)
    aliases = {
        **QGuardCommand.aliases,
        "dir": "AuditVerifyCommand.directory",
        "witness": "AuditVerifyCommand.witness",
        "key": "AuditVerifyCommand.key",
    }
    flags = {"json": ({"AuditVerifyCommand": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        settings = self.qguard_settings()
        directory = Path(self.directory) if self.directory else self.audit_dir()
        witness_setting = self.witness or ("" if self.directory else settings.audit_witness_dir)
        witness = Path(witness_setting) if witness_setting else None
        if not (directory / LOG_NAME).exists():
            print(f"no audit log in {directory}", file=sys.stderr)
            self.exit(1)
        try:
            key, source = self.trusted_key(self.key, directory, witness)
        except (OSError, NoteError) as exc:
            print(f"no key to verify with: {exc}", file=sys.stderr)
            self.exit(1)
        report = verify(directory, key, witness_dir=witness)
        if self.as_json:
            print(json.dumps({**report.as_dict(), "key_source": source}, indent=2))
        else:
            print(report.text())
            print(f"(key from {source})")
        self.exit(0 if report.ok else 1)


def _summary(entry: dict[str, Any]) -> str:
    kind = entry.get("kind")
    if kind == "job.transition":
        why = f": {entry['reason']}" if entry.get("reason") else ""
        return f"{entry.get('from')} → {entry.get('to')} by {entry.get('actor')}{why}"
    if kind == "job.received":
        return f"{entry.get('backend')} × {entry.get('shots')} from {entry.get('actor')}"
    if kind == "job.approval":
        return f"approved by {entry.get('approver')} (digest {str(entry.get('digest'))[:12]}…)"
    if kind == "credential.use":
        return f"{entry.get('name')} (fp {entry.get('fingerprint')}): {entry.get('purpose')}"
    skip = {"seq", "at", "kind", "prev", "job"}
    return ", ".join(f"{k}={v}" for k, v in sorted(entry.items()) if k not in skip)


class AuditShowCommand(AuditSubcommand):
    name = "jupyter-qguard-audit-show"
    description = "Show audit entries, newest last (one job's with --job ID)."
    job = Unicode("", help="Only this job's entries.").tag(config=True)
    limit = Int(50, help="How many entries.").tag(config=True)
    as_json = Bool(False, help="Print JSON lines.").tag(config=True)
    aliases = {
        **QGuardCommand.aliases,
        "job": "AuditShowCommand.job",
        "limit": "AuditShowCommand.limit",
    }
    flags = {"json": ({"AuditShowCommand": {"as_json": True}}, "Print JSON lines.")}

    def start(self) -> None:
        directory = self.audit_dir()
        if not (directory / LOG_NAME).exists():
            print(f"no audit log in {directory}", file=sys.stderr)
            self.exit(1)
        # Reading only: tail() does not need the key or the tree.
        entries = read_tail(directory / LOG_NAME, self.limit, self.job or None)
        if self.as_json:
            for e in entries:
                print(json.dumps(e, sort_keys=True))
            return
        rows = [
            {
                "seq": e.get("seq"),
                "at": str(e.get("at", ""))[:23].replace("T", " "),
                "kind": e.get("kind"),
                "job": str(e.get("job") or "")[:12],
                "what": _summary(e),
            }
            for e in entries
        ]
        print(
            format_table(
                rows,
                [
                    ("seq", "SEQ", 8),
                    ("at", "AT (UTC)", 23),
                    ("kind", "KIND", 16),
                    ("job", "JOB", 12),
                    ("what", "WHAT", 90),
                ],
            )
        )


class AuditExportCommand(AuditSubcommand):
    name = "jupyter-qguard-audit-export"
    description = (
        "Write the audit log, its checkpoints, verifier key and the witness's checkpoint to a "
        ".tar.gz; check it elsewhere with `audit verify --dir audit --witness witness --key "
        "KEYFILE`."
    )
    out = Unicode("", help="The file to write (default: qguard-audit-<UTC time>.tar.gz).").tag(
        config=True
    )
    aliases = {**QGuardCommand.aliases, "out": "AuditExportCommand.out"}

    def start(self) -> None:
        settings = self.qguard_settings()
        directory = self.audit_dir()
        out = Path(self.out or f"qguard-audit-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.tar.gz")
        names = (LOG_NAME, CHECKPOINT_NAME, CHECKPOINTS_NAME, VERIFIER_NAME)
        with tarfile.open(out, "w:gz") as tar:
            for name in names:
                if (directory / name).exists():
                    tar.add(directory / name, arcname=f"audit/{name}")
            witness = Path(settings.audit_witness_dir) if settings.audit_witness_dir else None
            for name in ("checkpoint", "verifier.key"):
                if witness is not None and (witness / name).exists():
                    tar.add(witness / name, arcname=f"witness/{name}")
        print(f"wrote {out}")


class BundleVerifyCommand(AuditSubcommand):
    name = "jupyter-qguard-bundle-verify"
    description = "Check a bundle: every file's hash, the audit proofs and the signed checkpoint."
    key = Unicode("", help="A verifier key file (default: the keyring's signing key).").tag(
        config=True
    )
    as_json = Bool(False, help="Print JSON.").tag(config=True)
    aliases = {**QGuardCommand.aliases, "key": "BundleVerifyCommand.key"}
    flags = {"json": ({"BundleVerifyCommand": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        if len(self.extra_args) != 1:
            print("usage: jupyter qguard bundle verify PATH", file=sys.stderr)
            self.exit(2)
        path = Path(self.extra_args[0])
        try:
            key, source = self.trusted_key(self.key, self.audit_dir(), None)
        except (OSError, NoteError):
            key, source = None, "the bundle's own verifier.key (no trusted key here)"
        report = bundles.verify(path, key)
        if self.as_json:
            print(json.dumps({**report, "key_source": source}, indent=2))
        else:
            head = "OK" if report["ok"] else "FAILED"
            print(f"{head}: bundle of job {report['job']} in {path} (key from {source})")
            for p in report["problems"]:
                print(f"  [{p['kind']}] {p['message']}")
        self.exit(0 if report["ok"] else 1)


class BundleReplayCommand(QGuardCommand):
    name = "jupyter-qguard-bundle-replay"
    description = (
        "Run a bundle's program again on Aer with the recorded calibration's noise and print "
        "the total variation distance to the recorded counts."
    )
    seed = Int(-1, help="Simulator seed (default: a fresh one).").tag(config=True)
    shots = Int(0, help="Shots (default: as many as recorded).").tag(config=True)
    as_json = Bool(False, help="Print JSON.").tag(config=True)
    aliases = {
        **QGuardCommand.aliases,
        "seed": "BundleReplayCommand.seed",
        "shots": "BundleReplayCommand.shots",
    }
    flags = {"json": ({"BundleReplayCommand": {"as_json": True}}, "Print JSON.")}

    def start(self) -> None:
        from .audit.replay import ReplayError, replay

        if len(self.extra_args) != 1:
            print("usage: jupyter qguard bundle replay PATH", file=sys.stderr)
            self.exit(2)
        path = Path(self.extra_args[0])
        try:
            out = replay(path, seed=None if self.seed < 0 else self.seed, shots=self.shots or None)
        except (ReplayError, OSError, ValueError) as exc:
            print(f"cannot replay {path}: {exc}", file=sys.stderr)
            self.exit(1)
        if self.as_json:
            print(json.dumps(out, indent=2))
            return
        print(
            f"job {out['job']} on {out['backend']} (snapshot {out['snapshot']}, calibration "
            f"{out['calibration_id']}), {out['shots']} shots, seed {out['seed']}"
        )
        print(f"total variation distance to the recorded result: {out['tvd']:.4f}")


class BundleListCommand(QGuardCommand):
    name = "jupyter-qguard-bundle-list"
    description = "List the bundles under the server's bundles_dir."

    def start(self) -> None:
        root = Path(self.qguard_settings().bundles_dir)
        for path in bundles.bundle_dirs(root):
            print(path)


class MfaSubcommand(QGuardCommand):
    user = Unicode("", help="Whose MFA (default: QGuardApp.requester_user or the OS user).").tag(
        config=True
    )

    def person(self) -> str:
        return self.user or self.qguard_settings().requester_user or getpass.getuser()

    def store(self) -> Any:
        return self.qguard_settings().credential_store()


class MfaEnrollCommand(MfaSubcommand):
    name = "jupyter-qguard-mfa-enroll"
    description = (
        "Make a TOTP secret for step-up approvals, keep it in the keyring, and show it once as "
        "an otpauth URI and a terminal QR code."
    )
    replace = Bool(False, help="Replace an existing enrollment.").tag(config=True)
    qr = Bool(True, help="Print the QR code.").tag(config=True)
    aliases = {**QGuardCommand.aliases, "user": "MfaEnrollCommand.user"}
    flags = {
        "replace": ({"MfaEnrollCommand": {"replace": True}}, "Replace an existing enrollment."),
        "no-qr": ({"MfaEnrollCommand": {"qr": False}}, "Do not print the QR code."),
    }

    def start(self) -> None:
        from . import credentials

        self.exit(
            credentials.cli_mfa_enroll(
                self.store(), self.person(), replace=self.replace, qr=self.qr
            )
        )


class MfaStatusCommand(MfaSubcommand):
    name = "jupyter-qguard-mfa-status"
    description = "Say whether a user has step-up MFA enrolled."
    aliases = {**QGuardCommand.aliases, "user": "MfaStatusCommand.user"}

    def start(self) -> None:
        from . import credentials

        person = self.person()
        enrolled = credentials.mfa_enrolled(self.store(), person)
        print(f"{person}: {'enrolled' if enrolled else 'not enrolled'}")
        self.exit(0 if enrolled else 1)


class MfaDeleteCommand(MfaSubcommand):
    name = "jupyter-qguard-mfa-delete"
    description = "Remove a user's TOTP secret (approvals that need MFA are then refused)."
    aliases = {**QGuardCommand.aliases, "user": "MfaDeleteCommand.user"}

    def start(self) -> None:
        from . import credentials

        person = self.person()
        if credentials.mfa_delete(self.store(), person):
            print(f"removed the MFA enrollment of {person}")
            return
        print(f"{person} has no MFA enrolled", file=sys.stderr)
        self.exit(1)


AuditCommand = _group(
    "AuditCommand",
    "The tamper-evident audit log: verify, show, export.",
    {"verify": AuditVerifyCommand, "show": AuditShowCommand, "export": AuditExportCommand},
)
BundleCommand = _group(
    "BundleCommand",
    "Reproducibility bundles of hardware jobs: verify, replay, list.",
    {"verify": BundleVerifyCommand, "replay": BundleReplayCommand, "list": BundleListCommand},
)
MfaCommand = _group(
    "MfaCommand",
    "Step-up MFA (TOTP) for approvals the policy marks: enroll, status, delete.",
    {"enroll": MfaEnrollCommand, "status": MfaStatusCommand, "delete": MfaDeleteCommand},
)
