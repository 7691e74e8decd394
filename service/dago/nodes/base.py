"""What a worker runs for each node kind, and the contract between them.

A handler gets a ``NodeContext`` (the rendered input, the CEL scope, a way to
emit events) and returns a ``NodeResult`` or raises ``NodeFailure``. Handlers
never touch Redis: the worker applies their result in one fenced transition.

``NodeFailure`` and ``invalid`` (``dago.engine.outcome``) are importable from here too:
operator tools raise them next to the ``Tool`` and ``NodeContext`` they use.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dago.engine.cel import EvalError
from dago.engine.model import CompiledNode
from dago.engine.outcome import NodeFailure as NodeFailure
from dago.engine.outcome import Usage
from dago.engine.outcome import invalid as invalid
from dago.v1 import graph_pb2

Emit = Callable[[list[tuple[str, str]]], Awaitable[bool]]


@dataclass
class NodeContext:
    """Everything a handler may use to run one attempt."""

    graph_id: str
    node: CompiledNode
    attempt: int
    iteration: int
    input: Any
    scope: dict[str, Any]
    emit: Emit
    worker_id: str
    tool_call: str = ""
    """Inside an agent: the tool call's position in the attempt (``t<turn>.<n>``)."""

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of this attempt: tools use it to de-duplicate effects.

        A tool an agent calls gets the attempt's key plus ``/<tool_call>``, the call's
        position (turn and index), so two calls of one attempt do not share a key.
        """
        key = f"{self.graph_id}/{self.node.id}/{self.iteration}/{self.attempt}"
        return f"{key}/{self.tool_call}" if self.tool_call else key


@dataclass
class NodeResult:
    """A successful attempt: its result, usage and, for routers, the decision."""

    value: Any
    usage: Usage | None = None
    route: dict[str, Any] | None = None


class Handler(Protocol):
    """Runs one node kind."""

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Run one attempt."""
        ...


ToolFn = Callable[[Any, NodeContext], Awaitable[Any]]
InlineToolFn = Callable[[Any, NodeContext], Any]

Inline = Callable[[NodeContext], NodeResult]
"""A whole attempt run synchronously (see ``ToolHandler.inline``)."""


@dataclass(frozen=True)
class Tool:
    """A tool an operator registered (or a built-in one)."""

    name: str
    description: str
    fn: ToolFn
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    inline: InlineToolFn | None = None
    """The same tool as a plain function, for tools that never wait (no I/O, no sleep, quick):
    a worker calls it in place of awaiting ``fn``, without a task of its own. Nothing can
    interrupt it (no timeout or cancellation takes effect while it runs), exactly as nothing
    interrupts an ``fn`` that never awaits."""


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


class ToolSource(Protocol):
    """Where a worker finds a tool by the name a graph uses."""

    async def get(self, name: str) -> Tool | None:
        """The tool, or None when no such tool exists; raises NodeFailure when the tool
        exists but cannot be reached (an MCP server that does not start)."""
        ...


class StaticTools:
    """A fixed set of tools."""

    def __init__(self, tools: Mapping[str, Tool]) -> None:
        self._tools = tools

    async def get(self, name: str) -> Tool | None:
        """The tool of that name, if any."""
        return self._tools.get(name)

    def local(self, name: str) -> Tool | None:
        """``get`` without waiting."""
        return self._tools.get(name)


class ToolHandler:
    """Calls the tool a ``tool`` node names with the node's rendered input."""

    def __init__(self, tools: ToolSource | Mapping[str, Tool]) -> None:
        self._tools = StaticTools(tools) if isinstance(tools, Mapping) else tools

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
        local = getattr(self._tools, "local", None)
        tool = local(node.proto.tool.name) if local is not None else None
        fn = tool.inline if tool is not None else None
        if fn is None:
            return None
        return lambda ctx: NodeResult(fn(ctx.input, ctx))


ChooseRoute = Callable[[NodeContext], Awaitable[NodeResult]]
"""Asks a model to choose a route (``dago.llm.router``); returns a result with ``route`` set."""


class RouterHandler:
    """Chooses a route.

    ``deterministic``: the first route whose CEL condition holds, else the default route.
    ``hybrid``: the same conditions first; when none holds, the model chooses.
    ``llm``: the model chooses among the routes (and the default route) from their names
    and descriptions.
    """

    def __init__(self, choose: ChooseRoute | None = None) -> None:
        self._choose = choose

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Evaluate the routes in order over the scope plus ``input``, or ask the model."""
        mode = ctx.node.proto.router.mode
        model_driven = (graph_pb2.ROUTER_MODE_LLM, graph_pb2.ROUTER_MODE_HYBRID)
        if mode == graph_pb2.ROUTER_MODE_LLM:
            return await self._ask(ctx)
        data = {**ctx.scope, "input": ctx.input}
        for name, expr in ctx.node.routes:
            if expr is None:
                continue
            try:
                if expr.evaluate_bool(data):
                    reason = f"condition `{expr.source}` holds"
                    return NodeResult({"route": name, "reason": reason}, route=_route(name, reason))
            except EvalError as e:
                raise invalid(f"route {name!r}: {e}") from None
        if mode in model_driven:
            return await self._ask(ctx)
        default = ctx.node.proto.router.default_route
        if default:
            reason = "no route condition holds; default route"
            return NodeResult({"route": default, "reason": reason}, route=_route(default, reason))
        raise invalid("no route condition holds and the router has no default_route")

    async def _ask(self, ctx: NodeContext) -> NodeResult:
        if self._choose is None:
            raise invalid("this worker cannot run model-driven routers")
        return await self._choose(ctx)


def _route(name: str, reason: str) -> dict[str, Any]:
    return {"route": name, "reason": reason, "confidence": 1.0}


def default_handlers(tools: Mapping[str, Tool]) -> dict[str, Handler]:
    """The handler of every node kind this build runs."""
    return {"tool": ToolHandler(tools), "router": RouterHandler()}
