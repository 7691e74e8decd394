"""``make check-anthropic``: does the fake Messages API still speak like the real one?

With ``ANTHROPIC_API_KEY`` set, makes one small call per feature dago relies on, against the
real API and against the fake the tests use (tests/support/fake_anthropic.py), through the
official SDK, and prints what differed: the shape of each answer (event and block types,
stop reason, usage fields, signatures present), never its wording. Features: a streamed
answer; structured output through ``output_config.format``; a tool loop with thinking sent
back unchanged (two turns); a request the model refuses (forced tool use on Sonnet 5.5).

Costs a few cents. Not part of ``make test`` (it needs a key and the network): run it
before a release, and when it reports a difference, teach the fake (and dago) the new shape.
``DAGO_CHECK_MODEL`` picks the model (default: dago's default model). Exits 1 when something
differed, 0 when nothing did or when no key is set.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "support"), str(ROOT / "service")]

from dago.llm import models  # noqa: E402
from fake_anthropic import FakeAnthropic, Text, ToolUse  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"capital": {"type": "string"}},
    "required": ["capital"],
    "additionalProperties": False,
}
TOOL = {
    "name": "lookup",
    "description": "Looks up the capital of a country.",
    "input_schema": {
        "type": "object",
        "properties": {"country": {"type": "string"}},
        "required": ["country"],
        "additionalProperties": False,
    },
    "strict": True,
}
Shape = dict[str, Any]


USED = {
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
}
"""The usage fields dago reads (others the API adds are not compared)."""


def usage_shape(usage: Any) -> list[str]:
    """The usage fields dago reads that an answer reports (present and not None)."""
    return sorted(k for k, v in usage.model_dump().items() if v is not None and k in USED)


async def stream(client: anthropic.AsyncAnthropic, model: str) -> Shape:
    events: list[str] = []
    deltas: set[str] = set()
    async with await client.messages.create(
        model=model,
        max_tokens=256,
        stream=True,
        messages=[{"role": "user", "content": "Say hello in five words."}],
    ) as s:
        async for e in s:
            if not events or events[-1] != e.type:
                events.append(e.type)
            if e.type == "content_block_delta":
                deltas.add(e.delta.type)
    return {"events": events, "delta types": sorted(deltas)}


async def structured(client: anthropic.AsyncAnthropic, model: str) -> Shape:
    msg = await client.messages.create(
        model=model,
        max_tokens=1024,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
    )
    text = "".join(b.text for b in msg.content if b.type == "text")
    try:
        keys = sorted(json.loads(text))
    except ValueError:
        keys = ["(not JSON)"]
    return {
        "blocks": [b.type for b in msg.content if b.type != "thinking"],
        "stop_reason": msg.stop_reason,
        "answer keys": keys,
        "usage": usage_shape(msg.usage),
    }


async def tool_loop(client: anthropic.AsyncAnthropic, model: str) -> Shape:
    thinking: Any = {"type": "adaptive", "display": "summarized"}
    messages: list[Any] = [
        {"role": "user", "content": "Use the lookup tool to find the capital of France."}
    ]
    first = await client.messages.create(
        model=model, max_tokens=2048, messages=messages, tools=[TOOL], thinking=thinking
    )
    calls = [b for b in first.content if b.type == "tool_use"]
    shape: Shape = {
        "turn 1 blocks": sorted({b.type for b in first.content}),
        "turn 1 stop_reason": first.stop_reason,
        "thinking signed": all(b.signature for b in first.content if b.type == "thinking"),
    }
    if not calls:
        return shape
    # The turn goes back unchanged (thinking blocks with their signatures), as dago's agents do.
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": c.id, "content": "Paris"} for c in calls
            ],
        }
    )
    second = await client.messages.create(
        model=model, max_tokens=2048, messages=messages, tools=[TOOL], thinking=thinking
    )
    shape["turn 2 stop_reason"] = second.stop_reason
    shape["turn 2 has text"] = any(b.type == "text" for b in second.content)
    return shape


async def refused(client: anthropic.AsyncAnthropic, model: str) -> Shape:
    try:
        await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "lookup"},
        )
    except anthropic.APIStatusError as e:
        return {
            "status": e.status_code,
            "error type": e.type,
            "names tool_choice": "tool_choice" in str(e.message),
        }
    return {"status": 200}


FEATURES: list[
    tuple[str, Callable[[anthropic.AsyncAnthropic, str], Awaitable[Shape]], list[Any]]
] = [
    ("stream", stream, [Text("Hello there, how are you?")]),
    ("structured output", structured, [Text(json.dumps({"capital": "Paris"}))]),
    (
        "tool loop with thinking",
        tool_loop,
        [
            ToolUse(
                {"country": "France"}, "lookup", text="Looking it up.", thinking="Use the tool."
            ),
            Text("The capital of France is Paris.", thinking="It said Paris."),
        ],
    ),
    ("refused forced tool use (Sonnet 5.5)", refused, []),
]


async def shapes(
    client: anthropic.AsyncAnthropic, model: str, fake: FakeAnthropic | None
) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for name, run, script in FEATURES:
        if fake is not None:
            fake.script = list(script)
        try:
            out[name] = await run(client, model)
        except anthropic.APIStatusError as e:
            out[name] = {"error": f"{e.status_code} {e.type}: {e.message}"}
    return out


async def main() -> int:
    key = os.environ.get("ANTHROPIC_API_KEY", "").strip()
    if not key:
        print("check-anthropic: ANTHROPIC_API_KEY is not set: nothing checked")
        return 0
    model = os.environ.get("DAGO_CHECK_MODEL") or models.DEFAULT_MODEL
    real = anthropic.AsyncAnthropic(api_key=key, max_retries=2)
    async with FakeAnthropic() as fake:
        faked = anthropic.AsyncAnthropic(api_key="fake", base_url=fake.url, max_retries=0)
        want = await shapes(real, model, None)
        got = await shapes(faked, model, fake)
        await faked.close()
    await real.close()
    differed = False
    print(f"check-anthropic: {model}, real API vs tests/support/fake_anthropic.py")
    for name, real_shape in want.items():
        fake_shape = got[name]
        diffs = [
            f"    {k}: real {real_shape.get(k)!r}, fake {fake_shape.get(k)!r}"
            for k in sorted(set(real_shape) | set(fake_shape))
            if real_shape.get(k) != fake_shape.get(k)
        ]
        differed = differed or bool(diffs)
        print(f"  {name}: " + ("same" if not diffs else "DIFFERS"))
        for line in diffs:
            print(line)
    return 1 if differed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
