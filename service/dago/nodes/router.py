"""Model-driven routing (router modes ``llm`` and ``hybrid``).

The model gets the router's prompt (``router.llm.prompt``, a template; when it is
empty, the router's rendered ``inputs`` as JSON) followed by the list of routes
with their descriptions, and must answer with structured output
``{route, confidence, reason}`` whose ``route`` is one of the route names (or the
default route, offered as "none of the others"). The decision is the node's
result, its ``router_decision`` event and the node status's ``route``; the call's
usage is the attempt's usage. The offline provider picks the first route with
confidence 0 (its rule for enums and numbers).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from dago.llm.base import ChatMessage
from dago.nodes.base import NodeContext, NodeResult
from dago.nodes.llm import LlmHandler

SYSTEM = (
    "You route requests in a workflow. Choose the single best route for the request, "
    "say how confident you are (0 to 1) and give a one-sentence reason."
)


class LlmRouteChooser:
    """Asks the router's model for a route."""

    def __init__(self, llm: LlmHandler) -> None:
        self._llm = llm

    async def __call__(self, ctx: NodeContext) -> NodeResult:
        """Choose; the result is ``{route, reason, confidence}``."""
        router = ctx.node.proto.router
        spec = router.llm
        names = [r.name for r in router.routes]
        lines = [f"- {r.name}: {r.description or r.name}" for r in router.routes]
        if router.default_route and router.default_route not in names:
            names.append(router.default_route)
            lines.append(f"- {router.default_route}: none of the routes above fits")
        provider, model = await self._llm.resolve(spec)
        req = self._llm.request(ctx, model, spec, "router.llm")
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
        resp, usage = await self._llm.call(ctx, spec, req, provider)
        obj = resp.object or {}
        decision = {
            "route": str(obj.get("route", "")),
            "reason": f"{provider.name} ({resp.model}): {obj.get('reason', '')}",
            "confidence": float(obj.get("confidence", 0.0)),
        }
        return NodeResult(dict(decision), usage=usage, route=decision)
