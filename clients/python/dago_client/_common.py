"""What the async and the sync client share: request building, states, backoff, and the
two ways of reading a watch stream (the one piece each transport writes its own way; the
sync client is generated from the async one: ``dago.devtools.unasync``)."""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, overload

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from dago_client.errors import DagoError

OnResume = Callable[[int, int, DagoError], None]
"""Called before a watch resumes: (after_seq, consecutive failures, the error)."""

# Payload kinds that end a run's event stream.
TERMINAL_EVENTS = frozenset({"graph_completed", "graph_failed", "graph_cancelled"})
TERMINAL_STATES = frozenset(
    {
        execution_pb2.GRAPH_STATE_COMPLETED,
        execution_pb2.GRAPH_STATE_FAILED,
        execution_pb2.GRAPH_STATE_CANCELLED,
    }
)
# A watch that fails with one of these is resumed from its last seq: a dropped connection, a
# restarted API or proxy, a stream cut by a timeout. The others (NOT_FOUND...) are final.
RESUMABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)

# Tighter reconnects than gRPC's default (1 s growing to 120 s): a watch resumes soon after
# its server is back.
RECONNECT_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def parse_state(state: str | int | None) -> execution_pb2.GraphState.ValueType:
    """A GraphState from its number or name, any case, prefix optional ("completed")."""
    if state is None or state == "":
        return execution_pb2.GRAPH_STATE_UNSPECIFIED
    if isinstance(state, int):
        return execution_pb2.GraphState.ValueType(state)
    name = state.strip().upper()
    if not name.startswith("GRAPH_STATE_"):
        name = "GRAPH_STATE_" + name
    try:
        return execution_pb2.GraphState.Value(name)
    except ValueError:
        names = [n.removeprefix("GRAPH_STATE_").lower() for n in execution_pb2.GraphState.keys()]  # noqa: SIM118
        raise ValueError(f"unknown state {state!r}; one of {', '.join(names[1:])}") from None


@dataclass(frozen=True, kw_only=True)
class RunFilters:
    """ListGraphs' filters besides the state (docs/history.md): creation time range
    ``[created_after, created_before)``, exact graph name, metadata fields equal to values,
    a minimum cost. Naive datetimes are taken as UTC."""

    created_after: datetime | None = None
    created_before: datetime | None = None
    name: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    min_cost_usd: float = 0.0
    definition: str = ""
    """Only runs submitted from this stored definition (its name)."""
    definition_version: int = 0
    """With ``definition``: only runs of this version (0: any)."""
    parent_graph_id: str = ""
    """Only the child runs this run's subgraph nodes started."""
    forked_from: str = ""
    """Only the runs forked from this run (ForkGraph), live or archived."""
    namespace: str = ""
    """Only runs of this namespace. An operator's key may name any namespace, and lists every
    namespace's runs without one; a tenant's key lists its own namespace only (naming
    another is PermissionDeniedError)."""

    def request(
        self, state: str | int | None, page_size: int, page_token: str
    ) -> orchestrator_pb2.ListGraphsRequest:
        """The ListGraphs request of one page with these filters."""
        req = orchestrator_pb2.ListGraphsRequest(
            page_size=page_size,
            page_token=page_token,
            state=parse_state(state),
            name=self.name,
            metadata=[f"{k}={v}" for k, v in self.metadata.items()],
            min_cost_usd=self.min_cost_usd,
            definition=self.definition,
            definition_version=self.definition_version,
            parent_graph_id=self.parent_graph_id,
            forked_from=self.forked_from,
            namespace=self.namespace,
        )
        if self.created_after is not None:
            req.created_after.FromDatetime(_utc(self.created_after))
        if self.created_before is not None:
            req.created_before.FromDatetime(_utc(self.created_before))
        return req


def with_namespace(filters: RunFilters | None, namespace: str) -> RunFilters:
    """``filters`` (none: no filter) with ``namespace`` as its namespace when set."""
    filters = filters or RunFilters()
    return replace(filters, namespace=namespace) if namespace else filters


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


_GROUP_NAMES = list(orchestrator_pb2.UsageGroupBy.DESCRIPTOR.values_by_name)


def parse_group_by(group_by: str | int | None) -> orchestrator_pb2.UsageGroupBy.ValueType:
    """A UsageGroupBy from its number or name, any case, prefix optional ("day")."""
    if group_by is None or group_by == "":
        return orchestrator_pb2.USAGE_GROUP_BY_UNSPECIFIED
    if isinstance(group_by, int):
        return orchestrator_pb2.UsageGroupBy.ValueType(group_by)
    name = group_by.strip().upper().replace("-", "_")
    if not name.startswith("USAGE_GROUP_BY_"):
        name = "USAGE_GROUP_BY_" + name
    try:
        return orchestrator_pb2.UsageGroupBy.Value(name)
    except ValueError:
        names = [n.removeprefix("USAGE_GROUP_BY_").lower() for n in _GROUP_NAMES]
        raise ValueError(f"unknown grouping {group_by!r}; one of {', '.join(names[1:])}") from None


def usage_request(
    start: datetime | None, end: datetime | None, group_by: str | int | None
) -> orchestrator_pb2.GetUsageSummaryRequest:
    """GetUsageSummary's request: the runs created in ``[start, end)``, grouped."""
    req = orchestrator_pb2.GetUsageSummaryRequest(group_by=parse_group_by(group_by))
    if start is not None:
        req.start_time.FromDatetime(_utc(start))
    if end is not None:
        req.end_time.FromDatetime(_utc(end))
    return req


def state_name(state: int) -> str:
    """``GRAPH_STATE_COMPLETED`` -> ``completed``."""
    return (
        execution_pb2.GraphState.Name(execution_pb2.GraphState.ValueType(state))
        .removeprefix("GRAPH_STATE_")
        .lower()
    )


def node_state_name(state: int) -> str:
    """``NODE_STATE_RUNNING`` -> ``running``."""
    return (
        execution_pb2.NodeState.Name(execution_pb2.NodeState.ValueType(state))
        .removeprefix("NODE_STATE_")
        .lower()
    )


def submit_request(
    graph: orchestrator_pb2.SubmitGraphRequest | graph_pb2.Graph | None,
    inputs: Mapping[str, Any] | None,
    request_id: str | None,
    validate_only: bool,
    definition: str | None = None,
    allow_deprecated: bool = False,
    priority: int = 0,
) -> orchestrator_pb2.SubmitGraphRequest:
    """The SubmitGraphRequest to send (a graph, or a ``definition`` reference such as
    ``name@prod``; ``priority`` 1-5 orders the run's work within its namespace, 0 keeps the
    request's or the server's default, 3). Without a request_id one is generated, so that
    the call is idempotent and can be retried safely when the server was unreachable."""
    req = orchestrator_pb2.SubmitGraphRequest()
    if isinstance(graph, orchestrator_pb2.SubmitGraphRequest):
        req.CopyFrom(graph)
    elif graph is not None:
        req.graph.CopyFrom(graph)
    elif not definition:
        raise ValueError("give a graph or a definition")
    if definition:
        req.definition = definition
    if allow_deprecated:
        req.allow_deprecated = True
    if priority:
        req.priority = priority
    if inputs:
        merged = struct_pb2.Struct()
        merged.update(dict(req.inputs.items()) if req.HasField("inputs") else {})
        merged.update(dict(inputs))
        req.inputs.CopyFrom(merged)
    if request_id is not None:
        req.request_id = request_id
    if validate_only:
        req.validate_only = True
    elif not req.request_id:
        req.request_id = f"py-{uuid.uuid4().hex}"
    return req


def fork_request(
    graph_id: str,
    from_nodes: Sequence[str] = (),
    failed_only: bool = False,
    node_patches: Mapping[str, Any] | None = None,
    inputs_patch: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    request_id: str | None = None,
) -> orchestrator_pb2.ForkGraphRequest:
    """The ForkGraphRequest to send: ``node_patches`` maps node ids to partial nodes (a
    ``graph_pb2.Node`` or its JSON form). Without a request_id (and not a dry run) one is
    generated, so a retry after a lost answer returns the same new run."""
    req = orchestrator_pb2.ForkGraphRequest(
        graph_id=graph_id, from_nodes=list(from_nodes), failed_only=failed_only, dry_run=dry_run
    )
    for nid, patch in (node_patches or {}).items():
        if isinstance(patch, graph_pb2.Node):
            req.node_patches[nid].CopyFrom(patch)
        else:
            json_format.ParseDict(patch, req.node_patches[nid])
    if inputs_patch is not None:
        req.inputs_patch.update(dict(inputs_patch))
    if request_id is not None:
        req.request_id = request_id
    elif not dry_run:
        req.request_id = f"py-{uuid.uuid4().hex}"
    return req


def split_reference(name: str, version: str | int = "latest") -> tuple[str, str]:
    """``name@v`` -> (name, v); else (name, version as text)."""
    if "@" in name:
        name, _, selector = name.partition("@")
        return name, selector
    return name, str(version)


def signal_request(
    graph_id: str,
    node_id: str,
    decision: str,
    payload: Any,
    comment: str,
    signal_id: str | None,
    iteration: int,
    tool_call_id: str = "",
) -> orchestrator_pb2.SignalGraphRequest:
    """The SignalGraphRequest to send. Without a signal_id one is generated, so that a retry
    after a lost answer is the same signal (it gets the first answer, not ABORTED)."""
    req = orchestrator_pb2.SignalGraphRequest(
        graph_id=graph_id,
        node_id=node_id,
        decision=decision,
        comment=comment,
        iteration=iteration,
        signal_id=signal_id if signal_id is not None else f"py-{uuid.uuid4().hex}",
        tool_call_id=tool_call_id,
    )
    if payload is not None:
        json_format.ParseDict(payload, req.payload)
    return req


def run_request(
    graph: orchestrator_pb2.SubmitGraphRequest | graph_pb2.Graph | None,
    inputs: Mapping[str, Any] | None,
    request_id: str | None,
    definition: str | None = None,
    allow_deprecated: bool = False,
    priority: int = 0,
) -> orchestrator_pb2.RunGraphRequest:
    """The RunGraphRequest to send (batch mode): the SubmitGraphRequest ``submit_request``
    builds (a graph or a ``definition`` reference), with its generated request_id, so that
    resending it names the same run."""
    sub = submit_request(graph, inputs, request_id, False, definition, allow_deprecated, priority)
    req = orchestrator_pb2.RunGraphRequest(
        inputs=sub.inputs,
        request_id=sub.request_id,
        batch=True,
        definition=sub.definition,
        allow_deprecated=sub.allow_deprecated,
        priority=sub.priority,
    )
    if sub.HasField("graph"):
        req.graph.CopyFrom(sub.graph)
    return req


def events_of(msg: orchestrator_pb2.WatchGraphResponse) -> Sequence[execution_pb2.Event]:
    """The events of a WatchGraph or RunGraph message: several in batch mode, else one."""
    return msg.events if len(msg.events) else (msg.event,)


async def read_stream_async(
    call: Any, idle_timeout_s: float | None
) -> AsyncIterator[orchestrator_pb2.WatchGraphResponse]:
    """The messages of a grpc.aio WatchGraph or RunGraph call; TimeoutError when none comes
    for ``idle_timeout_s`` (None or 0: no limit). Time spent by the consumer between two
    messages does not count."""
    while True:
        if idle_timeout_s:
            msg = await asyncio.wait_for(call.read(), idle_timeout_s)
        else:
            msg = await call.read()
        if msg is grpc.aio.EOF:
            return
        assert isinstance(msg, orchestrator_pb2.WatchGraphResponse)
        yield msg


def read_stream(
    call: Any, idle_timeout_s: float | None
) -> Iterator[orchestrator_pb2.WatchGraphResponse]:
    """The messages of a blocking WatchGraph or RunGraph call; TimeoutError when none comes
    for ``idle_timeout_s`` (None or 0: no limit). A blocking read cannot time out, so a
    timer, armed again at each message, cancels a quiet call."""
    idle = threading.Event()
    timer: threading.Timer | None = None

    def expire() -> None:
        idle.set()
        call.cancel()

    def arm() -> None:
        nonlocal timer
        if timer is not None:
            timer.cancel()
        if idle_timeout_s:
            timer = threading.Timer(idle_timeout_s, expire)
            timer.daemon = True
            timer.start()

    try:
        arm()
        for msg in call:
            arm()
            yield msg
    except grpc.RpcError:
        if not idle.is_set():
            raise
        raise TimeoutError(f"no message for {idle_timeout_s}s") from None
    finally:
        if timer is not None:
            timer.cancel()


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Delay before retry ``attempt`` (1-based): exponential with full jitter on top half."""
    base = min(initial * (2.0 ** (attempt - 1)), maximum)
    return float(base / 2 + random.random() * base / 2)


@overload
def to_dict(message: struct_pb2.Value | struct_pb2.ListValue) -> Any: ...
@overload
def to_dict(message: Message) -> dict[str, Any]: ...
def to_dict(message: Message) -> Any:
    """A message as plain Python values: ``to_dict(result.output)`` -> ``{"summary": "..."}``.

    Made for the ``google.protobuf.Struct`` outputs and inputs of runs, and the
    ``google.protobuf.Value`` outputs of nodes (``dict(struct)`` keeps nested ``Struct`` and
    ``ListValue`` messages, and ``json_format.MessageToDict`` turns every number into a float):
    nested values become dicts, lists, str, bool and None, and whole numbers come back as
    ``int`` (a Struct stores every number as a double, so ``3`` would read ``3.0``). A ``Value``
    gives whatever it holds (a dict, a list, a string...). Any other message gives a dict with
    the proto's field names, as the REST API prints them.
    """
    return _whole_numbers(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _whole_numbers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value
