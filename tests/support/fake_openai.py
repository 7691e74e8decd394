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

Every request is recorded (headers and JSON body) with its arrival time.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

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


class FakeOpenAI(FakeHttpServer):
    """``async with FakeOpenAI() as fake``: a running fake; ``fake.url`` is its base URL."""

    url_suffix = "/v1"

    def __init__(self) -> None:
        super().__init__()
        self.script: list[Reply] = []
        self.default: Reply = Text("Hello from the fake.")

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        """Answer ``POST /v1/chat/completions`` from the script."""
        if method != "POST" or path != "/v1/chat/completions":
            await self.send_json(writer, 404, _error("invalid_request_error", f"no {path}"))
            return
        reply = self.script.pop(0) if self.script else self.default
        if isinstance(reply, Error):
            payload = _error(reply.type, reply.message, reply.code)
            await self.send_json(writer, reply.status, payload, reply.headers)
            return
        model = reply.model or body.get("model", "gpt-test")
        if not body.get("stream"):
            assert isinstance(reply, Text), "the fake streams tool calls only"
            await self.send_json(writer, 200, _completion(reply, model))
            return
        await self.start_sse(writer)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in _chunks(reply, model, include_usage):
            writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        await writer.drain()


def _error(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
    }


def _completion(reply: Text, model: str) -> dict[str, Any]:
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
        "usage": _usage(reply.usage),
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


def _chunks(reply: Text | ToolCall, model: str, include_usage: bool) -> list[dict[str, Any]]:
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
    if include_usage:
        out.append(_chunk(model, [], _usage(reply.usage)))
    return out
