"""No token in the server's log (log_redaction.py): a real server, a client hammering refused
endpoints with `?token=` as a retrying MCP client did (10,856 warning lines, each with the
agent's token in clear), then the whole log scanned for every token the client used."""

from __future__ import annotations

import re

from support.agent_tokens import make_agent_token
from support.jupyter_proc import ServerProcess
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from jupyter_qguard.log_redaction import redact


async def test_no_token_reaches_the_server_log(tmp_path):
    server = ServerProcess(tmp_path)
    agent = make_agent_token(server.state, "bot")
    wrong = "notatoken" + "7" * 40
    server.start()
    client = AsyncHTTPClient()

    async def status(path: str, method: str = "GET", headers: dict | None = None) -> int:
        r = await client.fetch(
            HTTPRequest(
                server.url + path,
                method=method,
                headers=headers,
                body=b"{}" if method == "POST" else None,
            ),
            raise_error=False,
        )
        return r.code

    try:
        codes = []
        for _ in range(20):
            codes += [
                await status(f"/api/terminals?token={agent}"),
                await status(f"/qguard/api/jobs/{'0' * 32}/approve?token={agent}", "POST"),
                await status(f"/api/contents?token={wrong}"),
                await status(f"/api/no-such-route?token={server.token}"),
                await status("/api/terminals", headers={"Authorization": f"token {agent}"}),
            ]
        assert set(codes[:5]) == {403, 404}, codes[:5]
        assert codes[:5] == [403, 403, 403, 404, 403]
    finally:
        server.stop()
    log = server.log_path.read_text()
    # The refusals were logged (the test is not passing on an empty log) ...
    # tornado's warning for a refused request (the line that carried the token):
    refused = r"403 GET /api/terminals\?token=\[secret\] \(127\.0\.0\.1\): agent bot may use"
    assert len(re.findall(refused, log)) == 20
    # jupyter_server's access log (which scrubbed its URIs already):
    assert len(re.findall(r"404 GET /api/no-such-route\?token=\[secret\] \(", log)) == 20
    assert "/?token=[secret]" in log  # the startup banner, with its URL
    # ... and no token, in any line: the agent's, a wrong one, the person's (whose startup
    # banner with `?token=` is redacted too).
    for secret in (agent, agent.removeprefix("qga_"), wrong, server.token):
        assert secret not in log
    assert re.findall(r"qga_(?!\[secret\])", log) == []


def test_redact_keeps_the_line_readable():
    assert redact("403 GET /api/terminals?token=qga_Ab-1_x (127.0.0.1) 1.20ms") == (
        "403 GET /api/terminals?token=[secret] (127.0.0.1) 1.20ms"
    )
    assert redact("{'Authorization': 'token abc123', 'Host': 'h'}") == (
        "{'Authorization': 'token [secret]', 'Host': 'h'}"
    )
    assert redact("Authorization: Bearer e.y.J") == "Authorization: Bearer [secret]"
    assert redact("minted qga_ZZZ for bot") == "minted qga_[secret] for bot"
    assert redact("http://h/lab?a=1&_xsrf=2|x&access_token=t") == (
        "http://h/lab?a=1&_xsrf=[secret]&access_token=[secret]"
    )
    # What only looks like a parameter outside a query string stays.
    assert redact("job 3 state=pending code=2 key=value") == "job 3 state=pending code=2 key=value"
    assert redact("JUPYTER_TOKEN=abc, then") == "JUPYTER_TOKEN=[secret], then"
