"""jupyter_qguard.credentials: the keyring store, scoped tokens, the IBM service, importing
plaintext credentials, the CLI entry points, and the rule that no other module touches secrets.

Every test keeps its secrets in a keyrings.alt PlaintextKeyring file under tmp_path, set
explicitly: the user's real keyring is never touched."""

from __future__ import annotations

import ast
import configparser
import contextlib
import hashlib
import io
import json
import pickle
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from keyrings.alt.escape import escape
from keyrings.alt.file import PlaintextKeyring
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

import jupyter_qguard
from jupyter_qguard import credentials as cr

FC_KEY = "fc-live-4f1d9a7c2b8e6d0a"
IBM_TOKEN = "ibm-tok-9c3e5a1b7d2f8e40"
AWS_ID = "AKIAEXAMPLEID0001"
AWS_SECRET = "aws/secret+Key%with/odd=chars"
ISSUED = "sct-7e2b0f9d4a6c1e35"
PLAINTEXT = "keyrings.alt.file.PlaintextKeyring"


@pytest.fixture
def keyring_file(tmp_path: Path) -> Path:
    return tmp_path / "keyring" / "keyring_pass.cfg"


@pytest.fixture
def store(keyring_file: Path) -> cr.CredentialStore:
    backend = cr.backend_from_name(PLAINTEXT, file_path=keyring_file)
    assert isinstance(backend, PlaintextKeyring)
    assert backend.file_path == str(keyring_file)
    return cr.CredentialStore(backend)


def stored_value(store: cr.CredentialStore, provider: str) -> str:
    return cr._reveal(store.get(provider))


def missing(provider: str) -> str:
    return (
        f"no credential for '{provider}' in the keyring (service 'jupyter-qguard'): run "
        f"`jupyter qguard credentials set {provider}` or `jupyter qguard credentials import`"
    )


# --- the store -------------------------------------------------------------------------------


def test_set_list_delete_round_trip(store, keyring_file):
    assert store.names() == []
    assert store.has("fakecloud") is False
    fp_fc = store.set("fakecloud", FC_KEY)
    fp_ibm = store.set("ibm", IBM_TOKEN)
    assert store.names() == [
        {"provider": "fakecloud", "fingerprint": fp_fc},
        {"provider": "ibm", "fingerprint": fp_ibm},
    ]
    assert store.has("fakecloud") is True and store.has("ibm") is True
    assert stored_value(store, "fakecloud") == FC_KEY
    assert stored_value(store, "ibm") == IBM_TOKEN

    # What is on disk: one entry per provider plus the index, all under the service name.
    parser = configparser.RawConfigParser()
    parser.read(keyring_file)
    assert parser.sections() == [escape("jupyter-qguard")]
    assert sorted(parser[escape("jupyter-qguard")]) == sorted(
        escape(name).lower() for name in ("__index__", "fakecloud", "ibm")
    )
    index = json.loads(store.backend.get_password("jupyter-qguard", "__index__"))
    assert index["providers"] == ["fakecloud", "ibm"] and index["version"] == 1
    assert len(index["salt"]) == 32

    store.delete("fakecloud")
    assert store.names() == [{"provider": "ibm", "fingerprint": fp_ibm}]
    assert store.has("fakecloud") is False
    assert store.backend.get_password("jupyter-qguard", "fakecloud") is None
    with pytest.raises(cr.CredentialNotFound) as info:
        store.delete("fakecloud")
    assert isinstance(info.value, KeyError) and isinstance(info.value, cr.CredentialError)
    assert str(info.value) == missing("fakecloud")
    with pytest.raises(cr.CredentialNotFound) as info:
        store.get("fakecloud")
    assert str(info.value) == missing("fakecloud")


def test_fingerprint_is_short_stable_keyed_and_never_the_value(store, keyring_file):
    fp = store.set("fakecloud", FC_KEY)
    assert len(fp) == 8 and all(c in "0123456789abcdef" for c in fp)
    assert store.set("fakecloud", FC_KEY) == fp  # same value, same fingerprint
    # A second store over the same file (another process) agrees.
    again = cr.CredentialStore(cr.backend_from_name(PLAINTEXT, file_path=keyring_file))
    assert again.names() == [{"provider": "fakecloud", "fingerprint": fp}]
    # Keyed: not a plain hash of the value anyone could test guesses against.
    assert fp != hashlib.sha256(FC_KEY.encode()).hexdigest()[:8]
    assert fp not in FC_KEY and FC_KEY not in fp
    assert store.set("fakecloud", FC_KEY + "x") != fp
    # A keyring in another file has its own salt, so its own fingerprints.
    other = cr.CredentialStore(
        cr.backend_from_name(PLAINTEXT, file_path=keyring_file.with_name("other.cfg"))
    )
    assert other.set("fakecloud", FC_KEY) != fp


def test_secret_repr_and_no_value_anywhere_shown(store):
    fp = store.set("fakecloud", FC_KEY)
    secret = store.get("fakecloud")
    assert repr(secret) == f"Secret('fakecloud', fp={fp})"
    assert str(secret) == f"Secret('fakecloud', fp={fp})"
    assert f"{secret}" == f"Secret('fakecloud', fp={fp})"
    assert secret.provider == "fakecloud" and secret.fingerprint == fp
    shown = [repr(store.names()), str(store.names()), cr.cli_list(store), repr(secret)]
    assert all(FC_KEY not in text for text in shown)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(secret)


def test_names_skips_entries_deleted_behind_its_back(store):
    store.set("fakecloud", FC_KEY)
    fp_ibm = store.set("ibm", IBM_TOKEN)
    store.backend.delete_password("jupyter-qguard", "fakecloud")
    assert store.names() == [{"provider": "ibm", "fingerprint": fp_ibm}]


def test_provider_names_are_checked(store):
    for bad in ("", "IBM", "__index__", "a b", "x" * 33, "1ibm"):
        with pytest.raises(ValueError, match="invalid provider name"):
            store.set(bad, "value")
    with pytest.raises(cr.CredentialError, match="refusing to store an empty credential"):
        store.set("ibm", "")


def test_backend_from_name_refuses_bad_names_and_properties(tmp_path):
    with pytest.raises(ValueError) as info:
        cr.backend_from_name("PlaintextKeyring")
    assert str(info.value) == "keyring backend must be a dotted class path, not 'PlaintextKeyring'"
    with pytest.raises(ValueError, match=r"^no keyring backend class 'keyrings\.alt\.file\.Nope'"):
        cr.backend_from_name("keyrings.alt.file.Nope")
    with pytest.raises(ValueError) as info:
        cr.backend_from_name("pathlib.Path")
    assert str(info.value) == "'pathlib.Path' is not a keyring backend class"
    with pytest.raises(ValueError) as info:
        cr.backend_from_name(PLAINTEXT, filepath=str(tmp_path / "k.cfg"))
    assert str(info.value) == f"keyring backend {PLAINTEXT} has no properties filepath"


def test_default_backend_is_keyrings_choice(monkeypatch, keyring_file):
    import keyring

    chosen = cr.backend_from_name(PLAINTEXT, file_path=keyring_file)
    monkeypatch.setattr(keyring, "get_keyring", lambda: chosen)
    assert cr.CredentialStore().backend is chosen


def test_keyring_failures_become_credential_errors():
    store = cr.CredentialStore(cr.backend_from_name("keyring.backends.fail.Keyring"))
    with pytest.raises(cr.CredentialError) as info:
        store.has("fakecloud")
    assert str(info.value).startswith(
        "keyring backend keyring.backends.fail.Keyring could not read 'fakecloud' "
        "(service 'jupyter-qguard'): NoKeyringError: "
    )
    assert info.value.__cause__ is None and info.value.__suppress_context__ is True


# --- CLI: set / list / delete ----------------------------------------------------------------


def run_set(store, provider, *, tty, stdin="", answers=()):
    out, err, prompts = io.StringIO(), io.StringIO(), []
    answers = list(answers)

    def read_secret(prompt):
        prompts.append(prompt)
        return answers.pop(0)

    code = cr.cli_set(
        store,
        provider,
        stdin_isatty=tty,
        read_secret=read_secret,
        stdin=io.StringIO(stdin),
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue(), prompts


def test_cli_set_from_piped_stdin(store):
    code, out, err, prompts = run_set(store, "fakecloud", tty=False, stdin=FC_KEY + "\nignored\n")
    fp = store.names()[0]["fingerprint"]
    assert (code, err, prompts) == (0, "", [])
    assert out == (
        f"stored the credential for 'fakecloud' in keyrings.alt.file.PlaintextKeyring "
        f"(fingerprint {fp})\n"
    )
    assert stored_value(store, "fakecloud") == FC_KEY
    code, out, err, _ = run_set(store, "fakecloud", tty=False, stdin="fc-other\n")
    assert code == 0 and out.startswith("replaced the credential for 'fakecloud' in ")
    assert stored_value(store, "fakecloud") == "fc-other"


def test_cli_set_prompts_twice_without_echo(store):
    code, out, err, prompts = run_set(store, "ibm", tty=True, answers=[IBM_TOKEN, IBM_TOKEN])
    assert (code, err) == (0, "")
    assert prompts == ["credential for ibm (not echoed): ", "again, to confirm: "]
    assert stored_value(store, "ibm") == IBM_TOKEN
    assert IBM_TOKEN not in out


def test_cli_set_mismatch_stores_nothing(store, keyring_file):
    code, out, err, prompts = run_set(store, "ibm", tty=True, answers=[IBM_TOKEN, IBM_TOKEN + "1"])
    assert (code, out, err) == (1, "", "the two entries differ; nothing stored\n")
    assert len(prompts) == 2
    assert store.has("ibm") is False and store.names() == []
    assert not keyring_file.exists() or IBM_TOKEN not in keyring_file.read_text()


@pytest.mark.parametrize(
    ("provider", "tty", "stdin", "answers", "code", "err"),
    [
        ("fakecloud", False, "", (), 1, "empty credential; nothing stored\n"),
        ("fakecloud", False, "  \n", (), 1, "empty credential; nothing stored\n"),
        ("fakecloud", True, "", ("", ""), 1, "empty credential; nothing stored\n"),
        (
            "Fake Cloud",
            False,
            "x\n",
            (),
            2,
            "invalid provider name 'Fake Cloud': lower-case letters, digits, '-' and '_', "
            "starting with a letter, at most 32 characters\n",
        ),
        (
            "braket",
            False,
            "not-json\n",
            (),
            1,
            'braket takes a JSON object {"aws_access_key_id": ..., "aws_secret_access_key": ...'
            '[, "aws_session_token": ...]}, or run `jupyter qguard credentials import`; '
            "nothing stored\n",
        ),
    ],
)
def test_cli_set_refusals(store, provider, tty, stdin, answers, code, err):
    got = run_set(store, provider, tty=tty, stdin=stdin, answers=answers)
    assert got[:3] == (code, "", err)
    assert store.names() == []


def test_cli_set_braket_json(store):
    blob = json.dumps({"aws_access_key_id": AWS_ID, "aws_secret_access_key": AWS_SECRET})
    code, _, err, _ = run_set(store, "braket", tty=False, stdin=blob + "\n")
    assert (code, err) == (0, "")
    assert json.loads(stored_value(store, "braket")) == {
        "aws_access_key_id": AWS_ID,
        "aws_secret_access_key": AWS_SECRET,
    }


def test_cli_list_and_delete(store):
    assert cr.cli_list(store) == (
        "no credentials in the keyring (service 'jupyter-qguard', "
        "keyrings.alt.file.PlaintextKeyring)"
    )
    fp_fc = store.set("fakecloud", FC_KEY)
    fp_ibm = store.set("ibm", IBM_TOKEN)
    listing = cr.cli_list(store)
    assert listing == f"PROVIDER   FINGERPRINT\nfakecloud  {fp_fc}\nibm        {fp_ibm}"
    assert FC_KEY not in listing and IBM_TOKEN not in listing

    out, err = io.StringIO(), io.StringIO()
    assert cr.cli_delete(store, "ibm", out=out, err=err) == 0
    assert out.getvalue() == (
        "deleted the credential for 'ibm' from keyrings.alt.file.PlaintextKeyring\n"
    )
    out, err = io.StringIO(), io.StringIO()
    assert cr.cli_delete(store, "ibm", out=out, err=err) == 1
    assert (out.getvalue(), err.getvalue()) == (
        "",
        "no credential for 'ibm' in the keyring; nothing deleted\n",
    )
    assert cr.cli_delete(store, "IBM", out=out, err=io.StringIO()) == 2
    assert cr.cli_list(store) == f"PROVIDER   FINGERPRINT\nfakecloud  {fp_fc}"


def test_ask_yes_no():
    assert cr.ask_yes_no("? ", input_fn=lambda p: " Y ") is True
    assert cr.ask_yes_no("? ", input_fn=lambda p: "yes") is True
    assert cr.ask_yes_no("? ", input_fn=lambda p: "") is False
    assert cr.ask_yes_no("? ", input_fn=lambda p: "n") is False

    def eof(prompt):
        raise EOFError

    assert cr.ask_yes_no("? ", input_fn=eof) is False


# --- importing plaintext credentials ---------------------------------------------------------


def write_ibm(home: Path, accounts: dict[str, Any]) -> Path:
    path = home / ".qiskit" / "qiskit-ibm.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(accounts, indent=2))
    return path


def write_aws(home: Path, text: str) -> Path:
    path = home / ".aws" / "credentials"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


IBM_ACCOUNTS = {
    "work": {"channel": "ibm_cloud", "token": "ibm-tok-other-account", "instance": "crn:work"},
    "default-ibm-quantum-platform": {
        "channel": "ibm_quantum_platform",
        "token": IBM_TOKEN,
        "instance": "crn:v1:bluemix:public:quantum-computing:us-east:a/123::",
        "private_endpoint": False,
    },
}
AWS_FILE = (
    f"[default]\naws_access_key_id = {AWS_ID}\naws_secret_access_key = {AWS_SECRET}\n\n"
    "[work]\naws_access_key_id = AKIAWORK\naws_secret_access_key = work-secret\n"
)
BRAKET_BLOB = {"aws_access_key_id": AWS_ID, "aws_secret_access_key": AWS_SECRET}


def test_import_files_and_env_into_the_keyring(store, tmp_path):
    home = tmp_path / "home"
    ibm_file = write_ibm(home, IBM_ACCOUNTS)
    aws_file = write_aws(home, AWS_FILE)
    environ = {"QGUARD_FAKECLOUD_API_KEY": FC_KEY, "HOME": str(home), "PATH": "/usr/bin"}
    asked: list[Path] = []

    def delete(path: Path) -> bool:
        asked.append(path)
        return path == aws_file  # yes for the AWS file, no for the IBM one

    reports = cr.import_plaintext(store, home=home, environ=environ, delete=delete)

    assert asked == [ibm_file, aws_file]
    assert not aws_file.exists() and ibm_file.exists()
    assert stored_value(store, "fakecloud") == FC_KEY
    assert stored_value(store, "ibm") == IBM_TOKEN
    assert json.loads(stored_value(store, "braket")) == BRAKET_BLOB
    fps = {row["provider"]: row["fingerprint"] for row in store.names()}
    assert sorted(fps) == ["braket", "fakecloud", "ibm"]

    assert [(r.source, r.provider, r.fingerprint, r.stored, r.deleted) for r in reports] == [
        ("env QGUARD_FAKECLOUD_API_KEY", "fakecloud", fps["fakecloud"], True, False),
        ("~/.qiskit/qiskit-ibm.json", "ibm", fps["ibm"], True, False),
        ("~/.aws/credentials", "braket", fps["braket"], True, True),
    ]
    assert [r.note for r in reports] == [
        "imported into the keyring; now unset QGUARD_FAKECLOUD_API_KEY in your shell and its "
        "startup files (a program cannot unset its parent's environment)",
        "imported into the keyring; plaintext file kept (delete it yourself once you no longer "
        "need it)",
        "imported into the keyring; plaintext file deleted",
    ]
    assert reports[1].info == {
        "account": "default-ibm-quantum-platform",
        "channel": "ibm_quantum_platform",
        "instance": "crn:v1:bluemix:public:quantum-computing:us-east:a/123::",
        "other_accounts": ["work"],
    }
    assert reports[2].info == {
        "profile": "default",
        "other_profiles": ["work"],
        "session_token": False,
    }
    assert [r.path for r in reports] == [None, ibm_file, aws_file]
    assert not any(r.problem for r in reports)
    shown = repr(reports) + "".join(r.line() for r in reports)
    for value in (FC_KEY, IBM_TOKEN, AWS_ID, AWS_SECRET, "ibm-tok-other-account"):
        assert value not in shown


def test_import_env_wins_and_same_or_different_files(store, tmp_path):
    home = tmp_path / "home"
    ibm_file = write_ibm(home, IBM_ACCOUNTS)
    aws_file = write_aws(home, AWS_FILE)
    environ = {
        "QISKIT_IBM_TOKEN": IBM_TOKEN,  # same as the file's default account
        "QE_TOKEN": "ibm-tok-stale",  # lower precedence, different
        "AWS_ACCESS_KEY_ID": "AKIAENV",
        "AWS_SECRET_ACCESS_KEY": "env-secret",
        "AWS_SESSION_TOKEN": "env-session",
        "QISKIT_IBM_CHANNEL": "ibm_cloud",
    }
    asked: list[Path] = []
    reports = cr.import_plaintext(
        store, home=home, environ=environ, delete=lambda p: asked.append(p) or True
    )
    # Only the IBM file matches what went into the keyring; the AWS file differs from the
    # environment's credential, so it is not offered for deletion.
    assert asked == [ibm_file]
    assert not ibm_file.exists() and aws_file.exists()
    assert stored_value(store, "ibm") == IBM_TOKEN
    assert json.loads(stored_value(store, "braket")) == {
        "aws_access_key_id": "AKIAENV",
        "aws_secret_access_key": "env-secret",
        "aws_session_token": "env-session",
    }
    env_aws = "env AWS_ACCESS_KEY_ID+AWS_SECRET_ACCESS_KEY+AWS_SESSION_TOKEN"
    assert [(r.source, r.provider, r.stored, r.deleted, r.note) for r in reports] == [
        (
            "env QISKIT_IBM_TOKEN",
            "ibm",
            True,
            False,
            "imported into the keyring; now unset QISKIT_IBM_TOKEN in your shell and its startup "
            "files (a program cannot unset its parent's environment)",
        ),
        (
            "env QE_TOKEN",
            "ibm",
            False,
            False,
            "not imported: differs from the credential taken from env QISKIT_IBM_TOKEN; left in "
            "place, check which one is current",
        ),
        (
            env_aws,
            "braket",
            True,
            False,
            "imported into the keyring; now unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY "
            "AWS_SESSION_TOKEN in your shell and its startup files (a program cannot unset its "
            "parent's environment)",
        ),
        (
            "~/.qiskit/qiskit-ibm.json",
            "ibm",
            False,
            True,
            "same credential as env QISKIT_IBM_TOKEN; plaintext file deleted",
        ),
        (
            "~/.aws/credentials",
            "braket",
            False,
            False,
            f"not imported: differs from the credential taken from {env_aws}; left in place, "
            "check which one is current",
        ),
    ]
    assert reports[0].info == {"unset": ["QISKIT_IBM_TOKEN"], "channel": "ibm_cloud"}
    # Equal values, equal fingerprints; different values, different ones.
    assert reports[0].fingerprint == reports[3].fingerprint != reports[1].fingerprint


def test_import_keeps_a_different_keyring_entry_unless_overwrite(store, tmp_path):
    home = tmp_path / "home"
    fp_old = store.set("fakecloud", "fc-already-there")
    environ = {"QGUARD_FAKECLOUD_API_KEY": FC_KEY}
    [report] = cr.import_plaintext(store, home=home, environ=environ)
    assert (report.stored, report.deleted) == (False, False)
    assert report.note == (
        f"not imported: the keyring already holds a different credential for 'fakecloud' "
        f"(fingerprint {fp_old}); replace it with `jupyter qguard credentials set fakecloud`; "
        "left in place, check which one is current"
    )
    assert stored_value(store, "fakecloud") == "fc-already-there"

    [report] = cr.import_plaintext(store, home=home, environ=environ, overwrite=True)
    assert report.stored is True and report.note.startswith("imported into the keyring; ")
    assert stored_value(store, "fakecloud") == FC_KEY
    [report] = cr.import_plaintext(store, home=home, environ=environ)
    assert report.stored is False and report.note.startswith("already in the keyring; ")


def test_import_delete_as_bool(store, tmp_path):
    home = tmp_path / "home"
    ibm_file = write_ibm(home, {"mine": {"channel": "ibm_cloud", "token": IBM_TOKEN}})
    [report] = cr.import_plaintext(store, home=home, environ={}, delete=False)
    assert ibm_file.exists() and report.deleted is False
    assert report.info["account"] == "mine"  # no default account: the first one
    [report] = cr.import_plaintext(store, home=home, environ={}, delete=True)
    assert not ibm_file.exists() and report.deleted is True
    assert report.note == "already in the keyring; plaintext file deleted"


def test_import_is_default_account_flag_wins(store, tmp_path):
    home = tmp_path / "home"
    accounts = {
        **IBM_ACCOUNTS,
        "flagged": {"channel": "ibm_cloud", "token": "ibm-tok-flagged", "is_default_account": True},
    }
    write_ibm(home, accounts)
    [report] = cr.import_plaintext(store, home=home, environ={})
    assert report.info["account"] == "flagged"
    assert stored_value(store, "ibm") == "ibm-tok-flagged"


def test_import_problems_are_reported_and_nothing_stored(store, tmp_path):
    home = tmp_path / "home"
    ibm_file = write_ibm(home, {})
    ibm_file.write_text('{"default": {"token": ')
    write_aws(home, "[work]\naws_access_key_id = AKIAWORK\n")
    environ = {"AWS_ACCESS_KEY_ID": AWS_ID}
    reports = cr.import_plaintext(store, home=home, environ=environ, delete=True)
    assert [(r.source, r.provider, r.fingerprint, r.problem, r.note) for r in reports] == [
        (
            "env AWS_ACCESS_KEY_ID",
            "braket",
            None,
            True,
            "AWS_SECRET_ACCESS_KEY is not set, so there is no complete AWS credential",
        ),
        ("~/.qiskit/qiskit-ibm.json", "ibm", None, True, "not valid JSON (line 1 column 23)"),
        ("~/.aws/credentials", "braket", None, True, "no [default] profile"),
    ]
    assert store.names() == [] and ibm_file.exists()


def test_import_finds_nothing(store, tmp_path):
    assert cr.import_plaintext(store, home=tmp_path, environ={"PATH": "/bin"}) == []
    out = io.StringIO()
    assert cr.cli_import(store, tmp_path, {}, lambda prompt: True, out=out) == 0
    assert out.getvalue() == (
        "no plaintext credentials found (~/.qiskit/qiskit-ibm.json, ~/.aws/credentials, "
        "QISKIT_IBM_TOKEN, IBMQ_TOKEN, QE_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "QGUARD_FAKECLOUD_API_KEY)\n"
    )


def test_cli_import_asks_per_file_and_prints_no_value(store, tmp_path):
    home = tmp_path / "home"
    ibm_file = write_ibm(home, IBM_ACCOUNTS)
    write_aws(home, AWS_FILE)
    prompts: list[str] = []

    def ask(prompt: str) -> bool:
        prompts.append(prompt)
        return "qiskit" in prompt

    out = io.StringIO()
    code = cr.cli_import(store, home, {"IBMQ_TOKEN": IBM_TOKEN}, ask, out=out)
    assert code == 0
    assert prompts == [
        f"Delete {f}? Its credential is now in the keyring; the whole file goes, with any other "
        "accounts or profiles in it. [y/N] "
        for f in ("~/.qiskit/qiskit-ibm.json", "~/.aws/credentials")
    ]
    assert not ibm_file.exists() and (home / ".aws" / "credentials").exists()
    fps = {row["provider"]: row["fingerprint"] for row in store.names()}
    channel = "channel=ibm_quantum_platform, instance=crn:v1:bluemix:public:quantum-computing"
    assert out.getvalue().splitlines() == [
        f"env IBMQ_TOKEN -> ibm (fingerprint {fps['ibm']}): imported into the keyring; now unset "
        "IBMQ_TOKEN in your shell and its startup files (a program cannot unset its parent's "
        "environment)",
        f"~/.qiskit/qiskit-ibm.json -> ibm (fingerprint {fps['ibm']}): same credential as env "
        "IBMQ_TOKEN; plaintext file deleted",
        f"  (not secret, configure the ibm provider with: {channel}:us-east:a/123::)",
        f"~/.aws/credentials -> braket (fingerprint {fps['braket']}): imported into the keyring; "
        "plaintext file kept (delete it yourself once you no longer need it)",
    ]
    for value in (IBM_TOKEN, AWS_ID, AWS_SECRET):
        assert value not in out.getvalue() and value not in "".join(prompts)


def test_cli_import_exit_code_1_on_a_problem(store, tmp_path):
    out = io.StringIO()
    code = cr.cli_import(store, tmp_path, {"AWS_SECRET_ACCESS_KEY": AWS_SECRET}, bool, out=out)
    assert code == 1
    assert out.getvalue() == (
        "env AWS_SECRET_ACCESS_KEY -> braket: AWS_ACCESS_KEY_ID is not set, so there is no "
        "complete AWS credential\n"
    )


# --- scoped tokens against a real HTTP server ------------------------------------------------


class TokenHandler(web.RequestHandler):
    """The fake cloud's POST /v1/tokens, as far as the wire format goes."""

    def initialize(self, state: dict[str, Any]) -> None:
        self.state = state

    def post(self) -> None:
        self.state["requests"].append(
            {"headers": dict(self.request.headers), "body": json.loads(self.request.body)}
        )
        if self.request.headers.get("Authorization") != f"Bearer {FC_KEY}":
            self.set_status(401)
            self.finish({"error": {"code": "invalid_api_key", "message": "API key not recognised"}})
            return
        mode = self.state["mode"]
        if mode == "ok":
            body = json.loads(self.request.body)
            self.set_status(201)
            self.finish(
                {
                    "token": ISSUED,
                    "expires_at": "2031-01-02T03:04:05.250Z",
                    "job_ref": body["job_ref"],
                    "action": body["action"],
                }
            )
        elif mode == "other_scope":
            self.set_status(201)
            self.finish(
                {"token": ISSUED, "expires_at": 1924992000, "job_ref": "job-9", "action": "cancel"}
            )
        elif mode == "rate":
            self.set_status(429)
            self.set_header("Retry-After", "7")
            self.finish({"error": {"code": "rate_limited", "message": "too many tokens"}})
        elif mode == "down":
            self.set_status(503)
            self.finish({"error": {"code": "unavailable", "message": "maintenance"}})
        elif mode == "echo":
            self.set_status(500)
            msg = f"internal error for key {FC_KEY}"
            self.finish({"error": {"code": "internal", "message": msg}})
        elif mode == "html":
            self.set_status(502)
            self.finish("<html>bad gateway</html>")
        elif mode == "redirect":
            self.redirect("http://127.0.0.1:9/v1/tokens", status=307)


@contextlib.asynccontextmanager
async def fake_cloud(mode: str = "ok") -> AsyncIterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"mode": mode, "requests": []}
    app = web.Application([(r"/v1/tokens", TokenHandler, {"state": state})])
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/", state
    finally:
        server.stop()
        await server.close_all_connections()


async def test_scoped_token_issued(store):
    store.set("fakecloud", FC_KEY)
    async with fake_cloud("ok") as (url, state):
        token = await cr.scoped_token(store, "fakecloud", url, "job-42", "create", ttl=120)
    [request] = state["requests"]
    assert request["body"] == {"job_ref": "job-42", "action": "create", "ttl": 120}
    assert request["headers"]["Authorization"] == f"Bearer {FC_KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert token.authorization_header() == {"Authorization": f"Bearer {ISSUED}"}
    assert (token.provider, token.job_ref, token.action) == ("fakecloud", "job-42", "create")
    assert token.expires_at.isoformat() == "2031-01-02T03:04:05.250000+00:00"
    assert token.expired() is False
    assert (
        repr(token)
        == str(token)
        == (
            "ScopedToken('fakecloud', job_ref='job-42', action='create', "
            "expires_at='2031-01-02T03:04:05.250000+00:00')"
        )
    )
    for value in (ISSUED, FC_KEY):
        assert value not in repr(token)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(token)


async def test_scoped_token_without_ttl_sends_no_ttl(store):
    store.set("fakecloud", FC_KEY)
    async with fake_cloud("ok") as (url, state):
        await cr.scoped_token(store, "fakecloud", url.rstrip("/"), "job-1", "read")
    assert state["requests"][0]["body"] == {"job_ref": "job-1", "action": "read"}


@pytest.mark.parametrize(
    ("mode", "key", "fields", "text"),
    [
        (
            "ok",
            "fc-wrong-key-00000000",
            (401, "invalid_api_key", "API key not recognised", None),
            "token exchange failed (HTTP 401, invalid_api_key): API key not recognised",
        ),
        (
            "rate",
            FC_KEY,
            (429, "rate_limited", "too many tokens", 7.0),
            "token exchange failed (HTTP 429, rate_limited): too many tokens; retry after 7 s",
        ),
        (
            "down",
            FC_KEY,
            (503, "unavailable", "maintenance", None),
            "token exchange failed (HTTP 503, unavailable): maintenance",
        ),
        (
            "echo",
            FC_KEY,
            (500, "internal", "internal error for key [redacted]", None),
            "token exchange failed (HTTP 500, internal): internal error for key [redacted]",
        ),
        (
            "html",
            FC_KEY,
            (502, "http_502", "Bad Gateway", None),
            "token exchange failed (HTTP 502, http_502): Bad Gateway",
        ),
        (
            "redirect",
            FC_KEY,
            (307, "http_307", "Temporary Redirect", None),
            "token exchange failed (HTTP 307, http_307): Temporary Redirect",
        ),
        (
            "other_scope",
            FC_KEY,
            (
                201,
                "bad_response",
                "the token is scoped to a different job_ref or action than requested",
                None,
            ),
            "token exchange failed (HTTP 201, bad_response): the token is scoped to a different "
            "job_ref or action than requested",
        ),
    ],
)
async def test_scoped_token_errors(store, mode, key, fields, text):
    store.set("fakecloud", key)
    async with fake_cloud(mode) as (url, state):
        with pytest.raises(cr.TokenExchangeError) as info:
            await cr.scoped_token(store, "fakecloud", url, "job-42", "create")
    exc = info.value
    assert (exc.status, exc.code, exc.message, exc.retry_after) == fields
    assert str(exc) == text
    assert repr(exc) == f"TokenExchangeError{fields!r}"
    assert exc.retryable is (fields[0] == 429 or fields[0] >= 500)
    assert len(state["requests"]) == 1  # no redirect followed, no retry
    for value in (FC_KEY, key, ISSUED):
        assert value not in str(exc) and value not in repr(exc)
    assert exc.__context__ is None or exc.__suppress_context__


async def test_scoped_token_missing_credential_sends_nothing(store):
    async with fake_cloud("ok") as (url, state):
        with pytest.raises(cr.CredentialError) as info:
            await cr.scoped_token(store, "fakecloud", url, "job-42", "create")
    assert str(info.value) == missing("fakecloud")
    assert state["requests"] == []


async def test_scoped_token_refuses_plain_http_off_loopback(store):
    store.set("fakecloud", FC_KEY)
    with pytest.raises(cr.CredentialError) as info:
        await cr.scoped_token(store, "fakecloud", "http://cloud.example:8080", "job-1", "create")
    assert str(info.value) == (
        "refusing to send the fakecloud API key over plain http to cloud.example: use https "
        "(plain http is for 127.0.0.1/localhost only)"
    )
    with pytest.raises(cr.CredentialError, match="base URL must be http"):
        await cr.scoped_token(store, "fakecloud", "ftp://127.0.0.1", "job-1", "create")


async def test_scoped_token_unreachable(store):
    store.set("fakecloud", FC_KEY)
    sock = bind_sockets(0, "127.0.0.1")[0]
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(cr.TokenExchangeError) as info:
        await cr.scoped_token(store, "fakecloud", f"http://127.0.0.1:{port}", "j", "create")
    exc = info.value
    assert (exc.status, exc.code, exc.retry_after) == (None, "unreachable", None)
    assert exc.message.startswith(f"http://127.0.0.1:{port}/v1/tokens: ")
    assert exc.retryable is True and FC_KEY not in str(exc)


def test_retry_after_forms():
    assert cr._parse_retry_after("7") == 7.0
    assert cr._parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert cr._parse_retry_after("soon") is None
    assert cr._parse_retry_after(None) is None


# --- IBM -------------------------------------------------------------------------------------


class RecordingService:
    calls: list[dict[str, Any]] = []

    def __init__(self, **kwargs: Any) -> None:
        RecordingService.calls.append(kwargs)


def test_ibm_service_gets_exactly_the_keyring_token(store):
    RecordingService.calls = []
    store.set("ibm", IBM_TOKEN)
    service = cr.ibm_service(
        store, channel="ibm_quantum_platform", instance="crn:abc", service_class=RecordingService
    )
    assert isinstance(service, RecordingService)
    assert RecordingService.calls == [
        {"channel": "ibm_quantum_platform", "token": IBM_TOKEN, "instance": "crn:abc"}
    ]


def test_ibm_service_default_class_is_qiskit_runtime_service(store, monkeypatch):
    import qiskit_ibm_runtime

    RecordingService.calls = []
    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", RecordingService)
    store.set("ibm", IBM_TOKEN)
    assert isinstance(cr.ibm_service(store, channel="ibm_cloud", instance=None), RecordingService)
    assert RecordingService.calls == [
        {"channel": "ibm_cloud", "token": IBM_TOKEN, "instance": None}
    ]


def test_ibm_service_missing_credential(store):
    with pytest.raises(cr.CredentialError) as info:
        cr.ibm_service(store, channel="ibm_cloud", instance=None, service_class=RecordingService)
    assert str(info.value) == (
        "no credential for 'ibm' in the keyring (service 'jupyter-qguard'): run "
        "`jupyter qguard credentials set ibm` or `jupyter qguard credentials import`"
    )


def test_ibm_service_errors_never_carry_the_token(store):
    class Leaky:
        def __init__(self, **kwargs: Any) -> None:
            raise ValueError(f"invalid token {kwargs['token']}")

    class Plain:
        def __init__(self, **kwargs: Any) -> None:
            raise ConnectionError("IBM Quantum unreachable")

    store.set("ibm", IBM_TOKEN)
    with pytest.raises(cr.CredentialError) as info:
        cr.ibm_service(store, channel="ibm_cloud", instance=None, service_class=Leaky)
    assert str(info.value) == (
        "the IBM Quantum service could not be created (ValueError; its message is withheld "
        "because it contains the token)"
    )
    assert info.value.__suppress_context__ is True
    with pytest.raises(ConnectionError, match="^IBM Quantum unreachable$"):
        cr.ibm_service(store, channel="ibm_cloud", instance=None, service_class=Plain)


# --- the rule: secrets live in credentials.py only -------------------------------------------

PACKAGE = Path(jupyter_qguard.__file__).parent
# Naming these is fine (the doctor reports that they exist); reading them is not.
CREDENTIAL_FILE_MARKERS = ("qiskit-ibm.json", "qiskitrc", ".aws/credentials")
READ_CALLS = {"open", "read_text", "read_bytes", "load", "loads", "read", "read_file"}


def secret_violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    getpass_names: set[str] = set()
    names_credential_file = False
    reads = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root in ("keyring", "keyrings", "pyotp"):
                    found.append(f"imports {alias.name}")
                if root == "getpass":
                    getpass_names.add(alias.asname or "getpass")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            root = module.split(".")[0]
            if root in ("keyring", "keyrings", "pyotp"):
                found.append(f"imports from {module}")
            # The audit signing key: only its public half may be handled elsewhere.
            if any(a.name == "Ed25519PrivateKey" for a in node.names):
                found.append("imports Ed25519PrivateKey")
            if root == "getpass" and any(a.name != "getuser" for a in node.names):
                found.append("imports getpass.getpass")
            if module.endswith("credentials") and any(a.name.startswith("_") for a in node.names):
                found.append("imports a private name from credentials")
        elif isinstance(node, ast.Attribute):
            if node.attr in ("_reveal", "_value"):
                found.append(f"uses .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if any(marker in node.value for marker in CREDENTIAL_FILE_MARKERS):
                names_credential_file = True
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in READ_CALLS:
                reads = True
    # `import getpass` is allowed for getpass.getuser() (a user name, not a secret) only.
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in getpass_names
            and node.attr != "getuser"
        ):
            found.append(f"uses getpass.{node.attr}")
    if names_credential_file and reads:
        found.append("names a plaintext credential file and reads files")
    return found


def test_no_other_module_touches_secrets():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "credentials.py" in modules and len(modules) > 20
    # The check does find what credentials.py does.
    assert secret_violations(PACKAGE / "credentials.py")[:1] == ["imports keyring"]
    offenders = {
        str(path.relative_to(PACKAGE)): problems
        for path in modules
        if path.name != "credentials.py" or path.parent != PACKAGE
        if (problems := secret_violations(path))
    }
    assert offenders == {}


def test_the_secret_scan_catches_each_pattern(tmp_path):
    cases = {
        "import keyring\n": ["imports keyring"],
        "from keyring.backends import fail\n": ["imports from keyring.backends"],
        "from getpass import getpass\n": ["imports getpass.getpass"],
        "import getpass\ngetpass.getpass('k')\n": ["uses getpass.getpass"],
        "import getpass\nuser = getpass.getuser()\n": [],
        "from .credentials import _reveal\n": ["imports a private name from credentials"],
        "def f(s):\n    return s._value\n": ["uses ._value"],
        "import json\njson.load(open('~/.qiskit/qiskit-ibm.json'))\n": [
            "names a plaintext credential file and reads files"
        ],
        "from pathlib import Path\nPath('~/.aws/credentials').is_file()\n": [],
        "import pyotp\n": ["imports pyotp"],
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n": [
            "imports Ed25519PrivateKey"
        ],
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey\n": [],
    }
    for i, (source, expected) in enumerate(cases.items()):
        path = tmp_path / f"m{i}.py"
        path.write_text(source)
        assert secret_violations(path) == expected, source


def test_nothing_here_logs():
    tree = ast.parse((PACKAGE / "credentials.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert "logging" not in imported and "warnings" not in imported


def test_store_repr_names_the_backend_only(store):
    store.set("fakecloud", FC_KEY)
    assert repr(store) == "CredentialStore(backend=keyrings.alt.file.PlaintextKeyring)"
