"""The ``router`` node kind: chooses which outgoing edges are taken.

``deterministic``: the first route whose CEL condition holds, else the default route.
``hybrid``: the same conditions first; when none holds, the model chooses.
``llm``: the model chooses among the routes (and the default route) from their names
and descriptions.

Model-driven routing: the model gets the router's prompt (``router.llm.prompt``, a
template; when it is empty, the router's rendered ``inputs`` as JSON) followed by the
list of routes with their descriptions, and must answer with structured output
``{route, confidence, reason}`` whose ``route`` is one of the route names (or the
default route, offered as "none of the others"). The decision is the node's result, its
``router_decision`` event and the node status's ``route``; the call's usage is the
attempt's usage. The offline provider picks the first route with confidence 0 (its rule
for enums and numbers).

Checked at submit: at least one route; route names are unique, 1-64 letters, digits or
``_ . : -``; deterministic routes have a condition and ``llm`` ones none; every edge
leaving the router is labelled with a route name (or the default route); a model-driven
router's ``router.llm`` (``check_model``, no prompt needed, no output schema).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from dago.engine.cel import EvalError, Expression, Scope
from dago.engine.fields import quote
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.outcome import invalid
from dago.llm.base import ChatMessage
from dago.nodes.base import NodeContext, NodeHandler, NodeKind, NodeResult
from dago.nodes.llm import ModelCaller, check_model
from dago.v1 import graph_pb2

ROUTE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
"""Route names (and ``default_route``), always ``fullmatch``ed: ``match`` with ``$`` took a
trailing newline."""
MODEL_DRIVEN = (graph_pb2.ROUTER_MODE_LLM, graph_pb2.ROUTER_MODE_HYBRID)

SYSTEM = (
    "You route requests in a workflow. Choose the single best route for the request, "
    "say how confident you are (0 to 1) and give a one-sentence reason."
)


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The checks at submit of the module doc; the routes and the model's templates."""
    r = node.router
    if not r.routes:
        ctx.add("router.routes", "a router needs at least one route")
    routes: list[tuple[str, Expression | None]] = []
    names: set[str] = set()
    for j, route in enumerate(r.routes):
        at = f"router.routes[{j}]"
        if not ROUTE_NAME.fullmatch(route.name):
            ctx.add(f"{at}.name", "use 1-64 letters, digits, or _ . : -")
        elif route.name in names:
            ctx.add(f"{at}.name", f'duplicate route name "{route.name}"')
        names.add(route.name)
        expr = None
        if route.condition:
            expr = ctx.compile(route.condition, Scope.ROUTE, f"{at}.condition")
        elif r.mode in (graph_pb2.ROUTER_MODE_UNSPECIFIED, graph_pb2.ROUTER_MODE_DETERMINISTIC):
            ctx.add(f"{at}.condition", "a deterministic route needs a CEL condition")
        if route.condition and r.mode == graph_pb2.ROUTER_MODE_LLM:
            ctx.add(
                f"{at}.condition",
                "the llm mode does not evaluate conditions: use ROUTER_MODE_HYBRID to try "
                "them before the model",
            )
        routes.append((route.name, expr))
    if r.default_route:
        if not ROUTE_NAME.fullmatch(r.default_route):
            ctx.add("router.default_route", "use 1-64 letters, digits, or _ . : -")
        names.add(r.default_route)
    known = sorted(names)
    shown = f"{known[:20]}" + (f" (and {len(known) - 20} more)" if len(known) > 20 else "")
    for oe in ctx.out_edges:
        if oe.label not in names:
            ctx.checker.add(
                f"{ctx.root}.edges[{oe.index}].label",
                f'edges leaving router "{node.id}" are taken by route name; {quote(oe.label)} '
                f"is not one of {shown}",
            )
    templates = {}
    if r.mode in MODEL_DRIVEN:
        templates = check_model(r.llm, ctx, "router.llm", router=True)
    return KindParts(templates=templates, routes=routes)


class RouterHandler(NodeHandler):
    """Runs ``router`` nodes (see the module doc)."""

    def __init__(self, model: ModelCaller) -> None:
        self._model = model

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Evaluate the routes in order over the scope plus ``input``, or ask the model."""
        mode = ctx.node.proto.router.mode
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
        if mode in MODEL_DRIVEN:
            return await self._ask(ctx)
        default = ctx.node.proto.router.default_route
        if default:
            reason = "no route condition holds; default route"
            return NodeResult({"route": default, "reason": reason}, route=_route(default, reason))
        raise invalid("no route condition holds and the router has no default_route")

    async def warm(self) -> None:
        """Import the default provider's SDK (shared with the other kinds: imported once)."""
        await self._model.warm()

    async def _ask(self, ctx: NodeContext) -> NodeResult:
        """The model's choice; the result is ``{route, reason, confidence}``."""
        router = ctx.node.proto.router
        spec = router.llm
        names = [r.name for r in router.routes]
        lines = [f"- {r.name}: {r.description or r.name}" for r in router.routes]
        if router.default_route and router.default_route not in names:
            names.append(router.default_route)
            lines.append(f"- {router.default_route}: none of the routes above fits")
        provider, model = await self._model.resolve(spec)
        req = self._model.request(ctx, model, spec, "router.llm")
        question = req.messages[-1].content if req.messages else ""
        if not question.strip():
            question = json.dumps(ctx.input, sort_keys=True, ensure_ascii=False)
        prompt = f"{question}\n\nRoutes:\n" + "\n".join(lines)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                "route": {"type": "string", "enum": names},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                "reason": {"type": "string"},
            },
            "required": ["route", "confidence", "reason"],
        }
        req = replace(
            req,
            messages=[*req.messages[:-1], ChatMessage("user", prompt)],
            system=req.system or SYSTEM,
            output_schema=schema,
        )
        resp, usage = await self._model.call(ctx, spec, req, provider)
        obj = resp.object or {}
        decision = {
            "route": str(obj.get("route", "")),
            "reason": f"{provider.name} ({resp.model}): {obj.get('reason', '')}",
            "confidence": float(obj.get("confidence", 0.0)),
        }
        return NodeResult(dict(decision), usage=usage, route=decision)


def _route(name: str, reason: str) -> dict[str, Any]:
    return {"route": name, "reason": reason, "confidence": 1.0}


KIND = NodeKind("router", check, lambda deps: RouterHandler(deps.model))
