"""Building the API's status, result and summary messages from stored graph state."""

from __future__ import annotations

import json
from typing import Any

from dago.engine.cel import EvalError
from dago.engine.graphcache import LoadedGraph
from dago.store.events import error_from, usage_from
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


def _graph_usage(h: dict[bytes, bytes], prefix: str, msg: execution_pb2.Usage) -> None:
    def get(name: str) -> bytes | None:
        return h.get(f"{prefix}{name}".encode())

    msg.input_tokens = _int(get("ui"))
    msg.output_tokens = _int(get("uo"))
    msg.cache_creation_input_tokens = _int(get("ucc"))
    msg.cache_read_input_tokens = _int(get("ucr"))
    cost = get("uc")
    msg.cost_usd = float(cost) if cost else 0.0


def _ts(msg: Any, ms: bytes | None) -> None:
    if ms:
        msg.FromMilliseconds(int(ms))


def graph_state(meta: dict[bytes, bytes]) -> execution_pb2.GraphState.ValueType:
    """The graph's state from its meta hash."""
    return execution_pb2.GraphState.ValueType(_int(meta.get(b"state")))


def summary(graph_id: str, meta: dict[bytes, bytes]) -> orchestrator_pb2.GraphSummary:
    """A listing entry."""
    s = orchestrator_pb2.GraphSummary(
        graph_id=graph_id,
        name=_str(meta.get(b"name")),
        state=graph_state(meta),
        request_id=_str(meta.get(b"request_id")),
    )
    _ts(s.create_time, meta.get(b"created"))
    _ts(s.end_time, meta.get(b"ended"))
    return s


def graph_status(
    graph_id: str,
    meta: dict[bytes, bytes],
    nodes: dict[bytes, bytes],
    attempts: dict[bytes, bytes],
    graph: graph_pb2.Graph,
) -> execution_pb2.GraphStatus:
    """The full status of a run."""
    st = execution_pb2.GraphStatus(
        graph_id=graph_id,
        name=_str(meta.get(b"name")),
        state=graph_state(meta),
        steps=_int(meta.get(b"steps")),
        request_id=_str(meta.get(b"request_id")),
    )
    _ts(st.create_time, meta.get(b"created"))
    _ts(st.start_time, meta.get(b"started"))
    _ts(st.end_time, meta.get(b"ended"))
    if meta.get(b"err"):
        error_from(json.loads(meta[b"err"]), st.error)
    _graph_usage(meta, "", st.usage)
    if graph.HasField("metadata"):
        st.metadata.CopyFrom(graph.metadata)
    by_node: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for key, raw in attempts.items():
        nid, it, at = key.decode().rsplit(":", 2)
        by_node.setdefault(nid, []).append((int(it), int(at), json.loads(raw)))
    for node in graph.nodes:
        st.nodes.append(_node_status(node.id, nodes, by_node.get(node.id, [])))
    return st


def _node_status(
    nid: str, h: dict[bytes, bytes], attempts: list[tuple[int, int, dict[str, Any]]]
) -> execution_pb2.NodeStatus:
    def get(name: str) -> bytes | None:
        return h.get(f"{nid}:{name}".encode())

    ns = execution_pb2.NodeStatus(
        node_id=nid,
        state=execution_pb2.NodeState.ValueType(_int(get("s"))),
        attempt=_int(get("a")),
        iteration=_int(get("i")),
        route=_str(get("route")),
    )
    _ts(ns.start_time, get("st"))
    _ts(ns.end_time, get("et"))
    out = get("o")
    if out is not None:
        set_value(ns.output, json.loads(out))
    err = get("err")
    if err:
        error_from(json.loads(err), ns.error)
    _graph_usage(h, f"{nid}:", ns.usage)
    for it, at, rec in sorted(attempts, key=lambda x: (x[0], x[1])):
        a = ns.attempts.add(
            attempt=at,
            iteration=it,
            state=execution_pb2.NodeState.ValueType(int(rec.get("s", 0))),
            worker_id=str(rec.get("w", "")),
        )
        a.start_time.FromMilliseconds(int(rec.get("st", 0)))
        a.end_time.FromMilliseconds(int(rec.get("et", 0)))
        if "in" in rec:
            set_value(a.input, rec["in"])
        if "o" in rec:
            set_value(a.output, rec["o"])
        error_from(rec.get("e"), a.error)
        usage_from(rec.get("u"), a.usage)
    return ns


def graph_result(
    graph_id: str,
    meta: dict[bytes, bytes],
    nodes: dict[bytes, bytes],
    loaded: LoadedGraph,
) -> orchestrator_pb2.GetGraphResultResponse:
    """The result of a finished run: node outputs and the graph's output mapping."""
    res = orchestrator_pb2.GetGraphResultResponse(graph_id=graph_id, state=graph_state(meta))
    _graph_usage(meta, "", res.usage)
    if meta.get(b"err"):
        error_from(json.loads(meta[b"err"]), res.error)
    outputs: dict[str, Any] = {}
    for key, raw in nodes.items():
        name = key.decode()
        if name.endswith(":o") and int(nodes.get(f"{name[:-2]}:s".encode(), b"0")) == 6:
            outputs[name[:-2]] = json.loads(raw)
    for nid, value in outputs.items():
        set_value(res.node_outputs[nid], value)
    compiled = loaded.compiled
    if compiled is None:
        return res
    if compiled.output:
        data = {
            "inputs": loaded.inputs,
            "nodes": {n: {"output": v} for n, v in outputs.items()},
            "graph": {"id": graph_id, "name": compiled.proto.name},
        }
        mapped: dict[str, Any] = {}
        for name, expr in compiled.output.items():
            try:
                mapped[name] = expr.evaluate(data)
            except EvalError:
                # A node the mapping reads was skipped or failed: the entry is null.
                mapped[name] = None
        res.output.update(mapped)
    else:
        res.output.update({n: outputs[n] for n in compiled.sinks if n in outputs})
    return res
