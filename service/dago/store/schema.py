"""The names both sides of the Redis contract use, in one table.

Every hash field, stream entry field and JSON key that dago stores in Redis is named
here once. Python reads and writes them through these classes; the Redis functions
read them from ``lua/prelude.lua``, which ``make gen`` renders from this module, the
``dago.v1`` enums and the argument layouts of :mod:`dago.store.functions`
(``python -m dago.devtools.luagen``; ``make gen-check`` fails when it drifts). Values
are short because Redis stores them millions of times and Lua builds them on every
transition.

Each class is one record kind; the generator renders every upper-case attribute.
"""

from __future__ import annotations

from typing import Final


class Meta:
    """Fields of a graph's meta hash (``GraphKeys.meta``)."""

    STATE: Final = "state"
    NAME: Final = "name"
    CREATED: Final = "created"
    STARTED: Final = "started"
    ENDED: Final = "ended"
    SEQ: Final = "seq"
    """Events appended so far (the seq of the last one)."""
    STEPS: Final = "steps"
    OPEN: Final = "open"
    """Nodes not finished yet; the graph completes when it reaches 0."""
    DEFINITION: Final = "def"
    INPUTS: Final = "inputs"
    NODE_IDS: Final = "ids"
    MAX_STEPS: Final = "max_steps"
    MAX_TOKENS: Final = "max_tokens"
    MAX_COST: Final = "max_cost"
    MAX_EVENTS: Final = "max_events"
    BYTES: Final = "bytes"
    """What the run has stored so far (its definition, inputs, outputs, records, events)."""
    MAX_BYTES: Final = "max_bytes"
    """The most it may store (0: no limit), fixed at submit (DAGO_MAX_RUN_BYTES)."""
    RETENTION: Final = "retention"
    REQUEST_ID: Final = "request_id"
    NAMESPACE: Final = "ns"
    TRACEPARENT: Final = "tp"
    ERROR: Final = "err"
    FORKED_FROM: Final = "fork"
    """The run this one was forked from (ForkGraph); absent otherwise."""
    REUSED: Final = "reused"
    """How many nodes a fork reused from its source (written finished at submit); absent
    for a run that is no fork, or a fork that reused none."""
    DEF_NAME: Final = "dn"
    """The definition the run was submitted from (SubmitGraphRequest.definition), if any."""
    DEF_VERSION: Final = "dv"
    """The version it resolved to."""
    DEF_DIGEST: Final = "dd"
    """That version's digest."""
    ARCHIVE: Final = "arch"
    """``1``: the run is archived to PostgreSQL when it ends, and expires only after that
    (``ShardKeys.archive``); else ``0`` (or absent, for runs submitted before archiving)."""
    PARENT: Final = "parent"
    """A child run's parent link (a subgraph node's run): the parent node run's address
    ``<graph>|<node>|<iteration>|<attempt>|<execution>|<instance>`` (instance empty but for
    a map item); absent for a run a client submitted."""
    PARENT_GRAPH: Final = "pg"
    """The parent run's id (the link's first part, kept apart for reads)."""
    PARENT_NODE: Final = "pn"
    """The parent node's id."""
    DEPTH: Final = "depth"
    """How deeply the run is nested (absent: 0, a run a client submitted)."""
    PRIORITY: Final = "prio"
    """The run's priority (``Fair.PRIORITY_MIN``..``PRIORITY_MAX``; absent: the default),
    which orders its work within its namespace; runs it starts read it to inherit it."""
    MAPS: Final = "maps"
    """The map nodes that expanded, comma-separated: their item hashes
    (``GraphKeys.items``) expire with the run."""
    ON_EXCEED: Final = "ox"
    """``GraphLimits.on_exceed`` (a ``LimitAction`` number; 0 and 1: fail, 2: pause)."""
    WARN_SHARE: Final = "ws"
    """``GraphLimits.warn_share`` (``repr`` of the float; 0.8 when the graph set none)."""
    RESERVED_TOKENS: Final = "rt"
    """Tokens the model calls running now hold (``Budget``): reserved, or reconciled and not
    yet applied. Used + this is what the next reservation must fit next to."""
    RESERVED_COST: Final = "rc"
    """The same in US dollars."""
    WARNED: Final = "bw"
    """The limits budget_warning was appended for (``t`` tokens, ``c`` cost)."""
    PAUSED: Final = "pz"
    """``1`` while the run is paused (``GraphLimits.on_exceed`` PAUSE): its stored state stays
    RUNNING (PAUSED is not terminal and every ``< COMPLETED`` test keeps holding); views
    report GRAPH_STATE_PAUSED."""
    PARKED: Final = "pk"
    """The nodes a paused run's budget parked (comma-separated): QUEUED without a work item,
    dispatched again when the run resumes. The run's own nodes by id; a descendant run's
    (whose calls charge this run's budget: ``ROOT``) as ``<graph>|<node>``."""
    ROOT: Final = "root"
    """A child run's root run (the run a client submitted that it descends from), set when
    the child is spawned: its model calls charge the root's budget (``Budget.root`` in
    ``lua/budget.lua``). Absent for a run a client submitted (its own root)."""
    DESC_TOKENS: Final = "dt"
    """On a root run: tokens its descendant runs' applied attempts used that have not rolled
    up into this run's usage yet (a child's usage is added to its parent's only when the
    child ends). Counted against the root's ``max_tokens`` next to its usage and holds."""
    DESC_COST: Final = "dc"
    """The same in US dollars, against ``max_cost_usd``."""


class Usage:
    """Usage counters: fields of the meta hash (a graph's totals) and, after ``<node>``, of
    the node hash (a node's totals)."""

    INPUT: Final = "ui"
    OUTPUT: Final = "uo"
    CACHE_WRITE: Final = "ucc"
    CACHE_READ: Final = "ucr"
    COST: Final = "uc"


class Node:
    """Fields of the node hash (``GraphKeys.nodes``), each after the node's id."""

    STATE: Final = ":s"
    ATTEMPT: Final = ":a"
    ITERATION: Final = ":i"
    STARTED: Final = ":st"
    ENDED: Final = ":et"
    WORKER: Final = ":w"
    DELIVERIES: Final = ":d"
    EXECUTION: Final = ":x"
    """The running attempt's execution (1 at its first start, one more each time its work
    item is taken over); 0 until it starts."""
    DEADLINE: Final = ":dl"
    """When the running attempt times out (ms), for the timers once it outlives a renewal."""
    TIMER: Final = ":tm"
    """The timer member set for the running attempt, if any."""
    PLAN: Final = ":p"
    """What starting the node reads, its timeout and whether it runs inline
    (``refs|timeout_ms|flag``, ``StartPlan``), written at submit: read with the node's
    state when a function starts it."""
    DEAD_LETTER: Final = ":dx"
    """The entry id of the dead letter the node waits for."""
    OUTPUT: Final = ":o"
    ERROR: Final = ":err"
    ROUTE: Final = ":route"
    NEXT: Final = ":n"
    """The outgoing edges the node took when it completed (indexes, comma-separated): what
    a fork of the run reuses (ForkGraph)."""
    REUSED: Final = ":ru"
    """``1``: the node's output (or skip) was reused from the run this one was forked from."""
    RECEIVED: Final = ":r"
    """Incoming edges resolved (a join's counter)."""
    TAKEN: Final = ":t"
    """Incoming edges taken (a join's counter)."""
    RECORD: Final = ":@"
    """Prefix of an execution's record: ``<node>:@<iteration>:<attempt>:<execution>``
    (JSON), written when it ends; the running execution's record is the node's own fields
    (state RUNNING, start time, worker, execution)."""
    EDGE_RESOLVED: Final = "e:"
    """``e:<edge index>``: a loop's exit edge resolved in this iteration (not per node)."""
    WAIT: Final = ":wt"
    """A wait node's wait while it waits (JSON, ``Wait``), written when it enters WAITING."""
    DECISION_REF: Final = ":w"
    """A wait node's start plan names ``<node>:w`` besides the nodes it reads, so starting it
    reads the field ``<node>:w:o`` (this, then ``OUTPUT``) with their outputs: the decision
    recorded for it (JSON, ``Decision``). No real node has a ``:`` in its id."""
    SAVED_REF: Final = ":c"
    """An agent node that may wait for approvals also reads ``<node>:c:o`` (this, then
    ``OUTPUT``) when it starts: its conversation kept while it waits (JSON, written by the
    ``wait`` function with the wait; see ``dago.nodes.agent``), so any worker resumes it.
    Replaced by the node's next wait; removed with the graph's keys."""
    CHILD: Final = ":ch"
    """A subgraph node's child run of its current attempt; ``<node>:ch<iteration>:<attempt>``
    is the child of that attempt (what a redelivered attempt finds instead of starting
    another). The child's outcome, when it ends, is recorded where a wait node's decision is
    (``DECISION_REF``; JSON, ``ChildOutcome``)."""
    THROTTLED: Final = ":q"
    """When a node throttled by a model rate limit (QUEUED, no work item) is queued again
    (ms): written by the ``throttle`` function, shown as ``NodeStatus.throttled_until``."""


class StartPlan:
    """Values of a node's start plan (``Node.PLAN``, ``dago.engine.topology.start_plan``)."""

    INLINE: Final = "i"
    """The plan's flag for a node whose worker runs it inline (``CompiledNode.inline``):
    its work item is delivered without a start (no RUNNING state, no node_started of its
    own), and the call that applies its result starts and completes it in one step."""


class Record:
    """Keys of an attempt's record (JSON)."""

    STARTED: Final = "st"
    ENDED: Final = "et"
    STATE: Final = "s"
    WORKER: Final = "w"
    USAGE: Final = "u"
    INPUT: Final = "in"
    OUTPUT: Final = "o"
    ERROR: Final = "e"


class Error:
    """Keys of a stored error (JSON): its ErrorClass, message and whether it was retryable."""

    CLASS: Final = "c"
    MESSAGE: Final = "m"
    RETRYABLE: Final = "r"


class Wait:
    """Keys of a waiting node's wait (JSON, ``Node.WAIT``): what ListWaits and a signal read."""

    ITERATION: Final = "i"
    PROMPT: Final = "prompt"
    DISPLAY: Final = "display"
    DECISIONS: Final = "decisions"
    SCHEMA: Final = "schema"
    """The payload's JSON Schema (JSON text), or ""."""
    SINCE: Final = "since"
    """When the node started waiting (ms)."""
    DEADLINE: Final = "deadline"
    """When its timeout decides (ms), or 0."""
    TIMEOUT_DECISION: Final = "td"
    """The decision its timeout records."""
    STEP: Final = "step"
    """Which of the node's waits in one iteration this is: an agent's tool call id (absent
    or "" for a wait node, which waits once per iteration)."""


class Budget:
    """What the budget functions (``reserve``, ``reconcile``, ``limits``) store and reply."""

    HOLD: Final = ":rv"
    """Node hash field after the node's id: what its running execution holds of the run's
    budget, ``<execution>,<tokens>,<cost>``; released when the execution's result is applied
    or a later execution starts (a dead worker's hold does not outlive its item)."""
    FIT: Final = "ok"
    """Reply: the call fits (with the max_tokens it may use)."""
    FAIL: Final = "fail"
    """Reply: it does not fit even at the floor and the run fails (on_exceed FAIL)."""
    PAUSED: Final = "paused"
    """Reply: it does not fit and the run paused; the node is parked (no slot, no item)."""
    STALE: Final = "stale"
    """Reply: the attempt is no longer the node's running one (or the run ended)."""
    LIMIT_TOKENS: Final = "max_tokens"
    LIMIT_COST: Final = "max_cost_usd"
    LIMIT_DAILY: Final = "daily_cost_usd"
    """``budget_exhausted``'s limit when the run's namespace is over its daily cost budget
    (DAGO_NAMESPACES_FILE)."""


class Decision:
    """Keys of the decision recorded for a wait node (JSON, ``<node>:w:o``; see
    ``Node.DECISION_REF``), kept until a later iteration's decision replaces it."""

    ITERATION: Final = "i"
    DECISION: Final = "decision"
    PAYLOAD: Final = "payload"
    ACTOR: Final = "actor"
    AT: Final = "at"
    """When it was recorded (ms)."""
    SIGNAL_ID: Final = "signal_id"
    COMMENT: Final = "comment"
    TIMED_OUT: Final = "timed_out"
    SINCE: Final = "since"
    """When the node had started waiting (ms): the wait's duration is ``AT - SINCE``."""
    STEP: Final = "step"
    """The decided wait's ``Wait.STEP``."""


class ChildOutcome:
    """Keys of a subgraph node's recorded child outcome (JSON, ``<node>:w:o``; see
    ``Node.CHILD``): written when the child run ends, read by the node's next start."""

    ITERATION: Final = "i"
    ATTEMPT: Final = "a"
    GRAPH: Final = "g"
    """The child run's id."""
    STATE: Final = "s"
    """Its end state (a GraphState number)."""
    OUTPUTS: Final = "o"
    """Its completed nodes' outputs by node id (when it completed)."""
    USAGE: Final = "u"
    """Its usage (``UsageJson``), its own children's included."""
    ERROR: Final = "e"
    """Its error (``Error``), when it failed or was cancelled with one."""


class UsageJson:
    """Keys of a stored usage object (JSON)."""

    INPUT: Final = "i"
    OUTPUT: Final = "o"
    CACHE_WRITE: Final = "cc"
    CACHE_READ: Final = "cr"
    COST: Final = "c"


class Event:
    """A graph's event log (``GraphKeys.events``): a stream whose entries each hold the
    events one function call appended to the graph, in seq order, as fields ``1``, ``2``...
    (names only keep them apart) with the value ``kind|time|node|attempt|iteration|detail``:
    kind the Event payload field name (``node_started``...), time in ms, node, attempt and
    iteration empty for a graph's own events, detail JSON (keys in ``Detail``) or empty.
    The entry's id is ``0-<seq of its last event>``, so XRANGE from ``0-<after + 1>`` starts
    at the entry holding the event after ``after``. One entry per graph and call, not per
    event: an XADD with a dozen arguments per event was a tenth of Redis's work per node."""

    SEP: Final = "|"
    PER_ENTRY: Final = 64
    """Most events in one entry (a call that appends more writes several). Also what a
    read of N events may read beyond them (``events.entry_range``)."""


class Detail:
    """Keys of event details (JSON), by the events that use them."""

    OUTPUT: Final = "o"
    """node_completed: the output."""
    USAGE: Final = "u"
    """node_completed, usage, graph_completed: a usage object (``UsageJson``)."""
    DURATION_MS: Final = "ms"
    """node_completed."""
    ERROR: Final = "e"
    """node_failed, node_retrying, graph_failed, node_dead_lettered: an error (``Error``)."""
    BACKOFF_MS: Final = "b"
    """node_retrying: the delay before the next attempt."""
    NEXT: Final = "n"
    """node_retrying: the next attempt; graph_failed: the failed node; node_dead_lettered:
    deliveries."""
    WORKER: Final = "w"
    """node_started."""
    REDELIVERED: Final = "r"
    """node_started: the attempt ran before on another delivery."""
    DEAD_LETTER: Final = "id"
    """node_dead_lettered, node_requeued: the dead letter's entry id."""
    REASON: Final = "reason"
    """node_skipped, node_cancelled, graph_cancelled; router_decision: why the route."""
    NAME: Final = "name"
    """graph_submitted: the graph's name."""
    SOURCE: Final = "source"
    """graph_submitted, node_reused: the run forked from."""
    SKIPPED: Final = "skipped"
    """node_reused: the node was skipped in the source run."""
    ENTRIES: Final = "entries"
    """graph_submitted: the entry nodes."""
    DEFINITION: Final = "definition"
    """graph_submitted: the definition run, ``[name, version, digest]``."""
    ITERATION: Final = "iteration"
    """loop_iteration: the loop head's iteration."""
    FROM: Final = "from"
    """loop_iteration: the node whose back edge closed the loop."""
    EXHAUSTED: Final = "exhausted"
    """loop_iteration: the loop reached its max_iterations."""
    ROUTE: Final = "route"
    """router_decision: the route taken (the worker writes route, reason, confidence)."""
    TARGETS: Final = "targets"
    """router_decision: the nodes its edges lead to."""
    PROVIDER: Final = "provider"
    """usage: the LLM provider."""
    MODEL: Final = "model"
    """usage: the model."""
    PROMPT: Final = "prompt"
    """node_waiting: the rendered prompt (also DISPLAY, DECISIONS, DEADLINE, SCHEMA)."""
    DISPLAY: Final = "display"
    DECISIONS: Final = "decisions"
    DEADLINE: Final = "deadline"
    """node_waiting: when the timeout decides (ms; 0: none)."""
    SCHEMA: Final = "schema"
    DECISION: Final = "decision"
    """signal_received: the decision (also PAYLOAD, ACTOR, SIGNAL_ID, COMMENT, TIMED_OUT)."""
    PAYLOAD: Final = "payload"
    ACTOR: Final = "actor"
    SIGNAL_ID: Final = "signal_id"
    COMMENT: Final = "comment"
    TIMED_OUT: Final = "timed_out"
    CHILD: Final = "child"
    """child_started, child_ended: the child run's id."""
    CHILD_STATE: Final = "child_state"
    """child_ended: the child run's end state (a GraphState number)."""
    WAIT_MS: Final = "wait_ms"
    """node_throttled: how long until the node is queued again (also PROVIDER, MODEL, REASON)."""
    LIMIT: Final = "limit"
    """budget_warning, budget_exhausted: the limit's field name (also USED, MAX, MESSAGE)."""
    USED: Final = "used"
    MAX: Final = "max"
    MESSAGE: Final = "message"
    NODES: Final = "nodes"
    """graph_resumed: the run's own nodes dispatched again."""
    CHILD_NODES: Final = "child_nodes"
    """graph_resumed: its descendant runs' nodes dispatched again, ``<graph>|<node>``."""
    NODE: Final = "node"
    """budget_exhausted of a descendant run's call: its node (CHILD names the run)."""


class Work:
    """Fields of a work item (shard ``work`` stream: ``PACKED``) and of a control entry."""

    GRAPH: Final = "g"
    NODE: Final = "n"
    ATTEMPT: Final = "a"
    ITERATION: Final = "i"
    EXECUTION: Final = "x"
    """Control entries only: the execution to stop (empty: any)."""
    PACKED: Final = "p"
    """Work entries a take writes: the item in this one field, as its fair queue held it
    (``Fair.QUEUED_SEP``: the time it was queued, graph, node, attempt, iteration), moved to
    the stream without unpacking (eight arguments and reply strings fewer per item); the
    four fields above name the item in control and dead-letter entries."""


class Notify:
    """Fields of a notify entry (``ShardKeys.notify``): the graph (``Work.GRAPH``) and, when
    the call's new events of it are small, the events themselves: the seq of the first
    (``FIRST``), then each event packed as in its log (``Event``) under the names ``1``,
    ``2``...: a watcher at the log's end takes them without reading the log."""

    FIRST: Final = "s"
    CARRY_BYTES: Final = 2048
    """Most bytes of events an entry carries (more: the graph alone). The stream keeps
    ~10,000 entries per shard, so this bounds what it holds."""


class DeadLetter:
    """Fields of a dead-letter entry besides the work item's (``Work``)."""

    ENTRY: Final = "id"
    """The work item's entry id."""
    DELIVERIES: Final = "deliveries"
    TIME: Final = "ts"
    ERROR: Final = "e"


class Request:
    """Fields of a request_id's idempotency record (``ShardKeys.request``)."""

    GRAPH: Final = "g"
    """The graph the first request with this id created."""
    BODY_HASH: Final = "h"
    """The digest of that request (another body with the same id is a conflict)."""


class Definition:
    """Fields of a stored definition's hash (``DefinitionKeys.definition``); the per-version
    fields are the prefix followed by the version number."""

    COUNT: Final = "n"
    """Versions published so far (the latest version's number)."""
    RECORD: Final = "v:"
    """A version's ``dago.v1.DefinitionVersion`` as published (name, description, graph,
    digest; serialized), without what is set later (number, time, labels, deprecation)."""
    DIGEST: Final = "h:"
    """A version's digest (the same content as the latest publishes nothing new)."""
    CREATED: Final = "t:"
    """When a version was published (ms)."""
    LABEL: Final = "l:"
    """A label, followed by its name: the version it points at (in the marks hash,
    ``DefinitionKeys.marks``)."""
    DEPRECATED: Final = "x:"
    """Set (``1``) for a deprecated version (in the marks hash)."""


class Timer:
    """Kinds of a shard's timers: a member is ``<kind>|<graph id>|...``."""

    RETRY: Final = "r"
    """``r|gid|node|iteration|attempt``: dispatch that attempt."""
    TIMEOUT: Final = "t"
    """``t|gid|node|iteration|attempt``: the attempt's deadline (a hung worker)."""
    DEADLINE: Final = "d"
    """``d|gid``: the graph's deadline."""
    EXPIRE: Final = "x"
    """``x|gid[|namespace]``: drop the expired graph from its indexes."""
    WAIT: Final = "w"
    """``w|gid|node|iteration``: a wait node's timeout (records its timeout_decision)."""
    THROTTLE: Final = "q"
    """``q|gid|node|iteration|attempt``: a node throttled by a model rate limit is queued
    again (the same attempt: throttling is not a failure)."""


class Stats:
    """Fields of a shard's counters (``ShardKeys.stats``), read by the metrics."""

    SUBMITTED: Final = "submitted"
    FINISHED: Final = "fin:"
    """``fin:<completed|failed|cancelled>``."""
    DURATION: Final = "dur:"
    """``dur:<bucket index>`` of ``GRAPH_DURATION_BUCKETS``."""
    DURATION_SUM: Final = "dur_sum"
    RECLAIMED: Final = "reclaimed"
    DEAD: Final = "dead"
    WAITING: Final = "waiting"
    """Wait nodes waiting now (one more as one enters WAITING, one less as it leaves)."""
    PAUSED: Final = "paused"
    """Runs paused by their budget now (one more as one pauses, one less as it resumes or
    ends)."""


class Topology:
    """Fields of a graph's topology hash (``GraphKeys.topo``; written by
    ``dago.engine.topology``)."""

    EDGES: Final = ">"
    """``><node>``: the node's outgoing edges (``index,to,back,owner,single;...``)."""
    LOOP: Final = "b:"
    """``b:<back edge index>``: a loop (JSON)."""


GRAPH_DURATION_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
"""Upper bounds (seconds) of the graph duration histogram the functions count in ``Stats``."""


class NodeTopology:
    """Keys of a node's topology (JSON, the ``<node>`` field of the topology hash)."""

    KIND: Final = "k"
    JOIN: Final = "j"
    """The node's dago.v1.JoinMode (0, unspecified, is ALL)."""
    MAX_ITERATIONS: Final = "mx"
    IN_DEGREE: Final = "in"
    """Forward incoming edges."""
    RETRY: Final = "r"
    """``[max_attempts, initial_backoff_ms, max_backoff_ms, multiplier, jitter, [classes]]``:
    the retry policy, read when an attempt fails (by its worker or by a timeout)."""


class LoopTopology:
    """Keys of a loop's topology (JSON, the ``b:<back edge index>`` field)."""

    HEAD: Final = "h"
    SOURCE: Final = "s"
    BODY: Final = "body"
    INTERNAL: Final = "ie"
    """Forward edges inside the body (their resolved-marks are cleared each iteration)."""
    EXITS: Final = "x"
    """``[edge index, to]`` of the exit edges this loop owns."""


class Fair:
    """Fair dispatch between namespaces (``lua/fair.lua``): the fields of a shard's
    ``ShardKeys.fair`` and ``ShardKeys.shares`` hashes, and the priorities."""

    PRIORITY_MIN: Final = 1
    PRIORITY_MAX: Final = 5
    PRIORITY_DEFAULT: Final = 3
    """What priority 0 (unset) means."""
    RUNNING: Final = "r|"
    """``r|<namespace>`` (fair hash): the namespace's work items started on the shard and
    not acked yet."""
    CLOCK: Final = "vt"
    """(fair hash) The shard's virtual time: the pass of the namespace served last; a
    namespace whose queue was empty joins at it."""
    WEIGHT: Final = "w|"
    """``w|<namespace>`` (shares hash): its weight; ``w|`` alone: the default's."""
    MAX_RUNNING: Final = "m|"
    """``m|<namespace>`` (shares hash): its running items allowed on this shard (its cap
    divided over the shards; 0: none); ``m|`` alone: the default's."""
    QUEUED_SEP: Final = "|"
    """Separates the values of a queued item (``ShardKeys.queue``): the time it was queued
    (ms), graph, node, attempt, iteration; none of them can hold it (node ids are
    identifiers, map items ``<map>#<i>``), and a packed string costs far less to write and
    read in Lua than a JSON array."""
    UNTRACKED_NS: Final = "u"
    """(fair hash) The namespace whose started items are counted without an entry each in
    ``ShardKeys.inflight`` (``lua/fair.lua``, ``Fair.done``)."""
    UNTRACKED: Final = "un"
    """(fair hash) How many of its items are started and not acked yet."""


class MapItems:
    """How a map node's items are stored (``dago.nodes.map``, ``lua/map.lua``).

    An item is an instance of the map's body node, stored as a node of its own named
    ``<map>#<index>`` (index from 0; ``SEP``) in its map's item hash (``GraphKeys.items``,
    not the run's node hash, which so never grows with items): its state, attempt, iteration,
    execution, start plan, output, error, usage and execution records are the fields any node
    has, so starting, applying, retrying, timing out, reclaiming and dead-lettering an item
    are the same fenced transitions as a node's. Its value is ``<map>#<index>:v:o``
    (``VALUE_REF``, read by its start plan like a node's output). The map node keeps its
    counts in the fields below, after its id."""

    SEP: Final = "#"
    VALUE_REF: Final = ":v"
    RESULT_REF: Final = ":m"
    """The map's start plan also reads ``<map>:m:o`` (this, then ``Node.OUTPUT``): the summary
    written when its items are done (JSON, keys ``MapResult``), which its next start (the
    node queued again) completes the node with."""
    TOTAL: Final = ":mt"
    NEXT: Final = ":mn"
    """The index of the next item to dispatch."""
    RUNNING: Final = ":mr"
    """Items dispatched and not ended (queued, running, retrying)."""
    COMPLETED: Final = ":mc"
    FAILED: Final = ":mf"
    CANCELLED: Final = ":mx"
    PROGRESS_AT: Final = ":mp"
    """When the last map_progress event was appended (ms)."""
    SPEC: Final = ":ms"
    """``max_concurrency|on_failure|max_failures|body plan`` (the body plan with ``@`` where
    an item's value ref goes)."""
    PROGRESS_MS: Final = 250
    """At most one map_progress event per map per this many ms (and one at the end)."""
    REUSED: Final = ":mu"
    """How many of the map's items a fork reused (completed at expand, never dispatched)."""
    SEEDS: Final = ":rs"
    """A fork's items to reuse, written in the new run's item hash before it is submitted:
    ``<map>#:rs`` lists their indexes (comma-separated), ``<map>#<i>:rv`` (``SEED_VALUE``)
    is each one's value and ``<map>#<i>:ro`` (``SEED_OUTPUT``) its recorded output. The
    map's expand completes an item whose value is unchanged with that output."""
    SEED_VALUE: Final = ":rv"
    SEED_OUTPUT: Final = ":ro"


class MapResult:
    """Keys of a map's summary (JSON, ``<map>:m:o``) and of map_progress details."""

    ITERATION: Final = "it"
    ITEMS: Final = "items"
    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    TOTAL: Final = "total"
    CANCELLED: Final = "cancelled"
    RUNNING: Final = "running"
    QUEUED: Final = "queued"
    FAILED_INDEX: Final = "fi"
    """The index of the item that failed the map (absent: it did not fail)."""
    ERROR: Final = "e"
    """That item's error (``Error``)."""


class RateLimit:
    """Fields of a model's rate-limit bucket (``Keys.rate_limit``; ``lua/ratelimit.lua``):
    each measure's level (what may be spent now; negative: spent ahead, repaid as it
    refills), when the levels were last brought up to date (ms), and until when a
    provider's 429 paused the model (ms)."""

    REQUESTS: Final = "r"
    INPUT: Final = "i"
    OUTPUT: Final = "o"
    UPDATED: Final = "t"
    PAUSED_UNTIL: Final = "p"
    NEXT_REQUESTS: Final = "nr"
    """When the next refused call is due (ms), per measure: one call's worth of refill after
    the last refused one's time, so refused calls come back one after another, spread over
    the time the limit needs for them, instead of all at the next refill."""
    NEXT_INPUT: Final = "ni"
    NEXT_OUTPUT: Final = "no"
    PAUSED: Final = "paused"
    """The reason of a wait while the provider's retry-after runs (the others name their
    measure: ``requests_per_minute``...)."""


RECORD_KINDS: Final = (
    Meta, Usage, Node, StartPlan, Record, Error, Wait, Decision, UsageJson, Event, Detail, Work,
    Notify,
    DeadLetter, Request, Definition, Timer, Stats, Topology, NodeTopology, LoopTopology,
    ChildOutcome, Fair, MapItems, MapResult, RateLimit, Budget,
)  # fmt: skip
"""Every record kind above, in the order the prelude lists them."""
