"""Subgraph nodes: runs that start runs (docs/semantics.md, "Sub-graphs"), through the real
API, workers and Redis functions: inline and definition bodies, output and usage roll-up,
a failed child failing (and retrying) its node, cancel and deadlines flowing down, a worker
killed while a child runs, the depth cap, and ListGraphs' parent filter."""

from __future__ import annotations

from typing import Any

import pytest

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    node_states,
    node_status,
    plain,
    request,
)
from redisfixture import RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
CANCELLED = execution_pb2.GRAPH_STATE_CANCELLED


def child_graph(**graph: Any) -> dict[str, Any]:
    """A child's graph: greet -> shout, with an output mapping."""
    return {
        "name": "child",
        "nodes": [
            echo("greet", text="hello {{ inputs.who }}"),
            echo("shout", loud="{{ nodes.greet.output.text }}!"),
        ],
        "edges": [edge("greet", "shout")],
        "output": {"said": "nodes.shout.output.loud"},
        **graph,
    }


def sub(node_id: str, graph: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A subgraph node (proto JSON names)."""
    spec: dict[str, Any] = {"graph": graph if graph is not None else child_graph()}
    return {"id": node_id, "subgraph": spec, **fields}


def parent_request(**graph: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """prep -> run (a child run) -> after (reads the child's result)."""
    nodes = [
        echo("prep", who="{{ inputs.name }}"),
        sub("run", inputs={"who": "{{ nodes.prep.output.who }}"}),
        echo("after", got="{{ nodes.run.output.said }}"),
    ]
    edges = [edge("prep", "run"), edge("run", "after")]
    return request(nodes, edges, inputs={"name": "world"}, name="parent", **graph)


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


async def test_an_inline_child_runs_and_its_result_is_the_nodes_output(
    stack: InProcessStack,
) -> None:
    c = stack.client
    gid, st = await c.run(parent_request())
    assert st.state == COMPLETED, st
    run = node_status(st, "run")
    assert plain(run.output) == {"said": "hello world!"}
    assert plain(node_status(st, "after").output) == {"got": "hello world!"}
    child = run.child_graph_id
    assert child and child.split("-")[0] == gid.split("-")[0]  # on the parent's shard
    cst = await c.status(child)
    assert cst.state == COMPLETED and cst.name == "child"
    assert (cst.parent_graph_id, cst.parent_node_id, cst.depth) == (gid, "run", 1)
    assert node_states(cst) == {"greet": "COMPLETED", "shout": "COMPLETED"}
