"""What a node's execution holds of its run's budget (docs/limits.md, "Budgets"), driven
through the typed contract as a worker drives it (take, reserve, reconcile, reclaim,
apply): a reservation fits next to the run's usage and every hold, and a hold ends with
its execution, so a dead worker's never leaks."""

from __future__ import annotations

import pytest
from test_advance import LEASE, first_item

from dago.store.functions import ReconcileArgs, ReserveArgs, Result, WorkItem, usage_arg
from dago.store.schema import Budget, Meta, Usage
from dago.v1 import execution_pb2
from harness import InProcessStack, MakeStack, eventually, request, tool
from redisfixture import RedisTarget


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    s = await make_stack(redis_target, workers=0)
    await s.store.ensure_groups()
    return s


def reserve(item: WorkItem, input_tokens: int, max_tokens: int) -> ReserveArgs:
    """A call of ``input_tokens`` and up to ``max_tokens`` at $1 per thousand tokens."""
    return ReserveArgs(
        item.graph_id, item.node, item.attempt, item.iteration, item.execution,
        item.msg_id.decode(), input_tokens, max_tokens, 64, "0.001", "0.001",
    )  # fmt: skip


async def held(stack: InProcessStack, shard: int, gid: str) -> tuple[int, float, int, int]:
    """The run's held tokens and cost, and its used input and output tokens."""
    (v,) = await stack.store.graph_fields_many(
        [(shard, gid)], Meta.RESERVED_TOKENS, Meta.RESERVED_COST, Usage.INPUT, Usage.OUTPUT
    )
    return int(v[0] or 0), round(float(v[1] or 0), 6), int(v[2] or 0), int(v[3] or 0)


async def test_a_dead_workers_hold_is_released_and_its_calls_counted_when_reclaimed(
    stack: InProcessStack,
) -> None:
    gid = await stack.client.submit(
        request([tool("a", "sleep", inputs={"seconds": 1})], limits={"max_tokens": 1000})
    )
    shard, first = await first_item(stack, gid)
    item = first.item
    r = await stack.store.reserve(shard, reserve(item, 100, 500))
    assert (r.outcome, r.max_tokens) == (Budget.FIT, 500)
    assert await held(stack, shard, gid) == (600, 0.6, 0, 0)
    # The second call must fit next to the first one's hold: 1000 - 600 - 100 = 300 left.
    r2 = await stack.store.reserve(shard, reserve(item, 100, 500))
    assert (r2.outcome, r2.max_tokens) == (Budget.FIT, 300)
    # Both reconciled to what they used: the hold is the real usage now.
    for tokens, cost in ((600, "0.6"), (400, "0.4")):
        args = ReconcileArgs(gid, "a", item.execution, tokens, cost, 100, 150, "0.25")
        assert await stack.store.reconcile(shard, args)
    assert await held(stack, shard, gid) == (500, 0.5, 0, 0)
    # The worker dies; another takes the item over: the hold ends, its calls count as used.
    ids: list[bytes] = []

    async def idle() -> bool:
        ids[:] = [m for m, _ in await stack.store.idle_items(shard, 50, 10)]
        return bool(ids)

    await eventually(idle, 10)
    (again,) = await stack.store.reclaim(shard, "rescuer", ids, 50, 5, LEASE)
    assert again.item.execution == 2
    assert await held(stack, shard, gid) == (0, 0.0, 200, 300)
    # The dead execution's late reconcile changes nothing.
    late = ReconcileArgs(gid, "a", item.execution, 0, "0", 1, 1, "0.001")
    assert not await stack.store.reconcile(shard, late)
    # The new execution reserves next to that usage, and its applied result ends its hold.
    r3 = await stack.store.reserve(shard, reserve(again.item, 100, 1000))
    assert (r3.outcome, r3.max_tokens) == (Budget.FIT, 400)
    it = again.item
    res = Result(
        it.msg_id, gid, "a", it.attempt, it.iteration, it.execution, "{}", "ok", "{}", "",
        usage_arg(100, 50, 0, 0, 0.15), "", "", 0, it.start_deliveries,
    )  # fmt: skip
    applied = await stack.store.apply(shard, "rescuer", 0, LEASE, [res])
    assert applied.states == [execution_pb2.NODE_STATE_COMPLETED]
    assert await held(stack, shard, gid) == (0, 0.0, 300, 350)


async def test_a_call_below_the_floor_fails_and_holds_nothing(stack: InProcessStack) -> None:
    gid = await stack.client.submit(
        request([tool("a", "sleep", inputs={"seconds": 1})], limits={"max_tokens": 150})
    )
    shard, first = await first_item(stack, gid)
    r = await stack.store.reserve(shard, reserve(first.item, 100, 500))
    assert r.outcome == Budget.FAIL and "limits.max_tokens" in r.message
    assert await held(stack, shard, gid) == (0, 0.0, 0, 0)
