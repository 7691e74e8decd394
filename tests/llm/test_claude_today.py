"""Claude as it is today (issue 17), through the real stack and the official ``anthropic`` SDK
against the fake Messages API, which refuses what today's API refuses, per model.

Covered: structured output on Sonnet 5.5 through ``output_config.format`` (no forced tool,
which that model refuses), checked and not repaired; an agent loop whose thinking blocks go
back unchanged over three turns (the fake checks their signatures), with strict tools; text
Sonnet 5.5 writes between tool calls reaching a watcher as ``llm_delta`` events; settings a
model refuses (temperature, effort, thinking) and unknown models refused at submit naming the
field, before any call; prices (Haiku 5.5 below and above its prompt-length threshold,
5-minute and 1-hour cache writes) against hand-computed figures; a five-turn agent whose
later turns read the cached prefix, and cost less than without the cache; refusals.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import grpc
import pytest

from dago.config import ConfigError, load
from dago.engine.outcome import Usage as DagoUsage
from dago.llm.prices import PriceTable
from dago.v1 import execution_pb2, graph_pb2
from fake_anthropic import FakeAnthropic, Refusal, Text, ToolUse, Usage
from harness import (
    InProcessStack,
    MakeStack,
    edge,
    error_details,
    node_status,
    of_kind,
    plain,
    request,
    rpc_error,
)

KEY = "sk-ant-test-today"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
SCHEMA = {
    "type": "object",
    "properties": {"priority": {"type": "string", "enum": ["high", "low"]}},
    "required": ["priority"],
    "additionalProperties": False,
}
LONG_SYSTEM = "You are the support desk's order assistant. " + " ".join(
    f"Rule {i}: answer plainly, cite the order id and never guess a status." for i in range(60)
)
"""A static system prompt long enough to cache (over Sonnet 5.5's 512-token minimum)."""


def llm(node_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "llm": {"prompt": prompt, **fields}}


def agent(node_id: str, prompt: str, tools: list[str], **llm_fields: Any) -> dict[str, Any]:
    return {"id": node_id, "agent": {"llm": {"prompt": prompt, **llm_fields}, "tools": tools}}


@pytest.fixture
async def stack(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture, make_stack: MakeStack
) -> AsyncIterator[InProcessStack]:
    caplog.set_level(logging.INFO)
    s = await make_stack(
        anthropic_api_key=KEY, anthropic_base_url=fake.url, llm_provider="anthropic"
    )
    yield s
    await s.stop()
    assert not fake.refusals, f"dago sent a request the API refuses: {fake.refusals[0]}"


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """field -> description of an INVALID_ARGUMENT's BadRequest."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    return {v.field: v.description for v in error_details(err)[0].field_violations}


# --- the fake speaks today's API -----------------------------------------------------------


async def test_the_fake_refuses_what_todays_api_refuses_per_model(fake: FakeAnthropic) -> None:
    client = anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.url, max_retries=0)
    hi = [{"role": "user", "content": "hi"}]
    tool = {"name": "t", "description": "d", "input_schema": {"type": "object"}}
    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            {
                "model": "claude-sonnet-5-5",
                "tools": [tool],
                "tool_choice": {"type": "tool", "name": "t"},
            },
            400,
            "tool_choice",
        ),
        (
            {"model": "claude-sonnet-5", "extra_body": {"temperature": 0.5}},
            400,
            "temperature is deprecated",
        ),
        ({"model": "claude-sonnet-5-5", "thinking": {"type": "disabled"}}, 400, "between_tools"),
        (
            {"model": "claude-sonnet-5", "thinking": {"type": "enabled", "budget_tokens": 2048}},
            400,
            "thinking.type",
        ),
        ({"model": "claude-haiku-4-5", "output_config": {"effort": "high"}}, 400, "effort"),
        (
            {
                "model": "claude-sonnet-4-0",
                "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}},
            },
            400,
            "output_config.format",
        ),
        ({"model": "claude-nonexistent-9"}, 404, "model: claude-nonexistent-9"),
        (
            {
                "model": "claude-sonnet-5-5",
                "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
            },
            400,
            "'additionalProperties' must be explicitly set to false",
        ),
    ]
    for params, status, words in cases:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(max_tokens=10, messages=hi, **params)  # type: ignore[call-overload]
        assert caught.value.status_code == status, params
        assert words in caught.value.message, (params, caught.value.message)
    assert len(fake.refusals) == len(cases)
    # Earlier generations keep what they had: a temperature and a forced tool on Haiku 4.5.
    fake.script = [ToolUse({"x": 1}, "t")]
    msg = await client.messages.create(  # type: ignore[call-overload]
        model="claude-haiku-4-5",
        max_tokens=10,
        messages=hi,
        tools=[tool],
        tool_choice={"type": "tool", "name": "t"},
        extra_body={"temperature": 0.2},
    )
    assert msg.stop_reason == "tool_use"
    # A thinking block comes with a signature; changed, it is refused.
    fake.script = [Text("ok", thinking="Let me think.")]
    msg = await client.messages.create(
        model="claude-opus-4-6", max_tokens=10, messages=hi, thinking={"type": "adaptive"}
    )
    thinking = msg.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature
    changed = {"type": "thinking", "thinking": "Something else.", "signature": thinking.signature}
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        await client.messages.create(
            model="claude-opus-4-6",
            max_tokens=10,
            thinking={"type": "adaptive"},
            messages=[*hi, {"role": "assistant", "content": [changed]}, *hi],  # type: ignore[list-item]
        )
    # Sonnet 5.5 omits thinking text unless asked, and says when it refuses.
    fake.script = [Text("ok", thinking="private"), Refusal()]
    msg = await client.messages.create(model="claude-sonnet-5-5", max_tokens=10, messages=hi)
    assert msg.content[0].type == "thinking" and msg.content[0].thinking == ""
    msg = await client.messages.create(model="claude-sonnet-5-5", max_tokens=10, messages=hi)
    assert msg.stop_reason == "refusal"
    await client.close()


# --- structured output ---------------------------------------------------------------------


async def test_structured_output_on_sonnet_5_5_goes_through_output_config_format(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    # An open object with a bound constrained decoding cannot enforce.
    schema = {
        "type": "object",
        "properties": {
            "priority": {"type": "string", "enum": ["high", "low"]},
            "score": {"type": "integer", "minimum": 1},
        },
        "required": ["priority", "score"],
    }
    fake.script = [
        Text(json.dumps({"priority": "high", "score": 3})),
        Text(json.dumps({"priority": "low", "score": 0})),
    ]
    node = llm("triage", "Triage: {{ inputs.t }}", outputSchema=schema)
    _, st = await stack.client.run(request([node], inputs={"t": "x"}))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "triage").output) == {"priority": "high", "score": 3}
    (sent,) = fake.requests
    assert sent.body["model"] == "claude-sonnet-5-5"  # the default model is today's Sonnet
    fmt = sent.body["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    # Sent as the SDK shapes it (the fake refuses open objects and bounds, like the API)...
    assert fmt["schema"]["additionalProperties"] is False
    assert "minimum" not in fmt["schema"]["properties"]["score"]
    assert "tools" not in sent.body and "tool_choice" not in sent.body
    # ... and the answer is still checked against the node's own schema, bounds included.
    _, st = await stack.client.run(
        request([{**node, "retry": {"maxAttempts": 1}}], inputs={"t": "y"})
    )
    assert st.state == FAILED
    assert "score" in node_status(st, "triage").error.message


async def test_a_constrained_answer_that_does_not_match_fails_without_a_repair(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [Text('{"priority": "hig', stop="max_tokens")]
    node = llm("triage", "t", outputSchema=SCHEMA)
    _, st = await stack.client.run(request([{**node, "retry": {"maxAttempts": 1}}]))
    assert st.state == FAILED
    err = node_status(st, "triage").error
    assert err.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert "does not match output_schema" in err.message and "max_tokens" in err.message
    assert len(fake.requests) == 1


async def test_a_refusal_fails_the_node_and_is_not_retried(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [Refusal("I can't help with that.")]
    _, st = await stack.client.run(request([llm("a", "something")]))
    assert st.state == FAILED
    err = node_status(st, "a").error
    assert "declined" in err.message and not err.retryable
    assert len(fake.requests) == 1


# --- agents: thinking kept, text between tool calls streamed --------------------------------


async def test_an_agent_sends_thinking_blocks_back_unchanged_over_three_turns(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1", thinking="Look it up."),
        ToolUse({"order_id": "B-200"}, "order_status", id="toolu_2", thinking="And the other."),
        Text("A-100 shipped; B-200 is packed.", thinking="Both known."),
    ]
    node = agent("helper", "Where are A-100 and B-200?", ["order_status"], cacheTtl="CACHE_TTL_OFF")
    _, st = await stack.client.run(request([node]), 30)
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "helper").output)["turns"] == 3
    first, second, third = (r.body for r in fake.requests)
    # Each answered turn is sent back as it came: its thinking block first, signature intact.
    turn1 = second["messages"][1]["content"]
    assert turn1[0]["type"] == "thinking" and turn1[0]["thinking"] == "Look it up."
    assert turn1[0]["signature"] and turn1[1]["type"] == "tool_use"
    assert third["messages"][1] == second["messages"][1]
    turn2 = third["messages"][3]["content"]
    assert turn2[0]["thinking"] == "And the other." and turn2[1]["id"] == "toolu_2"
    # Strict tool use where the model has it and the schema is closed.
    assert first["tools"][0]["strict"] is True
    # The fake refused nothing (the fixture checks): every signature matched.


async def test_text_between_tool_calls_reaches_a_watcher_as_llm_deltas(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1", text="Checking A-100 now."),
        Text("It has shipped."),
    ]
    gid = await stack.client.submit(request([agent("helper", "Where is A-100?", ["order_status"])]))
    events = await stack.client.watch(gid)
    assert events[-1].WhichOneof("payload") == "graph_completed"
    deltas = "".join(e.llm_delta.text for e in of_kind(events, "llm_delta", "helper"))
    assert deltas == "Checking A-100 now.It has shipped."
    # Sonnet 5.5 wrote that text into a thinking block: dago asked for it to be returned.
    assert fake.requests[0].body["thinking"] == {"type": "adaptive", "display": "summarized"}
    sent_back = fake.requests[1].body["messages"][1]["content"][0]
    assert sent_back["type"] == "thinking" and sent_back["thinking"] == "Checking A-100 now."


# --- settings checked at submit ------------------------------------------------------------


async def test_settings_a_model_refuses_are_refused_at_submit_naming_the_field(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    nodes = [
        llm("a", "hi", temperature=0.3),  # the default model, Sonnet 5.5
        llm("b", "hi", model="claude-haiku-4-5", effort="EFFORT_HIGH"),
        llm("c", "hi", model="claude-sonnet-5-5", thinking="THINKING_DISABLED"),
        agent("d", "hi", ["echo"], model="claude-opus-4-6", effort="EFFORT_XHIGH"),
        llm("e", "hi", model="claude-haiku-4-5", temperature=0.3, maxTokens=100_000),
        {
            "id": "f",
            "router": {
                "mode": "ROUTER_MODE_LLM",
                "routes": [{"name": "yes"}, {"name": "no"}],
                "llm": {"model": "claude-haiku-4-5", "thinking": "THINKING_ADAPTIVE"},
            },
        },
    ]
    found = violations(await rpc_error(stack.client.submit(request(nodes))))
    assert set(found) == {
        "graph.nodes[0].llm.temperature",
        "graph.nodes[1].llm.effort",
        "graph.nodes[2].llm.thinking",
        "graph.nodes[3].agent.llm.effort",
        "graph.nodes[4].llm.max_tokens",
        "graph.nodes[5].router.llm.thinking",
    }
    assert "claude-sonnet-5-5" in found["graph.nodes[0].llm.temperature"]
    assert "between_tools" in found["graph.nodes[2].llm.thinking"]
    assert fake.requests == []
    # What the models accept goes through: effort and between_tools on Sonnet 5.5, a
    # temperature on Haiku 4.5.
    ok = [
        llm("a", "hi", effort="EFFORT_LOW", thinking="THINKING_BETWEEN_TOOLS"),
        llm("b", "hi", model="claude-haiku-4-5", temperature=0.3),
    ]
    _, st = await stack.client.run(request(ok))
    assert st.state == COMPLETED, st
    bodies = {r.body["model"]: r.body for r in fake.requests}
    assert bodies["claude-sonnet-5-5"]["output_config"] == {"effort": "low"}
    assert bodies["claude-sonnet-5-5"]["thinking"] == {"type": "between_tools"}
    assert bodies["claude-haiku-4-5"]["temperature"] == 0.3


async def test_an_unknown_model_is_refused_at_submit(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    found = violations(
        await rpc_error(stack.client.submit(request([llm("a", "hi", model="claude-nova-7")])))
    )
    assert "unknown model" in found["graph.nodes[0].llm.model"]
    assert "DAGO_ALLOW_UNKNOWN_MODELS" in found["graph.nodes[0].llm.model"]
    assert fake.requests == []
    # Allowing them needs a price: never a silent $0.
    with pytest.raises(ConfigError, match="DAGO_UNKNOWN_MODEL_PRICE"):
        load({"DAGO_ALLOW_UNKNOWN_MODELS": "true"})


async def test_an_allowed_unknown_model_is_priced_by_the_operators_setting(
    fake: FakeAnthropic, make_stack: MakeStack
) -> None:
    allowed = await make_stack(
        anthropic_api_key=KEY,
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
        allow_unknown_models=True,
        unknown_model_price='{"input": 3, "output": 15}',
    )
    try:
        # The fake knows no such model, so the call goes to a known one that answers under a
        # name the catalogue does not know (a new snapshot, say).
        fake.script = [Text("hi", model="claude-nova-7")]
        _, st = await allowed.client.run(request([llm("a", "hi", model="claude-sonnet-5")]))
        assert st.state == COMPLETED, st
        assert node_status(st, "a").usage.cost_usd == pytest.approx((10 * 3 + 5 * 15) / 1e6)
        gid = await allowed.client.submit(request([llm("b", "hi", model="claude-nova-7")]))
        assert gid  # accepted at submit
    finally:
        await allowed.stop()


# --- prices --------------------------------------------------------------------------------


def test_haiku_5_5_is_priced_by_prompt_length_and_cache_writes_by_lifetime() -> None:
    prices = PriceTable()

    def cost(model: str, **counts: int) -> float:
        return prices.cost(DagoUsage(model=model, **counts))

    # Up to 100K prompt tokens: $0.10 in, $0.50 out.
    assert cost("claude-haiku-5-5", input_tokens=90_000, output_tokens=1_000) == pytest.approx(
        (90_000 * 0.10 + 1_000 * 0.50) / 1e6
    )
    # Over 100K (cache reads count as prompt): every token at $0.50 / $2.50 / $0.05.
    assert cost(
        "claude-haiku-5-5", input_tokens=50_000, cache_read_input_tokens=60_000, output_tokens=1_000
    ) == pytest.approx((50_000 * 0.50 + 60_000 * 0.05 + 1_000 * 2.50) / 1e6)
    # Sonnet 5.5 cache writes: 5 minutes $2.50, 1 hour $4.
    five = cost(
        "claude-sonnet-5-5",
        input_tokens=1_000,
        output_tokens=100,
        cache_creation_input_tokens=10_000,
    )
    hour = cost(
        "claude-sonnet-5-5",
        input_tokens=1_000,
        output_tokens=100,
        cache_creation_input_tokens=10_000,
        cache_write_1h_input_tokens=10_000,
    )
    assert five == pytest.approx((1_000 * 2 + 100 * 10 + 10_000 * 2.5) / 1e6)
    assert hour == pytest.approx((1_000 * 2 + 100 * 10 + 10_000 * 4) / 1e6)
    # A dated snapshot is its model; an override wins; a multiplier applies to everything.
    assert PriceTable().price("claude-haiku-4-5-20251001") == PriceTable().price("claude-haiku-4-5")
    assert PriceTable().price("claude-sonnet-5-5-x") is None
    doubled = PriceTable('{"claude-sonnet-5-5": {"input": 4, "output": 20}}', multiplier=1.1)
    assert doubled.cost(DagoUsage(model="claude-sonnet-5-5", input_tokens=1_000_000)) == (
        pytest.approx(4.4)
    )


async def test_costs_of_haiku_5_5_calls_and_1h_cache_writes_through_the_stack(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        Text("short", usage=Usage(input=90_000, output=1_000)),
        Text("long", usage=Usage(input=120_000, output=1_000)),
        Text(
            "hour", usage=Usage(input=1_000, output=100, cache_write=10_000, cache_write_1h=10_000)
        ),
    ]
    nodes = [
        llm("short", "s", model="claude-haiku-5-5"),
        llm("long", "l {{ nodes.short.output.text }}", model="claude-haiku-5-5"),
        llm("hour", "h {{ nodes.long.output.text }}", cacheTtl="CACHE_TTL_1H"),
    ]
    edges = [edge("short", "long"), edge("long", "hour")]
    _, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED, st
    want = {
        "short": (90_000 * 0.10 + 1_000 * 0.50) / 1e6,
        "long": (120_000 * 0.50 + 1_000 * 2.50) / 1e6,
        "hour": (1_000 * 2 + 100 * 10 + 10_000 * 4) / 1e6,
    }
    for node, cost in want.items():
        assert node_status(st, node).usage.cost_usd == pytest.approx(cost), node
    assert fake.requests[2].body["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


# --- prompt caching ------------------------------------------------------------------------


async def test_a_five_turn_agent_reads_its_cached_prefix_from_the_second_turn(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.count_tokens = True

    def script() -> list[Any]:
        calls = [
            ToolUse({"order_id": f"A-{i}"}, "order_status", id=f"toolu_{i}") for i in range(1, 5)
        ]
        return [*calls, Text("All four are known.")]

    def run(ttl: str) -> dict[str, Any]:
        fields = {"system": LONG_SYSTEM, "cacheTtl": ttl} if ttl else {"system": LONG_SYSTEM}
        return agent("helper", "Check orders A-1 to A-4.", ["order_status"], **fields)

    fake.script = script()
    _, cached = await stack.client.run(request([run("")]), 30)
    assert cached.state == COMPLETED, cached
    turns = fake.usages[:]
    assert len(turns) == 5
    assert all(r.body["cache_control"] == {"type": "ephemeral"} for r in fake.requests)
    # The first turn writes the prefix; every later one reads what the turn before wrote.
    assert turns[0]["cache_creation_input_tokens"] > 0
    assert turns[0]["cache_read_input_tokens"] == 0
    for before, now in itertools.pairwise(turns):
        assert now["cache_read_input_tokens"] == (
            before["cache_read_input_tokens"] + before["cache_creation_input_tokens"]
        )
    usage = node_status(cached, "helper").usage
    # Each call's reads and writes are in the result, priced on their own.
    per_turn = plain(node_status(cached, "helper").output)["turn_usage"]
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    assert [[t[k] for k in keys] for t in per_turn] == [[t[k] for k in keys] for t in turns]
    assert sum(t["cost_usd"] for t in per_turn) == pytest.approx(usage.cost_usd)
    assert per_turn[1]["cost_usd"] < per_turn[0]["cost_usd"]  # a read is cheaper than a write
    assert usage.cache_read_input_tokens == sum(t["cache_read_input_tokens"] for t in turns)
    assert usage.cache_creation_input_tokens == sum(t["cache_creation_input_tokens"] for t in turns)

    # The same conversation without the cache pays the whole prompt every turn.
    fake.script = script()
    fake.usages.clear()
    _, plain_run = await stack.client.run(request([run("CACHE_TTL_OFF")]), 30)
    assert plain_run.state == COMPLETED, plain_run
    uncached = node_status(plain_run, "helper").usage
    assert uncached.cache_read_input_tokens == 0
    assert usage.cost_usd < uncached.cost_usd
    assert "cache_control" not in fake.requests[-1].body


async def test_an_llm_node_caches_its_static_system_prompt_only(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.count_tokens = True
    nodes = [
        llm("a", "Ticket one: {{ inputs.t }}", system=LONG_SYSTEM),
        llm("b", "Ticket two {{ nodes.a.output.text }}", system=LONG_SYSTEM),
        llm("c", "Ticket three {{ nodes.b.output.text }}", system="For {{ inputs.t }}."),
    ]
    edges = [edge("a", "b"), edge("b", "c")]
    _, st = await stack.client.run(request(nodes, edges, inputs={"t": "late parcel"}))
    assert st.state == COMPLETED, st
    a, _, c = (r.body for r in fake.requests)
    # The breakpoint sits after the system prompt, which repeats; the prompt after it varies.
    assert a["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in a
    assert fake.usages[0]["cache_creation_input_tokens"] > 0
    assert (
        fake.usages[1]["cache_read_input_tokens"] == fake.usages[0]["cache_creation_input_tokens"]
    )
    # A templated system prompt differs between runs: nothing is cached by default.
    assert c["system"] == "For late parcel." and "cache_control" not in c
    assert node_status(st, "b").usage.cache_read_input_tokens > 0


async def test_the_cache_lifetime_is_a_node_and_a_graph_setting(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    nodes = [
        agent("graph_default", "one", ["echo"]),
        agent("own", "two", ["echo"], cacheTtl="CACHE_TTL_5M"),
        agent("off", "three", ["echo"], cacheTtl="CACHE_TTL_OFF"),
    ]
    defaults = {"llmCacheTtl": "CACHE_TTL_1H"}
    _, st = await stack.client.run(request(nodes, defaults=defaults))
    assert st.state == COMPLETED, st
    sent = {r.body["messages"][0]["content"]: r.body for r in fake.requests}
    assert sent["one"]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert sent["two"]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in sent["three"]
