"""The rules of a wait node's signals that the API and the workers share: which decisions a
wait allows and whether a payload satisfies its schema (``dago.nodes.wait`` is the kind)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from dago.engine.fields import clip
from dago.engine.output_schema import validation_error
from dago.v1 import graph_pb2

DEFAULT_DECISIONS = ("approve", "reject")
"""The decisions of a wait that lists none."""


AGENT_DECISIONS = ("approve", "reject", "edit")
"""The decisions of an agent's tool call waiting for approval (``edit``: the payload is the
arguments to run the tool with)."""


def needs_approval(patterns: Sequence[str], tool: str) -> bool:
    """Whether a call of ``tool`` (the graph's name: ``http``, ``srv/read``) waits for
    approval under an agent's ``approval_required_tools`` (names or glob patterns)."""
    return any(fnmatchcase(tool, p) for p in patterns)


def pattern_covers(pattern: str, tool_entry: str) -> bool:
    """Whether ``pattern`` can match a tool an agent's ``tools`` entry names (``srv/*``
    stands for every tool of server ``srv``, known only when the node runs)."""
    if fnmatchcase(tool_entry, pattern) or pattern == tool_entry:
        return True
    return tool_entry.endswith("/*") and pattern.startswith(tool_entry[:-1])


def edited_arguments_problem(schema: Any, payload: Any) -> str | None:
    """How an ``edit`` decision's payload fails as a tool's arguments (an object matching the
    tool's input schema, the wait's payload_schema), or None."""
    if not isinstance(payload, dict):
        return "an edit's payload is the tool call's arguments: a JSON object"
    if not isinstance(schema, dict | bool):
        return None
    try:
        problem = validation_error(schema, payload)
    except Exception:  # a tool schema jsonschema cannot use: the tool checks its arguments
        return None
    return f"does not match the tool's input schema {clip(problem)}" if problem else None


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
