"""Map nodes (docs/semantics.md, "Map nodes"), through the real API, workers and Redis
functions: a body per item with ``item`` and ``index``, outputs in item order,
max_concurrency held across workers, FAIL_FAST and COLLECT, item retries, cancel, empty
lists, bad items, a worker killed mid-map, ListMapItems, and watchers that get map_progress
instead of every item's events."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    node_status,
    plain,
    request,
    rpc_error,
)
from redisfixture import RedisServer, RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED


def map_node(node_id: str, items: str, body: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A map node (proto JSON names)."""
    return {"id": node_id, "map": {"items": items, "node": body, **spec}}


def fan(items: list[Any], body: dict[str, Any], **spec: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """start -> each (a map over inputs.items) -> done."""
    nodes = [
        echo("start", n="{{ size(inputs.items) }}"),
        map_node("each", "inputs.items", body, **spec),
        echo("done", out="{{ nodes.each.output }}"),
    ]
    return request(nodes, [edge("start", "each"), edge("each", "done")], inputs={"items": items})


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


@pytest.fixture
async def single(redis_single: RedisServer, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_single)


async def test_a_node_body_runs_per_item_with_item_and_index_in_order(
    stack: InProcessStack,
) -> None:
    items = [{"name": f"doc{i}"} for i in range(7)]
    body = echo(
        "summarize", text="{{ item.name }}", at="{{ index }}", n="{{ nodes.start.output.n }}"
    )
    gid, st = await stack.client.run(fan(items, body, maxConcurrency=3))
    assert st.state == COMPLETED, st.error
    out = plain(node_status(st, "each").output)
    assert out["items"] == [{"text": f"doc{i}", "at": i, "n": 7} for i in range(7)]
    assert (out["completed"], out["failed"], out["total"]) == (7, 0, 7)
    assert plain(node_status(st, "done").output)["out"] == out
    m = node_status(st, "each").map
    assert (m.total, m.completed, m.failed, m.running, m.queued) == (7, 7, 0, 0, 0)
    res = await stack.client.result(gid)
    assert "each" in res.node_outputs and not any("#" in k for k in res.node_outputs)


async def test_an_empty_list_completes_with_no_items(single: InProcessStack) -> None:
    _, st = await single.client.run(fan([], echo("x", v="{{ item }}")))
    assert st.state == COMPLETED, st.error
    assert plain(node_status(st, "each").output) == {
        "items": [],
        "completed": 0,
        "failed": 0,
        "total": 0,
    }


async def test_items_that_are_not_a_list_fail_the_map_naming_map_items(
    single: InProcessStack,
) -> None:
    nodes = [map_node("each", "inputs.items", echo("x", v="{{ item }}"))]
    _, st = await single.client.run(request(nodes, inputs={"items": {"a": 1}}))
    assert st.state == FAILED
    err = node_status(st, "each").error
    assert err.error_class == 4 and "map.items must yield a list, not a map" in err.message


async def test_a_graph_body_is_refused_until_the_subgraph_kind_runs_it(
    single: InProcessStack,
) -> None:
    nodes = [{"id": "each", "map": {"items": "[1]", "graph": {"nodes": [echo("a")]}}}]
    err = await rpc_error(single.client.submit(request(nodes)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "graph.nodes[0].map.graph" in (err.details() or "")
    assert "a graph body needs the subgraph kind" in (err.details() or "")
