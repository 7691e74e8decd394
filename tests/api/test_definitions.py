"""Stored, versioned definitions (docs/definitions.md) through the real API and Redis:
publishing idempotent by content, immutable numbered versions, labels, latest, deprecation,
validation naming the field, namespaces, and runs submitted by reference."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from dago.api.auth import hash_key, new_key
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
    echo,
    error_details,
    rpc_error,
)
from redisfixture import RedisTarget


def graph(text: str = "hi", name: str = "greet") -> graph_pb2.Graph:
    body = {"name": name, "nodes": [echo("a", text=text)]}
    return json_format.ParseDict(body, graph_pb2.Graph())


def defs(c: Client) -> definitions_pb2_grpc.DefinitionServiceStub:
    return definitions_pb2_grpc.DefinitionServiceStub(c.channel)


async def publish(c: Client, name: str, g: graph_pb2.Graph, description: str = "") -> Any:
    req = definitions_pb2.PublishDefinitionRequest(name=name, graph=g, description=description)
    return await defs(c).PublishDefinition(req, timeout=10)


async def get(c: Client, name: str, version: str = "") -> definitions_pb2.DefinitionVersion:
    req = definitions_pb2.GetDefinitionRequest(name=name, version=version)
    return (await defs(c).GetDefinition(req, timeout=10)).definition


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


async def test_versions_labels_and_deprecation(stack: InProcessStack) -> None:
    c = stack.client
    first = await publish(c, "greet", graph("hi"), "first")
    assert first.created and first.definition.version == 1
    assert first.definition.digest and first.definition.graph == graph("hi")
    # The same content again: the latest version, nothing new.
    again = await publish(c, "greet", graph("hi"), "first")
    assert not again.created and again.definition.version == 1
    second = await publish(c, "greet", graph("hello"), "second")
    assert second.created and second.definition.version == 2
    assert second.definition.digest != first.definition.digest
    # Version 1 is unchanged (immutable); latest and "" are version 2.
    assert (await get(c, "greet", "1")).graph == graph("hi")
    assert (await get(c, "greet", "latest")).version == 2
    assert (await get(c, "greet")).description == "second"
    # Going back to version 1's content makes version 3 (only the latest is compared).
    assert (await publish(c, "greet", graph("hi"))).definition.version == 3

    label = definitions_pb2.SetDefinitionLabelRequest(name="greet", label="prod", version=1)
    assert list((await defs(c).SetDefinitionLabel(label, timeout=10)).definition.labels) == ["prod"]
    assert (await get(c, "greet", "prod")).version == 1
    label.version = 2  # the label moves
    await defs(c).SetDefinitionLabel(label, timeout=10)
    assert (await get(c, "greet", "prod")).version == 2
    assert list((await get(c, "greet", "1")).labels) == []

    dep = definitions_pb2.DeprecateDefinitionVersionRequest(name="greet", version="1")
    assert (await defs(c).DeprecateDefinitionVersion(dep, timeout=10)).definition.deprecated
    assert (await defs(c).DeprecateDefinitionVersion(dep, timeout=10)).definition.deprecated
    assert not (await get(c, "greet", "2")).deprecated

    versions = await defs(c).ListDefinitionVersions(
        definitions_pb2.ListDefinitionVersionsRequest(name="greet", page_size=2), timeout=10
    )
    assert [v.version for v in versions.versions] == [3, 2]
    assert not versions.versions[0].HasField("graph")
    rest = await defs(c).ListDefinitionVersions(
        definitions_pb2.ListDefinitionVersionsRequest(
            name="greet", page_size=2, page_token=versions.next_page_token
        ),
        timeout=10,
    )
    assert [(v.version, v.deprecated) for v in rest.versions] == [(1, True)]
    assert not rest.next_page_token

    await publish(c, "another", graph())
    listed = await defs(c).ListDefinitions(
        definitions_pb2.ListDefinitionsRequest(page_size=1), timeout=10
    )
    assert [d.name for d in listed.definitions] == ["another"]
    listed = await defs(c).ListDefinitions(
        definitions_pb2.ListDefinitionsRequest(page_token=listed.next_page_token), timeout=10
    )
    (summary,) = listed.definitions
    assert (summary.name, summary.latest_version, dict(summary.labels)) == ("greet", 3, {"prod": 2})


async def test_errors_name_the_field_or_the_resource(stack: InProcessStack) -> None:
    c = stack.client
    err = await rpc_error(publish(c, "Bad Name", graph()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = error_details(err)
    assert bad.field_violations[0].field == "name"
    # Validated as a submit: the field inside the graph is named.
    broken = graph()
    broken.nodes[0].tool.name = "no_such_tool"
    err = await rpc_error(publish(c, "broken", broken))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err)[0].field_violations[0].field.startswith("graph.nodes[0]")
    err = await rpc_error(get(c, "broken"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await publish(c, "ok", graph())
    for version, kind in (("9", "definition version"), ("nolabel", "definition label")):
        err = await rpc_error(get(c, "ok", version))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        (info,) = error_details(err)
        assert isinstance(info, error_details_pb2.ResourceInfo) and info.resource_type == kind
    for label in ("latest", "12", "Prod"):
        req = definitions_pb2.SetDefinitionLabelRequest(name="ok", label=label, version=1)
        err = await rpc_error(defs(c).SetDefinitionLabel(req, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_details(err)[0].field_violations[0].field == "label"
    req = definitions_pb2.SetDefinitionLabelRequest(name="ok", label="prod", version=2)
    assert (await rpc_error(defs(c).SetDefinitionLabel(req, timeout=10))).code() == (
        grpc.StatusCode.NOT_FOUND
    )


KEY_A, KEY_B = new_key(), new_key()


async def test_namespaces_isolate_definitions(make_stack: MakeStack) -> None:
    keys = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b"
    s = await make_stack(auth="keys", api_keys=keys)
    a, b = Client(f"127.0.0.1:{s.port}", KEY_A), Client(f"127.0.0.1:{s.port}", KEY_B)
    try:
        mine = await publish(a, "shared", graph("a"))
        assert mine.definition.namespace == "team-a"
        err = await rpc_error(get(b, "shared"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        theirs = await publish(b, "shared", graph("b"))
        assert theirs.created and theirs.definition.version == 1
        assert (await get(a, "shared")).graph == graph("a")
        listed = await defs(b).ListDefinitions(definitions_pb2.ListDefinitionsRequest())
        assert [d.name for d in listed.definitions] == ["shared"]
    finally:
        await a.close()
        await b.close()


async def test_runs_by_reference(stack: InProcessStack) -> None:
    c = stack.client
    v1 = (await publish(c, "ref", graph("one"))).definition
    v2 = (await publish(c, "ref", graph("two"))).definition
    label = definitions_pb2.SetDefinitionLabelRequest(name="ref", label="prod", version=1)
    await defs(c).SetDefinitionLabel(label, timeout=10)

    async def run(reference: str, **fields: Any) -> tuple[str, Any]:
        req = orchestrator_pb2.SubmitGraphRequest(definition=reference, **fields)
        gid = await c.submit(req)
        st = await c.wait(gid)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        return gid, st

    for reference, want in (("ref", v2), ("ref@1", v1), ("ref@prod", v1), ("ref@latest", v2)):
        gid, st = await run(reference)
        assert (st.definition.name, st.definition.version) == ("ref", want.version)
        assert st.definition.digest == want.digest
        submitted = (await c.history(gid))[0].graph_submitted
        assert submitted.definition == st.definition and not submitted.forked_from
        ran = await c.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid), timeout=10)
        assert ran.graph == want.graph

    # Idempotent by request_id: a retry after the label moved returns the first run.
    first = await c.stub.SubmitGraph(
        orchestrator_pb2.SubmitGraphRequest(definition="ref@prod", request_id="r1"), timeout=10
    )
    label.version = 2
    await defs(c).SetDefinitionLabel(label, timeout=10)
    again = await c.stub.SubmitGraph(
        orchestrator_pb2.SubmitGraphRequest(definition="ref@prod", request_id="r1"), timeout=10
    )
    assert (again.graph_id, again.created) == (first.graph_id, False)
    assert (await c.status(first.graph_id)).definition.version == 1
    err = await rpc_error(
        c.stub.SubmitGraph(
            orchestrator_pb2.SubmitGraphRequest(definition="ref@2", request_id="r1"), timeout=10
        )
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS

    before = await c.stub.SubmitGraph(
        orchestrator_pb2.SubmitGraphRequest(definition="ref@1", request_id="r2"), timeout=10
    )
    # Deprecated: refused unless allowed.
    dep = definitions_pb2.DeprecateDefinitionVersionRequest(name="ref", version="1")
    await defs(c).DeprecateDefinitionVersion(dep, timeout=10)
    err = await rpc_error(c.submit(orchestrator_pb2.SubmitGraphRequest(definition="ref@1")))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    await run("ref@1", allow_deprecated=True)
    # A retry of a run created before its version was deprecated is still that run.
    retry = await c.stub.SubmitGraph(
        orchestrator_pb2.SubmitGraphRequest(definition="ref@1", request_id="r2"), timeout=10
    )
    assert (retry.graph_id, retry.created) == (before.graph_id, False)

    # Exactly one of graph and definition; unknown references are NOT_FOUND.
    both = orchestrator_pb2.SubmitGraphRequest(definition="ref", graph=graph())
    err = await rpc_error(c.submit(both))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_details(err)[0].field_violations[0].field == "definition"
    for reference, code in (
        ("nope", grpc.StatusCode.NOT_FOUND),
        ("ref@9", grpc.StatusCode.NOT_FOUND),
        ("ref@", grpc.StatusCode.INVALID_ARGUMENT),
        ("Bad!", grpc.StatusCode.INVALID_ARGUMENT),
    ):
        err = await rpc_error(c.submit(orchestrator_pb2.SubmitGraphRequest(definition=reference)))
        assert err.code() == code, reference

    # ListGraphs shows the definition and filters by it (and by version).
    plain = await c.submit(orchestrator_pb2.SubmitGraphRequest(graph=graph()))
    listed = await c.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(), timeout=10)
    by_id = {g.graph_id: g for g in listed.graphs}
    assert not by_id[plain].HasField("definition")
    assert by_id[first.graph_id].definition.version == 1
    only = await c.stub.ListGraphs(
        orchestrator_pb2.ListGraphsRequest(definition="ref", definition_version=1), timeout=10
    )
    ids = [g.graph_id for g in only.graphs]
    assert first.graph_id in ids and plain not in ids
    assert {(g.definition.name, g.definition.version) for g in only.graphs} == {("ref", 1)}
    everything = await c.stub.ListGraphs(
        orchestrator_pb2.ListGraphsRequest(definition="ref"), timeout=10
    )
    assert len(everything.graphs) == len(listed.graphs) - 1


async def test_the_python_client_and_inputs_checked_at_submit(stack: InProcessStack) -> None:
    from dago_client import AsyncDagoClient, FailedPreconditionError, InvalidArgumentError

    g = graph("{{ inputs.who }}")  # publishable: the inputs come with each run
    async with AsyncDagoClient(f"127.0.0.1:{stack.port}") as dago:
        assert (await dago.publish_definition("py", g, "with inputs")).created
        await dago.label_definition("py", "prod", 1)
        assert (await dago.definition("py@prod")).description == "with inputs"
        assert [d.name for d in await dago.definitions()] == ["py"]
        assert [v.version for v in await dago.definition_versions("py")] == [1]
        with pytest.raises(InvalidArgumentError) as bad:
            await dago.submit(definition="py@prod")
        assert bad.value.field_violations[0].field.startswith("graph.nodes[0].inputs")
        resp = await dago.submit(definition="py@prod", inputs={"who": "me"})
        assert (await stack.client.wait(resp.graph_id)).definition.version == 1
        assert (await dago.deprecate_definition("py", "prod")).deprecated
        resp = await dago.submit(definition="py", inputs={"who": "me"}, allow_deprecated=True)
        assert resp.created
        # RunGraph by reference: submitted and streamed to its end in one call.
        with pytest.raises(FailedPreconditionError):
            async for _ in dago.run(definition="py@prod", inputs={"who": "run"}):
                pass
        events = [
            e
            async for e in dago.run(
                definition="py@prod", inputs={"who": "run"}, allow_deprecated=True
            )
        ]
        assert events[-1].WhichOneof("payload") == "graph_completed", events[-1]
        st = await stack.client.wait(events[0].graph_id)
        assert (st.definition.name, st.definition.version) == ("py", 1)


async def test_concurrent_publishes_number_versions_once_each(stack: InProcessStack) -> None:
    c = stack.client
    answers = await asyncio.gather(*(publish(c, "race", graph(f"v{i}")) for i in range(20)))
    assert all(a.created for a in answers)
    assert sorted(a.definition.version for a in answers) == list(range(1, 21))
    for a in answers:  # each number holds the graph its publish sent
        assert (await get(c, "race", str(a.definition.version))).graph == a.definition.graph


async def test_a_label_is_removed_and_references_to_it_stop_resolving(
    stack: InProcessStack,
) -> None:
    c = stack.client
    await publish(c, "greet", graph("hi"))
    await publish(c, "greet", graph("hello"))
    label = definitions_pb2.SetDefinitionLabelRequest(name="greet", label="prod", version=1)
    await defs(c).SetDefinitionLabel(label, timeout=10)
    run = orchestrator_pb2.SubmitGraphRequest(definition="greet@prod")
    pinned = await c.stub.SubmitGraph(run, timeout=10)
    drop = definitions_pb2.DeleteDefinitionLabelRequest(name="greet", label="prod")
    assert (await defs(c).DeleteDefinitionLabel(drop, timeout=10)).version == 1
    assert list((await get(c, "greet", "1")).labels) == []
    err = await rpc_error(get(c, "greet", "prod"))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "greet@prod" in (err.details() or "")
    again = await rpc_error(defs(c).DeleteDefinitionLabel(drop, timeout=10))
    assert again.code() == grpc.StatusCode.NOT_FOUND
    # The run that resolved the label keeps the version it recorded.
    status = await c.stub.GetGraphStatus(
        orchestrator_pb2.GetGraphStatusRequest(graph_id=pinned.graph_id), timeout=10
    )
    assert (status.status.definition.name, status.status.definition.version) == ("greet", 1)
    bad = await rpc_error(
        defs(c).DeleteDefinitionLabel(
            definitions_pb2.DeleteDefinitionLabelRequest(name="greet", label="7"), timeout=10
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT and "label" in (bad.details() or "")


async def test_quotas_bound_names_and_versions(make_stack: MakeStack) -> None:
    s = await make_stack(max_definitions=2, max_definition_versions=2)
    c = s.client
    await publish(c, "one", graph("a"))
    await publish(c, "one", graph("b"))
    await publish(c, "two", graph("a"))
    over = await rpc_error(publish(c, "one", graph("c")))
    assert over.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (failure,) = [d for d in error_details(over) if isinstance(d, error_details_pb2.QuotaFailure)]
    assert failure.violations[0].subject == "definition:one:versions"
    assert "DAGO_MAX_DEFINITION_VERSIONS" in (over.details() or "")
    third = await rpc_error(publish(c, "three", graph("a")))
    assert third.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "DAGO_MAX_DEFINITIONS" in (third.details() or "")
    # Nothing was stored past the quotas; identical content is still answered.
    assert (await get(c, "one")).version == 2
    assert not (await publish(c, "one", graph("b"))).created
    listed = await defs(c).ListDefinitions(definitions_pb2.ListDefinitionsRequest(), timeout=10)
    assert [d.name for d in listed.definitions] == ["one", "two"]
