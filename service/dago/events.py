"""Stored events (flat Redis stream fields written by the Lua scripts) to ``dago.v1.Event``.

A stored event has ``t`` (the Event payload field name), ``ts`` (ms), and
optionally ``n``/``a``/``i`` (node, attempt, iteration) and ``d`` (JSON
detail). Short JSON keys keep the Lua side cheap: usage ``{i,o,cc,cr,c}``,
errors ``{c: ErrorClass, m: message, r: retryable}``.
"""

from __future__ import annotations

import json
from typing import Any

from dago.v1 import execution_pb2, graph_pb2
from dago.values import set_value

TERMINAL = frozenset({"graph_completed", "graph_failed", "graph_cancelled"})


def usage_from(d: Any, msg: execution_pb2.Usage) -> None:
    """Fill ``msg`` from a stored usage object (absent or null leaves it empty)."""
    if not d:
        return
    msg.input_tokens = int(d.get("i", 0))
    msg.output_tokens = int(d.get("o", 0))
    msg.cache_creation_input_tokens = int(d.get("cc", 0))
    msg.cache_read_input_tokens = int(d.get("cr", 0))
    msg.cost_usd = float(d.get("c", 0))


def error_from(d: Any, msg: execution_pb2.NodeError) -> None:
    """Fill ``msg`` from a stored error object."""
    if not d:
        return
    msg.error_class = graph_pb2.ErrorClass.ValueType(int(d.get("c", 0)))
    msg.message = str(d.get("m", ""))
    msg.retryable = bool(d.get("r", False))


def decode(graph_id: str, seq: int, fields: dict[bytes, bytes]) -> execution_pb2.Event:
    """The ``dago.v1.Event`` for one stored stream entry."""
    ev = execution_pb2.Event(seq=seq, graph_id=graph_id)
    ms = int(fields[b"ts"])
    ev.time.FromMilliseconds(ms)
    node = fields.get(b"n")
    if node is not None:
        ev.node_id = node.decode()
        ev.attempt = int(fields[b"a"])
        ev.iteration = int(fields[b"i"])
    kind = fields[b"t"].decode()
    raw = fields.get(b"d")
    d: dict[str, Any] = json.loads(raw) if raw else {}
    _PAYLOADS[kind](ev, d)
    return ev


def heartbeat(graph_id: str, seq: int, now_ms: int) -> execution_pb2.Event:
    """A heartbeat carrying the cursor of the last event sent."""
    ev = execution_pb2.Event(seq=seq, graph_id=graph_id, heartbeat=execution_pb2.Heartbeat())
    ev.time.FromMilliseconds(now_ms)
    return ev


def _submitted(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.graph_submitted.SetInParent()
    ev.graph_submitted.name = d.get("name", "")
    entries = d.get("entries") or []
    ev.graph_submitted.entry_nodes.extend(entries if isinstance(entries, list) else [])


def _completed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.graph_completed.SetInParent()
    usage_from(d.get("u"), ev.graph_completed.usage)


def _failed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.graph_failed.SetInParent()
    error_from(d.get("e"), ev.graph_failed.error)
    ev.graph_failed.failed_node_id = d.get("n", "")


def _node_completed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_completed
    p.SetInParent()
    set_value(p.output, d.get("o"))
    usage_from(d.get("u"), p.usage)
    p.duration_ms = int(d.get("ms", 0))


def _retrying(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_retrying
    p.SetInParent()
    error_from(d.get("e"), p.error)
    p.backoff_ms = int(d.get("b", 0))
    p.next_attempt = int(d.get("n", 0))


def _router(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.router_decision
    p.SetInParent()
    p.route = d.get("route", "")
    p.reason = d.get("reason", "")
    p.confidence = float(d.get("confidence", 0))
    targets = d.get("targets")
    p.targets.extend(targets if isinstance(targets, list) else [])


def _tool_call(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.tool_call
    p.SetInParent()
    p.call_id, p.tool = d.get("id", ""), d.get("tool", "")
    set_value(p.arguments, d.get("args"))


def _tool_result(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.tool_result
    p.SetInParent()
    p.call_id, p.tool, p.error = d.get("id", ""), d.get("tool", ""), d.get("error", "")
    set_value(p.result, d.get("result"))


def _usage(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.usage
    p.SetInParent()
    usage_from(d.get("u"), p.usage)
    p.provider, p.model = d.get("provider", ""), d.get("model", "")


def _loop(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.loop_iteration
    p.SetInParent()
    p.iteration = int(d.get("iteration", 0))
    p.from_node_id = d.get("from", "")
    p.exhausted = bool(d.get("exhausted", False))


def _started(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.node_started.SetInParent()
    ev.node_started.worker_id = d.get("w", "")
    ev.node_started.redelivered = bool(d.get("r", False))


def _failed_node(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.node_failed.SetInParent()
    error_from(d.get("e"), ev.node_failed.error)


def _dead_lettered(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    # The stored id is the shard's stream entry id; the API's id adds the shard (the graph
    # id's prefix).
    shard = ev.graph_id.split("-", 1)[0]
    p = ev.node_dead_lettered
    p.SetInParent()
    error_from(d.get("e"), p.error)
    p.deliveries = int(d.get("n", 0))
    p.dead_letter_id = f"{shard}-{d.get('id', '')}"


def _requeued(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.node_requeued.dead_letter_id = f"{ev.graph_id.split('-', 1)[0]}-{d.get('id', '')}"


def _text(field: str, key: str) -> Any:
    """A payload with one string field; SetInParent marks the oneof even when it is empty."""

    def fill(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
        msg = getattr(ev, field)
        msg.SetInParent()
        setattr(msg, key, d.get(key, ""))

    return fill


_PAYLOADS = {
    "node_dead_lettered": _dead_lettered,
    "node_requeued": _requeued,
    "graph_submitted": _submitted,
    "graph_started": lambda ev, d: ev.graph_started.SetInParent(),
    "graph_completed": _completed,
    "graph_failed": _failed,
    "graph_cancelled": _text("graph_cancelled", "reason"),
    "node_started": _started,
    "node_completed": _node_completed,
    "node_failed": _failed_node,
    "node_retrying": _retrying,
    "node_skipped": _text("node_skipped", "reason"),
    "node_cancelled": _text("node_cancelled", "reason"),
    "router_decision": _router,
    "llm_delta": _text("llm_delta", "text"),
    "tool_call": _tool_call,
    "tool_result": _tool_result,
    "usage": _usage,
    "loop_iteration": _loop,
}
