"""The Lua scripts and ``dago.store.keys`` agree on the Redis key layout.

The scripts build per-graph key names themselves (``lua/common.lua``), so a drift between
the two would put state under names the Python side never reads, or outside the shard's
hash slot. These tests run real graphs (completed with a retry, failed, cancelled while
running, with a request_id and a deadline) through the real API and workers, then list
every key in Redis and check that each is a name ``dago.store.keys`` produces and carries the
hash tag of its shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dago.engine.ids import parse_shard
from dago.store.keys import Keys
from dago.store.schema import Fair
from dago.store.shares import today
from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    InProcessStack,
    echo,
    edge,
    eventually,
    node_states,
    request,
    stack_settings,
    tool,
)
from redisfixture import RedisServer

SHARDS = 4
GRAPH_STATES = [v for v in execution_pb2.GraphState.values() if v != 0]


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes: the text inside the first ``{...}``."""
    start = key.find("{")
    end = key.find("}", start + 1)
    assert start >= 0 and end > start + 1, f"{key!r} has no hash tag"
    return key[start + 1 : end]


def graph_shard(graph_id: str) -> int:
    shard = parse_shard(graph_id, SHARDS)
    assert shard is not None, graph_id
    return shard


def layout(keys: Keys, graphs: Mapping[str, str]) -> dict[str, str]:
    """Every key name ``dago.store.keys`` gives for these graphs (id -> request_id) on every shard,
    with the Redis type its docstring gives it."""
    names = {keys.workers: "hash", keys.workers_seen: "zset"}
    for sk in keys.all_shards():
        names |= {sk.work: "stream", sk.dead: "stream", sk.timers: "zset", sk.stats: "hash"}
        names |= {sk.notify: "stream", sk.control: "stream", sk.wake: "stream", sk.index(): "zset"}
        names[sk.archive] = "zset"
        names[sk.watched] = "zset"
        names[sk.namespaces] = "set"
        names[sk.waits()] = "zset"
        names |= {sk.index(str(state)): "zset" for state in GRAPH_STATES}
        # Fair dispatch (lua/fair.lua): the queues and the ready set are empty (gone) once
        # every item was taken; the day's spend only after a run cost something.
        names |= {sk.fair: "hash", sk.shares: "hash", sk.ready: "zset", sk.inflight: "hash"}
        names |= {
            sk.queue("default", p): "list" for p in range(Fair.PRIORITY_MIN, Fair.PRIORITY_MAX + 1)
        }
        names[sk.spend(today())] = "hash"
    for gid, rid in graphs.items():
        sk = keys.shard(graph_shard(gid))
        gk = sk.graph(gid)
        names |= {gk.meta: "hash", gk.nodes: "hash", gk.topo: "hash"}
        names[gk.events] = "stream"
        names[gk.children] = "zset"
        assert set(gk.all()) <= set(names), gk.all()
        if rid:
            names[sk.request(rid)] = "hash"
    return names


async def scan(redis: Any, match: str) -> set[str]:
    return {
        k.decode() if isinstance(k, bytes) else k
        async for k in redis.scan_iter(match=match, count=1000)
    }


class Ran:
    """The graphs a stack ran: id -> request_id, and which one was cancelled."""

    def __init__(self) -> None:
        self.graphs: dict[str, str] = {}
        self.completed = ""
        self.failed = ""
        self.cancelled = ""
        self.waiting = ""


async def run_graphs(stack: InProcessStack, prefix: str) -> Ran:
    """Runs graphs that touch every kind of key: retries and deadlines (timers), a request_id
    (idempotency record), a failure, and a cancellation of a running node (control stream)."""
    ran = Ran()
    rid = f"{prefix}-req"
    req = request(
        [
            tool(
                "a",
                "flaky",
                inputs={"fail_attempts": 1},
                # The backoff keeps the run going until the watch below is registered (a
                # run that ends first is never watched and writes no notify entry).
                retry={"maxAttempts": 2, "initialBackoff": "0.5s"},
            ),
            echo("b", x="{{ nodes.a.output.attempt }}"),
        ],
        [edge("a", "b")],
        limits={"deadline": "60s"},
        request_id=rid,
    )
    # Watched to its end: its log's growth is named in the notify stream.
    gid = await stack.client.submit(req)
    await stack.client.watch(gid)
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
    assert node_states(st) == {"a": "COMPLETED", "b": "COMPLETED"}
    ran.graphs[gid] = rid
    ran.completed = gid

    gid, st = await stack.client.run(request([tool("f", "fail")]))
    assert st.state == execution_pb2.GRAPH_STATE_FAILED, st
    ran.graphs[gid] = ""
    ran.failed = gid

    gid = await stack.client.submit(request([tool("s", "sleep", inputs={"seconds": 30})]))
    ran.graphs[gid] = ""
    ran.cancelled = gid

    async def running() -> bool:
        return node_states(await stack.client.status(gid)) == {"s": "RUNNING"}

    await eventually(running)
    await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="key test"), timeout=10
    )
    st = await stack.client.wait(gid)
    assert st.state == execution_pb2.GRAPH_STATE_CANCELLED, st

    # A wait node left waiting: the shard's inbox and the wait's timeout on the timers.
    wait = {"id": "w", "wait": {"timeout": "600s", "timeoutDecision": "reject"}}
    gid = await stack.client.submit(request([wait]))
    ran.graphs[gid] = ""
    ran.waiting = gid

    async def waiting() -> bool:
        return node_states(await stack.client.status(gid)) == {"w": "WAITING"}

    await eventually(waiting)
    return ran


async def check_layout(redis: Any, found: Iterable[str], keys: Keys, ran: Ran) -> None:
    """``found`` (every key of the deployment) is the documented layout, each key of the
    documented type and in the slot of its shard, and holds what these runs must have written."""
    found = set(found)
    allowed = layout(keys, ran.graphs)
    stray = sorted(found - set(allowed))
    assert not stray, f"keys outside the layout of dago.store.keys: {stray}"
    for key in sorted(found):
        kind = (await redis.type(key)).decode()
        assert kind == allowed[key], f"{key} is a {kind}, not a {allowed[key]}"

    shard_tags = {f"s{n}" for n in range(SHARDS)}
    for key in found:
        assert key.startswith(f"{keys.prefix}:{{"), key
        assert hash_tag(key) in shard_tags | {"workers"}, key
    for gid, rid in ran.graphs.items():
        sk = keys.shard(graph_shard(gid))
        owned = [k for k in found if gid in k] + ([sk.request(rid)] if rid else [])
        assert owned, f"no key of graph {gid}"
        for key in owned:
            # Same slot as the work stream the graph's scripts are routed by.
            assert hash_tag(key) == hash_tag(sk.work) == f"s{sk.shard}", key

    # Not vacuous: what these runs must have written is there, under the documented names.
    required = {keys.workers, keys.workers_seen}
    required |= {sk.work for sk in keys.all_shards()}  # consumer groups on every shard
    required |= {sk.shares for sk in keys.all_shards()}  # written as processes start
    done = keys.shard(graph_shard(ran.completed))
    # Every key of a graph but its children's index (it has no subgraph nodes).
    required |= set(done.graph(ran.completed).all()) - {done.graph(ran.completed).children}
    required |= {done.request(ran.graphs[ran.completed]), done.timers, done.index()}
    required |= {done.notify, done.watched, done.fair}
    required.add(done.index(str(execution_pb2.GRAPH_STATE_COMPLETED)))
    failed = keys.shard(graph_shard(ran.failed))
    fg = failed.graph(ran.failed)
    required |= {fg.meta, fg.nodes, fg.topo, fg.events}
    required.add(failed.index(str(execution_pb2.GRAPH_STATE_FAILED)))
    cancelled = keys.shard(graph_shard(ran.cancelled))
    cg = cancelled.graph(ran.cancelled)
    required |= {cg.meta, cg.nodes, cg.topo, cg.events, cancelled.control}
    required.add(cancelled.index(str(execution_pb2.GRAPH_STATE_CANCELLED)))
    waiting = keys.shard(graph_shard(ran.waiting))
    required |= {waiting.waits(), waiting.timers}
    missing = sorted(required - found)
    assert not missing, f"keys dago.store.keys names but the run did not write: {missing}"


async def test_every_key_written_is_in_the_documented_layout(
    redis_single: RedisServer, key_prefix: str
) -> None:
    settings = stack_settings(redis_single.url, key_prefix, shards=SHARDS)
    keys = Keys(key_prefix, SHARDS)
    async with InProcessStack(settings) as stack:
        ran = await run_graphs(stack, key_prefix)
        redis = stack.store.redis
        try:
            found = await scan(redis, f"{key_prefix}:*")
            await check_layout(redis, found, keys, ran)
            # A graph's or request's key under another name (without the prefix, say) would
            # be missed above: look for them anywhere in Redis (other tests share this server,
            # but graph ids and this request id are unique).
            for gid, rid in ran.graphs.items():
                anywhere = await scan(redis, f"*{gid}*")
                if rid:
                    anywhere |= await scan(redis, f"*{rid}*")
                assert anywhere <= found, sorted(anywhere - found)
            # The worker registers itself under the documented names.
            assert b"w0" in await redis.hkeys(keys.workers)
            assert await redis.zscore(keys.workers_seen, "w0") is not None
        finally:
            await redis.aclose()


async def test_a_redis_of_its_own_holds_nothing_but_the_layout(
    private_redis: RedisServer, key_prefix: str
) -> None:
    """On a Redis nothing else uses, every key there is, whatever its name, is dago's layout."""
    settings = stack_settings(private_redis.url, key_prefix, shards=SHARDS)
    async with InProcessStack(settings) as stack:
        ran = await run_graphs(stack, key_prefix)
        redis = stack.store.redis
        try:
            await check_layout(redis, await scan(redis, "*"), Keys(key_prefix, SHARDS), ran)
        finally:
            await redis.aclose()
