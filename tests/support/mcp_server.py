"""A tiny MCP server for the agent tests, built with the ``mcp`` SDK's MCPServer (FastMCP
in mcp 1.x). ``python tests/support/mcp_server.py`` serves stdio (the tests configure it in
DAGO_MCP_SERVERS as ``{"kb": {"command": [python, this file]}}``);
``python tests/support/mcp_server.py --http PORT`` serves streamable HTTP on
``http://127.0.0.1:PORT/mcp``."""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer

app = MCPServer("dago-test-kb")

CAPITALS = {"france": "Paris", "japan": "Tokyo", "kenya": "Nairobi"}


@app.tool()
def capital(country: str) -> str:
    """The capital city of a country."""
    found = CAPITALS.get(country.strip().lower())
    if found is None:
        raise ValueError(f"unknown country {country!r}")
    return found


@app.tool()
def multiply(a: int, b: int) -> int:
    """Multiplies two integers."""
    return a * b


@app.tool()
async def wait(seconds: float) -> float:
    """Waits, then returns the seconds waited."""
    await asyncio.sleep(seconds)
    return seconds


@app.tool()
def pid() -> int:
    """The server's process id (tests check that sessions are reused)."""
    return os.getpid()


def crash() -> str:
    """Ends the server process at once (tests check that the session is started again)."""
    os._exit(3)


if os.environ.get("MCP_TEST_CRASH") == "1":  # the env the operator configured reaches us
    app.tool()(crash)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
