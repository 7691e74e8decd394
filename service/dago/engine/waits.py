"""The rules of a wait node's signals that the API and the workers share: which decisions a
wait allows and whether a payload satisfies its schema (``dago.nodes.wait`` is the kind)."""

from __future__ import annotations

import json
from typing import Any

from dago.engine.fields import clip
from dago.engine.output_schema import validation_error
from dago.v1 import graph_pb2

DEFAULT_DECISIONS = ("approve", "reject")
"""The decisions of a wait that lists none."""


def decisions_of(spec: graph_pb2.WaitNode) -> list[str]:
    """The decisions a signal to this wait may carry (the default when none are listed)."""
    return list(spec.decisions) or list(DEFAULT_DECISIONS)


def payload_schema_of(spec: graph_pb2.WaitNode) -> dict[str, Any] | bool | None:
    """The payload's JSON Schema (checked at submit), or None when any payload goes."""
    if not spec.payload_schema:
        return None
    schema: dict[str, Any] | bool = json.loads(spec.payload_schema)
    return schema


def payload_problem(spec: graph_pb2.WaitNode, payload: Any) -> str | None:
    """How ``payload`` breaks the wait's payload schema (with its location), or None."""
    schema = payload_schema_of(spec)
    if schema is None:
        return None
    problem = validation_error(schema, payload)
    if problem is None:
        return None
    return f"does not match the node's payload_schema {clip(problem)}"
