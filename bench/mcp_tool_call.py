"""A tool call of the real jupyter-mcp-server (over stdio, driven by the real `mcp` client):
`execute_code` of `print(1)` with an agent token, in the qguard kernel it is given, against the
same call with the person's token, in the python3 kernel it asks for (issue 19 target: median
of 20, ratio ≤ 1.3). One server for both; each side's first call is left out (it waits for the
kernel jupyter-mcp-server starts)."""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from common import compare, fig, record
from support import mcp_client
from support.agent_tokens import make_agent_token
from support.jupyter_proc import ServerProcess

CALLS = 20
CALL = ("execute_code", {"code": "print(1)"})


def medians(server: ServerProcess, token: str) -> tuple[float, list[float]]:
    out = mcp_client.run(server.url, token, [CALL], repeat=(*CALL, CALLS))
    answers = out["repeat"]
    bad = [a for a in answers if a.get("error") or a.get("is_error") or "1" not in a["texts"][0]]
    if bad:
        raise RuntimeError(f"execute_code failed: {bad[:2]}")
    seconds = [a["seconds"] for a in answers]
    return statistics.median(seconds), seconds


def main() -> None:
    mcp_client.mcp_venv()
    with tempfile.TemporaryDirectory(prefix="qg-bench-mcp-") as tmp:
        server = ServerProcess(Path(tmp))
        token = make_agent_token(server.state, "bench-mcp")
        server.start()
        try:
            plain, _ = medians(server, server.token)
            guarded, _ = medians(server, token)
        finally:
            server.stop()
    record(
        "mcp_tool_call",
        f"jupyter-mcp-server's execute_code(print(1)) over stdio, median of {CALLS}: with the "
        "person's token in a python3 kernel (plain) and with an agent token in the qguard "
        "kernel it gets (qguard)",
        {
            **compare(plain * 1000, guarded * 1000, "ms", target_ratio=1.3, digits=1),
            "calls": fig(CALLS, "calls"),
        },
    )


if __name__ == "__main__":
    main()
