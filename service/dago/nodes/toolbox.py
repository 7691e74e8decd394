"""Every tool a graph may name, and only those: a graph names tools, never code.

A worker's ``Toolbox`` holds:

- operator tools: Python callables with a JSON Schema for their arguments, from the
  modules in ``DAGO_TOOL_MODULES`` (their ``dago_tools()``) and the ``dago.tools``
  entry point group, plus the built-in ``echo`` and ``sleep``;
- ``http``: one HTTP request through the HTTP node's safe fetch (private, loopback,
  link-local and metadata addresses refused on the resolved IP unless allowed in
  ``DAGO_HTTP_ALLOW``; response size cap; no redirects followed);
- ``<server>/<tool>``: tools of the MCP servers in ``DAGO_MCP_SERVERS``
  (``dago.nodes.mcp``); ``<server>/*`` in an agent's tools means all of them.

``known_names`` is what graphs' tool names are checked against at SubmitGraph (the
tool kind's ``tool_problem``, through ``CompileOptions``): the operator and built-in
tool names, and the configured MCP server names (an MCP tool's own name is checked
when the node runs, so the API never starts an MCP server).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dago.config import Settings, parse_mcp_servers
from dago.engine.outcome import invalid
from dago.nodes.base import NodeContext, Tool
from dago.nodes.http import SafeHttp
from dago.nodes.mcp import McpServers, split_name


async def _echo(args: Any, ctx: NodeContext) -> Any:
    return args


def _echo_now(args: Any, ctx: NodeContext) -> Any:
    return args


async def _sleep(args: Any, ctx: NodeContext) -> Any:
    seconds = args.get("seconds", 1) if isinstance(args, dict) else args
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        raise invalid(f"sleep needs a non-negative number of seconds, got {seconds!r}")
    await asyncio.sleep(float(seconds))
    return {"slept": seconds}


BUILTIN_TOOLS = (
    Tool("echo", "Returns its arguments unchanged.", _echo, inline=_echo_now),
    Tool(
        "sleep",
        "Waits `seconds` (honours cancellation), then returns {slept: seconds}.",
        _sleep,
        {"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0}}},
    ),
)


ENTRY_POINT_GROUP = "dago.tools"
"""Installed packages may offer operator tools under this entry point group: each entry
point is a ``Tool`` or a function returning ``Tool`` objects (like ``dago_tools()``)."""


def load_tools(modules: str, entry_points: bool = True) -> dict[str, Tool]:
    """Built-in tools, those of the ``dago.tools`` entry points, and those of each module's
    ``dago_tools()`` (comma-separated names); a later one replaces an earlier one's name."""
    tools = {t.name: t for t in BUILTIN_TOOLS}
    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            loaded = ep.load()
            provided: Iterable[Tool] = [loaded] if isinstance(loaded, Tool) else loaded()
            for tool in provided:
                tools[tool.name] = tool
    for name in filter(None, (m.strip() for m in modules.split(","))):
        module = importlib.import_module(name)
        for tool in module.dago_tools():
            tools[tool.name] = tool
    return tools


HTTP_TOOL = "http"
_DROPPED_HEADERS = frozenset({"set-cookie", "set-cookie2", "authorization", "proxy-authenticate"})

HTTP_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "url": {"type": "string", "format": "uri", "description": "Absolute http(s) URL."},
        "method": {
            "type": "string",
            "enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
            "description": "HTTP method (default GET).",
        },
        "headers": {
            "type": "object",
            "additionalProperties": {"type": "string"},
            "description": "Request headers.",
        },
        "body": {"description": "Request body: JSON for objects and arrays, else text."},
    },
    "required": ["url"],
}


def http_tool(http: SafeHttp, timeout_s: float) -> Tool:
    """The built-in ``http`` tool: ``{url, method?, headers?, body?}`` →
    ``{status, headers, body}`` (cookies and auth headers of the response left out)."""

    async def fetch(args: Any, ctx: NodeContext) -> Any:
        if not isinstance(args, dict) or not isinstance(args.get("url"), str):
            raise invalid('the http tool needs {"url": "http(s)://..."}')
        headers = args.get("headers") or {}
        if not isinstance(headers, dict):
            raise invalid("http tool: headers must be an object of strings")
        headers = {str(k): str(v) for k, v in headers.items()}
        # Lets the target de-duplicate a call redelivered to another worker.
        headers.setdefault("Idempotency-Key", ctx.idempotency_key)
        method = str(args.get("method") or "GET")
        result = await http.fetch(method, args["url"], headers, args.get("body"), timeout_s)
        result["headers"] = {
            k: v for k, v in result["headers"].items() if k not in _DROPPED_HEADERS
        }
        return result

    return Tool(
        HTTP_TOOL,
        "Makes one HTTP request and returns {status, headers, body} (JSON bodies parsed). "
        "Private and loopback addresses are refused unless the operator allows them.",
        fetch,
        HTTP_PARAMETERS,
    )


@dataclass(frozen=True)
class KnownTools:
    """What SubmitGraph checks tool names against (cheap: no MCP server is started)."""

    tools: frozenset[str]
    mcp_servers: frozenset[str]
    inline: frozenset[str] = frozenset()
    """The tools with an inline form (``Tool.inline``), which workers run inline."""


def known_names(settings: Settings) -> KnownTools:
    """The tool names graphs may use on this deployment."""
    loaded = load_tools(settings.tool_modules)
    names = set(loaded) | {HTTP_TOOL}
    inline = frozenset(n for n, t in loaded.items() if t.inline is not None)
    mcp = frozenset(parse_mcp_servers(settings.mcp_servers))
    return KnownTools(frozenset(names), mcp, inline)


class Toolbox:
    """The tools of one worker process (see the module doc)."""

    def __init__(self, tools: Mapping[str, Tool], mcp: McpServers) -> None:
        self._tools = dict(tools)
        self.mcp = mcp

    @classmethod
    def from_settings(cls, settings: Settings, http: SafeHttp) -> Toolbox:
        """Operator and built-in tools, the http tool and the configured MCP servers."""
        tools = load_tools(settings.tool_modules)
        tools[HTTP_TOOL] = http_tool(http, settings.tool_timeout_s)
        return cls(tools, McpServers(parse_mcp_servers(settings.mcp_servers)))

    async def get(self, name: str) -> Tool | None:
        """The tool a graph names (an MCP server is started on its first use)."""
        tool = self._tools.get(name)
        if tool is not None:
            return tool
        return await self.mcp.tool(name)

    def local(self, name: str) -> Tool | None:
        """An operator, built-in or http tool (never an MCP tool), without waiting."""
        return self._tools.get(name)

    async def resolve(self, names: Sequence[str], field: str) -> list[Tool]:
        """The tools of an agent, ``<server>/*`` expanded; NodeFailure for an unknown one
        (``field`` is where the names are, for the message)."""
        out: dict[str, Tool] = {}
        for j, name in enumerate(names):
            parts = split_name(name)
            if parts is not None and parts[1] == "*" and parts[0] in self.mcp.configs:
                for t in await self.mcp.tools(parts[0]):
                    out.setdefault(t.name, t)
                continue
            tool = await self.get(name)
            if tool is None:
                raise invalid(f'{field}[{j}]: no tool named "{name}" on this worker')
            out.setdefault(tool.name, tool)
        return list(out.values())

    async def close(self) -> None:
        """Stop the MCP sessions."""
        await self.mcp.close()
