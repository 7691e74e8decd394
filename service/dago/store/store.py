"""Redis access: the Lua transitions and the reads behind the API.

Every write to a graph goes through one of the scripts in ``lua/``; each runs
atomically in the graph's shard slot. Python never read-modify-writes graph
state, so any number of API servers and workers can run side by side.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dago.config import Settings
from dago.store.keys import WORK_GROUP, Keys, ShardKeys

RedisClient = aioredis.Redis | RedisCluster

log = logging.getLogger("dago.store")

SCRIPTS = (
    "submit",
    "start",
    "complete",
    "advance",
    "sweep",
    "cancel",
    "reclaim",
    "renew",
    "append",
    "deadletter",
)


def connect(settings: Settings) -> RedisClient:
    """A Redis or Redis Cluster client for ``settings.redis_url``."""
    url = settings.redis_url
    opts: dict[str, Any] = {
        "socket_keepalive": True,
        # Blocking stream reads wait up to 5 s; the read timeout must be longer than that.
        "socket_timeout": 15,
        "socket_connect_timeout": 5,
        # A pooled connection to a Redis that restarted fails once; retry on a fresh one.
        # Every script is safe to run twice, so a retry after a lost reply is harmless.
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if settings.cluster:
        return RedisCluster.from_url(url.replace("+cluster", "", 1), **opts)
    if url.startswith("redis://"):  # plain TCP (TLS and unix sockets keep their classes)
        opts["connection_class"] = _Connection
    return aioredis.Redis.from_url(url, health_check_interval=10, **opts)


class _Connection(aioredis.Connection):
    """redis-py's asyncio connection, encoding commands with hiredis (C) instead of its
    pure-Python encoder: a batch script call carries hundreds of arguments, and packing
    them was a tenth of a worker's CPU. Same bytes on the wire."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in the Redis protocol (a name with a space is split, as redis-py does)."""
        first = args[0]
        if isinstance(first, str | bytes) and len(first.split()) > 1:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


STORE_ERRORS: tuple[type[Exception], ...] = (Exception,)
"""What background loops catch around Redis calls (then log and back off). redis-py, its
cluster client above all, surfaces a broken connection as RedisError, OSError,
RuntimeError or even AttributeError (a transport closed under a concurrent command), so a
loop that must outlive Redis outages cannot enumerate them."""


def raise_if_cancelling() -> None:
    """Re-raise a cancellation redis-py swallowed.

    redis-py's asyncio client can absorb a CancelledError that arrives while a
    command is in flight and return normally, so a loop around Redis calls would
    run on after its task was cancelled. Every such loop calls this each round.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _library() -> tuple[str, dict[str, str]]:
    """The Redis function library (its source) and each script's function name.

    common.lua and transitions.lua are the library's shared code, run once when Redis
    loads it; each script in ``lua/`` becomes the body of a registered function that
    starts with ``begin(args)``. As EVAL scripts every call ran the shared code again,
    ~180k instructions before the first item of a batch. The library's name carries a
    digest of its code, so processes of different versions sharing a Redis each call
    their own."""
    pkg = Path(__file__).parent / "lua"
    shared = [(pkg / "common.lua").read_text(), (pkg / "transitions.lua").read_text()]
    bodies = {name: (pkg / f"{name}.lua").read_text() for name in SCRIPTS}
    digest = hashlib.blake2b(
        "\0".join([*shared, *bodies.values()]).encode(), digest_size=6
    ).hexdigest()
    lib = f"dago_{digest}"
    names = {name: f"{lib}_{name}" for name in SCRIPTS}
    parts = [f"#!lua name={lib}", *shared]
    for name, body in bodies.items():
        parts.append(
            f"redis.register_function('{names[name]}', function(keys, args)\n"
            f"begin(args)\n{body}\nend)"
        )
    return "\n".join(parts), names


@dataclass(frozen=True)
class WorkItem:
    """One delivered work item: run attempt ``attempt`` of ``node`` in ``graph_id``."""

    shard: int
    msg_id: bytes
    graph_id: str
    node: str
    attempt: int
    iteration: int
    deliveries: int


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _item(shard: int, msg_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> WorkItem:
    return WorkItem(
        shard,
        msg_id,
        fields[b"g"].decode(),
        fields[b"n"].decode(),
        int(fields[b"a"]),
        int(fields[b"i"]),
        deliveries,
    )


class Store:
    """Typed access to dago's Redis data; all scripts and reads in one place."""

    def __init__(self, client: RedisClient, keys: Keys) -> None:
        # redis-py's async methods are annotated with sync|async unions; results are
        # typed where they leave this class instead.
        self.redis: Any = client
        self.keys = keys
        self._library, self._functions = _library()

    async def _run(self, name: str, shard: ShardKeys, args: Sequence[Any]) -> Any:
        fn = self._functions[name]
        try:
            return await self.redis.fcall(fn, 1, shard.work, shard.tag, *args)
        except ResponseError as e:
            # A new Redis, or one restarted without persistence: load, then call again.
            if "Function not found" not in str(e):
                raise
        await self.load_library()
        return await self.redis.fcall(fn, 1, shard.work, shard.tag, *args)

    async def load_library(self) -> None:
        """Load dago's function library into Redis (every primary of a cluster)."""
        await self.redis.function_load(self._library, replace=True)

    async def ensure_groups(self) -> None:
        """Create the work streams' consumer group on every shard (idempotent)."""
        for shard in self.keys.all_shards():
            try:
                await self.redis.xgroup_create(shard.work, WORK_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise

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

    # --- transitions -----------------------------------------------------------------

    async def submit(self, shard: int, args: Sequence[Any]) -> tuple[str, str, int]:
        """Run submit.lua; returns (created|exists|conflict, graph_id, state)."""
        res = await self._run("submit", self.keys.shard(shard), args)
        return _s(res[0]), _s(res[1]), int(res[2])

    async def start(self, shard: int, worker: str, args: Sequence[Any]) -> list[Any]:
        """Run start.lua for a batch (9 fields per item)."""
        return list(await self._run("start", self.keys.shard(shard), [worker, *args]))

    async def complete(self, shard: int, worker: str, args: Sequence[Any]) -> list[str]:
        """Run complete.lua for a batch (13 fields per item)."""
        res = await self._run("complete", self.keys.shard(shard), [worker, *args])
        return [_s(x) for x in res]

    async def advance(
        self, shard: int, worker: str, want: int, lease_ms: int, args: Sequence[Any]
    ) -> tuple[list[str], list[tuple[WorkItem, list[Any]]]]:
        """Run advance.lua: apply a batch of results (13 fields per item, as complete())
        and take up to ``want`` new work items of the shard for ``worker``, started in the
        same step. Each new item comes with what start() returns for it
        (``[b"run" | b"stale", inputs, outputs]``), or ``[b"read", None, []]`` when the
        worker must start it itself (its graph predates the start plans in the topology)."""
        res = await self._run("advance", self.keys.shard(shard), [worker, want, lease_ms, *args])
        items = [
            (WorkItem(shard, m[0], _s(m[1]), _s(m[2]), int(m[3]), int(m[4]), 1), list(m[5:8]))
            for m in res[1]
        ]
        return [_s(x) for x in res[0]], items

    async def sweep(self, shard: int, limit: int = 200) -> int:
        """Apply due timers of one shard; returns how many were due."""
        return int(await self._run("sweep", self.keys.shard(shard), [limit]))

    async def cancel(self, shard: int, graph_id: str, reason: str) -> tuple[str, int]:
        """Run cancel.lua; returns (cancelled|finished|missing, state)."""
        res = await self._run("cancel", self.keys.shard(shard), [graph_id, reason])
        return _s(res[0]), int(res[1])

    async def append(self, shard: int, item: WorkItem, events: Sequence[tuple[str, str]]) -> bool:
        """Append events of a running attempt; False when the attempt is no longer current."""
        flat = [x for ev in events for x in ev]
        args = [item.graph_id, item.node, item.attempt, item.iteration, *flat]
        return bool(await self._run("append", self.keys.shard(shard), args))

    # --- work streams ----------------------------------------------------------------

    async def read_work(
        self, shards: Sequence[int], consumer: str, count: int, block_ms: int
    ) -> list[WorkItem]:
        """New work items of ``shards`` for ``consumer`` (one XREADGROUP, blocking).

        Several shards share one call only on a single Redis; on a cluster each
        shard's stream lives in its own slot, so callers pass one shard at a time.
        """
        by_key = {self.keys.shard(n).work: n for n in shards}
        res = await self.redis.xreadgroup(
            WORK_GROUP, consumer, dict.fromkeys(by_key, ">"), count=count, block=block_ms
        )
        items = []
        for stream, entries in res or []:
            shard = by_key[_s(stream)]
            for msg_id, fields in entries:
                items.append(_item(shard, msg_id, fields, 1))
        return items

    async def reclaim(
        self, shard: int, consumer: str, min_idle_ms: int, count: int, max_deliveries: int
    ) -> list[WorkItem]:
        """Take over items idle longer than the lease; poison items are dead-lettered."""
        res = await self._run(
            "reclaim", self.keys.shard(shard), [consumer, min_idle_ms, count, max_deliveries]
        )
        items = []
        for entry in res[1:]:
            fields = dict(zip(entry[2::2], entry[3::2], strict=True))
            items.append(_item(shard, entry[0], fields, int(entry[1])))
        return items

    async def renew(self, shard: int, consumer: str, items: Sequence[WorkItem]) -> int:
        """Reset the idle time of items this consumer still works on (its lease) and put
        their attempts' deadlines on the shard's timers (renew.lua); returns timers set."""
        if not items:
            return 0
        args: list[Any] = []
        for it in items:
            args += [it.msg_id, it.graph_id, it.node, it.iteration, it.attempt]
        return int(await self._run("renew", self.keys.shard(shard), [consumer, *args]))

    async def ack(self, shard: int, msg_ids: Sequence[bytes]) -> None:
        """Acknowledge items that need no transition (malformed ones)."""
        if msg_ids:
            await self.redis.xack(self.keys.shard(shard).work, WORK_GROUP, *msg_ids)

    # --- reads -----------------------------------------------------------------------

    async def graph(self, shard: int, graph_id: str) -> dict[bytes, bytes]:
        """The graph's meta hash (empty when unknown or expired)."""
        gk = self.keys.shard(shard).graph(graph_id)
        return dict(await self.redis.hgetall(gk.meta))

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

    async def snapshot(
        self, shard: int, graph_id: str, attempts: bool = True
    ) -> tuple[dict[bytes, bytes], dict[bytes, bytes], dict[bytes, bytes]]:
        """Meta, node-state and attempt records (``node:iteration:attempt`` -> JSON) of one
        graph in one round trip. Records live in the node hash as ``node:@iteration:attempt``
        (written with the node's state); graphs stored before that keep them in their own
        hash, which is read too."""
        gk = self.keys.shard(shard).graph(graph_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(gk.meta)
        pipe.hgetall(gk.nodes)
        if attempts:
            pipe.hgetall(gk.attempts)
        res = await pipe.execute()
        nodes: dict[bytes, bytes] = {}
        records: dict[bytes, bytes] = dict(res[2]) if attempts else {}
        for field, value in res[1].items():
            if b":@" in field:
                if attempts:
                    records[field.replace(b":@", b":", 1)] = value
            else:
                nodes[field] = value
        return dict(res[0]), nodes, records

    async def metas(self, graphs: Sequence[tuple[int, str]]) -> list[dict[bytes, bytes]]:
        """Summary fields of several graphs (any shards) in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        names = ["name", "state", "created", "ended", "request_id", "ns"]
        for shard, gid in graphs:
            pipe.hmget(self.keys.shard(shard).graph(gid).meta, names)
        res = await pipe.execute()
        return [
            {k.encode(): v for k, v in zip(names, row, strict=True) if v is not None} for row in res
        ]

    async def events(
        self, shard: int, graph_id: str, after_seq: int, count: int
    ) -> list[tuple[int, dict[bytes, bytes]]]:
        """Up to ``count`` stored events after ``after_seq``, as (seq, fields)."""
        gk = self.keys.shard(shard).graph(graph_id)
        res = await self.redis.xrange(gk.events, min=f"0-{after_seq + 1}", max="+", count=count)
        return [(int(mid.split(b"-")[1]), fields) for mid, fields in res]

    async def list_ids(
        self,
        shard: int,
        state: int,
        before: tuple[int, str] | None,
        count: int,
        namespace: str = "default",
    ) -> list[tuple[str, int]]:
        """Graph ids of one shard and namespace, newest first, strictly before ``before``
        (score, id)."""
        key = self.keys.shard(shard).index(str(state) if state else "", namespace)
        hi: str | int = "+inf" if before is None else before[0]
        out: list[tuple[str, int]] = []
        offset = 0
        while len(out) < count:
            res = await self.redis.zrevrangebyscore(
                key, hi, "-inf", start=offset, num=count, withscores=True
            )
            if not res:
                break
            offset += len(res)
            for member, score in res:
                entry: tuple[str, int] = (_s(member), int(score))
                # Same-millisecond ties are ordered by id, so (score, id) is a strict cursor.
                if before is None or (entry[1], entry[0]) < before:
                    out.append(entry)
        return out[:count]

    async def active_graphs(self, namespace: str, states: Sequence[int]) -> int:
        """How many graphs of ``namespace`` are in ``states``, over every shard (one round
        trip; on a cluster the shards' slots are read in parallel, not atomically)."""
        pipe = self.redis.pipeline(transaction=False)
        for sk in self.keys.all_shards():
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
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Dead letters of one shard, newest first, from ``before`` (an entry id) down."""
        res = await self.redis.xrevrange(
            self.keys.shard(shard).dead, max=before or "+", min="-", count=count
        )
        return [(_s(mid), fields) for mid, fields in res]

    async def node_fields(
        self, shard: int, graph_id: str, node: str, *names: str
    ) -> list[bytes | None]:
        """Some per-node fields (``<node>:<name>``) of one graph."""
        gk = self.keys.shard(shard).graph(graph_id)
        return list(await self.redis.hmget(gk.nodes, [f"{node}:{n}" for n in names]))

    async def dead_letter(self, shard: int, op: str, entry_id: str) -> tuple[str, str]:
        """Run deadletter.lua (``op`` requeue or drop); returns (outcome, graph_id)."""
        res = await self._run("deadletter", self.keys.shard(shard), [op, entry_id])
        return _s(res[0]), _s(res[1])


def dumps(value: Any) -> str:
    """Compact JSON as stored in Redis."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
