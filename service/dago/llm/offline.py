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
"""

from __future__ import annotations

import asyncio
import json

from dago.handlers import NodeFailure
from dago.llm.base import LlmRequest, LlmResponse, OnText, TokenUsage
from dago.llm.schema import instance, validation_error
from dago.v1 import graph_pb2

PREFIX_WORDS = 12
CHUNK_WORDS = 3


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

    async def complete(self, request: LlmRequest, on_text: OnText) -> LlmResponse:
        """Stream the offline answer (or return a schema instance)."""
        words_in = len(request.system.split()) + sum(
            len(m.content.split()) for m in request.messages
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
            usage = TokenUsage(input=words_in, output=len(text.split()))
            return LlmResponse(text, usage, "offline", object=obj, stop_reason="tool_use")
        answer = offline_answer(request)
        words = answer.split(" ")
        for i in range(0, len(words), CHUNK_WORDS):
            chunk = " ".join(words[i : i + CHUNK_WORDS])
            on_text(chunk if i == 0 else " " + chunk)
            await asyncio.sleep(0)  # a real stream yields between deltas
        usage = TokenUsage(input=words_in, output=len(words))
        return LlmResponse(answer, usage, "offline", stop_reason="end_turn")
