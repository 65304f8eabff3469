"""The audit log on disk: signed C2SP checkpoints, and every kind of tampering found and located.

The signing key lives in a real keyring backend (keyrings.alt's file backend), made by
credentials.audit_signer as the server makes it."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from jupyter_qguard import credentials as cr
from jupyter_qguard.audit.log import AuditLog, canonical
from jupyter_qguard.audit.merkle import leaf_hash
from jupyter_qguard.audit.note import NoteError, VerifierKey, open_note
from jupyter_qguard.audit.verify import verify
from jupyter_qguard.audit.witness import Witness, WitnessRefused

ORIGIN = "qguard.local/test/0123456789ab"


@pytest.fixture
def signer(tmp_path: Path) -> cr.NoteSigner:
    store = cr.CredentialStore(
        cr.backend_from_name(
            "keyrings.alt.file.PlaintextKeyring", file_path=str(tmp_path / "keyring.cfg")
        )
    )
    made = cr.audit_signer(store)
    assert made is not None
    # The same key comes back on the next read; without `create` nothing is made.
    assert cr.audit_signer(store, create=False).public_key == made.public_key
    return made


def new_log(tmp_path: Path, signer: cr.NoteSigner, witness: bool = True) -> AuditLog:
    return AuditLog(
        tmp_path / "audit",
        signer=signer,
        origin=ORIGIN,
        witness_dir=tmp_path / "witness" if witness else None,
    )


def fill(log: AuditLog, n: int, *, checkpoint_every: int = 0) -> None:
    for i in range(n):
        log.append("job.transition", job=f"j{i % 3}", to="queued", actor="broker", n=i)
        if checkpoint_every and (i + 1) % checkpoint_every == 0:
            log.checkpoint()


def lines(log: AuditLog) -> list[bytes]:
    return log.path.read_bytes().splitlines(keepends=True)


def write(log: AuditLog, rows: list[bytes]) -> None:
    log.path.write_bytes(b"".join(rows))


def check(tmp_path: Path, log: AuditLog, *, witness: bool = True):
    return verify(log.dir, log.key, witness_dir=tmp_path / "witness" if witness else None)


def kinds(report) -> list[tuple[str, int | None]]:
    return [(p.kind, p.entry) for p in report.problems]


def test_entries_are_chained_canonical_lines(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 3)
    rows = lines(log)
    assert len(rows) == 3 and all(r.endswith(b"\n") for r in rows)
    entries = [json.loads(r) for r in rows]
    assert [e["seq"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev"] == "0" * 64
    assert entries[1]["prev"] == leaf_hash(rows[0][:-1]).hex()
    assert entries[2]["prev"] == hashlib.sha256(b"\x00" + rows[1][:-1]).hexdigest()
    for row, entry in zip(rows, entries, strict=True):
        assert row[:-1] == canonical(entry)  # one serialization only


def test_checkpoint_is_a_c2sp_signed_note(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 5)
    note = log.checkpoint()
    text, sig_line = note.split("\n\n")
    origin, size, root = text.split("\n")
    assert (origin, size) == (ORIGIN, "5")
    assert base64.b64decode(root) == log._tree.root()
    assert sig_line.startswith(f"\u2014 {ORIGIN} ") and sig_line.endswith("\n")
    raw = base64.b64decode(sig_line.split(" ")[2])
    key_id = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + signer.public_key).digest()[:4]
    assert raw[:4] == key_id and len(raw) == 4 + 64
    assert open_note(note, log.key).size == 5
    # The vkey form round-trips (its base64 can hold "+"), and a changed byte breaks the note.
    assert VerifierKey.parse(log.key.vkey()) == log.key
    with pytest.raises(NoteError, match="does not verify"):
        open_note(note.replace("\n5\n", "\n6\n"), log.key)
    assert (log.dir / "verifier.key").read_text().strip() == log.key.vkey()
    assert Witness(tmp_path / "witness").latest()[0].size == 5
    # Nothing new: no new checkpoint.
    assert log.checkpoint() is None


def test_an_intact_log_verifies(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 40, checkpoint_every=7)
    log.checkpoint()
    report = check(tmp_path, log)
    assert report.ok, report.text()
    assert (report.entries, report.checkpoint_size, report.witness_size) == (40, 40, 40)


def test_secret_like_values_are_stored_as_salted_hmacs(tmp_path, signer):
    log = new_log(tmp_path, signer)
    log.append("x", token="tok-123456", detail={"api_key": "AKIA-secret", "user": "ada"})
    row = log.path.read_text()
    assert "tok-123456" not in row and "AKIA-secret" not in row and '"user":"ada"' in row
    entry = json.loads(row)
    assert entry["token"] == log.hmac("tok-123456")
    assert entry["detail"]["api_key"].startswith("hmac-sha256:")
    # Salted per log: another log gives another HMAC of the same value.
    other = AuditLog(tmp_path / "other", signer=signer, origin=ORIGIN)
    assert other.hmac("tok-123456") != log.hmac("tok-123456")


def test_an_edited_entry_is_found_and_located(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 20)
    log.checkpoint()
    rows = lines(log)
    rows[7] = rows[7].replace(b'"n":7', b'"n":8')
    write(log, rows)
    report = check(tmp_path, log)
    assert kinds(report)[0] == ("edited", 7)
    assert report.first_bad_entry == 7
    assert "entry 7 was changed" in report.problems[0].message


def test_a_line_that_is_no_entry_is_located(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 10)
    rows = lines(log)
    rows[4] = b"{not json\n"
    write(log, rows)
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("malformed", 4)]


def test_a_deleted_entry_is_found_and_located(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 20)
    rows = lines(log)
    del rows[12]
    write(log, rows)
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("deleted", 12)]
    assert "entry 12 is missing" in report.problems[0].message


def test_a_deleted_first_entry_is_named_as_such(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 5)
    write(log, lines(log)[1:])
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("deleted", 0)]
    assert report.problems[0].message == "entry 0 is missing: the log starts at entry 1"


def test_reordered_entries_are_found_and_located(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 20)
    rows = lines(log)
    rows[5], rows[6] = rows[6], rows[5]
    write(log, rows)
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("reordered", 5)]


def test_a_duplicated_entry_is_found(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 10)
    rows = lines(log)
    rows.insert(4, rows[3])
    write(log, rows)
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("duplicated", 3)]


def test_truncation_below_a_signed_checkpoint_is_found(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 30)
    log.checkpoint()
    write(log, lines(log)[:26])
    report = check(tmp_path, log)
    assert kinds(report) == [("truncated", 26)]
    assert "entries 26..29 were removed" in report.problems[0].message


def test_power_loss_cutting_the_last_line_is_reported_as_exactly_that(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 12)
    log.checkpoint()
    fill(log, 3)  # ordinary entries after the last checkpoint, not yet fsynced
    cut = log.path.read_bytes()[:-40]
    log.path.write_bytes(cut)  # the last write, cut short
    report = check(tmp_path, log)
    assert kinds(report) == [("torn", 14)]
    assert "entry 14 is cut short" in report.problems[0].message
    assert "the 14 entries before it are intact" in report.problems[0].message
    # The server, starting on it, sets the torn bytes aside and records the cut: whole again.
    again = new_log(tmp_path, signer)
    assert again.recovered["entry"] == 14
    torn = cut[cut.rindex(b"\n") + 1 :]
    assert (again.dir / again.recovered["kept_in"]).read_bytes() == torn
    assert again.recovered["bytes"] == len(torn)
    again.checkpoint()
    assert check(tmp_path, again).ok
    assert json.loads(lines(again)[-1])["kind"] == "audit.recovered"


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoints(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 16, checkpoint_every=4)
    rows = [json.loads(r) for r in lines(log)]
    rows[9]["n"] = 99
    # Recompute every hash after the edit, as someone without the signing key could.
    prev = rows[8]["prev"]
    out = []
    for i, entry in enumerate(rows):
        if i >= 9:
            entry["prev"] = prev
        line = canonical(entry)
        prev = leaf_hash(line).hex()
        out.append(line + b"\n")
    write(log, out)
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("rewritten", 8)]
    assert "an entry between 8 and 11 was changed" in report.problems[0].message


def test_a_rollback_is_caught_by_the_witness_only(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 10)
    log.checkpoint()
    saved = tmp_path / "saved"
    shutil.copytree(log.dir, saved)
    fill(log, 10)
    log.checkpoint()
    shutil.rmtree(log.dir)
    shutil.copytree(saved, log.dir)  # log and its checkpoint, as they were at 10
    assert check(tmp_path, log, witness=False).ok  # consistent on its own
    report = check(tmp_path, log)
    assert kinds(report) == [("rollback", 10)]
    assert "the witness holds a signed checkpoint of 20 entries" in report.problems[0].message


def test_the_witness_refuses_to_go_back_or_change_keys(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 5)
    old = log.checkpoint()
    fill(log, 5)
    log.checkpoint()
    witness = Witness(tmp_path / "witness")
    with pytest.raises(WitnessRefused, match=r"holds a larger tree \(10 > 5 entries\)"):
        witness.update(old, log.key)
    other = VerifierKey("someone.else/log", signer.public_key)
    with pytest.raises(WitnessRefused, match="it trusts key"):
        witness.update(old, other)
    assert witness.latest()[0].size == 10


def test_a_forged_checkpoint_is_refused(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 5)
    log.checkpoint()
    cp = log.dir / "checkpoint"
    cp.write_text(cp.read_text().replace("\n5\n", "\n4\n"))
    report = check(tmp_path, log, witness=False)
    assert kinds(report) == [("signature", None)]
    assert "does not verify" in report.problems[0].message


def test_a_log_cut_behind_the_servers_back_stops_its_writes(tmp_path, signer):
    log = new_log(tmp_path, signer)
    fill(log, 5)
    write(log, lines(log)[:3])
    from jupyter_qguard.audit.log import AuditUnavailable

    with pytest.raises(AuditUnavailable, match="is shorter than this server wrote it"):
        log.append("job.received", job="x")
