"""Run budgets reserved before each model call (docs/limits.md, "Budgets"): the worst case
of every call is reserved against the run's max_tokens and max_cost_usd in Redis, a call
that does not fit whole gets a lower max_tokens, one that does not fit at the floor fails
the run or pauses it, and UpdateGraphLimits raises the limit and resumes it. Real stack
(API, worker, Redis single and cluster), the fake Anthropic API at the HTTP boundary."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from dago.store.stats import RedisCollector
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from dago_client.view import RunView
from fake_anthropic import FakeAnthropic, Text, ToolUse, Usage
from harness import (
    InProcessStack,
    MakeStack,
    edge,
    eventually,
    kinds,
    node_states,
    request,
)
from redisfixture import RedisTarget

G = execution_pb2
MODEL = "claude-sonnet-4-6"
"""$3 per million input tokens, $15 per million output tokens."""
OUT_PRICE = 15 / 1_000_000


async def budget_stack(
    make_stack: MakeStack, redis: RedisTarget, fake: FakeAnthropic, **settings: Any
) -> InProcessStack:
    """A stack calling the fake Anthropic API, whose every answer has 600 output tokens
    ($0.009 at MODEL's prices; its max_tokens caps them, its input counted)."""
    fake.cap_output = True
    fake.count_tokens = True
    fake.default = Text("An answer.", usage=Usage(input=0, output=600))
    return await make_stack(
        redis,
        anthropic_api_key="sk-fake",
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
        **settings,
    )


@pytest.fixture
async def stack(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic
) -> InProcessStack:
    return await budget_stack(make_stack, redis_target, fake)


def chain(n: int, **limits: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """n llm nodes in a row, each asking for up to 1024 output tokens."""
    nodes = [
        {"id": f"n{i}", "llm": {"prompt": f"Step {i}.", "model": MODEL, "max_tokens": 1024}}
        for i in range(n)
    ]
    edges = [edge(f"n{i}", f"n{i + 1}") for i in range(n - 1)]
    return request(nodes, edges, limits=limits)


def max_tokens_sent(fake: FakeAnthropic) -> list[int]:
    return [int(r.body["max_tokens"]) for r in fake.requests]


@pytest.mark.slow
async def test_cost_cap_lowers_the_last_calls_max_tokens_and_never_overshoots(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    _, st = await stack.client.run(chain(10, max_cost_usd=0.05))
    assert st.state == G.GRAPH_STATE_FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "limits.max_cost_usd" in st.error.message
    sent = max_tokens_sent(fake)
    # 600 output tokens ($0.009) a call: four whole calls ($0.036), then calls that only
    # fit lowered ($0.014 left: 933 tokens at most, then what the fifth left), then none.
    assert sent[:4] == [1024] * 4
    assert 600 < sent[4] < 934
    assert 64 <= sent[5] < 600
    assert len(sent) == 6
    # The reservation is the bound: the run's cost never passed its limit.
    assert st.usage.cost_usd <= 0.05
    assert st.usage.cost_usd > 0.05 - 64 * OUT_PRICE


async def test_token_cap_lowers_max_tokens_and_fails_at_the_floor(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    _, st = await stack.client.run(chain(10, max_tokens=2000))
    assert st.state == G.GRAPH_STATE_FAILED
    assert "limits.max_tokens" in st.error.message
    sent = max_tokens_sent(fake)
    # Each call reserves its input and 1024 output tokens, and uses 600 of them.
    assert sent[:2] == [1024] * 2
    assert 64 <= sent[-1] < 600
    # The input is estimated before the call (3.5 characters a token) and counted after it:
    # at most the last call's miss of it goes past the limit (and the backstop fails the run).
    used = st.usage.input_tokens + st.usage.output_tokens
    assert used - 2000 <= fake.usages[-1]["input_tokens"]


def raise_cost(gid: str, usd: float) -> orchestrator_pb2.UpdateGraphLimitsRequest:
    return orchestrator_pb2.UpdateGraphLimitsRequest(
        graph_id=gid, limits=graph_pb2.GraphLimits(max_cost_usd=usd)
    )


async def paused(stack: InProcessStack, gid: str) -> execution_pb2.GraphStatus:
    """Wait until the run is PAUSED; its status then."""
    seen: list[execution_pb2.GraphStatus] = []

    async def check() -> bool:
        seen.append(await stack.client.status(gid))
        return seen[-1].state == G.GRAPH_STATE_PAUSED

    # A worker's first model call waits for the provider's SDK to import (seconds when the
    # machine is busy).
    await eventually(check, timeout=30)
    return seen[-1]


def paused_gauge(stack: InProcessStack) -> float:
    """dago_graphs_paused over every shard (the cluster metrics, read from Redis)."""
    stats = RedisCollector(stack.settings, stack.store.keys)
    (family,) = [m for m in stats.collect() if m.name == "dago_graphs_paused"]
    return sum(s.value for s in family.samples)


def budget_sample(stack: InProcessStack, name: str, kind: str) -> float:
    """A budget counter of the worker, summed over namespaces and models of one kind."""
    (family,) = [m for m in stack.workers[0].metrics.registry.collect() if m.name == name]
    return sum(
        s.value for s in family.samples if s.name == f"{name}_total" and s.labels["kind"] == kind
    )


async def listed(stack: InProcessStack, state: int) -> list[str]:
    req = orchestrator_pb2.ListGraphsRequest(state=state)  # type: ignore[arg-type]
    resp = await stack.client.stub.ListGraphs(req, timeout=10)
    return [g.graph_id for g in resp.graphs]


# $0.009 pays the first call (600 tokens out); the second cannot get its 64-token floor.
PAUSING = {"max_cost_usd": 0.0095, "on_exceed": "LIMIT_ACTION_PAUSE"}


async def test_pause_then_raise_the_limit_completes(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    gid = await stack.client.submit(chain(2, **PAUSING))
    st = await paused(stack, gid)
    # The node that did not fit holds no slot and no work item: queued, its call not made.
    assert node_states(st) == {"n0": "COMPLETED", "n1": "QUEUED"}
    assert len(fake.requests) == 1
    assert gid in await listed(stack, G.GRAPH_STATE_PAUSED)
    assert await asyncio.to_thread(paused_gauge, stack) == 1
    events = await stack.client.history(gid)
    (ex,) = [e for e in events if e.WhichOneof("payload") == "budget_exhausted"]
    assert ex.node_id == "n1" and ex.budget_exhausted.limit == "max_cost_usd"
    # dagoctl watch's view shows the pause.
    view = RunView(gid)
    lines = [line for ev in events for line in view.apply(ev)]
    assert view.state == "paused" and view.nodes["n1"].state == "queued"
    assert any(line.startswith("n1: run paused, ") for line in lines), lines
    # Lowering below what was used is refused; raising resumes the run.
    with pytest.raises(grpc.aio.AioRpcError) as low:
        await stack.client.stub.UpdateGraphLimits(raise_cost(gid, 0.001), timeout=10)
    assert low.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "limits.max_cost_usd" in (low.value.details() or "")
    resp = await stack.client.stub.UpdateGraphLimits(raise_cost(gid, 1.0), timeout=10)
    assert resp.resumed and resp.status.limits.max_cost_usd == 1.0
    st = await stack.client.wait(gid)
    assert st.state == G.GRAPH_STATE_COMPLETED
    assert max_tokens_sent(fake)[-1] == 1024
    events = await stack.client.history(gid)
    assert kinds(events).count("graph_resumed") == 1
    (res,) = [e for e in events if e.WhichOneof("payload") == "graph_resumed"]
    assert list(res.graph_resumed.node_ids) == ["n1"]
    view = RunView(gid)
    assert "run resumed (n1)" in [line for ev in events for line in view.apply(ev)]
    assert gid not in await listed(stack, G.GRAPH_STATE_PAUSED)
    assert st.reserved.input_tokens == 0 and st.reserved.cost_usd == 0
    assert await asyncio.to_thread(paused_gauge, stack) == 0
    # Reserved is each call's worst case, used what it cost: both seen by the metrics.
    reserved = budget_sample(stack, "dago_budget_cost_usd", "reserved")
    used = budget_sample(stack, "dago_budget_cost_usd", "used")
    assert used == pytest.approx(st.usage.cost_usd)
    assert reserved > used
    assert budget_sample(stack, "dago_budget_tokens", "used") == (
        st.usage.input_tokens + st.usage.output_tokens
    )


async def test_cancel_a_paused_run(stack: InProcessStack) -> None:
    gid = await stack.client.submit(chain(2, **PAUSING))
    await paused(stack, gid)
    await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10
    )
    st = await stack.client.wait(gid)
    assert st.state == G.GRAPH_STATE_CANCELLED
    assert node_states(st) == {"n0": "COMPLETED", "n1": "CANCELLED"}
    assert gid not in await listed(stack, G.GRAPH_STATE_PAUSED)
    # An ended run's limits are not changed.
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stack.client.stub.UpdateGraphLimits(raise_cost(gid, 1.0), timeout=10)
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_budget_warning_is_appended_once_per_limit(stack: InProcessStack) -> None:
    # Each call costs ~$0.009: the first passes 1% of $0.5, the next ones add no warning.
    gid, st = await stack.client.run(chain(3, max_cost_usd=0.5, warn_share=0.01))
    assert st.state == G.GRAPH_STATE_COMPLETED
    events = await stack.client.history(gid)
    (w,) = [e for e in events if e.WhichOneof("payload") == "budget_warning"]
    assert w.budget_warning.limit == "max_cost_usd" and w.budget_warning.max == 0.5
    assert 0.005 <= w.budget_warning.used < 0.5
    # It came as the first call was reconciled, before its node completed.
    order = kinds(events)
    assert order.index("budget_warning") < order.index("node_completed")


async def test_update_graph_limits_refuses_bad_values(stack: InProcessStack) -> None:
    gid = await stack.client.submit(chain(2, **PAUSING))
    await paused(stack, gid)
    update = stack.client.stub.UpdateGraphLimits
    for limits, field in [
        (graph_pb2.GraphLimits(max_tokens=-5), "limits.max_tokens"),
        (graph_pb2.GraphLimits(max_cost_usd=float("nan")), "limits.max_cost_usd"),
        (graph_pb2.GraphLimits(max_cost_usd=float("inf")), "limits.max_cost_usd"),
        (graph_pb2.GraphLimits(), "limits"),
    ]:
        req = orchestrator_pb2.UpdateGraphLimitsRequest(graph_id=gid, limits=limits)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await update(req, timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (bad.value.details() or "").startswith(field + ":"), bad.value.details()
    other = gid[:-1] + ("1" if gid.endswith("0") else "0")  # an id no run has
    missing = orchestrator_pb2.UpdateGraphLimitsRequest(graph_id=other, limits=limits)
    missing.limits.max_tokens = 10
    with pytest.raises(grpc.aio.AioRpcError) as nf:
        await update(missing, timeout=10)
    assert nf.value.code() == grpc.StatusCode.NOT_FOUND
    # Nothing changed: still paused.
    assert (await stack.client.status(gid)).state == G.GRAPH_STATE_PAUSED


async def test_bad_budget_fields_are_refused_at_submit(stack: InProcessStack) -> None:
    for limits, field in [
        ({"warn_share": 1.5}, "graph.limits.warn_share"),
        ({"on_exceed": 7}, "graph.limits.on_exceed"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stack.client.submit(chain(1, **limits))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (bad.value.details() or ""), bad.value.details()


async def test_the_deadline_still_fails_a_paused_run(stack: InProcessStack) -> None:
    gid = await stack.client.submit(chain(2, deadline="1.5s", **PAUSING))
    await paused(stack, gid)
    st = await stack.client.wait(gid)
    assert st.state == G.GRAPH_STATE_FAILED
    assert "limits.deadline" in st.error.message
    assert node_states(st)["n1"] == "CANCELLED"


async def test_each_agent_turn_reserves_its_call(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        ToolUse({"value": 1}, "echo", usage=Usage(input=0, output=600)),
        Text("Done.", usage=Usage(input=0, output=600)),
    ]
    node = {
        "id": "agent",
        "agent": {
            "llm": {"prompt": "Echo 1.", "model": MODEL, "max_tokens": 1024},
            "tools": ["echo"],
        },
    }
    _, st = await stack.client.run(request([node], limits={"max_cost_usd": 0.015}))
    assert st.state == G.GRAPH_STATE_COMPLETED, st.error
    first, second = max_tokens_sent(fake)
    # $0.015 holds 1000 output tokens at $15/M (less the input): the first turn is lowered a
    # little, the second to what the first turn's $0.009 left.
    assert 900 < first < 1000 and 300 < second < 400
    assert st.usage.cost_usd <= 0.015
