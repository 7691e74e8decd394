"""The contract with dago's Redis functions: the library, and one typed form of every
function's arguments and reply.

Every state transition of a graph is one call of a function of the library in ``lua/``
(loaded with FUNCTION LOAD, called with FCALL), atomic in Redis. A call names its shards
as KEYS (their work streams, which route it on a cluster); ARGV are the function's own
arguments, built here from the types below in the order of their fields. The Lua reads
them by the same positions: ``make gen`` renders the layouts of these types into
``lua/prelude.lua`` (``ARG`` and ``ITEM``), with the states, error classes and event
kinds of the proto and the stored names of :mod:`dago.store.schema`. Replies are parsed
here, and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

from redis.exceptions import ResponseError

from dago.config import ModelRateLimit
from dago.store.keys import ShardKeys
from dago.store.schema import Error, Wait
from dago.store.values import dumps

Arg = str | bytes | int | float

Reply = object
"""A function call's raw reply (what the parsers above take apart), or, from
``Library.call_each``, the error that call got instead."""


def _flat(
    fixed: tuple[Any, ...], items: Sequence[tuple[Any, ...]], extra: Sequence[Arg] = ()
) -> list[Arg]:
    """A call's arguments: its fixed ones, then each item's fields in order, then ``extra``."""
    args: list[Arg] = [*fixed]
    for item in items:
        args.extend(item)
    args.extend(extra)
    return args


"""One argument of a function call."""

LUA = Path(__file__).parent / "lua"
SHARED = ("prelude", "core", "fair", "budget", "graph", "map", "attempts", "waits", "children")
"""The library's shared code, in load order (each entry script is a function's body)."""


class Outcome(StrEnum):
    """How an attempt ended, as its worker reports it (the retry rule is the function's)."""

    OK = "ok"
    ERROR = "error"
    WAIT = "wait"
    """A wait node found no decision for its iteration: its ``Result.output`` is the wait
    (``wait_arg``), reported with ``wait`` instead of ``apply``."""
    SPAWN = "spawn"
    """A subgraph node found no child outcome for its attempt: it starts its child run
    (``Spawning``), reported with ``spawn`` instead of ``apply``."""
    EXPAND = "expand"
    """A map node's first start evaluated its items: reported with ``expand`` (``Expanding``)."""


# --- arguments --------------------------------------------------------------------------


class ReusedNode(NamedTuple):
    """One node of a fork written finished at submit (``SubmitArgs.reused``: a JSON array
    ``[node, skipped, output JSON, taken edges]``, as submit.lua reads it)."""

    node: str
    skipped: bool
    output: str
    """The recorded output (JSON text)."""
    taken: str
    """The recorded taken edges (``schema.Node.NEXT``)."""


class SubmitArgs(NamedTuple):
    """``submit``: create a run and dispatch its entry nodes; then the topology's
    field/value pairs."""

    graph_id: str
    request_id: str
    body_hash: str
    name: str
    definition: bytes
    inputs: bytes
    """JSON."""
    node_ids: str
    """JSON list."""
    start_plans: str
    """JSON list: each node's start plan, in the order of ``node_ids``."""
    entries: str
    """JSON list."""
    max_steps: int
    max_tokens: int
    max_cost: str
    """``repr`` of the float (no precision lost)."""
    deadline_ms: int
    retention_s: int
    namespace: str
    max_events: int
    max_bytes: int
    traceparent: str
    archive: int
    """1: queue the run for the archiver when it ends, and keep it until ``archived``."""
    forked_from: str = ""
    """The run this one is forked from (ForkGraph), or empty."""
    reused: str = "[]"
    """JSON list of ``ReusedNode`` (ForkGraph): nodes written finished at submit, their
    outgoing edges resolved as recorded; in topological order."""
    def_name: str = ""
    """The definition the run was submitted from (empty: a graph sent whole)."""
    def_version: int = 0
    def_digest: str = ""
    priority: int = 3
    """The run's priority (``schema.Fair``: 1-5, higher first within its namespace)."""
    on_exceed: int = 0
    """``GraphLimits.on_exceed`` (a ``LimitAction``)."""
    warn_share: str = "0.8"
    """``GraphLimits.warn_share`` (``repr``; 0.8 when the graph set none)."""
    max_active: int = -1
    """How many runs of the namespace may be active (SUBMITTED or RUNNING) on the run's
    shard, this one not counted: the namespace's cap less its active runs on the other
    shards. The function counts the shard's in the same step as it creates the run, and
    refuses it (``quota``) at that many; -1: no cap."""


class PublishArgs(NamedTuple):
    """Arguments of ``publish`` (keys: the namespace's ``DefinitionKeys.names`` and the
    definition's hash)."""

    name: str
    digest: str
    record: bytes
    max_names: int
    """Names the namespace may hold: a new name past it is refused (``names``)."""
    max_versions: int
    """Versions one name may hold: one more is refused (``versions``)."""


class TakeArgs(NamedTuple):
    """``take``: start up to ``want`` new work items of the call's shards, in their order."""

    worker: str
    want: int
    lease_ms: int


class ApplyArgs(NamedTuple):
    """``apply``: apply finished attempts (``Result`` items follow) of the call's shard and,
    unless ``want`` is 0, start that many new work items of the shard in the same step."""

    worker: str
    want: int
    lease_ms: int


class Result(NamedTuple):
    """One finished attempt, for ``apply``. A failed one carries the facts (its error and
    any retry-after); whether it is retried is decided by the function, from the node's
    retry policy in the topology: the same rule as for timeouts found by ``sweep``."""

    msg_id: bytes
    graph_id: str
    node: str
    attempt: int
    iteration: int
    execution: int
    input: str
    """The rendered input (JSON), or ""."""
    outcome: str
    """An ``Outcome``."""
    output: str
    """JSON, or "" when it failed."""
    taken: str
    """Indexes of the outgoing edges taken, comma-separated."""
    usage: str
    """``usage_arg()``, or ""."""
    route: str
    """A router's decision (JSON), or ""."""
    error: str
    """``{c, m, r}`` (JSON), or ""."""
    retry_after_ms: int
    """What a downstream service asked to wait before a retry (0: nothing)."""
    deliveries: int = 0
    """0 for an item its delivery started (the usual). For an item delivered unstarted
    (``WorkItem.started`` False: an inline node), its delivery count: ``apply`` then starts
    the attempt (fenced on its node still queued) and completes it in the same step."""


class ReclaimArgs(NamedTuple):
    """``reclaim``: take over the pending work items named (``Claim`` items follow) that are
    still idle past ``min_idle_ms``, and start them for ``worker``; items delivered more
    than ``max_deliveries`` times are dead-lettered instead."""

    worker: str
    min_idle_ms: int
    max_deliveries: int
    lease_ms: int


class Claim(NamedTuple):
    """One pending work item to take over."""

    msg_id: bytes


class RenewArgs(NamedTuple):
    """``renew``: reset the idle time of the items (``Renewal`` items follow) a worker still
    runs, and put their attempts' deadlines on the timers."""

    worker: str


class Renewal(NamedTuple):
    """One running execution whose lease is renewed (only while it is the current one)."""

    msg_id: bytes
    graph_id: str
    node: str
    iteration: int
    attempt: int
    execution: int


class AppendArgs(NamedTuple):
    """``append``: events of a running attempt (``EventArg`` items follow), fenced on it."""

    graph_id: str
    node: str
    attempt: int
    iteration: int
    execution: int


class EventArg(NamedTuple):
    """One event to append: its kind (an Event payload field name) and detail (JSON)."""

    kind: str
    detail: str


class CancelArgs(NamedTuple):
    """``cancel``: end a graph as cancelled."""

    graph_id: str
    reason: str


class SweepArgs(NamedTuple):
    """``sweep``: apply up to ``limit`` due timers of the shard."""

    limit: int


class ArchivedArgs(NamedTuple):
    """``archived``: the run is in PostgreSQL; leave the archive queue and expire as a run
    not archived does (from now, after its retention)."""

    graph_id: str


class SeedArgs(NamedTuple):
    """``seed``: copy the completed items of maps of run ``source`` into the item hashes of
    its fork ``graph_id`` (not submitted yet, on the same shard) as seeds
    (``schema.MapItems.SEEDS``), expiring after ``ttl_s`` unless the fork's expand takes them
    over (``SeedMap`` items follow: the maps' item ranges)."""

    source: str
    graph_id: str
    ttl_s: int


class SeedMap(NamedTuple):
    """A range of the items of a map node whose completed items a fork reuses."""

    node: str
    first: int
    span: int


class DeadLetterArgs(NamedTuple):
    """``deadletter``: ``requeue`` or ``drop`` one dead letter."""

    op: str
    entry_id: str


class WaitArgs(NamedTuple):
    """``wait``: put wait nodes into WAITING (``Waiting`` items follow), fenced on their
    attempts' executions; their work items are acked."""

    worker: str


class Waiting(NamedTuple):
    """One wait node's attempt that found no decision recorded for its iteration."""

    msg_id: bytes
    graph_id: str
    node: str
    attempt: int
    iteration: int
    execution: int
    input: str
    """The rendered input (JSON), or ""."""
    wait: str
    """``wait_arg()``: the rendered prompt and display, the decisions, the payload schema and
    the timeout decision (JSON object)."""
    timeout_ms: int
    """0: no timeout."""
    saved: str = ""
    """What the node keeps while it waits (an agent's conversation, JSON), or ""."""


class Spawning(NamedTuple):
    """``spawn``: a subgraph node's attempt that starts its child run and parks the node
    (WAITING, its work item acked), fenced on the attempt's execution; the child's topology
    field/value pairs follow. The child lives on the parent's shard; its namespace,
    retention, event and byte limits, archiving and trace come from the parent, its deadline
    is the sooner of its own and the parent's."""

    worker: str
    max_depth: int
    """DAGO_MAX_GRAPH_DEPTH: a child deeper than this fails the attempt (not retried)."""
    msg_id: bytes
    graph_id: str
    """The parent run."""
    node: str
    attempt: int
    iteration: int
    execution: int
    instance: str
    """The parent node run's instance (a map item; "" for a subgraph node)."""
    input: str
    """The rendered input (JSON): the child's inputs."""
    child_id: str
    """A fresh id on the parent's shard (used only when the attempt has no child yet)."""
    name: str
    definition: bytes
    node_ids: str
    start_plans: str
    entries: str
    max_steps: int
    max_tokens: int
    max_cost: str
    deadline_ms: int
    def_name: str
    def_version: int
    def_digest: str


@dataclass(frozen=True)
class Spawn:
    """A subgraph node's attempt that starts its child run, as the worker reports it: the
    ``spawn`` arguments and the child's topology (field/value pairs)."""

    args: Spawning
    topology: Mapping[str, str]

    @property
    def msg_id(self) -> bytes:
        """The attempt's work item."""
        return self.args.msg_id


class ExpandArgs(NamedTuple):
    """``expand``: a map node's first start evaluated its items; store them, park the node
    (its work item is acked) and dispatch the first items. The items' values (JSON text,
    one argument each) follow."""

    worker: str
    msg_id: bytes
    graph_id: str
    node: str
    attempt: int
    iteration: int
    execution: int
    input: str
    """The rendered input (JSON), or ""."""
    max_concurrency: int
    on_failure: int
    """A ``MapFailurePolicy`` (UNSPECIFIED is FAIL_FAST)."""
    max_failures: int
    body_plan: str
    """The body's start plan with ``@`` in place of an item's value ref
    (``dago.engine.topology.item_plan``)."""


class Expanding(NamedTuple):
    """A map node's first attempt that evaluated its items (reported with ``expand``)."""

    args: ExpandArgs
    items: list[str]
    """Each item's value, JSON."""

    @property
    def msg_id(self) -> bytes:
        """The work item's id (as ``Result.msg_id``)."""
        return self.args.msg_id


class ThrottleArgs(NamedTuple):
    """``throttle``: put attempts a model rate limit refused back in QUEUED until their
    not-before time (``ThrottledAttempt`` items follow), fenced on their executions; their work
    items are acked, and the attempt is not consumed (``lua/throttle.lua``)."""

    worker: str


class ThrottledAttempt(NamedTuple):
    """One attempt whose model call found no capacity in its model's bucket."""

    msg_id: bytes
    graph_id: str
    node: str
    attempt: int
    iteration: int
    execution: int
    input: str
    """The rendered input (JSON), or ""."""
    wait_ms: int
    """How long until the bucket has room (the node is queued again then)."""
    detail: str
    """node_throttled's details (JSON: provider, model, wait_ms, reason)."""


class RateOp(StrEnum):
    """What a ``ratelimit`` call does to a model's bucket."""

    RESERVE = "reserve"
    """Take ``RateLimitArgs``' amounts if every measure has room (else nothing, and the
    wait until it has)."""
    SETTLE = "settle"
    """Give back the amounts (what was reserved and not used; negative: used beyond)."""
    PAUSE = "pause"
    """Nothing is granted for ``pause_ms`` (a provider's 429 retry-after)."""
    READ = "read"
    """The levels only."""


class RateLimitArgs(NamedTuple):
    """``ratelimit`` (key: the model's ``Keys.rate_limit``): one operation on its bucket,
    with the model's configured limits (per minute; 0: unlimited) and burst."""

    op: str
    requests_per_minute: float
    input_per_minute: float
    output_per_minute: float
    burst_ms: int
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    pause_ms: int = 0


def rate_limit_args(
    limit: ModelRateLimit,
    op: RateOp,
    requests: int = 0,
    input_tokens: int = 0,
    output_tokens: int = 0,
    pause_ms: int = 0,
) -> RateLimitArgs:
    """A ``ratelimit`` call's arguments under a model's configured ``limit``."""
    return RateLimitArgs(
        op.value,
        limit.requests_per_minute,
        limit.input_tokens_per_minute,
        limit.output_tokens_per_minute,
        max(1, round(limit.burst_seconds * 1000)),
        requests,
        input_tokens,
        output_tokens,
        pause_ms,
    )


class SignalArgs(NamedTuple):
    """``signal``: record a decision for a waiting wait node (checked by the API against the
    node's definition)."""

    graph_id: str
    node: str
    iteration: int
    """0: the node's current iteration."""
    decision: str
    payload: str
    """JSON, or ""."""
    actor: str
    signal_id: str
    comment: str
    step: str = ""
    """The wait of the iteration the decision is for (``schema.Wait.STEP``: an agent's tool
    call id); "": the one the node waits on now."""
    probe: int = 0
    """1: record nothing; answer ``valid`` where the decision would be recorded (or the node
    is not waiting), so the API can tell a signal it checked as invalid that it lost."""


class PruneArgs(NamedTuple):
    """``prune``: remove the work group's consumers that hold no pending item, were idle
    past ``min_idle_ms`` and are not named (``Consumer`` items follow: live workers)."""

    min_idle_ms: int


class Consumer(NamedTuple):
    """A consumer to keep."""

    name: str


class ReserveArgs(NamedTuple):
    """``reserve``: reserve a model call's worst case against its run's budget, before the
    call (``budget.lua``); the reply is ``Reserved``."""

    graph_id: str
    node: str
    attempt: int
    iteration: int
    execution: int
    msg_id: str
    """The execution's work item (acked when the node is parked)."""
    input_tokens: int
    max_tokens: int
    floor: int
    """The fewest output tokens worth a call: below it the limit is hit."""
    price_in: str
    """US dollars per input token (``repr``)."""
    price_out: str
    """US dollars per output token (``repr``)."""
    daily: str = ""
    """Why the run's namespace may spend no more today (its daily cost budget is spent,
    ``dago.store.shares.over_daily``), or "": the run's on_exceed applies to the call."""


class ReconcileArgs(NamedTuple):
    """``reconcile``: replace a call's reservation by what it used, after the call."""

    graph_id: str
    node: str
    execution: int
    reserved_tokens: int
    reserved_cost: str
    input_tokens: int
    output_tokens: int
    cost: str


class LimitsArgs(NamedTuple):
    """``limits``: change a run's max_tokens and max_cost_usd ("" keeps one), and resume
    it when it is paused."""

    graph_id: str
    max_tokens: str
    max_cost: str


FUNCTIONS: dict[str, tuple[type[tuple[Any, ...]], type[tuple[Any, ...]] | None]] = {
    "submit": (SubmitArgs, None),
    "take": (TakeArgs, None),
    "apply": (ApplyArgs, Result),
    "reclaim": (ReclaimArgs, Claim),
    "renew": (RenewArgs, Renewal),
    "append": (AppendArgs, EventArg),
    "cancel": (CancelArgs, None),
    "sweep": (SweepArgs, None),
    "archived": (ArchivedArgs, None),
    "deadletter": (DeadLetterArgs, None),
    "prune": (PruneArgs, Consumer),
    "wait": (WaitArgs, Waiting),
    "spawn": (Spawning, None),
    "expand": (ExpandArgs, None),
    "throttle": (ThrottleArgs, ThrottledAttempt),
    "ratelimit": (RateLimitArgs, None),
    "signal": (SignalArgs, None),
    "publish": (PublishArgs, None),
    "reserve": (ReserveArgs, None),
    "reconcile": (ReconcileArgs, None),
    "limits": (LimitsArgs, None),
    "seed": (SeedArgs, SeedMap),
}
"""Every function: the type of its fixed arguments and of the items that follow them."""


def usage_arg(
    input_tokens: int,
    output_tokens: int,
    cache_write: int,
    cache_read: int,
    cost_usd: float,
    provider: str = "",
    model: str = "",
) -> str:
    """An attempt's usage as ``Result.usage``: ``in,out,cache_write,cache_read,cost`` then,
    when known, ``provider,model`` (characters that could break the list replaced)."""
    arg = f"{input_tokens},{output_tokens},{cache_write},{cache_read},{cost_usd!r}"
    if provider:
        clean = [re.sub(r"[^A-Za-z0-9_.:@/-]", "_", v) or "_" for v in (provider, model)]
        arg += "," + ",".join(clean)
    return arg


def error_json(error_class: int, message: str, retryable: bool) -> str:
    """An attempt's error as ``Result.error`` (``schema.Error``): what failed, for the retry
    rule of the functions to decide on."""
    error = {Error.CLASS: error_class, Error.MESSAGE: message, Error.RETRYABLE: retryable}
    return json.dumps(error, separators=(",", ":"), ensure_ascii=False)


def wait_arg(
    prompt: str,
    display: Any,
    decisions: Sequence[str],
    payload_schema: str,
    timeout_decision: str,
    step: str = "",
) -> str:
    """A wait as ``Waiting.wait`` (``schema.Wait``'s keys; the function adds the iteration and
    the times); ``NotJson`` (a ValueError) for a display holding NaN or an infinity."""
    return dumps(
        {
            Wait.PROMPT: prompt,
            Wait.DISPLAY: display,
            Wait.DECISIONS: list(decisions),
            Wait.SCHEMA: payload_schema,
            Wait.TIMEOUT_DECISION: timeout_decision,
            **({Wait.STEP: step} if step else {}),
        }
    )


# --- replies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One delivered work item: run execution ``execution`` of attempt ``attempt`` of
    ``node`` in ``graph_id``."""

    shard: int
    msg_id: bytes
    graph_id: str
    node: str
    attempt: int
    iteration: int
    deliveries: int
    execution: int
    started: bool = True
    """False for an item delivered without a start (an inline node, see
    ``CompiledNode.inline``): its node is still queued, ``execution`` is the one its start
    will be, and the result's apply starts it (``Result.deliveries``)."""

    @property
    def key(self) -> tuple[int, bytes]:
        """What names the item in a worker: stream ids are unique within a shard only."""
        return (self.shard, self.msg_id)

    @property
    def start_deliveries(self) -> int:
        """``Result.deliveries`` for this item's result: 0 when it was started, else its
        delivery count."""
        return 0 if self.started else self.deliveries


@dataclass(frozen=True, slots=True)
class Started:
    """A work item a function marked running (or delivered unstarted, to run inline: see
    ``WorkItem.started``), with the outputs (JSON) of the nodes it
    reads (the run's inputs come with the loaded graph). The graph's first start also
    carries the graph's stored definition, inputs and trace context (``graph``), which no
    worker has loaded yet."""

    item: WorkItem
    outputs: list[tuple[str, bytes]]
    graph: tuple[bytes | None, bytes | None, bytes | None] | None = None


@dataclass(frozen=True, slots=True)
class Taken:
    """What ``take`` returns: the items started, and each shard's last work item id (the
    cursor to wait for new work from, when fewer items than wanted were found)."""

    started: list[Started]
    cursors: list[bytes]


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply`` returns: per result the state it left its node in (a
    ``dago.v1.NodeState``: COMPLETED, RETRYING or FAILED, the retry rule's decision;
    UNSPECIFIED when the result was stale and changed nothing), and the new items started
    in the same step."""

    states: list[int]
    started: list[Started]

    @property
    def applied(self) -> list[bool]:
        """Per result whether it was applied (not stale)."""
        return [bool(s) for s in self.states]


@dataclass(frozen=True, slots=True)
class Submitted:
    """What ``submit`` returns: ``created``, ``exists`` (the request_id's earlier run) or
    ``conflict`` (the request_id was used for another request), the run and its state; or
    ``quota`` (``SubmitArgs.max_active`` reached: no run, ``state`` is the shard's count)."""

    outcome: str
    graph_id: str
    state: int


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_started(shard: int, raw: Sequence[Any]) -> list[Started]:
    """Started items as the functions return them, one flat list (``put_started`` in
    attempts.lua): per item ``msg_id, gid, node, attempt, iteration, deliveries, execution,
    unstarted`` (1: delivered without a start, see ``WorkItem.started``), the count of the
    values that follow and those (``node, output, ...``), then ``3, definition, inputs,
    traceparent`` for the graph's first item, or ``0``."""
    out = []
    i, end = 0, len(raw)
    while i < end:
        m = raw[i : i + 9]
        item = WorkItem(
            shard, m[0], _s(m[1]), _s(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6]),
            int(m[7]) != 1,
        )  # fmt: skip
        i += 9
        n = int(m[8])
        pairs = [(_s(raw[k]), raw[k + 1]) for k in range(i, i + n, 2)]
        i += n
        g = int(raw[i])
        graph = (raw[i + 1], raw[i + 2], raw[i + 3]) if g else None
        i += 1 + g
        out.append(Started(item, pairs, graph))
    return out


def parse_taken(shards: Sequence[int], raw: Sequence[Any]) -> Taken:
    """``take``'s reply: ``{{shard position, items}..., cursors}``."""
    started: list[Started] = []
    for pos, items in raw[0]:
        started += parse_started(shards[int(pos) - 1], items)
    return Taken(started, list(raw[1]))


def parse_applied(shard: int, raw: Sequence[Any]) -> Applied:
    """``apply``'s reply: ``{node states, items}``."""
    return Applied([int(x) for x in raw[0]], parse_started(shard, raw[1]))


def parse_submitted(raw: Sequence[Any]) -> Submitted:
    """``submit``'s reply: ``{outcome, graph_id, state}``."""
    return Submitted(_s(raw[0]), _s(raw[1]), int(raw[2]))


@dataclass(frozen=True, slots=True)
class Signalled:
    """What ``signal`` returns: its outcome (``recorded``, ``replay``, ``conflict``, ``ended``,
    ``not_waiting``, ``missing``, or ``valid`` for a probe), a state (the node's; the graph's
    for ``ended``) and the
    decision record (``schema.Decision``, decoded) for recorded, replay and conflict (and for
    ended when the node was decided); for not_waiting ``iteration`` is the node's current
    one."""

    outcome: str
    state: int
    record: dict[str, Any] | None
    iteration: int = 0


def parse_signalled(raw: Sequence[Any]) -> Signalled:
    """``signal``'s reply: ``{outcome, state, record JSON | iteration | ''}``."""
    outcome, state, third = _s(raw[0]), int(raw[1]), _s(raw[2])
    if third.startswith("{"):
        return Signalled(outcome, state, json.loads(third))
    return Signalled(outcome, state, None, int(third) if third.isdigit() else 0)


@dataclass(frozen=True)
class Bucket:
    """A ``ratelimit`` reply: whether a reservation was granted (else how long until it
    fits, and which measure is short), and the bucket's levels after the call."""

    granted: bool
    wait_ms: int
    reason: str
    requests: float
    input_tokens: float
    output_tokens: float
    paused_until_ms: int


def parse_bucket(raw: Sequence[Any]) -> Bucket:
    """The ``ratelimit`` reply ``{granted, wait_ms, reason, r, i, o, paused_until}``."""
    return Bucket(
        _s(raw[0]) == "1",
        int(raw[1]),
        _s(raw[2]),
        float(_s(raw[3])),
        float(_s(raw[4])),
        float(_s(raw[5])),
        int(raw[6]),
    )


@dataclass(frozen=True, slots=True)
class Reserved:
    """What ``reserve`` returns: its outcome (``schema.Budget``: FIT, FAIL, PAUSED, STALE),
    the max_tokens the call may use (FIT) and why the call does not fit (FAIL, PAUSED)."""

    outcome: str
    max_tokens: int
    message: str


def parse_reserved(raw: Sequence[Any]) -> Reserved:
    """``reserve``'s reply: ``{outcome, max_tokens, message}``."""
    return Reserved(_s(raw[0]), int(raw[1]), _s(raw[2]))


@dataclass(frozen=True, slots=True)
class LimitsChanged:
    """What ``limits`` returns: ``updated``, ``below`` (``limit`` is the field, ``used``
    what the run used and holds), ``ended`` or ``missing``; the stored state; whether a
    paused run resumed."""

    outcome: str
    state: int
    resumed: bool = False
    limit: str = ""
    used: str = ""


def parse_limits(raw: Sequence[Any]) -> LimitsChanged:
    """``limits``' reply: ``{outcome, state, detail}`` (detail: ``limit|used`` for below,
    ``1``/``0`` resumed for updated)."""
    outcome, state, detail = _s(raw[0]), int(raw[1]), _s(raw[2])
    if outcome == "below":
        limit, _, used = detail.partition("|")
        return LimitsChanged(outcome, state, limit=limit, used=used)
    return LimitsChanged(outcome, state, resumed=detail == "1")


def parse_pair(raw: Sequence[Any]) -> tuple[str, str]:
    """A reply of two strings (``cancel``: outcome and state; ``deadletter``: outcome and
    graph id)."""
    return _s(raw[0]), _s(raw[1])


# --- the library ------------------------------------------------------------------------


def library_source() -> tuple[str, dict[str, str]]:
    """The library's source and each function's registered name.

    The shared files (``SHARED``) run once when Redis loads the library; each entry script
    becomes the body of a registered function that starts with ``begin(keys, args)``. The
    library's name carries a digest of its code, so processes of different versions
    sharing a Redis each call their own."""
    shared = [(LUA / f"{name}.lua").read_text() for name in SHARED]
    bodies = {name: (LUA / f"{name}.lua").read_text() for name in FUNCTIONS}
    digest = hashlib.blake2b("\0".join([*shared, *bodies.values()]).encode(), digest_size=6)
    lib = f"dago_{digest.hexdigest()}"
    names = {name: f"{lib}_{name}" for name in FUNCTIONS}
    parts = [f"#!lua name={lib}", *shared]
    for name, body in bodies.items():
        parts.append(
            f"redis.register_function('{names[name]}', function(keys, args)\n"
            f"begin(keys, args)\n{body}\nend)"
        )
    return "\n".join(parts), names


class Library:
    """dago's function library on one Redis (or cluster): loads it, and calls its functions,
    loading it again when Redis lost it (a new or restarted server)."""

    def __init__(self, client: Any) -> None:
        self._redis = client
        self.source, self._names = library_source()

    async def load(self) -> None:
        """Load the library (on every primary of a cluster)."""
        await self._redis.function_load(self.source, replace=True)

    async def call(
        self,
        name: str,
        shards: Sequence[ShardKeys],
        fixed: tuple[Any, ...],
        items: Sequence[tuple[Any, ...]] = (),
        extra: Sequence[Arg] = (),
    ) -> Any:
        """Call function ``name`` on ``shards`` with its fixed arguments, then its items (each
        flattened in field order), then ``extra`` arguments; returns the raw reply for the
        parsers above."""
        return await self.call_keys(name, [s.work for s in shards], _flat(fixed, items, extra))

    async def call_keys(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Call function ``name`` with these keys and arguments (for functions whose keys
        are not a shard's); returns the raw reply."""
        fn = self._names[name]
        try:
            return await self._redis.fcall(fn, len(keys), *keys, *args)
        except ResponseError as e:
            if "Function not found" not in str(e):
                raise
        await self.load()
        return await self._redis.fcall(fn, len(keys), *keys, *args)

    async def call_each(
        self,
        name: str,
        calls: Sequence[tuple[Sequence[ShardKeys], tuple[Any, ...], Sequence[tuple[Any, ...]]]],
    ) -> list[Reply]:
        """Call function ``name`` once per element of ``calls`` (its shards, fixed arguments
        and items, as ``call`` takes them), all sent in one pipeline: one round trip on a
        single Redis; on a cluster, one per node, sent together. Each call stays a call of
        its own (atomic on its shards). Returns per call its raw reply, or its error: the
        ``ResponseError`` Redis refused it with (the others ran all the same) or, on a
        cluster, the error of a node whose connection broke while others answered; when
        nothing was answered it raises, as ``call`` does."""
        fn = self._names[name]
        todo = list(range(len(calls)))
        out: list[Reply] = [None] * len(calls)
        for again in (False, True):
            pipe = self._redis.pipeline(transaction=False)
            for i in todo:
                shards, fixed, items = calls[i]
                keys = [s.work for s in shards]
                pipe.fcall(fn, len(keys), *keys, *_flat(fixed, items))
            replies = await pipe.execute(raise_on_error=False)
            lost = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, ResponseError) and "Function not found" in str(reply):
                    lost.append(i)
                out[i] = reply
            if not lost or again:
                break
            await self.load()  # Redis lost the library (a restart): load it, call those again
            todo = lost
        return out
