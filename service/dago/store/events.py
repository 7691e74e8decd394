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
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    fill_payload(ev, kind, d)
    return ev


def heartbeat(graph_id: str, seq: int, now_ms: int) -> execution_pb2.Event:
    """A heartbeat carrying the cursor of the last event sent."""
    ev = execution_pb2.Event(seq=seq, graph_id=graph_id, heartbeat=execution_pb2.Heartbeat())
    ev.time.FromMilliseconds(now_ms)
    return ev


# --- payloads: one table maps each kind to its payload's fields -----------------------
#
# A payload (the Event oneof field named as its kind) is filled field by field from the
# stored detail: each row is (payload field, detail key, how). A "how" takes (the payload,
# the field, the detail's value or None, the event) and writes the field, so what a value
# becomes (a string, a number, a google.protobuf.Value, a usage, an error...) is written
# once, not once per kind. The payload is set even when the detail holds nothing.

Fill = Callable[[Any, str, Any, execution_pb2.Event], None]


def _str(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    setattr(p, field, "" if v is None else str(v))


def _int(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    setattr(p, field, int(v or 0))


def _float(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    setattr(p, field, float(v or 0))


def _bool(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    setattr(p, field, bool(v))


def _value(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    """Any JSON value, as a ``google.protobuf.Value`` (absent: null)."""
    set_value(getattr(p, field), v)


def _strings(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    """A list of strings (anything else: none)."""
    if isinstance(v, list):
        getattr(p, field).extend(str(x) for x in v)


def _struct(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    """A JSON object, as a ``google.protobuf.Struct`` (anything else: empty)."""
    if isinstance(v, dict):
        getattr(p, field).update(v)


def _time_ms(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    """A time in ms since the epoch (0 or absent: unset)."""
    if int(v or 0):
        getattr(p, field).FromMilliseconds(int(v))


def _usage(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    usage_from(v, getattr(p, field))


def _error(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    error_from(v, getattr(p, field))


def _definition(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    """A definition reference stored as [name, version, digest]."""
    if isinstance(v, list) and len(v) == 3:
        ref = getattr(p, field)
        ref.name, ref.version, ref.digest = str(v[0]), int(v[1]), str(v[2])


def _dead_letter_id(p: Any, field: str, v: Any, ev: execution_pb2.Event) -> None:
    """The stored id is the shard's stream entry id; the API's id adds the shard (the graph
    id's prefix)."""
    shard = ev.graph_id.split("-", 1)[0]
    setattr(p, field, f"{shard}-{'' if v is None else v}")


PAYLOADS: dict[str, tuple[tuple[str, str, Fill], ...]] = {
    "graph_submitted": (
        ("name", Detail.NAME, _str),
        ("entry_nodes", Detail.ENTRIES, _strings),
        ("forked_from", Detail.SOURCE, _str),
        ("definition", Detail.DEFINITION, _definition),
    ),
    "graph_started": (),
    "graph_completed": (("usage", Detail.USAGE, _usage),),
    "graph_failed": (("error", Detail.ERROR, _error), ("failed_node_id", Detail.NEXT, _str)),
    "graph_cancelled": (("reason", Detail.REASON, _str),),
    "graph_resumed": (
        ("node_ids", Detail.NODES, _strings),
        ("child_nodes", Detail.CHILD_NODES, _strings),
    ),
    "node_started": (
        ("worker_id", Detail.WORKER, _str),
        ("redelivered", Detail.REDELIVERED, _bool),
    ),
    "node_completed": (
        ("output", Detail.OUTPUT, _value),
        ("usage", Detail.USAGE, _usage),
        ("duration_ms", Detail.DURATION_MS, _int),
    ),
    "node_failed": (("error", Detail.ERROR, _error),),
    "node_retrying": (
        ("error", Detail.ERROR, _error),
        ("backoff_ms", Detail.BACKOFF_MS, _int),
        ("next_attempt", Detail.NEXT, _int),
    ),
    "node_skipped": (("reason", Detail.REASON, _str),),
    "node_cancelled": (("reason", Detail.REASON, _str),),
    "node_dead_lettered": (
        ("error", Detail.ERROR, _error),
        ("deliveries", Detail.NEXT, _int),
        ("dead_letter_id", Detail.DEAD_LETTER, _dead_letter_id),
    ),
    "node_requeued": (("dead_letter_id", Detail.DEAD_LETTER, _dead_letter_id),),
    "node_reused": (("source_graph_id", Detail.SOURCE, _str), ("skipped", Detail.SKIPPED, _bool)),
    "node_waiting": (
        ("prompt", Detail.PROMPT, _str),
        ("display", Detail.DISPLAY, _struct),
        ("decisions", Detail.DECISIONS, _strings),
        ("deadline", Detail.DEADLINE, _time_ms),
        ("payload_schema", Detail.SCHEMA, _str),
    ),
    "node_throttled": (
        ("provider", Detail.PROVIDER, _str),
        ("model", Detail.MODEL, _str),
        ("wait_ms", Detail.WAIT_MS, _int),
        ("reason", Detail.REASON, _str),
    ),
    "router_decision": (
        ("route", Detail.ROUTE, _str),
        ("reason", Detail.REASON, _str),
        ("confidence", "confidence", _float),
        ("targets", Detail.TARGETS, _strings),
    ),
    "llm_delta": (("text", "text", _str),),
    "tool_call": (("call_id", "id", _str), ("tool", "tool", _str), ("arguments", "args", _value)),
    "tool_result": (
        ("call_id", "id", _str),
        ("tool", "tool", _str),
        ("error", "error", _str),
        ("result", "result", _value),
    ),
    "usage": (
        ("usage", Detail.USAGE, _usage),
        ("provider", Detail.PROVIDER, _str),
        ("model", Detail.MODEL, _str),
    ),
    "loop_iteration": (
        ("iteration", Detail.ITERATION, _int),
        ("from_node_id", Detail.FROM, _str),
        ("exhausted", Detail.EXHAUSTED, _bool),
    ),
    "signal_received": (
        ("decision", Detail.DECISION, _str),
        ("payload", Detail.PAYLOAD, _value),
        ("actor", Detail.ACTOR, _str),
        ("signal_id", Detail.SIGNAL_ID, _str),
        ("comment", Detail.COMMENT, _str),
        ("timed_out", Detail.TIMED_OUT, _bool),
    ),
    "child_started": (("child_graph_id", Detail.CHILD, _str),),
    "child_ended": (("child_graph_id", Detail.CHILD, _str), ("state", Detail.CHILD_STATE, _int)),
    "map_progress": tuple(
        (key, key, _int)
        for key in (
            MapResult.TOTAL,
            MapResult.QUEUED,
            MapResult.RUNNING,
            MapResult.COMPLETED,
            MapResult.FAILED,
            MapResult.CANCELLED,
        )
    ),
    "budget_warning": (
        ("limit", Detail.LIMIT, _str),
        ("used", Detail.USED, _float),
        ("max", Detail.MAX, _float),
    ),
    "budget_exhausted": (
        ("limit", Detail.LIMIT, _str),
        ("message", Detail.MESSAGE, _str),
        ("child_graph_id", Detail.CHILD, _str),
        ("child_node_id", Detail.NODE, _str),
    ),
}
"""Each stored kind's payload fields: (field, detail key, how); tests/store/
test_event_payloads.py checks it against the proto."""


def fill_payload(ev: execution_pb2.Event, kind: str, d: dict[str, Any]) -> None:
    """Set ``ev``'s payload of ``kind`` (an Event oneof field) from the stored detail ``d``."""
    p = getattr(ev, kind)
    p.SetInParent()
    for field, key, how in PAYLOADS[kind]:
        how(p, field, d.get(key), ev)


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
            fill_payload(msg, kind, d)
            msg.ClearField("graph_id")
        else:
            fill_payload(msg, kind, d)
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
