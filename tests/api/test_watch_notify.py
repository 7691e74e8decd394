"""Notifications only for watched graphs: the functions name a graph in its shard's notify
stream only while an API process has it registered as watched (api/watch.py registers a
graph in the round trip of its first read and renews it), and the sweeper drops lapsed
registrations."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
import redis.asyncio as aioredis

from dago.engine.ids import parse_shard
from dago.store.schema import Notify
from dago.v1 import orchestrator_pb2
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    eventually,
    kinds,
    request,
    stack_settings,
    tool,
)
from redisfixture import RedisServer


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack()


async def _notified(stack: InProcessStack, shard: int, graph_id: str) -> int:
    entries = await stack.store.redis.xrange(stack.store.keys.shard(shard).notify)
    return sum(1 for _, fields in entries if fields.get(b"g") == graph_id.encode())


def _shard(stack: InProcessStack, graph_id: str) -> int:
    shard = parse_shard(graph_id, stack.settings.shards)
    assert shard is not None
    return shard


async def test_a_run_nobody_watches_is_never_named_in_notify(stack: InProcessStack) -> None:
    gid, _ = await stack.client.run(request([echo("a", v=1), echo("b", v=2)]))
    shard = _shard(stack, gid)
    assert await _notified(stack, shard, gid) == 0
    assert await stack.store.redis.zscore(stack.store.keys.shard(shard).watched, gid) is None


async def test_a_watched_run_is_registered_and_named_as_its_log_grows(
    stack: InProcessStack,
) -> None:
    gid = await stack.client.submit(request([tool("s", "sleep", inputs={"seconds": 0.3})]))
    events = await stack.client.watch(gid)  # registers it, then waits on notify to the end
    assert kinds(events)[-1] == "graph_completed"
    assert events == await stack.client.history(gid)
    shard = _shard(stack, gid)
    until = await stack.store.redis.zscore(stack.store.keys.shard(shard).watched, gid)
    assert until is not None and until > time.time() * 1000
    # The log grew after the watch had read it (the sleep ended): named at least once.
    assert await _notified(stack, shard, gid) >= 1


async def test_the_sweeper_drops_lapsed_registrations(stack: InProcessStack) -> None:
    watched = stack.store.keys.shard(0).watched
    await stack.store.redis.zadd(watched, {"0-lapsed": 1, "0-live": time.time() * 1000 + 60_000})

    async def dropped() -> bool:
        return await stack.store.redis.zscore(watched, "0-lapsed") is None

    await eventually(dropped)
    assert await stack.store.redis.zscore(watched, "0-live") is not None


async def _xranges(url: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        stats = await r.info("commandstats")
        return int(stats.get("cmdstat_xrange", {}).get("calls", 0))
    finally:
        await r.aclose()


def _chain(n: int, big: int = 0) -> orchestrator_pb2.SubmitGraphRequest:
    nodes = [tool(f"s{i}", "sleep", inputs={"seconds": 0.02}) for i in range(n)]
    if big:  # an output larger than a notification carries
        nodes.append(echo("big", text="x" * big))
    ids = [n["id"] for n in nodes]
    return request(nodes, [edge(a, b) for a, b in itertools.pairwise(ids)])


async def test_a_watcher_takes_the_events_notifications_carry(private_redis: RedisServer) -> None:
    async with InProcessStack(stack_settings(private_redis.url, "wcarry")) as stack:
        gid = await stack.client.submit(_chain(20, big=Notify.CARRY_BYTES * 2))
        before = await _xranges(private_redis.url)
        events = await stack.client.watch(gid)
        reads = await _xranges(private_redis.url) - before
        assert events == await stack.client.history(gid)
        assert kinds(events)[-1] == "graph_completed"
        # Each of the 21 steps grew the log after the first read; the small ones came with
        # their notification (the big output's did not: it was read from the log).
        assert reads <= 5, reads


async def test_a_watch_of_an_unknown_graph_leaves_no_registration(stack: InProcessStack) -> None:
    gid = "3-01JDXXXXXXXXXXXXXXXXXXXXXX"
    req = orchestrator_pb2.WatchGraphRequest(graph_id=gid)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        async for _ in stack.client.stub.WatchGraph(req, timeout=10):
            pass
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    watched = stack.store.keys.shard(3).watched
    assert await stack.store.redis.zscore(watched, gid) is None
