"""The ``anthropic`` provider, through the official SDK (``AsyncAnthropic``).

Calls stream: the SDK makes the request (``messages.with_streaming_response.create`` with
``stream=True``: auth, headers, timeouts, status errors) and dago reads the Server-Sent
Events of the answer itself, keeping only what it uses (text, thinking and tool_use blocks,
usage, model, stop reason); text deltas go to the caller as they arrive. The SDK's own accumulating
stream builds a typed event and a full message snapshot per event, which cost more CPU
than the rest of an LLM node (~2.5 ms per call on a 2-core machine). One client, and so
one HTTP connection pool, serves every call of the worker.

Each request is shaped by the model's row in the catalogue (``dago.llm.models``):

- Structured output: on models with constrained decoding, ``output_config.format`` with the
  node's JSON Schema; the answer is JSON text, checked with ``jsonschema`` (a mismatch, e.g.
  an answer cut by max_tokens, fails the call: decoding was constrained, asking again would
  not help). On models without it, forced tool use: one tool whose ``input_schema`` is the
  schema and ``tool_choice`` naming it, and when the input does not match, the model is
  asked once more with the validation error as the tool result.
- ``effort`` goes as ``output_config.effort``, ``thinking`` as ``thinking.type``;
  ``temperature`` only when the node sets it (models that refuse it are refused at submit).
- Prompt caching: a request with a ``cache_ttl`` carries a top-level ``cache_control``
  (automatic caching: the breakpoint is the last block and moves forward as an agent's
  conversation grows, so every turn reads what the previous one wrote), or, with
  ``cache_system``, a breakpoint on the system prompt (the part that repeats). Usage
  reports cache writes split by lifetime; the 1-hour part is kept for pricing.
- A ``refusal`` stop reason fails the call (PERMANENT: the same prompt is refused again).

Agents: the request's tools go as ``tools`` (name, description, input_schema; ``strict``
on models with structured outputs when the schema closes its object with
``additionalProperties: false``, as strict tool use requires); the model's ``tool_use``
blocks come back as ``LlmResponse.tool_calls``, and the whole assistant turn (thinking
blocks with their signatures, text, tool_use) comes back as ``LlmResponse.raw``, which the
agent sends back unchanged, followed by a user turn of ``tool_result`` blocks
(``is_error`` for failed calls). Text deltas of every turn stream to the caller; on models
that write the text between tool calls into thinking blocks (Sonnet 5.5) the request asks
for that thinking to be returned (``display: summarized``) and its text streams too.

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
from dago.llm import models
from dago.llm.base import (
    ChatMessage,
    LlmRequest,
    LlmResponse,
    OnText,
    ToolCallRequest,
    ToolSpec,
    retry_after,
)
from dago.v1 import graph_pb2

DEFAULT_MODEL = models.DEFAULT_MODEL
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
        info = models.find(request.model)
        try:
            msg = await self._stream(request, messages, on_text, info)
            usage = msg.usage
            if msg.stop_reason == "refusal":
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_PERMANENT,
                    "the model declined to answer (stop_reason refusal); rephrase the prompt",
                    False,
                    usage=usage,
                )
            if request.output_schema is None:
                text = "".join(b.text for b in msg.content if b.type == "text")
                calls = tuple(
                    ToolCallRequest(b.id, b.name, b.input if isinstance(b.input, dict) else {})
                    for b in msg.content
                    if b.type == "tool_use"
                )
                return LlmResponse(
                    text,
                    usage,
                    msg.model,
                    stop_reason=msg.stop_reason,
                    tool_calls=calls,
                    raw=tuple(b.param() for b in msg.content),
                )
            if _native(info):
                return _native_answer(msg, request.output_schema)
            obj, problem, block = _structured(msg, request.output_schema)
            if problem is not None:
                # One repair: show the model its output and what is wrong with it.
                messages.append({"role": "assistant", "content": [_tool_use(block)]})
                messages.append({"role": "user", "content": [_repair(block, problem)]})
                msg = await self._stream(request, messages, on_text, info)
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
        self,
        request: LlmRequest,
        messages: list[dict[str, Any]],
        on_text: OnText,
        info: models.ModelInfo | None,
    ) -> _Reply:
        kwargs = _body(request, messages, info)
        # Text between tool calls that comes back inside thinking blocks is the model talking
        # to the user: stream it like text (other thinking stays out of the deltas).
        narrate = bool(request.tools) and info is not None and info.text_in_thinking
        # Awaited in the attempt's task: cancelling the task closes the HTTP stream at once
        # (leaving the block closes the response, and a connection whose answer was not read
        # to the end is not reused).
        streaming = self._client.messages.with_streaming_response
        async with streaming.create(stream=True, **kwargs) as raw:
            return await _read(raw.http_response, on_text, narrate)


def _native(info: models.ModelInfo | None) -> bool:
    """Structured output through ``output_config.format`` (unknown models: assumed current)."""
    return info is None or info.structured


def _body(
    request: LlmRequest, messages: list[dict[str, Any]], info: models.ModelInfo | None
) -> dict[str, Any]:
    """The Messages API parameters of ``request`` on the model ``info`` describes."""
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
        # Not a named parameter of this SDK release (models of the 5.x generation refuse
        # it); the API still accepts it in the body where the model does.
        kwargs["extra_body"] = {"temperature": request.temperature}
    config: dict[str, Any] = {}
    if request.effort:
        config["effort"] = request.effort
    thinking = request.thinking
    if request.tools and info is not None and info.text_in_thinking:
        # Without a display that returns it, the text between tool calls is withheld.
        thinking = thinking or "adaptive"
    if thinking == "adaptive" and request.tools and info is not None and info.text_in_thinking:
        kwargs["thinking"] = {"type": "adaptive", "display": "summarized"}
    elif thinking:
        kwargs["thinking"] = {"type": thinking}
    if request.cache_ttl in models.CACHE_TTLS:
        cache: dict[str, Any] = {"type": "ephemeral"}
        if request.cache_ttl == "1h":
            cache["ttl"] = "1h"
        if request.cache_system and request.system:
            # A breakpoint after the system prompt: what follows it varies from call to call.
            kwargs["system"] = [{"type": "text", "text": request.system, "cache_control": cache}]
        else:
            kwargs["cache_control"] = cache
    strict = info is None or info.structured
    if request.output_schema is not None and _native(info):
        config["format"] = {"type": "json_schema", "schema": _constrained(request.output_schema)}
    elif request.output_schema is not None:
        kwargs["tools"] = [
            {
                "name": TOOL_NAME,
                "description": "Give your answer as this tool's input.",
                "input_schema": request.output_schema,
            }
        ]
        kwargs["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
    elif request.tools:
        kwargs["tools"] = [_tool(t, strict) for t in request.tools]
    if config:
        kwargs["output_config"] = config
    return kwargs


def _constrained(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` in the subset constrained decoding takes, as the SDK makes it: objects
    closed, bounds it cannot enforce (minimum, maxLength...) moved into descriptions. The
    answer is still checked against the node's own schema, bounds included."""
    try:
        return anthropic.transform_schema(schema)
    except ValueError:
        return schema  # the API says what it cannot take; the node fails with its message


def _tool(t: ToolSpec, strict: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": t.name,
        "description": t.description,
        "input_schema": t.parameters,
    }
    # Strict tool use closes every object: only for tools whose schema is closed already (an
    # open one, like echo's, would lose the arguments it was meant to take).
    if strict and t.parameters.get("additionalProperties") is False:
        out["input_schema"] = _constrained(t.parameters)
        out["strict"] = True
    return out


def _native_answer(msg: _Reply, schema: dict[str, Any]) -> LlmResponse:
    """The object of an ``output_config.format`` answer: its text, parsed and checked."""
    text = "".join(b.text for b in msg.content if b.type == "text")
    try:
        obj = json.loads(text)
        problem = None if isinstance(obj, dict) else "the answer is not a JSON object"
    except json.JSONDecodeError as e:
        obj, problem = None, f"the answer is not JSON ({e.msg}; stop_reason {msg.stop_reason})"
    if problem is None:
        problem = validation_error(schema, obj)
    if problem is not None or not isinstance(obj, dict):
        raise NodeFailure(
            graph_pb2.ERROR_CLASS_PERMANENT,
            f"the model's output does not match output_schema: {problem}",
            False,
            usage=msg.usage,
        )
    return LlmResponse(_json(obj), msg.usage, msg.model, object=obj, stop_reason=msg.stop_reason)


@dataclass
class _Block:
    """One content block of an answer, as far as dago uses it."""

    type: str
    id: str = ""
    name: str = ""
    input: Any = None
    texts: list[str] = field(default_factory=list)
    json_parts: list[str] = field(default_factory=list)
    signature: str = ""
    data: str = ""
    """A ``redacted_thinking`` block's opaque data."""

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def param(self) -> dict[str, Any]:
        """The block as it is sent back in a later request (thinking unchanged)."""
        if self.type == "thinking":
            return {"type": "thinking", "thinking": self.text, "signature": self.signature}
        if self.type == "redacted_thinking":
            return {"type": "redacted_thinking", "data": self.data}
        if self.type == "tool_use":
            return _tool_use(self)
        return {"type": "text", "text": self.text}


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
    split = raw.get("cache_creation")
    if isinstance(split, dict) and isinstance(split.get("ephemeral_1h_input_tokens"), int):
        counts["cache_write_1h_input_tokens"] = split["ephemeral_1h_input_tokens"]
    return replace(usage, **counts) if counts else usage


async def _read(response: httpx2.Response, on_text: OnText, narrate: bool = False) -> _Reply:
    """The answer a Messages API event stream carries; text deltas go to ``on_text``.

    As the SDK's stream does: ``ping`` events and events without a name are skipped, an
    ``error`` event raises ``APIStatusError`` (its ``type`` from the event's body), data that
    is not JSON raises ``JSONDecodeError``. A stream that ends before ``message_stop`` is a
    broken answer, not a short one. Thinking text goes to ``on_text`` when ``narrate``.
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
                elif delta.get("type") == "thinking_delta":
                    text = delta.get("thinking") or ""
                    block.texts.append(text)
                    if narrate:
                        on_text(text)
                elif delta.get("type") == "signature_delta":
                    block.signature += delta.get("signature") or ""
            elif kind == "content_block_start":
                cb = event.get("content_block") or {}
                block = _Block(
                    str(cb.get("type", "")),
                    id=str(cb.get("id", "")),
                    name=str(cb.get("name", "")),
                    input=cb.get("input"),
                )
                if cb.get("text") or cb.get("thinking"):
                    block.texts.append(cb.get("text") or cb["thinking"])
                block.signature = str(cb.get("signature") or "")
                block.data = str(cb.get("data") or "")
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
    if m.raw:
        return {"role": m.role, "content": list(m.raw)}
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
