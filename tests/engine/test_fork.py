"""ForkGraph: a new run that reuses the recorded outputs of the nodes not downstream of
the re-run set, through the real stack (gRPC API, workers, Lua) with the fake Anthropic
server at the HTTP boundary, on a single Redis and on a cluster."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format

from dago.api.servicer import _stable_shard
from dago.engine.ids import parse_shard
from dago.history.migrate import migrate_url
from dago.store.store import SEED_RANGE
from dago.v1 import execution_pb2, orchestrator_pb2
from dago_client import AsyncDagoClient, RunFilters
from fake_anthropic import FakeAnthropic
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    eventually,
    node_states,
    node_status,
    of_kind,
    plain,
    redis_store,
    request,
    running_edge,
    tool,
)
from redisfixture import RedisServer, RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED


def fake_model(fake: FakeAnthropic) -> dict[str, Any]:
    """Settings that send the stack's model calls to the fake Anthropic server."""
    return {
        "anthropic_api_key": "sk-fake",
        "anthropic_base_url": fake.url,
        "llm_provider": "anthropic",
    }


@pytest.fixture
async def stack(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic
) -> InProcessStack:
    return await make_stack(redis_target, **fake_model(fake))


def llm(node_id: str, prompt: str) -> dict[str, Any]:
    return {"id": node_id, "llm": {"prompt": prompt, "model": "claude-sonnet-4-6"}}


def fork_req(graph_id: str, **body: Any) -> orchestrator_pb2.ForkGraphRequest:
    req = json_format.ParseDict(body, orchestrator_pb2.ForkGraphRequest())
    req.graph_id = graph_id
    return req


async def fork(stack: InProcessStack, graph_id: str, **body: Any) -> Any:
    return await stack.client.stub.ForkGraph(fork_req(graph_id, **body), timeout=10)


def pipeline() -> orchestrator_pb2.SubmitGraphRequest:
    """plan (llm) -> check (a tool that fails) -> write (llm)."""
    nodes = [
        llm("plan", "Plan an essay on {{ inputs.topic }}."),
        tool("check", "fail", inputs={"message": "bad plan"}),
        llm("write", "Write it: {{ nodes.plan.output.text }}"),
    ]
    return request(nodes, [edge("plan", "check"), edge("check", "write")], {"topic": "Redis"})


async def test_fork_after_a_failure_reruns_only_the_failed_node_and_downstream(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    gid, st = await stack.client.run(pipeline())
    assert st.state == FAILED
    assert len(fake.requests) == 1
    plan_cost = node_status(st, "plan").usage.cost_usd
    assert plan_cost > 0
    patches = {
        "check": {"tool": {"name": "echo"}},
        "write": {"llm": {"prompt": "Write it better: {{ nodes.plan.output.text }}"}},
    }
    dry = await fork(stack, gid, failedOnly=True, nodePatches=patches, dryRun=True)
    assert dry.graph_id == ""
    assert list(dry.reused_nodes) == ["plan"] and list(dry.run_nodes) == ["check", "write"]
    assert dry.cost_saved_usd == pytest.approx(plan_cost)
    assert len(fake.requests) == 1

    resp = await fork(stack, gid, failedOnly=True, nodePatches=patches, requestId="f-1")
    assert resp.created and resp.graph_id != gid and resp.forked_from == gid
    assert (list(resp.reused_nodes), list(resp.run_nodes)) == (["plan"], ["check", "write"])
    new = await stack.client.wait(resp.graph_id)
    assert new.state == COMPLETED, new
    assert new.forked_from == gid
    # Only `write` called the model again, with the patched prompt.
    assert len(fake.requests) == 2
    text = plain(node_status(st, "plan").output)["text"]
    assert fake.requests[1].body["messages"][0]["content"] == f"Write it better: {text}"
    reused = node_status(new, "plan")
    assert reused.reused and reused.state == execution_pb2.NODE_STATE_COMPLETED
    assert plain(reused.output) == plain(node_status(st, "plan").output)
    assert reused.usage.cost_usd == 0 and not reused.attempts
    assert not node_status(new, "write").reused
    events = await stack.client.history(resp.graph_id)
    assert events[0].WhichOneof("payload") == "graph_submitted"
    assert events[0].graph_submitted.forked_from == gid
    (ev,) = of_kind(events, "node_reused", "plan")
    assert ev.node_reused.source_graph_id == gid and ev.seq == 2
    assert not of_kind(events, "node_started", "plan")
    assert await stack.client.watch(resp.graph_id) == events
    # The dry run's numbers are what the fork did.
    ran = {n.node_id for n in new.nodes if n.attempts}
    assert ran == set(dry.run_nodes)
    assert new.usage.cost_usd == pytest.approx(node_status(new, "write").usage.cost_usd)

    # Idempotent by request_id: the same run, not a new one.
    again = await fork(stack, gid, failedOnly=True, nodePatches=patches, requestId="f-1")
    assert again.graph_id == resp.graph_id and not again.created
    assert len(fake.requests) == 2
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, gid, failedOnly=True, requestId="f-1")
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_fork_from_a_node_of_a_completed_run_with_an_inputs_patch(
    stack: InProcessStack,
) -> None:
    nodes = [echo("a", x="{{ inputs.x }}"), echo("b", x="{{ inputs.x }}", y="{{ inputs.y }}")]
    gid, st = await stack.client.run(request(nodes, [edge("a", "b")], {"x": 1, "y": {"k": 1}}))
    assert st.state == COMPLETED
    resp = await fork(stack, gid, fromNodes=["b"], inputsPatch={"x": 2, "y": {"k": None}})
    new = await stack.client.wait(resp.graph_id)
    assert new.state == COMPLETED
    assert plain(node_status(new, "a").output) == {"x": 1}  # reused, not run with x=2
    assert plain(node_status(new, "b").output) == {"x": 2, "y": {}}
    assert [n.reused for n in new.nodes] == [True, False]
    listed = await stack.client.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(), timeout=10)
    (summary,) = [g for g in listed.graphs if g.graph_id == resp.graph_id]
    assert (summary.forked_from, summary.reused_nodes) == (gid, 1)
    req = orchestrator_pb2.ListGraphsRequest(forked_from=gid)
    forks = (await stack.client.stub.ListGraphs(req, timeout=10)).graphs
    assert [g.graph_id for g in forks] == [resp.graph_id]


async def test_fork_keeps_router_decisions_and_untaken_branches_stay_skipped(
    stack: InProcessStack,
) -> None:
    router = {
        "id": "r",
        "router": {
            "routes": [{"name": "big", "condition": "inputs.n > 10"}],
            "default_route": "small",
        },
    }
    nodes = [router, echo("big_n", n="{{ inputs.n }}"), echo("small_n"), echo("end")]
    edges = [
        edge("r", "big_n", label="big"),
        edge("r", "small_n", label="small"),
        edge("big_n", "end"),
        edge("small_n", "end"),
    ]
    nodes[3]["join"] = "JOIN_MODE_ANY"
    gid, st = await stack.client.run(request(nodes, edges, {"n": 20}))
    assert node_states(st)["small_n"] == "SKIPPED"
    # n=1 would make the router pick `small`, but the router's decision is reused.
    resp = await fork(stack, gid, fromNodes=["big_n"], inputsPatch={"n": 1})
    assert list(resp.reused_nodes) == ["r", "small_n"]
    new = await stack.client.wait(resp.graph_id)
    assert new.state == COMPLETED
    assert node_states(new) == {
        "r": "COMPLETED",
        "big_n": "COMPLETED",
        "small_n": "SKIPPED",
        "end": "COMPLETED",
    }
    assert node_status(new, "small_n").reused and node_status(new, "r").reused
    assert plain(node_status(new, "big_n").output) == {"n": 1}
    events = await stack.client.history(resp.graph_id)
    (ev,) = of_kind(events, "node_reused", "small_n")
    assert ev.node_reused.skipped


def loop_graph() -> orchestrator_pb2.SubmitGraphRequest:
    nodes = [
        tool(
            "a",
            "count",
            inputs={"n": "{{ has(nodes.b) ? nodes.b.output.n : 0 }}"},
            max_iterations=5,
        ),
        tool("b", "count", inputs={"n": "{{ nodes.a.output.n }}"}),
        echo("done", n="{{ nodes.b.output.n }}"),
    ]
    edges = [
        edge("a", "b"),
        edge("b", "a", "nodes.b.output.n < 6"),
        edge("b", "done", "nodes.b.output.n >= 6"),
    ]
    return request(nodes, edges, entry_nodes=["a"])


async def test_fork_of_a_loop(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(loop_graph())
    assert st.state == COMPLETED
    # After the loop: the loop is reused as it ended.
    after = await fork(stack, gid, fromNodes=["done"])
    assert list(after.reused_nodes) == ["a", "b"]
    new = await stack.client.wait(after.graph_id)
    assert new.state == COMPLETED
    assert plain(node_status(new, "done").output) == {"n": 6}
    # Inside the loop's body: the whole loop runs again, from its head.
    inside = await fork(stack, gid, fromNodes=["b"])
    assert list(inside.reused_nodes) == [] and list(inside.run_nodes) == ["a", "b", "done"]
    new = await stack.client.wait(inside.graph_id)
    assert new.state == COMPLETED
    assert node_status(new, "a").iteration == 3
    assert plain(node_status(new, "done").output) == {"n": 6}


async def test_fork_errors(stack: InProcessStack, fake: FakeAnthropic) -> None:
    gid, _ = await stack.client.run(pipeline())
    unknown = gid[: gid.index("-") + 1] + "0" * (len(gid) - gid.index("-") - 1)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, unknown, failedOnly=True)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    bad = {"write": {"llm": {"prompt": "{{ nodes.nope.output }}"}}}
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, gid, failedOnly=True, nodePatches=bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(e.value.details()).startswith("node_patches[write].llm.prompt: "), e.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, gid, fromNodes=["nope"])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, gid)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    held = await stack.client.submit(request([tool("h", "sleep", inputs={"seconds": 5})]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, held, fromNodes=["h"])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stack.client.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=held))


async def test_fork_with_the_python_client_and_dagoctl(
    stack: InProcessStack, tmp_path: Path
) -> None:
    nodes = [echo("a", x="{{ inputs.x }}"), echo("b", x="{{ inputs.x }}")]
    gid, _ = await stack.client.run(request(nodes, [edge("a", "b")], {"x": 1}))
    async with AsyncDagoClient(f"127.0.0.1:{stack.port}") as client:
        plan = await client.fork(gid, from_nodes=["b"], dry_run=True)
        assert list(plan.reused_nodes) == ["a"] and not plan.graph_id
        resp = await client.fork(
            gid, from_nodes=["b"], node_patches={"b": {"inputs": {"y": 3}}}, request_id="c-1"
        )
        new = await stack.client.wait(resp.graph_id)
        assert plain(node_status(new, "b").output) == {"x": 1, "y": 3}
        forks = [f async for f in client.list_graphs(filters=RunFilters(forked_from=gid))]
        assert [(f.graph_id, f.reused_nodes) for f in forks] == [(resp.graph_id, 1)]
    patch = tmp_path / "patch.yaml"
    patch.write_text("b:\n  inputs: {y: 4}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
    args = ["fork", gid, "--from", "b", "--patch", str(patch), "--inputs-patch", '{"x": 5}']
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dago_client",
        *args,
        "--dry-run",
        env={**env, "DAGO_TARGET": f"127.0.0.1:{stack.port}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert "reuse    a" in out.decode() and "run      b" in out.decode()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dago_client",
        "list",
        "--forked-from",
        gid,
        env={**env, "DAGO_TARGET": f"127.0.0.1:{stack.port}"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert [r.split()[0] for r in out.decode().splitlines()[1:]] == [resp.graph_id], out


async def archived_and_expired(stack: InProcessStack, url: str, gid: str) -> None:
    """Wait until ``gid`` is in PostgreSQL and its Redis state expired (retention_s=1)."""
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    keys = stack.store.keys.shard(shard).graph(gid).all()

    async def gone() -> bool:
        if await stack.store.redis.exists(*keys):
            return False
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT 1 FROM dago_runs WHERE graph_id = %s", (gid,))
            return await cur.fetchone() is not None

    await eventually(gone, timeout=20, interval=0.1)


@pytest.fixture
async def archiving(
    redis_target: RedisTarget, make_stack: MakeStack, fake: FakeAnthropic, postgres_url: str
) -> InProcessStack:
    """A stack that archives finished runs to PostgreSQL and lets Redis drop them 1 s later."""
    return await make_stack(
        redis_target,
        postgres_url=postgres_url,
        migrate_at_start=True,
        retention_s=1,
        **fake_model(fake),
    )


async def test_fork_of_an_archived_run_plans_and_runs_from_the_history(
    archiving: InProcessStack, fake: FakeAnthropic, postgres_url: str
) -> None:
    stack = archiving
    sub = pipeline()
    sub.priority = 5
    gid, st = await stack.client.run(sub)
    assert st.state == FAILED and len(fake.requests) == 1
    patches = {
        "check": {"tool": {"name": "echo"}},
        "write": {"llm": {"prompt": "Write it better: {{ nodes.plan.output.text }}"}},
    }
    live = await fork(stack, gid, failedOnly=True, nodePatches=patches, dryRun=True)
    await archived_and_expired(stack, postgres_url, gid)

    # The same plan from the history as from Redis.
    dry = await fork(stack, gid, failedOnly=True, nodePatches=patches, dryRun=True)
    assert dry == live
    assert list(dry.reused_nodes) == ["plan"] and list(dry.run_nodes) == ["check", "write"]
    assert dry.cost_saved_usd == pytest.approx(node_status(st, "plan").usage.cost_usd)
    assert dry.cost_saved_usd > 0
    resp = await fork(stack, gid, failedOnly=True, nodePatches=patches, requestId="h-1")
    assert resp.created and resp.forked_from == gid
    assert (list(resp.reused_nodes), list(resp.run_nodes)) == (["plan"], ["check", "write"])
    new = await stack.client.wait(resp.graph_id)
    assert new.state == COMPLETED, new
    assert new.forked_from == gid and new.reused_nodes == 1
    # Only `write` called the model again, with the patched prompt and the archived output.
    assert len(fake.requests) == 2
    text = plain(node_status(st, "plan").output)["text"]
    assert fake.requests[1].body["messages"][0]["content"] == f"Write it better: {text}"
    reused = node_status(new, "plan")
    assert reused.reused and plain(reused.output) == plain(node_status(st, "plan").output)
    assert reused.usage.cost_usd == 0 and not reused.attempts
    assert {n.node_id for n in new.nodes if n.attempts} == set(dry.run_nodes)
    again = await fork(stack, gid, failedOnly=True, nodePatches=patches, requestId="h-1")
    assert again.graph_id == resp.graph_id and not again.created

    # Archived in turn, the fork lists with its link, priority and reuse from PostgreSQL.
    await archived_and_expired(stack, postgres_url, resp.graph_id)
    status = await stack.client.status(resp.graph_id)
    assert (status.forked_from, status.reused_nodes) == (gid, 1)
    req = orchestrator_pb2.ListGraphsRequest(forked_from=gid)
    (summary,) = (await stack.client.stub.ListGraphs(req, timeout=10)).graphs
    assert (summary.graph_id, summary.forked_from, summary.reused_nodes) == (resp.graph_id, gid, 1)
    assert summary.priority == 3
    req = orchestrator_pb2.ListGraphsRequest(forked_from=resp.graph_id)
    assert not (await stack.client.stub.ListGraphs(req, timeout=10)).graphs
    listed = await stack.client.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(), timeout=10)
    (source,) = [g for g in listed.graphs if g.graph_id == gid]
    assert (source.priority, source.forked_from, source.reused_nodes) == (5, "", 0)


async def test_fork_of_a_run_archived_without_its_fork_record_is_failed_precondition(
    archiving: InProcessStack, postgres_url: str
) -> None:
    stack = archiving
    gid, st = await stack.client.run(request([echo("a", x=1)]))
    assert st.state == COMPLETED
    await archived_and_expired(stack, postgres_url, gid)
    # As a run archived before migration 0004 kept what a fork needs.
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("UPDATE dago_runs SET fork_json = NULL WHERE graph_id = %s", (gid,))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await fork(stack, gid, fromNodes=["a"])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no longer in Redis" in str(e.value.details())
    assert "archived before" in str(e.value.details())


async def test_failed_only_on_a_cancelled_run(stack: InProcessStack) -> None:
    nodes = [echo("a", x=1), tool("h", "sleep", inputs={"seconds": 5}), echo("b", x=2)]
    gid = await stack.client.submit(request(nodes, [edge("a", "h"), edge("h", "b")]))

    async def holding() -> bool:
        return node_states(await stack.client.status(gid))["h"] == "RUNNING"

    await eventually(holding)
    await stack.client.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid))
    await stack.client.wait(gid)
    patch = {"h": {"inputs": {"seconds": 0}}}
    resp = await fork(stack, gid, failedOnly=True, nodePatches=patch)
    assert (list(resp.reused_nodes), list(resp.run_nodes)) == (["a"], ["h", "b"])
    new = await stack.client.wait(resp.graph_id)
    assert new.state == COMPLETED
    assert plain(node_status(new, "b").output) == {"x": 2}


def map_run() -> orchestrator_pb2.SubmitGraphRequest:
    """A map of 5 items whose items 1 and 3 fail (collected), then a node after it."""
    items = [{"f": i in (1, 3)} for i in range(5)]
    body = tool("body", "pause", inputs={"value": "{{ index }}", "fail": "{{ item.f }}"})
    spec = {"onFailure": "MAP_FAILURE_POLICY_COLLECT", "maxFailures": 2}
    nodes = [
        {"id": "each", "map": {"items": "inputs.items", "node": body, **spec}},
        echo("done", out="{{ nodes.each.output.items }}"),
    ]
    return request(nodes, [edge("each", "done")], {"items": items})


MAP_PATCH = {"each": {"map": {"node": {"inputs": {"fail": False}}}}}
"""The map body fixed: the failed items complete when they run again."""


async def check_map_fork(stack: InProcessStack, graph_id: str) -> None:
    """The fork ``graph_id`` of ``map_run`` with ``MAP_PATCH`` ran items 1 and 3 alone."""
    new = await stack.client.wait(graph_id)
    assert new.state == COMPLETED, new.error
    out = plain(node_status(new, "each").output)
    assert out["items"] == [{"value": i} for i in range(5)]
    assert (out["completed"], out["failed"], out["total"]) == (5, 0, 5)
    events = await stack.client.history(graph_id)
    started = sorted(e.instance for e in of_kind(events, "node_started", "each") if e.instance)
    assert started == [2, 4]  # items 1 and 3 (instance = index + 1): nothing else executed
    req = orchestrator_pb2.ListMapItemsRequest(graph_id=graph_id, node_id="each")
    listed = (await stack.client.stub.ListMapItems(req, timeout=10)).items
    assert [(i.index, i.attempt) for i in listed] == [(0, 0), (1, 1), (2, 0), (3, 1), (4, 0)]


async def test_failed_only_on_a_map_reruns_only_its_failed_items(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(map_run())
    assert st.state == COMPLETED, st.error
    assert plain(node_status(st, "each").output)["failed"] == 2
    # The failed items run again with the body fixed; the completed ones are reused.
    dry = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH, dryRun=True)
    assert list(dry.run_nodes) == ["each", "done"]
    assert [(m.node_id, m.items_reused, m.items_to_run) for m in dry.map_items] == [("each", 3, 2)]
    resp = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH)
    # On its source's shard: the seed function copied the items inside Redis.
    shards = stack.settings.shards
    assert parse_shard(resp.graph_id, shards) == parse_shard(gid, shards)
    await check_map_fork(stack, resp.graph_id)


async def test_a_map_fork_on_another_shard_gets_its_items_in_pages(
    stack: InProcessStack,
) -> None:
    gid, st = await stack.client.run(map_run())
    assert st.state == COMPLETED, st.error
    shards = stack.settings.shards
    # A request_id whose record (and so the fork) lives on another shard than the source.
    rid = next(
        r
        for r in (f"other-{n}" for n in range(100))
        if _stable_shard(r, shards) != parse_shard(gid, shards)
    )
    resp = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH, requestId=rid)
    assert parse_shard(resp.graph_id, shards) != parse_shard(gid, shards)
    await check_map_fork(stack, resp.graph_id)


async def test_failed_only_on_an_archived_map_reuses_its_items_from_the_history(
    archiving: InProcessStack, postgres_url: str
) -> None:
    stack = archiving
    gid, st = await stack.client.run(map_run())
    assert st.state == COMPLETED, st.error
    live = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH, dryRun=True)
    await archived_and_expired(stack, postgres_url, gid)
    dry = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH, dryRun=True)
    assert dry == live
    assert [(m.node_id, m.items_reused, m.items_to_run) for m in dry.map_items] == [("each", 3, 2)]
    resp = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH)
    await check_map_fork(stack, resp.graph_id)


async def test_fork_of_an_archived_run_over_rest(
    redis_single: RedisServer, postgres_url: str
) -> None:
    await migrate_url(postgres_url)
    env = {"DAGO_POSTGRES_URL": postgres_url, "DAGO_RETENTION_S": "1"}
    prefix = f"tfkrest{secrets.token_hex(3)}"
    async with running_edge(redis_single.url, prefix, **env) as e:
        nodes = [echo("a", x="{{ inputs.x }}"), echo("b", x="{{ inputs.x }}")]
        body = json_format.MessageToDict(request(nodes, [edge("a", "b")], {"x": 1}))
        r = await e.http.post("/api/v1/graphs", json=body)
        assert r.status_code == 200, r.text
        gid = r.json()["graph_id"]
        store = redis_store(redis_single.url, prefix)
        try:

            async def archived_and_gone() -> bool:
                keys = store.keys.shard(int(gid.split("-")[0])).graph(gid).all()
                if await store.redis.exists(*keys):
                    return False
                async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
                    cur = await conn.execute("SELECT 1 FROM dago_runs WHERE graph_id = %s", (gid,))
                    return await cur.fetchone() is not None

            await eventually(archived_and_gone, timeout=30, interval=0.1)
        finally:
            await store.redis.aclose()
        fork_body = {"from_nodes": ["b"], "inputs_patch": {"x": 2}}
        r = await e.http.post(f"/api/v1/graphs/{gid}:fork", json={**fork_body, "dry_run": True})
        assert r.status_code == 200, r.text
        assert r.json()["reused_nodes"] == ["a"] and r.json()["run_nodes"] == ["b"]
        r = await e.http.post(f"/api/v1/graphs/{gid}:fork", json=fork_body)
        assert r.status_code == 200, r.text
        new = r.json()["graph_id"]

        async def finished() -> bool:
            r = await e.http.get(f"/api/v1/graphs/{new}/status")
            return r.json()["status"]["state"] == "GRAPH_STATE_COMPLETED"

        await eventually(finished, timeout=20)
        r = await e.http.get(f"/api/v1/graphs/{new}/status")
        outputs = {n["node_id"]: n["output"] for n in r.json()["status"]["nodes"]}
        assert outputs == {"a": {"x": 1}, "b": {"x": 2}}
        assert r.json()["status"]["reused_nodes"] == 1
        r = await e.http.get("/api/v1/graphs", params={"forked_from": gid})
        assert r.status_code == 200, r.text
        assert [(g["graph_id"], g["reused_nodes"]) for g in r.json()["graphs"]] == [(new, 1)]


async def test_a_map_longer_than_one_seed_call_reuses_every_completed_item(
    stack: InProcessStack,
) -> None:
    count = SEED_RANGE + 300  # two calls of the seed function
    failing = {5, SEED_RANGE - 1, SEED_RANGE, count - 1}
    items = [{"f": i in failing} for i in range(count)]
    body = tool("body", "pause", inputs={"value": "{{ index }}", "fail": "{{ item.f }}"})
    spec = {"onFailure": "MAP_FAILURE_POLICY_COLLECT", "maxFailures": 10, "maxConcurrency": 64}
    nodes = [{"id": "each", "map": {"items": "inputs.items", "node": body, **spec}}]
    gid, st = await stack.client.run(request(nodes, [], {"items": items}), timeout=120)
    assert (st.nodes[0].map.completed, st.nodes[0].map.failed) == (count - 4, 4)
    resp = await fork(stack, gid, failedOnly=True, nodePatches=MAP_PATCH)
    new = await stack.client.wait(resp.graph_id, timeout=120)
    assert new.state == COMPLETED, new.error
    out = plain(node_status(new, "each").output)
    assert out["items"] == [{"value": i} for i in range(count)]
    events = await stack.client.history(resp.graph_id)
    started = {e.instance - 1 for e in of_kind(events, "node_started", "each") if e.instance}
    assert started == failing
