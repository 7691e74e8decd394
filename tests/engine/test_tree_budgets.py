"""Budgets of runs that start runs, and the namespace's daily budget against running runs
(docs/limits.md, "Whose budget" and "Daily budget of a namespace"): a child run's model
calls (a subgraph's, a graph-bodied map item's) are reserved against its root run's
limits while they run, next to everything the tree holds and has spent; a root that pauses
parks its whole tree and UpdateGraphLimits on it resumes it; a namespace past its daily
cost budget stops its running runs at their next call. Real stack (API, worker, Redis
single and cluster), the fake Anthropic API at the HTTP boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from test_budgets import MODEL, OUT_PRICE, budget_stack, max_tokens_sent, paused, raise_cost

from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from dago_client.view import RunView
from fake_anthropic import FakeAnthropic
from harness import (
    Client,
    InProcessStack,
    MakeStack,
    ProcessStack,
    edge,
    eventually,
    node_states,
    of_kind,
    request,
)
from redisfixture import RedisTarget

G = execution_pb2
IN_PRICE = 3 / 1_000_000


@pytest.fixture
async def stack(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic
) -> InProcessStack:
    return await budget_stack(make_stack, redis_target, fake)


PROSE = "Answer in one plain sentence, as briefly as you can. " * 8
"""A prompt of prose: its input is estimated above what the provider counts (3.5 characters
a token against the fake's 4), so no call ends past a cap by an estimate miss, which the
check after each attempt would fail the run for (a short prompt's framing is counted more
than estimated)."""


def llm(node_id: str) -> dict[str, Any]:
    return {
        "id": node_id,
        "llm": {"prompt": f"Step {node_id}. {PROSE}", "model": MODEL, "max_tokens": 1024},
    }


def chain_graph(n: int) -> dict[str, Any]:
    """A child graph of n llm nodes in a row (no limits of its own)."""
    nodes = [llm(f"n{i}") for i in range(n)]
    return {"nodes": nodes, "edges": [edge(f"n{i}", f"n{i + 1}") for i in range(n - 1)]}


def spent(fake: FakeAnthropic) -> float:
    """What every call the fake answered cost, at the model's prices."""
    return sum(u["input_tokens"] * IN_PRICE + u["output_tokens"] * OUT_PRICE for u in fake.usages)


def within(fake: FakeAnthropic, cap: float) -> bool:
    """The calls cost at most ``cap`` and one call's miss: the input tokens are estimated
    before a call and counted by the provider after it (output never passes what was
    reserved), so the last call may pass by its input's cost that the estimate missed."""
    miss = fake.usages[-1]["input_tokens"] * IN_PRICE if fake.usages else 0.0
    return spent(fake) - cap <= miss


async def children(c: Client, gid: str) -> list[orchestrator_pb2.GraphSummary]:
    req = orchestrator_pb2.ListGraphsRequest(parent_graph_id=gid, page_size=100)
    return list((await c.stub.ListGraphs(req, timeout=10)).graphs)


async def raise_to_the_end(
    stack: InProcessStack, gid: str, fake: FakeAnthropic, calls: int
) -> tuple[execution_pb2.GraphStatus, execution_pb2.Event]:
    """Raise paused run ``gid``'s max_cost_usd to $1: it resumes and completes, the model
    called ``calls`` times in all. Its status and its graph_resumed event."""
    resp = await stack.client.stub.UpdateGraphLimits(raise_cost(gid, 1.0), timeout=10)
    assert resp.resumed
    st = await stack.client.wait(gid)
    assert st.state == G.GRAPH_STATE_COMPLETED, st.error
    assert len(fake.requests) == calls
    (res,) = of_kind(await stack.client.history(gid), "graph_resumed")
    return st, res


@pytest.mark.slow
async def test_a_childs_calls_charge_the_root_budget_while_it_runs(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    sub = {"id": "run", "subgraph": {"graph": chain_graph(10)}}
    gid, st = await stack.client.run(request([sub], limits={"max_cost_usd": 0.05}))
    assert st.state == G.GRAPH_STATE_FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "limits.max_cost_usd" in st.error.message and "root run" in st.error.message
    (child,) = await children(stack.client, gid)
    assert child.state == G.GRAPH_STATE_CANCELLED
    # The same calls as one run with the limit makes (test_budgets): four whole, a lowered
    # fifth, a sixth lowered to what was left, then none; the tree never passed $0.05.
    sent = max_tokens_sent(fake)
    assert sent[:4] == [1024] * 4
    assert 600 < sent[4] < 934
    assert 64 <= sent[5] < 600
    assert len(sent) == 6
    assert within(fake, 0.05)


async def test_a_childs_usage_is_counted_once_when_it_rolls_up(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    # The child's two calls ($0.018) count against the root while it runs and in the root's
    # usage after: counted twice, the root's own call ($0.0154 worst case) would be lowered.
    nodes = [{"id": "run", "subgraph": {"graph": chain_graph(2)}}, llm("after")]
    _, st = await stack.client.run(
        request(nodes, [edge("run", "after")], limits={"max_cost_usd": 0.04})
    )
    assert st.state == G.GRAPH_STATE_COMPLETED, st.error
    assert max_tokens_sent(fake) == [1024, 1024, 1024]
    assert st.usage.cost_usd == pytest.approx(spent(fake))
    assert st.reserved.input_tokens == 0 and st.reserved.cost_usd == 0


@pytest.mark.slow
async def test_a_maps_graph_bodies_charge_the_root_budget(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    mapped = {"id": "each", "map": {"items": "inputs.items", "graph": chain_graph(3)}}
    req = request([mapped], inputs={"items": [1, 2, 3, 4]}, limits={"max_cost_usd": 0.05})
    gid, st = await stack.client.run(req)
    assert st.state == G.GRAPH_STATE_FAILED
    assert "limits.max_cost_usd" in st.error.message and "root run" in st.error.message
    # Items run side by side: each call is reserved next to what the others hold, so the
    # limit is hit before the 12 calls of the 4 items are all made ($0.009 each).
    assert within(fake, 0.05)
    assert len(fake.requests) < 12
    kids = await children(stack.client, gid)
    assert kids and all(k.state != G.GRAPH_STATE_RUNNING for k in kids)


async def test_a_paused_root_parks_its_tree_and_a_raise_resumes_it(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    limits = {"max_cost_usd": 0.0095, "on_exceed": "LIMIT_ACTION_PAUSE"}
    sub = {"id": "run", "subgraph": {"graph": chain_graph(2)}}
    gid = await stack.client.submit(request([sub], limits=limits))
    await paused(stack, gid)
    (child,) = await children(stack.client, gid)
    # The child's second call did not fit the root's budget: parked, its call not made.
    assert node_states(await stack.client.status(child.graph_id)) == {
        "n0": "COMPLETED",
        "n1": "QUEUED",
    }
    assert len(fake.requests) == 1
    (ex,) = of_kind(await stack.client.history(gid), "budget_exhausted")
    assert ex.node_id == "" and ex.budget_exhausted.limit == "max_cost_usd"
    assert ex.budget_exhausted.child_graph_id == child.graph_id
    assert ex.budget_exhausted.child_node_id == "n1"
    view = RunView(gid)
    lines = [line for ev in await stack.client.history(gid) for line in view.apply(ev)]
    assert view.state == "paused"
    assert any(line.startswith(f"{child.graph_id}/n1: run paused, ") for line in lines), lines
    st, res = await raise_to_the_end(stack, gid, fake, calls=2)
    assert list(res.graph_resumed.child_nodes) == [f"{child.graph_id}|n1"]
    assert list(res.graph_resumed.node_ids) == []
    assert f"run resumed ({child.graph_id}/n1)" in view.apply(res)
    assert st.usage.cost_usd == pytest.approx(spent(fake))


async def test_a_maps_node_items_park_and_resume(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    # A map with a node body: its items are node runs of the run itself (`each#<i>`, kept in
    # the map's item hash). The first item's call fits (lowered), the others park as items,
    # not as the map node; the raise resumes them.
    mapped = {"id": "each", "map": {"items": "inputs.items", "node": llm("ask")}}
    limits = {"max_cost_usd": 0.0095, "on_exceed": "LIMIT_ACTION_PAUSE"}
    gid = await stack.client.submit(request([mapped], inputs={"items": [1, 2, 3]}, limits=limits))
    await paused(stack, gid)

    async def parked() -> list[execution_pb2.Event]:
        events = await stack.client.history(gid)
        return of_kind(events, "budget_exhausted")

    async def two_parked() -> bool:
        return len(await parked()) == 2

    await eventually(two_parked, timeout=30)
    # Each on its item (the envelope's instance), none on the map node itself.
    instances = [e.instance for e in await parked()]
    assert 0 not in instances and len(set(instances)) == 2, instances
    assert len(fake.requests) <= 1  # the parked items made no call (the first may be on its way)
    _, res = await raise_to_the_end(stack, gid, fake, calls=3)
    assert len(res.graph_resumed.node_ids) == 2
    assert all(n.startswith("each#") for n in res.graph_resumed.node_ids)


def write(path: Path, usd: float) -> None:
    """A namespaces file whose namespaces may each spend ``usd`` a day."""
    path.write_text(yaml.safe_dump({"default": {"daily_cost_usd": usd}}))


async def daily_stack(
    make_stack: MakeStack, redis: RedisTarget, fake: FakeAnthropic, path: Path, usd: float
) -> InProcessStack:
    """A stack whose namespaces (authentication off: all `default`) may spend ``usd`` a day."""
    write(path, usd)
    return await budget_stack(make_stack, redis, fake, namespaces_file=str(path))


async def test_a_namespace_over_its_daily_budget_fails_its_running_run(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic, tmp_path: Path
) -> None:
    s = await daily_stack(make_stack, redis_target, fake, tmp_path / "ns.yaml", 0.005)
    # Admitted (nothing spent yet); its first call ($0.009) spends the day's budget.
    _, st = await s.client.run(request([llm("a"), llm("b")], [edge("a", "b")]))
    assert st.state == G.GRAPH_STATE_FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "namespace 'default'" in st.error.message and "daily_cost_usd" in st.error.message
    assert node_states(st) == {"a": "COMPLETED", "b": "FAILED"}
    assert len(fake.requests) == 1


async def test_a_namespace_over_its_daily_budget_pauses_a_run_until_it_is_raised(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic, tmp_path: Path
) -> None:
    path = tmp_path / "ns.yaml"
    s = await daily_stack(make_stack, redis_target, fake, path, 0.005)
    req = request(
        [llm("a"), llm("b")], [edge("a", "b")], limits={"on_exceed": "LIMIT_ACTION_PAUSE"}
    )
    gid = await s.client.submit(req)
    await paused(s, gid)

    async def exhausted() -> list[execution_pb2.Event]:
        return of_kind(await s.client.history(gid), "budget_exhausted")

    (ex,) = await exhausted()
    assert ex.node_id == "b" and ex.budget_exhausted.limit == "daily_cost_usd"
    assert "daily_cost_usd" in ex.budget_exhausted.message
    # Resumed while the namespace is still over: its next call pauses it again.
    resp = await s.client.stub.UpdateGraphLimits(raise_cost(gid, 1.0), timeout=10)
    assert resp.resumed

    async def twice() -> bool:
        return len(await exhausted()) == 2

    await eventually(twice, timeout=30)
    assert (await s.client.status(gid)).state == G.GRAPH_STATE_PAUSED
    assert len(fake.requests) == 1
    # The operator raises the namespace's budget in the file (every process reads it again
    # when it changes): resumed, the run completes.
    write(path, 1.0)
    resp = await s.client.stub.UpdateGraphLimits(raise_cost(gid, 2.0), timeout=10)
    assert resp.resumed
    st = await s.client.wait(gid)
    assert st.state == G.GRAPH_STATE_COMPLETED, st.error
    assert len(fake.requests) == 2


async def test_a_childs_own_limits_still_hold_before_its_calls(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    # The root has no limits; the child's graph has its own: its first call is lowered to
    # fit it and its second, which does not fit at the floor, fails the child.
    child = {**chain_graph(2), "limits": {"max_cost_usd": 0.0095}}
    gid, st = await stack.client.run(request([{"id": "run", "subgraph": {"graph": child}}]))
    assert st.state == G.GRAPH_STATE_FAILED
    assert "limits.max_cost_usd" in st.error.message
    (sent,) = max_tokens_sent(fake)
    assert 600 < sent < 1024
    (kid,) = await children(stack.client, gid)
    assert kid.state == G.GRAPH_STATE_FAILED


@pytest.mark.slow
async def test_a_tree_on_two_worker_processes_pauses_within_the_cap_and_resumes(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic, key_prefix: str
) -> None:
    # The API in-process, two worker processes: a map's three graph bodies (two calls each,
    # $0.054 in all) against the root's $0.03, calls of the tree running side by side on
    # both workers. The root pauses with the tree's spend within the cap, and completes once
    # raised, each call made once.
    api = await budget_stack(make_stack, redis_target, fake, workers=0)
    procs = ProcessStack(
        redis_target.url,
        key_prefix,
        DAGO_ANTHROPIC_API_KEY="sk-fake",
        DAGO_ANTHROPIC_BASE_URL=fake.url,
        DAGO_LLM_PROVIDER="anthropic",
    )
    try:
        procs.start("w1", "worker")
        procs.start("w2", "worker")
        c = api.client
        mapped = {"id": "each", "map": {"items": "inputs.items", "graph": chain_graph(2)}}
        limits = {"max_cost_usd": 0.03, "on_exceed": "LIMIT_ACTION_PAUSE"}
        gid = await c.submit(request([mapped], inputs={"items": [1, 2, 3]}, limits=limits))

        async def paused_now() -> bool:
            st = await c.status(gid)
            ended = (G.GRAPH_STATE_COMPLETED, G.GRAPH_STATE_FAILED, G.GRAPH_STATE_CANCELLED)
            assert st.state not in ended, (st.state, st.error.message)  # it pauses, not ends
            return st.state == G.GRAPH_STATE_PAUSED

        # Two worker processes start (and import the provider's SDK) on a shared machine.
        await eventually(paused_now, timeout=90)

        async def answered() -> bool:  # the calls under way as it paused have ended
            return len(fake.usages) == len(fake.requests)

        await eventually(answered, timeout=30)
        assert within(fake, 0.03)
        assert len(fake.requests) < 6
        resp = await c.stub.UpdateGraphLimits(raise_cost(gid, 1.0), timeout=10)
        assert resp.resumed
        st = await c.wait(gid, timeout=60)
        assert st.state == G.GRAPH_STATE_COMPLETED, st.error
        assert len(fake.requests) == 6
        assert st.usage.cost_usd == pytest.approx(spent(fake))
        workers = {
            e.node_started.worker_id
            for k in await children(c, gid)
            for e in of_kind(await c.history(k.graph_id), "node_started")
        }
        assert workers and workers <= {"w1", "w2"}
    finally:
        await procs.close()
