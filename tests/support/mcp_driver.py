"""Drives a real MCP server over stdio with the real `mcp` client, as a desktop agent would,
with a script instead of a model. Runs in the MCP venv (tests/mcp/requirements.txt), not in
the project's: `python mcp_driver.py SCRIPT.json` prints one JSON object on stdout.

SCRIPT: {"command": ..., "args": [...], "env": {...}, "calls": [[tool, {arguments}], ...],
"repeat": [tool, {arguments}, N] (optional, for the benchmark)}. Each call's answer: the tool,
whether it is an error, its text parts and its duration in seconds.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CALL_TIMEOUT = 240.0


async def call(session: ClientSession, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = await asyncio.wait_for(session.call_tool(tool, arguments), CALL_TIMEOUT)
    except Exception as exc:  # the answer says what went wrong; the test decides
        return {"tool": tool, "error": f"{type(exc).__name__}: {exc}", "texts": []}
    is_error = getattr(result, "is_error", getattr(result, "isError", None))
    return {
        "tool": tool,
        "is_error": bool(is_error),
        "texts": [getattr(part, "text", "") for part in result.content],
        "seconds": time.perf_counter() - started,
    }


async def main(script: dict[str, Any]) -> dict[str, Any]:
    params = StdioServerParameters(
        command=script["command"], args=script.get("args", []), env=script["env"]
    )
    out: dict[str, Any] = {"calls": []}
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        out["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
        for tool, arguments in script.get("calls", []):
            out["calls"].append(await call(session, tool, arguments))
        if script.get("repeat"):
            tool, arguments, n = script["repeat"]
            out["repeat"] = [await call(session, tool, arguments) for _ in range(int(n))]
    return out


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(asyncio.run(main(spec))))
