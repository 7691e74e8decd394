"""The openai provider through the real stack: the real ``openai`` SDK against a fake server.

Covered: streamed deltas reach a watcher in order and add up to the output; usage (cached
prompt tokens as cache reads) and cost per node and graph; structured output through a
json_schema response format with one repair; 429 retried after the server's retry-after;
401 failing fast with what to fix; the API key read from OPENAI_API_KEY, redacted by
``dago config`` and never showing up in events, results or logs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from dago.config import describe, load
from dago.v1 import execution_pb2, graph_pb2
from fake_openai import Error, FakeOpenAI, Text, Usage
from harness import (
    ROOT,
    InProcessStack,
    MakeStack,
    echo,
    edge,
    everything,
    fast_retry,
    node_states,
    node_status,
    of_kind,
    plain,
    request,
    stack_settings,
)
from redisfixture import RedisServer

KEY = "sk-openai-test-0123456789-SECRET"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
SCHEMA = {
    "type": "object",
    "properties": {
        "priority": {"type": "string", "enum": ["high", "low"]},
        "score": {"type": "integer", "minimum": 1},
    },
    "required": ["priority", "score"],
    "additionalProperties": False,
}
# USD per million tokens of the fake's model (not in the built-in table).
PRICES = {"fake-gpt": {"input": 2.0, "output": 8.0, "cache_read": 0.5}}


def llm(node_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
    """An llm node using the openai provider; ``retry`` goes on the node, the rest on llm."""
    node_fields = {k: fields.pop(k) for k in ("retry",) if k in fields}
    return {"id": node_id, "llm": {"prompt": prompt, "provider": "openai", **fields}, **node_fields}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as f:
        yield f


@pytest.fixture
async def stack(
    fake: FakeOpenAI, caplog: pytest.LogCaptureFixture, make_stack: MakeStack
) -> AsyncIterator[InProcessStack]:
    caplog.set_level(logging.DEBUG)
    s = await make_stack(openai_api_key=KEY, openai_base_url=fake.url, prices=json.dumps(PRICES))
    yield s
    await s.stop()
    # The key went to the fake as a bearer token (that is how it authenticates) and nowhere else.
    assert fake.requests
    for r in fake.requests:
        assert r.headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in caplog.text


async def test_deltas_reach_a_watcher_in_order_with_usage_and_cost(
    stack: InProcessStack, fake: FakeOpenAI
) -> None:
    answer = " ".join(f"word{i}" for i in range(300))
    usage = Usage(prompt=1000, completion=200, cached=400)
    fake.script = [Text(answer, chunks=60, usage=usage, model="fake-gpt-2026")]
    node = llm(
        "ask",
        "Summarise {{ inputs.topic }}.",
        model="fake-gpt",
        system="You are {{ inputs.role }}.",
        temperature=0.2,
        maxTokens=300,
        stopSequences=["END"],
        metadata={"user_id": "u-1"},
    )
    gid = await stack.client.submit(request([node], inputs={"topic": "Redis", "role": "terse"}))
    events = await stack.client.watch(gid)
    assert events[-1].WhichOneof("payload") == "graph_completed"
    deltas = of_kind(events, "llm_delta", "ask")
    assert "".join(d.llm_delta.text for d in deltas) == answer
    assert [d.seq for d in deltas] == sorted(d.seq for d in deltas)
    assert 1 <= len(deltas) < 60  # coalesced
    st = await stack.client.status(gid)
    out = plain(node_status(st, "ask").output)
    assert out == {"text": answer, "model": "fake-gpt-2026", "provider": "openai"}
    (sent,) = fake.requests
    body = sent.body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["model"] == "fake-gpt" and body["max_tokens"] == 300
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise Redis."},
    ]
    assert body["temperature"] == 0.2 and body["stop"] == ["END"] and body["user"] == "u-1"
    # Cached prompt tokens are cache reads, billed at their own price; the rest is input.
    cost = (600 * 2.0 + 200 * 8.0 + 400 * 0.5) / 1e6
    nu = node_status(st, "ask").usage
    assert (nu.input_tokens, nu.output_tokens, nu.cache_read_input_tokens) == (600, 200, 400)
    assert nu.cache_creation_input_tokens == 0
    assert nu.cost_usd == pytest.approx(cost) and st.usage.cost_usd == pytest.approx(cost)
    (u,) = of_kind(events, "usage", "ask")
    assert u.usage.provider == "openai" and u.usage.model == "fake-gpt-2026"
    assert u.usage.usage.cost_usd == pytest.approx(cost)
    assert (await stack.client.result(gid)).usage.cost_usd == pytest.approx(cost)
    assert KEY not in await everything(stack, gid)


async def test_unknown_models_cost_nothing_with_a_warning(
    stack: InProcessStack, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    _, st = await stack.client.run(request([llm("a", "hi", model="llama3.2:1b")]))
    assert st.state == COMPLETED, st
    nu = node_status(st, "a").usage
    assert (nu.input_tokens, nu.output_tokens, nu.cost_usd) == (10, 5, 0.0)
    assert "no price for model 'llama3.2:1b'" in caplog.text


async def test_structured_output_is_repaired_once_and_drives_conditions(
    stack: InProcessStack, fake: FakeOpenAI
) -> None:
    fake.script = [
        Text(json.dumps({"priority": "urgent", "score": 2})),
        Text(json.dumps({"priority": "high", "score": 3})),
    ]
    nodes = [llm("extract", "Triage: {{ inputs.ticket }}", outputSchema=SCHEMA), echo("page")]
    edges = [edge("extract", "page", 'nodes.extract.output.priority == "high"')]
    gid, st = await stack.client.run(request(nodes, edges, inputs={"ticket": "card declined"}))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "extract").output) == {"priority": "high", "score": 3}
    assert node_states(st) == {"extract": "COMPLETED", "page": "COMPLETED"}
    first, second = fake.requests
    assert first.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "structured_output", "schema": SCHEMA},
    }
    assistant, repair = second.body["messages"][-2:]
    assert assistant == {"role": "assistant", "content": '{"priority": "urgent", "score": 2}'}
    assert repair["role"] == "user" and "urgent" in repair["content"]
    assert "priority" in repair["content"]
    assert node_status(st, "extract").usage.input_tokens == 20  # both calls are paid for
    assert KEY not in await everything(stack, gid)


async def test_429_is_retried_after_the_delay_the_server_asks_for(
    stack: InProcessStack, fake: FakeOpenAI
) -> None:
    fake.script = [
        Error(429, "rate_limit_exceeded", "slow down", headers={"retry-after": "1"}),
        Text("after the wait"),
    ]
    gid, st = await stack.client.run(request([llm("a", "hi", retry=fast_retry())]))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "a").output)["text"] == "after the wait"
    first, second = fake.requests
    assert second.at - first.at >= 0.95  # retry-after 1s, although the policy says 20ms
    (retrying,) = of_kind(await stack.client.history(gid), "node_retrying", "a")
    err = retrying.node_retrying.error
    assert err.error_class == graph_pb2.ERROR_CLASS_RATE_LIMITED
    assert retrying.node_retrying.backoff_ms >= 1000
    assert "429" in err.message and "slow down" in err.message


async def test_server_errors_are_retried(stack: InProcessStack, fake: FakeOpenAI) -> None:
    fake.script = [Error(503, "server_error", "busy"), Text("second time lucky")]
    gid, st = await stack.client.run(request([llm("a", "hi", retry=fast_retry())]))
    assert st.state == COMPLETED, st
    (retrying,) = of_kind(await stack.client.history(gid), "node_retrying", "a")
    assert retrying.node_retrying.error.error_class == graph_pb2.ERROR_CLASS_TRANSIENT


@pytest.mark.parametrize(
    ("status", "fix"),
    [(401, "check OPENAI_API_KEY"), (404, "check the model name and DAGO_OPENAI_BASE_URL")],
)
async def test_client_errors_fail_fast_saying_what_to_fix(
    stack: InProcessStack, fake: FakeOpenAI, status: int, fix: str
) -> None:
    fake.script = [Error(status, "invalid_request_error", "Incorrect API key provided")]
    gid, st = await stack.client.run(request([llm("a", "hi", retry=fast_retry(5))]))
    assert st.state == FAILED
    err = node_status(st, "a").error
    assert err.error_class == graph_pb2.ERROR_CLASS_INVALID and not err.retryable
    assert f"{status} from the OpenAI-compatible API" in err.message and fix in err.message
    assert "Incorrect API key provided" in err.message
    assert len(fake.requests) == 1 and len(node_status(st, "a").attempts) == 1
    assert KEY not in await everything(stack, gid)


async def test_openai_without_a_key_fails_instead_of_going_offline(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with InProcessStack(stack_settings(redis_single.url, key_prefix)) as s:
        _, st = await s.client.run(request([llm("a", "hi")]))
    assert st.state == FAILED
    err = node_status(st, "a").error
    assert "OPENAI_API_KEY" in err.message and not err.retryable


def test_the_key_is_read_from_its_usual_variable_and_never_shown() -> None:
    s = load({"OPENAI_API_KEY": KEY, "DAGO_OPENAI_BASE_URL": "http://localhost:11434/v1"})
    assert s.openai_api_key == KEY and s.openai_base_url == "http://localhost:11434/v1"
    assert KEY not in repr(s)
    rows = {var: value for var, value, _ in describe(s)}
    assert rows["DAGO_OPENAI_API_KEY"] == "***"
    assert load({"DAGO_OPENAI_API_KEY": "a", "OPENAI_API_KEY": "b"}).openai_api_key == "a"
    assert load({}).openai_base_url == "https://api.openai.com/v1"


async def test_the_fake_also_answers_without_streaming(fake: FakeOpenAI) -> None:
    fake.script = [Text("whole", usage=Usage(prompt=7, completion=3, cached=2))]
    async with openai.AsyncOpenAI(api_key=KEY, base_url=fake.url, max_retries=0) as client:
        done = await client.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert done.choices[0].message.content == "whole"
    assert done.usage is not None and done.usage.prompt_tokens == 7
    assert done.usage.prompt_tokens_details is not None
    assert done.usage.prompt_tokens_details.cached_tokens == 2


@pytest.mark.process
def test_the_sdk_is_imported_on_first_use_and_its_absence_is_explained() -> None:
    code = """
import sys
import dago.worker.process, dago.llm.providers
assert "openai" not in sys.modules, "imported at start"
sys.modules["openai"] = None  # as if the package were not installed
from dago.config import Settings
from dago.engine.outcome import NodeFailure
from dago.llm.providers import Providers
try:
    Providers(Settings(openai_api_key="k")).resolve("openai", "")
except NodeFailure as e:
    print(e)
"""
    path = os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python"))
    env = {**os.environ, "PYTHONPATH": path}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "needs the openai package" in out.stdout and "pip install" in out.stdout
