"""Map nodes (docs/semantics.md, "Map nodes"), through the real API, workers and Redis
functions: a body per item with ``item`` and ``index``, outputs in item order,
max_concurrency held across workers, FAIL_FAST and COLLECT, item retries, cancel, empty
lists, bad items, a worker killed mid-map, ListMapItems, and watchers that get map_progress
instead of every item's events."""

from __future__ import annotations

import signal
import struct
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    Edge,
    InProcessStack,
    MakeStack,
    RunningStack,
    echo,
    edge,
    eventually,
    fast_retry,
    grpc_web_frames,
    node_status,
    plain,
    request,
    rpc_error,
    start_api_quickly,
    tool,
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


async def test_an_agent_body_that_waits_for_approvals_is_refused_naming_the_field(
    single: InProcessStack,
) -> None:
    spec = {"llm": {"prompt": "{{ item }}"}, "tools": ["echo"], "approvalRequiredTools": ["echo"]}
    nodes = [map_node("each", "inputs.items", {"id": "helper", "agent": spec})]
    err = await rpc_error(single.client.submit(request(nodes, inputs={"items": [1]})))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "graph.nodes[0].map.node.agent.approval_required_tools" in (err.details() or "")
    assert "graph body (map.graph)" in (err.details() or ""), err.details()


def pause(**inputs: Any) -> dict[str, Any]:
    """The ``pause`` test tool as a map body: waits, then fails or returns its value."""
    return tool("body", "pause", inputs={"value": "{{ index }}", **inputs})


async def items_of(
    stack: InProcessStack, gid: str, page_size: int = 0, state: int = 0
) -> list[orchestrator_pb2.MapItem]:
    """Every item ListMapItems lists, page after page."""
    out: list[orchestrator_pb2.MapItem] = []
    token = ""
    while True:
        req = orchestrator_pb2.ListMapItemsRequest(
            graph_id=gid, node_id="each", page_size=page_size, page_token=token, state=state
        )
        resp = await stack.client.stub.ListMapItems(req, timeout=10)
        out.extend(resp.items)
        token = resp.next_page_token
        if not token:
            return out


# --- failures ------------------------------------------------------------------------------


async def test_fail_fast_stops_the_other_items_and_fails_the_map_naming_the_item(
    stack: InProcessStack,
) -> None:
    # Item 1 fails at once while item 0 runs (it would for a minute): item 0 is stopped,
    # items 2.. never start, and the map fails naming item 1.
    items = [{"s": 60, "f": False}, {"s": 0, "f": True}] + [{"s": 0, "f": False}] * 4
    body = pause(seconds="{{ item.s }}", fail="{{ item.f }}")
    gid, st = await stack.client.run(fan(items, body, maxConcurrency=2))
    assert st.state == FAILED
    err = node_status(st, "each").error
    assert "map item 1 failed: item 1 fails (1 of 6 items failed)" in err.message, err
    m = node_status(st, "each").map
    assert (m.total, m.completed, m.failed, m.cancelled, m.running) == (6, 0, 1, 5, 0)
    states = [i.state for i in await items_of(stack, gid)]
    assert (
        states
        == [execution_pb2.NODE_STATE_CANCELLED, execution_pb2.NODE_STATE_FAILED]
        + [execution_pb2.NODE_STATE_CANCELLED] * 4
    )
    assert node_status(st, "done").state == execution_pb2.NODE_STATE_SKIPPED


@pytest.mark.parametrize(("max_failures", "state"), [(2, COMPLETED), (1, FAILED)])
async def test_collect_fails_the_map_only_past_max_failures(
    single: InProcessStack, max_failures: int, state: int
) -> None:
    items = [{"f": i in (1, 4)} for i in range(6)]
    body = pause(fail="{{ item.f }}")
    spec = {"maxConcurrency": 3, "onFailure": "MAP_FAILURE_POLICY_COLLECT"}
    gid, st = await single.client.run(fan(items, body, maxFailures=max_failures, **spec))
    assert st.state == state, st.error
    if state == COMPLETED:
        out = plain(node_status(st, "each").output)
        assert out["items"] == [{"value": 0}, None, {"value": 2}, {"value": 3}, None, {"value": 5}]
        assert (out["completed"], out["failed"], out["total"]) == (4, 2, 6)
        failed = await items_of(single, gid, state=execution_pb2.NODE_STATE_FAILED)
        assert [(i.index, i.error.message) for i in failed] == [
            (1, "item 1 fails"),
            (4, "item 4 fails"),
        ]
    else:
        assert "map item 4 failed" in node_status(st, "each").error.message


async def test_each_item_retries_under_the_bodys_policy(single: InProcessStack) -> None:
    body = tool(
        "body", "flaky", inputs={"fail_attempts": 2, "value": "{{ item }}"}, retry=fast_retry(3)
    )
    gid, st = await single.client.run(fan(list(range(5)), body, maxConcurrency=5))
    assert st.state == COMPLETED, st.error
    out = plain(node_status(st, "each").output)
    assert out["items"] == [{"attempt": 3, "value": i} for i in range(5)]
    assert [(i.index, i.attempt, i.state) for i in await items_of(single, gid)] == [
        (i, 3, execution_pb2.NODE_STATE_COMPLETED) for i in range(5)
    ]
    retried = [
        e for e in await single.client.history(gid) if e.WhichOneof("payload") == "node_retrying"
    ]
    assert sorted((e.node_id, e.instance) for e in retried) == sorted(
        ("each", i + 1) for i in range(5) for _ in range(2)
    )


async def test_cancel_mid_map_stops_running_items(single: InProcessStack) -> None:
    c = single.client
    gid = await c.submit(fan([{"s": 60}] * 8, pause(seconds="{{ item.s }}"), maxConcurrency=3))

    async def running() -> bool:
        return node_status(await c.status(gid), "each").map.running == 3

    await eventually(running)
    await c.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
    st = await c.wait(gid)
    assert st.state == execution_pb2.GRAPH_STATE_CANCELLED
    m = node_status(st, "each").map
    assert (m.total, m.completed, m.cancelled, m.running, m.queued) == (8, 0, 8, 0, 0)
    assert {i.state for i in await items_of(single, gid)} == {execution_pb2.NODE_STATE_CANCELLED}


# --- ListMapItems and watchers -------------------------------------------------------------


async def test_list_map_items_pages_by_index_and_filters_by_state(single: InProcessStack) -> None:
    items = [{"f": i % 3 == 0} for i in range(10)]
    spec = {"onFailure": "MAP_FAILURE_POLICY_COLLECT", "maxFailures": 5}
    gid, st = await single.client.run(fan(items, pause(fail="{{ item.f }}"), **spec))
    assert st.state == COMPLETED, st.error
    every = await items_of(single, gid, page_size=3)
    assert [i.index for i in every] == list(range(10))
    assert plain(every[2].output) == {"value": 2} and every[2].end_time.ToMilliseconds() > 0
    done = await items_of(single, gid, page_size=2, state=execution_pb2.NODE_STATE_COMPLETED)
    assert [i.index for i in done] == [1, 2, 4, 5, 7, 8]
    req = orchestrator_pb2.ListMapItemsRequest(graph_id=gid, node_id="each", page_size=4)
    resp = await single.client.stub.ListMapItems(req, timeout=10)
    assert (resp.progress.total, resp.progress.completed, resp.progress.failed) == (10, 6, 4)
    assert [i.index for i in resp.items] == [0, 1, 2, 3] and resp.next_page_token
    bad = orchestrator_pb2.ListMapItemsRequest(graph_id=gid, node_id="start")
    err = await rpc_error(single.client.stub.ListMapItems(bad, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a map node" in (
        err.details() or ""
    )
    missing = orchestrator_pb2.ListMapItemsRequest(graph_id=gid, node_id="nope")
    err = await rpc_error(single.client.stub.ListMapItems(missing, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_watchers_get_map_progress_and_item_events_only_when_asked(
    single: InProcessStack,
) -> None:
    c = single.client
    gid, st = await c.run(fan(list(range(20)), pause(), maxConcurrency=4))
    assert st.state == COMPLETED, st.error
    plain_watch = await c.watch(gid)
    assert not [e for e in plain_watch if e.instance]
    progress = [e.map_progress for e in plain_watch if e.WhichOneof("payload") == "map_progress"]
    assert progress[0].total == 20 and progress[0].queued == 20
    last = progress[-1]
    assert (last.total, last.completed, last.running, last.queued) == (20, 20, 0, 0)
    req = orchestrator_pb2.WatchGraphRequest(graph_id=gid, item_events=True)
    everything = [m.event async for m in c.stub.WatchGraph(req, timeout=30)]
    started = sorted(
        e.instance for e in everything if e.WhichOneof("payload") == "node_started" and e.instance
    )
    assert started == list(range(1, 21))
    # The log holds each item's events once: none lost, none twice.
    done = [
        e.instance
        for e in await c.history(gid)
        if e.WhichOneof("payload") == "node_completed" and e.instance
    ]
    assert sorted(done) == list(range(1, 21))


# --- worker processes ----------------------------------------------------------------------


def most_at_once(events: list[execution_pb2.Event]) -> int:
    """The most items started and not ended at any point of the log (items' events; a
    redelivered start replaces its item's earlier one)."""
    now: set[int] = set()
    peak = 0
    for e in events:
        kind = e.WhichOneof("payload")
        if not e.instance:
            continue
        if kind == "node_started":
            now.add(e.instance)
            peak = max(peak, len(now))
        elif kind in ("node_completed", "node_failed", "node_retrying"):
            now.discard(e.instance)
    return peak


@pytest.mark.process
@pytest.mark.slow
async def test_max_concurrency_holds_across_two_worker_processes_and_a_killed_one(
    redis_single: RedisServer, key_prefix: str
) -> None:
    # Two workers of 64 slots share a map of 40 items, at most 5 at a time; the worker
    # running items is killed mid-map: its items are reclaimed by the other, none lost and
    # none twice in the output, and at no point did more than 5 run (from the event log).
    req = fan(list(range(40)), pause(seconds="0.3"), maxConcurrency=5)
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        c = stack.client
        gid = await c.submit(req)

        async def ten_done() -> bool:
            return node_status(await c.status(gid), "each").map.completed >= 10

        await eventually(ten_done, timeout=20)
        started = [
            e
            for e in await c.history(gid)
            if e.WhichOneof("payload") == "node_started" and e.instance
        ]
        stack.signal(started[-1].node_started.worker_id, signal.SIGKILL)
        st = await c.wait(gid, timeout=60)
        assert st.state == COMPLETED, st.error
        out = plain(node_status(st, "each").output)
        assert out["items"] == [{"value": i} for i in range(40)] and out["completed"] == 40
        events = await c.history(gid)
        assert 1 <= most_at_once(events) <= 5
        done = sorted(
            e.instance for e in events if e.WhichOneof("payload") == "node_completed" and e.instance
        )
        assert done == list(range(1, 41))
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(seqs) + 1))


# --- through Envoy -------------------------------------------------------------------------


async def test_list_map_items_over_rest_and_grpc_web(edge_stack: Edge) -> None:
    e = edge_stack
    body = json_format.MessageToDict(
        fan(
            [{"f": False}, {"f": True}, {"f": False}],
            pause(fail="{{ item.f }}"),
            onFailure="MAP_FAILURE_POLICY_COLLECT",
            maxFailures=1,
        )
    )
    r = await e.http.post("/api/v1/graphs", json=body)
    assert r.status_code == 200, r.text
    gid = r.json()["graph_id"]
    st = await e.stack.client.wait(gid)
    assert st.state == COMPLETED, st.error
    r = await e.http.get(f"/api/v1/graphs/{gid}/nodes/each/items", params={"page_size": 2})
    assert r.status_code == 200, r.text
    page = r.json()
    assert [i["index"] for i in page["items"]] == [0, 1] and page["next_page_token"]
    assert page["progress"]["total"] == 3 and page["progress"]["failed"] == 1
    r = await e.http.get(
        f"/api/v1/graphs/{gid}/nodes/each/items", params={"state": "NODE_STATE_FAILED"}
    )
    assert [(i["index"], i["state"]) for i in r.json()["items"]] == [(1, "NODE_STATE_FAILED")]
    req = orchestrator_pb2.ListMapItemsRequest(graph_id=gid, node_id="each").SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    r = await e.http.post(
        "/dago.v1.OrchestratorService/ListMapItems",
        content=struct.pack(">BI", 0, len(req)) + req,
        headers=headers,
    )
    messages, trailers = grpc_web_frames(r.content)
    assert trailers.get("grpc-status") == "0", (r.headers, trailers)
    resp = orchestrator_pb2.ListMapItemsResponse.FromString(messages[0])
    assert [i.index for i in resp.items] == [0, 1, 2] and plain(resp.items[2].output) == {
        "value": 2
    }


async def test_item_and_index_are_null_outside_a_map_body(single: InProcessStack) -> None:
    _, st = await single.client.run(request([echo("a", v="{{ item }}", i="{{ index }}")]))
    assert st.state == COMPLETED, st.error
    assert plain(node_status(st, "a").output) == {"v": None, "i": None}


async def test_the_graph_deadline_ends_a_map_mid_way(single: InProcessStack) -> None:
    req = fan([{"s": 60}] * 6, pause(seconds="{{ item.s }}"), maxConcurrency=2)
    req.graph.limits.deadline.FromMilliseconds(800)
    gid, st = await single.client.run(req)
    assert st.state == FAILED and "deadline" in st.error.message, st.error
    m = node_status(st, "each").map
    assert (m.total, m.completed, m.cancelled) == (6, 0, 6)
    assert {i.state for i in await items_of(single, gid)} == {execution_pb2.NODE_STATE_CANCELLED}


async def test_items_live_in_their_maps_hash_and_expire_with_the_run(
    redis_single: RedisServer, make_stack: MakeStack
) -> None:
    stack = await make_stack(redis_single, retention_s=30)
    gid, st = await stack.client.run(fan(list(range(50)), pause()))
    assert st.state == COMPLETED, st.error
    shard = int(gid.split("-")[0])
    gk = stack.store.keys.shard(shard).graph(gid)
    redis = stack.store.redis
    # The run's node hash holds its three nodes' fields only; the items are in the map's.
    assert not [f for f in await redis.hkeys(gk.nodes) if b"#" in f]
    assert await redis.hlen(gk.items("each")) > 50 * 5
    keys = [k for k in (*gk.all(), gk.items("each")) if await redis.exists(k)]
    assert {gk.meta, gk.nodes, gk.items("each")} <= set(keys)  # a map without children
    for key in keys:
        assert 0 < await redis.ttl(key) <= 30, key
