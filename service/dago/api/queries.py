"""ListGraphs' and GetUsageSummary's arguments, checked: INVALID_ARGUMENT naming the field
for anything wrong, else the history layer's query objects."""

from __future__ import annotations

import math

from google.protobuf import timestamp_pb2

from dago.api import errors, tokens
from dago.api.definitions import check_name
from dago.config import NAMESPACE_NAME
from dago.history.filters import RunFilter
from dago.history.listing import Cursor
from dago.history.usage import GroupBy, UsageQuery
from dago.v1 import execution_pb2, orchestrator_pb2

MAX_METADATA_FILTERS = 16
MAX_FILTER_CHARS = 1024
"""Longest name or metadata entry a filter takes (names are at most this long anyway)."""
_TOKEN_KIND = "g2"
"""Page tokens of ListGraphs: ``g2:<filters digest>:<ms>:<graph id>``."""

_STATE_NAMES = {v: k.removeprefix("GRAPH_STATE_") for k, v in execution_pb2.GraphState.items()}
_GROUPS = {
    orchestrator_pb2.USAGE_GROUP_BY_UNSPECIFIED: GroupBy.NONE,
    orchestrator_pb2.USAGE_GROUP_BY_DAY: GroupBy.DAY,
    orchestrator_pb2.USAGE_GROUP_BY_MODEL: GroupBy.MODEL,
    orchestrator_pb2.USAGE_GROUP_BY_NAMESPACE: GroupBy.NAMESPACE,
    orchestrator_pb2.USAGE_GROUP_BY_GRAPH_NAME: GroupBy.GRAPH_NAME,
}


def _ms(ts: timestamp_pb2.Timestamp, field: str) -> int:
    """A bound in whole milliseconds, rounded up (create times are whole milliseconds, so
    ``>= bound`` and ``< bound`` keep their meaning)."""
    if not 0 <= ts.nanos < 1_000_000_000 or not 0 <= ts.seconds <= 253_402_300_799:
        raise errors.invalid_field(field, "is not a time between 1970 and 9999")
    return ts.seconds * 1000 + -(-ts.nanos // 1_000_000)


def listed_namespace(
    request: orchestrator_pb2.ListGraphsRequest, caller: str, operator: bool
) -> str | None:
    """Whose runs a ListGraphs request lists: the namespace it names, else the caller's (a
    tenant) or every namespace's (None: an operator). A tenant naming another namespace is
    refused, whether that namespace exists or not."""
    named = request.namespace
    if not named:
        return None if operator else caller
    if not NAMESPACE_NAME.fullmatch(named):
        raise errors.invalid_field(
            "namespace", "must be 1-63 letters, digits, _ . or -, starting with a letter or digit"
        )
    if named != caller and not operator:
        raise errors.permission_denied(
            "NAMESPACE_NOT_ALLOWED",
            "namespace",
            f"this API key lists the runs of its own namespace {caller!r} only; another "
            "namespace's need an operator's key (DAGO_OPERATOR_NAMESPACES)",
        )
    return named


def run_filter(request: orchestrator_pb2.ListGraphsRequest, namespace: str | None) -> RunFilter:
    """The filters of a ListGraphs request (``namespace``: whose runs, None for every
    namespace's; see :func:`listed_namespace`)."""
    if request.state not in _STATE_NAMES:
        raise errors.invalid_field("state", f"unknown state {request.state}")
    after = (
        _ms(request.created_after, "created_after") if request.HasField("created_after") else None
    )
    before = (
        _ms(request.created_before, "created_before")
        if request.HasField("created_before")
        else None
    )
    if after is not None and before is not None and after > before:
        raise errors.invalid_field("created_before", "must not be before created_after")
    if len(request.name) > MAX_FILTER_CHARS:
        raise errors.invalid_field("name", f"use at most {MAX_FILTER_CHARS} characters")
    if len(request.metadata) > MAX_METADATA_FILTERS:
        raise errors.invalid_field("metadata", f"use at most {MAX_METADATA_FILTERS} entries")
    pairs: list[tuple[str, str]] = []
    for n, entry in enumerate(request.metadata):
        key, sep, value = entry.partition("=")
        if not sep or not key or len(entry) > MAX_FILTER_CHARS:
            raise errors.invalid_field(
                f"metadata[{n}]",
                f"is not key=value (a non-empty key, at most {MAX_FILTER_CHARS} characters)",
            )
        pairs.append((key, value))
    if not math.isfinite(request.min_cost_usd) or request.min_cost_usd < 0:
        raise errors.invalid_field("min_cost_usd", "must be a finite number, 0 or more")
    for field in ("parent_graph_id", "forked_from"):
        if len(getattr(request, field)) > MAX_FILTER_CHARS:
            raise errors.invalid_field(field, f"use at most {MAX_FILTER_CHARS} characters")
    if request.definition:
        check_name(request.definition, "definition")
    if request.definition_version < 0 or (request.definition_version and not request.definition):
        raise errors.invalid_field(
            "definition_version", "must be a version number, with a definition name"
        )
    state = request.state
    return RunFilter(
        namespace=namespace,
        state=_STATE_NAMES[state] if state else "",
        created_after_ms=after,
        created_before_ms=before,
        name=request.name,
        metadata=tuple(sorted(pairs)),
        min_cost_usd=request.min_cost_usd,
        definition=request.definition,
        definition_version=request.definition_version,
        parent_graph_id=request.parent_graph_id,
        forked_from=request.forked_from,
    )


def page_cursor(token: str, f: RunFilter) -> Cursor | None:
    """Where a ListGraphs page starts: after the position ``token`` names (None: the
    start). A token made under other filters is refused."""
    if not token:
        return None
    digest, ms, graph_id = tokens.decode(token, _TOKEN_KIND, 3)
    if digest != f.digest():
        raise errors.invalid_field(
            "page_token", "was made for other filters: send the same filters with a token"
        )
    return tokens.decode_int(ms), graph_id


def page_token(cursor: Cursor | None, f: RunFilter) -> str:
    """The token of the page after ``cursor`` (empty: no more pages)."""
    return tokens.encode(_TOKEN_KIND, f.digest(), *cursor) if cursor is not None else ""


def usage_query(
    request: orchestrator_pb2.GetUsageSummaryRequest, namespace: str | None
) -> UsageQuery:
    """The range and grouping of a GetUsageSummary request (``namespace``: the caller's
    scope, None for every namespace)."""
    start = _ms(request.start_time, "start_time") if request.HasField("start_time") else None
    end = _ms(request.end_time, "end_time") if request.HasField("end_time") else None
    if start is not None and end is not None and start > end:
        raise errors.invalid_field(
            "end_time", "must not be before start_time (REST: `to` before `from`)"
        )
    group = _GROUPS.get(request.group_by)
    if group is None:
        raise errors.invalid_field("group_by", f"unknown grouping {request.group_by}")
    return UsageQuery(start_ms=start, end_ms=end, group_by=group, namespace=namespace)
