"""The anthropic provider's reading of a Messages API event stream (it reads the SSE itself;
the SDK makes the request): frames split anywhere between chunks, CR/LF/CRLF line ends,
multi-line data, comments and pings; text and tool_use blocks, usage from message_start
and message_delta; an ``error`` event, a malformed frame and a stream cut short.

The end-to-end paths (the real SDK against the fake Anthropic server, through a worker) are
in test_llm.py, test_agent.py and reliability/test_llm_faults.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest

from dago.engine.outcome import NodeFailure
from dago.llm.anthropic_provider import _read, _SseDecoder, _status_failure
from dago.v1 import graph_pb2


def _frame(data: dict[str, Any], nl: str = "\n") -> str:
    return f"event: {data['type']}{nl}data: {json.dumps(data)}{nl}{nl}"


def _answer(nl: str = "\n") -> str:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {
                "model": "claude-x",
                "usage": {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 4},
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": [1, '},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"é"]}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 9},
        },
        {"type": "message_stop"},
    ]
    return ": a comment" + nl + "".join(_frame(e, nl) for e in events)


def _response(body: bytes, size: int) -> httpx2.Response:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    request = httpx2.Request("POST", "https://api.anthropic.test/v1/messages")
    return httpx2.Response(200, content=chunks(), request=request)


@pytest.mark.parametrize("nl", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("size", [1, 2, 7, 64, 100_000])
async def test_an_answer_read_from_chunks_of_any_size(nl: str, size: int) -> None:
    texts: list[str] = []
    reply = await _read(_response(_answer(nl).encode(), size), texts.append)
    assert texts == ["Hel", "lo"]
    assert reply.model == "claude-x" and reply.stop_reason == "tool_use"
    u = reply.usage
    assert (u.input_tokens, u.output_tokens, u.cache_read_input_tokens) == (12, 9, 4)
    text, tool = reply.content
    assert (text.type, text.text) == ("text", "Hello")
    assert (tool.type, tool.id, tool.name) == ("tool_use", "toolu_9", "f")
    assert tool.input == {"a": [1, "é"]}


def test_decoder_joins_multi_line_data_and_drops_an_unfinished_event() -> None:
    d = _SseDecoder()
    assert d.feed(b"event: x\ndata: a\ndata:b\nid: 3\nretry: 9\n") == []
    assert d.feed(b"\nevent: y\ndata: c") == [("x", b"a\nb")]
    assert d.feed(b"", end=True) == []


async def test_an_error_event_is_an_api_error_classified_by_its_type() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    body = _answer().split("event: content_block_start")[0] + _frame(error)
    with pytest.raises(anthropic.APIStatusError) as e:
        await _read(_response(body.encode(), 5), lambda _: None)
    assert e.value.type == "overloaded_error"
    failure = _status_failure(e.value)
    assert failure.error_class == graph_pb2.ERROR_CLASS_TRANSIENT and failure.retryable
    assert "Overloaded" in failure.message


async def test_a_malformed_frame_raises_json_decode_error() -> None:
    body = _answer().split("event: content_block_start")[0] + 'event: ping\ndata: {"ty\n\n'
    body = body.replace("event: ping", "event: content_block_delta")
    with pytest.raises(json.JSONDecodeError):
        await _read(_response(body.encode(), 64), lambda _: None)


async def test_a_stream_cut_short_is_a_transient_failure_not_a_short_answer() -> None:
    body = _answer().split("event: message_stop")[0]
    texts: list[str] = []
    with pytest.raises(NodeFailure) as e:
        await _read(_response(body.encode(), 64), texts.append)
    assert e.value.error_class == graph_pb2.ERROR_CLASS_TRANSIENT and e.value.retryable
    assert texts == ["Hel", "lo"]
