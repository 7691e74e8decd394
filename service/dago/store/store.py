"""Redis access: the transitions (dago's function library, :mod:`dago.store.functions`) and
the reads behind the API and the workers.

Every write to a graph goes through one function of the library; each runs atomically in
the graph's shard slot. Python never read-modify-writes graph state, so any number of API
servers and workers can run side by side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from dago.config import NamespaceShares
from dago.store.client import STORE_ERRORS, RedisClient, raise_if_cancelling
from dago.store.events import Entries, entry_range, expand
from dago.store.functions import (
    AppendArgs,
    Applied,
    ApplyArgs,
    ArchivedArgs,
    Bucket,
    CancelArgs,
    Claim,
    Consumer,
    DeadLetterArgs,
    EventArg,
    Expanding,
    Library,
    LimitsArgs,
    LimitsChanged,
    PruneArgs,
    PublishArgs,
    RateLimitArgs,
    ReclaimArgs,
    ReconcileArgs,
    Renewal,
    RenewArgs,
    ReserveArgs,
    Reserved,
    Result,
    SeedArgs,
    SeedMap,
    SignalArgs,
    Signalled,
    Spawning,
    Started,
    SubmitArgs,
    Submitted,
    SweepArgs,
    TakeArgs,
    Taken,
    ThrottleArgs,
    ThrottledAttempt,
    WaitArgs,
    Waiting,
    WorkItem,
    parse_applied,
    parse_bucket,
    parse_limits,
    parse_pair,
    parse_reserved,
    parse_signalled,
    parse_started,
    parse_submitted,
    parse_taken,
)
from dago.store.keys import WORK_GROUP, Keys
from dago.store.schema import DeadLetter, Definition, Fair, MapItems, Meta, Node, Usage, Work
from dago.store.shares import write_shares
from dago.v1 import execution_pb2

log = logging.getLogger("dago.store")

SUMMARY_FIELDS: tuple[str, ...] = (
    Meta.NAME, Meta.STATE, Meta.CREATED, Meta.ENDED, Meta.REQUEST_ID, Meta.NAMESPACE,
    Meta.STEPS, Usage.INPUT, Usage.OUTPUT, Usage.CACHE_WRITE, Usage.CACHE_READ, Usage.COST,
    Meta.FORKED_FROM, Meta.REUSED,
    Meta.DEF_NAME, Meta.DEF_VERSION, Meta.DEF_DIGEST, Meta.PRIORITY,
    Meta.PARENT_GRAPH, Meta.PARENT_NODE,
    Meta.PAUSED,
)  # fmt: skip
"""The meta fields a listing entry (GraphSummary) is built from."""


class RecordId(NamedTuple):
    """Which execution of which attempt a stored record is; orders as they ran."""

    iteration: int
    attempt: int
    execution: int


def _record_id(tail: bytes) -> RecordId:
    """``<iteration>:<attempt>:<execution>`` (records written before executions were
    counted have no execution: their only one)."""
    parts = tail.split(b":")
    return RecordId(int(parts[0]), int(parts[1]), int(parts[2]) if len(parts) > 2 else 1)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One graph as stored: its meta hash, its nodes' fields (``<node><Node field>``) and its
    execution records by node (JSON, oldest first); empty when unknown."""

    meta: dict[bytes, bytes]
    nodes: dict[bytes, bytes]
    records: dict[str, list[tuple[RecordId, bytes]]]


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    """One entry of a shard's dead-letter stream: the work item's attempt, how often it was
    delivered, when it was dead-lettered (ms) and its error (JSON)."""

    entry_id: str
    graph_id: str
    node: str
    attempt: int
    iteration: int
    deliveries: int
    time_ms: int
    error: bytes | None


def _dead_letter(entry_id: Any, f: dict[bytes, bytes]) -> DeadLetterEntry:
    def get(name: str) -> bytes:
        return f.get(name.encode(), b"")

    eid = _s(entry_id)
    return DeadLetterEntry(
        eid,
        get(Work.GRAPH).decode(),
        get(Work.NODE).decode(),
        int(get(Work.ATTEMPT) or 0),
        int(get(Work.ITERATION) or 0),
        int(get(DeadLetter.DELIVERIES) or 0),
        int(get(DeadLetter.TIME) or eid.split("-")[0]),
        f.get(DeadLetter.ERROR.encode()),
    )


class Store:
    """Typed access to dago's Redis data; every function call and read in one place."""

    def __init__(
        self, client: RedisClient, keys: Keys, shares: NamespaceShares | None = None
    ) -> None:
        # redis-py's async methods are annotated with sync|async unions; results are
        # typed where they leave this class instead.
        self.redis: Any = client
        self.keys = keys
        self.shares = shares or NamespaceShares()
        """The namespaces' fair shares (DAGO_NAMESPACES_FILE), written to every shard by
        ``ensure_groups``."""
        self.library = Library(client)

    async def load_library(self) -> None:
        """Load dago's function library into Redis (every primary of a cluster)."""
        await self.library.load()

    async def ensure_groups(self) -> None:
        """Create the work streams' consumer group on every shard (idempotent), and write
        the namespaces' shares the functions read."""
        for shard in self.keys.all_shards():
            try:
                await self.redis.xgroup_create(shard.work, WORK_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        await write_shares(self.redis, self.keys, self.shares)

    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self.redis.ping())

    async def ready(self) -> None:
        """Connect, and on a cluster load the slot map first: many loops sending their first
        commands through an uninitialised cluster client race into MOVED replies and
        connections closed under each other."""
        if isinstance(self.redis, RedisCluster):
            await self.redis.initialize()
        await self.redis.ping()

    # --- definitions -----------------------------------------------------------------

    async def publish_definition(
        self, namespace: str, name: str, digest: str, record: bytes, quota: tuple[int, int]
    ) -> tuple[str, int]:
        """Store the next version of definition ``name`` (unless the latest has ``digest``),
        within ``quota`` (names in the namespace, versions of the name): ``("created",
        version)``, ``("exists", version)``, or the quota it would pass and its limit
        (``("names", limit)``, ``("versions", limit)``)."""
        dk = self.keys.definitions(namespace)
        raw = await self.library.call_keys(
            "publish", [dk.names, dk.definition(name)], PublishArgs(name, digest, record, *quota)
        )
        return _s(raw[0]), int(raw[1])

    async def definition(self, namespace: str, name: str) -> dict[str, bytes]:
        """A definition's version count and marks (labels, deprecations), by field name
        (``schema.Definition``; no COUNT: no such definition). No version's graph."""
        dk = self.keys.definitions(namespace)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(dk.definition(name), Definition.COUNT)
        pipe.hgetall(dk.marks(name))
        count, marks = await pipe.execute()
        out = {k.decode(): v for k, v in marks.items()}
        if count is not None:
            out[Definition.COUNT] = count
        return out

    async def definition_versions(
        self, namespace: str, name: str, versions: Sequence[int]
    ) -> dict[str, bytes]:
        """The records and times of some versions of a definition, by field name."""
        if not versions:
            return {}
        key = self.keys.definitions(namespace).definition(name)
        fields = [f"{p}{v}" for v in versions for p in (Definition.RECORD, Definition.CREATED)]
        values = await self.redis.hmget(key, fields)
        return {f: v for f, v in zip(fields, values, strict=True) if v is not None}

    async def mark_definition(
        self, namespace: str, name: str, fields: dict[str, str | int]
    ) -> None:
        """Set marks of an existing definition (labels, deprecations: versions are never
        removed, so a version checked before stays valid)."""
        key = self.keys.definitions(namespace).marks(name)
        await self.redis.hset(key, mapping=fields)

    async def unmark_definition(self, namespace: str, name: str, field: str) -> bytes | None:
        """Remove one mark (a label) of a definition: the value it had, None when absent."""
        key = self.keys.definitions(namespace).marks(name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(key, field)
        pipe.hdel(key, field)
        value, _ = await pipe.execute()
        return value  # type: ignore[no-any-return]

    async def definition_names(self, namespace: str, after: str, count: int) -> list[str]:
        """Up to ``count`` definition names after ``after`` (exclusive; "" from the start)."""
        start = f"({after}" if after else "-"
        raw = await self.redis.zrangebylex(
            self.keys.definitions(namespace).names, start, "+", 0, count
        )
        return [_s(n) for n in raw]

    # --- transitions -----------------------------------------------------------------

    async def submit(self, shard: int, args: SubmitArgs, topology: dict[str, str]) -> Submitted:
        """Create a run (or find the one its request_id made)."""
        pairs = [x for kv in topology.items() for x in kv]
        raw = await self.library.call("submit", [self.keys.shard(shard)], args, extra=pairs)
        return parse_submitted(raw)

    async def take(self, shards: Sequence[int], worker: str, want: int, lease_ms: int) -> Taken:
        """Start up to ``want`` new work items of ``shards`` (read in that order) for
        ``worker``. Several shards share one call only on a single Redis; on a cluster each
        shard's keys live in their own slot, so callers pass one shard at a time."""
        raw = await self.library.call(
            "take", [self.keys.shard(s) for s in shards], TakeArgs(worker, want, lease_ms)
        )
        return parse_taken(shards, raw)

    async def wait_for_work(
        self, shards: Sequence[int], cursors: Sequence[bytes], block_ms: int
    ) -> bool:
        """Block until a call leaves work on one of ``shards`` after its cursor (as ``take``
        returned them: the shards' wake streams), or ``block_ms`` passed; True when one did.
        Delivers nothing: the caller takes the work with ``take``."""
        streams = {self.keys.shard(s).wake: c for s, c in zip(shards, cursors, strict=True)}
        return bool(await self.redis.xread(streams, count=1, block=block_ms))

    async def apply(
        self, shard: int, worker: str, want: int, lease_ms: int, results: Sequence[Result]
    ) -> Applied:
        """Apply finished attempts of one shard and start up to ``want`` new work items of
        the shard for ``worker`` in the same step."""
        raw = await self.library.call(
            "apply", [self.keys.shard(shard)], ApplyArgs(worker, want, lease_ms), results
        )
        return parse_applied(shard, raw)

    async def apply_round(
        self, worker: str, lease_ms: int, parts: Sequence[tuple[int, int, Sequence[Result]]]
    ) -> list[Applied | Exception]:
        """A worker's round: per (shard, want, results) of ``parts``, what ``apply`` does on
        that shard, one call per shard, all sent in one pipeline (one round trip on a single
        Redis; on a cluster the shards of each node together). Returns per part what it
        applied, or the error of that part's call: a ``ResponseError`` Redis answered it
        with, or (on a cluster, a node's connection broken while the others answered) any
        other error, after which the call may or may not have run. When no part got an
        answer it raises, as ``apply`` does."""
        if len(parts) == 1:  # no pipeline for one call
            shard, want, results = parts[0]
            try:
                return [await self.apply(shard, worker, want, lease_ms, results)]
            except ResponseError as e:
                return [e]
        raw = await self.library.call_each(
            "apply",
            [
                ([self.keys.shard(shard)], ApplyArgs(worker, want, lease_ms), results)
                for shard, want, results in parts
            ],
        )
        return [
            r if isinstance(r, Exception) else parse_applied(shard, cast(Sequence[Any], r))
            for (shard, _, _), r in zip(parts, raw, strict=True)
        ]

    async def idle_items(
        self, shard: int, min_idle_ms: int, count: int, consumer: str | None = None
    ) -> list[tuple[bytes, str]]:
        """Pending work items of one shard idle for at least ``min_idle_ms`` (only
        ``consumer``'s when given), oldest first, as (msg_id, consumer)."""
        rows = await self.redis.xpending_range(
            self.keys.shard(shard).work,
            WORK_GROUP,
            min="-",
            max="+",
            count=count,
            consumername=consumer,
            idle=min_idle_ms,
        )
        return [(r["message_id"], _s(r["consumer"])) for r in rows]

    async def reclaim(
        self,
        shard: int,
        worker: str,
        msg_ids: Sequence[bytes],
        min_idle_ms: int,
        max_deliveries: int,
        lease_ms: int,
    ) -> list[Started]:
        """Take over the pending work items ``msg_ids`` if still idle past ``min_idle_ms``
        and start them for ``worker``; poison items are dead-lettered."""
        if not msg_ids:
            return []
        args = ReclaimArgs(worker, min_idle_ms, max_deliveries, lease_ms)
        claims = [Claim(m) for m in msg_ids]
        raw = await self.library.call("reclaim", [self.keys.shard(shard)], args, claims)
        return parse_started(shard, raw)

    async def renew(self, shard: int, worker: str, items: Sequence[WorkItem]) -> int:
        """Reset the idle time of items ``worker`` still works on (its lease) and put their
        attempts' deadlines on the shard's timers; returns timers set."""
        if not items:
            return 0
        renewals = [
            Renewal(i.msg_id, i.graph_id, i.node, i.iteration, i.attempt, i.execution)
            for i in items
        ]
        raw = await self.library.call(
            "renew", [self.keys.shard(shard)], RenewArgs(worker), renewals
        )
        return int(raw)

    async def append(self, item: WorkItem, events: Sequence[tuple[str, str]]) -> bool:
        """Append events of a running attempt; False when the attempt is no longer current."""
        args = AppendArgs(item.graph_id, item.node, item.attempt, item.iteration, item.execution)
        evs = [EventArg(kind, detail) for kind, detail in events]
        return bool(await self.library.call("append", [self.keys.shard(item.shard)], args, evs))

    async def cancel(self, shard: int, graph_id: str, reason: str) -> tuple[str, int]:
        """Cancel a graph; returns (cancelled | finished | missing, state)."""
        raw = await self.library.call(
            "cancel", [self.keys.shard(shard)], CancelArgs(graph_id, reason)
        )
        outcome, state = parse_pair(raw)
        return outcome, int(state)

    async def sweep(self, shard: int, limit: int = 200) -> int:
        """Apply due timers of one shard; returns how many were due."""
        return int(await self.library.call("sweep", [self.keys.shard(shard)], SweepArgs(limit)))

    async def archived(self, shard: int, graph_id: str) -> bool:
        """The run is in PostgreSQL: let it expire; False when it was not queued (any more)."""
        args = ArchivedArgs(graph_id)
        return bool(await self.library.call("archived", [self.keys.shard(shard)], args))

    async def to_archive(self, shard: int, count: int) -> list[str]:
        """Up to ``count`` finished runs of one shard waiting to be archived, oldest first."""
        ids = await self.redis.zrange(self.keys.shard(shard).archive, 0, count - 1)
        return [_s(g) for g in ids]

    async def archive_backlog(self) -> int:
        """Finished runs waiting to be archived, over every shard."""
        pipe = self.redis.pipeline(transaction=False)
        for sk in self.keys.all_shards():
            pipe.zcard(sk.archive)
        return sum(int(n) for n in await pipe.execute())

    async def prune_consumers(self, shard: int, min_idle_ms: int, keep: Sequence[str]) -> int:
        """Remove one shard's consumers that hold nothing, were idle past ``min_idle_ms`` and
        are not in ``keep``; returns how many."""
        args, names = PruneArgs(min_idle_ms), [Consumer(n) for n in keep]
        return int(await self.library.call("prune", [self.keys.shard(shard)], args, names))

    async def dead_letter(self, shard: int, op: str, entry_id: str) -> tuple[str, str]:
        """Requeue or drop (``op``) one dead letter; returns (outcome, graph_id)."""
        raw = await self.library.call(
            "deadletter", [self.keys.shard(shard)], DeadLetterArgs(op, entry_id)
        )
        return parse_pair(raw)

    async def wait(self, shard: int, worker: str, items: Sequence[Waiting]) -> list[int]:
        """Put wait nodes of one shard into WAITING (their work items are acked); per item
        the node's state after (WAITING, or UNSPECIFIED when the item was stale)."""
        raw = await self.library.call("wait", [self.keys.shard(shard)], WaitArgs(worker), items)
        return [int(x) for x in raw]

    async def spawn(
        self, shard: int, args: Spawning, topology: Mapping[str, str]
    ) -> tuple[str, str]:
        """Start a subgraph node's child run and park the node (its work item is acked);
        returns (outcome, child id): ``created``, ``exists`` (the attempt had its child
        already), ``stale`` (fenced out) or ``too_deep`` (the attempt failed)."""
        extra = [x for kv in topology.items() for x in kv]
        raw = await self.library.call("spawn", [self.keys.shard(shard)], args, (), extra)
        return parse_pair(raw)

    async def expand(self, shard: int, expanding: Expanding) -> int:
        """Store a map node's items, park it and dispatch its first items (its work item is
        acked); 1, or 0 when the report was stale."""
        raw = await self.library.call(
            "expand", [self.keys.shard(shard)], expanding.args, extra=expanding.items
        )
        return int(raw)

    async def throttle(
        self, shard: int, worker: str, items: Sequence[ThrottledAttempt]
    ) -> list[int]:
        """Put attempts a model rate limit refused back in QUEUED until their not-before time
        (their work items are acked); per item the node's state after (QUEUED, or
        UNSPECIFIED when the item was stale)."""
        raw = await self.library.call(
            "throttle", [self.keys.shard(shard)], ThrottleArgs(worker), items
        )
        return [int(x) for x in raw]

    async def rate_limit(self, provider: str, model: str, args: RateLimitArgs) -> Bucket:
        """One operation on a model's rate-limit bucket (``RateOp``)."""
        key = self.keys.rate_limit(provider, model)
        return parse_bucket(await self.library.call_keys("ratelimit", [key], args))

    async def signal(self, shard: int, args: SignalArgs) -> Signalled:
        """Record a decision for a waiting node (see ``signal.lua`` for the outcomes)."""
        raw = await self.library.call("signal", [self.keys.shard(shard)], args)
        return parse_signalled(raw)

    async def reserve(self, shard: int, args: ReserveArgs) -> Reserved:
        """Reserve a model call's worst case against its run's budget (``reserve.lua``)."""
        return parse_reserved(await self.library.call("reserve", [self.keys.shard(shard)], args))

    async def reconcile(self, shard: int, args: ReconcileArgs) -> bool:
        """Replace a call's reservation by what it used; False when the execution is no
        longer current."""
        return bool(await self.library.call("reconcile", [self.keys.shard(shard)], args))

    async def limits(self, shard: int, args: LimitsArgs) -> LimitsChanged:
        """Change a run's budgets and resume it when it is paused (``limits.lua``)."""
        return parse_limits(await self.library.call("limits", [self.keys.shard(shard)], args))

    # --- reads -----------------------------------------------------------------------

    async def waits_after(
        self, shard: int, namespace: str, since_ms: int, after: str, count: int
    ) -> list[tuple[int, str]]:
        """Up to ``count`` (since ms, ``<graph id>|<node>``) of one shard's inbox of
        ``namespace``, oldest first (members ascending within a millisecond), after
        (``since_ms``, ``after``) (exclusive; ``after`` "" takes every entry at
        ``since_ms``)."""
        key = self.keys.shard(shard).waits(namespace)
        out: list[tuple[int, str]] = []
        offset = 0
        while len(out) < count:
            res = await self.redis.zrangebyscore(
                key, since_ms, "+inf", start=offset, num=count, withscores=True
            )
            for member, score in res:
                m, ms = _s(member), int(score)
                if ms > since_ms or m > after:
                    out.append((ms, m))
            if len(res) < count:
                break
            offset += len(res)
        return out[:count]

    async def wait_details(
        self, waits: Sequence[tuple[int, str, str]]
    ) -> list[tuple[bytes | None, bytes | None]]:
        """Per (shard, graph id, node) the node's stored wait (JSON, ``schema.Wait``; None once
        it stopped waiting) and the graph's name, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for shard, gid, node in waits:
            gk = self.keys.shard(shard).graph(gid)
            pipe.hget(gk.nodes, node + Node.WAIT)
            pipe.hget(gk.meta, Meta.NAME)
        res = await pipe.execute()
        return [(res[k], res[k + 1]) for k in range(0, len(res), 2)]

    async def graph_fields(self, shard: int, graph_id: str, *names: str) -> list[bytes | None]:
        """Some fields of the graph's meta hash."""
        gk = self.keys.shard(shard).graph(graph_id)
        return list(await self.redis.hmget(gk.meta, list(names)))

    async def graph_fields_many(
        self, graphs: Sequence[tuple[int, str]], *names: str
    ) -> list[list[bytes | None]]:
        """``graph_fields`` of several graphs (any shards) in one round trip."""
        if len(graphs) == 1:
            return [await self.graph_fields(*graphs[0], *names)]
        pipe = self.redis.pipeline(transaction=False)
        for shard, gid in graphs:
            pipe.hmget(self.keys.shard(shard).graph(gid).meta, list(names))
        return [list(row) for row in await pipe.execute()]

    async def snapshot(self, shard: int, graph_id: str, records: bool = True) -> Snapshot:
        """A graph's meta, node fields and (when ``records``) attempt records, in one round
        trip. Records live in the node hash as ``<node>:@<iteration>:<attempt>``, written
        with the node's state."""
        gk = self.keys.shard(shard).graph(graph_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(gk.meta)
        pipe.hgetall(gk.nodes)
        meta, fields = await pipe.execute()
        nodes: dict[bytes, bytes] = {}
        found: dict[str, list[tuple[RecordId, bytes]]] = {}
        marker = Node.RECORD.encode()
        for field, value in fields.items():
            if marker in field:
                if records:
                    node, _, tail = field.partition(marker)
                    found.setdefault(node.decode(), []).append((_record_id(tail), value))
            else:
                nodes[field] = value
        for recs in found.values():
            recs.sort()
        return Snapshot(dict(meta), nodes, found)

    async def node_records(
        self, shard: int, graph_id: str, node: str
    ) -> list[tuple[RecordId, bytes]]:
        """One node's execution records (JSON), oldest first, found with HSCAN (only that
        node's fields come back)."""
        nk = self.keys.shard(shard).graph(graph_id).nodes
        prefix = f"{node}{Node.RECORD}".encode()
        out: list[tuple[RecordId, bytes]] = []
        # Node ids are letters, digits and _: no glob character to escape.
        async for field, value in self.redis.hscan_iter(nk, match=f"{node}{Node.RECORD}*"):
            if field.startswith(prefix):
                out.append((_record_id(field[len(prefix) :]), value))
        out.sort()
        return out

    async def metas(
        self, graphs: Sequence[tuple[int, str]], extra: Sequence[str] = ()
    ) -> list[dict[bytes, bytes]]:
        """Summary fields (and ``extra`` ones) of several graphs (any shards) in one round
        trip; a graph that no longer exists gives an empty dict."""
        pipe = self.redis.pipeline(transaction=False)
        names = [*SUMMARY_FIELDS, *extra]
        for shard, gid in graphs:
            pipe.hmget(self.keys.shard(shard).graph(gid).meta, names)
        res = await pipe.execute()
        return [
            {k.encode(): v for k, v in zip(names, row, strict=True) if v is not None} for row in res
        ]

    async def events(self, shard: int, graph_id: str, after_seq: int, count: int) -> Entries:
        """Up to ``count`` stored events after ``after_seq``, as (seq, event)."""
        gk = self.keys.shard(shard).graph(graph_id)
        lo, hi = entry_range(after_seq, count)
        res = await self.redis.xrange(gk.events, min=lo, max=hi, count=count)
        return expand(res, after_seq)[:count]

    async def index_range(
        self,
        shard: int,
        namespace: str,
        state: int,
        high_ms: int | None,
        low_ms: int | None,
        offset: int,
        count: int,
        parent: str = "",
    ) -> list[tuple[str, int]]:
        """Up to ``count`` (graph id, create time ms) of one shard's namespace index (of
        one state when ``state``), newest first (ids descending within a millisecond),
        create times from ``high_ms`` down to ``low_ms`` (both inclusive; None: no bound),
        after skipping ``offset`` entries. With ``parent`` (a run on this shard), its
        children's index instead (``GraphKeys.children``: every state)."""
        sk = self.keys.shard(shard)
        key = (
            sk.graph(parent).children
            if parent
            else sk.index(str(state) if state else "", namespace)
        )
        res = await self.redis.zrevrangebyscore(
            key,
            "+inf" if high_ms is None else high_ms,
            "-inf" if low_ms is None else low_ms,
            start=offset,
            num=count,
            withscores=True,
        )
        return [(_s(member), int(score)) for member, score in res]

    async def listed_namespaces(self) -> list[list[str]]:
        """Per shard, the namespaces with runs in its indexes (``ShardKeys.namespaces``),
        sorted; every shard in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for sk in self.keys.all_shards():
            pipe.smembers(sk.namespaces)
        return [sorted(_s(m) for m in members) for members in await pipe.execute()]

    async def namespace_load(self, namespace: str) -> tuple[int, int]:
        """A namespace's work items (running, queued for their turn), over every shard, in
        one round trip (``lua/fair.lua`` keeps both per shard)."""
        pipe = self.redis.pipeline(transaction=False)
        priorities = range(Fair.PRIORITY_MIN, Fair.PRIORITY_MAX + 1)
        for sk in self.keys.all_shards():
            pipe.hget(sk.fair, Fair.RUNNING + namespace)
            for p in priorities:
                pipe.llen(sk.queue(namespace, p))
        replies = await pipe.execute()
        per = 1 + len(priorities)
        running = sum(int(replies[i] or 0) for i in range(0, len(replies), per))
        return running, sum(int(x) for i, x in enumerate(replies) if i % per)

    async def active_graphs(
        self, namespace: str, states: Sequence[int], skip: int | None = None
    ) -> int:
        """How many graphs of ``namespace`` are in ``states``, over every shard but ``skip``
        (one round trip; on a cluster the shards' slots are read in parallel, not
        atomically)."""
        pipe = self.redis.pipeline(transaction=False)
        for n, sk in enumerate(self.keys.all_shards()):
            if n == skip:
                continue
            for state in states:
                pipe.zcard(sk.index(str(state), namespace))
        return sum(int(n) for n in await pipe.execute())

    async def follow(
        self, keys: Sequence[str], block_ms: int
    ) -> AsyncIterator[dict[bytes, bytes] | None]:
        """Entries appended to the capped streams ``keys`` from now on, for ever.

        Read failures are logged and retried; after one the iterator yields None, since
        entries may have been missed (callers re-check what they were waiting for).
        """
        streams = dict.fromkeys(keys, "$")
        while True:
            raise_if_cancelling()
            try:
                res = await self.redis.xread(streams, count=1000, block=block_ms)
            except STORE_ERRORS as e:
                log.warning("reading %s failed: %s", ", ".join(keys), e)
                yield None
                await asyncio.sleep(0.5)
                continue
            for key, entries in res or []:
                for msg_id, fields in entries:
                    streams[_s(key)] = _s(msg_id)
                    yield fields

    # --- operations: workers and dead letters ------------------------------------------

    async def heartbeat(self, worker_id: str, info: str, now_ms: int) -> None:
        """Record a worker's description and heartbeat time (one round trip)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.workers, worker_id, info)
        pipe.zadd(self.keys.workers_seen, {worker_id: now_ms})
        await pipe.execute()

    async def deregister(self, worker_id: str) -> None:
        """Remove a worker that stops."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(self.keys.workers, worker_id)
        pipe.zrem(self.keys.workers_seen, worker_id)
        await pipe.execute()

    async def workers(self, since_ms: int) -> list[tuple[str, int, bytes]]:
        """(id, last heartbeat ms, JSON description) of workers seen since ``since_ms``."""
        seen = await self.redis.zrangebyscore(
            self.keys.workers_seen, since_ms, "+inf", withscores=True
        )
        if not seen:
            return []
        infos = await self.redis.hmget(self.keys.workers, [w for w, _ in seen])
        return [
            (_s(w), int(ms), info)
            for (w, ms), info in zip(seen, infos, strict=True)
            if info is not None
        ]

    async def prune_workers(self, before_ms: int) -> int:
        """Forget workers whose last heartbeat is older than ``before_ms`` (killed ones)."""
        gone = await self.redis.zrangebyscore(self.keys.workers_seen, "-inf", f"({before_ms}")
        if gone:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hdel(self.keys.workers, *gone)
            pipe.zrem(self.keys.workers_seen, *gone)
            await pipe.execute()
        return len(gone)

    async def alive_workers(self, since_ms: int) -> int:
        """How many workers sent a heartbeat since ``since_ms``."""
        return int(await self.redis.zcount(self.keys.workers_seen, since_ms, "+inf"))

    async def dead_letters(
        self, shard: int, before: str | None, count: int
    ) -> list[DeadLetterEntry]:
        """Dead letters of one shard, newest first, from ``before`` (an entry id) down."""
        res = await self.redis.xrevrange(
            self.keys.shard(shard).dead, max=before or "+", min="-", count=count
        )
        return [_dead_letter(mid, fields) for mid, fields in res]

    async def item_fields(
        self, shard: int, graph_id: str, node: str, indexes: Sequence[int], fields: Sequence[str]
    ) -> list[list[bytes | None]]:
        """``fields`` (``Node`` field names) of map items ``indexes`` of map ``node``
        (``schema.MapItems``: item i is the node ``<node>#<i>`` of ``GraphKeys.items``), in
        one HMGET."""
        gk = self.keys.shard(shard).graph(graph_id)
        names = [f"{node}{MapItems.SEP}{i}{f}" for i in indexes for f in fields]
        if not names:
            return []
        flat = await self.redis.hmget(gk.items(node), names)
        n = len(fields)
        return [list(flat[k : k + n]) for k in range(0, len(flat), n)]

    async def seed_items(
        self,
        source_shard: int,
        source: str,
        shard: int,
        graph_id: str,
        maps: Mapping[str, int],
        ttl_s: int,
    ) -> int:
        """Copy the completed items of ``maps`` (map node -> its item count) of run
        ``source`` (value and output) into the item hashes of the fork ``graph_id`` (not
        submitted yet) as seeds (``schema.MapItems.SEEDS``), expiring after ``ttl_s`` unless
        the run takes them over (its expand reads them, Map.reuse); returns how many.

        On the source's shard the ``seed`` function copies them inside Redis, one call per
        ``SEED_RANGE`` items (each call holds Redis for a few ms, not one call for the
        whole map). A fork on another shard (its request_id's record decides its shard)
        cannot be written by one call on a cluster (another slot): the items come through
        here in pages of ``SEED_PAGE``, so a large map never sits whole in memory or in one
        reply."""
        if source_shard == shard:
            args = SeedArgs(source, graph_id, ttl_s)
            seeded = 0
            for m, total in maps.items():
                for first in range(0, total, SEED_RANGE):
                    ranged = [SeedMap(m, first, SEED_RANGE)]
                    reply = await self.library.call("seed", [self.keys.shard(shard)], args, ranged)
                    seeded += int(reply)
            return seeded
        seeded = 0
        for m in maps:
            done: list[int] = []
            async for page in self.completed_items(source_shard, source, m):
                done.extend(i for i, _, _ in page)
                await self.write_seeds(shard, graph_id, m, page, ttl_s)
            await self.seed_list(shard, graph_id, m, done, ttl_s)
            seeded += len(done)
        return seeded

    async def completed_items(
        self, shard: int, graph_id: str, map_node: str
    ) -> AsyncIterator[list[tuple[int, bytes, bytes]]]:
        """The completed items of a map of a run, as (index, value JSON, output JSON), in
        pages of ``SEED_PAGE`` indexes read with one pipelined HMGET each."""
        gk = self.keys.shard(shard).graph(graph_id)
        raw = await self.redis.hget(gk.nodes, f"{map_node}{MapItems.TOTAL}")
        total = int(raw or 0)
        value = MapItems.VALUE_REF + Node.OUTPUT
        for first in range(0, total, SEED_PAGE):
            pipe = self.redis.pipeline(transaction=False)
            indexes = range(first, min(first + SEED_PAGE, total))
            for i in indexes:
                item = f"{map_node}{MapItems.SEP}{i}"
                pipe.hmget(
                    gk.items(map_node), [item + Node.STATE, item + value, item + Node.OUTPUT]
                )
            replies = await pipe.execute()
            page = [
                (i, v or b"null", o or b"null")
                for i, (st, v, o) in zip(indexes, replies, strict=True)
                if st == _COMPLETED_TEXT
            ]
            if page:
                yield page

    async def write_seeds(
        self,
        shard: int,
        graph_id: str,
        map_node: str,
        items: Sequence[tuple[int, bytes | str, bytes | str]],
        ttl_s: int,
    ) -> None:
        """Write one page of a fork's seeds for a map (each item's value and recorded
        output); ``seed_list`` then names them."""
        if not items:
            return
        fields: dict[str, bytes | str] = {}
        for i, val, out in items:
            item = f"{map_node}{MapItems.SEP}{i}"
            fields[item + MapItems.SEED_VALUE] = val
            fields[item + MapItems.SEED_OUTPUT] = out
        key = self.keys.shard(shard).graph(graph_id).items(map_node)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, ttl_s)
        await pipe.execute()

    async def seed_list(
        self, shard: int, graph_id: str, map_node: str, indexes: Sequence[int], ttl_s: int
    ) -> None:
        """Name the seeded items of a map of a fork (``MapItems.SEEDS``), written last: the
        expand reuses only the items listed."""
        if not indexes:
            return
        key = self.keys.shard(shard).graph(graph_id).items(map_node)
        listed = ",".join(str(i) for i in indexes)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, f"{map_node}{MapItems.SEP}{MapItems.SEEDS}", listed)
        pipe.expire(key, ttl_s)
        await pipe.execute()

    async def node_fields(
        self, shard: int, graph_id: str, node: str, *fields: str
    ) -> list[bytes | None]:
        """Some fields of one node (``Node`` field names) of one graph."""
        gk = self.keys.shard(shard).graph(graph_id)
        return list(await self.redis.hmget(gk.nodes, [node + f for f in fields]))


_COMPLETED_TEXT = str(execution_pb2.NODE_STATE_COMPLETED).encode()
SEED_PAGE = 1000
"""Map items read (or written) per round trip when a fork's seeds come through the API."""
SEED_RANGE = 2000
"""Map items one call of the ``seed`` function copies (~10 ms of Redis at most)."""
"""A completed node's state field as stored (``NodeStateText``)."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
