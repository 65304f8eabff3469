"""The workspace boundary for agent tokens (issue 18): what an agent token reaches through the
contents, files and checkpoint routes is checked on the real path, so a symbolic link (made by an
agent's kernel, or by the person) never leads it out of the server's root; agents never trust or
sign notebooks; an agent token drives only the kernels it started. The request's agent reaches
the provisioner's pre_launch and the save hooks, and never the next request on the same
connection. Real server with the extension, real agent tokens, exact outcomes; what lies outside
the root is compared entry by entry before and after."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import nbformat
import pytest
from support.agent_tokens import auth
from support.agent_tokens import status_of as call
from tornado.httpclient import HTTPClientError

from jupyter_qguard.agents.context import current_agent
from jupyter_qguard.agents.manifest import Manifest

MANIFEST = """
description: the workspace test agent
contents:
  read: ["*"]
  write: ["agent/*"]
  deny: [".*", "*/.*"]
backends: ["aer_*"]
limits:
  max_shots: 5000
  max_cost_per_job: 1.0
  rate: {jobs: 50, per_seconds: 3600}
"""

SECRET = '{"default-ibm-quantum": {"channel": "ibm_quantum", "token": "SECRET-IBM-TOKEN-42"}}\n'
JS = "document.title = 'agent was here'"


def make_token(tokens: Any, name: str) -> tuple[str, str]:
    """(token id, token) of a new agent token with MANIFEST."""
    manifest = Manifest.parse(MANIFEST, source="test", policy_dir=tokens.policy_dir)
    row, token = tokens.create(name, manifest)
    return row["id"], token


@pytest.fixture
def agent_token(tokens: Any) -> str:
    return make_token(tokens, "bot")[1]


@pytest.fixture
def home(jp_home_dir: Path) -> Path:
    """The server user's home (outside the root) with what an agent would want."""
    (jp_home_dir / ".qiskit").mkdir()
    (jp_home_dir / ".qiskit" / "qiskit-ibm.json").write_text(SECRET)
    (jp_home_dir / ".jupyter").mkdir()
    (jp_home_dir / ".jupyter" / "existing_config.py").write_text("c = get_config()\n")
    (jp_home_dir / ".ipython" / "profile_default" / "startup").mkdir(parents=True)
    (jp_home_dir / "outside").mkdir()
    (jp_home_dir / "outside" / "victim.txt").write_text("the person's file\n")
    return jp_home_dir


@pytest.fixture
def root(jp_root_dir: Path) -> Path:
    (jp_root_dir / "agent").mkdir()
    (jp_root_dir / "agent" / "a.txt").write_text("agent's file\n")
    (jp_root_dir / "notes.txt").write_text("the user's notes\n")
    return jp_root_dir


def put_body(content: str) -> str:
    return json.dumps({"type": "file", "format": "text", "content": content})


def entries(top: Path) -> dict[str, str]:
    """Every entry under `top` without following links: files by hash, links by target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"mode:{st.st_mode:o}"
    return out


async def test_a_symlinked_file_is_not_read_by_an_agent_but_still_by_the_user(
    jp_fetch, jp_serverapp, agent_token, root, home
):
    (root / "link.json").symlink_to(home / ".qiskit" / "qiskit-ibm.json")
    (root / "agent" / "creds").symlink_to(home / ".qiskit")
    # A notebook that does not parse, with its atomic-write intermediate a link to the secret:
    # reading it, the contents manager would rename the intermediate over it and read that.
    (root / "agent" / "broken.ipynb").write_text("not json")
    (root / "agent" / ".~broken.ipynb").symlink_to(home / ".qiskit" / "qiskit-ibm.json")
    os.mkfifo(root / "agent" / "pipe")
    before = entries(root), entries(home)

    refused: list[tuple[tuple[str, ...], dict[str, str]]] = [
        (("api", "contents", "link.json"), {}),
        (("api", "contents", "link.json"), {"content": "1"}),
        (("api", "contents", "link.json"), {"content": "0"}),
        (("api", "contents", "link.json"), {"type": "file", "format": "text"}),
        (("files", "link.json"), {}),
        (("files", "link.json"), {"download": "1"}),
        (("api", "contents", "link.json", "checkpoints"), {}),
        (("api", "contents", "agent", "creds"), {}),
        (("api", "contents", "agent", "creds", "qiskit-ibm.json"), {}),
        (("files", "agent", "creds", "qiskit-ibm.json"), {}),
        (("api", "contents", "agent", "broken.ipynb"), {}),
        # A FIFO would block the reader until someone writes to it.
        (("api", "contents", "agent", "pipe"), {}),
        (("files", "agent", "pipe"), {}),
    ]
    for parts, params in refused:
        code, text = await asyncio.wait_for(call(jp_fetch, agent_token, *parts, params=params), 10)
        assert code == 403, f"{parts} {params}: {code} {text[:200]}"
        assert "SECRET-IBM-TOKEN-42" not in text
    code, _ = await call(jp_fetch, agent_token, "files", "link.json", method="HEAD")
    assert code == 403
    assert (entries(root), entries(home)) == before  # nothing renamed, nothing created

    # What it may read, on real entries, it still reads.
    code, text = await call(jp_fetch, agent_token, "api", "contents", "agent", "a.txt")
    assert code == 200 and json.loads(text)["content"] == "agent's file\n"
    code, text = await call(jp_fetch, agent_token, "files", "agent", "a.txt")
    assert (code, text) == (200, "agent's file\n")
    code, text = await call(jp_fetch, agent_token, "api", "contents", "agent")
    assert code == 200 and {e["name"] for e in json.loads(text)["content"]} >= {"a.txt"}

    # The person's own requests are unchanged: the contents route follows their links as
    # before; the files route is tornado's StaticFileHandler, which itself serves no link whose
    # target is outside the root (6.6), and serves one inside it.
    r = await jp_fetch("api", "contents", "link.json")
    assert r.code == 200 and json.loads(r.body)["content"] == SECRET
    r = await jp_fetch("api", "contents", "agent", "creds", "qiskit-ibm.json")
    assert r.code == 200 and json.loads(r.body)["content"] == SECRET
    r = await jp_fetch("files", "link.json", raise_error=False)
    assert r.code == 403 and b"not in root static directory" in r.body
    (root / "alias.txt").symlink_to(root / "notes.txt")
    r = await jp_fetch("files", "alias.txt")
    assert (r.code, r.body.decode()) == (200, "the user's notes\n")
    code, _ = await call(jp_fetch, agent_token, "files", "alias.txt")
    assert code == 403  # an agent: no link at all, even one that stays inside


async def test_writes_through_a_symlink_are_refused_and_write_nothing(
    jp_fetch, jp_serverapp, agent_token, root, home
):
    agent = root / "agent"
    (agent / "d").symlink_to(home / ".jupyter")  # a symlinked folder
    (agent / "cfg.py").symlink_to(home / ".jupyter" / "existing_config.py")  # a file
    startup = home / ".ipython" / "profile_default" / "startup"
    (agent / "new.py").symlink_to(startup / "00-new.py")  # dangling: atomic_writing resolves it
    (agent / "untitled.txt").symlink_to(startup / "00-untitled.py")  # dangling, POST's first name
    (agent / "x.py").write_text("import os  # the agent's code\n")
    (agent / ".~x.py").symlink_to(startup / "00-backup.py")  # where a save backs x.py up
    before = entries(root), entries(home)

    writes: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
        (
            "a config file through a symlinked folder",
            ("api", "contents", "agent", "d", "jupyter_server_config.py"),
            {"method": "PUT", "body": put_body("c.ServerApp.token = ''\n")},
        ),
        (
            "a notebook through a symlinked folder",
            ("api", "contents", "agent", "d", "n.ipynb"),
            {
                "method": "PUT",
                "body": json.dumps(
                    {"type": "notebook", "format": "json", "content": nbformat.v4.new_notebook()}
                ),
            },
        ),
        (
            "a new folder through a symlinked folder",
            ("api", "contents", "agent", "d", "sub"),
            {"method": "PUT", "body": json.dumps({"type": "directory"})},
        ),
        (
            "overwrite a symlinked file",
            ("api", "contents", "agent", "cfg.py"),
            {"method": "PUT", "body": put_body("import os; os.system('id')\n")},
        ),
        (
            "create through a dangling link",
            ("api", "contents", "agent", "new.py"),
            {"method": "PUT", "body": put_body("import os; os.system('id')\n")},
        ),
        (
            "an untitled file in a symlinked folder",
            ("api", "contents", "agent", "d"),
            {"method": "POST", "body": json.dumps({"type": "file"})},
        ),
        (
            "save a file whose backup name is a link",
            ("api", "contents", "agent", "x.py"),
            {"method": "PUT", "body": put_body("print('new')\n")},
        ),
        (
            "append a chunk through a symlinked file",
            ("api", "contents", "agent", "cfg.py"),
            {
                "method": "PUT",
                "body": json.dumps(
                    {"type": "file", "format": "text", "content": "x = 1\n", "chunk": 2}
                ),
            },
        ),
        (
            "delete through a symlinked folder",
            ("api", "contents", "agent", "d", "existing_config.py"),
            {"method": "DELETE"},
        ),
        ("delete a symlink", ("api", "contents", "agent", "cfg.py"), {"method": "DELETE"}),
        (
            "an untitled name that climbs out",
            ("api", "contents", "agent"),
            {"method": "POST", "body": json.dumps({"type": "file", "ext": "/../../notes.txt"})},
        ),
    ]
    for what, parts, kwargs in writes:
        code, text = await call(jp_fetch, agent_token, *parts, **kwargs)
        assert code == 403, f"{what}: {code} {text[:200]}"
    assert (entries(root), entries(home)) == before
    assert not (home / ".jupyter" / "jupyter_server_config.py").exists()
    assert os.listdir(startup) == []

    # On real entries the same writes work.
    code, _ = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "real.py",
        method="PUT",
        body=put_body("1\n"),
    )
    assert code == 201 and (agent / "real.py").read_text() == "1\n"
    # The name a POST takes is checked as the server picks it: it passes over the dangling
    # link (jupyter_core's exists() is an lstat) and creates a real file.
    code, text = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        method="POST",
        body=json.dumps({"type": "file", "ext": ".txt"}),
    )
    assert code == 201 and json.loads(text)["path"] == "agent/untitled1.txt"
    assert (agent / "untitled1.txt").is_file() and not (agent / "untitled1.txt").is_symlink()
    assert (agent / "untitled.txt").is_symlink()
    assert os.listdir(startup) == []


async def test_checkpoints_through_a_symlinked_checkpoint_folder_are_refused(
    jp_fetch, jp_serverapp, agent_token, root, home
):
    agent = root / "agent"
    outside = home / "outside"
    (agent / ".ipynb_checkpoints").symlink_to(outside)
    # A real checkpoint folder whose checkpoint file is a link.
    (agent / "sub" / ".ipynb_checkpoints").mkdir(parents=True)
    (agent / "sub" / "b.txt").write_text("b\n")
    (agent / "sub" / ".ipynb_checkpoints" / "b-checkpoint.txt").symlink_to(outside / "victim.txt")
    before = entries(root), entries(home)

    refused: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
        (
            "create",
            ("api", "contents", "agent", "a.txt", "checkpoints"),
            {"method": "POST", "body": ""},
        ),
        ("list", ("api", "contents", "agent", "a.txt", "checkpoints"), {}),
        (
            "restore",
            ("api", "contents", "agent", "a.txt", "checkpoints", "checkpoint"),
            {"method": "POST", "body": ""},
        ),
        (
            "delete",
            ("api", "contents", "agent", "a.txt", "checkpoints", "checkpoint"),
            {"method": "DELETE"},
        ),
        (
            "create onto a symlinked checkpoint file",
            ("api", "contents", "agent", "sub", "b.txt", "checkpoints"),
            {"method": "POST", "body": ""},
        ),
        (
            "restore from a symlinked checkpoint file",
            ("api", "contents", "agent", "sub", "b.txt", "checkpoints", "checkpoint"),
            {"method": "POST", "body": ""},
        ),
        # A notebook's first save makes its checkpoint; a delete removes it; both go through
        # the symlinked folder.
        (
            "save a new notebook",
            ("api", "contents", "agent", "n.ipynb"),
            {
                "method": "PUT",
                "body": json.dumps(
                    {"type": "notebook", "format": "json", "content": nbformat.v4.new_notebook()}
                ),
            },
        ),
        ("delete a file", ("api", "contents", "agent", "a.txt"), {"method": "DELETE"}),
    ]
    for what, parts, kwargs in refused:
        code, text = await call(jp_fetch, agent_token, *parts, **kwargs)
        assert code == 403, f"{what}: {code} {text[:200]}"
    assert (entries(root), entries(home)) == before
    assert os.listdir(outside) == ["victim.txt"]
    assert (outside / "victim.txt").read_text() == "the person's file\n"

    # With a real checkpoint folder, the agent's checkpoints work.
    (agent / ".ipynb_checkpoints").unlink()
    code, text = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "a.txt",
        "checkpoints",
        method="POST",
        body="",
    )
    assert code == 201 and json.loads(text)["id"] == "checkpoint"
    assert (agent / ".ipynb_checkpoints" / "a-checkpoint.txt").read_text() == "agent's file\n"
    code, text = await call(
        jp_fetch, agent_token, "api", "contents", "agent", "a.txt", "checkpoints"
    )
    assert code == 200 and [c["id"] for c in json.loads(text)] == ["checkpoint"]


async def test_renames_and_copies_onto_or_through_a_symlink_are_refused(
    jp_fetch, jp_serverapp, agent_token, root, home
):
    agent = root / "agent"
    (root / "link.json").symlink_to(home / ".qiskit" / "qiskit-ibm.json")
    (agent / "link").symlink_to(home / ".jupyter")
    (agent / "l.json").symlink_to(home / ".qiskit" / "qiskit-ibm.json")
    startup = home / ".ipython" / "profile_default" / "startup"
    (agent / "dangling.py").symlink_to(startup / "00-renamed.py")
    # A folder whose checkpoint folder is a link: a rename into it moves the file's
    # checkpoint there (rename_all_checkpoints).
    (agent / "sub2").mkdir()
    (agent / "sub2" / ".ipynb_checkpoints").symlink_to(home / "outside")
    # A folder with a link inside: copying it (copytree) would copy the secret itself.
    (agent / "src").mkdir()
    (agent / "src" / "cred.json").symlink_to(home / ".qiskit" / "qiskit-ibm.json")
    code, _ = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "a.txt",
        "checkpoints",
        method="POST",
        body="",
    )
    assert code == 201
    before = entries(root), entries(home)

    def rename(new: str) -> dict[str, Any]:
        return {"method": "PATCH", "body": json.dumps({"path": new})}

    def copy(source: str) -> dict[str, Any]:
        return {"method": "POST", "body": json.dumps({"copy_from": source})}

    refused: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
        (
            "into a symlinked folder",
            ("api", "contents", "agent", "a.txt"),
            rename("agent/link/a.txt"),
        ),
        (
            "onto a dangling link",
            ("api", "contents", "agent", "a.txt"),
            rename("agent/dangling.py"),
        ),
        ("a symlink itself", ("api", "contents", "agent", "l.json"), rename("agent/mine.json")),
        (
            "into a folder whose checkpoints are a link",
            ("api", "contents", "agent", "a.txt"),
            rename("agent/sub2/a.txt"),
        ),
        ("copy a symlinked file", ("api", "contents", "agent"), copy("link.json")),
        (
            "copy a file through a symlinked folder",
            ("api", "contents", "agent"),
            copy("agent/link/existing_config.py"),
        ),
        ("copy into a symlinked folder", ("api", "contents", "agent", "link"), copy("agent/a.txt")),
        (
            "copy onto a dangling link",
            ("api", "contents", "agent", "dangling.py"),
            copy("agent/a.txt"),
        ),
        ("copy a folder holding a link", ("api", "contents", "agent"), copy("agent/src")),
    ]
    for what, parts, kwargs in refused:
        code, text = await call(jp_fetch, agent_token, *parts, **kwargs)
        assert code == 403, f"{what}: {code} {text[:200]}"
        assert "SECRET-IBM-TOKEN-42" not in text
    assert (entries(root), entries(home)) == before
    assert os.listdir(startup) == [] and os.listdir(home / "outside") == ["victim.txt"]

    # Between real entries, renames and copies work, checkpoint included.
    code, _ = await call(
        jp_fetch, agent_token, "api", "contents", "agent", "a.txt", **rename("agent/b.txt")
    )
    assert code == 200 and (agent / "b.txt").read_text() == "agent's file\n"
    assert (agent / ".ipynb_checkpoints" / "b-checkpoint.txt").is_file()
    code, text = await call(
        jp_fetch, agent_token, "api", "contents", "agent", **copy("agent/b.txt")
    )
    assert code == 201 and json.loads(text)["path"] == "agent/b-Copy1.txt"


def notebook_with_script(marker: str) -> dict[str, Any]:
    """A notebook whose code cell says it is trusted and carries a script output."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"print('{marker}')")
    cell.metadata["trusted"] = True
    cell.outputs = [
        nbformat.v4.new_output(
            "display_data", data={"application/javascript": JS, "text/plain": marker}
        )
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# " + marker), cell]
    return nb


def signed(jp_serverapp: Any, path: Path) -> bool:
    return bool(jp_serverapp.contents_manager.notary.check_signature(nbformat.read(path, 4)))


async def cells_trusted(jp_fetch: Any, *parts: str) -> list[bool]:
    """The code cells' trusted flags as the user's GET returns them."""
    model = json.loads((await jp_fetch("api", "contents", *parts)).body)
    return [c["metadata"]["trusted"] for c in model["content"]["cells"] if c["cell_type"] == "code"]


async def test_agents_never_get_a_notebook_trusted(jp_fetch, jp_serverapp, agent_token, root):
    def put_nb(content: Any) -> dict[str, Any]:
        return {
            "method": "PUT",
            "body": json.dumps({"type": "notebook", "format": "json", "content": content}),
        }

    # The agent's save of a notebook whose cell says trusted, with a script output.
    code, text = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "evil.ipynb",
        **put_nb(notebook_with_script("agent")),
    )
    assert code == 201, text
    assert await cells_trusted(jp_fetch, "agent", "evil.ipynb") == [False]
    assert signed(jp_serverapp, root / "agent" / "evil.ipynb") is False

    # It may not trust it outright either; the user may.
    code, _ = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        "evil.ipynb",
        "trust",
        method="POST",
        body="",
    )
    assert code == 403
    assert signed(jp_serverapp, root / "agent" / "evil.ipynb") is False

    # A notebook without a rich output passes the notary's check whatever its cells say, so a
    # save signs it: an agent's is unsigned again at once. And an output type nbformat 4 does
    # not have (which the notary deems safe and JupyterLab renders) is refused.
    plain = nbformat.v4.new_notebook()
    plain.cells = [nbformat.v4.new_code_cell("1 + 1")]
    code, _ = await call(
        jp_fetch, agent_token, "api", "contents", "agent", "plain.ipynb", **put_nb(plain)
    )
    assert code == 201 and signed(jp_serverapp, root / "agent" / "plain.ipynb") is False
    sneaky = nbformat.v4.new_notebook()
    sneaky.cells = [nbformat.v4.new_code_cell("x")]
    sneaky.cells[0].outputs = [
        {
            "output_type": "update_display_data",
            "data": {"application/javascript": JS},
            "metadata": {},
        }
    ]
    code, text = await call(
        jp_fetch, agent_token, "api", "contents", "agent", "sneaky.ipynb", **put_nb(sneaky)
    )
    assert code == 400 and "update_display_data" in text
    assert not (root / "agent" / "sneaky.ipynb").exists()
    old = json.loads(json.dumps(plain))
    old["nbformat"] = 3
    code, _ = await call(
        jp_fetch, agent_token, "api", "contents", "agent", "v3.ipynb", **put_nb(old)
    )
    assert code == 400 and not (root / "agent" / "v3.ipynb").exists()
    code, text = await call(
        jp_fetch,
        agent_token,
        "api",
        "contents",
        "agent",
        method="POST",
        body=json.dumps({"type": "notebook"}),
    )
    assert code == 201 and json.loads(text)["path"] == "agent/Untitled.ipynb"
    assert signed(jp_serverapp, root / "agent" / "Untitled.ipynb") is False

    # Control: the same kind of save by the user's own token is signed, and trust works.
    r = await jp_fetch(
        "api", "contents", "agent", "mine.ipynb", **put_nb(notebook_with_script("user"))
    )
    assert r.code == 201
    assert await cells_trusted(jp_fetch, "agent", "mine.ipynb") == [True]
    assert signed(jp_serverapp, root / "agent" / "mine.ipynb") is True
    r = await jp_fetch("api", "contents", "agent", "plain2.ipynb", **put_nb(plain))
    assert signed(jp_serverapp, root / "agent" / "plain2.ipynb") is True
    r = await jp_fetch("api", "contents", "agent", "evil.ipynb", "trust", method="POST", body="")
    assert r.code == 201 and signed(jp_serverapp, root / "agent" / "evil.ipynb") is True


class KeepAlive:
    """One HTTP/1.1 connection carrying several requests, as a reverse proxy's would."""

    def __init__(self, port: int, base_url: str) -> None:
        self.port, self.base = port, base_url

    async def __aenter__(self) -> KeepAlive:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.local = self.writer.get_extra_info("sockname")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.writer.close()

    async def request(
        self, method: str, path: str, token: str, body: Any = None
    ) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {self.base}{path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: token {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status = await asyncio.wait_for(self.reader.readline(), 120)
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers.get("transfer-encoding") != "chunked", headers
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        assert headers.get("connection", "").lower() != "close"
        assert self.writer.get_extra_info("sockname") == self.local  # the same connection
        return int(status.split()[1]), json.loads(payload) if payload else None


async def test_the_agent_reaches_pre_launch_and_save_hooks_and_never_the_next_request(
    jp_fetch, jp_ws_fetch, jp_serverapp, jp_http_port, jp_base_url, broker, tokens, root
):
    bot_id, bot = make_token(tokens, "bot")
    _, other = make_token(tokens, "other")
    user = jp_serverapp.identity_provider.token
    seen: list[Any] = []

    def spy(model: Any, path: str, contents_manager: Any, **_: Any) -> None:
        agent = current_agent()
        seen.append((path, None if agent is None else agent.token_id))

    jp_serverapp.contents_manager.register_pre_save_hook(spy)
    file = {"type": "file", "format": "text", "content": "x\n"}

    async with KeepAlive(jp_http_port, jp_base_url) as conn:
        assert (await conn.request("PUT", "api/contents/agent/k.txt", bot, file))[0] == 201
        assert (await conn.request("PUT", "api/contents/user.txt", user, file))[0] == 201
        code, agents_session = await conn.request(
            "POST",
            "api/sessions",
            bot,
            {
                "path": "agent/s.ipynb",
                "type": "notebook",
                "name": "s",
                "kernel": {"name": "qguard-agent"},
            },
        )
        assert code == 201, agents_session
        code, users_session = await conn.request(
            "POST",
            "api/sessions",
            user,
            {
                "path": "u.ipynb",
                "type": "notebook",
                "name": "u",
                "kernel": {"name": "qguard-agent"},
            },
        )
        assert code == 201, users_session
        code, agents_kernel = await conn.request(
            "POST", "api/kernels", bot, {"name": "qguard-agent"}
        )
        assert code == 201, agents_kernel
        code, users_kernel = await conn.request(
            "POST", "api/kernels", user, {"name": "qguard-agent"}
        )
        assert code == 201, users_kernel

    assert seen == [("agent/k.txt", bot_id), ("user.txt", None)]
    k_session, k_agent = agents_session["kernel"]["id"], agents_kernel["id"]
    u_session, u_kernel = users_session["kernel"]["id"], users_kernel["id"]
    # pre_launch saw the agent for its session's and its kernel's start, and no one for the
    # user's requests that followed each on the same connection.
    assert broker.kernel_starter(k_session) == bot_id
    assert broker.kernel_starter(k_agent) == bot_id
    assert broker.kernel_starter(u_session) is None
    assert broker.kernel_starter(u_kernel) is None
    assert broker.kernel_starter("no-such-kernel") is None

    # The agent drives its own kernels and session.
    for kid in (k_session, k_agent):
        assert (await call(jp_fetch, bot, "api", "kernels", kid))[0] == 200
    assert (await call(jp_fetch, bot, "api", "sessions", agents_session["id"]))[0] == 200
    ws = await jp_ws_fetch("api", "kernels", k_agent, "channels", headers=auth(bot))
    ws.close()

    # Not the user's (also a qguard kernel), nor another agent's.
    kernels_before = sorted(jp_serverapp.kernel_manager.list_kernel_ids())
    attempts = [
        (bot, u_kernel),
        (bot, u_session),
        (other, k_agent),
        (other, k_session),
    ]
    for token, kid in attempts:
        for parts, kwargs in [
            (("api", "kernels", kid), {}),
            (("api", "kernels", kid, "interrupt"), {"method": "POST", "body": "{}"}),
            (("api", "kernels", kid, "restart"), {"method": "POST", "body": "{}"}),
            (("api", "kernels", kid), {"method": "DELETE"}),
        ]:
            code, text = await call(jp_fetch, token, *parts, **kwargs)
            assert code == 403, f"{parts}: {code} {text[:200]}"
        with pytest.raises(HTTPClientError) as refused:
            await jp_ws_fetch("api", "kernels", kid, "channels", headers=auth(token))
        assert refused.value.code == 403
        code, _ = await call(
            jp_fetch,
            token,
            "api",
            "sessions",
            method="POST",
            body=json.dumps(
                {"path": "agent/t.ipynb", "type": "notebook", "name": "t", "kernel": {"id": kid}}
            ),
        )
        assert code == 403
    for token, sid in [(bot, users_session["id"]), (other, agents_session["id"])]:
        for kwargs in (
            {},
            {"method": "PATCH", "body": json.dumps({"path": "agent/renamed.ipynb"})},
            {"method": "DELETE"},
        ):
            code, _ = await call(jp_fetch, token, "api", "sessions", sid, **kwargs)
            assert code == 403, (sid, kwargs)
    assert sorted(jp_serverapp.kernel_manager.list_kernel_ids()) == kernels_before
    sessions = {s["id"]: s["path"] for s in json.loads((await jp_fetch("api", "sessions")).body)}
    assert sessions == {agents_session["id"]: "agent/s.ipynb", users_session["id"]: "u.ipynb"}
    # The user still drives all of them.
    for kid in (k_session, k_agent, u_session, u_kernel):
        assert (await jp_fetch("api", "kernels", kid)).code == 200


async def test_the_persons_read_of_a_fifo_an_agent_left_is_refused_not_hung(
    jp_fetch, jp_serverapp, root
):
    # Opened for reading, a FIFO blocks until someone writes to it: the contents route would
    # hang a worker thread, the files route the server's event loop.
    os.mkfifo(root / "agent" / "data.csv")
    (root / "agent" / "looks-normal.ipynb").symlink_to(root / "agent" / "data.csv")
    for parts in (
        ("api", "contents", "agent", "data.csv"),
        ("files", "agent", "data.csv"),
        ("api", "contents", "agent", "looks-normal.ipynb"),
    ):
        r = await asyncio.wait_for(jp_fetch(*parts, raise_error=False), 10)
        assert r.code == 403, parts
    # The folder still lists (jupyter_server leaves the FIFO out), a regular file still reads.
    r = await asyncio.wait_for(jp_fetch("api", "contents", "agent"), 10)
    assert "a.txt" in {e["name"] for e in json.loads(r.body)["content"]}
    r = await jp_fetch("api", "contents", "agent", "a.txt")
    assert json.loads(r.body)["content"] == "agent's file\n"
