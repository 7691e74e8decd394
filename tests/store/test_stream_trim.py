"""The work stream is trimmed of acknowledged items, never of pending ones."""

from __future__ import annotations

from dago.store.client import connect
from dago.store.keys import WORK_GROUP, Keys
from dago.store.store import Store
from dago.v1 import execution_pb2
from harness import InProcessStack, echo, eventually, request, stack_settings
from redisfixture import RedisServer


async def test_acknowledged_work_items_are_trimmed_and_pending_ones_kept(
    redis_single: RedisServer, key_prefix: str
) -> None:
    # One shard, so every work item of the three graphs lands on one stream.
    settings = stack_settings(redis_single.url, key_prefix, shards=1)
    async with InProcessStack(settings) as stack:
        work = stack.store.keys.shard(0).work
        redis = stack.store.redis
        gids = [
            await stack.client.submit(request([echo(f"n{i}", k=g) for i in range(500)]))
            for g in range(3)
        ]
        for gid in gids:
            st = await stack.client.wait(gid, timeout=60)
            assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st

        async def trimmed() -> bool:
            return int(await redis.xlen(work)) < 1000

        # 1,500 items went through the stream; the sweeper trims what was acknowledged.
        await eventually(trimmed, timeout=10)

    # With the workers gone: an item delivered but not acknowledged (its worker still owns
    # it) survives trimming, and so does everything after it.
    store = Store(connect(settings), Keys(settings.key_prefix, settings.shards))
    redis = store.redis
    try:
        await redis.xadd(work, {"g": "x", "n": "y", "a": "1", "i": "0"})
        claimed = await redis.xreadgroup(WORK_GROUP, "ghost", {work: ">"}, count=1)
        held = claimed[0][1][0][0]
        for _ in range(1100):
            await redis.xadd(work, {"filler": "1"})
        rest = await redis.xreadgroup(WORK_GROUP, "ghost", {work: ">"}, count=2000)
        await redis.xack(work, WORK_GROUP, *[m for m, _ in rest[0][1]])
        await store.sweep(0)
        assert await redis.xrange(work, held, held), "the pending item was trimmed"
        pending = await redis.xpending(work, WORK_GROUP)
        assert pending["pending"] == 1 and pending["min"] == held
    finally:
        await redis.aclose()
