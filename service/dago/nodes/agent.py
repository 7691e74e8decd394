"""The ``agent`` node kind: a model and tools in a loop.

Each turn is one model call (through the provider interface, text deltas streamed
as coalesced ``llm_delta`` events, like the ``llm`` node) with the agent's tools.
When the model ends its turn without calling a tool, its text is the node's result
``{text, model, provider, turns, tool_calls, turn_usage}`` (``turn_usage``: each turn's
tokens, cache reads and writes, and cost). When it calls tools, every call is
a ``tool_call`` event (id, tool, arguments), the calls of one turn run concurrently,
each result is a ``tool_result`` event (result, or error), and the results go back
to the model for the next turn. After ``max_turns`` turns (``DAGO_AGENT_MAX_TURNS``
when the node sets 0) that still end in tool calls, the node fails, not retryable.

Tool failures do not fail the node: an unknown tool name, arguments that do not
match the tool's schema, a tool error (an MCP error result, a refused HTTP address,
an exception) or a call running past ``tool_timeout`` (``DAGO_TOOL_TIMEOUT_S`` when
unset) go back to the model as an error tool result (``is_error``), so it can
recover. Cancelling the attempt cancels the model call and the tool calls at once.

Tools get the attempt's ``NodeContext`` with ``tool_call`` set to the call's
position (``t<turn>.<n>``): their ``idempotency_key`` is the attempt's key plus
that position. Tool names the model sees are the graph's names with characters
other than letters, digits, ``_`` and ``-`` replaced by ``_`` (``files/read`` →
``files_read``); events use the graph's names.

Usage and cost are summed over all turns and recorded like the ``llm`` node's (in
the attempt, the node, the graph, the result and a ``usage`` event); a failed
attempt records what its turns spent.

Approvals: a call of a tool matching ``approval_required_tools`` (names or glob
patterns) waits for a person before it runs. The node's attempt returns a wait
(``WaitRequest``: display ``{tool, arguments, id}``, decisions ``approve``, ``reject``,
``edit``, payload schema the tool's input schema, step the call's id) with the
conversation so far (messages, usage, turn and call counts, the turn's calls and the
decisions made for them: ``WaitRequest.saved``, read back by ``_saved``), which the ``wait``
function keeps in Redis with the node
(``schema.Node.SAVED_REF``); the node holds no slot and no work item. The start after a
decision reads the conversation and the decision, and goes on from there: the model is
not called again for the turns already done. The calls of one turn are decided one at a
time, in the order the model made them; once every call of the turn that needs approval
is decided, the turn's calls run together (``approve``: as proposed; ``edit``: with the
payload as arguments; ``reject``: not run, an error result carrying the comment goes to
the model). ``tool_call`` events are emitted when the model makes the calls, before any
wait.

Checked at submit: every tool name exists (``tool_problem``; ``<server>/*`` needs a
configured MCP server) and is listed once; ``max_turns`` is 0..1000; ``tool_timeout``
is positive and at most 30 days; ``agent.llm`` is a model (``check_model``) without an
``output_schema`` (an agent answers in text); each ``approval_required_tools`` pattern
matches at least one of the node's tools (``pattern_covers``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
from typing import Any

from dago.engine.fields import clip
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.outcome import NodeFailure, Throttled, Usage
from dago.engine.output_schema import validation_error
from dago.engine.topology import decision_ref, saved_ref
from dago.engine.waits import AGENT_DECISIONS, needs_approval, pattern_covers
from dago.llm.base import (
    ChatMessage,
    LlmRequest,
    LlmResponse,
    Provider,
    ToolCallRequest,
    ToolOutcome,
    ToolSpec,
)
from dago.nodes.base import NodeContext, NodeDeps, NodeHandler, NodeKind, NodeResult, Tool
from dago.nodes.llm import ModelCaller, check_model
from dago.nodes.tool import tool_problem
from dago.nodes.toolbox import Toolbox
from dago.nodes.wait import WaitRequest
from dago.observe.metrics import Metrics
from dago.observe.tracing import fail
from dago.store.schema import Decision
from dago.v1 import graph_pb2

log = logging.getLogger("dago.agent")

MAX_TURNS = 1000

RESULT_CHARS = 20_000
"""Longest tool result (as text) given back to the model; longer ones are cut."""
EVENT_CHARS = 8_000
"""Longest arguments or result recorded in an event (as JSON); longer ones are cut."""


def model_name(name: str) -> str:
    """A tool name as providers accept it (``^[A-Za-z0-9_-]{1,64}$``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "tool"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"


def _for_event(value: Any) -> Any:
    """``value`` as recorded in an event: as is when small, else its text, cut."""
    text = _text(value)
    return value if len(text) <= EVENT_CHARS else _cut(text, EVENT_CHARS)


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The checks at submit of the module doc; the model's templates."""
    spec = node.agent
    if spec.llm.HasField("output_schema"):
        ctx.add(
            "agent.llm.output_schema",
            "an agent answers in text: add an llm node with an output_schema after it",
        )
    servers = ctx.options.mcp_servers
    seen: set[str] = set()
    for j, name in enumerate(spec.tools):
        if name.endswith("/*"):
            problem = None
            if name[:-2] not in servers:
                problem = (
                    f'"{clip(name)}" names MCP server "{clip(name[:-2])}", which is not configured'
                )
        else:
            problem = tool_problem(name, ctx.options)
        if problem:
            ctx.add(f"agent.tools[{j}]", problem)
        elif name in seen:
            ctx.add(f"agent.tools[{j}]", f'"{clip(name)}" is listed twice')
        seen.add(name)
    for j, pattern in enumerate(spec.approval_required_tools):
        if not pattern:
            ctx.add(f"agent.approval_required_tools[{j}]", "is empty")
        elif not any(pattern_covers(pattern, t) for t in spec.tools):
            ctx.add(
                f"agent.approval_required_tools[{j}]",
                f'"{clip(pattern)}" matches none of the node\'s tools (agent.tools: '
                + (", ".join(clip(t) for t in spec.tools) or "none")
                + ")",
            )
    if not 0 <= spec.max_turns <= MAX_TURNS:
        ctx.add("agent.max_turns", f"must be between 0 and {MAX_TURNS} (0: server default)")
    if spec.HasField("tool_timeout"):
        ctx.checker.duration(spec.tool_timeout, f"{ctx.path}.agent.tool_timeout")
    # The schema is reported above, once.
    model = graph_pb2.LlmNode()
    model.CopyFrom(spec.llm)
    model.ClearField("output_schema")
    return KindParts(
        templates=check_model(model, ctx, "agent.llm"),
        waits=bool(spec.approval_required_tools),
    )


class AgentHandler(NodeHandler):
    """Runs ``agent`` nodes."""

    def __init__(
        self,
        model: ModelCaller,
        tools: Toolbox,
        default_max_turns: int,
        default_tool_timeout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._model = model
        self._tools = tools
        self._max_turns = default_max_turns
        self._tool_timeout = default_tool_timeout
        self._metrics = metrics

    @classmethod
    def build(cls, deps: NodeDeps) -> AgentHandler:
        """The handler of a worker: turns and tool timeout defaults from its settings."""
        s = deps.settings
        return cls(deps.model, deps.toolbox, s.agent_max_turns, s.tool_timeout_s, deps.metrics)

    async def warm(self) -> None:
        """Import the default provider's SDK (shared with the other kinds: imported once)."""
        await self._model.warm()

    async def close(self) -> None:
        """Stop the MCP sessions the tools started (the toolbox is shared with tool nodes;
        closing it twice is harmless)."""
        await self._tools.close()

    async def _turn(
        self,
        ctx: NodeContext,
        spec: graph_pb2.AgentNode,
        request: LlmRequest,
        messages: list[ChatMessage],
        provider: Provider,
        spent: Usage,
    ) -> tuple[LlmResponse, Usage]:
        """One model call of the loop. A model rate limit with no room throttles the attempt
        out (``Throttled``: the node is queued again, holding no slot) only before the
        attempt has spent anything; after its first turn the agent waits here instead:
        starting over would lose the record of the turns spent and buy them again."""
        while True:
            try:
                return await self._model.call(
                    ctx, spec.llm, dataclasses.replace(request, messages=messages), provider
                )
            except Throttled as t:
                if not spent.tokens:
                    raise
                await asyncio.sleep(t.wait_ms / 1000)

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Run the loop described in the module doc."""
        spec = ctx.node.proto.agent
        provider, model = await self._model.resolve(spec.llm)
        request = self._model.request(ctx, model, spec.llm, "agent.llm")
        tools = await self._tools.resolve(list(spec.tools), f"nodes[{ctx.node.index}].agent.tools")
        by_model: dict[str, Tool] = {}
        specs = []
        for t in tools:
            name = model_name(t.name)
            while name in by_model:
                name = name[:60] + f"_{len(by_model)}"
            by_model[name] = t
            specs.append(ToolSpec(name, t.description or t.name, dict(t.parameters)))
        request = dataclasses.replace(request, tools=tuple(specs))
        max_turns = spec.max_turns or self._max_turns
        timeout = self._tool_timeout
        if spec.HasField("tool_timeout"):
            timeout = spec.tool_timeout.seconds + spec.tool_timeout.nanos / 1e9
        approvals = list(spec.approval_required_tools)
        # The turns' tokens and cost, labelled with the last model that answered. Each call is
        # priced on its own: a price tier by prompt length applies per request.
        spent = Usage(provider=provider.name, model=model)
        calls_made = 0
        per_turn: list[dict[str, Any]] = []
        resp: LlmResponse | None = None
        first_turn = 1
        messages = list(request.messages)
        calls: tuple[ToolCallRequest, ...] = ()
        decided: dict[str, dict[str, Any]] = {}
        saved = _saved(ctx)
        if saved is not None:
            # Resumed after a decision: the conversation as it was kept, the turn's calls.
            messages = [_message_of(m) for m in saved["messages"]]
            spent = Usage(**saved["spent"])
            per_turn = list(saved["per_turn"])
            calls_made = int(saved["calls_made"])
            first_turn = int(saved["turn"])
            calls = tuple(
                ToolCallRequest(c["id"], c["name"], c["arguments"]) for c in saved["calls"]
            )
            decided = dict(saved["decided"])
            rec = _decision(ctx, saved["waiting"])
            if rec is not None:
                decided[saved["waiting"]] = rec
                if self._metrics is not None:
                    waited = int(rec.get(Decision.AT) or 0) - int(rec.get(Decision.SINCE) or 0)
                    self._metrics.wait_duration.labels("signal").observe(max(0.0, waited / 1000))
        for turn in range(first_turn, max_turns + 1):
            if saved is None:
                try:
                    resp, priced = await self._turn(ctx, spec, request, messages, provider, spent)
                except NodeFailure as f:
                    # The failed call's usage comes priced (ModelCaller.call).
                    if f.usage is not None:
                        f.usage = spent + f.usage
                    elif spent.tokens:
                        f.usage = spent
                    raise
                spent = spent + priced
                per_turn.append(_turn_usage(priced))
                if not resp.tool_calls:
                    value = {
                        "text": resp.text,
                        "model": spent.model,
                        "provider": provider.name,
                        "turns": turn,
                        "tool_calls": calls_made,
                        "turn_usage": per_turn,
                    }
                    return NodeResult(value, usage=spent)
                calls = resp.tool_calls
                calls_made += len(calls)
                # The turn goes back as the model wrote it: thinking blocks unchanged, with
                # their signatures (a model may refuse a conversation whose thinking was
                # altered).
                messages.append(ChatMessage("assistant", resp.text, tool_calls=calls, raw=resp.raw))
                decided = {}
                await self._announce(ctx, calls, by_model)
            saved = None
            ask = next(
                (
                    c
                    for c in calls
                    if c.id not in decided
                    and c.name in by_model
                    and needs_approval(approvals, by_model[c.name].name)
                ),
                None,
            )
            if ask is not None:
                kept = {
                    "i": ctx.iteration,
                    "turn": turn,
                    "messages": [_message_json(m) for m in messages],
                    "spent": dataclasses.asdict(spent),
                    "per_turn": per_turn,
                    "calls_made": calls_made,
                    "calls": [dataclasses.asdict(c) for c in calls],
                    "decided": decided,
                    "waiting": ask.id,
                }
                return NodeResult(None, wait=_approval(by_model[ask.name], ask, kept))
            outcomes = await self._run_tools(ctx, turn, calls, by_model, timeout, decided)
            messages.append(ChatMessage("user", "", tool_results=tuple(outcomes)))
        asked = ", ".join(sorted({c.name for c in calls}))
        failure = NodeFailure(
            graph_pb2.ERROR_CLASS_PERMANENT,
            f"the agent used all {max_turns} turns (agent.max_turns) and the model still asked "
            f"for tools ({asked}); raise max_turns or narrow the task",
            False,
        )
        failure.usage = spent
        raise failure

    async def _emit(self, ctx: NodeContext, events: list[tuple[str, str]]) -> None:
        try:
            await ctx.emit(events)
        except Exception as e:  # events are a record of progress: the loop goes on
            log.warning("could not record tool events: %s", e)

    async def _announce(
        self, ctx: NodeContext, calls: tuple[ToolCallRequest, ...], by_model: dict[str, Tool]
    ) -> None:
        """The ``tool_call`` events of a turn's calls (before any waits for approval)."""
        events = []
        for call in calls:
            tool = by_model.get(call.name)
            detail = {
                "id": call.id,
                "tool": tool.name if tool else call.name,
                "args": _for_event(call.arguments),
            }
            events.append(("tool_call", json.dumps(detail, ensure_ascii=False)))
        await self._emit(ctx, events)

    async def _run_tools(
        self,
        ctx: NodeContext,
        turn: int,
        calls: tuple[ToolCallRequest, ...],
        by_model: dict[str, Tool],
        limit_s: float,
        decided: dict[str, dict[str, Any]],
    ) -> list[ToolOutcome]:
        return list(
            await asyncio.gather(
                *(
                    self._run_tool(
                        ctx, f"t{turn}.{i}", call, by_model, limit_s, decided.get(call.id)
                    )
                    for i, call in enumerate(calls, 1)
                )
            )
        )

    async def _run_tool(
        self,
        ctx: NodeContext,
        position: str,
        call: ToolCallRequest,
        by_model: dict[str, Tool],
        limit_s: float,
        decision: dict[str, Any] | None = None,
    ) -> ToolOutcome:
        tool = by_model.get(call.name)
        name = tool.name if tool else call.name
        result: Any = None
        error = ""
        verdict = decision.get(Decision.DECISION) if decision else None
        if verdict == "edit":
            call = dataclasses.replace(call, arguments=decision[Decision.PAYLOAD])  # type: ignore[index]
        if verdict == "reject":
            assert decision is not None
            comment = decision.get(Decision.COMMENT) or "(no comment)"
            error = (
                f"the call was rejected by {decision.get(Decision.ACTOR) or 'a person'}: {comment}"
            )
        elif tool is None:
            error = f"no tool named {call.name!r}; available: {', '.join(sorted(by_model))}"
        else:
            error = _arguments_problem(tool, call.arguments)
        if not error and tool is not None:
            # A span per tool call (GenAI conventions), parent of what the tool does.
            attrs = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call.id,
            }
            with self._model.tracing.span(f"execute_tool {name}", attrs) as span:
                try:
                    async with asyncio.timeout(limit_s):
                        result = await tool.fn(
                            call.arguments, dataclasses.replace(ctx, tool_call=position)
                        )
                except TimeoutError:
                    error = f"the tool call timed out after {limit_s:g}s (agent.tool_timeout)"
                except NodeFailure as f:
                    error = f.message
                except Exception as e:  # a tool's bug: the model is told, the worker goes on
                    log.warning("tool %s failed: %s: %s", name, type(e).__name__, e)
                    error = f"{type(e).__name__}: {e}"
                if error:
                    fail(span, "tool_error", error)
        detail: dict[str, Any] = {"id": call.id, "tool": name}
        if error:
            detail["error"] = _cut(error, EVENT_CHARS)
        else:
            detail["result"] = _for_event(result)
        await self._emit(
            ctx, [("tool_result", json.dumps(detail, ensure_ascii=False, default=str))]
        )
        # Some APIs refuse an empty tool result: say that there was none.
        content = _cut(error if error else _text(result), RESULT_CHARS) or "(no output)"
        return ToolOutcome(call.id, call.name, content, is_error=bool(error))


def _saved(ctx: NodeContext) -> dict[str, Any] | None:
    """The conversation this iteration kept when it last waited for an approval, if any
    (read by the start: ``saved_ref``)."""
    found = ctx.scope["nodes"].get(saved_ref(ctx.node.id))
    kept = found.get("output") if isinstance(found, dict) else None
    if isinstance(kept, dict) and kept.get("i") == ctx.iteration:
        return kept
    return None


def _decision(ctx: NodeContext, call_id: str) -> dict[str, Any] | None:
    """The decision recorded for the approval of ``call_id`` in this iteration, if any."""
    found = ctx.scope["nodes"].get(decision_ref(ctx.node.id))
    rec = found.get("output") if isinstance(found, dict) else None
    if (
        isinstance(rec, dict)
        and rec.get(Decision.ITERATION) == ctx.iteration
        and rec.get(Decision.STEP) == call_id
    ):
        return {
            k: rec.get(k)
            for k in (
                Decision.DECISION,
                Decision.PAYLOAD,
                Decision.ACTOR,
                Decision.COMMENT,
                Decision.AT,
                Decision.SINCE,
            )
        }
    return None


def _approval(tool: Tool, call: ToolCallRequest, kept: dict[str, Any]) -> WaitRequest:
    """The wait for a person's decision on ``call`` (see the module doc)."""
    return WaitRequest(
        prompt=f"The agent wants to call the tool {tool.name}: approve, reject, or edit its "
        "arguments.",
        display={"tool": tool.name, "arguments": call.arguments, "id": call.id},
        decisions=list(AGENT_DECISIONS),
        payload_schema=json.dumps(dict(tool.parameters)) if tool.parameters else "",
        timeout_ms=0,
        timeout_decision="",
        step=call.id,
        saved=kept,
    )


def _message_json(m: ChatMessage) -> dict[str, Any]:
    """A conversation's message as kept in Redis while the agent waits."""
    return {
        "role": m.role,
        "content": m.content,
        "tool_calls": [dataclasses.asdict(c) for c in m.tool_calls],
        "tool_results": [dataclasses.asdict(r) for r in m.tool_results],
        "raw": list(m.raw),
    }


def _message_of(d: dict[str, Any]) -> ChatMessage:
    """A kept message back (``_message_json``)."""
    return ChatMessage(
        d["role"],
        d["content"],
        tool_calls=tuple(ToolCallRequest(**c) for c in d["tool_calls"]),
        tool_results=tuple(ToolOutcome(**r) for r in d["tool_results"]),
        raw=tuple(d["raw"]),
    )


def _turn_usage(u: Usage) -> dict[str, Any]:
    """One turn's tokens and cost, as the result lists them (cache reads and writes show
    whether the turn read the conversation's cached prefix)."""
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_creation_input_tokens,
        "cache_read_input_tokens": u.cache_read_input_tokens,
        "cost_usd": u.cost_usd,
    }


def _arguments_problem(tool: Tool, args: dict[str, Any]) -> str:
    schema = dict(tool.parameters)
    try:
        problem = validation_error(schema, args)
    except Exception:  # a tool schema jsonschema cannot use: the tool checks its arguments
        return ""
    return f"the arguments do not match the tool's schema: {problem}" if problem else ""


KIND = NodeKind("agent", check, AgentHandler.build)
