"""The ``tool`` node kind: calls the tool the node names with the node's rendered input.

At submit the name must be a tool this deployment knows (operator, built-in or
``http``) or ``<server>/<tool>`` of a configured MCP server (whose tools are checked
when the node runs, so the API never starts an MCP server). A tool with an ``inline``
form (``echo``) runs without a task of its own.
"""

from __future__ import annotations

from collections.abc import Collection

from dago.engine.fields import clip
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.model import CompiledNode, CompileOptions
from dago.engine.outcome import invalid
from dago.nodes.base import Inline, NodeContext, NodeHandler, NodeKind, NodeResult
from dago.nodes.mcp import split_name
from dago.nodes.toolbox import Toolbox
from dago.v1 import graph_pb2


def tool_problem(name: str, options: CompileOptions) -> str | None:
    """Why a graph may not name the tool ``name``, or None (tool nodes and agents)."""
    if name in options.tools:
        return None
    parts = split_name(name)
    if parts is not None:
        if parts[0] in options.mcp_servers:
            return None
        return (
            f'"{clip(name)}" names MCP server "{parts[0]}", which is not configured; configured: '
            + _names(options.mcp_servers, "none (DAGO_MCP_SERVERS)")
        )
    return f'no tool named "{clip(name)}" is registered; available: ' + _names(options.tools, "")


def _names(names: Collection[str], none: str) -> str:
    return ", ".join(sorted(names)) or none


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The tool must exist (see the module doc). A node naming a tool with an inline form
    (``CompileOptions.inline_tools``) is inline."""
    problem = tool_problem(node.tool.name, ctx.options)
    if problem:
        ctx.add("tool.name", problem)
    return KindParts(inline=node.tool.name in ctx.options.inline_tools)


class ToolHandler(NodeHandler):
    """Calls the tool a ``tool`` node names with the node's rendered input."""

    def __init__(self, tools: Toolbox) -> None:
        self._tools = tools

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Run the tool; its return value is the node's result."""
        name = ctx.node.proto.tool.name
        tool = await self._tools.get(name)
        if tool is None:
            raise invalid(f'no tool named "{name}" is registered on this worker')
        return NodeResult(await tool.fn(ctx.input, ctx))

    def inline(self, node: CompiledNode) -> Inline | None:
        """How to run ``node`` without awaiting, when its tool has an ``inline`` form and is
        known without waiting (not an MCP tool); None otherwise (then ``run`` runs it)."""
        tool = self._tools.local(node.proto.tool.name)
        fn = tool.inline if tool is not None else None
        if fn is None:
            return None
        return lambda ctx: NodeResult(fn(ctx.input, ctx))

    async def close(self) -> None:
        """Stop the MCP sessions tool nodes started (the toolbox is shared with agents;
        closing it twice is harmless)."""
        await self._tools.close()


KIND = NodeKind("tool", check, lambda deps: ToolHandler(deps.toolbox))
