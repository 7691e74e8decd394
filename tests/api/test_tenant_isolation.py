"""A hostile tenant's audit: tenant B, with its own valid key, probes everything tenant A
owns through the real API (single Redis and the 3-node cluster; PostgreSQL for archived
runs).

Whatever B names of A's — a run, its child run, its map items, its waits, its definition,
its request ids, a page token of A's listing — B gets exactly the answer a thing that
never existed gets (same code, same message once the id is swapped), never A's ids or
namespace in a message. Then one tenant's abuse (huge pages, inputs, patches, payloads,
filters) is refused naming the field, and the service keeps serving the other tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format, struct_pb2

from dago.api.auth import hash_key, new_key
from dago.api.servicer import MAP_SCAN_ITEMS
from dago.engine.ids import new_graph_id, parse_shard
from dago.history.filters import RunFilter
from dago.history.listing import RunListing
from dago.history.migrate import migrate_url
from dago.v1 import (
    definitions_pb2,
    definitions_pb2_grpc,
    execution_pb2,
    graph_pb2,
    orchestrator_pb2,
)
from harness import (
    Client,
    InProcessStack,
    MakeStack,
    RunningStack,
    echo,
    eventually,
    node_status,
    request,
    rpc_error,
    start_api_quickly,
    tool,
    varint,
)
from obshelpers import TOOLS, dead_letters, envoy, marker, poison
from redisfixture import RedisServer, RedisTarget

KEY_A, KEY_B, KEY_OPS = new_key(), new_key(), new_key()
KEY_DEFAULT = new_key()
"""A key of the ``default`` namespace: a graph whose namespace is gone must not read as its."""
KEYS = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b,{hash_key(KEY_OPS)}:ops"
WAITING = execution_pb2.NODE_STATE_WAITING
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


class Tenants:
    """A's, B's and the operator's clients of one stack."""

    def __init__(self, stack: InProcessStack) -> None:
        target = f"127.0.0.1:{stack.port}"
        self.stack = stack
        self.a = Client(target, KEY_A)
        self.b = Client(target, KEY_B)
        self.ops = Client(target, KEY_OPS)

    async def close(self) -> None:
        for c in (self.a, self.b, self.ops):
            await c.close()


@pytest.fixture
async def tenants(redis_target: RedisTarget, make_stack: MakeStack) -> AsyncIterator[Tenants]:
    stack = await make_stack(
        redis_target, auth="keys", api_keys=KEYS, operator_namespaces="ops", max_definitions=3
    )
    t = Tenants(stack)
    yield t
    await t.close()


def a_graph(**graph: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """A's run: a map of three items, a child run, and a wait node that waits for a
    signal (so the run stays live with something of every kind to probe)."""
    child = {"name": "a-child", "nodes": [echo("hi", v=1)]}
    nodes = [
        {"id": "each", "map": {"items": "inputs.items", "node": echo("x", v="{{ item }}")}},
        {"id": "kid", "subgraph": {"graph": child}},
        {"id": "review", "wait": {}},
    ]
    return request(nodes, inputs={"items": [1, 2, 3]}, name="a-secret-run", **graph)


def ghost_of(gid: str) -> str:
    """An id of the same shape and shard as ``gid`` that names nothing."""
    shard = parse_shard(gid, 4)
    assert shard is not None
    return new_graph_id(shard)


async def answer(call: Any) -> tuple[grpc.StatusCode, str]:
    """The code and message of a refused call (unary or a stream's first message)."""
    if hasattr(call, "__aiter__"):

        async def drain() -> None:
            async for _ in call:
                pass

        err = await rpc_error(drain())
    else:
        err = await rpc_error(call)
    return err.code(), err.details() or ""


async def same_as_nothing(
    c: Client, gid: str, probe: Any, *, other: str = "", ghost: str = ""
) -> str:
    """Call ``probe(id)`` with A's ``gid`` and with a ghost id: both must be NOT_FOUND with
    the same message but for the id, which never names A's namespace or another id of A's
    (``other``). Returns the message."""
    ghost = ghost or ghost_of(gid)
    code, message = await answer(probe(gid))
    ghost_code, ghost_message = await answer(probe(ghost))
    assert (code, ghost_code) == (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND), message
    assert message.replace(gid, "<id>") == ghost_message.replace(ghost, "<id>")
    assert "team-a" not in message and "a-secret" not in message
    if other:
        assert other not in message
    return message


async def waiting(c: Client, gid: str, node: str = "review") -> None:
    async def check() -> bool:
        st = await c.status(gid)
        return all(
            node_status(st, n).state == s
            for n, s in (
                (node, WAITING),
                ("each", execution_pb2.NODE_STATE_COMPLETED),
                ("kid", execution_pb2.NODE_STATE_COMPLETED),
            )
        )

    await eventually(check, 20)


async def a_live_run(t: Tenants) -> tuple[str, str]:
    """A's run, waiting on ``review`` with its map and child done; (run, child run)."""
    gid = await t.a.submit(a_graph(request_id="shared-rid"))
    await waiting(t.a, gid)
    kids = await t.a.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(parent_graph_id=gid))
    (kid,) = [g.graph_id for g in kids.graphs]
    return gid, kid


async def test_another_tenant_s_live_run_and_child_are_nothing_to_b(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    gid, kid = await a_live_run(tenants)
    s = b.stub
    o = orchestrator_pb2
    probes = {
        "GetGraph": lambda g: s.GetGraph(o.GetGraphRequest(graph_id=g)),
        "GetGraphStatus": lambda g: s.GetGraphStatus(o.GetGraphStatusRequest(graph_id=g)),
        "GetGraphStatus basic": lambda g: s.GetGraphStatus(
            o.GetGraphStatusRequest(graph_id=g, view=o.GRAPH_STATUS_VIEW_BASIC)
        ),
        "GetGraphResult": lambda g: s.GetGraphResult(o.GetGraphResultRequest(graph_id=g)),
        "ListGraphEvents": lambda g: s.ListGraphEvents(o.ListGraphEventsRequest(graph_id=g)),
        "ListNodeAttempts": lambda g: s.ListNodeAttempts(
            o.ListNodeAttemptsRequest(graph_id=g, node_id="each")
        ),
        "ListMapItems": lambda g: s.ListMapItems(o.ListMapItemsRequest(graph_id=g, node_id="each")),
        "ListWaits": lambda g: s.ListWaits(o.ListWaitsRequest(graph_id=g)),
        "SignalGraph": lambda g: s.SignalGraph(
            o.SignalGraphRequest(graph_id=g, node_id="review", decision="approve")
        ),
        "UpdateGraphLimits": lambda g: s.UpdateGraphLimits(
            o.UpdateGraphLimitsRequest(graph_id=g, limits=graph_pb2.GraphLimits(max_tokens=9))
        ),
        "CancelGraph": lambda g: s.CancelGraph(o.CancelGraphRequest(graph_id=g)),
        "ForkGraph": lambda g: s.ForkGraph(o.ForkGraphRequest(graph_id=g, from_nodes=["each"])),
        "ForkGraph failed_only": lambda g: s.ForkGraph(
            o.ForkGraphRequest(graph_id=g, failed_only=True, dry_run=True)
        ),
        "WatchGraph": lambda g: s.WatchGraph(o.WatchGraphRequest(graph_id=g)),
    }
    for name, probe in probes.items():
        for target in (gid, kid):
            message = await same_as_nothing(b, target, probe, other=kid if target == gid else gid)
            assert "not found" in message, (name, message)
    # A's ListWaits by graph id and by namespace, B's: nothing of A's.
    assert list((await s.ListWaits(o.ListWaitsRequest())).waits) == []
    mine = await a.stub.ListWaits(o.ListWaitsRequest())
    assert [(w.graph_id, w.node_id) for w in mine.waits] == [(gid, "review")]
    # Nothing B did touched the run: it still waits, uncancelled, limits unchanged.
    st = await a.status(gid)
    assert node_status(st, "review").state == WAITING
    assert st.state == execution_pb2.GRAPH_STATE_RUNNING
    got = await a.stub.GetGraph(o.GetGraphRequest(graph_id=gid))
    assert got.graph.limits.max_tokens == 0
    # A decides; the finished run is as unforkable by B as one that never existed.
    await a.stub.SignalGraph(
        o.SignalGraphRequest(graph_id=gid, node_id="review", decision="approve")
    )
    assert (await a.wait(gid)).state == COMPLETED
    for probe in (probes["ForkGraph"], probes["ForkGraph failed_only"], probes["GetGraphResult"]):
        await same_as_nothing(b, gid, probe)
    # B's RunGraph with A's request_id runs and streams B's own graph, not A's.
    run = o.RunGraphRequest(request_id="shared-rid")
    run.graph.CopyFrom(a_graph().graph)
    run.inputs.update({"items": [1]})
    async for msg in s.RunGraph(run, timeout=20):
        assert msg.event.graph_id not in (gid, kid)
        break
    # A may fork it (the probes above were refused for B alone).
    fork = await a.stub.ForkGraph(o.ForkGraphRequest(graph_id=gid, from_nodes=["each"]))
    assert fork.created


async def test_listing_filters_and_tokens_show_b_nothing_of_a(tenants: Tenants) -> None:
    a, b, ops = tenants.a, tenants.b, tenants.ops
    gid, _ = await a_live_run(tenants)
    defs_a = definitions_pb2_grpc.DefinitionServiceStub(a.channel)
    graph = json_format.ParseDict({"nodes": [echo("x", v=1)]}, graph_pb2.Graph())
    await defs_a.PublishDefinition(
        definitions_pb2.PublishDefinitionRequest(name="a-def", graph=graph)
    )
    by_def = orchestrator_pb2.SubmitGraphRequest(definition="a-def")
    await a.stub.SignalGraph(
        orchestrator_pb2.SignalGraphRequest(graph_id=gid, node_id="review", decision="approve")
    )
    await a.wait(gid)
    forked = await a.stub.ForkGraph(
        orchestrator_pb2.ForkGraphRequest(graph_id=gid, from_nodes=["each"])
    )
    await a.submit(by_def)
    o = orchestrator_pb2
    for f in (
        o.ListGraphsRequest(parent_graph_id=gid),
        o.ListGraphsRequest(forked_from=gid),
        o.ListGraphsRequest(definition="a-def"),
        o.ListGraphsRequest(name="a-secret-run"),
        o.ListGraphsRequest(),
        o.ListGraphsRequest(page_size=1000),
    ):
        theirs = await b.stub.ListGraphs(f)
        assert (list(theirs.graphs), theirs.next_page_token) == ([], ""), f
        own = await a.stub.ListGraphs(f)
        assert own.graphs, f  # the filter finds A's runs for A
    assert [
        g.graph_id for g in (await a.stub.ListGraphs(o.ListGraphsRequest(forked_from=gid))).graphs
    ] == [forked.graph_id]
    # A's page token, replayed by B with the same filters, is refused without a word of A's.
    page = await a.stub.ListGraphs(o.ListGraphsRequest(page_size=1))
    assert page.next_page_token
    err = await rpc_error(
        b.stub.ListGraphs(o.ListGraphsRequest(page_size=1, page_token=page.next_page_token))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in (err.details() or "")
    assert gid not in (err.details() or "") and "team-a" not in (err.details() or "")
    # Naming A's namespace is PERMISSION_DENIED whether it exists or not (same message).
    named = await answer(b.stub.ListGraphs(o.ListGraphsRequest(namespace="team-a")))
    nobody = await answer(b.stub.ListGraphs(o.ListGraphsRequest(namespace="team-zzz")))
    assert named[0] == nobody[0] == grpc.StatusCode.PERMISSION_DENIED
    assert named[1] == nobody[1] and "team-a" not in named[1]
    # The operator sees A's runs; its token is refused to a tenant too.
    ops_page = await ops.stub.ListGraphs(o.ListGraphsRequest(page_size=1))
    assert ops_page.graphs and ops_page.next_page_token
    err = await rpc_error(
        b.stub.ListGraphs(o.ListGraphsRequest(page_size=1, page_token=ops_page.next_page_token))
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_definitions_and_request_ids_are_per_namespace(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    defs_a = definitions_pb2_grpc.DefinitionServiceStub(a.channel)
    defs_b = definitions_pb2_grpc.DefinitionServiceStub(b.channel)
    graph = json_format.ParseDict(
        {"nodes": [echo("x", secret="a-secret-value")]}, graph_pb2.Graph()
    )
    await defs_a.PublishDefinition(
        definitions_pb2.PublishDefinitionRequest(name="a-def", graph=graph)
    )
    await defs_a.SetDefinitionLabel(
        definitions_pb2.SetDefinitionLabelRequest(name="a-def", version=1, label="prod")
    )

    async def both(probe: Any, name: str = "a-def") -> str:
        """A's name and a name nobody published answer alike."""
        code, message = await answer(probe(name))
        ghost_code, ghost_message = await answer(probe("zz-def"))
        assert code == ghost_code == grpc.StatusCode.NOT_FOUND, message
        assert message.replace(name, "<n>") == ghost_message.replace("zz-def", "<n>")
        assert "team-a" not in message and "a-secret" not in message
        return message

    d = definitions_pb2
    await both(lambda n: defs_b.GetDefinition(d.GetDefinitionRequest(name=n)))
    await both(lambda n: defs_b.GetDefinition(d.GetDefinitionRequest(name=n, version="prod")))
    await both(lambda n: defs_b.ListDefinitionVersions(d.ListDefinitionVersionsRequest(name=n)))
    await both(
        lambda n: defs_b.SetDefinitionLabel(
            d.SetDefinitionLabelRequest(name=n, version=1, label="x")
        )
    )
    await both(
        lambda n: defs_b.DeleteDefinitionLabel(d.DeleteDefinitionLabelRequest(name=n, label="prod"))
    )
    await both(
        lambda n: defs_b.DeprecateDefinitionVersion(
            d.DeprecateDefinitionVersionRequest(name=n, version="1")
        )
    )
    assert list((await defs_b.ListDefinitions(d.ListDefinitionsRequest())).definitions) == []
    # A's listing token is a position in B's (empty) listing, nothing more.
    await defs_a.PublishDefinition(d.PublishDefinitionRequest(name="a-def2", graph=graph))
    token = (await defs_a.ListDefinitions(d.ListDefinitionsRequest(page_size=1))).next_page_token
    assert token
    theirs = await defs_b.ListDefinitions(d.ListDefinitionsRequest(page_size=1, page_token=token))
    assert list(theirs.definitions) == []
    # Runs by reference, subgraph and map bodies naming A's definition: NOT_FOUND for B.
    o = orchestrator_pb2
    await both(lambda n: b.stub.SubmitGraph(o.SubmitGraphRequest(definition=f"{n}@prod")))
    await both(lambda n: b.stub.SubmitGraph(o.SubmitGraphRequest(definition=n)))
    sub_ref = lambda n: request([{"id": "s", "subgraph": {"definition": n}}])  # noqa: E731
    await both(lambda n: b.stub.SubmitGraph(sub_ref(n)))
    map_ref = lambda n: request(  # noqa: E731
        [{"id": "m", "map": {"items": "[1]", "node": {"id": "s", "subgraph": {"definition": n}}}}]
    )
    await both(lambda n: b.stub.SubmitGraph(map_ref(n)))
    # B publishes its own "a-def": a namespace of its own, version 1, A's untouched.
    mine = await defs_b.PublishDefinition(d.PublishDefinitionRequest(name="a-def", graph=graph))
    assert (mine.definition.version, mine.definition.namespace) == (1, "team-b")
    assert (await defs_a.GetDefinition(d.GetDefinitionRequest(name="a-def"))).definition.labels == [
        "prod"
    ]
    # The same request_id in two namespaces: two runs, and A's body is no conflict for B.
    ra = await a.stub.SubmitGraph(request([echo("x", v=1)], request_id="rid-1"))
    rb = await b.stub.SubmitGraph(request([echo("y", v=2)], request_id="rid-1"))
    assert ra.graph_id != rb.graph_id and ra.created and rb.created
    again = await b.stub.SubmitGraph(request([echo("y", v=2)], request_id="rid-1"))
    assert (again.graph_id, again.created) == (rb.graph_id, False)
    # A ForkGraph's request_id is per namespace too.
    await a.wait(ra.graph_id)
    await b.wait(rb.graph_id)
    fa = await a.stub.ForkGraph(
        o.ForkGraphRequest(graph_id=ra.graph_id, from_nodes=["x"], request_id="f-1")
    )
    fb = await b.stub.ForkGraph(
        o.ForkGraphRequest(graph_id=rb.graph_id, from_nodes=["y"], request_id="f-1")
    )
    assert fa.created and fb.created and fa.graph_id != fb.graph_id
    # A fork whose patch makes a node a subgraph naming A's definition: NOT_FOUND for B.
    await both(
        lambda n: b.stub.ForkGraph(
            o.ForkGraphRequest(
                graph_id=rb.graph_id,
                from_nodes=["y"],
                node_patches={"y": graph_pb2.Node(subgraph=graph_pb2.SubgraphNode(definition=n))},
            )
        ),
        "a-def2",  # A's alone (B has an a-def of its own by now)
    )


async def test_usage_and_limits_are_the_callers_own(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    gid = await a.submit(request([{"id": "review", "wait": {}}]))  # A's run stays active

    async def waits() -> bool:
        return node_status(await a.status(gid), "review").state == WAITING

    await eventually(waits, 20)
    la = await a.stub.GetLimits(orchestrator_pb2.GetLimitsRequest())
    lb = await b.stub.GetLimits(orchestrator_pb2.GetLimitsRequest())
    assert (la.operator, lb.operator) == (False, False)
    assert (la.namespace.namespace, la.namespace.active_runs) == ("team-a", 1)
    assert (lb.namespace.namespace, lb.namespace.active_runs) == ("team-b", 0)
    assert "team-a" not in str(lb)
    # A's ListWaits token, replayed by B: a position in B's own (empty) inbox, no more.
    second = await a.submit(request([{"id": "review", "wait": {}}]))

    async def two() -> bool:
        return len((await a.stub.ListWaits(orchestrator_pb2.ListWaitsRequest())).waits) == 2

    await eventually(two, 20)
    page = await a.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(page_size=1))
    assert page.next_page_token and page.waits[0].graph_id in (gid, second)
    theirs = await b.stub.ListWaits(
        orchestrator_pb2.ListWaitsRequest(page_size=1, page_token=page.next_page_token)
    )
    assert (list(theirs.waits), theirs.next_page_token) == ([], "")
    # Without a history, usage is FAILED_PRECONDITION for everyone alike.
    err = await rpc_error(b.stub.GetUsageSummary(orchestrator_pb2.GetUsageSummaryRequest()))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def big_struct(size: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"blob": "x" * size})
    return s


async def test_one_tenant_s_abuse_is_refused_naming_the_field(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    o = orchestrator_pb2
    gid, _ = await b.run(request([echo("x", v=1)]))

    async def refused(
        call: Any, field: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    ) -> None:
        err = await rpc_error(call)
        assert err.code() == code, (field, err.details())
        assert field in (err.details() or ""), (field, err.details())

    huge = 10**6
    await refused(b.stub.ListGraphs(o.ListGraphsRequest(page_size=huge)), "page_size")
    await refused(b.stub.ListWaits(o.ListWaitsRequest(page_size=huge)), "page_size")
    await refused(b.stub.ListDeadLetters(o.ListDeadLettersRequest(page_size=huge)), "page_size")
    await refused(
        b.stub.ListGraphEvents(o.ListGraphEventsRequest(graph_id=gid, page_size=huge)), "page_size"
    )
    await refused(
        b.stub.ListNodeAttempts(
            o.ListNodeAttemptsRequest(graph_id=gid, node_id="x", page_size=huge)
        ),
        "page_size",
    )
    defs = definitions_pb2_grpc.DefinitionServiceStub(b.channel)
    await refused(
        defs.ListDefinitions(definitions_pb2.ListDefinitionsRequest(page_size=huge)), "page_size"
    )
    # Filters of ListGraphs: an id far longer than any is refused naming its field.
    for field in ("parent_graph_id", "forked_from"):
        await refused(
            b.stub.ListGraphs(o.ListGraphsRequest(**{field: "0-" + "A" * 100_000})), field
        )
    # Inputs past DAGO_MAX_INPUTS_BYTES.
    big = request([echo("x", v=1)])
    big.inputs.CopyFrom(big_struct(2 << 20))
    await refused(b.stub.SubmitGraph(big), "inputs")
    # Many definitions: the namespace's cap (3 here) is RESOURCE_EXHAUSTED naming the quota.
    graph = json_format.ParseDict({"nodes": [echo("x", v=1)]}, graph_pb2.Graph())
    for n in range(3):
        await defs.PublishDefinition(
            definitions_pb2.PublishDefinitionRequest(name=f"d{n}", graph=graph)
        )
    await refused(
        defs.PublishDefinition(definitions_pb2.PublishDefinitionRequest(name="d9", graph=graph)),
        "DAGO_MAX_DEFINITIONS",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    # ForkGraph: a giant patch, or 100,000 from_nodes, is refused naming the field.
    patch = graph_pb2.Node(description="p" * (2 << 20))
    await refused(
        b.stub.ForkGraph(
            o.ForkGraphRequest(graph_id=gid, from_nodes=["x"], node_patches={"x": patch})
        ),
        "node_patches",
    )
    await refused(
        b.stub.ForkGraph(o.ForkGraphRequest(graph_id=gid, from_nodes=["x"] * 100_000)), "from_nodes"
    )
    await refused(
        b.stub.ForkGraph(
            o.ForkGraphRequest(graph_id=gid, from_nodes=["x"], inputs_patch=big_struct(2 << 20))
        ),
        "inputs",
    )
    # A signal with a huge payload: refused naming payload (the wait is B's own).
    wid = await b.submit(request([{"id": "review", "wait": {}}]))

    async def waits() -> bool:
        return node_status(await b.status(wid), "review").state == WAITING

    await eventually(waits, 20)
    payload = struct_pb2.Value(string_value="p" * (1 << 20))
    await refused(
        b.stub.SignalGraph(
            o.SignalGraphRequest(
                graph_id=wid, node_id="review", decision="approve", payload=payload
            )
        ),
        "payload",
    )
    # Nesting past protobuf's limit in a signal's payload or a fork's inputs_patch.
    deep = b""
    for _ in range(150):  # Value{list_value{values{...}}}
        inner = b"\x0a" + varint(len(deep)) + deep
        deep = b"\x32" + varint(len(inner)) + inner
    entry = b"\x0a\x01k\x12" + varint(len(deep)) + deep
    struct = b"\x0a" + varint(len(entry)) + entry
    ids = o.SignalGraphRequest(graph_id=wid, node_id="review", decision="approve")
    raw = {
        "SignalGraph": ids.SerializeToString() + b"\x22" + varint(len(deep)) + deep,
        "ForkGraph": o.ForkGraphRequest(graph_id=gid, from_nodes=["x"]).SerializeToString()
        + b"\x2a"
        + varint(len(struct))
        + struct,
    }
    for method, data in raw.items():
        call = b.channel.unary_unary(
            f"/dago.v1.OrchestratorService/{method}",
            request_serializer=lambda x: x,
            response_deserializer=lambda x: x,
        )
        await refused(call(data), "request")
    # A map yielding 100,001 items fails its node with a message that says so.
    items = request(
        [{"id": "each", "map": {"items": "inputs.items", "node": echo("x", v=1)}}],
        inputs={"items": [0] * 100_001},
    )
    _, st = await b.run(items, timeout=60)
    assert st.state == execution_pb2.GRAPH_STATE_FAILED
    assert "100000" in node_status(st, "each").error.message
    # And A was served throughout.
    assert (await a.run(request([echo("x", v=1)])))[1].state == COMPLETED


async def test_a_listing_cut_by_its_scan_budget_names_no_child_of_another_namespace(
    tenants: Tenants,
) -> None:
    """ListGraphs' parent filter reads the parent's children index: a page that the scan
    budget cuts short carries the last entry read in its token. For a parent of another
    namespace nothing is read, so no token carries A's child's id (the listing here has a
    budget of 2 entries, as a real one past SCAN_BUDGET children)."""
    a = tenants.a
    body = {"id": "s", "subgraph": {"graph": {"nodes": [echo("hi", v=1)]}}}
    gid, st = await a.run(request([{"id": "each", "map": {"items": "[1, 2, 3, 4]", "node": body}}]))
    assert st.state == COMPLETED
    listing = RunListing(tenants.stack.store, 4, None, scan_budget=2)
    own = await listing.page(RunFilter(namespace="team-a", parent_graph_id=gid), None, 50)
    assert len(own.runs) == 2 and own.next is not None  # cut by the budget: A's token
    theirs = await listing.page(RunFilter(namespace="team-b", parent_graph_id=gid), None, 50)
    assert (theirs.runs, theirs.next) == ([], None)
    every = await listing.page(RunFilter(namespace=None, parent_graph_id=gid), None, 50)
    assert every.runs  # an operator's listing reads it


@pytest.mark.process
async def test_through_envoy_and_dead_letters_b_finds_nothing_of_a_s(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    """REST through a real Envoy (the console's routes) answers B's requests for A's run
    as for one that never existed (404, same body but for the id), bad sizes are 400
    naming the field; and a dead letter that outlived its graph is nobody's but the
    operators': a key of the ``default`` namespace once saw every expired graph's."""
    keys = f"{KEYS},{hash_key(KEY_DEFAULT)}:default"
    env = {
        "DAGO_AUTH": "keys",
        "DAGO_API_KEYS": keys,
        "DAGO_OPERATOR_NAMESPACES": "ops",
        "DAGO_MAX_DELIVERIES": "1",
        "DAGO_TOOL_MODULES": TOOLS,
        "DAGO_RETENTION_S": "1",
    }
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        for name in ("w1", "w2", "w3"):  # the poison kills the worker of its first delivery
            stack.start(name, "worker")
        await start_api_quickly(stack)
        target = f"127.0.0.1:{stack.port}"
        a, dflt, ops = Client(target, KEY_A), Client(target, KEY_DEFAULT), Client(target, KEY_OPS)
        try:
            gid = await a.submit(poison(marker(tmp_path, "a")))
            dl = (await dead_letters(a))[0].dead_letter_id
            async with envoy(stack) as http:
                await rest_probes(http, gid, dl)
            # A cancels; the run expires from Redis (no history here), its dead letter stays.
            await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid))

            async def expired() -> bool:
                try:
                    await a.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid))
                except grpc.aio.AioRpcError as e:
                    return e.code() == grpc.StatusCode.NOT_FOUND
                return False

            await eventually(expired, 20, 0.1)
            req = orchestrator_pb2.ListDeadLettersRequest()
            assert list((await dflt.stub.ListDeadLetters(req)).dead_letters) == []
            assert [d.graph_id for d in (await ops.stub.ListDeadLetters(req)).dead_letters] == [gid]
            assert list((await a.stub.ListDeadLetters(req)).dead_letters) == []
            drop = orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=dl)
            code, _ = await answer(dflt.stub.DropDeadLetter(drop))
            assert code == grpc.StatusCode.NOT_FOUND
            await ops.stub.DropDeadLetter(drop)  # the operator clears it
        finally:
            for c in (a, dflt, ops):
                await c.close()


async def rest_probes(http: httpx.AsyncClient, gid: str, dl: str) -> None:
    """B's REST calls on A's live run ``gid`` and dead letter ``dl``."""
    b_hdr = {"authorization": f"Bearer {KEY_B}"}
    ghost = ghost_of(gid)
    ghost_dl = f"{dl.split('-')[0]}-1-1"
    calls: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", "/api/v1/graphs/{g}", None),
        ("GET", "/api/v1/graphs/{g}/status", None),
        ("GET", "/api/v1/graphs/{g}/result", None),
        ("GET", "/api/v1/graphs/{g}/events/history", None),
        ("GET", "/api/v1/graphs/{g}/nodes/p/attempts", None),
        ("GET", "/api/v1/graphs/{g}/nodes/p/items", None),
        ("GET", "/api/v1/waits?graph_id={g}", None),
        ("POST", "/api/v1/graphs/{g}/nodes/p:signal", {"decision": "approve"}),
        ("PATCH", "/api/v1/graphs/{g}/limits", {"max_tokens": 5}),
        ("POST", "/api/v1/graphs/{g}/cancel", {}),
        ("POST", "/api/v1/graphs/{g}:fork", {"from_nodes": ["p"]}),
    ]
    for method, path, body in calls:
        got = await http.request(method, path.format(g=gid), json=body, headers=b_hdr)
        none = await http.request(method, path.format(g=ghost), json=body, headers=b_hdr)
        assert (got.status_code, none.status_code) == (404, 404), (path, got.text)
        assert got.text.replace(gid, "<id>") == none.text.replace(ghost, "<id>"), path
        assert "team-a" not in got.text
    for method, path in (
        ("POST", "/api/v1/dead-letters/{d}:requeue"),
        ("DELETE", "/api/v1/dead-letters/{d}"),
    ):
        got = await http.request(
            method, path.format(d=dl), json={} if method == "POST" else None, headers=b_hdr
        )
        none = await http.request(
            method, path.format(d=ghost_dl), json={} if method == "POST" else None, headers=b_hdr
        )
        assert (got.status_code, none.status_code) == (404, 404), (path, got.text)
        assert got.text.replace(dl, "<id>") == none.text.replace(ghost_dl, "<id>"), path
    for path in (
        f"/api/v1/graphs?parent_graph_id={gid}",
        f"/api/v1/graphs?forked_from={gid}",
        "/api/v1/graphs",
        "/api/v1/waits",
        "/api/v1/dead-letters",
        f"/api/v1/dead-letters?graph_id={gid}",
    ):
        r = await http.get(path, headers=b_hdr)
        assert r.status_code == 200, (path, r.text)
        assert gid not in r.text and "team-a" not in r.text, (path, r.text)
    r = await http.get("/api/v1/limits", headers=b_hdr)
    assert r.status_code == 200 and "team-a" not in r.text
    for path in ("/api/v1/graphs", "/api/v1/waits", "/api/v1/dead-letters", "/api/v1/definitions"):
        r = await http.get(f"{path}?page_size=1000000", headers=b_hdr)
        assert r.status_code == 400 and "page_size" in r.json()["message"], (path, r.text)
    r = await http.get("/api/v1/graphs?namespace=team-a", headers=b_hdr)
    assert r.status_code == 403 and gid not in r.text


async def test_a_graph_expired_but_compiled_is_nothing_to_a_default_key(
    redis_target: RedisTarget, make_stack: MakeStack
) -> None:
    """The API keeps compiled graphs in memory after Redis let them go; with the graph's
    namespace gone, a key of the ``default`` namespace was taken for its owner: SignalGraph
    told it which node ids the graph has, ListWaits answered instead of NOT_FOUND."""
    keys = f"{KEYS},{hash_key(KEY_DEFAULT)}:default"
    stack = await make_stack(redis_target, auth="keys", api_keys=keys, retention_s=1)
    target = f"127.0.0.1:{stack.port}"
    a, dflt = Client(target, KEY_A), Client(target, KEY_DEFAULT)
    try:
        wait = {"id": "review", "wait": {"decisions": ["ship-it", "bury-it"]}}
        gid = await a.submit(request([wait]))

        async def waits() -> bool:
            return node_status(await a.status(gid), "review").state == WAITING

        await eventually(waits, 20)
        await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid))

        async def expired() -> bool:
            gk = stack.store.keys.shard(parse_shard(gid, 4) or 0).graph(gid)
            return not await stack.store.redis.exists(gk.meta)

        await eventually(expired, 20, 0.1)
        o = orchestrator_pb2
        for probe in (
            lambda g: dflt.stub.SignalGraph(
                o.SignalGraphRequest(graph_id=g, node_id="review", decision="nope")
            ),
            lambda g: dflt.stub.SignalGraph(
                o.SignalGraphRequest(graph_id=g, node_id="other", decision="nope")
            ),
            lambda g: dflt.stub.ListWaits(o.ListWaitsRequest(graph_id=g)),
        ):
            message = await same_as_nothing(dflt, gid, probe)
            assert "ship-it" not in message
    finally:
        await a.close()
        await dflt.close()


async def test_archived_runs_are_nothing_to_another_tenant(
    postgres_url: str, make_stack: MakeStack
) -> None:
    """Runs Redis let go and PostgreSQL keeps: B cannot fork, signal, cancel, patch, page
    the items or waits of A's, nor find them (or A's children and forks) by a filter."""
    await migrate_url(postgres_url)
    stack = await make_stack(
        postgres_url=postgres_url,
        migrate_at_start=True,
        retention_s=1,
        auth="keys",
        api_keys=f"{KEYS},{hash_key(KEY_DEFAULT)}:default",
        operator_namespaces="ops",
    )
    target = f"127.0.0.1:{stack.port}"
    a, b = Client(target, KEY_A), Client(target, KEY_B)
    dflt = Client(target, KEY_DEFAULT)  # a missing namespace must not read as its own
    o = orchestrator_pb2
    try:
        body = {"id": "s", "subgraph": {"graph": {"nodes": [echo("hi", v=1)]}}}
        gid, st = await a.run(
            request([{"id": "each", "map": {"items": "[1, 2]", "node": body}}], name="a-secret")
        )
        assert st.state == COMPLETED
        kids = await a.stub.ListGraphs(o.ListGraphsRequest(parent_graph_id=gid))
        fork = await a.stub.ForkGraph(o.ForkGraphRequest(graph_id=gid, from_nodes=["each"]))
        await a.wait(fork.graph_id)
        runs = [gid, fork.graph_id, *(k.graph_id for k in kids.graphs)]
        assert len(runs) == 4

        async def gone() -> bool:
            for g in runs:
                gk = stack.store.keys.shard(parse_shard(g, 4) or 0).graph(g)
                if await stack.store.redis.exists(gk.meta):
                    return False
            return True

        await eventually(gone, 30, 0.1)
        assert (await a.status(gid)).namespace == "team-a"  # from the archive
        probes = [
            lambda g: dflt.stub.CancelGraph(o.CancelGraphRequest(graph_id=g)),
            lambda g: dflt.stub.UpdateGraphLimits(
                o.UpdateGraphLimitsRequest(graph_id=g, limits=graph_pb2.GraphLimits(max_tokens=9))
            ),
            lambda g: dflt.stub.ForkGraph(o.ForkGraphRequest(graph_id=g, from_nodes=["each"])),
            lambda g: dflt.stub.ListWaits(o.ListWaitsRequest(graph_id=g)),
            lambda g: dflt.stub.GetGraph(o.GetGraphRequest(graph_id=g)),
            lambda g: b.stub.ForkGraph(o.ForkGraphRequest(graph_id=g, from_nodes=["each"])),
            lambda g: b.stub.ForkGraph(o.ForkGraphRequest(graph_id=g, failed_only=True)),
            lambda g: b.stub.ListWaits(o.ListWaitsRequest(graph_id=g)),
            lambda g: b.stub.ListMapItems(o.ListMapItemsRequest(graph_id=g, node_id="each")),
            lambda g: b.stub.ListNodeAttempts(
                o.ListNodeAttemptsRequest(graph_id=g, node_id="each")
            ),
            lambda g: b.stub.SignalGraph(
                o.SignalGraphRequest(graph_id=g, node_id="each", decision="approve")
            ),
            lambda g: b.stub.CancelGraph(o.CancelGraphRequest(graph_id=g)),
            lambda g: b.stub.UpdateGraphLimits(
                o.UpdateGraphLimitsRequest(graph_id=g, limits=graph_pb2.GraphLimits(max_tokens=9))
            ),
            lambda g: b.stub.GetGraphResult(o.GetGraphResultRequest(graph_id=g)),
            lambda g: b.stub.WatchGraph(o.WatchGraphRequest(graph_id=g)),
        ]
        for probe in probes:
            await same_as_nothing(b, gid, probe)
        # A forks its archived run; B's filters find none of A's runs in the archive.
        again = await a.stub.ForkGraph(o.ForkGraphRequest(graph_id=gid, from_nodes=["each"]))
        assert again.created
        for f in (
            o.ListGraphsRequest(parent_graph_id=gid),
            o.ListGraphsRequest(forked_from=gid),
            o.ListGraphsRequest(name="a-secret"),
            o.ListGraphsRequest(),
        ):
            theirs = await b.stub.ListGraphs(f)
            assert (list(theirs.graphs), theirs.next_page_token) == ([], ""), f
            assert (await a.stub.ListGraphs(f)).graphs, f
        usage = await b.stub.GetUsageSummary(
            o.GetUsageSummaryRequest(group_by=o.USAGE_GROUP_BY_NAMESPACE)
        )
        assert [r.key for r in usage.rows] == [] and usage.total.runs == 0
        mine = await a.stub.GetUsageSummary(
            o.GetUsageSummaryRequest(group_by=o.USAGE_GROUP_BY_NAMESPACE)
        )
        assert [r.key for r in mine.rows] == ["team-a"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.process
async def test_skipping_another_tenant_s_dead_letters_costs_one_read_a_shard(
    private_redis: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    """B's ListDeadLetters of one entry a page skips A's entries in batches of hundreds
    (it read two at a time: a round trip per two of another tenant's dead letters)."""
    env = {
        "DAGO_AUTH": "keys",
        "DAGO_API_KEYS": KEYS,
        "DAGO_MAX_DELIVERIES": "1",
        "DAGO_TOOL_MODULES": TOOLS,
    }
    workers = [f"w{n}" for n in range(5)]
    async with RunningStack(private_redis.url, key_prefix, **env) as stack:
        for name in workers:  # each poisoned node kills the worker of its delivery
            stack.start(name, "worker")
        await start_api_quickly(stack)
        target = f"127.0.0.1:{stack.port}"
        a, b = Client(target, KEY_A), Client(target, KEY_B)
        try:
            mark = str(marker(tmp_path, "a"))
            nodes = [tool(f"p{n}", "die", inputs={"marker": mark}) for n in range(3)]
            await a.submit(request(nodes))  # three dead letters on the run's shard

            async def three() -> bool:
                return len(await dead_letters(a)) == 3

            await eventually(three, 30, 0.1)
            for name in workers:  # nothing else reads streams backwards from now on
                stack.signal(name)
            redis = aioredis.Redis.from_url(private_redis.url)
            try:
                before = await xrevranges(redis)
                page = await b.stub.ListDeadLetters(
                    orchestrator_pb2.ListDeadLettersRequest(page_size=1)
                )
                assert list(page.dead_letters) == []
                assert await xrevranges(redis) - before == 4  # one read per shard
            finally:
                await redis.aclose()
        finally:
            await a.close()
            await b.close()


async def xrevranges(redis: aioredis.Redis) -> int:
    """XREVRANGE calls the server has answered."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xrevrange", {}).get("calls", 0))


async def test_a_state_filter_pages_a_large_map_a_bounded_read_at_a_time(
    make_stack: MakeStack,
) -> None:
    """ListMapItems with a state filter no item matches read the whole map (up to 100,000
    items, ~1 s of API and Redis time) in one call; now a page reads MAP_SCAN_ITEMS at
    most and ends with a token, and paging still finds every item of the state."""
    stack = await make_stack()
    c = stack.client
    n = MAP_SCAN_ITEMS + 1000
    body = {"items": "inputs.items", "node": echo("x", v="{{ item }}"), "maxConcurrency": 500}
    gid, st = await c.run(
        request([{"id": "each", "map": body}], inputs={"items": list(range(n))}), timeout=120
    )
    assert st.state == COMPLETED
    o = orchestrator_pb2

    async def pages(state: int, size: int) -> list[o.ListMapItemsResponse]:
        out, token = [], ""
        while True:
            req = o.ListMapItemsRequest(
                graph_id=gid, node_id="each", page_size=size, page_token=token, state=state
            )
            out.append(await c.stub.ListMapItems(req))
            token = out[-1].next_page_token
            if not token:
                return out

    none = await pages(execution_pb2.NODE_STATE_FAILED, 10)
    assert [len(p.items) for p in none] == [0, 0]  # two bounded reads, not one whole scan
    done = await pages(execution_pb2.NODE_STATE_COMPLETED, 1000)
    assert [i.index for p in done for i in p.items] == list(range(n))
