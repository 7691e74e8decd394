"""Hostile tenants and clients (issue 15, items 5-9): each hostile request is refused with
INVALID_ARGUMENT naming the field (HTTP 400 through Envoy) or answered as it should be, and a
well-behaved client of another namespace gets its normal answers right after.

- Health ``Watch`` (open without a key) streams SERVING / NOT_SERVING as workers come and go,
  ends cleanly when the client cancels or the server stops, and logs nothing.
- Bad input that was INTERNAL: dead letter ids with a 20-digit part, page tokens with huge,
  negative or non-ASCII numbers, NaN and Infinity in inputs, node inputs, metadata, output
  schemas and double fields, and NaN/Infinity computed at run time (which broke REST reads).
- Redaction is no oracle: guesses come back the same whether or not one is a secret, and a
  real leak (a provider echoing the key) is still cut out.
- Free text is bounded (every field at its limit is accepted, one more character refused),
  errors and logs never quote a client's string whole.
- Full matches: ``"a\\n"``, ``"a\\r"`` and look-alikes are no ids or names.
- What a tenant sees of others: ListWorkers without hosts, pids and ports; SSRF refusals
  without the resolved address; /metrics without namespaces, graph names or model names.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dago.api.auth import NAMESPACE, hash_key, new_key, parse_keys
from dago.app import build_worker
from dago.config import ConfigError, Settings, load
from dago.engine import fields as limits
from dago.observe import logs
from dago.observe.redact import TENANT, Redactor
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from fake_anthropic import Error, FakeAnthropic
from harness import (
    Client,
    Edge,
    InProcessStack,
    MakeStack,
    echo,
    edge,
    error_details,
    eventually,
    free_port,
    node_status,
    request,
    rpc_error,
    tool,
)

KEY_A = new_key()  # the hostile tenant
KEY_B = new_key()  # a well-behaved tenant of another namespace
KEY_OPS = new_key()  # the operators' namespace
KEYS = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b,{hash_key(KEY_OPS)}:ops"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack(auth="keys", api_keys=KEYS, operator_namespaces="ops")


@pytest.fixture
async def clients(stack: InProcessStack) -> AsyncIterator[tuple[Client, Client]]:
    a = Client(f"127.0.0.1:{stack.port}", KEY_A)
    b = Client(f"127.0.0.1:{stack.port}", KEY_B)
    yield a, b
    await a.close()
    await b.close()


def violations(err: grpc.aio.AioRpcError) -> list[str]:
    """The fields of the BadRequest of an error."""
    return [
        v.field
        for d in error_details(err)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


async def refused(call: Awaitable[Any], field: str) -> grpc.aio.AioRpcError:
    """The call fails with INVALID_ARGUMENT whose BadRequest names ``field`` (a prefix when it
    ends with ``[``)."""
    err = await rpc_error(call)
    assert err.code() == INVALID, (err.code(), err.details())
    found = violations(err)
    ok = any(f.startswith(field) for f in found) if field.endswith("[") else field in found
    assert ok, (field, found, err.details())
    assert len(err.details() or "") < 2000, len(err.details() or "")
    return err


async def well_behaved(b: Client) -> None:
    """Another namespace's client: a graph runs to completion and its listing answers."""
    started = time.perf_counter()
    gid, st = await b.run(
        request([echo("a", v=1), echo("b", w="{{ nodes.a.output.v }}")], [edge("a", "b")])
    )
    assert st.state == COMPLETED, st
    listed = await b.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(page_size=5), timeout=10)
    assert gid in [g.graph_id for g in listed.graphs]
    logging.getLogger("test").info(
        "well-behaved client: %.1f ms", 1e3 * (time.perf_counter() - started)
    )


def token(text: str) -> str:
    """A page token as the API makes them, around ``text``."""
    return base64.urlsafe_b64encode(text.encode()).decode()


# --- 5. grpc.health.v1.Health/Watch ------------------------------------------------------


async def test_health_watch_follows_workers_and_ends_cleanly(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = await make_stack(
        workers=0, auth="keys", api_keys=KEYS, worker_heartbeat_ms=100, worker_ttl_ms=600
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{s.port}")  # no key: health is open
    health = health_pb2_grpc.HealthStub(channel)
    try:
        # Probes that watch, over and over: each call streams and ends without a trace.
        for _ in range(20):
            call = health.Watch(health_pb2.HealthCheckRequest(service="liveness"))
            assert (await call.read()).status == SERVING
            call.cancel()
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        ready = health.Watch(health_pb2.HealthCheckRequest(service="dago.v1.OrchestratorService"))
        unknown = health.Watch(health_pb2.HealthCheckRequest(service="x" * 10_000))
        assert (await unknown.read()).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        assert (await watch.read()).status == NOT_SERVING  # Redis up, no worker yet
        assert (await ready.read()).status == NOT_SERVING
        stop = asyncio.Event()
        worker = build_worker(dataclasses.replace(s.settings, worker_id="late"))
        task = asyncio.create_task(worker.run(stop))
        assert (await asyncio.wait_for(watch.read(), 10)).status == SERVING
        assert (await asyncio.wait_for(ready.read(), 10)).status == SERVING
        stop.set()
        await task
        assert (await asyncio.wait_for(watch.read(), 10)).status == NOT_SERVING
        watch.cancel()
        unknown.cancel()
        # The server stops: the open watch ends with NOT_SERVING and OK, and does not hold
        # the stop up.
        started = time.monotonic()
        await s.stop()
        assert time.monotonic() - started < 4
        rest = []
        while (msg := await asyncio.wait_for(ready.read(), 5)) != grpc.aio.EOF:
            rest.append(msg.status)
        assert rest and rest[-1] == NOT_SERVING, rest
        assert await ready.code() == grpc.StatusCode.OK
    finally:
        await channel.close()
    text = caplog.text
    assert "Traceback" not in text and "__aiter__" not in text, text[-3000:]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], text[-3000:]


async def test_health_check_and_watch_need_no_key_and_other_calls_do(
    stack: InProcessStack, clients: tuple[Client, Client]
) -> None:
    _, b = clients
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        r = await health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert r.status == SERVING
        err = await rpc_error(health.Check(health_pb2.HealthCheckRequest(service="nope")))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        anonymous = Client(f"127.0.0.1:{stack.port}")
        err = await rpc_error(anonymous.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest()))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        await anonymous.close()
    finally:
        await channel.close()
    await well_behaved(b)


# --- 6. INTERNAL for bad input -----------------------------------------------------------

TOKENS = {
    "huge": "g:99999999999999999999:0-X",
    "negative": "g:-1:0-X",
    "superscript digit": "g:\u00b2:0-X",
    "arabic-indic digits": "g:\u0661\u0662:0-X",
    "empty part": "g::0-X",
}


@pytest.mark.parametrize("text", list(TOKENS.values()), ids=list(TOKENS))
async def test_page_tokens_with_bad_numbers_are_invalid_argument(
    clients: tuple[Client, Client], text: str
) -> None:
    a, b = clients
    await refused(
        a.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(page_token=token(text))), "page_token"
    )
    dead = text.replace("g:", "d:1:", 1).replace(":0-X", ":0")
    await refused(
        a.stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest(page_token=token(dead))),
        "page_token",
    )
    gid = await a.submit(request([echo("a")]))
    events = text.removeprefix("g:").removesuffix(":0-X")
    await refused(
        a.stub.ListGraphEvents(
            orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, page_token=token(f"e:{events}"))
        ),
        "page_token",
    )
    await well_behaved(b)


async def test_page_tokens_out_of_range_and_oversized_are_invalid_argument(
    stack: InProcessStack, clients: tuple[Client, Client]
) -> None:
    a, b = clients
    shards = stack.settings.shards
    for bad in (token(f"d:1:1:{shards}"), "A" * 10_000, token("g:" + "9" * 400)):
        await refused(
            a.stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest(page_token=bad)),
            "page_token",
        )
    # The largest numbers a token can carry are answered (an empty page), not INTERNAL.
    top = 2**63 - 1
    gid = await a.submit(request([echo("a")]))
    resp = await a.stub.ListGraphEvents(
        orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, page_token=token(f"e:{top}"))
    )
    assert list(resp.events) == []
    await a.stub.ListDeadLetters(
        orchestrator_pb2.ListDeadLettersRequest(page_token=token(f"d:{top}:{top}:0"))
    )
    await well_behaved(b)


@pytest.mark.parametrize(
    "dead_letter_id",
    ["0-99999999999999999999-1", "0-1-18446744073709551616", "0-" + "1" * 70, "9" * 3000],
)
async def test_dead_letter_ids_redis_cannot_hold_are_invalid_argument(
    clients: tuple[Client, Client], dead_letter_id: str
) -> None:
    a, b = clients
    for call in (a.stub.RequeueDeadLetter, a.stub.DropDeadLetter):
        req_type = (
            orchestrator_pb2.RequeueDeadLetterRequest
            if call is a.stub.RequeueDeadLetter
            else orchestrator_pb2.DropDeadLetterRequest
        )
        await refused(call(req_type(dead_letter_id=dead_letter_id)), "dead_letter_id")
    # The largest stream id Redis holds is a well-formed id: not found, not INTERNAL.
    err = await rpc_error(
        a.stub.DropDeadLetter(
            orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=f"0-{2**64 - 1}-{2**64 - 1}")
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await well_behaved(b)


async def test_huge_graph_ids_are_invalid_argument_and_never_echoed(
    clients: tuple[Client, Client],
) -> None:
    a, b = clients
    huge = "1-" + "A" * 3_000_000
    for call in (
        a.stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=huge)),
        a.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=huge)),
        a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=huge)),
        a.stub.ListGraphEvents(orchestrator_pb2.ListGraphEventsRequest(graph_id=huge)),
    ):
        err = await refused(call, "graph_id")
        assert "AAAAAAAAAA" not in (err.details() or "")
    await well_behaved(b)


def nan_cases() -> dict[str, tuple[orchestrator_pb2.SubmitGraphRequest, str]]:
    nan, inf = float("nan"), float("inf")
    cases: dict[str, tuple[orchestrator_pb2.SubmitGraphRequest, str]] = {}
    r = request([echo("a", v="{{ inputs.x }}")], inputs={"x": 1})
    r.inputs["x"] = nan
    cases["NaN in inputs"] = (r, "inputs.x")
    r = request([echo("a")], inputs={"deep": {"l": [1, 2, 3]}})
    r.inputs["deep"]["l"][2] = inf  # type: ignore[index]
    cases["Infinity deep in inputs"] = (r, "inputs.deep.l[2]")
    r = request([echo("a", v=1)])
    r.graph.nodes[0].inputs["v"] = -inf
    cases["-Infinity in node inputs"] = (r, "graph.nodes[0].inputs.v")
    r = request([echo("a")], metadata={"score": 1})
    r.graph.metadata["score"] = nan
    cases["NaN in graph.metadata"] = (r, "graph.metadata.score")
    r = request([{"id": "a", "llm": {"prompt": "hi", "outputSchema": {"type": "object"}}}])
    r.graph.nodes[0].llm.output_schema["maximum"] = nan
    cases["NaN in an output schema"] = (r, "graph.nodes[0].llm.output_schema.maximum")
    r = request([echo("a")])
    r.graph.limits.max_cost_usd = inf
    cases["Infinity max_cost_usd"] = (r, "graph.limits.max_cost_usd")
    r = request([{"id": "a", "llm": {"prompt": "hi"}}])
    r.graph.nodes[0].llm.temperature = nan
    cases["NaN temperature"] = (r, "graph.nodes[0].llm.temperature")
    r = request([echo("a")])
    r.graph.nodes[0].retry.jitter = nan
    cases["NaN jitter"] = (r, "graph.nodes[0].retry.jitter")
    return cases


NAN_CASES = nan_cases()


@pytest.mark.parametrize("case", list(NAN_CASES))
async def test_nan_and_infinity_are_refused_naming_the_field(
    clients: tuple[Client, Client], case: str
) -> None:
    a, b = clients
    req, field = NAN_CASES[case]
    await refused(a.stub.SubmitGraph(req), field)
    await well_behaved(b)


async def test_nan_computed_at_run_time_fails_the_node_and_reads_stay_json(
    clients: tuple[Client, Client],
) -> None:
    a, b = clients
    for template in ("{{ 1.0/0.0 }}", "{{ -1.0/0.0 }}", "{{ double('NaN') }}"):
        gid, st = await a.run(request([echo("a", v=template)]))
        assert st.state == FAILED, st
        err = node_status(st, "a").error
        assert err.error_class == graph_pb2.ERROR_CLASS_INVALID, err
        assert "NaN and Infinity" in err.message, err.message
        # What REST shows: every read is valid JSON.
        json_format.MessageToJson(await a.result(gid))
        json_format.MessageToJson(st)
        for ev in await a.history(gid):
            json_format.MessageToJson(ev)
    # A graph output mapping that computes one is null.
    gid, st = await a.run(request([echo("a", v=1)], output={"x": "1.0/0.0", "y": "1"}))
    assert st.state == COMPLETED, st
    res = await a.result(gid)
    assert json_format.MessageToDict(res.output) == {"x": None, "y": 1}
    json_format.MessageToJson(res)
    await well_behaved(b)


async def test_an_http_body_with_nan_is_kept_as_text(make_stack: MakeStack) -> None:
    body = b'{"x": NaN, "y": 1e999}'  # Python's json reads these as NaN and Infinity

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
        writer.write(head.encode() + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        s = await make_stack(http_allow="127.0.0.0/8")
        gid, st = await s.client.run(
            request([{"id": "h", "http": {"url": f"http://127.0.0.1:{port}/"}}])
        )
        assert st.state == COMPLETED, st
        res = await s.client.result(gid)
        assert json_format.MessageToDict(res.node_outputs["h"])["body"] == body.decode()
        json_format.MessageToJson(res)
    finally:
        server.close()
        await server.wait_closed()


# --- 7. redaction as an oracle -------------------------------------------------------------

KEY_SHAPED = "sk-ant-api03-REALoperatorKEY0123456789abcdef"  # the operator's Anthropic key
WRONG_KEY = "sk-ant-api03-WRONGguess00000000000000000000"  # a tenant's wrong guess, same shape
PLAIN = "plainOperatorSecret-0123456789"  # an operator secret of no known shape (OpenAI key)
WRONG_PLAIN = "plainOperatorGuess-9876543210"


@pytest.fixture
async def secret_stack(
    make_stack: MakeStack,
) -> AsyncIterator[tuple[InProcessStack, FakeAnthropic]]:
    async with FakeAnthropic() as fake:
        s = await make_stack(
            anthropic_api_key=KEY_SHAPED,
            anthropic_base_url=fake.url,
            llm_provider="anthropic",
            openai_api_key=PLAIN,
        )
        yield s, fake
        await s.stop()


async def test_a_tenant_guessing_secrets_learns_nothing(
    secret_stack: tuple[InProcessStack, FakeAnthropic],
) -> None:
    s, _ = secret_stack
    c = s.client
    # Echoed guesses come back as sent: right and wrong alike.
    guesses = [KEY_SHAPED, WRONG_KEY, PLAIN, WRONG_PLAIN]
    gid, st = await c.run(
        request(
            [echo("a", g="{{ inputs.g }}", joined="{{ inputs.p + inputs.s }}")],
            inputs={"g": guesses, "p": KEY_SHAPED[:10], "s": KEY_SHAPED[10:]},
        )
    )
    assert st.state == COMPLETED, st
    out = json_format.MessageToDict((await c.result(gid)).node_outputs["a"])
    assert out == {"g": guesses, "joined": KEY_SHAPED}
    # An error that quotes the guesses is cut by shape: the same for the right guesses as for
    # the wrong ones.
    messages = []
    for key, plain in ((KEY_SHAPED, PLAIN), (WRONG_KEY, WRONG_PLAIN)):
        _, st = await c.run(request([tool("t", "fail", inputs={"message": f"{key} | {plain}"})]))
        messages.append(node_status(st, "t").error.message)
    right, wrong = messages
    assert right == f"[redacted] | {PLAIN}", right
    assert right.replace(PLAIN, WRONG_PLAIN) == wrong


async def test_a_real_leak_is_still_cut_out(
    secret_stack: tuple[InProcessStack, FakeAnthropic],
) -> None:
    s, fake = secret_stack
    fake.script = [
        Error(401, "authentication_error", f"invalid x-api-key {KEY_SHAPED}"),
        Error(400, "invalid_request_error", f'proxy says: {{"api_key": "{PLAIN}"}}'),
        Error(400, "invalid_request_error", f"backend redis://:{PLAIN}@cache:6379 refused"),
    ]
    for _ in fake.script[:]:
        gid, st = await s.client.run(request([{"id": "a", "llm": {"prompt": "hi"}}]))
        message = node_status(st, "a").error.message
        assert "[redacted]" in message, message
        assert KEY_SHAPED not in message and PLAIN not in message, message
        everything = json_format.MessageToJson(st) + "".join(
            json_format.MessageToJson(e) for e in await s.client.history(gid)
        )
        assert KEY_SHAPED not in everything and PLAIN not in everything


def test_logs_cut_the_exact_secrets_and_tenant_text_is_cut_by_shape_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(anthropic_api_key=KEY_SHAPED, openai_api_key=PLAIN)
    monkeypatch.setattr(
        logs, "redact", Redactor.from_settings(settings, key_shaped=True, mask="***")
    )
    record = logging.LogRecord("t", logging.INFO, "", 0, f"a {PLAIN} b {KEY_SHAPED}", None, None)
    line = logs.JsonFormatter().format(record)
    assert PLAIN not in line and KEY_SHAPED not in line and "***" in line
    # What tenants see never depends on the secrets: the same cut for any string of a shape.
    assert TENANT(f"x {PLAIN}") == f"x {PLAIN}"
    assert TENANT(f"x {KEY_SHAPED}") == TENANT(f"x {WRONG_KEY}") == "x [redacted]"
    assert TENANT("Authorization: Basic dXNlcjpwYXNz") == "Authorization: [redacted]"


# --- 8. unbounded names ----------------------------------------------------------------------


def text_field_cases() -> dict[
    str, tuple[Callable[[int], orchestrator_pb2.SubmitGraphRequest], int, str]
]:
    """field -> (a request with that field ``n`` characters long, the limit, the path)."""

    def router(n: int) -> orchestrator_pb2.SubmitGraphRequest:
        r = {"name": "go", "condition": "true", "description": "d" * n}
        return request(
            [{"id": "r", "router": {"routes": [r]}}, echo("b")], [edge("r", "b", label="go")]
        )

    return {
        "graph.name": (lambda n: request([echo("a")], name="n" * n), limits.MAX_NAME, "graph.name"),
        "graph.description": (
            lambda n: request([echo("a")], description="d" * n),
            limits.MAX_DESCRIPTION,
            "graph.description",
        ),
        "node name": (
            lambda n: request([{**echo("a"), "name": "n" * n}]),
            limits.MAX_NAME,
            "graph.nodes[0].name",
        ),
        "node description": (
            lambda n: request([{**echo("a"), "description": "d" * n}]),
            limits.MAX_DESCRIPTION,
            "graph.nodes[0].description",
        ),
        "edge label": (
            lambda n: request([echo("a"), echo("b")], [edge("a", "b", label="l" * n)]),
            limits.MAX_NAME,
            "graph.edges[0].label",
        ),
        "route description": (
            router,
            limits.MAX_DESCRIPTION,
            "graph.nodes[0].router.routes[0].description",
        ),
        "node output name": (
            lambda n: request([{**echo("a"), "output": {"k" * n: "result"}}]),
            limits.MAX_KEY,
            "graph.nodes[0].output[",
        ),
        "graph output name": (
            lambda n: request([echo("a")], output={"k" * n: "1"}),
            limits.MAX_KEY,
            "graph.output[",
        ),
        "model": (
            lambda n: request([{"id": "a", "llm": {"prompt": "hi", "model": "m" * n}}]),
            limits.MAX_MODEL,
            "graph.nodes[0].llm.model",
        ),
        "metadata": (
            lambda n: request([echo("a")], metadata={"m": "x" * (n - 8)}),  # {"m":"…"}
            limits.MAX_METADATA_BYTES,
            "graph.metadata",
        ),
        "request_id": (
            lambda n: request([echo("a")], request_id="r" * n),
            128,
            "request_id",
        ),
    }


TEXT_CASES = text_field_cases()


@pytest.mark.parametrize("case", list(TEXT_CASES))
async def test_free_text_is_bounded_naming_the_field(
    clients: tuple[Client, Client], case: str
) -> None:
    a, b = clients
    make, limit, field = TEXT_CASES[case]
    ok = make(limit)
    ok.validate_only = True
    await a.stub.SubmitGraph(ok, timeout=10)  # at the limit: fine
    await refused(a.stub.SubmitGraph(make(limit + 1)), field)
    await well_behaved(b)


async def test_a_3mb_name_is_refused_never_logged_and_listing_works(
    clients: tuple[Client, Client], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = clients
    caplog.set_level(logging.DEBUG)
    err = await refused(
        a.stub.SubmitGraph(request([echo("a")], name="N" * 3_000_000)), "graph.name"
    )
    assert "NNNNNNNNNN" not in (err.details() or "")
    # The longest name accepted is listed, and logged cut.
    name = "L" * limits.MAX_NAME
    gid, _ = await a.run(request([echo("a")], name=name))
    page = await a.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(page_size=1000), timeout=10)
    assert {g.graph_id: g.name for g in page.graphs}[gid] == name
    for r in caplog.records:
        for value in (r.getMessage(), *map(str, vars(r).values())):
            assert "N" * 200 not in value and "L" * 200 not in value, r
    # A cancel reason is bounded too.
    slow = await a.submit(request([tool("s", "sleep", inputs={"seconds": 30})]))
    await refused(
        a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=slow, reason="r" * 1025)),
        "reason",
    )
    await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=slow, reason="r" * 1024))
    await well_behaved(b)


async def test_thousands_of_violations_make_a_short_answer(clients: tuple[Client, Client]) -> None:
    a, b = clients
    # Under DAGO_MAX_GRAPH_BYTES (refused whole, at once), yet thousands of problems.
    bad = [{"id": f"{i}" + "-" * 500, "tool": {"name": "x" * 300}} for i in range(1000)]
    err = await refused(a.stub.SubmitGraph(request(bad)), "graph.nodes[")
    (br,) = [d for d in error_details(err) if isinstance(d, error_details_pb2.BadRequest)]
    assert 0 < len(br.field_violations) < 100 and br.ByteSize() <= 4096
    assert "more)" in (err.details() or "")
    await well_behaved(b)


def test_logs_cut_long_messages_fields_and_traceback_lines() -> None:
    huge = "Z" * 3_000_000
    try:
        raise ValueError(huge)
    except ValueError:
        import sys

        exc = sys.exc_info()
    record = logging.LogRecord("t", logging.ERROR, "", 0, "graph %s", (huge,), exc)
    record.graph_name = huge
    for formatter in (logs.JsonFormatter(), logs.ConsoleFormatter()):
        line = formatter.format(record)
        assert len(line) < 20_000, (type(formatter).__name__, len(line))


# --- 9. full matches --------------------------------------------------------------------------

LOOKALIKES = {
    "newline": "a\n",
    "carriage return": "a\r",
    "cyrillic a": "\u0430",
    "fullwidth a": "\uff41",
    "zero-width space": "a\u200b",
    "nul": "a\x00",
}


@pytest.mark.parametrize("text", list(LOOKALIKES.values()), ids=list(LOOKALIKES))
async def test_ids_and_names_are_full_matches(clients: tuple[Client, Client], text: str) -> None:
    a, b = clients
    # A node "a\n" beside "a" (it ran as a second node), and references to it.
    await refused(a.stub.SubmitGraph(request([echo("a"), echo(text)])), "graph.nodes[1].id")
    await refused(
        a.stub.SubmitGraph(request([echo("a"), echo("b")], [edge("a", text)])), "graph.edges[0].to"
    )
    await refused(
        a.stub.SubmitGraph(request([echo("a")], entry_nodes=[text])), "graph.entry_nodes[0]"
    )
    route = f"go{text}"
    await refused(
        a.stub.SubmitGraph(
            request(
                [
                    {"id": "r", "router": {"routes": [{"name": route, "condition": "true"}]}},
                    echo("b"),
                ],
                [edge("r", "b", label=route)],
            )
        ),
        "graph.nodes[0].router.routes[0].name",
    )
    await refused(
        a.stub.SubmitGraph(
            request(
                [
                    {
                        "id": "r",
                        "router": {
                            "routes": [{"name": "go", "condition": "false"}],
                            "defaultRoute": route,
                        },
                    },
                    echo("b"),
                ],
                [edge("r", "b", label="go")],
            )
        ),
        "graph.nodes[0].router.default_route",
    )
    http = {"id": "h", "http": {"url": "https://example.com/", "headers": {f"x-a{text}": "1"}}}
    await refused(a.stub.SubmitGraph(request([http])), "graph.nodes[0].http.headers[")
    await refused(
        a.stub.SubmitGraph(request([tool("t", f"echo{text}")])), "graph.nodes[0].tool.name"
    )
    # Ids of things that exist, with the character added, name nothing.
    gid = await a.submit(request([echo("a")]))
    for graph_id in (gid + text, gid.replace("-", text + "-", 1)):
        err = await rpc_error(
            a.stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=graph_id))
        )
        assert err.code() == grpc.StatusCode.NOT_FOUND, (graph_id, err)
    err = await rpc_error(
        a.stub.DropDeadLetter(orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=f"0-1-1{text}"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await well_behaved(b)


async def test_other_scripts_digits_are_no_ids(clients: tuple[Client, Client]) -> None:
    a, b = clients
    gid = await a.submit(request([echo("a")]))
    shard, rest = gid.split("-", 1)
    arabic = "".join(chr(0x660 + int(d)) for d in shard)  # Arabic-Indic digits: \d took them
    err = await rpc_error(
        a.stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=f"{arabic}-{rest}"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = await rpc_error(
        a.stub.DropDeadLetter(orchestrator_pb2.DropDeadLetterRequest(dead_letter_id="\u0660-1-1"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await well_behaved(b)


async def test_mcp_tool_names_are_full_matches(make_stack: MakeStack) -> None:
    s = await make_stack(workers=0, mcp_servers=json.dumps({"kb": {"command": ["unused"]}}))
    ok = request([tool("t", "kb/search")])
    ok.validate_only = True
    await s.client.stub.SubmitGraph(ok, timeout=10)
    for name in ("kb/search\n", "kb/se arch", "kb\n/search", "kb/" + "s" * 200):
        await refused(
            s.client.stub.SubmitGraph(request([tool("t", name)])), "graph.nodes[0].tool.name"
        )
    agent = {"id": "g", "agent": {"llm": {"prompt": "hi"}, "tools": ["kb/*\n"]}}
    await refused(s.client.stub.SubmitGraph(request([agent])), "graph.nodes[0].agent.tools[0]")


def test_namespaces_and_key_hashes_are_full_matches() -> None:
    for bad in ("team\n", "team\r", "t\u0435am", "\uff54eam", "-team", "a" * 64):
        assert NAMESPACE.fullmatch(bad) is None, bad
    digest = hash_key(KEY_A)
    with pytest.raises(ConfigError):
        parse_keys(f"{digest}:t\u0435am", ":", "DAGO_API_KEYS")  # a Cyrillic e
    with pytest.raises(ConfigError):
        parse_keys(f"{digest[:-1]}\n:team", ":", "DAGO_API_KEYS")
    with pytest.raises(ConfigError, match="DAGO_OPERATOR_NAMESPACES"):
        load({"DAGO_OPERATOR_NAMESPACES": "ops,bad|ns"})
    assert load({"DAGO_OPERATOR_NAMESPACES": "ops, team-b"}).operator_namespaces == "ops, team-b"


# --- what a tenant sees of the others ----------------------------------------------------------


async def test_list_workers_shows_tenants_no_hosts_pids_or_ports(stack: InProcessStack) -> None:
    tenant = Client(f"127.0.0.1:{stack.port}", KEY_A)
    ops = Client(f"127.0.0.1:{stack.port}", KEY_OPS)
    try:

        async def listed() -> bool:
            r = await ops.stub.ListWorkers(orchestrator_pb2.ListWorkersRequest(), timeout=5)
            return len(r.workers) == 1

        await eventually(listed, 10)
        (mine,) = (await tenant.stub.ListWorkers(orchestrator_pb2.ListWorkersRequest())).workers
        assert mine.worker_id == "worker-1" and not mine.host and not mine.pid
        assert not mine.metrics_port and not mine.in_flight
        assert mine.slots == stack.settings.worker_slots and "tool" in mine.node_kinds
        assert mine.last_heartbeat_time.seconds > 0
        (full,) = (await ops.stub.ListWorkers(orchestrator_pb2.ListWorkersRequest())).workers
        assert full.worker_id == "w0" and full.host == socket.gethostname()
        assert full.pid == os.getpid()
    finally:
        await tenant.close()
        await ops.close()


async def test_ssrf_refusals_do_not_tell_the_resolved_address(
    clients: tuple[Client, Client],
) -> None:
    a, b = clients
    for url in ("http://localhost:9/x", "http://localhost:9/{{ 1 + 1 }}"):
        _, st = await a.run(request([{"id": "h", "http": {"url": url}}]))
        message = node_status(st, "h").error.message
        assert message.startswith("refused") and "DAGO_HTTP_ALLOW" in message, message
        assert "127.0.0.1" not in message and "::1" not in message, message
    await well_behaved(b)


# --- the same through Envoy: 400, never 502 ---------------------------------------------------


async def test_rest_bad_input_is_400_naming_the_field_and_reads_stay_200(
    edge_stack: Edge,
) -> None:
    e = edge_stack
    http = e.http

    def field_of(r: Any) -> list[str]:
        assert r.status_code == 400, (r.status_code, r.text[:500])
        body = r.json()
        assert body["code"] == 3, body
        return [
            v["field"]
            for d in body["details"]
            if d["@type"].endswith("google.rpc.BadRequest")
            for v in d.get("field_violations", d.get("fieldViolations", []))
        ]

    node = {"id": "a", "tool": {"name": "echo"}, "inputs": {"v": 1}}
    cases = [
        (
            {"graph": {"nodes": [node], "limits": {"maxCostUsd": "Infinity"}}},
            "graph.limits.max_cost_usd",
        ),
        (
            {"graph": {"nodes": [{"id": "a", "llm": {"prompt": "hi", "temperature": "NaN"}}]}},
            "graph.nodes[0].llm.temperature",
        ),
        ({"graph": {"nodes": [node], "name": "n" * 300_000}}, "graph.name"),
        ({"graph": {"nodes": [node, {**node, "id": "a\n"}]}}, "graph.nodes[1].id"),
        ({"graph": {"nodes": [node]}, "requestId": "r" * 129}, "request_id"),
    ]
    for body, field in cases:
        assert field in field_of(await http.post("/api/v1/graphs", json=body)), field
    r = await http.post("/api/v1/dead-letters/0-99999999999999999999-1:requeue", json={})
    assert "dead_letter_id" in field_of(r)
    r = await http.get("/api/v1/graphs", params={"page_token": token("g:\u00b2:0-X")})
    assert "page_token" in field_of(r)
    r = await http.get(f"/api/v1/graphs/1-{'A' * 5000}/status")
    assert "graph_id" in field_of(r)

    async def run(body: Any) -> str:
        r = await http.post("/api/v1/graphs", json=body)
        assert r.status_code == 200, r.text
        gid = str(r.json()["graph_id"])

        async def done() -> bool:
            st = (await http.get(f"/api/v1/graphs/{gid}/status")).json()["status"]
            return st["state"] in ("GRAPH_STATE_COMPLETED", "GRAPH_STATE_FAILED")

        await eventually(done, 20)
        return gid

    # Infinity computed at run time fails the node; the status, result and events are JSON.
    inf = {"id": "a", "tool": {"name": "echo"}, "inputs": {"v": "{{ 1.0/0.0 }}"}}
    gid = await run({"graph": {"nodes": [inf]}})
    for path in ("status", "result", "events/history"):
        r = await http.get(f"/api/v1/graphs/{gid}/{path}")
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    assert "NaN and Infinity" in (await http.get(f"/api/v1/graphs/{gid}/status")).text
    gid = await run({"graph": {"nodes": [node], "output": {"x": "1.0/0.0"}}})
    r = await http.get(f"/api/v1/graphs/{gid}/result")
    assert r.status_code == 200 and r.json()["output"] == {"x": None}, r.text
    # NaN metadata (possible over gRPC only) is refused, so listings and reads stay JSON.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{e.stack.port}")
    try:
        from dago.v1 import orchestrator_pb2_grpc

        req = request([echo("a")], metadata={"m": 1})
        req.graph.metadata["m"] = float("nan")
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        await refused(stub.SubmitGraph(req), "graph.metadata.m")
    finally:
        await channel.close()
    r = await http.get("/api/v1/graphs", params={"page_size": 1000})
    assert r.status_code == 200, r.text[:300]
    # The well-behaved client, and nothing internal in the API's log.
    gid = await run({"graph": {"nodes": [node]}})
    r = await http.get(f"/api/v1/graphs/{gid}/result")
    assert r.status_code == 200 and r.json()["state"] == "GRAPH_STATE_COMPLETED", r.text
    log = e.stack.log("api")
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


async def test_metrics_show_no_namespace_graph_or_tenant_model(make_stack: MakeStack) -> None:
    api_port, worker_port = free_port(), free_port()
    async with FakeAnthropic() as fake:
        s = await make_stack(
            auth="keys",
            api_keys=KEYS,
            metrics_port=api_port,
            worker_metrics_port=worker_port,
            anthropic_api_key=KEY_SHAPED,
            anthropic_base_url=fake.url,
            llm_provider="anthropic",
            # A tenant's own model gets past submit only where the operator allows it.
            allow_unknown_models=True,
            unknown_model_price='{"input": 1, "output": 1}',
        )
        a = Client(f"127.0.0.1:{s.port}", KEY_A)
        try:
            fake.script = [Error(404, "not_found_error", "model: acme-ft-model")]
            llm = {"id": "m", "llm": {"prompt": "hi", "model": "acme-ft-model"}}
            gid, st = await a.run(request([llm], name="acme-secret-project", request_id="acme-7"))
            assert st.state == FAILED, st
            async with httpx.AsyncClient() as http:
                api = (await http.get(f"http://127.0.0.1:{api_port}/metrics")).text
                worker = (await http.get(f"http://127.0.0.1:{worker_port}/metrics")).text
        finally:
            await a.close()
            await s.stop()
    assert "dago_rpc_requests_total" in api
    # The tenant's model is not one the price table knows: it is counted as "other".
    assert 'dago_llm_requests_total{model="other",outcome="error",provider="anthropic"}' in worker
    for private in ("acme", gid, "team-a"):
        assert private not in api + worker, private
