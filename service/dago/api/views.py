"""Building the API's status, result and summary messages from stored graph state."""

from __future__ import annotations

import json
import time
from typing import Any

from dago.engine.graphcache import LoadedGraph
from dago.engine.result import run_result
from dago.history.listing import definition_ref, run_state
from dago.store.events import error_from, usage_from
from dago.store.schema import Fair, MapItems, Meta, Node, Record, Usage, Wait
from dago.store.store import RecordId, Snapshot
from dago.store.values import set_value
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2

TERMINAL_STATES = frozenset(
    {
        execution_pb2.GRAPH_STATE_COMPLETED,
        execution_pb2.GRAPH_STATE_FAILED,
        execution_pb2.GRAPH_STATE_CANCELLED,
    }
)


def _str(v: bytes | None) -> str:
    return v.decode() if v else ""


def _int(v: bytes | None) -> int:
    return int(v) if v else 0


def _usage(h: dict[bytes, bytes], prefix: str, msg: execution_pb2.Usage) -> None:
    def get(name: str) -> bytes | None:
        return h.get(f"{prefix}{name}".encode())

    msg.input_tokens = _int(get(Usage.INPUT))
    msg.output_tokens = _int(get(Usage.OUTPUT))
    msg.cache_creation_input_tokens = _int(get(Usage.CACHE_WRITE))
    msg.cache_read_input_tokens = _int(get(Usage.CACHE_READ))
    cost = get(Usage.COST)
    msg.cost_usd = float(cost) if cost else 0.0


def _ts(msg: Any, ms: bytes | None) -> None:
    if ms:
        msg.FromMilliseconds(int(ms))


def _meta(meta: dict[bytes, bytes], name: str) -> bytes | None:
    return meta.get(name.encode())


def graph_state(meta: dict[bytes, bytes]) -> execution_pb2.GraphState.ValueType:
    """The graph's state from its meta hash: PAUSED while its budget paused it (stored as
    RUNNING with ``Meta.PAUSED``: see schema.Meta)."""
    return run_state(meta)


def graph_status(graph_id: str, snap: Snapshot, full: bool = True) -> execution_pb2.GraphStatus:
    """The status of a run; without ``full``, no node outputs and no attempt inputs or
    outputs (GRAPH_STATUS_VIEW_BASIC)."""
    meta = snap.meta
    graph = graph_pb2.Graph.FromString(meta[Meta.DEFINITION.encode()])
    st = execution_pb2.GraphStatus(
        graph_id=graph_id,
        name=_str(_meta(meta, Meta.NAME)),
        state=graph_state(meta),
        steps=_int(_meta(meta, Meta.STEPS)),
        request_id=_str(_meta(meta, Meta.REQUEST_ID)),
        forked_from=_str(_meta(meta, Meta.FORKED_FROM)),
        parent_graph_id=_str(_meta(meta, Meta.PARENT_GRAPH)),
        parent_node_id=_str(_meta(meta, Meta.PARENT_NODE)),
        depth=_int(_meta(meta, Meta.DEPTH)),
        priority=_int(_meta(meta, Meta.PRIORITY)) or Fair.PRIORITY_DEFAULT,
        reused_nodes=_int(_meta(meta, Meta.REUSED)),
    )
    _ts(st.create_time, _meta(meta, Meta.CREATED))
    _ts(st.start_time, _meta(meta, Meta.STARTED))
    _ts(st.end_time, _meta(meta, Meta.ENDED))
    err = _meta(meta, Meta.ERROR)
    if err:
        error_from(json.loads(err), st.error)
    _usage(meta, "", st.usage)
    _budget(meta, graph.limits, st)
    definition_ref(meta, st.definition)
    if graph.HasField("metadata"):
        st.metadata.CopyFrom(graph.metadata)
    ended = st.state in TERMINAL_STATES
    for node in graph.nodes:
        ns = _node_status(node.id, snap.nodes, snap.records.get(node.id, []), full)
        if node.HasField("map"):
            map_progress(
                [snap.nodes.get(f"{node.id}{f}".encode()) for f in MAP_FIELDS], ended, ns.map
            )
        st.nodes.append(ns)
    return st


MAP_FIELDS = (
    MapItems.TOTAL,
    MapItems.NEXT,
    MapItems.RUNNING,
    MapItems.COMPLETED,
    MapItems.FAILED,
    MapItems.CANCELLED,
)
"""The map node's fields ``map_progress`` reads, in its order."""


def map_progress(fields: list[bytes | None], ended: bool, msg: execution_pb2.MapProgress) -> None:
    """A map's counts (``MAP_FIELDS`` values; a map not expanded yet has none). Once its run
    ended, items still open or never dispatched count as cancelled."""
    total, nxt, running, completed, failed, cancelled = (_int(v) for v in fields)
    msg.SetInParent()
    msg.total, msg.completed, msg.failed = total, completed, failed
    if ended:
        msg.cancelled = cancelled + running + (total - nxt)
    else:
        msg.queued, msg.running, msg.cancelled = total - nxt, running, cancelled


ITEM_FIELDS = (
    Node.STATE,
    Node.ATTEMPT,
    Node.STARTED,
    Node.ENDED,
    Node.OUTPUT,
    Node.ERROR,
    ":" + Usage.INPUT,
    ":" + Usage.OUTPUT,
    ":" + Usage.CACHE_WRITE,
    ":" + Usage.CACHE_READ,
    ":" + Usage.COST,
)
"""An item's fields (after ``<map>#<index>``) that ``map_item`` reads, in its order."""

_OPEN_ITEM = frozenset(
    {
        execution_pb2.NODE_STATE_PENDING,
        execution_pb2.NODE_STATE_QUEUED,
        execution_pb2.NODE_STATE_RUNNING,
        execution_pb2.NODE_STATE_RETRYING,
        execution_pb2.NODE_STATE_DEAD_LETTERED,
    }
)


def item_state(
    raw: bytes | None, dispatched: bool, ended: bool
) -> execution_pb2.NodeState.ValueType:
    """An item's state: its stored one; PENDING before it is dispatched (CANCELLED when
    its map was stopped); once the run ended, CANCELLED for an item still open."""
    if raw is None:
        state = execution_pb2.NodeState.ValueType(
            execution_pb2.NODE_STATE_CANCELLED if dispatched else execution_pb2.NODE_STATE_PENDING
        )
    else:
        state = execution_pb2.NodeState.ValueType(int(raw))
    if ended and state in _OPEN_ITEM:
        return execution_pb2.NODE_STATE_CANCELLED
    return state


def map_item(
    index: int, state: execution_pb2.NodeState.ValueType, fields: list[bytes | None]
) -> orchestrator_pb2.MapItem:
    """One item as ListMapItems shows it (``ITEM_FIELDS`` values)."""
    _, attempt, started, ended, out, err = fields[:6]
    item = orchestrator_pb2.MapItem(index=index, state=state, attempt=_int(attempt))
    _ts(item.start_time, started)
    _ts(item.end_time, ended)
    if out is not None and state == execution_pb2.NODE_STATE_COMPLETED:
        set_value(item.output, json.loads(out))
    if err is not None and state != execution_pb2.NODE_STATE_COMPLETED:
        error_from(json.loads(err), item.error)
    u = item.usage
    u.input_tokens, u.output_tokens = _int(fields[6]), _int(fields[7])
    u.cache_creation_input_tokens, u.cache_read_input_tokens = _int(fields[8]), _int(fields[9])
    u.cost_usd = float(fields[10]) if fields[10] else 0.0
    return item


def _budget(
    meta: dict[bytes, bytes], submitted: graph_pb2.GraphLimits, st: execution_pb2.GraphStatus
) -> None:
    """The limits in force (as submitted, with UpdateGraphLimits' changes) and what the
    model calls running now hold of them."""
    st.limits.CopyFrom(submitted)
    st.limits.max_tokens = _int(_meta(meta, Meta.MAX_TOKENS))
    st.limits.max_cost_usd = float(_meta(meta, Meta.MAX_COST) or 0)
    st.reserved.input_tokens = max(0, _int(_meta(meta, Meta.RESERVED_TOKENS)))
    st.reserved.cost_usd = max(0.0, round(float(_meta(meta, Meta.RESERVED_COST) or 0), 10))


def _node_status(
    nid: str, h: dict[bytes, bytes], records: list[tuple[RecordId, bytes]], full: bool
) -> execution_pb2.NodeStatus:
    def get(field: str) -> bytes | None:
        return h.get(f"{nid}{field}".encode())

    ns = execution_pb2.NodeStatus(
        node_id=nid,
        state=execution_pb2.NodeState.ValueType(_int(get(Node.STATE))),
        attempt=_int(get(Node.ATTEMPT)),
        iteration=_int(get(Node.ITERATION)),
        route=_str(get(Node.ROUTE)),
        reused=get(Node.REUSED) == b"1",
        child_graph_id=_str(get(Node.CHILD)),
    )
    _ts(ns.start_time, get(Node.STARTED))
    _ts(ns.end_time, get(Node.ENDED))
    out = get(Node.OUTPUT) if full else None
    if out is not None:
        set_value(ns.output, json.loads(out))
    err = get(Node.ERROR)
    if err:
        error_from(json.loads(err), ns.error)
    _usage(h, f"{nid}:", ns.usage)
    throttled = get(Node.THROTTLED)  # the not-before of a throttle still to come
    if (
        throttled is not None
        and ns.state == execution_pb2.NODE_STATE_QUEUED
        and int(throttled) > time.time() * 1000
    ):
        ns.throttled_until.FromMilliseconds(int(throttled))
    waited = get(Node.WAIT)
    if waited is not None and ns.state == execution_pb2.NODE_STATE_WAITING:
        fill_wait(ns.wait, waited, display=full)
    for rid, rec in executions(records, [get(f) for f in RUNNING_FIELDS]):
        ns.attempts.append(attempt(rid, rec, full))
    return ns


def fill_wait(
    msg: execution_pb2.NodeWait | orchestrator_pb2.Wait, raw: bytes, display: bool = True
) -> None:
    """Set a ``NodeWait`` or a ``Wait`` (the same field names) from a node's stored wait
    (JSON, ``schema.Wait``): prompt, decisions, payload schema, since, deadline and, when
    ``display``, the display. Also sets ``iteration`` on a ``Wait``."""
    w = json.loads(raw)
    msg.prompt = str(w.get(Wait.PROMPT, ""))
    msg.decisions.extend(str(x) for x in w.get(Wait.DECISIONS) or [])
    msg.payload_schema = str(w.get(Wait.SCHEMA, ""))
    if isinstance(msg, orchestrator_pb2.Wait):
        msg.iteration = int(w.get(Wait.ITERATION, 0))
    shown = w.get(Wait.DISPLAY)
    if display and isinstance(shown, dict):
        msg.display.update(shown)
    msg.since.FromMilliseconds(int(w.get(Wait.SINCE, 0)))
    deadline = int(w.get(Wait.DEADLINE) or 0)
    if deadline:
        msg.deadline.FromMilliseconds(deadline)


RUNNING_FIELDS = (
    Node.STATE,
    Node.ITERATION,
    Node.ATTEMPT,
    Node.EXECUTION,
    Node.STARTED,
    Node.WORKER,
)
"""The node fields that are the record of its running execution (nothing else is written
when an execution starts: see ``Node.RECORD``)."""


def executions(
    records: list[tuple[RecordId, bytes]], running: list[bytes | None]
) -> list[tuple[RecordId, dict[str, Any]]]:
    """A node's execution records in order, the running one (from its ``RUNNING_FIELDS``
    values, ``running``) included."""
    out = [(rid, json.loads(raw)) for rid, raw in records]
    state, iteration, number, execution, started, worker = running
    if _int(state) == execution_pb2.NODE_STATE_RUNNING and _int(execution) > 0:
        rid = RecordId(_int(iteration), _int(number), _int(execution))
        if all(r != rid for r, _ in out):
            rec = {Record.STARTED: _int(started), Record.STATE: execution_pb2.NODE_STATE_RUNNING}
            out.append((rid, {**rec, Record.WORKER: _str(worker)}))
            out.sort(key=lambda x: x[0])
    return out


def attempt(rid: RecordId, rec: dict[str, Any], full: bool) -> execution_pb2.Attempt:
    """One execution of an attempt from its stored record (with its input and output when
    ``full``); one still running has no end time."""
    a = execution_pb2.Attempt(
        attempt=rid.attempt,
        iteration=rid.iteration,
        execution=rid.execution,
        state=execution_pb2.NodeState.ValueType(int(rec.get(Record.STATE, 0))),
        worker_id=str(rec.get(Record.WORKER, "")),
    )
    a.start_time.FromMilliseconds(int(rec.get(Record.STARTED, 0)))
    if Record.ENDED in rec:
        a.end_time.FromMilliseconds(int(rec[Record.ENDED]))
    if full and Record.INPUT in rec:
        set_value(a.input, rec[Record.INPUT])
    if full and Record.OUTPUT in rec:
        set_value(a.output, rec[Record.OUTPUT])
    error_from(rec.get(Record.ERROR), a.error)
    usage_from(rec.get(Record.USAGE), a.usage)
    return a


def graph_result(
    graph_id: str, snap: Snapshot, loaded: LoadedGraph
) -> orchestrator_pb2.GetGraphResultResponse:
    """The result of a finished run: node outputs and the graph's output mapping."""
    meta = snap.meta
    res = orchestrator_pb2.GetGraphResultResponse(graph_id=graph_id, state=graph_state(meta))
    _usage(meta, "", res.usage)
    err = _meta(meta, Meta.ERROR)
    if err:
        error_from(json.loads(err), res.error)
    outputs: dict[str, Any] = {}
    completed = str(execution_pb2.NODE_STATE_COMPLETED).encode()
    suffix = Node.OUTPUT.encode()
    item_sep = MapItems.SEP.encode()
    for key, raw in snap.nodes.items():
        if key.endswith(suffix) and item_sep not in key:
            node = key[: -len(suffix)]
            if snap.nodes.get(node + Node.STATE.encode()) == completed:
                outputs[node.decode()] = json.loads(raw)
    for nid, value in outputs.items():
        set_value(res.node_outputs[nid], value)
    compiled = loaded.compiled
    if compiled is None:
        return res
    res.output.update(run_result(compiled, graph_id, loaded.inputs, outputs))
    return res
