"""The openai provider against other OpenAI-compatible endpoints: the real ``openai`` SDK
and the real stack, the fake answering as Gemini's endpoint, vLLM or Ollama
(``FakeOpenAI(flavour=...)``; what each does differently is listed there and in
docs/llm.md, "OpenAI-compatible endpoints").

Covered: Gemini's base URL (``/v1beta/openai/``) and its running usage on every chunk (the
call's usage is the last one, never a sum); vLLM's and Ollama's usage without cached
tokens; prices per model from DAGO_PRICES (an Ollama tag priced by its model's key);
structured output chosen by what the endpoint supports (DAGO_OPENAI_STRUCTURED_OUTPUT:
json_schema, json_object, prompt), and the hint when an endpoint refuses json_schema; a
stream without usage counted as zero with one warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dago.config import ConfigError, load
from dago.v1 import execution_pb2, graph_pb2
from fake_openai import FakeOpenAI, Flavour, Text, Usage
from harness import InProcessStack, MakeStack, fast_retry, node_status, of_kind, plain, request

KEY = "local-or-gemini-key"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
# USD per million tokens, one row per model as an operator would set them.
PRICES = {
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50},
    "meta-llama/Llama-3.1-8B-Instruct": {"input": 0.05, "output": 0.10},
    "llama3.2": {"input": 0.01, "output": 0.02},  # every tag: llama3.2:1b, llama3.2:3b
}


def llm(node_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
    """An llm node of the openai provider; ``retry`` goes on the node, the rest on llm."""
    node_fields = {k: fields.pop(k) for k in ("retry",) if k in fields}
    return {"id": node_id, "llm": {"prompt": prompt, "provider": "openai", **fields}, **node_fields}


async def start(make_stack: MakeStack, fake: FakeOpenAI, **overrides: Any) -> InProcessStack:
    """A stack whose openai provider calls ``fake``, with PRICES."""
    return await make_stack(
        openai_api_key=KEY, openai_base_url=fake.url, prices=json.dumps(PRICES), **overrides
    )


@pytest.fixture
async def gemini() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI("gemini") as f:
        yield f


async def test_gemini_base_url_model_and_running_usage(
    gemini: FakeOpenAI, make_stack: MakeStack
) -> None:
    assert gemini.url.endswith("/v1beta/openai/")
    stack = await start(make_stack, gemini)
    answer = " ".join(f"w{i}" for i in range(80))
    gemini.script = [Text(answer, chunks=20, usage=Usage(prompt=1200, completion=300))]
    gid, st = await stack.client.run(request([llm("a", "Plan a trip.", model="gemini-2.5-flash")]))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "a").output)["text"] == answer
    (sent,) = gemini.requests
    assert sent.body["model"] == "gemini-2.5-flash"
    assert sent.body["stream_options"] == {"include_usage": True}
    # 22 chunks each carried a running usage: the call's is the last, not their sum.
    nu = node_status(st, "a").usage
    assert (nu.input_tokens, nu.output_tokens, nu.cache_read_input_tokens) == (1200, 300, 0)
    cost = (1200 * 0.30 + 300 * 2.50) / 1e6
    assert nu.cost_usd == pytest.approx(cost)
    (u,) = of_kind(await stack.client.history(gid), "usage", "a")
    assert u.usage.provider == "openai" and u.usage.model == "gemini-2.5-flash"


async def test_gemini_structured_output_uses_json_schema(
    gemini: FakeOpenAI, make_stack: MakeStack
) -> None:
    stack = await start(make_stack, gemini)
    gemini.script = [Text(json.dumps({"city": "Lyon", "days": 3}))]
    node = llm("plan", "Plan a trip.", model="gemini-2.5-flash", outputSchema=SCHEMA)
    _, st = await stack.client.run(request([node]))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "plan").output) == {"city": "Lyon", "days": 3}
    (sent,) = gemini.requests
    assert sent.body["response_format"]["type"] == "json_schema"
    assert sent.body["response_format"]["json_schema"]["schema"] == SCHEMA


@pytest.mark.parametrize(
    ("flavour", "model", "price"),
    [
        # vLLM answers with the served model's name (a Hugging Face id by default).
        ("vllm", "meta-llama/Llama-3.1-8B-Instruct", PRICES["meta-llama/Llama-3.1-8B-Instruct"]),
        # Ollama's models have tags: the row of llama3.2 prices llama3.2:1b.
        ("ollama", "llama3.2:1b", PRICES["llama3.2"]),
    ],
)
async def test_local_servers_usage_and_per_model_prices(
    make_stack: MakeStack,
    flavour: Flavour,
    model: str,
    price: dict[str, float],
) -> None:
    async with FakeOpenAI(flavour) as fake:
        stack = await start(make_stack, fake)
        fake.script = [Text("local answer", usage=Usage(prompt=900, completion=100))]
        _, st = await stack.client.run(request([llm("a", "hi", model=model)]))
    assert st.state == COMPLETED, st
    (sent,) = fake.requests
    assert sent.body["model"] == model and sent.body["stream_options"] == {"include_usage": True}
    nu = node_status(st, "a").usage
    # No prompt_tokens_details from these servers: every prompt token is input.
    assert (nu.input_tokens, nu.output_tokens, nu.cache_read_input_tokens) == (900, 100, 0)
    assert nu.cost_usd == pytest.approx((900 * price["input"] + 100 * price["output"]) / 1e6)


@pytest.mark.parametrize(
    ("mode", "accepted", "reply", "response_format"),
    [
        # A server with JSON mode but no json_schema: the schema goes in the system prompt.
        ("json_object", {"json_object"}, '{"city": "Oslo", "days": 2}', {"type": "json_object"}),
        # A server without response_format: the prompt alone, the answer in a code fence.
        ("prompt", set(), '```json\n{"city": "Oslo", "days": 2}\n```', None),
    ],
)
async def test_structured_output_follows_what_the_endpoint_supports(
    make_stack: MakeStack,
    mode: str,
    accepted: set[str],
    reply: str,
    response_format: dict[str, str] | None,
) -> None:
    async with FakeOpenAI("ollama", response_formats=frozenset(accepted)) as fake:
        stack = await start(make_stack, fake, openai_structured_output=mode)
        fake.script = [Text(reply)]
        node = llm(
            "plan", "Plan a trip.", model="llama3.2:1b", outputSchema=SCHEMA, system="Be brief."
        )
        _, st = await stack.client.run(request([node]))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "plan").output) == {"city": "Oslo", "days": 2}
    (sent,) = fake.requests
    assert sent.body.get("response_format") == response_format
    system = sent.body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n")
    assert json.loads(system["content"].split("JSON Schema:\n", 1)[1]) == SCHEMA


async def test_an_endpoint_without_json_schema_fails_fast_naming_the_setting(
    make_stack: MakeStack,
) -> None:
    async with FakeOpenAI("ollama", response_formats=frozenset({"json_object"})) as fake:
        stack = await start(make_stack, fake)
        node = llm("plan", "Plan.", model="llama3.2:1b", outputSchema=SCHEMA, retry=fast_retry(3))
        _, st = await stack.client.run(request([node]))
    assert st.state == FAILED
    err = node_status(st, "plan").error
    assert err.error_class == graph_pb2.ERROR_CLASS_INVALID and not err.retryable
    assert "not supported" in err.message
    assert "DAGO_OPENAI_STRUCTURED_OUTPUT=json_object or prompt" in err.message
    assert len(fake.requests) == 1


async def test_a_stream_without_usage_counts_zero_and_says_so_once(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with FakeOpenAI("ollama") as fake:
        fake.stream_usage = False
        stack = await start(make_stack, fake)
        for _ in range(2):
            _, st = await stack.client.run(request([llm("a", "hi", model="llama3.2:1b")]))
            assert st.state == COMPLETED, st
            nu = node_status(st, "a").usage
            assert (nu.input_tokens, nu.output_tokens, nu.cost_usd) == (0, 0, 0.0)
    assert caplog.text.count("reported no usage for model 'llama3.2:1b'") == 1


def test_the_structured_output_setting_is_checked() -> None:
    assert load({}).openai_structured_output == "json_schema"
    assert load({"DAGO_OPENAI_STRUCTURED_OUTPUT": "prompt"}).openai_structured_output == "prompt"
    with pytest.raises(ConfigError) as err:
        load({"DAGO_OPENAI_STRUCTURED_OUTPUT": "xml"})
    assert "json_schema, json_object or prompt" in str(err.value)
