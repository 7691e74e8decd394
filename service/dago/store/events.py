"""The stored event codec: entries of a graph's event log (written by the Redis functions
and by workers through ``append``) to ``dago.v1.Event``, and to the wire form of
WatchGraph.

An entry holds one or more events (``dago.store.schema.Event``), each packed as its kind
(the Event payload field name), its time (ms), node, attempt and iteration (empty for a
graph's own events), and a JSON detail whose keys are ``schema.Detail`` (usage objects
``schema.UsageJson``, errors ``schema.Error``). ``expand`` unpacks entries into
``Stored`` events, which ``decode`` and ``encode`` read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dago.store.schema import Detail, Error, Event, MapItems, MapResult, UsageJson
from dago.store.values import set_value
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2

TERMINAL = frozenset({"graph_completed", "graph_failed", "graph_cancelled"})

_SEP = Event.SEP.encode()
_ITEM_SEP = MapItems.SEP.encode()


def item_event(stored: Stored) -> bool:
    """Whether a stored event is a map item's (its node is ``<map>#<index>``): watchers get
    those only when they ask (``item_events``)."""
    return _ITEM_SEP in stored[NODE]


Stored = Sequence[bytes]
"""One stored event: [kind, time ms, node, attempt, iteration, detail] (``KIND``...)."""
KIND, TIME, NODE, ATTEMPT, ITERATION, DETAIL = range(6)

Entries = list[tuple[int, Stored]]
"""Stored events with their seqs, in order."""


def entry_range(after: int, count: int) -> tuple[str, str]:
    """XRANGE bounds of the entries holding the ``count`` events after seq ``after``: an
    entry's id is its last event's seq, so the one holding seq ``after + count`` has an id
    below ``after + count + PER_ENTRY``. A read so returns at most ``PER_ENTRY - 1`` events
    more than asked, however the events are spread over entries."""
    return f"0-{after + 1}", f"0-{after + count + Event.PER_ENTRY - 1}"


def unpack(value: bytes) -> Stored:
    """One event as its log (or a notify entry) holds it."""
    return value.split(_SEP, 5)


def expand(found: Iterable[tuple[bytes, Any]], after: int = 0) -> Entries:
    """The events after seq ``after`` of XRANGE entries, as (seq, event). An entry's fields
    come as a mapping (redis-py's reply) or flat (field, value, ...: Redis's own)."""
    out: Entries = []
    for entry_id, fields in found:
        values = list(fields.values()) if isinstance(fields, dict) else fields[1::2]
        seq = int(entry_id.split(b"-")[1]) - len(values)
        for v in values:
            seq += 1
            if seq > after:
                out.append((seq, unpack(v)))
    return out


def usage_from(d: Any, msg: execution_pb2.Usage) -> None:
    """Fill ``msg`` from a stored usage object (absent or null leaves it empty)."""
    if not d:
        return
    msg.input_tokens = int(d.get(UsageJson.INPUT, 0))
    msg.output_tokens = int(d.get(UsageJson.OUTPUT, 0))
    msg.cache_creation_input_tokens = int(d.get(UsageJson.CACHE_WRITE, 0))
    msg.cache_read_input_tokens = int(d.get(UsageJson.CACHE_READ, 0))
    msg.cost_usd = float(d.get(UsageJson.COST, 0))


def error_from(d: Any, msg: execution_pb2.NodeError) -> None:
    """Fill ``msg`` from a stored error object."""
    if not d:
        return
    msg.error_class = graph_pb2.ErrorClass.ValueType(int(d.get(Error.CLASS, 0)))
    msg.message = str(d.get(Error.MESSAGE, ""))
    msg.retryable = bool(d.get(Error.RETRYABLE, False))


def decode(graph_id: str, seq: int, stored: Stored) -> execution_pb2.Event:
    """The ``dago.v1.Event`` of one stored event."""
    ev = execution_pb2.Event(seq=seq, graph_id=graph_id)
    ev.time.FromMilliseconds(int(stored[TIME]))
    node = stored[NODE]
    if node:
        name, _, index = node.partition(_ITEM_SEP)
        ev.node_id = name.decode()
        if index:
            ev.instance = int(index) + 1
        ev.attempt = int(stored[ATTEMPT] or 0)
        ev.iteration = int(stored[ITERATION] or 0)
    kind = stored[KIND].decode()
    raw = stored[DETAIL]
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
    ev.graph_submitted.name = d.get(Detail.NAME, "")
    entries = d.get(Detail.ENTRIES) or []
    ev.graph_submitted.entry_nodes.extend(entries if isinstance(entries, list) else [])
    ev.graph_submitted.forked_from = d.get(Detail.SOURCE, "")
    ref = d.get(Detail.DEFINITION)
    if isinstance(ref, list) and len(ref) == 3:
        ev.graph_submitted.definition.name = str(ref[0])
        ev.graph_submitted.definition.version = int(ref[1])
        ev.graph_submitted.definition.digest = str(ref[2])


def _reused(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_reused
    p.SetInParent()
    p.source_graph_id = str(d.get(Detail.SOURCE, ""))
    p.skipped = bool(d.get(Detail.SKIPPED, False))


def _child_started(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.child_started
    p.SetInParent()
    p.child_graph_id = str(d.get(Detail.CHILD, ""))


def _child_ended(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.child_ended
    p.SetInParent()
    p.child_graph_id = str(d.get(Detail.CHILD, ""))
    p.state = execution_pb2.GraphState.ValueType(int(d.get(Detail.CHILD_STATE) or 0))


def _completed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.graph_completed.SetInParent()
    usage_from(d.get(Detail.USAGE), ev.graph_completed.usage)


def _failed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.graph_failed.SetInParent()
    error_from(d.get(Detail.ERROR), ev.graph_failed.error)
    ev.graph_failed.failed_node_id = d.get(Detail.NEXT, "")


def _node_completed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_completed
    p.SetInParent()
    set_value(p.output, d.get(Detail.OUTPUT))
    usage_from(d.get(Detail.USAGE), p.usage)
    p.duration_ms = int(d.get(Detail.DURATION_MS, 0))


def _retrying(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_retrying
    p.SetInParent()
    error_from(d.get(Detail.ERROR), p.error)
    p.backoff_ms = int(d.get(Detail.BACKOFF_MS, 0))
    p.next_attempt = int(d.get(Detail.NEXT, 0))


def _router(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.router_decision
    p.SetInParent()
    p.route = d.get(Detail.ROUTE, "")
    p.reason = d.get(Detail.REASON, "")
    p.confidence = float(d.get("confidence", 0))
    targets = d.get(Detail.TARGETS)
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
    usage_from(d.get(Detail.USAGE), p.usage)
    p.provider, p.model = d.get(Detail.PROVIDER, ""), d.get(Detail.MODEL, "")


def _loop(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.loop_iteration
    p.SetInParent()
    p.iteration = int(d.get(Detail.ITERATION, 0))
    p.from_node_id = d.get(Detail.FROM, "")
    p.exhausted = bool(d.get(Detail.EXHAUSTED, False))


def _started(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.node_started.SetInParent()
    ev.node_started.worker_id = d.get(Detail.WORKER, "")
    ev.node_started.redelivered = bool(d.get(Detail.REDELIVERED, False))


def _failed_node(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.node_failed.SetInParent()
    error_from(d.get(Detail.ERROR), ev.node_failed.error)


def _dead_lettered(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    # The stored id is the shard's stream entry id; the API's id adds the shard (the graph
    # id's prefix).
    shard = ev.graph_id.split("-", 1)[0]
    p = ev.node_dead_lettered
    p.SetInParent()
    error_from(d.get(Detail.ERROR), p.error)
    p.deliveries = int(d.get(Detail.NEXT, 0))
    p.dead_letter_id = f"{shard}-{d.get(Detail.DEAD_LETTER, '')}"


def _requeued(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    shard = ev.graph_id.split("-", 1)[0]
    ev.node_requeued.dead_letter_id = f"{shard}-{d.get(Detail.DEAD_LETTER, '')}"


def _waiting(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_waiting
    p.SetInParent()
    p.prompt = str(d.get(Detail.PROMPT, ""))
    display = d.get(Detail.DISPLAY)
    if isinstance(display, dict):
        p.display.update(display)
    p.decisions.extend(str(x) for x in d.get(Detail.DECISIONS) or [])
    deadline = int(d.get(Detail.DEADLINE) or 0)
    if deadline:
        p.deadline.FromMilliseconds(deadline)
    p.payload_schema = str(d.get(Detail.SCHEMA, ""))


def _throttled(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.node_throttled
    p.SetInParent()
    p.provider = str(d.get(Detail.PROVIDER, ""))
    p.model = str(d.get(Detail.MODEL, ""))
    p.wait_ms = int(d.get(Detail.WAIT_MS) or 0)
    p.reason = str(d.get(Detail.REASON, ""))


def _signal(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.signal_received
    p.SetInParent()
    p.decision = str(d.get(Detail.DECISION, ""))
    set_value(p.payload, d.get(Detail.PAYLOAD))
    p.actor = str(d.get(Detail.ACTOR, ""))
    p.signal_id = str(d.get(Detail.SIGNAL_ID, ""))
    p.comment = str(d.get(Detail.COMMENT, ""))
    p.timed_out = bool(d.get(Detail.TIMED_OUT, False))


def _map_progress(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.map_progress
    p.SetInParent()
    p.total = int(d.get(MapResult.TOTAL, 0))
    p.queued = int(d.get(MapResult.QUEUED, 0))
    p.running = int(d.get(MapResult.RUNNING, 0))
    p.completed = int(d.get(MapResult.COMPLETED, 0))
    p.failed = int(d.get(MapResult.FAILED, 0))
    p.cancelled = int(d.get(MapResult.CANCELLED, 0))


def _budget_warning(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.budget_warning
    p.SetInParent()
    p.limit = str(d.get(Detail.LIMIT, ""))
    p.used = float(d.get(Detail.USED, 0))
    p.max = float(d.get(Detail.MAX, 0))


def _budget_exhausted(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    p = ev.budget_exhausted
    p.SetInParent()
    p.limit = str(d.get(Detail.LIMIT, ""))
    p.message = str(d.get(Detail.MESSAGE, ""))
    p.child_graph_id = str(d.get(Detail.CHILD, ""))
    p.child_node_id = str(d.get(Detail.NODE, ""))


def _resumed(ev: execution_pb2.Event, d: dict[str, Any]) -> None:
    ev.graph_resumed.SetInParent()
    nodes = d.get(Detail.NODES) or []
    ev.graph_resumed.node_ids.extend(str(n) for n in (nodes if isinstance(nodes, list) else []))
    kids = d.get(Detail.CHILD_NODES) or []
    ev.graph_resumed.child_nodes.extend(str(n) for n in (kids if isinstance(kids, list) else []))


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
    "graph_cancelled": _text("graph_cancelled", Detail.REASON),
    "node_started": _started,
    "node_completed": _node_completed,
    "node_failed": _failed_node,
    "node_retrying": _retrying,
    "node_skipped": _text("node_skipped", Detail.REASON),
    "node_cancelled": _text("node_cancelled", Detail.REASON),
    "router_decision": _router,
    "llm_delta": _text("llm_delta", "text"),
    "tool_call": _tool_call,
    "tool_result": _tool_result,
    "usage": _usage,
    "loop_iteration": _loop,
    "node_waiting": _waiting,
    "signal_received": _signal,
    "node_reused": _reused,
    "child_started": _child_started,
    "child_ended": _child_ended,
    "map_progress": _map_progress,
    "node_throttled": _throttled,
    "budget_warning": _budget_warning,
    "budget_exhausted": _budget_exhausted,
    "graph_resumed": _resumed,
}


# --- the wire form of WatchGraph -------------------------------------------------------
#
# A watch stream sends every stored event as its own ``WatchGraphResponse``. Building an
# ``Event`` message per event and watcher was most of the API's Python time per event, so
# the stream is made of bytes: the header fields (seq, graph id, time, node, attempt,
# iteration) are written straight in the protobuf wire format, and only the payload goes
# through a message (built once per event, and shared by every watcher of the graph). The
# bytes parse to exactly the message ``decode`` builds (tests/api/test_watch_perf.py checks it).

_EVENT_FIELDS = execution_pb2.Event.DESCRIPTOR.fields_by_name


def _varint(n: int) -> bytes:
    """The protobuf varint of ``n`` (negative values as 64-bit two's complement)."""
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _len_field(tag: bytes, body: bytes) -> bytes:
    return tag + _varint(len(body)) + body


_T_SEQ = _tag(_EVENT_FIELDS["seq"].number, 0)
_T_GRAPH = _tag(_EVENT_FIELDS["graph_id"].number, 2)
_T_TIME = _tag(_EVENT_FIELDS["time"].number, 2)
_T_NODE = _tag(_EVENT_FIELDS["node_id"].number, 2)
_T_ATTEMPT = _tag(_EVENT_FIELDS["attempt"].number, 0)
_T_ITERATION = _tag(_EVENT_FIELDS["iteration"].number, 0)
_T_INSTANCE = _tag(_EVENT_FIELDS["instance"].number, 0)
_T_SECONDS = _tag(1, 0)  # google.protobuf.Timestamp.seconds
_T_NANOS = _tag(2, 0)  # google.protobuf.Timestamp.nanos
_T_EVENT = _tag(orchestrator_pb2.WatchGraphResponse.DESCRIPTOR.fields_by_name["event"].number, 2)
_T_EVENTS = _tag(orchestrator_pb2.WatchGraphResponse.DESCRIPTOR.fields_by_name["events"].number, 2)
_T_TEXT = {
    name: (_tag(_EVENT_FIELDS[name].number, 2), _tag(1, 2))
    for name in ("llm_delta", "node_skipped", "node_cancelled", "graph_cancelled")
}
_STARTED_FIELDS = execution_pb2.NodeStarted.DESCRIPTOR.fields_by_name
_T_STARTED = _tag(_EVENT_FIELDS["node_started"].number, 2)
_T_WORKER = _tag(_STARTED_FIELDS["worker_id"].number, 2)
_REDELIVERED = _tag(_STARTED_FIELDS["redelivered"].number, 0) + b"\x01"
_GRAPH_STARTED = _tag(_EVENT_FIELDS["graph_started"].number, 2) + b"\x00"
# Payloads that read the event's graph id while being built.
_NEEDS_GRAPH = frozenset({"node_dead_lettered", "node_requeued"})
TERMINAL_KINDS = frozenset(k.encode() for k in TERMINAL)
"""``TERMINAL`` as a stored event's kind bytes."""


def _time(ms: int) -> bytes:
    seconds, millis = divmod(ms, 1000)  # as Timestamp.FromMilliseconds splits it
    body = (_T_SECONDS + _varint(seconds) if seconds else b"") + (
        _T_NANOS + _varint(millis * 1_000_000) if millis else b""
    )
    return _T_TIME + _varint(len(body)) + body


def graph_prefix(graph_id: str) -> bytes:
    """The encoded graph id field, shared by every event of the graph (see ``encode``)."""
    return _len_field(_T_GRAPH, graph_id.encode()) if graph_id else b""


def encode(graph_id: str, seq: int, stored: Stored, prefix: bytes = b"") -> bytes:
    """The serialized ``WatchGraphResponse`` of one stored event: the same message as
    ``WatchGraphResponse(event=decode(graph_id, seq, stored))``. ``prefix`` is
    ``graph_prefix(graph_id)`` when the caller has it."""
    kind = stored[KIND].decode()
    head = (_T_SEQ + _varint(seq) if seq else b"") + (prefix or graph_prefix(graph_id))
    head += _time(int(stored[TIME]))
    node = stored[NODE]
    if node:
        node, _, index = node.partition(_ITEM_SEP)
        head += _T_NODE + _varint(len(node)) + node
        attempt, iteration = int(stored[ATTEMPT] or 0), int(stored[ITERATION] or 0)
        if attempt:
            head += _T_ATTEMPT + _varint(attempt)
        if iteration:
            head += _T_ITERATION + _varint(iteration)
        if index:
            head += _T_INSTANCE + _varint(int(index) + 1)
    raw = stored[DETAIL]
    d: dict[str, Any] = json.loads(raw) if raw else {}
    text = _T_TEXT.get(kind)
    value = d.get("text" if kind == "llm_delta" else Detail.REASON, "") if text else None
    if text is not None and isinstance(value, str):
        # One string field (the payload is set even when the string is empty).
        body = _len_field(text[1], value.encode()) if value else b""
        payload = _len_field(text[0], body)
    elif kind == "node_started" and isinstance(d.get(Detail.WORKER, ""), str):
        worker = d.get(Detail.WORKER, "").encode()
        body = (_len_field(_T_WORKER, worker) if worker else b"") + (
            _REDELIVERED if d.get(Detail.REDELIVERED) else b""
        )
        payload = _len_field(_T_STARTED, body)
    elif kind == "graph_started":
        payload = _GRAPH_STARTED
    else:
        msg = execution_pb2.Event()
        if kind in _NEEDS_GRAPH:
            msg.graph_id = graph_id
            _PAYLOADS[kind](msg, d)
            msg.ClearField("graph_id")
        else:
            _PAYLOADS[kind](msg, d)
        payload = msg.SerializeToString()
    event = head + payload
    return _T_EVENT + _varint(len(event)) + event


BATCH_BYTES = 1 << 20
"""Largest batch-mode ``WatchGraphResponse`` built from several events (one event over it
goes alone): well under gRPC's 4 MiB default message limit."""


def batched(messages: list[bytes], limit: int = BATCH_BYTES) -> Iterator[bytes]:
    """Batch-mode ``WatchGraphResponse`` messages holding, in order, the events of
    one-event messages (``encode``, ``encode_heartbeat``). An event is the same length
    and bytes in ``event`` and in ``events``: only its tag changes."""
    out = bytearray()
    skip = len(_T_EVENT)
    for m in messages:
        if out and len(out) + len(m) > limit:
            yield bytes(out)
            out = bytearray()
        out += _T_EVENTS
        out += memoryview(m)[skip:]
    if out:
        yield bytes(out)


def encode_heartbeat(graph_id: str, seq: int, now_ms: int) -> bytes:
    """The serialized ``WatchGraphResponse`` of a heartbeat (see ``heartbeat``)."""
    return orchestrator_pb2.WatchGraphResponse(
        event=heartbeat(graph_id, seq, now_ms)
    ).SerializeToString()
