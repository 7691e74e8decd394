"""ListGraphsRequest.namespace: an operator lists any namespace's runs, or every namespace's,
live (Redis) and archived (PostgreSQL); a tenant lists its own only.

Real API servers and workers on the single Redis and the 3-node cluster, a real PostgreSQL
history; REST through a real Envoy.
"""

from __future__ import annotations

import secrets
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dago.api.auth import hash_key, new_key
from dago.history.migrate import migrate_url
from dago.v1 import orchestrator_pb2
from dago_client import AsyncDagoClient
from harness import Client, InProcessStack, MakeStack, echo, eventually, request, running_edge
from redisfixture import RedisTarget

NAMESPACES = ("team-a", "team-b", "ops")


def auth_settings(keys: dict[str, str]) -> dict[str, Any]:
    """Settings of a stack where each key of ``keys`` (namespace -> key) calls in its
    namespace and ``ops`` is the operators' namespace."""
    return {
        "auth": "keys",
        "api_keys": ",".join(f"{hash_key(k)}:{ns}" for ns, k in keys.items()),
        "operator_namespaces": "ops",
    }


async def list_all(
    stack: InProcessStack, key: str, size: int, namespace: str = ""
) -> list[orchestrator_pb2.GraphSummary]:
    """Every page of ListGraphs of ``namespace`` (page size ``size``) with ``key``, in order
    (the Python client's pager)."""
    async with AsyncDagoClient(f"127.0.0.1:{stack.port}", api_key=key) as dago:
        return [g async for g in dago.list_graphs(page_size=size, namespace=namespace)]


def error_field(e: grpc.aio.AioRpcError) -> str:
    """The ``field`` of the ErrorInfo of a PERMISSION_DENIED status."""
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.metadata["field"]
    raise AssertionError(f"no ErrorInfo in {status}")


async def test_operators_list_any_or_every_namespace_live_and_archived(
    redis_target: RedisTarget, make_stack: MakeStack, postgres_url: str
) -> None:
    await migrate_url(postgres_url)
    keys = {ns: new_key() for ns in NAMESPACES}
    auth = auth_settings(keys)
    # One Redis and key prefix: team-a's runs are archived and leave Redis a second later;
    # the others stay in Redis (and are archived too); `plain` reads Redis alone.
    gone = await make_stack(redis_target, postgres_url=postgres_url, retention_s=1, **auth)
    kept = await make_stack(redis_target, postgres_url=postgres_url, retention_s=86400, **auth)
    plain = await make_stack(redis_target, **auth)

    def client(stack: InProcessStack, ns: str) -> Client:
        return Client(f"127.0.0.1:{stack.port}", keys[ns])

    runs: dict[str, str] = {}  # graph id -> namespace
    for ns, stack in (("team-a", gone), ("team-b", kept), ("team-a", gone), ("ops", kept)):
        c = client(stack, ns)
        gid, _ = await c.run(request([echo("a", v=1)], name=f"run-{ns}"))
        runs[gid] = ns
        await c.close()
    team_a = [g for g, ns in runs.items() if ns == "team-a"]

    async def team_a_only_archived() -> bool:
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            cur = await conn.execute("SELECT graph_id FROM dago_runs WHERE namespace = 'team-a'")
            if {r[0] for r in await cur.fetchall()} != set(team_a):
                return False
        return not any([await kept.in_redis(gid) for gid in team_a])

    await eventually(team_a_only_archived, timeout=30)

    ops, tenant = client(kept, "ops"), client(kept, "team-a")
    newest_first = list(reversed(runs))
    # Every namespace: both stores, each run once, newest first, each saying whose it is.
    listed = await list_all(kept, keys["ops"], 2)
    assert [(g.graph_id, g.namespace) for g in listed] == [(g, runs[g]) for g in newest_first]
    # One namespace: the archived team-a runs only; team-b's live ones only.
    assert [g.graph_id for g in await list_all(kept, keys["ops"], 1, "team-a")] == list(
        reversed(team_a)
    )
    assert {g.namespace for g in await list_all(kept, keys["ops"], 5, "team-b")} == {"team-b"}
    # Redis alone (no history): team-a's runs expired, the others are listed.
    assert {g.graph_id for g in await list_all(plain, keys["ops"], 1)} == {
        g for g, ns in runs.items() if ns != "team-a"
    }
    assert await list_all(plain, keys["ops"], 3, "team-a") == []

    # A tenant: its own namespace, named or not; another's is refused naming the field.
    for named in ("", "team-a"):
        assert [g.graph_id for g in await list_all(kept, keys["team-a"], 1, named)] == list(
            reversed(team_a)
        )
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenant.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(namespace="team-b"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (denied.value.details() or "").startswith("namespace:")
    assert error_field(denied.value) == "namespace"
    # A namespace that does not exist is refused the same way (nothing to learn from it).
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await tenant.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(namespace="nobody"))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # A page token is valid for the listing it was made for only.
    first = await ops.stub.ListGraphs(
        orchestrator_pb2.ListGraphsRequest(page_size=1, namespace="team-a")
    )
    assert first.next_page_token
    for other in ("team-b", ""):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ops.stub.ListGraphs(
                orchestrator_pb2.ListGraphsRequest(
                    page_size=1, namespace=other, page_token=first.next_page_token
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (refused.value.details() or "").startswith("page_token:")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await ops.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(namespace="a:b"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad.value.details() or "").startswith("namespace:")

    # GetLimits tells the console which kind of caller it is.
    limits = orchestrator_pb2.GetLimitsRequest()
    assert (await ops.stub.GetLimits(limits)).operator
    assert not (await tenant.stub.GetLimits(limits)).operator

    # The sweep takes a namespace whose runs all expired out of the shards' sets.
    async def team_a_forgotten() -> bool:
        listed = await kept.store.listed_namespaces()
        return all("team-a" not in names for names in listed)

    await eventually(team_a_forgotten, timeout=30)
    assert {ns for names in await kept.store.listed_namespaces() for ns in names} == {
        "team-b",
        "ops",
    }
    for c in (ops, tenant):
        await c.close()


async def test_rest_namespace_filter_through_envoy(redis_target: RedisTarget) -> None:
    keys = {ns: new_key() for ns in NAMESPACES}
    env = {f"DAGO_{k.upper()}": v for k, v in auth_settings(keys).items()}
    async with running_edge(redis_target.url, f"tns{secrets.token_hex(3)}", **env) as edge_:
        http = edge_.http

        def bearer(ns: str) -> dict[str, str]:
            return {"authorization": f"Bearer {keys[ns]}"}

        ids: dict[str, str] = {}
        for ns in ("team-a", "ops"):
            body = {
                "graph": {"nodes": [{"id": "a", "tool": {"name": "echo"}, "inputs": {"x": "1"}}]}
            }
            r = await http.post("/api/v1/graphs", json=body, headers=bearer(ns))
            assert r.status_code == 200, r.text
            ids[r.json()["graph_id"]] = ns

        r = await http.get("/api/v1/graphs", headers=bearer("ops"))
        assert r.status_code == 200, r.text
        assert {(g["graph_id"], g["namespace"]) for g in r.json()["graphs"]} == set(ids.items())
        for ns in ("team-a", "ops"):
            r = await http.get("/api/v1/graphs", params={"namespace": ns}, headers=bearer("ops"))
            assert [g["namespace"] for g in r.json()["graphs"]] == [ns], r.text
        r = await http.get(
            "/api/v1/graphs", params={"namespace": "team-a"}, headers=bearer("team-a")
        )
        assert r.status_code == 200 and len(r.json()["graphs"]) == 1, r.text
        r = await http.get("/api/v1/graphs", params={"namespace": "ops"}, headers=bearer("team-a"))
        assert r.status_code == 403, r.text
        assert r.json()["message"].startswith("namespace:"), r.text
