"""Graph files written by people: YAML or JSON, a whole SubmitGraphRequest or just a graph.

Accepted shapes (proto field names, snake_case or camelCase):

- a SubmitGraphRequest, as in ``examples/*.json``: ``{graph: {...}, inputs: {...}}``;
- a bare Graph: ``{name, nodes, edges, ...}``, with an optional top-level ``inputs`` and
  ``request_id``.

Conveniences on top of proto JSON: ``nodes`` may be a mapping ``id -> node``; ``tool: echo``
stands for ``tool: {name: echo}``; an edge may be the string ``"a -> b"``; a duration may be
a number of seconds (``attempt_timeout: 10``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from dago.v1 import orchestrator_pb2
from dago_client import jsondoc

_DURATIONS = {
    "attempt_timeout",
    "attemptTimeout",
    "initial_backoff",
    "initialBackoff",
    "max_backoff",
    "maxBackoff",
    "deadline",
    "tool_timeout",
    "toolTimeout",
}


class GraphFileError(ValueError):
    """A graph file that cannot be read or does not describe a graph."""


def _durations(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                f"{v}s"
                if k in _DURATIONS and isinstance(v, int | float) and not isinstance(v, bool)
                else _durations(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_durations(v) for v in value]
    return value


def _node(node_id: str | None, spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise GraphFileError(f"{where}: a node must be a mapping, not {type(spec).__name__}")
    node = dict(spec)
    if node_id is not None:
        node.setdefault("id", node_id)
    if isinstance(node.get("tool"), str):
        node["tool"] = {"name": node["tool"]}
    sub = node.get("subgraph")
    if isinstance(sub, dict) and "graph" in sub:
        # A child's graph is written with the same conveniences as the file's own.
        node["subgraph"] = {**sub, "graph": _graph(sub["graph"], f"{where}.subgraph.graph")}
    body = node.get("map")
    if isinstance(body, dict) and isinstance(body.get("node"), dict):
        # A map's body is a node too: the same shorthands.
        node["map"] = {**body, "node": _node(None, body["node"], f"{where}.map.node")}
    if isinstance(body, dict) and isinstance(body.get("graph"), dict):
        # And a map's graph body is a graph, written as the file's own.
        node["map"] = {**node["map"], "graph": _graph(body["graph"], f"{where}.map.graph")}
    return node


def _edge(spec: Any, where: str) -> Any:
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split("->")]
        if len(parts) != 2 or not all(parts):
            raise GraphFileError(f"{where}: an edge string must look like 'a -> b', not {spec!r}")
        return {"from": parts[0], "to": parts[1]}
    return spec


def _graph(graph: Any, where: str) -> dict[str, Any]:
    if not isinstance(graph, dict):
        raise GraphFileError(f"{where}: a graph must be a mapping")
    g = dict(graph)
    nodes = g.get("nodes", [])
    if isinstance(nodes, dict):
        g["nodes"] = [_node(str(k), v, f"{where}.nodes.{k}") for k, v in nodes.items()]
    elif isinstance(nodes, list):
        g["nodes"] = [_node(None, v, f"{where}.nodes[{i}]") for i, v in enumerate(nodes)]
    if isinstance(g.get("edges"), list):
        g["edges"] = [_edge(e, f"{where}.edges[{i}]") for i, e in enumerate(g["edges"])]
    return g


def parse_document(doc: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """A SubmitGraphRequest from a parsed YAML/JSON document (either shape above)."""
    if not isinstance(doc, dict):
        raise GraphFileError("the file must hold a mapping (a graph or a SubmitGraphRequest)")
    if "graph" in doc:
        body = dict(doc)
        body["graph"] = _graph(doc["graph"], "graph")
    elif "nodes" in doc:
        body = {k: doc[k] for k in ("inputs", "request_id", "requestId") if k in doc}
        body["graph"] = _graph({k: v for k, v in doc.items() if k not in body}, "graph")
    else:
        raise GraphFileError("no 'graph' and no 'nodes': this is not a dago graph")
    try:
        return jsondoc.parse(_durations(body), orchestrator_pb2.SubmitGraphRequest())
    except jsondoc.DocumentError as e:
        raise GraphFileError(_listed(e.problems)) from None


def _listed(problems: list[jsondoc.Problem]) -> str:
    """Every problem on its own line, each ``field path: what is wrong``."""
    lines = [f"{p.field}: {p.description}" for p in problems]
    if len(lines) == 1:
        return lines[0]
    return f"{len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines)


def load_request(
    path: str | Path, inputs: Mapping[str, Any] | None = None
) -> orchestrator_pb2.SubmitGraphRequest:
    """Read a graph file (``-`` is stdin); ``inputs`` are merged over the file's inputs."""
    import sys

    p = Path(path)
    try:
        text = sys.stdin.read() if str(path) == "-" else p.read_text()
    except OSError as e:
        raise GraphFileError(f"{path}: {e.strerror or e}") from None
    try:
        doc = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        kind = "JSON" if p.suffix == ".json" else "YAML"
        raise GraphFileError(f"{path}: not valid {kind}: {e}") from None
    try:
        req = parse_document(doc)
    except GraphFileError as e:
        raise GraphFileError(f"{path}: {e}") from None
    if inputs:
        merged = json_format.MessageToDict(req.inputs) if req.HasField("inputs") else {}
        merged.update(inputs)
        req.inputs.Clear()
        req.inputs.update(merged)
    return req


def parse_inputs(pairs: Iterable[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that is valid JSON (``3``, ``true``, ``[1]``) keeps its type,
    anything else is a string. ``k=@file`` reads the value from a file."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise GraphFileError(f"--input {pair!r}: expected key=value")
        if raw.startswith("@"):
            try:
                raw = Path(raw[1:]).read_text()
            except OSError as e:
                raise GraphFileError(f"--input {key}: {e.strerror or e}") from None
            out[key] = raw
            continue
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out
