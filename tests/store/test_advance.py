"""The worker's functions (take, apply) driven directly through the typed contract.

No worker runs here: the test calls the functions exactly as a worker does (take, then
apply with results), so each step's effect can be checked.
"""

from __future__ import annotations

import pytest

from dago.engine.ids import parse_shard
from dago.store.functions import Outcome, Result, Started, WorkItem
from dago.store.schema import Fair, Meta, Work
from dago.v1 import execution_pb2
from harness import InProcessStack, MakeStack, echo, edge, eventually, kinds, request, tool
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
        "{}", Outcome.OK, output, taken, "", "", "", 0, item.start_deliveries,
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
    """A taken item (of a node that is not inline) is running in Redis, with its attempt's
    node_started event; as the graph's first start it carries the run's stored inputs with
    its definition."""
    req = request([tool("a", "sleep", inputs={"seconds": "{{ inputs.x }}"})], inputs={"x": 7})
    gid = await stack.client.submit(req)
    _, started = await first_item(stack, gid)
    assert started.graph is not None and started.graph[1] == b'{"x":7}'
    assert (started.item.node, started.item.attempt, started.item.deliveries) == ("a", 1, 1)
    st = await stack.client.status(gid)
    assert st.nodes[0].state == execution_pb2.NODE_STATE_RUNNING
    assert "node_started" in kinds(await stack.client.history(gid))


async def test_an_inline_node_is_delivered_unstarted_and_applied_in_one_call(
    stack: InProcessStack,
) -> None:
    """An echo node is inline: its take writes nothing (the node stays queued, no event, the
    graph not yet started); the apply starts and completes it in one call, with the events
    a separate start would have written, in the same order, in one entry of the log."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, started = await first_item(stack, gid)
    item = started.item
    assert not item.started
    assert (item.node, item.attempt, item.iteration, item.execution) == ("a", 1, 1, 1)
    assert started.graph is not None  # the graph's first delivery carries its definition
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_SUBMITTED
    assert st.nodes[0].state == execution_pb2.NODE_STATE_QUEUED
    assert list(st.nodes[0].attempts) == []
    assert kinds(await stack.client.history(gid)) == ["graph_submitted"]
    events_key = stack.store.keys.shard(shard).graph(gid).events
    assert await stack.store.redis.xlen(events_key) == 1

    applied = await stack.store.apply(shard, W, 8, LEASE, [result(item, '{"v":1}', "0")])
    assert applied.states == [execution_pb2.NODE_STATE_COMPLETED]
    history = await stack.client.history(gid)
    assert kinds(history) == ["graph_submitted", "graph_started", "node_started", "node_completed"]
    assert [e.seq for e in history] == [1, 2, 3, 4]
    assert history[2].node_started.worker_id == W
    assert not history[2].node_started.redelivered
    assert (history[2].attempt, history[3].attempt) == (1, 1)
    # One call, one entry: the three events of the apply are packed together.
    assert await stack.store.redis.xlen(events_key) == 2
    st = await stack.client.status(gid)
    a = next(n for n in st.nodes if n.node_id == "a")
    assert a.state == execution_pb2.NODE_STATE_COMPLETED
    (rec,) = a.attempts
    assert (rec.attempt, rec.execution, rec.state, rec.worker_id) == (
        1, 1, execution_pb2.NODE_STATE_COMPLETED, W,
    )  # fmt: skip
    assert 0 < rec.start_time.ToMilliseconds() <= rec.end_time.ToMilliseconds()
    # The next node came back from the same call, unstarted too, with a's output.
    (nxt,) = applied.started
    assert (nxt.item.node, nxt.item.started) == ("b", False)
    assert nxt.graph is None  # the graph was started: this worker has it
    applied = await stack.store.apply(shard, W, 8, LEASE, [result(nxt.item, '{"v":2}', "")])
    assert applied.states == [execution_pb2.NODE_STATE_COMPLETED]
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
    history = await stack.client.history(gid)
    assert kinds(history) == [
        "graph_submitted", "graph_started", "node_started", "node_completed",
        "node_started", "node_completed", "graph_completed",
    ]  # fmt: skip
    steps = await stack.store.redis.hget(stack.store.keys.shard(shard).graph(gid).meta, Meta.STEPS)
    assert steps == b"2"
    info = await stack.store.redis.xpending(stack.store.keys.shard(shard).work, "workers")
    assert info["pending"] == 0


async def test_an_inline_result_of_a_cancelled_graph_is_dropped(stack: InProcessStack) -> None:
    """Cancel while an inline node runs: the node was never started, so it is cancelled as
    a queued one; the result that arrives after is fenced out and only acks its item."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, started = await first_item(stack, gid)
    assert not started.item.started
    outcome, _ = await stack.store.cancel(shard, gid, "test")
    assert outcome == "cancelled"
    applied = await stack.store.apply(shard, W, 8, LEASE, [result(started.item, '{"v":1}', "0")])
    assert (applied.states, applied.started) == ([execution_pb2.NODE_STATE_UNSPECIFIED], [])
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_CANCELLED
    a = next(n for n in st.nodes if n.node_id == "a")
    assert a.state == execution_pb2.NODE_STATE_CANCELLED
    assert list(a.attempts) == []
    history = await stack.client.history(gid)
    assert "node_started" not in kinds(history) and "node_completed" not in kinds(history)
    assert kinds(history)[-1] == "graph_cancelled"
    info = await stack.store.redis.xpending(stack.store.keys.shard(shard).work, "workers")
    assert info["pending"] == 0


async def test_an_inline_item_reclaimed_runs_once_and_the_late_result_is_fenced_out(
    stack: InProcessStack,
) -> None:
    """A worker took an inline node's item and died before applying it: the item is still
    pending, so after its lease another worker reclaims it, again unstarted (the first
    delivery wrote nothing), and applies it; the dead worker's late result then changes
    nothing. One node_started (redelivered), one node_completed, one attempt record."""
    gid = await stack.client.submit(request([echo("a", v=1)]))
    shard, first = await first_item(stack, gid)
    ids: list[bytes] = []

    async def idle() -> bool:
        ids[:] = [m for m, _ in await stack.store.idle_items(shard, 50, 10)]
        return bool(ids)

    await eventually(idle, 10)
    (again,) = await stack.store.reclaim(shard, "rescuer", ids, 50, 5, LEASE)
    item = again.item
    assert (item.node, item.started, item.deliveries, item.execution) == ("a", False, 2, 1)
    applied = await stack.store.apply(shard, "rescuer", 0, LEASE, [result(item, '{"v":1}', "")])
    assert applied.states == [execution_pb2.NODE_STATE_COMPLETED]
    late = await stack.store.apply(shard, W, 0, LEASE, [result(first.item, '{"v":9}', "")])
    assert late.states == [execution_pb2.NODE_STATE_UNSPECIFIED]
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
    (rec,) = st.nodes[0].attempts
    assert (rec.execution, rec.state, rec.worker_id) == (
        1, execution_pb2.NODE_STATE_COMPLETED, "rescuer",
    )  # fmt: skip
    history = await stack.client.history(gid)
    assert kinds(history) == [
        "graph_submitted", "graph_started", "node_started", "node_completed", "graph_completed",
    ]  # fmt: skip
    assert history[2].node_started.redelivered
    assert history[2].node_started.worker_id == "rescuer"
    assert history[3].node_completed.output.struct_value["v"] == 1
    assert [e.seq for e in history] == [1, 2, 3, 4, 5]


async def test_a_late_ack_of_a_reclaimed_item_leaves_the_running_count_exact(
    stack: InProcessStack,
) -> None:
    """The running count of a namespace (fair dispatch) stays exact when a reclaimed item's
    dead worker acks it again late: only the first ack counts (a namespace's items are
    counted, not mapped one by one, while it is the only one at work)."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)]))
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    first = {s.item.node: s for s in (await stack.store.take([shard], W, 10, LEASE)).started}
    assert sorted(first) == ["a", "b"]
    sk = stack.store.keys.shard(shard)

    async def running() -> int:
        return int(await stack.store.redis.hget(sk.fair, Fair.RUNNING + "default") or 0)

    assert await running() == 2
    ids: list[bytes] = []

    async def idle() -> bool:
        ids[:] = [m for m, _ in await stack.store.idle_items(shard, 50, 10)]
        return len(ids) == 2

    await eventually(idle, 10)
    a_id = first["a"].item.msg_id
    assert a_id in ids
    (again,) = await stack.store.reclaim(shard, "rescuer", [a_id], 50, 5, LEASE)
    await stack.store.apply(shard, "rescuer", 0, LEASE, [result(again.item, '{"v":1}', "")])
    assert await running() == 1
    late = await stack.store.apply(shard, W, 0, LEASE, [result(first["a"].item, '{"v":9}', "")])
    assert late.states == [execution_pb2.NODE_STATE_UNSPECIFIED]
    assert await running() == 1  # b still runs: the late ack counted nothing
    await stack.store.apply(shard, W, 0, LEASE, [result(first["b"].item, '{"v":2}', "")])
    assert await running() == 0
    assert int(await stack.store.redis.hget(sk.fair, Fair.UNTRACKED) or 0) == 0


async def test_an_inline_node_counts_its_step_when_applied(stack: InProcessStack) -> None:
    """max_steps holds for inline nodes: their step is counted by the apply that starts
    them, and the apply past the limit fails the graph instead of completing the node."""
    req = request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")])
    req.graph.limits.max_steps = 1
    gid = await stack.client.submit(req)
    shard, started = await first_item(stack, gid)
    applied = await stack.store.apply(shard, W, 8, LEASE, [result(started.item, '{"v":1}', "0")])
    assert applied.states == [execution_pb2.NODE_STATE_COMPLETED]
    (nxt,) = applied.started
    applied = await stack.store.apply(shard, W, 8, LEASE, [result(nxt.item, '{"v":2}', "")])
    assert applied.states == [execution_pb2.NODE_STATE_UNSPECIFIED]
    st = await stack.client.status(gid)
    assert st.state == execution_pb2.GRAPH_STATE_FAILED
    assert "max_steps" in st.error.message
    assert "node_started" not in kinds(await stack.client.history(gid), "b")


async def test_an_unstarted_item_is_renewed_while_its_node_waits_for_it(
    stack: InProcessStack,
) -> None:
    """An inline node's item its worker runs in a task after all (it has no inline form
    there) keeps its lease by renewal like any item, so it is not reclaimed from under a
    live worker; once the node moved on, its renewal is refused."""
    gid = await stack.client.submit(request([echo("a", v=1)]))
    shard, started = await first_item(stack, gid)
    assert not started.item.started

    work = stack.store.keys.shard(shard).work

    async def idle_ms() -> int:
        (row,) = await stack.store.redis.xpending_range(work, "workers", "-", "+", 10)
        return int(row["time_since_delivered"])

    async def idle() -> bool:
        return await idle_ms() >= 200

    await eventually(idle, 10)
    before = await idle_ms()
    await stack.store.renew(shard, W, [started.item])
    assert await idle_ms() < before
    await stack.store.apply(shard, W, 0, LEASE, [result(started.item, '{"v":1}', "")])
    assert (await stack.client.status(gid)).state == execution_pb2.GRAPH_STATE_COMPLETED
    # A renewal of a stale delivery changes nothing (the item was acked: nothing pending).
    await stack.store.renew(shard, W, [started.item])
    assert await stack.store.idle_items(shard, 0, 10) == []


async def test_a_round_applies_each_shard_in_one_pipeline(stack: InProcessStack) -> None:
    """``apply_round`` (a worker's round) is one ``apply`` per shard, sent together: each
    part applies its shard's results and starts that shard's next items; a library Redis
    lost (a restart) is loaded again and the calls it refused are made again."""
    shards = stack.settings.shards
    gids: dict[int, set[str]] = {}
    for _ in range(200):
        gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
        gids.setdefault(parse_shard(gid, shards) or 0, set()).add(gid)
        if len(gids) == 3:
            break
    firsts = {s: (await stack.store.take([s], W, 200, LEASE)).started for s in gids}
    await stack.store.redis.function_flush()
    parts = [(s, 200, [result(f.item, '{"v":1}', "0") for f in fs]) for s, fs in firsts.items()]
    replies = await stack.store.apply_round(W, LEASE, parts)
    for (shard, _, results), applied in zip(parts, replies, strict=True):
        assert not isinstance(applied, Exception)
        assert applied.applied == [True] * len(results) and len(results) == len(gids[shard])
        assert {(n.item.shard, n.item.node) for n in applied.started} == {(shard, "b")}
        assert {n.item.graph_id for n in applied.started} == gids[shard]
    # The same results again are stale on every shard: nothing applied, nothing started.
    again = await stack.store.apply_round(W, LEASE, parts)
    assert [(a.applied, a.started) for a in again if not isinstance(a, Exception)] == [
        ([False] * len(r), []) for _, _, r in parts
    ]


async def test_a_work_entry_holds_the_item_as_it_was_queued(stack: InProcessStack) -> None:
    """A take moves a queued item to the work stream as its fair queue held it, in one
    field (``Work.PACKED``), and starts it from there; a reclaim reads it the same way."""
    gid = await stack.client.submit(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    shard, started = await first_item(stack, gid)
    sk = stack.store.keys.shard(shard)
    ((mid, fields),) = await stack.store.redis.xrange(sk.work)
    assert mid == started.item.msg_id
    assert list(fields) == [Work.PACKED.encode()]
    (packed,) = fields.values()
    assert packed.decode().split(Fair.QUEUED_SEP)[1:] == [gid, "a", "1", "1"]
    ids: list[bytes] = []

    async def idle() -> bool:
        ids[:] = [m for m, _ in await stack.store.idle_items(shard, 50, 10)]
        return ids == [mid]

    await eventually(idle, 10)
    (again,) = await stack.store.reclaim(shard, "rescuer", [mid], 50, 5, LEASE)
    assert (again.item.graph_id, again.item.node, again.item.attempt) == (gid, "a", 1)
    assert (again.item.iteration, again.item.deliveries) == (1, 2)
    applied = await stack.store.apply(
        shard, "rescuer", 8, LEASE, [result(again.item, '{"v":1}', "0")]
    )
    assert applied.states == [execution_pb2.NODE_STATE_COMPLETED]
    (b,) = applied.started
    assert (b.item.graph_id, b.item.node, b.item.attempt, b.item.iteration) == (gid, "b", 1, 1)
    assert b.outputs == [] and b.graph is None
