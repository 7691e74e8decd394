"""A fake Anthropic Messages API on 127.0.0.1, for the real ``anthropic`` SDK to talk to.

It is a real HTTP/1.1 server (an asyncio server on the test's event loop): the SDK
is pointed at it with ``DAGO_ANTHROPIC_BASE_URL``. ``POST /v1/messages`` answers
from a script of replies, in order (``default`` when the script is empty):

- ``Text``: a text answer, as SSE (message_start, content_block_start, text
  deltas, content_block_stop, message_delta with usage, message_stop) when the
  request streams, else one JSON message; ``delay`` seconds between deltas
  makes it slow (and a cancelled client shows up as ``closed``);
- ``ToolUse``: a tool_use block (structured output, or an agent's tool call
  named ``name`` with id ``id``), input sent as input_json_delta pieces, after an
  optional text block ``text`` (streamed as text deltas);
- ``Error``: an HTTP error with Anthropic's error body and any headers
  (``retry-after``);
- ``Stall``: no answer at all (not even headers) until the client gives up;
- ``Broken``: a streamed answer broken after a few events, by a malformed SSE
  frame (``how="malformed"``) or a TCP reset (``how="reset"``).

Every request is recorded (headers and JSON body) with its arrival time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from fakehttp import FakeHttpServer


@dataclass
class Usage:
    """Token counts a reply reports."""

    input: int = 10
    output: int = 5
    cache_write: int = 0
    cache_read: int = 0


@dataclass
class Text:
    """A text answer, streamed in ``chunks`` pieces."""

    text: str
    chunks: int = 4
    usage: Usage = field(default_factory=Usage)
    delay: float = 0.0
    model: str = ""


@dataclass
class ToolUse:
    """A tool_use answer whose input is ``input``."""

    input: Any
    name: str = "structured_output"
    usage: Usage = field(default_factory=Usage)
    id: str = "toolu_1"
    text: str = ""
    delay: float = 0.0


@dataclass
class Error:
    """An HTTP error reply."""

    status: int
    type: str = "api_error"
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """No answer at all, not even the headers, until the client goes away."""


@dataclass
class Broken:
    """A streamed text answer broken after ``after`` SSE events: ``how`` is ``malformed`` (a
    frame whose data is not JSON) or ``reset`` (the connection is reset with a TCP RST)."""

    how: str
    after: int = 3


Reply = Text | ToolUse | Error | Stall | Broken


class FakeAnthropic(FakeHttpServer):
    """``async with FakeAnthropic() as fake``: a running fake; ``fake.url`` is its base URL."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[Reply] = []
        self.default: Reply = Text("Hello from the fake.")
        self.streaming = asyncio.Event()

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        """Answer ``POST /v1/messages`` from the script."""
        if method != "POST" or not path.startswith("/v1/messages"):
            await self.send_json(writer, 404, _error_body("not_found_error", f"no {path}"))
            return
        reply = self.script.pop(0) if self.script else self.default
        if isinstance(reply, Error):
            await self.send_json(
                writer, reply.status, _error_body(reply.type, reply.message), reply.headers
            )
            return
        model = body.get("model", "claude-test")
        if isinstance(reply, Stall | Broken):
            await _fault(reply, reader, writer, self, model)
            return
        if not body.get("stream"):
            await self.send_json(writer, 200, _message(reply, model))
            return
        await self.start_sse(writer)
        self.streaming.set()
        # A client that goes away shows up as EOF on the reader.
        eof = asyncio.ensure_future(reader.read(1))
        try:
            for name, data in _events(reply, model):
                if reply.delay and name == "content_block_delta":
                    done, _ = await asyncio.wait({eof}, timeout=reply.delay)
                    if done:
                        self.closed.set()
                        return
                if eof.done():
                    self.closed.set()
                    return
                writer.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                await writer.drain()
        finally:
            eof.cancel()


async def _fault(
    reply: Stall | Broken,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    fake: FakeAnthropic,
    model: str,
) -> None:
    if isinstance(reply, Broken):
        await fake.start_sse(writer)
        for name, data in _events(Text("a partial answer", chunks=8), model)[: reply.after]:
            writer.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await writer.drain()
        if reply.how == "reset":
            # SO_LINGER 0: close() sends a RST instead of a FIN.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            fake.closed.set()
            return
        writer.write(b'event: content_block_delta\ndata: {"type": "content_block_delta", "ind\n\n')
        await writer.drain()
    await reader.read(1)  # until the client goes away
    fake.closed.set()


def _error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _usage(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": u.input,
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
    }


def _message(reply: Text | ToolUse, model: str) -> dict[str, Any]:
    if isinstance(reply, Text):
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}]
        stop = "end_turn"
        model = reply.model or model
    else:
        content = [{"type": "text", "text": reply.text}] if reply.text else []
        content.append(
            {"type": "tool_use", "id": reply.id, "name": reply.name, "input": reply.input}
        )
        stop = "tool_use"
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(reply.usage),
    }


def split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` pieces (the last takes the remainder)."""
    size = max(1, len(text) // max(1, n))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    return parts or [""]


def _events(reply: Text | ToolUse, model: str) -> list[tuple[str, dict[str, Any]]]:
    msg = _message(reply, model)
    start = {**msg, "content": [], "stop_reason": None}
    start["usage"] = {**msg["usage"], "output_tokens": 1}
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    text = reply.text
    index = 0
    if text or isinstance(reply, Text):
        out.append(
            (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        for piece in split(text, reply.chunks if isinstance(reply, Text) else 2):
            delta = {"type": "text_delta", "text": piece}
            out.append(
                ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    if isinstance(reply, ToolUse):
        block = {"type": "tool_use", "id": reply.id, "name": reply.name, "input": {}}
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        for piece in split(json.dumps(reply.input), 3):
            delta = {"type": "input_json_delta", "partial_json": piece}
            out.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    out.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": msg["usage"]["output_tokens"]},
            },
        )
    )
    out.append(("message_stop", {"type": "message_stop"}))
    return out
