"""Authentication by API key and authorization by namespace, against a real server.

Two keys in two namespaces act on their own graphs only; everything about another
namespace's graph answers NOT_FOUND (never PERMISSION_DENIED, which would confirm it exists).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dago.api.auth import hash_key, new_key, parse_keys
from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    ROOT,
    Client,
    InProcessStack,
    MakeStack,
    echo,
    envoy_config,
    error_details,
    eventually,
    request,
    rpc_error,
    stack_settings,
    start_envoy,
    tool,
)
from redisfixture import RedisServer

KEY_A = new_key()
KEY_B = new_key()
KEYS = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b"


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack(auth="keys", api_keys=KEYS)


async def clients(stack: InProcessStack) -> tuple[Client, Client]:
    return Client(f"127.0.0.1:{stack.port}", KEY_A), Client(f"127.0.0.1:{stack.port}", KEY_B)


def reason(err: grpc.aio.AioRpcError) -> str:
    infos = [d for d in error_details(err) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason if infos else ""


async def test_calls_without_a_valid_key_are_unauthenticated_and_say_what_to_send(
    stack: InProcessStack,
) -> None:
    req = request([echo("a", x=1)])
    anonymous = stack.client  # the harness client sends no key
    err = await rpc_error(anonymous.submit(req))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in (err.details() or "")
    assert reason(err) == "API_KEY_MISSING"

    wrong = Client(f"127.0.0.1:{stack.port}", new_key())
    bad_scheme = grpc.aio.insecure_channel(f"127.0.0.1:{stack.port}")
    try:
        err = await rpc_error(wrong.submit(req))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED and reason(err) == "API_KEY_INVALID"
        err = await rpc_error(wrong.status("0-x"))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        # The hash of a valid key is not a key.
        hashed = Client(f"127.0.0.1:{stack.port}", hash_key(KEY_A))
        err = await rpc_error(hashed.submit(req))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        await hashed.close()
        # A streaming call is refused the same way.
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await wrong.watch("0-x")
        assert streamed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]
        call = bad_scheme.unary_unary(
            f"/{stub.full_name}/ListGraphs",
            request_serializer=orchestrator_pb2.ListGraphsRequest.SerializeToString,
            response_deserializer=orchestrator_pb2.ListGraphsResponse.FromString,
        )
        err = await rpc_error(
            call(orchestrator_pb2.ListGraphsRequest(), metadata=[("authorization", KEY_A)])
        )
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(err) == "API_KEY_MALFORMED"
        # The right key works with any capitalisation of the scheme.
        ok = await call(
            orchestrator_pb2.ListGraphsRequest(), metadata=[("authorization", f"bearer {KEY_A}")]
        )
        assert list(ok.graphs) == []
    finally:
        await wrong.close()
        await bad_scheme.close()


async def test_health_and_reflection_stay_open(stack: InProcessStack) -> None:
    channel = stack.client.channel
    stub_h = health_pb2_grpc.HealthStub(channel)

    async def serving() -> bool:
        r = await stub_h.Check(health_pb2.HealthCheckRequest())  # no key, no error
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)

    await eventually(serving)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = [
        r
        async for r in stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    ]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "dago.v1.OrchestratorService" in names


async def test_a_key_acts_only_on_its_own_namespace(stack: InProcessStack) -> None:
    a, b = await clients(stack)
    try:
        ga, st = await a.run(request([echo("a", x=1)]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        assert st.namespace == "team-a"
        slow = await a.submit(request([tool("s", "sleep", inputs={"seconds": 30})]))
        gb, _ = await b.run(request([echo("b", y=2)]))

        for gid in (ga, slow):
            for call in (
                b.status(gid),
                b.result(gid),
                b.history(gid),
                b.watch(gid),
                b.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid)),
                b.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid)),
            ):
                err = await rpc_error(call)
                assert err.code() == grpc.StatusCode.NOT_FOUND, (gid, call, err)
                # Exactly what an id that never existed gets: nothing tells them apart.
                assert gid in (err.details() or "")
        missing = ga[:-4] + ("AAAA" if not ga.endswith("AAAA") else "BBBB")
        assert (await rpc_error(b.status(missing))).details() == (
            await rpc_error(b.status(ga))
        ).details().replace(ga, missing)

        # The other namespace's cancel did nothing; the owner's works.
        assert (await a.status(slow)).state in (
            execution_pb2.GRAPH_STATE_SUBMITTED,
            execution_pb2.GRAPH_STATE_RUNNING,
        )
        await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=slow))
        assert (await a.wait(slow)).state == execution_pb2.GRAPH_STATE_CANCELLED

        got = await a.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=ga))
        assert got.namespace == "team-a"
        assert [e.seq for e in await a.history(ga)] == [e.seq for e in await a.watch(ga)]
        assert (await b.result(gb)).state == execution_pb2.GRAPH_STATE_COMPLETED
    finally:
        await a.close()
        await b.close()


async def test_listing_shows_one_namespace_and_pages_through_all_of_it(
    stack: InProcessStack,
) -> None:
    a, b = await clients(stack)
    try:
        mine = [await a.submit(request([echo("a", i=i)])) for i in range(7)]
        theirs = [await b.submit(request([echo("b", i=i)])) for i in range(5)]
        seen: list[str] = []
        token = ""
        while True:
            page = await a.stub.ListGraphs(
                orchestrator_pb2.ListGraphsRequest(page_size=3, page_token=token)
            )
            assert len(page.graphs) <= 3
            assert {g.namespace for g in page.graphs} <= {"team-a"}
            seen += [g.graph_id for g in page.graphs]
            token = page.next_page_token
            if not token:
                break
        assert sorted(seen) == sorted(mine) and len(seen) == len(set(seen))
        listed_b = await b.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(page_size=100))
        assert sorted(g.graph_id for g in listed_b.graphs) == sorted(theirs)
        for gid in mine:
            await a.wait(gid)
        done = await a.stub.ListGraphs(
            orchestrator_pb2.ListGraphsRequest(state=execution_pb2.GRAPH_STATE_COMPLETED)
        )
        assert sorted(g.graph_id for g in done.graphs) == sorted(mine)
    finally:
        await a.close()
        await b.close()


async def test_request_ids_are_per_namespace(stack: InProcessStack) -> None:
    a, b = await clients(stack)
    try:
        ra = await a.stub.SubmitGraph(request([echo("a", x=1)], request_id="same"))
        rb = await b.stub.SubmitGraph(request([echo("b", x=2)], request_id="same"))
        assert ra.created and rb.created and ra.graph_id != rb.graph_id
        assert (ra.namespace, rb.namespace) == ("team-a", "team-b")
        again = await a.stub.SubmitGraph(request([echo("a", x=1)], request_id="same"))
        assert again.graph_id == ra.graph_id and not again.created
    finally:
        await a.close()
        await b.close()


async def test_active_graphs_per_namespace_are_limited(
    redis_single: RedisServer, key_prefix: str
) -> None:
    # Three sleeps are still running at the end: the stop cancels them at once rather than
    # waiting out the usual drain (5 s), which is not what this test is about.
    settings = stack_settings(
        redis_single.url,
        key_prefix,
        auth="keys",
        api_keys=KEYS,
        max_active_graphs=2,
        drain_timeout_s=0.1,
    )
    async with InProcessStack(settings) as stack:
        a, b = await clients(stack)
        try:
            sleepy = request([tool("s", "sleep", inputs={"seconds": 30})])
            first = [await a.submit(sleepy) for _ in range(2)]
            err = await rpc_error(a.submit(sleepy))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "DAGO_MAX_ACTIVE_GRAPHS" in (err.details() or "")
            assert any(isinstance(d, error_details_pb2.QuotaFailure) for d in error_details(err))
            # Another namespace has its own allowance.
            await b.submit(sleepy)
            await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=first[0]))
            await a.wait(first[0])
            await a.submit(sleepy)
        finally:
            await a.close()
            await b.close()


async def test_a_rotated_keys_file_takes_effect_without_a_restart(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# issued for team-a\n{hash_key(KEY_A)} team-a\n")
    settings = stack_settings(
        redis_single.url, key_prefix, auth="keys", api_keys_file=str(keys_file)
    )
    async with InProcessStack(settings) as stack:
        a, b = await clients(stack)
        try:
            await a.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest())
            err = await rpc_error(b.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest()))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            keys_file.write_text(f"{hash_key(KEY_B)}   team-b\n")
            deadline = time.monotonic() + 10
            while True:  # re-read at most once a second
                try:
                    await b.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest())
                    break
                except grpc.aio.AioRpcError:
                    assert time.monotonic() < deadline, "the new key was never accepted"
            err = await rpc_error(a.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest()))
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await a.close()
            await b.close()


def dago(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python")),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "dago", *args],
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.process
def test_keys_new_prints_a_key_and_its_configuration() -> None:
    p = dago("keys", "new", "--namespace", "team-x")
    assert p.returncode == 0, p.stderr
    key = next(w for w in p.stdout.split() if w.startswith("dago_") and len(w) > 40)
    assert f"DAGO_API_KEYS={hash_key(key)}:team-x" in p.stdout
    assert f"{hash_key(key)} team-x" in p.stdout
    hashed = dago("keys", "hash", stdin=key + "\n")
    assert hashed.stdout.strip() == hash_key(key)
    assert dago("keys", "new", "--namespace", "a:b").returncode == 2


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DAGO_AUTH": "keys"}, "no API keys are configured"),
        ({"DAGO_AUTH": "keys", "DAGO_API_KEYS": f"{KEY_A}:team-a"}, "not the key itself"),
        ({"DAGO_AUTH": "keys", "DAGO_API_KEYS": f"{hash_key(KEY_A)}:a|b"}, "namespace"),
        ({"DAGO_AUTH": "keys", "DAGO_API_KEYS_FILE": "/nonexistent/keys"}, "cannot read"),
        ({"DAGO_AUTH": "maybe"}, "must be keys or off"),
    ],
)
@pytest.mark.process
def test_serve_refuses_to_start_with_unusable_key_settings(env: dict[str, str], words: str) -> None:
    clean = {k: "" for k in ("DAGO_API_KEYS", "DAGO_API_KEYS_FILE")}
    p = dago("serve", **{**clean, **env})
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert words in p.stderr, p.stderr
    assert KEY_A not in p.stderr  # a pasted key is never echoed
    assert "Traceback" not in p.stderr


# --- through Envoy: the HTTP Authorization header of REST, SSE and gRPC-Web ------------------


@pytest.mark.edge
@pytest.mark.process
async def test_keys_through_envoy_rest_sse_and_grpc_web(
    redis_single: RedisServer, key_prefix: str
) -> None:
    import struct

    import httpx

    from harness import RunningStack, grpc_web_frames, start_api_quickly

    async with RunningStack(
        redis_single.url, key_prefix, DAGO_AUTH="keys", DAGO_API_KEYS=KEYS
    ) as stack:
        config, port = envoy_config(stack)
        envoy = start_envoy(config, stack.logs / "envoy.log")
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20)
        try:
            stack.start("w1", "worker")
            await start_api_quickly(stack)

            async def up() -> bool:
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, 20, 0.05)
            body = {"graph": {"nodes": [{"id": "a", "tool": {"name": "echo"}, "inputs": {}}]}}
            r = await http.post("/api/v1/graphs", json=body)
            assert r.status_code == 401, (r.status_code, r.text)
            assert r.json()["code"] == 16 and "authorization: Bearer" in r.json()["message"]
            r = await http.post(
                "/api/v1/graphs", json=body, headers={"authorization": f"Bearer {new_key()}"}
            )
            assert r.status_code == 401, r.text

            a_hdr = {"authorization": f"Bearer {KEY_A}"}
            r = await http.post("/api/v1/graphs", json=body, headers=a_hdr)
            assert r.status_code == 200, r.text
            gid = r.json()["graph_id"]
            assert r.json()["namespace"] == "team-a"
            b_hdr = {"authorization": f"Bearer {KEY_B}"}
            r = await http.get(f"/api/v1/graphs/{gid}/status", headers=b_hdr)
            assert r.status_code == 404, r.text
            sse = {**a_hdr, "accept": "text/event-stream"}
            async with http.stream("GET", f"/api/v1/graphs/{gid}/events", headers=sse) as resp:
                assert resp.status_code == 200
                text = "".join([chunk async for chunk in resp.aiter_text()])
            assert "graph_completed" in text or "graphCompleted" in text, text
            r = await http.get(
                f"/api/v1/graphs/{gid}/events", headers={"accept": "text/event-stream"}
            )
            assert r.status_code == 401

            # Browsers may send Authorization: the CORS preflight allows it.
            r = await http.options(
                "/api/v1/graphs",
                headers={
                    "origin": "http://localhost:5173",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "authorization,content-type",
                },
            )
            assert "authorization" in r.headers.get("access-control-allow-headers", "").lower()

            req = orchestrator_pb2.ListGraphsRequest().SerializeToString()
            frame = struct.pack(">BI", 0, len(req)) + req
            web = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
            service = "dago.v1.OrchestratorService"
            r = await http.post(f"/{service}/ListGraphs", content=frame, headers=web)
            _, trailers = grpc_web_frames(r.content)
            assert (r.headers.get("grpc-status") or trailers.get("grpc-status")) == "16"
            r = await http.post(f"/{service}/ListGraphs", content=frame, headers={**web, **a_hdr})
            messages, trailers = grpc_web_frames(r.content)
            assert trailers.get("grpc-status") == "0", (r.headers, trailers)
            listed = orchestrator_pb2.ListGraphsResponse.FromString(messages[0])
            assert [g.graph_id for g in listed.graphs] == [gid]
        finally:
            await http.aclose()
            envoy.terminate()
            envoy.wait(10)


@pytest.mark.process
async def test_dead_letters_are_scoped_to_the_namespace(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    from harness import RunningStack, start_api_quickly
    from obshelpers import TOOLS, dead_letters, marker, poison

    env = {
        "DAGO_AUTH": "keys",
        "DAGO_API_KEYS": KEYS,
        "DAGO_MAX_DELIVERIES": "1",
        "DAGO_TOOL_MODULES": TOOLS,
    }
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        for name in ("w1", "w2", "w3"):  # the poison kills the worker of its first delivery
            stack.start(name, "worker")
        await start_api_quickly(stack)
        a, b = Client(f"127.0.0.1:{stack.port}", KEY_A), Client(f"127.0.0.1:{stack.port}", KEY_B)
        try:
            gid = await a.submit(poison(marker(tmp_path, "a")))
            listed = await dead_letters(a)
            assert [d.graph_id for d in listed] == [gid]
            theirs = await b.stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest())
            assert list(theirs.dead_letters) == []
            by_graph = await b.stub.ListDeadLetters(
                orchestrator_pb2.ListDeadLettersRequest(graph_id=gid)
            )
            assert list(by_graph.dead_letters) == []
            dl = listed[0].dead_letter_id
            for call in (
                b.stub.RequeueDeadLetter(
                    orchestrator_pb2.RequeueDeadLetterRequest(dead_letter_id=dl)
                ),
                b.stub.DropDeadLetter(orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=dl)),
            ):
                assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
            dropped = await a.stub.DropDeadLetter(
                orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=dl)
            )
            assert dropped.failed_node
            assert (await a.wait(gid)).state == execution_pb2.GRAPH_STATE_FAILED
        finally:
            await a.close()
            await b.close()


async def test_namespace_keys_follow_the_layout_and_expire_with_the_graph(
    redis_single: RedisServer, key_prefix: str
) -> None:
    """The per-namespace index and request records are where dago/keys.py says, and the
    sweeper removes an expired graph from its namespace's index (timer ``x|<gid>|<ns>``)."""
    from dago.api.servicer import _stable_shard

    settings = stack_settings(
        redis_single.url, key_prefix, auth="keys", api_keys=KEYS, retention_s=1
    )
    async with InProcessStack(settings) as stack:
        a, _ = await clients(stack)
        try:
            gid, st = await a.run(request([echo("a", x=1)], request_id="rid-1"))
            assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
            redis = stack.store.redis
            shard = int(gid.split("-", 1)[0])
            sk = stack.store.keys.shard(shard)
            assert shard == _stable_shard("team-a/rid-1", settings.shards)
            assert await redis.exists(sk.request("rid-1", "team-a"))
            assert not await redis.exists(sk.request("rid-1"))
            done = str(execution_pb2.GRAPH_STATE_COMPLETED)
            assert await redis.zscore(sk.index("", "team-a"), gid) is not None
            assert await redis.zscore(sk.index(done, "team-a"), gid) is not None
            assert await redis.zscore(sk.index(), gid) is None  # not in the default namespace

            async def expired() -> bool:
                return (
                    await redis.zscore(sk.index("", "team-a"), gid) is None
                    and await redis.zscore(sk.index(done, "team-a"), gid) is None
                    and not await redis.exists(sk.request("rid-1", "team-a"))
                )

            await eventually(expired, 15, 0.1)
            listed = await a.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest())
            assert gid not in [g.graph_id for g in listed.graphs]
        finally:
            await a.close()


def test_a_malformed_keys_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    from dago.api.auth import KeyRing

    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{hash_key(KEY_A)} team-a  # trailing comment\n\n# only a comment\n")
    ring = KeyRing("", str(keys_file))
    assert ring.lookup(KEY_A) == "team-a" and ring.lookup(KEY_B) is None
    keys_file.write_text("this is not a key line at all\n")  # half-written, say
    ring._checked = 0.0  # re-check now rather than within a second
    assert ring.lookup(KEY_A) == "team-a"


def test_the_redactor_knows_every_configured_secret() -> None:
    from dago.config import Settings
    from dago.observe.redact import Redactor

    settings = Settings(
        redis_url="rediss://user:redis-pass-123456@h:6380/0?password=query-pass-654321",
        anthropic_api_key="sk-ant-0123456789",
        openai_api_key="sk-openai-0123456789",
    )
    redact = Redactor.from_settings(settings)
    text = "a sk-ant-0123456789 b sk-openai-0123456789 c redis-pass-123456 d query-pass-654321"
    assert redact(text) == "a [redacted] b [redacted] c [redacted] d [redacted]"
    assert Redactor(["short"])("short stays") == "short stays"  # too short to be a secret
    # The logs' rule (key-shaped text) and the operator's secrets in one redactor.
    both = Redactor(["op-secret-123456"], key_shaped=True)
    assert both("op-secret-123456, Bearer abc.DEF") == "[redacted], [redacted]"
    assert Redactor(key_shaped=True)("sk-ant-api03-xyz") == "[redacted]"


def test_a_key_entry_may_name_the_key() -> None:
    from dago.config import ConfigError

    digest = hash_key(KEY_A)
    (named,) = parse_keys(f"{digest}:team-a:alice", ":", "DAGO_API_KEYS")
    assert (named.namespace, named.name) == ("team-a", "alice")
    (unnamed,) = parse_keys(f"{digest} team-a", " ", "DAGO_API_KEYS_FILE")
    assert (unnamed.namespace, unnamed.name) == ("team-a", f"key-{digest[:8]}")
    (filed,) = parse_keys(f"{digest} team-a ci-bot  # the CI", " ", "DAGO_API_KEYS_FILE")
    assert filed.name == "ci-bot"
    with pytest.raises(ConfigError, match="name"):
        parse_keys(f"{digest}:team-a:no way", ":", "DAGO_API_KEYS")
