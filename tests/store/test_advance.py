"""advance.lua: applying results and starting the next work items in one step.

No worker runs here: the test drives Redis exactly as a worker does (read, start, then
advance with results), so each step's effect can be checked.
"""

from __future__ import annotations

from typing import Any

import pytest

from dago.engine.ids import parse_shard
from dago.store.store import WorkItem
from dago.v1 import execution_pb2
from harness import InProcessStack, MakeStack, echo, edge, kinds, request
from redisfixture import RedisTarget

W = "w-test"


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    s = await make_stack(redis_target, workers=0)
    await s.store.ensure_groups()  # a worker would create them
    return s


def result(item: WorkItem, output: str, taken: str) -> list[Any]:
    """complete.lua's 13 fields for a successful attempt."""
    ident = [item.msg_id, item.graph_id, item.node, item.attempt, item.iteration]
    return [*ident, "{}", "ok", output, taken, "", "", "", 0]


async def first_item(stack: InProcessStack, gid: str) -> tuple[int, WorkItem]:
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    (item,) = await stack.store.read_work([shard], W, 10, block_ms=1000)
    (res,) = await stack.store.start(
        shard, W, [item.msg_id, gid, item.node, 1, 1, 1, "0", "", 60000]
    )
    assert res[0] == b"run"
    return shard, item


async def test_a_chain_runs_one_round_trip_per_step(stack: InProcessStack) -> None:
    """Each advance applies a node's result and hands back its successor, already running
    and with the output it reads."""
    req = request(
        [echo("a", v=1), echo("b", v="{{ nodes.a.output.v }}"), echo("c", v=3)],
        [edge("a", "b"), edge("b", "c")],
    )
    gid = await stack.client.submit(req)
    shard, item = await first_item(stack, gid)
    outputs = {"a": '{"v":1}', "b": '{"v":"1"}', "c": '{"v":3}'}
    seen = []
    while True:
        results, items = await stack.store.advance(
            shard, W, 8, 1500, result(item, outputs[item.node], "0" if item.node == "a" else "1")
        )
        assert results == ["applied"]
        seen.append(item.node)
        if not items:
            break
        ((item, started),) = items
        assert started[0] == b"run"
        if item.node == "b":
            # b reads a's output: it comes with the start, like start.lua returns it.
            assert started[2] == [b"a", b'{"v":1}']
    assert seen == ["a", "b", "c"]
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
    history = await stack.client.history(gid)
    started_nodes = [e.node_id for e in history if e.WhichOneof("payload") == "node_started"]
    assert started_nodes == ["a", "b", "c"]
    assert kinds(history)[-1] == "graph_completed"
    info = await stack.store.redis.xpending(stack.store.keys.shard(shard).work, "workers")
    assert info["pending"] == 0


async def test_items_of_graphs_without_start_plans_come_back_unstarted(
    stack: InProcessStack,
) -> None:
    """A graph stored before the topology carried start plans: its next item is read and
    handed to the worker unstarted, and starting it the usual way still works."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, item = await first_item(stack, gid)
    topo = stack.store.keys.shard(shard).graph(gid).topo
    await stack.store.redis.hdel(topo, "<b")
    results, items = await stack.store.advance(shard, W, 8, 1500, result(item, '{"v":1}', "0"))
    assert results == ["applied"]
    ((nxt, started),) = items
    assert (nxt.node, started[0]) == ("b", b"read")
    st = await stack.client.status(gid)
    assert {n.node_id: n.state for n in st.nodes}["b"] == execution_pb2.NODE_STATE_QUEUED
    (res,) = await stack.store.start(shard, W, [nxt.msg_id, gid, "b", 1, 1, 1, "0", "", 60000])
    assert res[0] == b"run"


async def test_want_zero_only_applies(stack: InProcessStack) -> None:
    """With no free slot the step takes no work: the successor stays queued for any worker."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, item = await first_item(stack, gid)
    results, items = await stack.store.advance(shard, W, 0, 1500, result(item, '{"v":1}', "0"))
    assert (results, items) == (["applied"], [])
    (nxt,) = await stack.store.read_work([shard], "other", 10, block_ms=1000)
    assert nxt.node == "b"
