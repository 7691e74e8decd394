"""Maps with a graph body (docs/semantics.md, "Map nodes"): each item runs as a child run
(an instance of an implicit subgraph body), through the real API, workers and Redis
functions: results in item order, the item as the child's inputs, max_concurrency from
events, FAIL_FAST cancelling running children, cancel of the parent cancelling them, the
depth cap counting the map level, and definition references in map bodies pinned."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from test_map import items_of
from test_subgraph import child_graph, children_of

from dago.v1 import (
    definitions_pb2,
    definitions_pb2_grpc,
    execution_pb2,
    graph_pb2,
    orchestrator_pb2,
)
from fake_anthropic import FakeAnthropic
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    eventually,
    node_status,
    plain,
    request,
    rpc_error,
    tool,
)
from redisfixture import RedisServer, RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
CANCELLED = execution_pb2.GRAPH_STATE_CANCELLED


def graph_map(
    items: list[Any], body: dict[str, Any], **spec: Any
) -> orchestrator_pb2.SubmitGraphRequest:
    """each (a map over inputs.items with a graph body) -> done."""
    nodes = [
        {"id": "each", "map": {"items": "inputs.items", "graph": body, **spec}},
        echo("done", out="{{ nodes.each.output.items }}"),
    ]
    return request(nodes, [edge("each", "done")], inputs={"items": items})


def pausing() -> dict[str, Any]:
    """A child graph of one ``pause`` node reading its inputs (s: seconds, f: fail)."""
    body = tool("p", "pause", inputs={"seconds": "{{ inputs.s }}", "fail": "{{ inputs.f }}"})
    return {"name": "pausing", "nodes": [body], "output": {"v": "nodes.p.output.value"}}


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


@pytest.fixture
async def single(redis_single: RedisServer, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_single, max_graph_depth=2)


async def test_a_graph_body_runs_each_item_as_a_child_in_item_order(
    stack: InProcessStack,
) -> None:
    c = stack.client
    items = [{"who": f"w{i}"} for i in range(6)]
    gid, st = await c.run(graph_map(items, child_graph(), maxConcurrency=2))
    assert st.state == COMPLETED, st.error
    out = plain(node_status(st, "each").output)
    assert out["items"] == [{"said": f"hello w{i}!"} for i in range(6)]
    assert (out["completed"], out["failed"], out["total"]) == (6, 0, 6)
    kids = await children_of(c, gid)
    assert len(kids) == 6 and {k.parent_node_id for k in kids} == {f"each#{i}" for i in range(6)}
    assert {k.state for k in kids} == {COMPLETED}
    assert (await c.status(kids[0].graph_id)).depth == 1
    # max_concurrency 2 held: from the items' child_started / child_ended events.
    running, peak = 0, 0
    for e in await c.history(gid):
        kind = e.WhichOneof("payload")
        if kind == "child_started":
            running += 1
            peak = max(peak, running)
        elif kind == "child_ended":
            running -= 1
    assert peak == 2 and running == 0


async def test_an_item_that_is_not_an_object_is_item_and_index(single: InProcessStack) -> None:
    body = {
        "nodes": [echo("x", v="{{ inputs.item }}", i="{{ inputs.index }}")],
        "output": {"got": "nodes.x.output"},
    }
    _, st = await single.client.run(graph_map(["a", 7], body))
    assert st.state == COMPLETED, st.error
    assert plain(node_status(st, "done").output)["out"] == [
        {"got": {"v": "a", "i": 0}},
        {"got": {"v": 7, "i": 1}},
    ]


async def test_fail_fast_cancels_the_running_children(single: InProcessStack) -> None:
    c = single.client
    items = [{"s": 60, "f": False}, {"s": 0, "f": True}] + [{"s": 0, "f": False}] * 3
    gid, st = await c.run(graph_map(items, pausing(), maxConcurrency=2))
    assert st.state == FAILED
    assert "map item 1 failed" in node_status(st, "each").error.message
    m = node_status(st, "each").map
    assert (m.total, m.failed, m.cancelled, m.running) == (5, 1, 4, 0)
    states = [i.state for i in await items_of(single, gid)]
    assert states[:2] == [execution_pb2.NODE_STATE_CANCELLED, execution_pb2.NODE_STATE_FAILED]
    kids = sorted(await children_of(c, gid), key=lambda k: k.parent_node_id)
    assert [k.parent_node_id for k in kids] == ["each#0", "each#1"]
    first = await c.wait(kids[0].graph_id)
    assert first.state == CANCELLED and f"parent run {gid}" in first.error.message
    assert (await c.status(kids[1].graph_id)).state == FAILED


async def test_cancelling_the_parent_cancels_the_items_children(single: InProcessStack) -> None:
    c = single.client
    gid = await c.submit(graph_map([{"s": 60, "f": False}] * 4, pausing(), maxConcurrency=2))

    async def two_running() -> bool:
        kids = await children_of(c, gid)
        return [k.state for k in kids] == [execution_pb2.GRAPH_STATE_RUNNING] * 2

    await eventually(two_running)
    await c.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
    assert (await c.wait(gid)).state == CANCELLED
    for k in await children_of(c, gid):
        kst = await c.wait(k.graph_id)
        assert kst.state == CANCELLED and f"parent run {gid}" in kst.error.message


async def test_the_depth_cap_counts_the_map_level(single: InProcessStack) -> None:
    inner = {"nodes": [{"id": "s", "subgraph": {"graph": {"nodes": [echo("a")]}}}]}
    deep = {"nodes": [{"id": "s", "subgraph": {"graph": inner}}]}
    _, st = await single.client.run(graph_map([1], inner))
    assert st.state == COMPLETED, st.error
    err = await rpc_error(single.client.submit(graph_map([1], deep)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    at = "graph.nodes[0].map.graph.nodes[0].subgraph.graph.nodes[0].subgraph"
    assert f"{at}: nesting depth 3 exceeds 2" in (err.details() or ""), err.details()
    bad = {"nodes": [echo("a"), echo("a")]}
    err = await rpc_error(single.client.submit(graph_map([1], bad)))
    assert "graph.nodes[0].map.graph.nodes[1]" in (err.details() or ""), err.details()
    both = {"id": "each", "map": {"items": "[1]", "graph": inner, "node": echo("x")}}
    err = await rpc_error(single.client.submit(request([both])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "graph.nodes[0].map.graph: give one body" in (err.details() or "")


async def test_a_definition_in_a_map_body_is_pinned_at_submit(stack: InProcessStack) -> None:
    c = stack.client
    defs = definitions_pb2_grpc.DefinitionServiceStub(c.channel)
    body = json_format.ParseDict(child_graph(), graph_pb2.Graph())
    pub = definitions_pb2.PublishDefinitionRequest(name="greeter", graph=body)
    await defs.PublishDefinition(pub, timeout=10)
    sub = {"id": "body", "subgraph": {"definition": "greeter@latest"}}
    nodes = [{"id": "each", "map": {"items": "inputs.items", "node": sub}}]
    gid, st = await c.run(request(nodes, inputs={"items": [{"who": "a"}, {"who": "b"}]}))
    assert st.state == COMPLETED, st.error
    out = plain(node_status(st, "each").output)
    assert out["items"] == [{"said": "hello a!"}, {"said": "hello b!"}]
    got = await c.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid), timeout=10)
    pinned = got.graph.nodes[0].map.node.subgraph
    assert (pinned.definition, pinned.definition_version) == ("greeter@latest", 1)
    for k in await children_of(c, gid):
        kst = await c.status(k.graph_id)
        assert (kst.definition.name, kst.definition.version) == ("greeter", 1)


@pytest.mark.slow
async def test_the_childrens_usage_rolls_up_into_items_map_and_run(
    redis_single: RedisServer, make_stack: MakeStack, fake: FakeAnthropic
) -> None:
    stack = await make_stack(redis_single, anthropic_api_key="sk-fake", anthropic_base_url=fake.url)
    c = stack.client
    summarize = {"id": "sum", "llm": {"prompt": "Summarize {{ inputs.doc }}"}}
    body = {"nodes": [summarize], "output": {"text": "nodes.sum.output.text"}}
    gid, st = await c.run(graph_map([{"doc": "a"}, {"doc": "bb"}, {"doc": "ccc"}], body))
    assert st.state == COMPLETED, st.error
    assert len(fake.requests) == 3
    kids = [await c.status(k.graph_id) for k in await children_of(c, gid)]
    out = sum(k.usage.output_tokens for k in kids)
    cost = sum(k.usage.cost_usd for k in kids)
    assert out > 0 and cost > 0
    items = await items_of(stack, gid)
    assert sum(i.usage.output_tokens for i in items) == out
    for u in (st.usage, node_status(st, "each").usage):
        assert u.output_tokens == out and u.cost_usd == pytest.approx(cost)
