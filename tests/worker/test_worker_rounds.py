"""A worker's round reaches Redis as one pipeline.

The completer applies the results it holds in rounds: one ``apply`` call per shard with
results, all sent together. On a single Redis they go on one connection, back to back (one
round trip); the calls awaited one by one, or side by side over the connection pool,
would show as several connections here. On a cluster each node gets its shards' calls;
the graphs must complete all the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import redis.asyncio as aioredis

from dago.app import build_worker
from dago.engine.ids import parse_shard
from dago.v1 import execution_pb2
from harness import MakeStack, eventually, request, tool
from redisfixture import RedisTarget

SHARDS = 4


async def _monitor(url: str, seen: list[dict[str, Any]], ready: asyncio.Event) -> None:
    """Every command the single Redis runs, as redis-py's MONITOR parses it."""
    client = aioredis.Redis.from_url(url)
    try:
        async with client.monitor() as m:
            ready.set()
            while True:
                seen.append(await m.next_command())
    finally:
        await client.aclose()


async def test_a_round_over_several_shards_is_one_pipeline(
    redis_target: RedisTarget, make_stack: MakeStack
) -> None:
    # No worker yet: work waits on every shard, so the first take finds it all.
    stack = await make_stack(redis_target, workers=0, shards=SHARDS)
    graph = request([tool("a", "echo", inputs={"v": "$.inputs.v"})], inputs={"v": 1})
    gids: list[str] = []
    for _ in range(200):
        gids.append(await stack.client.submit(graph))
        if {parse_shard(g, SHARDS) for g in gids} == set(range(SHARDS)):
            break
    assert {parse_shard(g, SHARDS) for g in gids} == set(range(SHARDS))

    seen: list[dict[str, Any]] = []
    monitor = None
    if not redis_target.cluster:
        ready = asyncio.Event()
        monitor = asyncio.create_task(_monitor(redis_target.url, seen, ready))
        await asyncio.wait_for(ready.wait(), 5)

    # One take finds an item on every shard; the echo nodes run inline, at once, so their
    # results reach the completer together: one round over every shard.
    worker = build_worker(dataclasses.replace(stack.settings, worker_id="rounds"))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def all_done() -> bool:
            for gid in gids:
                st = await stack.client.status(gid)
                if st.state != execution_pb2.GRAPH_STATE_COMPLETED:
                    return False
            return True

        await eventually(all_done)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        if monitor is not None:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)

    if redis_target.cluster:
        return
    applies = [
        c
        for c in seen
        if c.get("client_type") != "lua"
        and c["command"].startswith("FCALL ")
        and c["command"].split()[1].endswith("_apply")
    ]
    shards = sorted(c["command"].split()[3] for c in applies)
    assert shards == sorted(stack.store.keys.shard(s).work for s in range(SHARDS)), applies
    connections = {(c["client_address"], c["client_port"]) for c in applies}
    assert len(connections) == 1, f"one round's calls came on {len(connections)} connections"
