"""A tiny stdio MCP server for the agent tests, built with the ``mcp`` SDK's MCPServer
(FastMCP in mcp 1.x). Run as ``python tests/mcp_server.py``; the tests configure it in
DAGO_MCP_SERVERS as ``{"kb": {"command": [python, this file]}}``."""

from __future__ import annotations

import os

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
def pid() -> int:
    """The server's process id (tests check that sessions are reused)."""
    return os.getpid()


if __name__ == "__main__":
    app.run()
