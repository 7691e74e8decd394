"""The ``offline`` provider: a deterministic local stand-in for a model (no network, no key).

Rule, documented for users of ``make run`` and the examples: the answer to a
prompt is ::

    [offline] <N> words: <the first 12 words of the last user message>…

where N counts the words of the system prompt and every message. The answer
streams in deltas of three words. With an output schema the answer is
``schema.instance(schema)`` (strings read ``"[offline] <property>"``), which is
valid for the schemas dago accepts in practice and is validated like any
provider's output. Usage: input tokens = words in, output tokens = words out;
the model is always ``offline`` and costs nothing.

Pace: by default the answer comes at once. With ``tokens_per_s`` (the setting
``DAGO_OFFLINE_TOKENS_PER_S``, which ``dago dev`` sets to 40) each delta is followed by
the time a model writing that many words per second takes to write it, and a structured
answer waits as long as its words take, so a watcher sees the text stream in and the
node running. The text, the deltas and the usage are the same at any pace.

``stop_sequences``: the answer ends before the first stop sequence it contains
(stop reason ``stop_sequence``); ``max_tokens``: it has at most that many words
(stop reason ``max_tokens``).

Tools (agents), so an offline agent really uses its tools:

1. while no tool has answered in the conversation yet, the model calls every tool
   it is given, once each, in order, with arguments built from the tool's schema:
   ``schema.instance`` of it, where each top-level string property (without enum
   or const) is the first ``http(s)://`` URL of the last user message when the
   property is named ``url``/``uri``/``href`` (or has ``format: uri``), else that
   message's text (both cut to ``maxLength``); its text is
   ``[offline] calling <tools>``;
2. once tool results are in, it answers ``[offline] from <K> tool result(s): <tool>:
   <first 80 characters of the result>; ...`` (``<tool>: error: ...`` for failed
   calls) and ends its turn.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from dago.engine.outcome import NodeFailure, Usage
from dago.engine.output_schema import instance, validation_error
from dago.llm.base import (
    LlmRequest,
    LlmResponse,
    OnText,
    ToolCallRequest,
    ToolOutcome,
    ToolSpec,
)
from dago.v1 import graph_pb2

PREFIX_WORDS = 12
CHUNK_WORDS = 3
RESULT_CHARS = 80
URL = re.compile(r"https?://[^\s\"'<>)]+")
URL_NAMES = ("url", "uri", "href")


def _last_user(request: LlmRequest) -> str:
    return next(
        (m.content for m in reversed(request.messages) if m.role == "user" and m.content), ""
    )


def tool_arguments(spec: ToolSpec, prompt: str) -> dict[str, Any]:
    """The arguments the offline model passes to ``spec`` (rule 1 of the module doc)."""
    args = instance(spec.parameters)
    if not isinstance(args, dict):
        return {}
    props = spec.parameters.get("properties") or {}
    urls = URL.findall(prompt)
    for key in list(args):
        prop = props.get(key)
        if not isinstance(prop, dict) or prop.get("type") != "string":
            continue
        if "enum" in prop or "const" in prop:
            continue
        wants_url = key.lower() in URL_NAMES or prop.get("format") in ("uri", "url")
        value = (urls[0] if urls else args[key]) if wants_url else prompt
        limit = prop.get("maxLength")
        args[key] = value[: int(limit)] if isinstance(limit, int) else value
    return args


def _results(request: LlmRequest) -> list[ToolOutcome]:
    return [r for m in request.messages for r in m.tool_results]


def tool_turn(request: LlmRequest) -> tuple[str, tuple[ToolCallRequest, ...]]:
    """The offline model's turn when it has tools: (text, tool calls) by the module's rule."""
    results = _results(request)
    if not results:
        prompt = _last_user(request)
        calls = tuple(
            ToolCallRequest(f"offline_{i + 1}", t.name, tool_arguments(t, prompt))
            for i, t in enumerate(request.tools)
        )
        return "[offline] calling " + ", ".join(t.name for t in request.tools), calls
    parts = []
    for r in results:
        head = r.content[:RESULT_CHARS] + ("…" if len(r.content) > RESULT_CHARS else "")
        parts.append(f"{r.name}: {'error: ' if r.is_error else ''}{head}")
    return f"[offline] from {len(results)} tool result(s): " + "; ".join(parts), ()


def _limit(request: LlmRequest, answer: str) -> tuple[str, str]:
    """``answer`` cut at the first stop sequence and to max_tokens words, with the reason."""
    reason = "end_turn"
    cut = min((i for i in (answer.find(s) for s in request.stop if s) if i >= 0), default=-1)
    if cut >= 0:
        answer, reason = answer[:cut].rstrip(), "stop_sequence"
    words = answer.split(" ")
    if len(words) > request.max_tokens > 0:
        answer, reason = " ".join(words[: request.max_tokens]), "max_tokens"
    return answer, reason


def offline_answer(request: LlmRequest) -> str:
    """The offline answer to ``request`` (text mode)."""
    words_in = len(request.system.split()) + sum(len(m.content.split()) for m in request.messages)
    last = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    head = last.split()
    summary = " ".join(head[:PREFIX_WORDS]) + ("…" if len(head) > PREFIX_WORDS else "")
    return f"[offline] {words_in} words: {summary}"


class OfflineProvider:
    """Answers from the prompt by the rule above."""

    name = "offline"
    default_model = "offline"

    def __init__(self, tokens_per_s: float = 0.0) -> None:
        self._tokens_per_s = tokens_per_s

    async def _write(self, words: int) -> None:
        """Take as long as writing ``words`` takes at the configured pace (0: no time, but
        still yield: a real stream yields between deltas)."""
        await asyncio.sleep(words / self._tokens_per_s if self._tokens_per_s > 0 else 0)

    async def complete(self, request: LlmRequest, on_text: OnText) -> LlmResponse:
        """Stream the offline answer (or return a schema instance)."""
        words_in = len(request.system.split()) + sum(
            len(m.content.split()) + sum(len(r.content.split()) for r in m.tool_results)
            for m in request.messages
        )
        if request.output_schema is not None:
            obj = instance(request.output_schema)
            problem = validation_error(request.output_schema, obj)
            if not isinstance(obj, dict) or problem:
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_INVALID,
                    f"the offline provider cannot build an instance of this output_schema "
                    f"({problem or 'not an object'}); use a real provider",
                    False,
                )
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
            await self._write(len(text.split()))
            usage = _usage(words_in, len(text.split()))
            return LlmResponse(text, usage, "offline", object=obj, stop_reason="tool_use")
        calls: tuple[ToolCallRequest, ...] = ()
        if request.tools:
            answer, calls = tool_turn(request)
            reason = "tool_use" if calls else "end_turn"
            if not calls:
                answer, reason = _limit(request, answer)
        else:
            answer, reason = _limit(request, offline_answer(request))
        words = answer.split(" ")
        for i in range(0, len(words), CHUNK_WORDS):
            chunk = words[i : i + CHUNK_WORDS]
            on_text(" ".join(chunk) if i == 0 else " " + " ".join(chunk))
            await self._write(len(chunk))  # before the next delta, as a model would take
        usage = _usage(words_in, len(words))
        return LlmResponse(answer, usage, "offline", stop_reason=reason, tool_calls=calls)


def _usage(words_in: int, words_out: int) -> Usage:
    return Usage(
        input_tokens=words_in, output_tokens=words_out, provider="offline", model="offline"
    )
