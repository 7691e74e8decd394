"""What a request's free text and numbers must be before anything else is done with them.

**Free text is bounded.** A graph's name is listed by ListGraphs and logged at submit; its
description, node names and descriptions, route descriptions (which model-driven routers
send to the model), edge labels, map keys (output names) and model names are stored with the
run and returned by GetGraph, statuses and errors. Each has a length limit
(:data:`TEXT_LIMITS`), and ``graph.metadata`` a size as JSON (:data:`MAX_METADATA_BYTES`): a
3 MB name must not make every ListGraphs page of its namespace fail. Identifiers have their
own patterns, always full matches (node ids in ``dago.engine.compile``, route names in the
router kind). Templates, prompts and other CEL are bounded by the compiler.

**Numbers are finite.** JSON, in which dago stores inputs and outputs and REST shows every
message, has no NaN or Infinity: a Struct holding one cannot be stored, and a message
holding one cannot be shown through the REST edge. :func:`first_non_finite` finds the first
such number among a message's Struct values with its field path (plain ``double`` fields
have range checks of their own, which refuse NaN and Infinity too).

:func:`clip` shortens a client's string before an error message or a log line quotes it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from dago.engine.checker import Checker
from dago.store.values import dumps, to_plain
from dago.v1 import graph_pb2

MAX_NAME = 256
"""Names and labels: ``graph.name``, ``nodes[i].name``, ``edges[i].label``."""
MAX_DESCRIPTION = 4096
"""Descriptions: ``graph.description``, ``nodes[i].description``, route descriptions."""
MAX_KEY = 128
"""Keys of the ``output`` maps (graph and nodes)."""
MAX_MODEL = 256
"""``llm.model`` and ``llm.provider`` (model ids, even a cloud's ARNs, are shorter)."""
MAX_METADATA_BYTES = 16 * 1024
"""``graph.metadata`` as compact JSON."""
CLIP = 80
"""How much of a client's string an error message or a log line quotes."""

TEXT_LIMITS = {
    "graph.name": MAX_NAME,
    "graph.description": MAX_DESCRIPTION,
    "graph.output keys": MAX_KEY,
    "nodes[i].name": MAX_NAME,
    "nodes[i].description": MAX_DESCRIPTION,
    "nodes[i].output keys": MAX_KEY,
    "nodes[i].<llm>.model": MAX_MODEL,
    "nodes[i].<llm>.provider": MAX_MODEL,
    "nodes[i].router.routes[j].description": MAX_DESCRIPTION,
    "edges[i].label": MAX_NAME,
}
"""Every bound checked by :func:`check_text`, by field (documented in docs/security.md)."""


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` cut to ``limit`` characters (``…`` and the length added when cut)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def quote(text: str, limit: int = CLIP) -> str:
    """``text`` clipped and in double quotes, control characters escaped (``"a\\n"``)."""
    return json.dumps(clip(text, limit), ensure_ascii=False)


def first_non_finite(msg: Message, path: str) -> str | None:
    """The field path of the first NaN or ±Infinity among the Struct and Value numbers in
    ``msg`` (a Struct, a Value or any message, searched through its set fields), or None.
    Plain ``double`` fields are not looked at: each has a range check of its own."""
    kind = msg.DESCRIPTOR.full_name
    if kind == "google.protobuf.Struct":
        for key, value in msg.fields.items():  # type: ignore[attr-defined]
            found = first_non_finite(value, f"{path}.{clip(key, 64)}")
            if found is not None:
                return found
        return None
    if kind == "google.protobuf.ListValue":
        for i, value in enumerate(msg.values):  # type: ignore[attr-defined]
            found = first_non_finite(value, f"{path}[{i}]")
            if found is not None:
                return found
        return None
    if kind == "google.protobuf.Value":
        which = msg.WhichOneof("kind")
        if which == "number_value":
            return None if math.isfinite(msg.number_value) else path  # type: ignore[attr-defined]
        if which in ("struct_value", "list_value"):
            return first_non_finite(getattr(msg, which), path)
        return None
    for fd, value in msg.ListFields():
        at = f"{path}.{fd.name}"
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            entry = fd.message_type
            assert entry is not None
            if entry.GetOptions().map_entry:
                entries = value.items()
                if entry.fields_by_name["value"].type != FieldDescriptor.TYPE_MESSAGE:
                    continue  # map<string, string>: no numbers
                for key, sub in entries:
                    found = first_non_finite(sub, f"{at}[{clip(str(key), 64)}]")
                    if found is not None:
                        return found
            elif _repeated(fd):
                for i, sub in enumerate(value):
                    found = first_non_finite(sub, f"{at}[{i}]")
                    if found is not None:
                        return found
            else:
                found = first_non_finite(value, at)
                if found is not None:
                    return found
    return None


def _repeated(fd: FieldDescriptor) -> bool:
    return bool(fd.is_repeated)


NOT_FINITE = (
    "must be a finite number: JSON, in which dago stores and shows values, has no NaN or Infinity"
)


def check_text(
    graph: graph_pb2.Graph, chk: Checker, root: str, max_nodes: int, max_edges: int
) -> None:
    """Record every free-text field of ``graph`` over its bound (:data:`TEXT_LIMITS`) and a
    ``metadata`` too large. Only the first ``max_nodes`` nodes and ``max_edges`` edges are
    looked at: a graph with more is refused for that."""
    _bound(chk, f"{root}.name", graph.name, MAX_NAME)
    _bound(chk, f"{root}.description", graph.description, MAX_DESCRIPTION)
    _keys(chk, f"{root}.output", graph.output)
    if graph.HasField("metadata"):
        size = len(dumps(to_plain(graph.metadata)).encode())
        if size > MAX_METADATA_BYTES:
            chk.add(
                f"{root}.metadata",
                f"is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}: keep large data "
                "in inputs or elsewhere",
            )
    for i, node in enumerate(graph.nodes[:max_nodes]):
        path = f"{root}.nodes[{i}]"
        _bound(chk, f"{path}.name", node.name, MAX_NAME)
        _bound(chk, f"{path}.description", node.description, MAX_DESCRIPTION)
        _keys(chk, f"{path}.output", node.output)
        kind = node.WhichOneof("kind")
        llm = {
            "llm": node.llm,
            "agent": node.agent.llm,
            "router": node.router.llm,
        }.get(kind or "")
        if llm is not None:
            at = f"{path}.llm" if kind == "llm" else f"{path}.{kind}.llm"
            _bound(chk, f"{at}.model", llm.model, MAX_MODEL)
            _bound(chk, f"{at}.provider", llm.provider, MAX_MODEL)
        if kind == "router":
            for j, route in enumerate(node.router.routes):
                at = f"{path}.router.routes[{j}].description"
                _bound(chk, at, route.description, MAX_DESCRIPTION)
    for i, edge in enumerate(graph.edges[:max_edges]):
        _bound(chk, f"{root}.edges[{i}].label", edge.label, MAX_NAME)


def _bound(chk: Checker, path: str, text: str, limit: int) -> None:
    if len(text) > limit:
        chk.add(path, f"is {len(text)} characters; the limit is {limit}")


def _keys(chk: Checker, path: str, mapping: Iterable[str]) -> None:
    for key in mapping:
        if len(key) > MAX_KEY:
            chk.add(f"{path}[{clip(key, 64)}]", f"an output name is at most {MAX_KEY} characters")
