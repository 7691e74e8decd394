"""The ``anthropic`` provider, through the official SDK (``AsyncAnthropic``).

Calls stream: the SDK makes the request (``messages.with_streaming_response.create`` with
``stream=True``: auth, headers, timeouts, status errors) and dago reads the Server-Sent
Events of the answer itself, keeping only what it uses (text, tool_use blocks, usage, model,
stop reason); text deltas go to the caller as they arrive. The SDK's own accumulating
stream builds a typed event and a full message snapshot per event, which cost more CPU
than the rest of an LLM node (~2.5 ms per call on a 2-core machine). One client, and so
one HTTP connection pool, serves every call of the worker.
Structured output is forced tool use: one tool whose ``input_schema`` is the
node's output schema and ``tool_choice`` naming it; the tool input is checked
with ``jsonschema`` and, when it does not match, the model is asked once more
with the validation error as the tool result.

Agents: the request's tools go as ``tools`` (name, description, input_schema); the
model's ``tool_use`` blocks come back as ``LlmResponse.tool_calls`` and an assistant
turn that made calls is sent back as its text and ``tool_use`` blocks, followed by a
user turn of ``tool_result`` blocks (``is_error`` for failed calls). Text deltas of
every turn still stream to the caller.

The SDK's own retries are off (``max_retries=0``): dago's retry policy decides,
and a ``retry-after`` the API sends is passed on as ``NodeFailure.retry_after``.
Errors: 429 → RATE_LIMITED, 529/5xx/connection errors → TRANSIENT, timeouts →
TIMEOUT (all retryable); 400/401/403/404/413/422 fail at once with a message
saying what to fix. The API key is given to the SDK only; it is never logged
and never part of an error message, event or result.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import httpx
import httpx2

from dago.engine.outcome import NodeFailure, Usage
from dago.engine.output_schema import validation_error
from dago.llm.base import (
    ChatMessage,
    LlmRequest,
    LlmResponse,
    OnText,
    ToolCallRequest,
    retry_after,
)
from dago.v1 import graph_pb2

DEFAULT_MODEL = "claude-sonnet-4-6"
TOOL_NAME = "structured_output"

_FIX = {
    400: "check the node's model, max_tokens, temperature, messages and output_schema",
    401: "check ANTHROPIC_API_KEY",
    403: "check that the API key may use this model and workspace",
    404: "check the model name and DAGO_ANTHROPIC_BASE_URL",
    413: "the request is too large: shorten the prompt",
    422: "check the node's parameters",
}


class AnthropicProvider:
    """Claude through the Messages API."""

    name = "anthropic"
    default_model = DEFAULT_MODEL

    def __init__(self, api_key: str, base_url: str = "", timeout_s: float = 600.0) -> None:
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url or None,
            max_retries=0,
            timeout=timeout_s,
        )

    async def close(self) -> None:
        """Release the HTTP connection pool."""
        await self._client.close()

    async def complete(self, request: LlmRequest, on_text: OnText) -> LlmResponse:
        """One call (two with a schema repair); raises NodeFailure classified as above."""
        messages = [_message(m) for m in request.messages]
        try:
            msg = await self._stream(request, messages, on_text)
            usage = msg.usage
            if request.output_schema is None:
                text = "".join(b.text for b in msg.content if b.type == "text")
                calls = tuple(
                    ToolCallRequest(b.id, b.name, b.input if isinstance(b.input, dict) else {})
                    for b in msg.content
                    if b.type == "tool_use"
                )
                return LlmResponse(
                    text, usage, msg.model, stop_reason=msg.stop_reason, tool_calls=calls
                )
            obj, problem, block = _structured(msg, request.output_schema)
            if problem is not None:
                # One repair: show the model its output and what is wrong with it.
                messages.append({"role": "assistant", "content": [_tool_use(block)]})
                messages.append({"role": "user", "content": [_repair(block, problem)]})
                msg = await self._stream(request, messages, on_text)
                usage = usage + msg.usage
                obj, problem, _ = _structured(msg, request.output_schema)
            if problem is not None or obj is None:
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_PERMANENT,
                    f"the model's output does not match output_schema after one repair: {problem}",
                    False,
                    usage=usage,
                )
            text = _json(obj)
            return LlmResponse(text, usage, msg.model, object=obj, stop_reason="tool_use")
        except anthropic.APIStatusError as e:
            raise _status_failure(e) from None
        except anthropic.APITimeoutError:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TIMEOUT, "the Anthropic API timed out", True
            ) from None
        except anthropic.APIConnectionError as e:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TRANSIENT,
                f"cannot reach the Anthropic API ({type(e.__cause__ or e).__name__}); check "
                "the network or DAGO_ANTHROPIC_BASE_URL",
                True,
            ) from None
        except (httpx2.TransportError, httpx.TransportError) as e:
            # The SDK does not wrap errors raised while the stream is read (its transport is
            # httpx2 in this release, httpx in others).
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TRANSIENT,
                f"the connection to the Anthropic API broke off mid-answer ({type(e).__name__})",
                True,
            ) from None
        except json.JSONDecodeError as e:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TRANSIENT,
                f"the Anthropic API sent a malformed stream event ({e.msg})",
                True,
            ) from None

    async def _stream(
        self, request: LlmRequest, messages: list[dict[str, Any]], on_text: OnText
    ) -> _Reply:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": messages,
        }
        if request.system:
            kwargs["system"] = request.system
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        if "user_id" in request.metadata:
            kwargs["metadata"] = {"user_id": request.metadata["user_id"]}
        if request.temperature is not None:
            # Not a named parameter of every SDK release; the API accepts it in the body.
            kwargs["extra_body"] = {"temperature": request.temperature}
        if request.output_schema is not None:
            kwargs["tools"] = [
                {
                    "name": TOOL_NAME,
                    "description": "Give your answer as this tool's input.",
                    "input_schema": request.output_schema,
                }
            ]
            kwargs["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
        elif request.tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        # Awaited in the attempt's task: cancelling the task closes the HTTP stream at once
        # (leaving the block closes the response, and a connection whose answer was not read
        # to the end is not reused).
        streaming = self._client.messages.with_streaming_response
        async with streaming.create(stream=True, **kwargs) as raw:
            return await _read(raw.http_response, on_text)


@dataclass
class _Block:
    """One content block of an answer, as far as dago uses it."""

    type: str
    id: str = ""
    name: str = ""
    input: Any = None
    texts: list[str] = field(default_factory=list)
    json_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.texts)


@dataclass
class _Reply:
    """A whole answer, accumulated from its stream events."""

    model: str = ""
    stop_reason: str = ""
    usage: Usage = field(default_factory=lambda: Usage(provider=AnthropicProvider.name))
    """The counts, labelled with ``model`` once the answer is read."""
    content: list[_Block] = field(default_factory=list)


_USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
"""The counts of the API's usage objects (``Usage`` has the same names)."""


def _merge_usage(usage: Usage, raw: Any) -> Usage:
    """``usage`` with the counts ``raw`` (an event's usage object) gives; the others kept."""
    if not isinstance(raw, dict):
        return usage
    counts: dict[str, Any] = {
        name: int(raw[name]) for name in _USAGE_FIELDS if isinstance(raw.get(name), int)
    }
    return replace(usage, **counts) if counts else usage


async def _read(response: httpx2.Response, on_text: OnText) -> _Reply:
    """The answer a Messages API event stream carries; text deltas go to ``on_text``.

    As the SDK's stream does: ``ping`` events and events without a name are skipped, an
    ``error`` event raises ``APIStatusError`` (its ``type`` from the event's body), data that
    is not JSON raises ``JSONDecodeError``. A stream that ends before ``message_stop`` is a
    broken answer, not a short one.
    """
    reply = _Reply()
    blocks: dict[int, _Block] = {}
    started = stopped = False
    decoder = _SseDecoder()
    async for chunk in _chunks(response):
        for name, data in decoder.feed(chunk, end=not chunk):
            if name == "error":
                try:
                    body: Any = json.loads(data)
                    message = f"{body}"
                except ValueError:
                    body = data.decode("utf-8", "replace")
                    message = body or f"Error code: {response.status_code}"
                raise anthropic.APIStatusError(message, response=response, body=body)
            if name == "ping" or not name or not data:
                continue
            event = json.loads(data)
            kind = event.get("type")
            if kind == "content_block_delta":
                block = blocks.get(event.get("index", -1))
                delta = event.get("delta") or {}
                if block is None:
                    continue
                if delta.get("type") == "text_delta":
                    text = delta.get("text") or ""
                    block.texts.append(text)
                    on_text(text)
                elif delta.get("type") == "input_json_delta":
                    block.json_parts.append(delta.get("partial_json") or "")
            elif kind == "content_block_start":
                cb = event.get("content_block") or {}
                block = _Block(
                    str(cb.get("type", "")),
                    id=str(cb.get("id", "")),
                    name=str(cb.get("name", "")),
                    input=cb.get("input"),
                )
                if cb.get("text"):
                    block.texts.append(cb["text"])
                blocks[event.get("index", len(blocks))] = block
            elif kind == "message_start":
                started = True
                msg = event.get("message") or {}
                reply.model = str(msg.get("model") or "")
                reply.usage = _merge_usage(reply.usage, msg.get("usage"))
            elif kind == "message_delta":
                reply.stop_reason = str((event.get("delta") or {}).get("stop_reason") or "")
                reply.usage = _merge_usage(reply.usage, event.get("usage"))
            elif kind == "message_stop":
                stopped = True
    if not (started and stopped):
        raise NodeFailure(
            graph_pb2.ERROR_CLASS_TRANSIENT,
            "the Anthropic API's answer stream ended before the answer did",
            True,
        )
    for block in blocks.values():
        if block.json_parts:
            joined = "".join(block.json_parts)
            block.input = json.loads(joined) if joined.strip() else {}
        elif block.type == "tool_use" and block.input is None:
            block.input = {}
    reply.content = [blocks[i] for i in sorted(blocks)]
    reply.usage = replace(reply.usage, model=reply.model)
    return reply


async def _chunks(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The body of ``response`` as it arrives, then b"" for its end."""
    async for chunk in response.aiter_bytes():
        if chunk:
            yield chunk
    yield b""


class _SseDecoder:
    """Server-Sent Events from the bytes of a stream: (event name, data) per event.

    Lines end with LF, CR or CRLF (a CR at the end of a chunk waits for the next one, in
    case it is half of a CRLF); a blank line ends an event; multi-line data is joined with
    LF; comments and the id and retry fields are ignored; an unfinished event at the end of
    the stream is dropped."""

    def __init__(self) -> None:
        self._rest = b""
        self._name = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes, end: bool = False) -> list[tuple[str, bytes]]:
        """The events ``chunk`` completes; ``end``: the stream is over (its data is b"")."""
        buf = self._rest + chunk if self._rest else chunk
        lines = buf.splitlines(keepends=True)
        self._rest = b""
        if lines and not lines[-1].endswith(b"\n"):
            # Unterminated, or ending in a CR whose LF may come next: wait for more; at the
            # end a CR-terminated line counts and an unterminated one is dropped.
            last = lines.pop()
            if not end:
                self._rest = last
            elif last.endswith(b"\r"):
                lines.append(last)
        out: list[tuple[str, bytes]] = []
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                if self._name or self._data:
                    out.append((self._name, b"\n".join(self._data)))
                self._name = ""
                self._data = []
                continue
            if line.startswith(b":"):
                continue
            key, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if key == b"data":
                self._data.append(value)
            elif key == b"event":
                self._name = value.decode("utf-8", "replace")
        return out


def _message(m: ChatMessage) -> dict[str, Any]:
    """The Messages API form of one turn (content blocks when it carries tool use)."""
    if m.tool_results:
        results: list[dict[str, Any]] = [
            {
                "type": "tool_result",
                "tool_use_id": r.call_id,
                "content": r.content,
                **({"is_error": True} if r.is_error else {}),
            }
            for r in m.tool_results
        ]
        return {"role": m.role, "content": results}
    if m.tool_calls:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
            for c in m.tool_calls
        ]
        return {"role": m.role, "content": blocks}
    return {"role": m.role, "content": m.content}


def _structured(
    msg: _Reply, schema: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None, _Block | None]:
    block = next((b for b in msg.content if b.type == "tool_use" and b.name == TOOL_NAME), None)
    if block is None:
        return None, "the model did not call the structured_output tool", None
    obj = block.input
    if not isinstance(obj, dict):
        return None, "the tool input is not an object", block
    return obj, validation_error(schema, obj), block


def _tool_use(block: _Block | None) -> dict[str, Any]:
    if block is None:
        return {"type": "text", "text": "(no structured output)"}
    return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}


def _repair(block: _Block | None, problem: str) -> dict[str, Any]:
    text = (
        f"That input does not match the required JSON Schema ({problem}). "
        f"Call {TOOL_NAME} again with an input that matches it."
    )
    if block is None:
        return {"type": "text", "text": text}
    return {"type": "tool_result", "tool_use_id": block.id, "is_error": True, "content": text}


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _status_failure(e: anthropic.APIStatusError) -> NodeFailure:
    status = e.status_code
    kind = e.type or ""
    detail = e.api_message or kind or "no detail"
    after = retry_after(e.response.headers)
    where = f"{status} from Anthropic" + (f" ({kind})" if kind else "")
    if status == 429 or kind == "rate_limit_error":
        return NodeFailure(graph_pb2.ERROR_CLASS_RATE_LIMITED, f"{where}: {detail}", True, after)
    if status == 408:
        return NodeFailure(graph_pb2.ERROR_CLASS_TIMEOUT, f"{where}: {detail}", True, after)
    if status >= 500 or kind in ("overloaded_error", "api_error") or status < 400:
        # 529 is "overloaded"; an error event inside a 200 stream lands here too.
        return NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, f"{where}: {detail}", True, after)
    fix = _FIX.get(status, "the request was refused; retrying will not help")
    return NodeFailure(graph_pb2.ERROR_CLASS_INVALID, f"{where}: {detail}; {fix}", False)
