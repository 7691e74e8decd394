"""Subgraph nodes: runs that start runs (docs/semantics.md, "Sub-graphs"), through the real
API, workers and Redis functions: inline and definition bodies, output and usage roll-up,
a failed child failing (and retrying) its node, cancel and deadlines flowing down, a worker
killed while a child runs, the depth cap, and ListGraphs' parent filter."""

from __future__ import annotations

import signal
import time
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format

from dago.v1 import (
    definitions_pb2,
    definitions_pb2_grpc,
    execution_pb2,
    graph_pb2,
    orchestrator_pb2,
)
from fake_anthropic import FakeAnthropic
from harness import (
    Client,
    Edge,
    InProcessStack,
    MakeStack,
    ProcessStack,
    echo,
    edge,
    eventually,
    fast_retry,
    node_states,
    node_status,
    of_kind,
    plain,
    request,
    rpc_error,
    tool,
)
from redisfixture import RedisServer, RedisTarget
from testtools import HOLD_CANCELLED

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
async def stack(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic
) -> InProcessStack:
    return await make_stack(
        redis_target,
        anthropic_api_key="sk-fake",
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
    )


@pytest.fixture
async def single(redis_single: RedisServer, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_single, max_graph_depth=2)


async def children_of(c: Client, gid: str) -> list[orchestrator_pb2.GraphSummary]:
    """ListGraphs with the parent filter."""
    req = orchestrator_pb2.ListGraphsRequest(parent_graph_id=gid, page_size=100)
    return list((await c.stub.ListGraphs(req, timeout=10)).graphs)


async def running_child(c: Client, gid: str, node: str = "run", timeout: float = 10) -> str:
    """The child of ``node`` once it runs; the node WAITING for it."""
    found: list[str] = []

    async def check() -> bool:
        n = node_status(await c.status(gid), node)
        if n.state != execution_pb2.NODE_STATE_WAITING or not n.child_graph_id:
            return False
        child = await c.status(n.child_graph_id)
        found[:] = [n.child_graph_id]
        return child.state == execution_pb2.GRAPH_STATE_RUNNING

    await eventually(check, timeout)
    return found[0]


def holding(seconds: float = 60, **graph: Any) -> dict[str, Any]:
    """A child graph whose one node holds for ``seconds``."""
    nodes = [tool("hold", "hold", inputs={"seconds": seconds})]
    return {"name": "holder", "nodes": nodes, **graph}


async def test_an_inline_child_runs_and_its_result_is_the_nodes_output(
    stack: InProcessStack,
) -> None:
    c = stack.client
    req = parent_request()
    req.priority = 5
    gid, st = await c.run(req)
    assert st.state == COMPLETED, st
    run = node_status(st, "run")
    assert plain(run.output) == {"said": "hello world!"}
    assert plain(node_status(st, "after").output) == {"got": "hello world!"}
    child = run.child_graph_id
    assert child and child.split("-")[0] == gid.split("-")[0]  # on the parent's shard
    cst = await c.status(child)
    assert cst.state == COMPLETED and cst.name == "child"
    assert (cst.parent_graph_id, cst.parent_node_id, cst.depth) == (gid, "run", 1)
    assert cst.priority == st.priority == 5  # the child's work is ordered as its parent's
    assert node_states(cst) == {"greet": "COMPLETED", "shout": "COMPLETED"}
    # The parent's log says when the child started and ended; watching it sees the same.
    events = await c.history(gid)
    (started,) = of_kind(events, "child_started", "run")
    (ended,) = of_kind(events, "child_ended", "run")
    assert started.child_started.child_graph_id == child == ended.child_ended.child_graph_id
    assert ended.child_ended.state == COMPLETED and started.seq < ended.seq
    assert [e.seq for e in await c.watch(gid)] == [e.seq for e in events]
    assert (await c.watch(child))[-1].WhichOneof("payload") == "graph_completed"
    # The node's first execution ended WAITING (for its child), the next one completed it.
    req = orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="run")
    attempts = (await c.stub.ListNodeAttempts(req, timeout=10)).attempts
    assert [(a.execution, a.state) for a in attempts] == [
        (1, execution_pb2.NODE_STATE_WAITING),
        (2, execution_pb2.NODE_STATE_COMPLETED),
    ]


async def test_a_definition_body_is_pinned_at_submit(stack: InProcessStack) -> None:
    c = stack.client
    defs = definitions_pb2_grpc.DefinitionServiceStub(c.channel)
    body = json_format.ParseDict(child_graph(), graph_pb2.Graph())
    first = await defs.PublishDefinition(
        definitions_pb2.PublishDefinitionRequest(name="shouter", graph=body), timeout=10
    )
    label = definitions_pb2.SetDefinitionLabelRequest(name="shouter", label="prod", version=1)
    await defs.SetDefinitionLabel(label, timeout=10)
    req = parent_request()
    req.graph.nodes[1].subgraph.ClearField("graph")
    req.graph.nodes[1].subgraph.definition = "shouter@prod"
    gid, st = await c.run(req)
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "after").output) == {"got": "hello world!"}
    # What ran is recorded on the child like a run by reference, and pinned in the parent.
    child = await c.status(node_status(st, "run").child_graph_id)
    assert (child.definition.name, child.definition.version) == ("shouter", 1)
    assert child.definition.digest == first.definition.digest
    got = await c.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid), timeout=10)
    pinned = got.graph.nodes[1].subgraph
    assert (pinned.definition, pinned.definition_version) == ("shouter@prod", 1)
    assert [n.id for n in pinned.graph.nodes] == ["greet", "shout"]
    # An unknown reference is refused at submit, naming the node's field.
    req.graph.nodes[1].subgraph.definition = "nobody"
    err = await rpc_error(c.stub.SubmitGraph(req, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND, err


@pytest.mark.slow
async def test_usage_rolls_up_and_counts_against_the_parents_limits(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    c = stack.client
    summarize = {"id": "sum", "llm": {"prompt": "Summarize {{ inputs.doc }}"}}
    child = {
        "name": "summarizer",
        "nodes": [summarize],
        "output": {"text": "nodes.sum.output.text"},
    }
    nodes = [
        sub("run", child, inputs={"doc": "{{ inputs.doc }}"}),
        echo("after", summary="{{ nodes.run.output.text }}"),
    ]
    req = request(nodes, [edge("run", "after")], inputs={"doc": "a long text"})
    _, st = await c.run(req)
    assert st.state == COMPLETED, st
    assert len(fake.requests) == 1
    cst = await c.status(node_status(st, "run").child_graph_id)
    assert cst.usage.output_tokens > 0 and cst.usage.cost_usd > 0
    for u in (st.usage, node_status(st, "run").usage):
        assert (u.input_tokens, u.output_tokens) == (
            cst.usage.input_tokens,
            cst.usage.output_tokens,
        )
        assert u.cost_usd == pytest.approx(cst.usage.cost_usd)
    assert (
        plain(node_status(st, "after").output)["summary"]
        == plain(node_status(cst, "sum").output)["text"]
    )
    # The parent's token limit counts its children's tokens.
    req.graph.limits.max_tokens = 1
    _, st = await c.run(req)
    assert st.state == FAILED and st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT, st
    assert "limits.max_tokens" in st.error.message


async def test_a_failed_child_fails_its_node_and_a_retry_starts_a_new_child(
    stack: InProcessStack,
) -> None:
    c = stack.client
    # The child's node fails retryably once and the child has no retries of its own: the
    # child fails, the node's own policy retries it with a new child, which fails too.
    flaky = tool("f", "flaky", inputs={"fail_attempts": 1})
    child = {"name": "flaky", "nodes": [flaky], "defaults": {"retry": {"maxAttempts": 1}}}
    gid, st = await c.run(request([sub("run", child, retry=fast_retry(2))]))
    assert st.state == FAILED, st
    run = node_status(st, "run")
    assert run.state == execution_pb2.NODE_STATE_FAILED and run.attempt == 2
    assert run.error.error_class == graph_pb2.ERROR_CLASS_TRANSIENT  # the child's class
    kids = await children_of(c, gid)
    assert len(kids) == 2 and all(k.state == FAILED for k in kids)
    assert {k.parent_graph_id for k in kids} == {gid} and {k.parent_node_id for k in kids} == {
        "run"
    }
    assert run.child_graph_id in {k.graph_id for k in kids}
    assert f"child run {run.child_graph_id} failed" in run.error.message
    # A child whose node fails for good fails the node for good (PERMANENT, no retry).
    boom = {"name": "boom", "nodes": [tool("x", "fail", inputs={"message": "no"})]}
    gid, st = await c.run(request([sub("run", boom, retry=fast_retry(3))]))
    run = node_status(st, "run")
    assert st.state == FAILED and run.attempt == 1
    assert run.error.error_class == graph_pb2.ERROR_CLASS_PERMANENT and "no" in run.error.message


async def test_cancelling_the_parent_cancels_the_running_child(stack: InProcessStack) -> None:
    c = stack.client
    gid = await c.submit(request([sub("run", holding())]))
    child = await running_child(c, gid)
    await c.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
    st = await c.wait(gid)
    assert st.state == CANCELLED
    assert node_status(st, "run").state == execution_pb2.NODE_STATE_CANCELLED
    cst = await c.wait(child)
    assert cst.state == CANCELLED and f"parent run {gid}" in cst.error.message
    assert node_status(cst, "hold").state == execution_pb2.NODE_STATE_CANCELLED
    await eventually(lambda: _true(f"{child}/hold/1/1" in HOLD_CANCELLED))


async def test_cancelling_a_child_fails_its_node_for_good(stack: InProcessStack) -> None:
    c = stack.client
    gid = await c.submit(request([sub("run", holding(), retry=fast_retry(3))]))
    child = await running_child(c, gid)
    req = orchestrator_pb2.CancelGraphRequest(graph_id=child, reason="not needed")
    await c.stub.CancelGraph(req, timeout=10)
    st = await c.wait(gid)
    run = node_status(st, "run")
    assert st.state == FAILED and run.attempt == 1, st  # not retried
    assert run.error.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert f"child run {child} was cancelled" in run.error.message
    (ended,) = of_kind(await c.history(gid), "child_ended", "run")
    assert ended.child_ended.state == CANCELLED


async def _true(v: bool) -> bool:
    return v


async def test_the_parents_deadline_bounds_the_child(stack: InProcessStack) -> None:
    c = stack.client
    started = time.monotonic()
    # The child's own deadline (an hour) is later than its parent's: the parent's bounds it.
    child = holding(limits={"deadline": "3600s"})
    gid = await c.submit(request([sub("run", child)], limits={"deadline": "1.5s"}))
    kid = await running_child(c, gid)
    st, cst = await c.wait(gid), await c.wait(kid)
    assert time.monotonic() - started < 10
    assert st.state == FAILED and "deadline" in st.error.message, st
    assert cst.state in (FAILED, CANCELLED), cst


async def test_nesting_past_the_depth_cap_is_refused_at_submit(single: InProcessStack) -> None:
    c = single.client
    inner = {"nodes": [echo("leaf", v=1)]}
    two = {"nodes": [sub("b", inner)]}
    _, st = await c.run(request([sub("a", two)]))  # depth 2: allowed
    assert st.state == COMPLETED, st
    leaf = await c.status(
        node_status(await c.status(node_status(st, "a").child_graph_id), "b").child_graph_id
    )
    assert leaf.depth == 2
    three = {"nodes": [sub("b", {"nodes": [sub("c", inner)]})]}
    err = await rpc_error(c.stub.SubmitGraph(request([echo("x"), sub("a", three)]), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "graph.nodes[1].subgraph.graph.nodes[0].subgraph.graph.nodes[0].subgraph: "
        "nesting depth 3 exceeds 2"
    ) in err.details(), err.details()


async def test_nesting_past_a_workers_depth_cap_fails_the_node_at_run_time(
    redis_single: RedisServer, make_stack: MakeStack
) -> None:
    # An API that accepts depth 2 and a worker (of another deployment) capped at 1: the
    # worker compiles the run's graph with its own cap, and the node fails, naming the path.
    api = await make_stack(redis_single, workers=0)
    await make_stack(redis_single, max_graph_depth=1)
    two = {"name": "middle", "nodes": [sub("b", {"nodes": [echo("leaf", v=1)]})]}
    _, st = await api.client.run(request([sub("a", two)]))
    assert st.state == FAILED, st
    a = node_status(st, "a")
    assert a.error.error_class == graph_pb2.ERROR_CLASS_INVALID and not a.child_graph_id
    assert (
        "graph.nodes[0].subgraph.graph.nodes[0].subgraph: nesting depth 2 exceeds 1"
        in a.error.message
    ), a.error.message


async def test_a_self_referencing_definition_is_refused_at_the_cap(single: InProcessStack) -> None:
    c = single.client
    defs = definitions_pb2_grpc.DefinitionServiceStub(c.channel)
    body = json_format.ParseDict({"nodes": [sub("again", None)]}, graph_pb2.Graph())
    body.nodes[0].subgraph.ClearField("graph")
    body.nodes[0].subgraph.definition = "loop"
    await defs.PublishDefinition(
        definitions_pb2.PublishDefinitionRequest(name="loop", graph=body), timeout=10
    )
    req = orchestrator_pb2.SubmitGraphRequest(definition="loop")
    err = await rpc_error(c.stub.SubmitGraph(req, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nesting depth 3 exceeds 2" in err.details(), err.details()


@pytest.mark.slow
async def test_list_graphs_parent_filter_through_envoy(edge_stack: Edge) -> None:
    e = edge_stack
    body = json_format.MessageToDict(parent_request())
    r = await e.http.post("/api/v1/graphs", json=body)
    assert r.status_code == 200, r.text
    gid = r.json()["graph_id"]

    async def done() -> bool:
        st = (await e.http.get(f"/api/v1/graphs/{gid}/status")).json()["status"]
        return bool(st["state"] == "GRAPH_STATE_COMPLETED")

    await eventually(done, 20)
    st = (await e.http.get(f"/api/v1/graphs/{gid}/status")).json()["status"]
    (run,) = [n for n in st["nodes"] if n["node_id"] == "run"]
    listed = (await e.http.get("/api/v1/graphs", params={"parent_graph_id": gid})).json()
    assert [g["graph_id"] for g in listed["graphs"]] == [run["child_graph_id"]]
    assert listed["graphs"][0]["parent_graph_id"] == gid
    assert listed["graphs"][0]["parent_node_id"] == "run"
    # Without the filter the parent and the child are both listed.
    every = (await e.http.get("/api/v1/graphs", params={"page_size": 1000})).json()["graphs"]
    assert {gid, run["child_graph_id"]} <= {g["graph_id"] for g in every}


async def test_a_fork_reuses_a_subgraph_nodes_output_or_starts_a_new_child(
    stack: InProcessStack,
) -> None:
    c = stack.client
    gid, st = await c.run(parent_request())
    assert st.state == COMPLETED, st
    first_child = node_status(st, "run").child_graph_id

    async def fork(*nodes: str) -> execution_pb2.GraphStatus:
        req = orchestrator_pb2.ForkGraphRequest(graph_id=gid, from_nodes=list(nodes))
        resp = await c.stub.ForkGraph(req, timeout=10)
        return await c.wait(resp.graph_id)

    # Downstream of the child only: the subgraph node's output is reused, no child starts.
    after = await fork("after")
    assert after.state == COMPLETED and node_status(after, "run").reused
    assert not node_status(after, "run").child_graph_id
    assert await children_of(c, after.graph_id) == []
    assert plain(node_status(after, "after").output) == {"got": "hello world!"}
    # From the subgraph node: a new child run of the fork.
    again = await fork("run")
    assert again.state == COMPLETED, again
    kid = node_status(again, "run").child_graph_id
    assert kid and kid != first_child
    assert [k.graph_id for k in await children_of(c, again.graph_id)] == [kid]
    assert plain(node_status(again, "after").output) == {"got": "hello world!"}


@pytest.mark.slow
async def test_a_worker_killed_mid_child_is_reclaimed_without_a_second_child(
    redis_single: RedisServer, make_stack: MakeStack, key_prefix: str
) -> None:
    api = await make_stack(redis_single, workers=0)  # the API in-process, workers as processes
    procs = ProcessStack(redis_single.url, key_prefix)
    try:
        procs.start("w1", "worker")
        procs.start("w2", "worker")
        c = api.client
        gid = await c.submit(request([sub("run", holding(2.0)), echo("z", v=1)]))
        kid = await running_child(c, gid, timeout=30)
        holder: list[str] = []

        async def holding_now() -> bool:
            events = await c.history(kid)
            holder[:] = [e.node_started.worker_id for e in of_kind(events, "node_started", "hold")]
            return bool(holder)

        await eventually(holding_now)
        procs.signal(holder[0], signal.SIGKILL)  # it held the child's node, nothing of the parent
        st = await c.wait(gid, timeout=30)
        assert st.state == COMPLETED, st
        assert [k.graph_id for k in await children_of(c, gid)] == [kid]
        run = node_status(st, "run")
        assert run.child_graph_id == kid and run.attempt == 1
        req = orchestrator_pb2.ListNodeAttemptsRequest(graph_id=kid, node_id="hold")
        attempts = (await c.stub.ListNodeAttempts(req, timeout=10)).attempts
        assert [a.state for a in attempts] == [
            execution_pb2.NODE_STATE_RECLAIMED,
            execution_pb2.NODE_STATE_COMPLETED,
        ]
    finally:
        await procs.close()


@pytest.mark.slow
async def test_children_are_archived_with_their_parent_link(
    postgres_url: str, make_stack: MakeStack
) -> None:
    stack = await make_stack(postgres_url=postgres_url, migrate_at_start=True, retention_s=1)
    c = stack.client
    gid, st = await c.run(parent_request())
    assert st.state == COMPLETED, st
    kid = node_status(st, "run").child_graph_id

    async def gone_to_history() -> bool:
        keys = [stack.store.keys.shard(int(g.split("-")[0])).graph(g).meta for g in (gid, kid)]
        return not await stack.store.redis.exists(*keys)

    await eventually(gone_to_history, timeout=20)
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cur = await conn.execute(
            "SELECT parent_graph_id, parent_node_id FROM dago_runs WHERE graph_id = %s", (kid,)
        )
        assert await cur.fetchall() == [(gid, "run")]
    # Read back from the history: the link, and the parent filter over archived runs.
    assert (await c.status(kid)).parent_graph_id == gid
    (listed,) = await children_of(c, gid)
    assert (listed.graph_id, listed.parent_graph_id, listed.parent_node_id) == (kid, gid, "run")
