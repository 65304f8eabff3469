"""The audit log (issue 8 targets): ordinary appends per second (≥ 5,000) through the real
AuditLog (open, append, close per entry; secret-field redaction; chain and tree updated), and
`audit verify` of a 1,000,000-entry log (≤ 10 s), signed checkpoints every 10,000 entries."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import fig, record

from jupyter_qguard import credentials as cr
from jupyter_qguard.audit.log import AuditLog
from jupyter_qguard.audit.verify import verify

APPENDS = 20_000
VERIFY_ENTRIES = 1_000_000
CHECKPOINT_EVERY = 10_000


def entry(i: int) -> dict:
    # A job transition as the store writes one (the commonest entry).
    return {
        "job": f"{i % 5000:032x}",
        "from": "queued",
        "to": "submitted",
        "actor": "broker",
        "reason": None,
        "detail": {"idempotency_key": f"{i:032x}"},
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="qguard-bench-") as tmp:
        store = cr.CredentialStore(
            cr.backend_from_name(
                "keyrings.alt.file.PlaintextKeyring", file_path=str(Path(tmp) / "k.cfg")
            )
        )
        signer = cr.audit_signer(store)
        log = AuditLog(Path(tmp) / "audit", signer=signer, origin="bench/x", min_free_bytes=0)
        started = time.perf_counter()
        for i in range(APPENDS):
            log.append("job.transition", **entry(i))
        append_s = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(APPENDS, VERIFY_ENTRIES):
            log.append("job.transition", **entry(i))
            if (i + 1) % CHECKPOINT_EVERY == 0:
                log.checkpoint()
        fill_s = time.perf_counter() - started
        log.checkpoint()
        size_mb = log.path.stat().st_size / 1e6
        started = time.perf_counter()
        report = verify(log.dir, log.key)
        verify_s = time.perf_counter() - started
        assert report.ok and report.entries == VERIFY_ENTRIES, report.text()
        started = time.perf_counter()
        AuditLog(Path(tmp) / "audit", signer=signer, origin="bench/x")
        reopen_s = time.perf_counter() - started
    record(
        "audit_log",
        f"Appends to the hash-chained log, a {VERIFY_ENTRIES:,}-entry log verified, reopened",
        {
            "appends": fig(round(APPENDS / append_s), "entries/s", target=5000, limit="min"),
            "appends_during_1m_fill": fig(round((VERIFY_ENTRIES - APPENDS) / fill_s), "entries/s"),
            "verify_1m_entries": fig(round(verify_s, 2), "s", target=10),
            "log_size": fig(round(size_mb, 1), "MB"),
            "reopen_at_server_start": fig(round(reopen_s, 2), "s"),
        },
    )


if __name__ == "__main__":
    main()
