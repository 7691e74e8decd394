"""LLM nodes through the real stack: the real ``anthropic`` SDK against a fake Messages API.

Covered: streamed deltas reach a watcher in order and add up to the output; structured
output with one repair, addressable by later conditions; usage and cost per node and
graph (status, result, events); error classes (429 honouring retry-after, 529/500 retried,
401 failing fast with what to fix); cancel aborting the HTTP stream within 1 s; the
offline provider (deterministic, labelled, schema-valid); the API key never showing up in
events, results or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dago.config import Settings
from dago.engine.output_schema import validation_error
from dago.llm.base import ChatMessage, LlmRequest
from dago.llm.offline import OfflineProvider, offline_answer
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from fake_anthropic import Error, FakeAnthropic, Text, ToolUse, Usage
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    eventually,
    everything,
    fast_retry,
    node_states,
    node_status,
    of_kind,
    plain,
    request,
)

KEY = "sk-ant-test-0123456789-SECRET"
OLD = "claude-sonnet-4-0"
"""An earlier-generation model without native structured outputs (forced tool use)."""
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
CANCELLED = execution_pb2.GRAPH_STATE_CANCELLED
SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["high", "low"]},
        "score": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["priority", "score", "tags"],
    "additionalProperties": False,
}


def llm(node_id: str, prompt: str = "", **fields: Any) -> dict[str, Any]:
    """An llm node; ``retry``/``inputs``/``attemptTimeout`` go on the node, the rest on llm."""
    node_fields = {k: fields.pop(k) for k in ("retry", "inputs", "attemptTimeout") if k in fields}
    spec = {"prompt": prompt, **fields} if prompt else fields
    return {"id": node_id, "llm": spec, **node_fields}


@pytest.fixture
async def stack(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture, make_stack: MakeStack
) -> AsyncIterator[InProcessStack]:
    caplog.set_level(logging.DEBUG)
    s = await make_stack(
        anthropic_api_key=KEY, anthropic_base_url=fake.url, llm_provider="anthropic"
    )
    yield s
    await s.stop()
    # The key went to the fake (that is how it authenticates) and nowhere else.
    # (this SDK release sends it as a bearer token; older ones as x-api-key)
    for r in fake.requests:
        assert KEY in (r.headers.get("x-api-key", ""), r.headers.get("authorization", "")[7:])
    assert KEY not in caplog.text


@pytest.fixture
async def offline_stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack()


# --- streaming -----------------------------------------------------------------------------


async def test_deltas_reach_a_watcher_in_order_and_add_up_to_the_output(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    answer = " ".join(f"word{i}" for i in range(300))
    fake.script = [Text(answer, chunks=60, delay=0.005, model="claude-sonnet-4-6-20260101")]
    node = llm(
        "ask",
        "Summarise {{ inputs.topic }} in {{ inputs.n }} words.",
        system="You are {{ inputs.role }}.",
        model="claude-sonnet-4-6",  # a model that still takes a temperature
        temperature=0.2,
        maxTokens=300,
        stopSequences=["END"],
        metadata={"user_id": "u-1"},
    )
    req = request([node], inputs={"topic": "Redis streams", "n": 50, "role": "terse"})
    gid = await stack.client.submit(req)
    events = await stack.client.watch(gid)
    assert events[-1].WhichOneof("payload") == "graph_completed"
    deltas = of_kind(events, "llm_delta", "ask")
    assert "".join(d.llm_delta.text for d in deltas) == answer
    assert [d.seq for d in deltas] == sorted(d.seq for d in deltas)
    # Coalesced: far fewer events than the 60 deltas the model sent, but still a stream.
    assert 1 < len(deltas) < 60
    st = await stack.client.status(gid)
    out = plain(node_status(st, "ask").output)
    assert out == {"text": answer, "model": "claude-sonnet-4-6-20260101", "provider": "anthropic"}
    (sent,) = fake.requests
    body = sent.body
    assert body["stream"] is True and body["model"] == "claude-sonnet-4-6"
    assert body["system"] == "You are terse."
    assert body["messages"] == [{"role": "user", "content": "Summarise Redis streams in 50 words."}]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 300
    assert body["stop_sequences"] == ["END"] and body["metadata"] == {"user_id": "u-1"}
    assert KEY not in await everything(stack, gid)


# --- structured output ---------------------------------------------------------------------


async def test_structured_output_is_repaired_once_and_drives_conditions(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    # A model without native structured outputs: forced tool use, and one repair.
    fake.script = [
        ToolUse({"priority": "urgent", "score": 2, "tags": []}),
        ToolUse({"priority": "high", "score": 3, "tags": ["billing"]}),
    ]
    nodes = [
        llm("extract", "Triage: {{ inputs.ticket }}", outputSchema=SCHEMA, model=OLD),
        echo("page", who="{{ nodes.extract.output.tags[0] }}"),
        echo("later"),
    ]
    edges = [
        edge("extract", "page", 'nodes.extract.output.priority == "high"'),
        edge("extract", "later", 'nodes.extract.output.priority == "low"'),
    ]
    _, st = await stack.client.run(request(nodes, edges, inputs={"ticket": "card declined"}))
    assert st.state == COMPLETED, st
    out = plain(node_status(st, "extract").output)
    assert out == {"priority": "high", "score": 3, "tags": ["billing"]}
    assert node_states(st) == {"extract": "COMPLETED", "page": "COMPLETED", "later": "SKIPPED"}
    assert plain(node_status(st, "page").output) == {"who": "billing"}
    first, second = fake.requests
    assert first.body["tool_choice"] == {"type": "tool", "name": "structured_output"}
    assert first.body["tools"][0]["input_schema"] == SCHEMA
    repair = second.body["messages"][-1]["content"][0]
    assert repair["type"] == "tool_result" and repair["is_error"] is True
    assert "urgent" in repair["content"] and "priority" in repair["content"]
    # Both calls are paid for.
    assert node_status(st, "extract").usage.input_tokens == 20


async def test_structured_output_still_invalid_after_the_repair_fails_the_node(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [ToolUse({"priority": "x"}), ToolUse({"priority": "y"})]
    _, st = await stack.client.run(
        request([llm("extract", "t", outputSchema=SCHEMA, model=OLD, retry=fast_retry())])
    )
    assert st.state == FAILED
    err = node_status(st, "extract").error
    assert err.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert "after one repair" in err.message
    assert len(fake.requests) == 2
    # The failed attempt's two calls are still counted (status and usage event).
    assert node_status(st, "extract").usage.input_tokens == 20
    assert st.usage.output_tokens == 10


# --- usage and cost ------------------------------------------------------------------------


async def test_usage_and_cost_add_up_per_node_and_graph(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    u = Usage(input=100, output=50, cache_write=20, cache_read=10)
    fake.default = Text("fine", usage=u)
    nodes = [
        llm("a", "one", model="claude-sonnet-4-6"),
        llm("b", "two", model="claude-haiku-4-5"),
        llm(
            "c",
            "three {{ nodes.a.output.text }} {{ nodes.b.output.text }}",
            model="claude-sonnet-5",
        ),
    ]
    gid, st = await stack.client.run(request(nodes, [edge("a", "c"), edge("b", "c")]))
    assert st.state == COMPLETED, st
    sonnet = (100 * 3 + 50 * 15 + 20 * 3.75 + 10 * 0.3) / 1e6
    haiku = (100 * 1 + 50 * 5 + 20 * 1.25 + 10 * 0.1) / 1e6
    sonnet5 = (100 * 2 + 50 * 10 + 20 * 2.5 + 10 * 0.2) / 1e6
    costs = {"a": sonnet, "b": haiku, "c": sonnet5}
    for n, cost in costs.items():
        nu = node_status(st, n).usage
        assert (nu.input_tokens, nu.output_tokens) == (100, 50)
        assert (nu.cache_creation_input_tokens, nu.cache_read_input_tokens) == (20, 10)
        assert nu.cost_usd == pytest.approx(cost)
    assert (st.usage.input_tokens, st.usage.output_tokens) == (300, 150)
    assert (st.usage.cache_creation_input_tokens, st.usage.cache_read_input_tokens) == (60, 30)
    assert st.usage.cost_usd == pytest.approx(sonnet + haiku + sonnet5)
    events = await stack.client.history(gid)
    usage_events = {e.node_id: e.usage for e in of_kind(events, "usage")}
    assert set(usage_events) == {"a", "b", "c"}
    assert (
        usage_events["a"].provider == "anthropic" and usage_events["a"].model == "claude-sonnet-4-6"
    )
    assert usage_events["b"].usage.cost_usd == pytest.approx(haiku)
    done = of_kind(events, "graph_completed")[0].graph_completed
    assert done.usage.cost_usd == pytest.approx(sonnet + haiku + sonnet5)
    result = await stack.client.result(gid)
    assert result.usage.input_tokens == 300


async def test_graph_cost_limit_stops_the_graph(stack: InProcessStack, fake: FakeAnthropic) -> None:
    fake.default = Text("expensive", usage=Usage(input=1_000_000, output=0))
    nodes = [llm("a", "one", model="claude-sonnet-4-6"), llm("b", "two {{ nodes.a.output.text }}")]
    _, st = await stack.client.run(request(nodes, [edge("a", "b")], limits={"maxCostUsd": 1.0}))
    assert st.state == FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "max_cost_usd" in st.error.message


# --- errors --------------------------------------------------------------------------------


async def test_429_is_retried_after_the_delay_the_server_asks_for(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        Error(429, "rate_limit_error", "slow down", {"retry-after": "1"}),
        Text("after the wait"),
    ]
    gid, st = await stack.client.run(request([llm("a", "hi", retry=fast_retry())]))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "a").output)["text"] == "after the wait"
    first, second = fake.requests
    assert second.at - first.at >= 0.95  # retry-after 1s, although the policy says 20ms
    events = await stack.client.history(gid)
    (retrying,) = of_kind(events, "node_retrying", "a")
    assert retrying.node_retrying.error.error_class == graph_pb2.ERROR_CLASS_RATE_LIMITED
    assert retrying.node_retrying.backoff_ms >= 1000
    assert "429" in retrying.node_retrying.error.message


async def test_overloaded_and_server_errors_are_retried(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        Error(529, "overloaded_error", "Overloaded"),
        Error(500, "api_error", "boom"),
        Text("third time lucky"),
    ]
    gid, st = await stack.client.run(request([llm("a", "hi", retry=fast_retry(3))]))
    assert st.state == COMPLETED, st
    events = await stack.client.history(gid)
    classes = [e.node_retrying.error.error_class for e in of_kind(events, "node_retrying")]
    assert classes == [graph_pb2.ERROR_CLASS_TRANSIENT] * 2
    assert len(fake.requests) == 3


@pytest.mark.parametrize(
    ("status", "kind", "fix"),
    [
        (401, "authentication_error", "check ANTHROPIC_API_KEY"),
        (400, "invalid_request_error", "check the node's model"),
        (404, "not_found_error", "check the model name"),
    ],
)
async def test_client_errors_fail_fast_saying_what_to_fix(
    stack: InProcessStack, fake: FakeAnthropic, status: int, kind: str, fix: str
) -> None:
    fake.script = [Error(status, kind, "refused")]
    gid, st = await stack.client.run(request([llm("a", "hi", retry=fast_retry(5))]))
    assert st.state == FAILED
    err = node_status(st, "a").error
    assert err.error_class == graph_pb2.ERROR_CLASS_INVALID and not err.retryable
    assert f"{status} from Anthropic" in err.message and fix in err.message
    assert len(fake.requests) == 1 and len(node_status(st, "a").attempts) == 1
    assert KEY not in await everything(stack, gid)


async def test_timeout_of_a_stalled_stream_is_retryable(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [Text("stalled " * 20, chunks=20, delay=5.0), Text("quick")]
    node = llm("a", "hi", retry=fast_retry(2), attemptTimeout="0.5s")
    _, st = await stack.client.run(request([node]))
    assert st.state == COMPLETED, st
    (first, _) = node_status(st, "a").attempts
    assert first.error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT
    await eventually(lambda: _is_set(fake.closed), 2.0)


async def _is_set(ev: asyncio.Event) -> bool:
    return ev.is_set()


# --- cancel --------------------------------------------------------------------------------


async def test_cancel_aborts_the_stream_within_a_second(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [Text("tok " * 400, chunks=400, delay=0.05)]
    gid = await stack.client.submit(request([llm("a", "write a lot")]))

    async def streaming() -> bool:
        events = await stack.client.history(gid)
        return bool(of_kind(events, "llm_delta", "a"))

    await eventually(streaming, 10.0)
    assert not fake.closed.is_set()
    started = time.monotonic()
    await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="stop"), timeout=5
    )
    await asyncio.wait_for(fake.closed.wait(), 1.0)
    assert time.monotonic() - started < 1.0
    st = await stack.client.wait(gid)
    assert st.state == CANCELLED


# --- provider selection --------------------------------------------------------------------


async def test_a_node_naming_offline_uses_it_even_when_a_key_is_set(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    _, st = await stack.client.run(request([llm("a", "hello there", provider="offline")]))
    assert st.state == COMPLETED
    assert plain(node_status(st, "a").output)["provider"] == "offline"
    assert fake.requests == []


async def test_anthropic_without_a_key_fails_instead_of_going_offline(
    offline_stack: InProcessStack,
) -> None:
    _, st = await offline_stack.client.run(request([llm("a", "hi", provider="anthropic")]))
    assert st.state == FAILED
    err = node_status(st, "a").error
    assert "ANTHROPIC_API_KEY" in err.message and not err.retryable


# --- offline -------------------------------------------------------------------------------


async def test_offline_provider_is_deterministic_and_labelled(
    offline_stack: InProcessStack,
) -> None:
    prompt = "Compare {{ inputs.a }} and {{ inputs.b }} for a small team that ships weekly."
    nodes = [llm("x", prompt, system="Be brief."), llm("y", prompt, system="Be brief.")]
    inputs = {"a": "Redis Streams", "b": "Kafka"}
    gid, st = await offline_stack.client.run(request(nodes, inputs=inputs))
    assert st.state == COMPLETED, st
    rendered = "Compare Redis Streams and Kafka for a small team that ships weekly."
    want = offline_answer(
        LlmRequest("offline", [ChatMessage("user", rendered)], max_tokens=10, system="Be brief.")
    )
    assert (
        want
        == "[offline] 14 words: Compare Redis Streams and Kafka for a small team that ships weekly."
    )
    for n in "xy":
        assert plain(node_status(st, n).output) == {
            "text": want,
            "model": "offline",
            "provider": "offline",
        }
    events = await offline_stack.client.history(gid)
    deltas = of_kind(events, "llm_delta", "x")
    assert "".join(d.llm_delta.text for d in deltas) == want
    assert deltas[0].llm_delta.text.startswith("[offline]")
    usage = {e.node_id: e.usage for e in of_kind(events, "usage")}
    assert usage["x"].provider == "offline" and usage["x"].model == "offline"
    assert usage["x"].usage.cost_usd == 0


async def test_offline_structured_output_is_schema_valid(offline_stack: InProcessStack) -> None:
    _, st = await offline_stack.client.run(request([llm("x", "triage this", outputSchema=SCHEMA)]))
    assert st.state == COMPLETED, st
    out = plain(node_status(st, "x").output)
    assert validation_error(SCHEMA, out) is None
    assert out == {"priority": "high", "score": 1, "tags": ["[offline] tags"]}


async def test_offline_answers_stream_at_the_configured_pace_with_the_node_running(
    make_stack: MakeStack,
) -> None:
    """DAGO_OFFLINE_TOKENS_PER_S=20: the 15-word answer comes in 5 deltas 0.15 s apart, each
    seen by a watcher while the node is RUNNING; the text is the unpaced one."""
    paced = await make_stack(offline_tokens_per_s=20)
    prompt = "Compare Redis Streams and Kafka for a small team that ships weekly."
    gid = await paced.client.submit(request([llm("x", prompt)]))
    arrivals: list[float] = []
    states: list[str] = []
    texts: list[str] = []
    watch = orchestrator_pb2.WatchGraphRequest(graph_id=gid)
    async for msg in paced.client.stub.WatchGraph(watch, timeout=30):
        if msg.event.WhichOneof("payload") == "llm_delta":
            arrivals.append(time.monotonic())
            texts.append(msg.event.llm_delta.text)
            states.append(node_states(await paced.client.status(gid))["x"])
    want = offline_answer(LlmRequest("offline", [ChatMessage("user", prompt)], max_tokens=10))
    assert "".join(texts) == want
    assert len(texts) >= 4, texts  # a stream, not one event (the coalescer flushes each 50 ms)
    assert arrivals[-1] - arrivals[0] >= 0.4, arrivals  # 4 pauses of 0.15 s between 5 deltas
    assert set(states) == {"RUNNING"}, states
    st = await paced.client.wait(gid)
    assert plain(node_status(st, "x").output)["text"] == want


async def test_offline_pacing_changes_nothing_but_the_time() -> None:
    """The same deltas and response at any pace; unpaced (the default) is the old stream."""
    request_ = LlmRequest("offline", [ChatMessage("user", "one two three four five six")], 100)
    runs = []
    for pace in (0.0, 100.0):
        deltas: list[str] = []
        started = time.monotonic()
        response = await OfflineProvider(pace).complete(request_, deltas.append)
        runs.append((deltas, response, time.monotonic() - started))
    (plain_deltas, plain_response, _), (paced_deltas, paced_response, paced_took) = runs
    assert paced_deltas == plain_deltas and len(plain_deltas) == 3, plain_deltas
    assert paced_response == plain_response
    assert paced_took >= 9 / 100  # 9 words at 100 words/s
    assert Settings().offline_tokens_per_s == 0


# --- model-driven routers ------------------------------------------------------------------


def triage(mode: str, **router: Any) -> list[dict[str, Any]]:
    """A router choosing billing / outage (default: other), each leading to an echo node."""
    routes = [
        {"name": "billing", "description": "payments, invoices, refunds"},
        {"name": "outage", "description": "the service is down or erroring"},
    ]
    if mode == "ROUTER_MODE_HYBRID":
        routes[1]["condition"] = 'input.text.contains("500")'
    spec = {"mode": mode, "routes": routes, "defaultRoute": "other", **router}
    return [
        {"id": "r", "router": spec, "inputs": {"text": "{{ inputs.ticket }}"}},
        echo("billing_team", t="{{ inputs.ticket }}"),
        echo("oncall", t="{{ inputs.ticket }}"),
        echo("other", t="{{ inputs.ticket }}"),
    ]


ROUTE_EDGES = [
    edge("r", "billing_team", label="billing"),
    edge("r", "oncall", label="outage"),
    edge("r", "other", label="other"),
]


async def test_llm_router_takes_the_route_the_model_chooses(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [Text(json.dumps({"route": "billing", "confidence": 0.92, "reason": "a refund"}))]
    nodes = triage("ROUTER_MODE_LLM", llm={"prompt": "Ticket: {{ input.text }}"})
    gid, st = await stack.client.run(
        request(nodes, ROUTE_EDGES, inputs={"ticket": "please refund me"})
    )
    assert st.state == COMPLETED, st
    assert node_states(st) == {
        "r": "COMPLETED",
        "billing_team": "COMPLETED",
        "oncall": "SKIPPED",
        "other": "SKIPPED",
    }
    assert node_status(st, "r").route == "billing"
    events = await stack.client.history(gid)
    (decision,) = of_kind(events, "router_decision", "r")
    d = decision.router_decision
    assert d.route == "billing" and list(d.targets) == ["billing_team"]
    assert d.confidence == pytest.approx(0.92) and "a refund" in d.reason
    (sent,) = fake.requests
    prompt = sent.body["messages"][-1]["content"]
    assert prompt.startswith("Ticket: please refund me")
    assert "- billing: payments, invoices, refunds" in prompt and "- other:" in prompt
    schema = sent.body["output_config"]["format"]["schema"]
    assert schema["properties"]["route"]["enum"] == ["billing", "outage", "other"]
    assert node_status(st, "r").usage.input_tokens == 10


async def test_hybrid_router_asks_the_model_only_when_no_condition_holds(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    nodes = triage("ROUTER_MODE_HYBRID")
    _, st = await stack.client.run(
        request(nodes, ROUTE_EDGES, inputs={"ticket": "checkout returns 500"})
    )
    assert node_status(st, "r").route == "outage" and fake.requests == []
    fake.script = [Text(json.dumps({"route": "other", "confidence": 0.4, "reason": "unclear"}))]
    _, st = await stack.client.run(request(nodes, ROUTE_EDGES, inputs={"ticket": "hello"}))
    assert st.state == COMPLETED, st
    assert node_status(st, "r").route == "other" and len(fake.requests) == 1
    # No prompt: the model sees the router's rendered inputs.
    assert fake.requests[0].body["messages"][-1]["content"].startswith('{"text": "hello"}')


async def test_offline_llm_router_picks_the_first_route(offline_stack: InProcessStack) -> None:
    gid, st = await offline_stack.client.run(
        request(triage("ROUTER_MODE_LLM"), ROUTE_EDGES, inputs={"ticket": "x"})
    )
    assert st.state == COMPLETED, st
    assert node_status(st, "r").route == "billing"
    (decision,) = of_kind(await offline_stack.client.history(gid), "router_decision", "r")
    assert decision.router_decision.reason.startswith("offline (offline)")
