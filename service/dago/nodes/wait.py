"""The ``wait`` node kind: waits for a decision sent with SignalGraph (a person approving a
draft, choosing a branch), holding no worker slot while it waits.

An attempt of a wait node never waits in the worker. When no decision is recorded for its
iteration, it renders the prompt and display and returns what to wait for
(``NodeResult.wait``): the worker reports it with the ``wait`` function, which puts the node
in WAITING and acks its work item. A decision (a signal, or the timeout's
``timeout_decision``) is recorded in Redis and the node is queued again; that start reads the
decision with the outputs it reads (``dago.engine.topology.decision_ref``) and completes the
node with ``{decision, payload, actor, at, timed_out, comment}``, through the same output
mapping and edge conditions as any node. See docs/semantics.md, "Waits and signals".

Checked at submit: decisions are unique names (letters, digits, ``_`` and ``-``, starting
with a letter or ``_``; default ``approve``, ``reject``); ``payload_schema`` is a JSON
Schema as JSON text; ``timeout`` is positive and comes with a ``timeout_decision`` that is
one of the decisions (and a ``timeout_decision`` only with a timeout); ``prompt`` and
``display`` are templates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from dago.engine.cel import EvalError, Scope
from dago.engine.fields import clip, quote
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.outcome import invalid
from dago.engine.topology import decision_ref
from dago.engine.waits import decisions_of
from dago.nodes.base import Inline, NodeContext, NodeDeps, NodeHandler, NodeKind, NodeResult
from dago.observe.metrics import Metrics
from dago.store.schema import Decision
from dago.store.values import to_plain
from dago.v1 import graph_pb2

DECISION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
"""Decision names (always ``fullmatch``ed)."""
MAX_DECISIONS = 32
MAX_SCHEMA_CHARS = 64 * 1024


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The checks at submit of the module doc; the prompt and display templates."""
    w = node.wait
    if len(w.decisions) > MAX_DECISIONS:
        ctx.add("wait.decisions", f"use at most {MAX_DECISIONS} decisions")
    seen: set[str] = set()
    for j, name in enumerate(w.decisions):
        if not DECISION_NAME.fullmatch(name):
            ctx.add(
                f"wait.decisions[{j}]",
                "use 1-64 letters, digits, _ or -, starting with a letter or _",
            )
        elif name in seen:
            ctx.add(f"wait.decisions[{j}]", f"duplicate decision {quote(name)}")
        seen.add(name)
    if w.payload_schema:
        _check_schema(w.payload_schema, ctx)
    if w.HasField("timeout"):
        if w.timeout.seconds < 0 or w.timeout.nanos < 0 or w.timeout.ToMilliseconds() <= 0:
            ctx.add("wait.timeout", "must be positive (at least 1 ms)")
        if not w.timeout_decision:
            ctx.add("wait.timeout_decision", "is required with a timeout")
        elif w.timeout_decision not in decisions_of(w):
            ctx.add(
                "wait.timeout_decision",
                f"{quote(clip(w.timeout_decision))} is not one of the decisions ("
                + ", ".join(decisions_of(w))
                + ")",
            )
    elif w.timeout_decision:
        ctx.add("wait.timeout_decision", "is only used with a timeout: set wait.timeout too")
    templates = ctx.templates({"wait.prompt": w.prompt})
    if w.HasField("display"):
        at = f"{ctx.path}.wait.display"
        t = ctx.checker.template(ctx.cel, to_plain(w.display), Scope.ROUTE, at)
        if t is not None:
            templates["wait.display"] = t
    return KindParts(templates=templates, waits=True)


def _check_schema(text: str, ctx: CheckContext) -> None:
    if len(text) > MAX_SCHEMA_CHARS:
        ctx.add("wait.payload_schema", f"use at most {MAX_SCHEMA_CHARS} characters")
        return
    try:
        schema = json.loads(text)
    except ValueError as e:
        ctx.add("wait.payload_schema", f"is not JSON: {clip(str(e))}")
        return
    if not isinstance(schema, dict | bool):
        ctx.add("wait.payload_schema", "must be a JSON Schema (an object or a boolean)")
        return
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        at = f" at {where}" if where else ""
        ctx.add("wait.payload_schema", f"is not a valid JSON Schema{at}: {clip(e.message)}")


@dataclass(frozen=True)
class WaitRequest:
    """What a node waits for (``NodeResult.wait``): rendered prompt and display, the
    decisions, the payload schema (JSON text), the timeout (ms, 0: none) and its decision;
    for an agent's approval, the tool call and the conversation to keep."""

    prompt: str
    display: Any
    decisions: list[str]
    payload_schema: str
    timeout_ms: int
    timeout_decision: str
    step: str = ""
    """Which wait of the iteration this is (``schema.Wait.STEP``): an agent's tool call id."""
    saved: Any = None
    """What the node keeps in Redis while it waits, read by its next start (an agent's
    conversation; ``schema.Node.SAVED_REF``), or None."""


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class WaitHandler(NodeHandler):
    """Completes a wait node with its recorded decision, or says what it waits for."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def run(self, ctx: NodeContext) -> NodeResult:
        """As ``inline`` (it never waits in the worker)."""
        return self._attempt(ctx)

    def inline(self, node: Any) -> Inline | None:
        """Every attempt runs inline: it reads what its start brought and renders templates."""
        return self._attempt

    def _attempt(self, ctx: NodeContext) -> NodeResult:
        found = ctx.scope["nodes"].get(decision_ref(ctx.node.id))
        rec = found.get("output") if isinstance(found, dict) else None
        if isinstance(rec, dict) and rec.get(Decision.ITERATION) == ctx.iteration:
            return self._decided(rec)
        return NodeResult(None, wait=self._request(ctx))

    def _decided(self, rec: dict[str, Any]) -> NodeResult:
        at = int(rec.get(Decision.AT) or 0)
        since = int(rec.get(Decision.SINCE) or at)
        timed_out = bool(rec.get(Decision.TIMED_OUT))
        by = "timeout" if timed_out else "signal"
        self._metrics.wait_duration.labels(by).observe(max(0.0, (at - since) / 1000))
        return NodeResult(
            {
                "decision": rec.get(Decision.DECISION),
                "payload": rec.get(Decision.PAYLOAD),
                "actor": rec.get(Decision.ACTOR),
                "at": _iso(at),
                "timed_out": timed_out,
                "comment": rec.get(Decision.COMMENT) or "",
            }
        )

    def _request(self, ctx: NodeContext) -> WaitRequest:
        spec = ctx.node.proto.wait
        data = {**ctx.scope, "input": ctx.input}

        def render(key: str, raw: Any) -> Any:
            t = ctx.node.templates.get(key)
            if t is None:
                return raw
            try:
                return t.render(data)
            except EvalError as e:
                raise invalid(f"{key}: {e}") from None

        prompt = render("wait.prompt", spec.prompt)
        display = render("wait.display", to_plain(spec.display) if spec.HasField("display") else {})
        timeout_ms = spec.timeout.ToMilliseconds() if spec.HasField("timeout") else 0
        return WaitRequest(
            prompt=prompt if isinstance(prompt, str) else json.dumps(prompt),
            display=display,
            decisions=decisions_of(spec),
            payload_schema=spec.payload_schema,
            timeout_ms=timeout_ms,
            timeout_decision=spec.timeout_decision if timeout_ms else "",
        )


def _build(deps: NodeDeps) -> NodeHandler:
    return WaitHandler(deps.metrics)


KIND = NodeKind("wait", check, _build)
