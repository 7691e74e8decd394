"""Agent nodes through the real stack: the real ``anthropic`` (and ``openai``) SDK against
the fake model servers, real tools: an operator tool (tests/support/testtools.py), the built-in
``http`` tool against a local server the operator allowed, and the tools of a real stdio
MCP server (tests/support/mcp_server.py, started by the worker through the ``mcp`` SDK).

Covered: a loop over the three kinds of tools ending with the right answer; events
tool_call → tool_result in order with arguments and results; usage summed over turns;
tool errors, refused addresses, bad arguments and unknown names given back to the model
as error results; per-tool timeouts; max_turns failing clearly; unknown tools refused at
SubmitGraph; cancel stopping a running tool at once; MCP tools in tool nodes with the
session reused; the openai provider's tool loop; the offline agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import testtools
from dago.config import Settings
from dago.llm.base import ChatMessage, LlmRequest, ToolCallRequest, ToolSpec
from dago.llm.offline import OfflineProvider
from dago.nodes.toolbox import known_names, load_tools
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from fake_anthropic import FakeAnthropic, Text, ToolUse, Usage
from fake_openai import FakeOpenAI
from fake_openai import Text as OText
from fake_openai import ToolCall as OToolCall
from fakehttp import FakeHttpServer
from harness import (
    SUPPORT,
    InProcessStack,
    MakeStack,
    edge,
    error_details,
    eventually,
    free_port,
    node_status,
    of_kind,
    plain,
    port_open,
    request,
    rpc_error,
    stack_settings,
    tool,
)
from redisfixture import RedisServer

KEY = "sk-ant-test-agent-SECRET"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
CANCELLED = execution_pb2.GRAPH_STATE_CANCELLED
MCP_COMMAND = [sys.executable, str(SUPPORT / "mcp_server.py")]
# MCP_TEST_CRASH adds the tool `crash` (ends the server process).
MCP = json.dumps({"kb": {"command": MCP_COMMAND, "env": {"MCP_TEST_CRASH": "1"}}})


def agent(node_id: str, prompt: str, tools: list[str], **fields: Any) -> dict[str, Any]:
    """An agent node; ``maxTurns``/``toolTimeout`` go on the agent, ``llm`` fields in ``llm``."""
    spec: dict[str, Any] = {"llm": {"prompt": prompt, **fields.pop("llm", {})}, "tools": tools}
    spec.update(fields)
    return {"id": node_id, "agent": spec}


class Weather(FakeHttpServer):
    """A local web API the agent's http tool may reach (the operator allowed 127.0.0.1)."""

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        if path.startswith("/weather"):
            await self.send_json(writer, 200, {"city": "Paris", "temp_c": 21})
        else:
            await self.send_json(writer, 404, {"error": "no such page"})


@pytest.fixture
async def web() -> AsyncIterator[Weather]:
    async with Weather() as w:
        yield w


@pytest.fixture
async def stack(fake: FakeAnthropic, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(
        anthropic_api_key=KEY,
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
        http_allow="127.0.0.1/32",
        mcp_servers=MCP,
    )


def tool_events(events: list[execution_pb2.Event]) -> list[tuple[str, str, str]]:
    """(kind, call id, tool) of the tool_call and tool_result events, in order."""
    out = []
    for e in events:
        kind = e.WhichOneof("payload")
        if kind in ("tool_call", "tool_result"):
            p = getattr(e, kind)
            out.append((kind, p.call_id, p.tool))
    return out


def results_sent(fake: FakeAnthropic, n: int) -> list[dict[str, Any]]:
    """The tool_result blocks the n-th model request (0-based) carried."""
    last = fake.requests[n].body["messages"][-1]
    return [b for b in last["content"] if b.get("type") == "tool_result"]


async def test_an_agent_uses_an_operator_tool_the_http_tool_and_an_mcp_tool(
    stack: InProcessStack, fake: FakeAnthropic, web: Weather
) -> None:
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", Usage(100, 20), "toolu_1", "Checking."),
        ToolUse({"url": f"{web.url}/weather?city=Paris"}, "http", Usage(150, 30), "toolu_2"),
        ToolUse({"country": "France"}, "kb_capital", Usage(200, 10, 0, 50), "toolu_3"),
        Text("Order A-100 has shipped to Paris, where it is 21 C.", usage=Usage(250, 40)),
    ]
    prompt = "Where is order {{ inputs.order }} going, and what is the weather there?"
    # The scripted usage is summed as is: no prompt caching here (tests/llm/test_claude_today.py
    # has the cache's own counts).
    node = agent(
        "helper",
        prompt,
        ["order_status", "http", "kb/capital"],
        maxTurns=6,
        llm={"cacheTtl": "CACHE_TTL_OFF"},
    )
    gid = await stack.client.submit(request([node], inputs={"order": "A-100"}))
    st = await stack.client.wait(gid, 60)
    assert st.state == COMPLETED, st
    out = plain(node_status(st, "helper").output)
    assert out["text"] == "Order A-100 has shipped to Paris, where it is 21 C."
    assert (out["provider"], out["turns"], out["tool_calls"]) == ("anthropic", 4, 3)

    # Events: each call, then its result, in order, named as the graph names them.
    events = await stack.client.history(gid)
    assert tool_events(events) == [
        ("tool_call", "toolu_1", "order_status"),
        ("tool_result", "toolu_1", "order_status"),
        ("tool_call", "toolu_2", "http"),
        ("tool_result", "toolu_2", "http"),
        ("tool_call", "toolu_3", "kb/capital"),
        ("tool_result", "toolu_3", "kb/capital"),
    ]
    calls = of_kind(events, "tool_call", "helper")
    results = of_kind(events, "tool_result", "helper")
    assert plain(calls[0].tool_call.arguments) == {"order_id": "A-100"}
    first = plain(results[0].tool_result.result)
    assert first["status"] == "shipped"
    # The tool got the attempt's idempotency key plus the call's position.
    assert first["key"] == f"{gid}/helper/1/1/t1.1"
    weather = plain(results[1].tool_result.result)
    assert weather["status"] == 200 and weather["body"] == {"city": "Paris", "temp_c": 21}
    # The http tool passes the call's idempotency key on to the server.
    assert web.requests[0].headers["idempotency-key"] == f"{gid}/helper/1/1/t2.1"
    assert plain(results[2].tool_result.result) == "Paris"
    assert all(not r.tool_result.error for r in results)
    deltas = "".join(e.llm_delta.text for e in of_kind(events, "llm_delta", "helper"))
    assert deltas.startswith("Checking.") and deltas.endswith("where it is 21 C.")

    # What the model saw: the tools by their model names, and each result in the next turn.
    first_req = fake.requests[0].body
    assert [t["name"] for t in first_req["tools"]] == ["order_status", "http", "kb_capital"]
    assert first_req["tools"][0]["input_schema"]["required"] == ["order_id"]
    sent = results_sent(fake, 1)
    assert sent[0]["tool_use_id"] == "toolu_1" and "shipped" in sent[0]["content"]
    assert "temp_c" in results_sent(fake, 2)[0]["content"]
    assert results_sent(fake, 3)[0]["content"] == "Paris"
    assert all(not b.get("is_error") for n in (1, 2, 3) for b in results_sent(fake, n))
    assert len(fake.requests) == 4

    # Usage is summed over the four turns: node, graph and usage event.
    usage = node_status(st, "helper").usage
    assert (usage.input_tokens, usage.output_tokens) == (700, 100)
    assert usage.cache_read_input_tokens == 50
    assert usage.cost_usd > 0
    assert st.usage.input_tokens == 700
    recorded = of_kind(events, "usage", "helper")
    assert len(recorded) == 1 and recorded[0].usage.usage.output_tokens == 100


async def test_tool_errors_refused_addresses_and_bad_calls_go_back_to_the_model(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        ToolUse({"order_id": "Z-9"}, "order_status", id="toolu_a"),
        ToolUse({"url": "http://169.254.169.254/latest/meta-data/"}, "http", id="toolu_b"),
        ToolUse({"order_id": 5}, "order_status", id="toolu_c"),
        ToolUse({}, "rm_rf", id="toolu_d"),
        ToolUse({"country": "Atlantis"}, "kb_capital", id="toolu_e"),
        Text("I could not find that order."),
    ]
    node = agent("helper", "Find order Z-9.", ["order_status", "http", "kb/capital"])
    gid = await stack.client.submit(request([node]))
    st = await stack.client.wait(gid, 60)
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "helper").output)["text"] == "I could not find that order."
    errors = [
        results_sent(fake, n)[0] for n in range(1, 6)
    ]  # what the model got back after each call
    assert all(e["is_error"] for e in errors)
    assert "no order Z-9" in errors[0]["content"]
    assert (
        "169.254.169.254" in errors[1]["content"] and "not a public address" in errors[1]["content"]
    )
    assert "do not match the tool's schema" in errors[2]["content"]
    assert "no tool named 'rm_rf'" in errors[3]["content"]
    assert errors[4]["content"].startswith("kb/capital: ")
    events = await stack.client.history(gid)
    recorded = [r.tool_result for r in of_kind(events, "tool_result", "helper")]
    assert [r.call_id for r in recorded] == ["toolu_a", "toolu_b", "toolu_c", "toolu_d", "toolu_e"]
    assert all(r.error for r in recorded)


async def test_a_tool_past_its_timeout_is_an_error_result_not_a_failed_node(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [ToolUse({"seconds": 30}, "hold", id="toolu_slow"), Text("It took too long.")]
    node = agent("helper", "Wait a while.", ["hold"], toolTimeout="0.3s")
    started = time.monotonic()
    _, st = await stack.client.run(request([node]), 30)
    assert st.state == COMPLETED, st
    assert time.monotonic() - started < 10
    sent = results_sent(fake, 1)[0]
    assert sent["is_error"] and "timed out after 0.3s" in sent["content"]


async def test_max_turns_reached_fails_the_node_clearly_with_its_usage(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.default = ToolUse({"value": 1}, "echo", Usage(10, 5), "toolu_again")
    node = agent("helper", "Loop forever.", ["echo"], maxTurns=3)
    gid, st = await stack.client.run(request([node]), 30)
    assert st.state == FAILED
    err = node_status(st, "helper").error
    assert err.error_class == graph_pb2.ERROR_CLASS_PERMANENT and not err.retryable
    assert "all 3 turns" in err.message and "echo" in err.message
    assert len(fake.requests) == 3
    assert st.usage.input_tokens == 30 and st.usage.output_tokens == 15
    events = await stack.client.history(gid)
    assert len(of_kind(events, "tool_call", "helper")) == 3


async def test_unknown_tools_are_refused_at_submit_naming_the_field(
    stack: InProcessStack,
) -> None:
    node = agent("helper", "hi", ["echo", "shell", "nope/read", "kb/anything"])
    err = await rpc_error(stack.client.submit(request([node])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = error_details(err)[0]
    fields = {v.field: v.description for v in bad.field_violations}
    assert set(fields) == {"graph.nodes[0].agent.tools[1]", "graph.nodes[0].agent.tools[2]"}
    assert "shell" in fields["graph.nodes[0].agent.tools[1]"]
    assert "MCP server" in fields["graph.nodes[0].agent.tools[2]"]


async def test_cancel_stops_a_running_tool_call_at_once(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [ToolUse({"seconds": 60}, "hold", id="toolu_hold")]
    gid = await stack.client.submit(request([agent("helper", "Hold on.", ["hold"])]))

    async def holding() -> bool:
        return bool(of_kind(await stack.client.history(gid), "tool_call", "helper"))

    await eventually(holding, 20.0)
    key = f"{gid}/helper/1/1/t1.1"
    assert key not in testtools.HOLD_CANCELLED
    await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="stop"), timeout=5
    )

    async def cancelled() -> bool:
        return key in testtools.HOLD_CANCELLED

    await eventually(cancelled, 2.0)
    assert (await stack.client.wait(gid)).state == CANCELLED


async def test_cancel_aborts_the_model_call_of_a_later_turn_within_a_second(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    fake.script = [
        ToolUse({"value": 1}, "echo", id="toolu_1"),
        Text("tok " * 400, chunks=400, delay=0.05),
    ]
    gid = await stack.client.submit(request([agent("helper", "Go.", ["echo"])]))

    async def second_turn_streaming() -> bool:
        events = await stack.client.history(gid)
        return bool(of_kind(events, "tool_result")) and len(fake.requests) == 2

    await eventually(second_turn_streaming, 20.0)
    await fake.streaming.wait()
    fake.closed.clear()
    started = time.monotonic()
    await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="stop"), timeout=5
    )
    await asyncio.wait_for(fake.closed.wait(), 1.0)
    assert time.monotonic() - started < 1.0
    assert (await stack.client.wait(gid)).state == CANCELLED


async def test_mcp_tools_in_tool_nodes_share_one_session_per_worker(
    stack: InProcessStack,
) -> None:
    nodes = [
        tool("product", "kb/multiply", inputs={"a": 6, "b": 7}),
        tool("p1", "kb/pid"),
        tool("p2", "kb/pid"),
    ]
    edges = [{"from": "product", "to": "p1"}, {"from": "p1", "to": "p2"}]
    _, st = await stack.client.run(request(nodes, edges), 60)
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "product").output) == 42
    first_pid = plain(node_status(st, "p1").output)
    assert plain(node_status(st, "p2").output) == first_pid

    _, st = await stack.client.run(request([tool("x", "kb/nope")]), 30)
    assert st.state == FAILED
    err = node_status(st, "x").error
    assert 'has no tool "nope"' in err.message and "capital" in err.message

    # A call cut short (the attempt timed out) leaves the session usable.
    slow = tool("slow", "kb/wait", inputs={"seconds": 30}, attemptTimeout="0.5s")
    _, st = await stack.client.run(
        request([slow, tool("after", "kb/pid")], [edge("slow", "after")])
    )
    assert st.state == FAILED
    assert node_status(st, "slow").error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT
    _, st = await stack.client.run(request([tool("after", "kb/pid")]), 30)
    assert st.state == COMPLETED and plain(node_status(st, "after").output) == first_pid

    # A server that dies is started again on the next call.
    _, st = await stack.client.run(request([tool("x", "kb/crash")]), 30)
    assert st.state == FAILED
    err = node_status(st, "x").error
    assert "went away" in err.message and err.retryable
    _, st = await stack.client.run(request([tool("again", "kb/pid")]), 60)
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "again").output) != first_pid


async def test_the_openai_provider_runs_the_same_loop(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with FakeOpenAI() as fake:
        fake.script = [
            OToolCall("order_status", {"order_id": "A-200"}, "call_9"),
            OText("Order A-200 is delayed."),
        ]
        settings = stack_settings(
            redis_single.url,
            key_prefix,
            openai_api_key="sk-openai-test",
            openai_base_url=fake.url,
            llm_provider="openai",
        )
        async with InProcessStack(settings) as s:
            gid, st = await s.client.run(request([agent("a", "Where is A-200?", ["order_status"])]))
            assert st.state == COMPLETED, st
            assert plain(node_status(st, "a").output)["text"] == "Order A-200 is delayed."
            events = await s.client.history(gid)
        assert tool_events(events) == [
            ("tool_call", "call_9", "order_status"),
            ("tool_result", "call_9", "order_status"),
        ]
        first = fake.requests[0].body
        assert first["tools"][0]["function"]["name"] == "order_status"
        messages = fake.requests[1].body["messages"]
        assert messages[-2]["tool_calls"][0]["id"] == "call_9"
        assert messages[-1]["role"] == "tool" and "delayed" in messages[-1]["content"]
        assert node_status(st, "a").usage.input_tokens == 20


async def test_an_offline_agent_calls_its_tools_then_answers_from_them(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with InProcessStack(stack_settings(redis_single.url, key_prefix)) as s:
        node = agent("a", "Look up order A-100 please.", ["echo", "order_status"])
        gid, st = await s.client.run(request([node]))
        assert st.state == COMPLETED, st
        out = plain(node_status(st, "a").output)
        events = await s.client.history(gid)
    assert out["provider"] == "offline" and out["turns"] == 2
    assert out["text"].startswith("[offline] from 2 tool result(s): echo: ")
    calls = [plain(e.tool_call.arguments) for e in of_kind(events, "tool_call", "a")]
    # echo takes any object; order_status gets the prompt, which breaks its pattern: the
    # error goes back to the (offline) model like any tool error.
    assert calls == [{}, {"order_id": "Look up order A-100 please."}]
    results = [e.tool_result for e in of_kind(events, "tool_result", "a")]
    assert not results[0].error and "do not match" in results[1].error
    assert "order_status: error:" in out["text"]


async def test_an_offline_agent_may_use_every_tool_of_an_mcp_server(
    redis_single: RedisServer, key_prefix: str
) -> None:
    servers = json.dumps({"kb": {"command": MCP_COMMAND}})
    settings = stack_settings(redis_single.url, key_prefix, mcp_servers=servers)
    async with InProcessStack(settings) as s:
        node = agent("a", "japan", ["kb/*"])
        gid, st = await s.client.run(request([node]), 60)
        assert st.state == COMPLETED, st
        events = await s.client.history(gid)
    calls = {e.tool_call.tool: plain(e.tool_call.arguments) for e in of_kind(events, "tool_call")}
    assert calls == {
        "kb/capital": {"country": "japan"},
        "kb/multiply": {"a": 0, "b": 0},
        "kb/wait": {"seconds": 0},
        "kb/pid": {},
    }
    results = {e.tool_result.tool: e.tool_result for e in of_kind(events, "tool_result")}
    assert plain(results["kb/capital"].result) == "Tokyo"
    assert plain(results["kb/multiply"].result) == 0
    assert not any(r.error for r in results.values())


async def test_offline_tool_arguments_stop_sequences_and_max_tokens() -> None:
    provider = OfflineProvider()
    fetch = ToolSpec(
        "http",
        "fetch",
        {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]},
    )
    prompt = "Read https://example.com/a.json and summarise it."
    req = LlmRequest("offline", [ChatMessage("user", prompt)], 100, tools=(fetch,))
    resp = await provider.complete(req, lambda _: None)
    assert resp.tool_calls == (
        ToolCallRequest("offline_1", "http", {"url": "https://example.com/a.json"}),
    )
    assert resp.stop_reason == "tool_use"

    words = " ".join(f"w{i}" for i in range(40))
    resp = await provider.complete(
        LlmRequest("offline", [ChatMessage("user", words)], 5), lambda _: None
    )
    assert resp.stop_reason == "max_tokens" and len(resp.text.split(" ")) == 5
    resp = await provider.complete(
        LlmRequest("offline", [ChatMessage("user", words)], 100, stop=["w3"]), lambda _: None
    )
    assert resp.stop_reason == "stop_sequence" and "w3" not in resp.text


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_streamable_http_mcp_servers_and_sessions_closed_at_shutdown(
    redis_single: RedisServer, key_prefix: str
) -> None:
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SUPPORT / "mcp_server.py"),
        "--http",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await port_open(port)
        servers = {**json.loads(MCP), "web": {"url": f"http://127.0.0.1:{port}/mcp"}}
        settings = stack_settings(redis_single.url, key_prefix, mcp_servers=json.dumps(servers))
        async with InProcessStack(settings) as s:
            nodes = [
                tool("remote", "web/multiply", inputs={"a": 3, "b": 5}),
                tool("local", "kb/pid"),
            ]
            _, st = await s.client.run(request(nodes), 60)
            assert st.state == COMPLETED, st
            assert plain(node_status(st, "remote").output) == 15
            pid = int(plain(node_status(st, "local").output))
            assert alive(pid)
        # The worker stopped: its stdio MCP server was stopped with it.
        assert not alive(pid)
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 10)


def test_operator_tools_come_from_the_dago_tools_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed distribution, as pip lays it out: a module and its dist-info.
    (tmp_path / "dago_ep_tools.py").write_text(
        "from dago.nodes.base import Tool\n"
        "async def _shout(args, ctx):\n"
        "    return str(args['text']).upper()\n"
        "SHOUT = Tool('shout', 'Upper-cases text.', _shout,\n"
        "             {'type': 'object', 'properties': {'text': {'type': 'string'}}})\n"
        "def more():\n"
        "    return [Tool('whisper', 'Lower-cases text.', _shout)]\n"
    )
    info = tmp_path / "dago_ep_tools-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dago-ep-tools\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[dago.tools]\nshout = dago_ep_tools:SHOUT\nmore = dago_ep_tools:more\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    tools = load_tools("testtools")
    assert {"shout", "whisper", "order_status", "echo", "sleep"} <= set(tools)
    assert tools["shout"].parameters["properties"]["text"] == {"type": "string"}
    assert "shout" in known_names(Settings(tool_modules="testtools")).tools
