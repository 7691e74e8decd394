"""Logs: JSON lines; every line about a node's work carries graph_id, node_id, attempt and
trace_id; no API key, bearer token or prompt (unless DAGO_LOG_PROMPTS is on)."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest

from dago.observe.logs import ContextFilter, JsonFormatter, redact
from dago.v1 import execution_pb2
from fake_anthropic import FakeAnthropic, Text
from harness import (
    InProcessStack,
    RunningStack,
    echo,
    edge,
    fast_retry,
    kinds,
    request,
    stack_settings,
    start_api_quickly,
    tool,
)
from obshelpers import TOOLS
from redisfixture import RedisServer

KEY = "sk-ant-logs-secret-KEY1234567890"
PROMPT_WORD = "Zebrafinch"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed as JSON (a line that is not JSON fails the test)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
    return out


@pytest.mark.process
async def test_node_lines_carry_correlation_fields_and_no_secrets(
    redis_single: RedisServer, key_prefix: str, fake: FakeAnthropic
) -> None:
    fake.script = [Text("a short answer")]
    env = {
        "DAGO_LOG_LEVEL": "DEBUG",
        "DAGO_TOOL_MODULES": TOOLS,
        "DAGO_AUTH": "off",
        "DAGO_ANTHROPIC_API_KEY": KEY,
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
    }
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        nodes = [
            echo("a", x=1),
            tool("f", "flaky", inputs={"fail_attempts": 1}, retry=fast_retry(2)),
            {"id": "ask", "llm": {"prompt": f"Describe a {PROMPT_WORD} in four words."}},
        ]
        gid, st = await stack.client.run(request(nodes, [edge("a", "f"), edge("f", "ask")]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        crashed, st = await stack.client.run(request([tool("c", "crash")]))
        assert st.state == execution_pb2.GRAPH_STATE_FAILED
        attempts = kinds(await stack.client.history(gid)).count("node_started")
        assert attempts == 4
        api = json_lines(stack.log("api"))
        worker_text = stack.log("w1")
        worker = json_lines(worker_text)

    traces = {
        line["graph_id"]: line["trace_id"] for line in api if line["msg"] == "graph submitted"
    }
    assert set(traces) == {gid, crashed}
    assert all(re.fullmatch("[0-9a-f]{32}", t) for t in traces.values())
    node_lines = [line for line in worker if "node_id" in line]
    for line in node_lines:
        assert line["graph_id"] in traces, line
        assert line["trace_id"] == traces[line["graph_id"]], line
        assert isinstance(line["attempt"], int) and line["attempt"] >= 1, line
        assert line["level"] in ("DEBUG", "INFO", "WARNING", "ERROR"), line
    done = [line for line in node_lines if line["msg"].startswith("node attempt")]
    assert sorted((x["node_id"], x["attempt"]) for x in done if x["graph_id"] == gid) == [
        ("a", 1),
        ("ask", 1),
        ("f", 1),
        ("f", 2),
    ]
    # The tool's crash is logged with its traceback, on a line of that node.
    (crash,) = [x for x in node_lines if x["graph_id"] == crashed and "exc" in x]
    assert crash["node_id"] == "c" and "RuntimeError: tool bug" in crash["exc"]
    # Nothing logged anywhere holds the key, a bearer token or the prompt.
    everything = stack.log("api") + worker_text
    assert KEY not in everything
    assert "bearer" not in everything.lower()
    assert PROMPT_WORD not in everything


async def test_prompts_are_logged_only_when_turned_on(
    redis_single: RedisServer, key_prefix: str
) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    dago_log = logging.getLogger("dago")
    old = dago_log.level
    dago_log.addHandler(handler)
    dago_log.setLevel(logging.DEBUG)
    try:
        for on in (False, True):
            settings = stack_settings(
                redis_single.url, f"{key_prefix}{int(on)}", llm_provider="offline", log_prompts=on
            )
            async with InProcessStack(settings) as stack:
                node = {"id": "ask", "llm": {"prompt": f"Say {PROMPT_WORD} {int(on)}"}}
                gid, st = await stack.client.run(request([node]))
                assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
            lines = json_lines(buf.getvalue())
            prompts = [x for x in lines if x["msg"] == "llm request" and x["graph_id"] == gid]
            if on:
                (line,) = prompts
                assert line["node_id"] == "ask" and f"{PROMPT_WORD} 1" in str(line["messages"])
            else:
                assert prompts == [] and PROMPT_WORD not in buf.getvalue()
    finally:
        dago_log.removeHandler(handler)
        dago_log.setLevel(old)


def test_secrets_are_redacted_from_any_line() -> None:
    assert redact(f"calling with key {KEY}") == "calling with key ***"
    assert redact("Authorization: Bearer abc.DEF-123_x") == "Authorization: ***"
    assert redact("openai key sk-proj-0123456789abcdefXYZ ok") == "openai key *** ok"
    record = logging.LogRecord("dago.x", logging.INFO, "f", 1, "token %s", (KEY,), None)
    record.graph_id = "0-abc"
    line = json.loads(JsonFormatter().format(record))
    assert line == {
        "ts": line["ts"],
        "level": "INFO",
        "logger": "dago.x",
        "msg": "token ***",
        "graph_id": "0-abc",
    }
