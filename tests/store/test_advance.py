"""The worker's functions (take, apply) driven directly through the typed contract.

No worker runs here: the test calls the functions exactly as a worker does (take, then
apply with results), so each step's effect can be checked.
"""

from __future__ import annotations

import pytest

from dago.engine.ids import parse_shard
from dago.store.functions import Outcome, Result, Started, WorkItem
from dago.store.schema import Meta
from dago.v1 import execution_pb2
from harness import InProcessStack, MakeStack, echo, edge, kinds, request
from redisfixture import RedisTarget

W = "w-test"
LEASE = 1500


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    s = await make_stack(redis_target, workers=0)
    await s.store.ensure_groups()  # a worker would create them
    return s


def result(item: WorkItem, output: str, taken: str) -> Result:
    """The result of a successful attempt."""
    return Result(
        item.msg_id, item.graph_id, item.node, item.attempt, item.iteration, item.execution,
        "{}", Outcome.OK, output, taken, "", "", "", 0,
    )  # fmt: skip


async def first_item(stack: InProcessStack, gid: str) -> tuple[int, Started]:
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    taken = await stack.store.take([shard], W, 10, LEASE)
    (started,) = taken.started
    assert started.item.graph_id == gid
    return shard, started


async def test_a_chain_runs_one_round_trip_per_step(stack: InProcessStack) -> None:
    """Each apply records a node's result and hands back its successor, already running
    and with the output it reads."""
    req = request(
        [echo("a", v=1), echo("b", v="{{ nodes.a.output.v }}"), echo("c", v=3)],
        [edge("a", "b"), edge("b", "c")],
    )
    gid = await stack.client.submit(req)
    shard, started = await first_item(stack, gid)
    # The graph's first start carries what the worker loads the graph from (no read of its
    # own); later starts do not (a worker that runs them has it, or reads it).
    (stored,) = await stack.store.graph_fields_many(
        [(shard, gid)], Meta.DEFINITION, Meta.INPUTS, Meta.TRACEPARENT
    )
    assert started.graph == tuple(stored) and stored[0]
    outputs = {"a": '{"v":1}', "b": '{"v":"1"}', "c": '{"v":3}'}
    seen = []
    while True:
        item = started.item
        taken = "0" if item.node == "a" else "1"
        applied = await stack.store.apply(
            shard, W, 8, LEASE, [result(item, outputs[item.node], taken)]
        )
        assert applied.applied == [True]
        seen.append(item.node)
        if not applied.started:
            break
        (started,) = applied.started
        assert started.graph is None
        if started.item.node == "b":
            # b reads a's output: it comes with the start.
            assert started.outputs == [("a", b'{"v":1}')]
    assert seen == ["a", "b", "c"]
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
    history = await stack.client.history(gid)
    started_nodes = [e.node_id for e in history if e.WhichOneof("payload") == "node_started"]
    assert started_nodes == ["a", "b", "c"]
    assert kinds(history)[-1] == "graph_completed"
    info = await stack.store.redis.xpending(stack.store.keys.shard(shard).work, "workers")
    assert info["pending"] == 0


async def test_want_zero_only_applies(stack: InProcessStack) -> None:
    """With no free slot the step takes no work: the successor stays queued for any worker."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, started = await first_item(stack, gid)
    applied = await stack.store.apply(shard, W, 0, LEASE, [result(started.item, '{"v":1}', "0")])
    assert (applied.applied, applied.started) == ([True], [])
    taken = await stack.store.take([shard], "other", 10, LEASE)
    assert [s.item.node for s in taken.started] == ["b"]


async def test_a_stale_result_changes_nothing(stack: InProcessStack) -> None:
    """A second report of the same attempt is fenced out: not applied, nothing started."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, started = await first_item(stack, gid)
    res = result(started.item, '{"v":1}', "0")
    first = await stack.store.apply(shard, W, 0, LEASE, [res])
    again = await stack.store.apply(shard, W, 8, LEASE, [res])
    assert first.applied == [True]
    assert again.applied == [False]
    assert [s.item.node for s in again.started] == ["b"]  # b was queued by the first apply
    history = await stack.client.history(gid)
    assert [e.node_id for e in history if e.WhichOneof("payload") == "node_completed"] == ["a"]


async def test_take_never_returns_more_than_wanted_across_shards(
    stack: InProcessStack,
) -> None:
    """Work waiting on every shard: one take over all of them (a single Redis; on a cluster
    each shard's keys live in their own slot, so a take covers one shard) starts exactly
    `want` items, and a take that finds fewer than wanted returns every shard's cursor,
    from which a wait sees new work."""
    n = stack.settings.shards
    gids: list[str] = []
    while len({parse_shard(g, n) for g in gids}) < n or len(gids) < 3 * n:
        gids.append(await stack.client.submit(request([echo("a", v=1)])))
    groups = [[s] for s in range(n)] if stack.settings.cluster else [list(range(n))]
    got: set[str] = set()
    cursors = {}
    for shards in groups:
        waiting = sum(1 for g in gids if parse_shard(g, n) in shards)
        want = waiting - 1
        taken = await stack.store.take(shards, W, want, LEASE)
        assert len(taken.started) == want
        # It stopped once it had enough: not every shard was read to its end, so no wait.
        assert len(taken.cursors) < len(shards)
        rest = await stack.store.take(shards, W, 1000, LEASE)
        assert len(rest.started) == 1
        assert len(rest.cursors) == len(shards)
        got |= {s.item.graph_id for s in [*taken.started, *rest.started]}
        assert not await stack.store.wait_for_work(shards, rest.cursors, 50)
        cursors[tuple(shards)] = rest.cursors
    assert got == set(gids)
    new = await stack.client.submit(request([echo("a", v=1)]))
    shard = parse_shard(new, n)
    assert shard is not None
    (shards,) = [g for g in groups if shard in g]
    assert await stack.store.wait_for_work(shards, cursors[tuple(shards)], 5000)
    last = await stack.store.take(shards, W, 1000, LEASE)
    assert [s.item.graph_id for s in last.started] == [new]


async def test_take_starts_what_it_takes(stack: InProcessStack) -> None:
    """A taken item is running in Redis, with its attempt's node_started event; as the
    graph's first start it carries the run's stored inputs with its definition."""
    req = request([echo("a", v="{{ inputs.x }}")], inputs={"x": 7})
    gid = await stack.client.submit(req)
    _, started = await first_item(stack, gid)
    assert started.graph is not None and started.graph[1] == b'{"x":7}'
    assert (started.item.node, started.item.attempt, started.item.deliveries) == ("a", 1, 1)
    st = await stack.client.status(gid)
    assert st.nodes[0].state == execution_pb2.NODE_STATE_RUNNING
    assert "node_started" in kinds(await stack.client.history(gid))
