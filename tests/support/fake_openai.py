"""A fake OpenAI-compatible chat completions API on 127.0.0.1, for the real ``openai`` SDK.

A real HTTP/1.1 server (an asyncio server on the test's event loop); the SDK is
pointed at it with ``DAGO_OPENAI_BASE_URL`` (``fake.url``, ending in ``/v1``).
``POST /v1/chat/completions`` answers from a script of replies, in order
(``default`` when the script is empty):

- ``Text``: an answer, as SSE ``chat.completion.chunk`` events (a role chunk,
  content deltas, a finish chunk, a usage chunk with no choices when
  ``stream_options.include_usage`` is set, then ``data: [DONE]``) when the
  request streams, else one ``chat.completion`` JSON object;
- ``ToolCall``: (streamed) a ``tool_calls`` answer: id and function name first, then
  the arguments JSON in pieces, finish reason ``tool_calls``;
- ``Error``: an HTTP error with OpenAI's error body and any headers (``retry-after``).

``flavour`` makes it answer as one kind of OpenAI-compatible server (what differs, from
each server's documentation and code; docs/llm.md, "OpenAI-compatible endpoints"):

- ``openai``: base URL ``/v1``; a usage chunk with no choices after the finish chunk
  (with ``stream_options.include_usage``), ``prompt_tokens_details.cached_tokens`` in it;
- ``gemini``: base URL ``/v1beta/openai/`` (Google's); the running usage on every chunk
  that has choices (the last one holds the call's totals), no ``prompt_tokens_details``,
  no usage-only chunk;
- ``vllm``: ``/v1``; the usage chunk with ``prompt_tokens_details: null`` (vLLM fills it
  only with ``--enable-prompt-tokens-details``);
- ``ollama``: ``/v1``; the usage chunk without ``prompt_tokens_details`` (Ollama's Usage has
  prompt, completion and total tokens only).

``response_formats`` lists the ``response_format`` types the server accepts (all of
``json_schema`` and ``json_object`` by default); another one is a 400, as from a server
that lacks it.

Every request is recorded (headers and JSON body) with its arrival time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fake_anthropic import split
from fakehttp import FakeHttpServer


@dataclass
class Usage:
    """Token counts a reply reports (``prompt`` includes ``cached``)."""

    prompt: int = 10
    completion: int = 5
    cached: int = 0


@dataclass
class Text:
    """An answer, streamed in ``chunks`` pieces."""

    text: str
    chunks: int = 4
    usage: Usage = field(default_factory=Usage)
    model: str = ""


@dataclass
class Error:
    """An HTTP error reply."""

    status: int
    type: str = "server_error"
    message: str = "scripted error"
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ToolCall:
    """A streamed tool call of function ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any]
    id: str = "call_1"
    usage: Usage = field(default_factory=Usage)
    model: str = ""


Reply = Text | Error | ToolCall
Flavour = Literal["openai", "gemini", "vllm", "ollama"]
PATHS: dict[str, str] = {"gemini": "/v1beta/openai/"}
"""The base URL path of a flavour (``/v1`` when not listed)."""


class FakeOpenAI(FakeHttpServer):
    """``async with FakeOpenAI() as fake``: a running fake; ``fake.url`` is its base URL."""

    def __init__(
        self,
        flavour: Flavour = "openai",
        response_formats: frozenset[str] = frozenset({"json_schema", "json_object"}),
    ) -> None:
        self.url_suffix = PATHS.get(flavour, "/v1")
        super().__init__()
        self.flavour = flavour
        self.response_formats = response_formats
        self.script: list[Reply] = []
        self.default: Reply = Text("Hello from the fake.")
        self.stream_usage = True
        """False: streams carry no usage whatever the request asks (as servers that ignore
        ``stream_options.include_usage``)."""

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        """Answer ``POST /v1/chat/completions`` from the script."""
        if method != "POST" or path != f"{self.url_suffix.rstrip('/')}/chat/completions":
            await self.send_json(writer, 404, _error("invalid_request_error", f"no {path}"))
            return
        kind = (body.get("response_format") or {}).get("type")
        if kind is not None and kind not in self.response_formats:
            message = f"response_format type {kind!r} is not supported"
            await self.send_json(writer, 400, _error("invalid_request_error", message))
            return
        reply = self.script.pop(0) if self.script else self.default
        if isinstance(reply, Error):
            payload = _error(reply.type, reply.message, reply.code)
            await self.send_json(writer, reply.status, payload, reply.headers)
            return
        model = reply.model or body.get("model", "gpt-test")
        if not body.get("stream"):
            assert isinstance(reply, Text), "the fake streams tool calls only"
            await self.send_json(writer, 200, _completion(reply, model, self.flavour))
            return
        await self.start_sse(writer)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        include_usage = include_usage and self.stream_usage
        for chunk in _chunks(reply, model, include_usage, self.flavour):
            writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()


def _error(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(u: Usage, flavour: str = "openai", completion: int | None = None) -> dict[str, Any]:
    """The ``usage`` object as ``flavour`` writes it (``completion``: the output tokens so
    far, for Gemini's running usage)."""
    done = u.completion if completion is None else completion
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt,
        "completion_tokens": done,
        "total_tokens": u.prompt + done,
    }
    if flavour == "openai":
        out["prompt_tokens_details"] = {"cached_tokens": u.cached}
    elif flavour == "vllm":
        out["prompt_tokens_details"] = None
    return out


def _completion(reply: Text, model: str, flavour: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(reply.usage, flavour),
    }


def _chunk(model: str, choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }


def _chunks(
    reply: Text | ToolCall, model: str, include_usage: bool, flavour: str
) -> list[dict[str, Any]]:
    out = _openai_chunks(reply, model)
    if not include_usage:
        return out
    if flavour != "gemini":
        return [*out, _chunk(model, [], _usage(reply.usage, flavour))]
    # Gemini: the running usage on every chunk, the output tokens growing to the total.
    for i, chunk in enumerate(out, 1):
        chunk["usage"] = _usage(reply.usage, flavour, reply.usage.completion * i // len(out))
    return out


def _openai_chunks(reply: Text | ToolCall, model: str) -> list[dict[str, Any]]:
    out = [_chunk(model, [{"index": 0, "delta": {"role": "assistant", "content": ""}}])]
    if isinstance(reply, ToolCall):
        first = {"index": 0, "id": reply.id, "type": "function"}
        first["function"] = {"name": reply.name, "arguments": ""}
        out.append(_chunk(model, [{"index": 0, "delta": {"tool_calls": [first]}}]))
        for piece in split(json.dumps(reply.arguments), 3):
            call = {"index": 0, "function": {"arguments": piece}}
            out.append(_chunk(model, [{"index": 0, "delta": {"tool_calls": [call]}}]))
        finish = "tool_calls"
    else:
        for piece in split(reply.text, reply.chunks):
            out.append(_chunk(model, [{"index": 0, "delta": {"content": piece}}]))
        finish = "stop"
    out.append(_chunk(model, [{"index": 0, "delta": {}, "finish_reason": finish}]))
    return out
