"""The workspace secret scan (jupyter_qguard.watch.secrets), on real files in tmp_path."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import threading
from pathlib import Path

import nbformat
import pytest
from detect_secrets.core.scan import _process_line_based_plugins
from nbformat import v4

from jupyter_qguard.watch import secrets as scan
from jupyter_qguard.watch.secrets import Finding, ScanReport, SkippedFile

# AWS's documentation example: detect-secrets flags it (no filter drops "EXAMPLE" keys).
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
DIGEST = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # flagged when quoted
PASSWORD = "hunter2-Correct-Horse"  # letters outside [a-f]: no window of it can be in a hex digest
KEY = b"k" * 32
DEMO_NOTEBOOK = Path(__file__).parents[2] / "jupyter_qguard" / "demo" / "qguard-demo.ipynb"
BIG = 1 << 20


def fp(value: str) -> str:
    """The documented fingerprint: HMAC-SHA-256 under the server's key, 12 hex digits."""
    return hmac.new(KEY, value.encode(), hashlib.sha256).hexdigest()[:12]


@pytest.fixture
def ws(tmp_path):
    """The workspace: tmp_path itself also holds pytest-jupyter's data and runtime dirs."""
    root = tmp_path / "ws"
    root.mkdir()
    return root


@pytest.fixture(autouse=True)
def fingerprint_key():
    saved = scan._fingerprint_key
    scan.set_fingerprint_key(KEY)
    yield
    scan._fingerprint_key = saved


def write_notebook(path: Path, cells: list, **metadata) -> None:
    nb = v4.new_notebook(cells=cells, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def windows(secret: str, size: int = 5) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


def assert_nothing_of(secret: str, *texts: str) -> None:
    for text in texts:
        leaked = [w for w in windows(secret) if w in text]
        assert leaked == [], (leaked, text)


def test_aws_key_in_notebook_cell_3(ws):
    cell_id = "7e25f8c3-4b1a-4c57-9d0e-2f6a1b3c4d5e"
    write_notebook(
        ws / "qguard-demo.ipynb",
        [
            v4.new_markdown_cell("# Bell pair", id="m0"),
            v4.new_code_cell("from qiskit import QuantumCircuit", id="c1"),
            v4.new_code_cell("bell = QuantumCircuit(2)\nbell.h(0)\nbell.cx(0, 1)", id="c2"),
            v4.new_code_cell(f"import boto3\nkey_id = '{AWS_KEY}'\nprint(key_id)", id=cell_id),
            v4.new_code_cell("bell.measure_all()", id="c4"),
        ],
    )

    report = scan.scan_file(ws, "qguard-demo.ipynb", max_bytes=BIG)

    expected = Finding(
        path="qguard-demo.ipynb",
        line=2,
        kind="AWS Access Key",
        fingerprint=fp(AWS_KEY),
        cell=3,
        cell_id=cell_id,
        part="source",
    )
    assert report.findings == [expected]
    assert report.files_scanned == 1
    assert report.skipped == []
    assert (
        expected.describe() == "qguard-demo.ipynb, cell 3 (id 7e25f8c3...), line 2: AWS Access Key"
    )
    assert expected.as_dict() == {
        "path": "qguard-demo.ipynb",
        "line": 2,
        "kind": "AWS Access Key",
        "fingerprint": fp(AWS_KEY),
        "cell": 3,
        "cell_id": cell_id,
        "part": "source",
        "output": None,
    }


def test_findings_hold_nothing_of_the_secret(ws):
    (ws / "conf.py").write_text(f'aws = "{AWS_KEY}"\npassword = "{PASSWORD}"\n')
    write_notebook(
        ws / "nb.ipynb",
        [v4.new_code_cell(f'password = "{PASSWORD}"\nkey = "{AWS_KEY}"', id="x")],
    )

    report = scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=100)

    assert [(f.path, f.line, f.kind) for f in report.findings] == [
        ("conf.py", 1, "AWS Access Key"),
        ("conf.py", 2, "Secret Keyword"),
        ("nb.ipynb", 1, "Secret Keyword"),
        ("nb.ipynb", 2, "AWS Access Key"),
    ]
    texts = [json.dumps(report.as_dict()), repr(report), str(report)]
    for finding in report.findings:
        texts += [json.dumps(finding.as_dict()), finding.describe(), repr(finding), str(finding)]
    for secret in (AWS_KEY, PASSWORD):
        assert_nothing_of(secret, *texts)
    # Not detect-secrets' unkeyed SHA-1 either, which would let a guess be confirmed offline.
    sha1 = hashlib.sha1(PASSWORD.encode()).hexdigest()
    assert all(not sha1.startswith(f.fingerprint) for f in report.findings)


def test_private_key_in_python_file(ws):
    (ws / "deploy").mkdir()
    (ws / "deploy" / "keys.py").write_text(
        "import paramiko\n"
        "\n"
        'KEY = """-----BEGIN RSA PRIVATE KEY-----\n'
        "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi4fKq8Fq8JhR0vC1pQm9b2mH5c\n"
        "-----END RSA PRIVATE KEY-----\n"
        '"""\n'
    )

    report = scan.scan_file(ws, "deploy/keys.py", max_bytes=BIG)

    assert report.findings == [
        Finding("deploy/keys.py", 3, "Private Key", fp("BEGIN RSA PRIVATE KEY"))
    ]
    assert report.findings[0].describe() == "deploy/keys.py, line 3: Private Key"


QISKIT_CODE = """\
import os
from getpass import getpass

from qiskit import QuantumCircuit, transpile
from qiskit_aer import AerSimulator
from qiskit_ibm_runtime import QiskitRuntimeService, SamplerV2

token = getpass("IBM Quantum token: ")
password = getpass()
api_key = os.environ.get("API_KEY")
secret = config["secret"]
service = QiskitRuntimeService(channel="ibm_quantum", token=os.environ["QISKIT_IBM_TOKEN"])

qc = QuantumCircuit(2, name="bell")
qc.h(0)
qc.cx(0, 1)
qc.measure_all()
backend = AerSimulator(seed_simulator=7)
job = SamplerV2(backend).run([transpile(qc, backend)], shots=1000)
counts = job.result()[0].data.meas.get_counts()
assert set(counts) <= {"00", "11"}, counts
print(f"job {job.job_id()} digest e3b0c442 counts {counts}")
"""


def test_clean_notebooks_and_qiskit_code(ws):
    shutil.copy(DEMO_NOTEBOOK, ws / "qguard-demo.ipynb")
    (ws / "bell.py").write_text(QISKIT_CODE)
    write_notebook(
        ws / "bell.ipynb",
        [
            v4.new_markdown_cell("Sample a **Bell pair** on the simulator."),
            v4.new_code_cell(
                QISKIT_CODE,
                execution_count=1,
                outputs=[
                    v4.new_output("stream", name="stdout", text="{'00': 503, '11': 497}\n"),
                    v4.new_output(
                        "display_data",
                        data={"text/plain": "<Figure size 640x480 with 1 Axes>"},
                    ),
                ],
            ),
        ],
        kernelspec={"name": "qguard-agent", "display_name": "Python 3 (qguard agent)"},
        language_info={"name": "python", "file_extension": ".py"},
    )

    report = scan.scan_workspace(ws, ignore=list(scan.DEFAULT_IGNORE), max_bytes=BIG, max_files=100)

    assert report.findings == []
    assert report.files_scanned == 3
    assert report.skipped == []
    assert report.truncated is False


def test_binary_and_oversized_files_are_skipped_with_the_reason(ws):
    (ws / "big.txt").write_text(f"key = '{AWS_KEY}'\n" + "x" * 1000)
    (ws / "data.dat").write_bytes(b"\x00\x01" + f"key = '{AWS_KEY}'".encode())
    (ws / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n" + AWS_KEY.encode())
    (ws / "poetry.lock").write_text(f'hash = "{AWS_KEY}"\n')
    (ws / "package-lock.json").write_text(f'{{"integrity": "{AWS_KEY}"}}\n')
    (ws / "ok.txt").write_text("nothing here\n")

    report = scan.scan_workspace(ws, ignore=[], max_bytes=1000, max_files=100)

    assert report.findings == []
    assert report.files_scanned == 1
    assert report.skipped == [
        SkippedFile("big.txt", "too-large", "1029 bytes > 1000"),
        SkippedFile("data.dat", "binary", "NUL byte"),
        SkippedFile("package-lock.json", "lock-file"),
        SkippedFile("plot.png", "binary", "file type"),
        SkippedFile("poetry.lock", "lock-file"),
    ]
    assert scan.scan_file(ws, "big.txt", max_bytes=1000).skipped == [
        SkippedFile("big.txt", "too-large", "1029 bytes > 1000")
    ]
    assert [f.path for f in scan.scan_file(ws, "big.txt", max_bytes=2000).findings] == ["big.txt"]


def test_ignored_directories_are_not_scanned(ws):
    leak = f"password = '{PASSWORD}'\n"
    for rel in (
        ".ipynb_checkpoints/nb-checkpoint.py",
        "sub/.ipynb_checkpoints/x.py",
        "__pycache__/m.py",
        "sub/__pycache__/m.py",
        ".git/config",
        "sub/.git/hooks/pre-commit",
        "notes.txt~",
        ".~lock.txt",
        "data/raw/dump.txt",
        "visible.py",
    ):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(leak)

    report = scan.scan_workspace(
        ws, ignore=[*scan.DEFAULT_IGNORE, "data/*"], max_bytes=BIG, max_files=100
    )

    assert report.findings == [Finding("visible.py", 1, "Secret Keyword", fp(PASSWORD))]
    assert report.files_scanned == 1
    assert report.skipped == []


def test_secret_hidden_by_the_raw_json_is_found_in_the_cell_source(ws):
    # The key is split across two strings of the source list and, in the second cell, spelt
    # with \u escapes: the raw file never holds it, the cell source does.
    raw = r"""{
 "cells": [
  {"cell_type": "markdown", "id": "intro", "metadata": {}, "source": ["# S3\n"]},
  {
   "cell_type": "code", "execution_count": null, "id": "split", "metadata": {}, "outputs": [],
   "source": ["import boto3\n", "key_id = 'AKIAIOSF", "ODNN7EXAMPLE'\n",
              "other = 'AKIA\u0049OSFODNN7EXAMPL\u0045'\n"]
  }
 ],
 "metadata": {}, "nbformat": 4, "nbformat_minor": 5
}
"""
    (ws / "hidden.ipynb").write_text(raw)
    assert AWS_KEY not in raw
    with scan._engine():
        lines = list(enumerate(raw.splitlines(), start=1))
        assert list(_process_line_based_plugins(lines, "hidden.ipynb")) == []

    report = scan.scan_file(ws, "hidden.ipynb", max_bytes=BIG)

    key = dict(kind="AWS Access Key", fingerprint=fp(AWS_KEY), cell=1, cell_id="split")
    assert report.findings == [
        Finding("hidden.ipynb", 2, **key, part="source"),
        Finding("hidden.ipynb", 3, **key, part="source"),
    ]


def test_outputs_and_metadata_are_scanned(ws):
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5E"
    traceback = [
        "\x1b[0;31mValueError\x1b[0m    Traceback (most recent call last)",
        '\x1b[0;32m----> 1\x1b[0m password \x1b[38;5;241m=\x1b[39m \x1b[38;5;124m"\x1b[39m'
        f'\x1b[38;5;124m{PASSWORD}\x1b[39m\x1b[38;5;124m"\x1b[39m',
    ]
    write_notebook(
        ws / "out.ipynb",
        [
            v4.new_code_cell("print(1)", id="a"),
            v4.new_code_cell(
                "run()",
                id="b",
                metadata={"creds": {"password": PASSWORD}},
                outputs=[
                    v4.new_output("execute_result", data={"text/plain": "{'ok': 1}"}),
                    v4.new_output(
                        "display_data",
                        data={"image/png": png, "text/plain": f"figure\naws = '{AWS_KEY}'"},
                    ),
                    v4.new_output("error", ename="ValueError", evalue="x", traceback=traceback),
                    # Library code, not printed data: <script> elements and JavaScript.
                    v4.new_output(
                        "display_data",
                        data={
                            "text/html": f"<div>\n<script>\nvar h = '{DIGEST}';\n</script>\n"
                            f"aws = '{AWS_KEY}'</div>",
                            "application/javascript": f"var h = '{DIGEST}';",
                        },
                    ),
                ],
            ),
        ],
    )

    report = scan.scan_file(ws, "out.ipynb", max_bytes=BIG)

    where = dict(path="out.ipynb", cell=1, cell_id="b")
    assert report.findings == [
        Finding(**where, line=2, kind="AWS Access Key", fingerprint=fp(AWS_KEY), part="output",
                output=1),
        Finding(**where, line=2, kind="Secret Keyword", fingerprint=fp(PASSWORD), part="output",
                output=2),
        Finding(**where, line=5, kind="AWS Access Key", fingerprint=fp(AWS_KEY), part="output",
                output=3),
        Finding(**where, line=3, kind="Secret Keyword", fingerprint=fp(PASSWORD), part="metadata"),
    ]  # fmt: skip
    assert [f.describe() for f in report.findings] == [
        "out.ipynb, cell 1 (id b), output 1, line 2: AWS Access Key",
        "out.ipynb, cell 1 (id b), output 2, line 2: Secret Keyword",
        "out.ipynb, cell 1 (id b), output 3, line 5: AWS Access Key",
        "out.ipynb, cell 1 (id b), metadata, line 3: Secret Keyword",
    ]


def test_unparsable_notebook_is_scanned_as_text(ws):
    (ws / "half.ipynb").write_text('{\n "cells": [\n  {"source": "key = \'' + AWS_KEY)

    report = scan.scan_file(ws, "half.ipynb", max_bytes=BIG)

    assert report.findings == [Finding("half.ipynb", 3, "AWS Access Key", fp(AWS_KEY))]
    assert report.findings[0].describe() == "half.ipynb, line 3: AWS Access Key"


def test_dotenv_and_latin1_files(ws):
    (ws / ".env").write_text(f"# settings\nDEBUG=1\nDB_PASSWORD={PASSWORD}\n")
    (ws / "notes.txt").write_bytes(f"café\npassword = '{PASSWORD}'\n".encode("latin-1"))

    report = scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=100)

    assert report.findings == [
        Finding(".env", 3, "Secret Keyword", fp(PASSWORD)),
        Finding("notes.txt", 2, "Secret Keyword", fp(PASSWORD)),
    ]


def test_symlinks_are_not_followed_out_of_the_workspace(tmp_path):
    root = tmp_path / "ws"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "creds.py").write_text(f"key = '{AWS_KEY}'\n")
    (root / "inside.py").write_text(f"key = '{AWS_KEY}'\n")
    (root / "out-link.py").symlink_to(outside / "creds.py")
    (root / "in-link.py").symlink_to(root / "inside.py")
    (root / "out-dir").symlink_to(outside, target_is_directory=True)

    report = scan.scan_workspace(root, ignore=[], max_bytes=BIG, max_files=100)

    assert report.findings == [Finding("inside.py", 1, "AWS Access Key", fp(AWS_KEY))]
    assert report.skipped == [
        SkippedFile("in-link.py", "symlink", "not followed"),
        SkippedFile("out-dir", "symlink", "not followed"),
        SkippedFile("out-link.py", "symlink", "not followed"),
    ]
    # One file (a change event): no link is followed, on any component, not even one whose
    # target is inside (its target is scanned under its own path; a link could be swapped).
    assert scan.scan_file(root, "out-link.py", max_bytes=BIG).skipped == [
        SkippedFile("out-link.py", "symlink", "not followed")
    ]
    through_dir = scan.scan_file(root, "out-dir/creds.py", max_bytes=BIG)
    assert (through_dir.findings, through_dir.skipped) == (
        [],
        [SkippedFile("out-dir/creds.py", "symlink", "not followed")],
    )
    in_link = scan.scan_file(root, "in-link.py", max_bytes=BIG)
    assert (in_link.findings, in_link.skipped) == (
        [],
        [SkippedFile("in-link.py", "symlink", "not followed")],
    )
    assert scan.scan_file(root, "../outside/creds.py", max_bytes=BIG).skipped == [
        SkippedFile("../outside/creds.py", "outside-workspace", "not a path inside the workspace")
    ]


def test_fifo_missing_file_and_file_limit(ws):
    os.mkfifo(ws / "pipe")
    for i in range(5):
        (ws / f"f{i}.txt").write_text("x\n")

    report = scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=3)

    assert (report.files_scanned, report.truncated) == (3, True)
    assert report.skipped == []  # "pipe" sorts after the files the walk stopped at
    # Opened without blocking, then refused: a FIFO left by an agent cannot hang the server.
    full = scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=100)
    assert (full.files_scanned, full.truncated) == (5, False)
    assert full.skipped == [SkippedFile("pipe", "not-regular")]
    assert scan.scan_file(ws, "pipe", max_bytes=BIG).skipped == [SkippedFile("pipe", "not-regular")]
    assert scan.scan_file(ws, "gone.py", max_bytes=BIG).skipped == [
        SkippedFile("gone.py", "missing")
    ]


def test_fingerprints_are_keyed(ws):
    (ws / "a.py").write_text(f"key = '{AWS_KEY}'\n")
    (ws / "b.txt").write_text(f"id {AWS_KEY}\n")
    first = scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=10).findings
    assert [f.fingerprint for f in first] == [fp(AWS_KEY), fp(AWS_KEY)]

    scan.set_fingerprint_key(b"another key, 32 bytes long......")
    second = scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=10).findings
    assert [f.fingerprint for f in second][0] != fp(AWS_KEY)
    with pytest.raises(ValueError):
        scan.set_fingerprint_key(b"short")


def test_concurrent_scans_agree(ws):
    for i in range(20):
        (ws / f"f{i}.py").write_text(f"x = {i}\npassword = '{PASSWORD}{i}'\n")
    results: list[ScanReport] = []

    def run() -> None:
        results.append(scan.scan_workspace(ws, ignore=[], max_bytes=BIG, max_files=100))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) == 4
    assert all(r.findings == results[0].findings for r in results)
    assert len(results[0].findings) == 20


# Lines for each plugin, and for what the whole-text prefilter has to get right: case-folding
# (Kelvin sign, long s, dotless i), anchors at line starts, matches that could span lines,
# allowlist pragmas on the line before, the entropy limits.
TRICKY = [
    f"AWS = '{AWS_KEY}'",
    f"{AWS_KEY}",
    'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
    "PASSWORD = 'Tr0ub4dor&3-horse'",
    "pas\u017fword = 'Tr0ub4dor&3-horse'",  # long s
    "api_\u212aey = 'Tr0ub4dor&3-horse'",  # Kelvin sign
    "AP\u0130_KEY = 'Tr0ub4dor&3-horse'",  # dotted capital I
    "ap\u0131_key: 'Tr0ub4dor&3-horse'",  # dotless i
    "secret:",
    "  'spans-two-lines'",
    "my_password = 'unterminated",
    'db_pass = "second"',
    "# pragma: allowlist nextline secret",
    "password = 'allowed-by-the-pragma'",
    "password = 'allowed-inline'  # pragma: allowlist secret",
    'if ("abc-super-secret" == my_password) {}',
    'std::string secret("bar-bar-bar");',
    'private_key "something-secret";',
    "AKCp8ababababababababababab",
    "AP6xxxxxxxxxxxxxxxxxxxx",
    "url = 'https://admin:hunter2pass@example.com/x'",
    "cloudant_password = 'abcdefghijklmnopqrstuvwx'",
    "ibm_cloud_iam_api_key = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR'",
    "cos_hmac_secret_access_key = '0123456789abcdef0123456789abcdef0123456789abcdef'",
    "softlayer_api_key = '" + "a1" * 32 + "'",
    "token = 'ghp_" + "A" * 36 + "'",
    "glpat-" + "x" * 20,
    "xoxb-1234-5678-abcdef",
    "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc",
    "SG." + "a" * 22 + "." + "b" * 43,
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl",
    "AccountKey=" + "A" * 86 + "==",
    "//registry.npmjs.org/:_authToken=npm_abcdefghijklmnopqrstuvwxyz",
    "pypi-AgEIcHlwaS5vcmc" + "A" * 70,
    "sq0csp-" + "a" * 43,
    "AC" + "a1" * 16,
    "123456789:" + "A" * 35,
    "x = 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=='",
    "y = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'",
    "z = '0123abcd'",
    "short = 'abcdef012345'",
    "user_id = 'c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=='",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "PuTTY-User-Key-File-2: ssh-rsa",
    "password = getpass()",
    "password = '${PASSWORD}'",
    "password = '{password}'",
    "ip = '8.8.8.8'",
]


def reference(lines: list[str], filename: str) -> list[tuple[int, str, str | None]]:
    """detect-secrets' own loop over every line."""
    found = _process_line_based_plugins(list(enumerate(lines, start=1)), filename)
    return sorted((s.line_number, s.type, s.secret_value) for s in found)


def fast(lines: list[str], filename: str) -> list[tuple[int, str, str | None]]:
    found = scan._scan_lines(lines, scan._candidate_lines(lines), filename)
    return sorted((s.line_number, s.type, s.secret_value) for s in found)


@pytest.mark.parametrize("filename", ["x.py", "x.yaml", "x.ini", "x.go", "x.txt"])
def test_prefilter_finds_what_detect_secrets_finds(filename):
    lines = scan._lines("\n".join(TRICKY))
    with scan._engine():
        expected = reference(lines, filename)
        assert fast(lines, filename) == expected
    # The corpus exercises most plugins, so the equality above means something.
    assert len({kind for _, kind, _ in expected}) >= 15


def test_prefilter_on_real_source_files():
    root = Path(__file__).parents[2]
    files = [
        root / "jupyter_qguard" / "credentials.py",
        root / "jupyter_qguard" / "watch" / "secrets.py",
        Path(__file__),
    ]
    total = 0
    with scan._engine():
        for path in files:
            lines = scan._lines(path.read_text())
            expected = reference(lines, path.name)
            assert fast(lines, path.name) == expected, path
            total += len(expected)
    assert total > 20


def test_ids_and_digests_in_hex_are_not_secrets_but_a_long_hex_token_is(tmp_path):
    import hashlib

    job_id = hashlib.md5(b"job").hexdigest()  # 32 hex digits, like uuid4().hex
    digest = hashlib.sha256(b"approval").hexdigest()
    token = hashlib.sha512(b"token").hexdigest()  # IBM Quantum's tokens: 128 hex digits
    (tmp_path / "out.py").write_text(
        f"status = {{'id': '{job_id}', 'digest': '{digest}'}}\ntoken = '{token}'\n"
    )
    report = scan.scan_file(tmp_path, "out.py", max_bytes=1 << 20)
    assert [(f.line, f.kind) for f in report.findings] == [(2, "Hex High Entropy String")]
