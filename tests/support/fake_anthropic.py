"""A fake Anthropic Messages API on 127.0.0.1, for the real ``anthropic`` SDK to talk to.

It is a real HTTP/1.1 server (an asyncio server on the test's event loop): the SDK
is pointed at it with ``DAGO_ANTHROPIC_BASE_URL``. ``POST /v1/messages`` answers
from a script of replies, in order (``default`` when the script is empty):

- ``Text``: a text answer, as SSE (message_start, content_block_start, text
  deltas, content_block_stop, message_delta with usage, message_stop) when the
  request streams, else one JSON message; ``delay`` seconds between deltas
  makes it slow (and a cancelled client shows up as ``closed``); ``thinking``
  is the model's thinking before it (a ``thinking`` block, see below);
- ``ToolUse``: a tool_use block (structured output, or an agent's tool call
  named ``name`` with id ``id``), input sent as input_json_delta pieces, after an
  optional text block ``text`` (streamed as text deltas) and ``thinking``;
- ``Refusal``: the model declines (``stop_reason: refusal``), after any ``text``;
- ``Error``: an HTTP error with Anthropic's error body and any headers
  (``retry-after``);
- ``Stall``: no answer at all (not even headers) until the client gives up;
- ``Broken``: a streamed answer broken after a few events, by a malformed SSE
  frame (``how="malformed"``) or a TCP reset (``how="reset"``).

Before a scripted answer, the request is checked as today's API checks it, per model
(``MODELS``, written from Anthropic's model pages and "What's new" pages, checked
2026-12-07), and refused the same way (status, error type, a message naming the
parameter): an unknown model (404 ``not_found_error``); non-default ``temperature``,
``top_p`` or ``top_k`` on a model that refuses sampling parameters; a ``thinking.type`` or
``output_config.effort`` the model does not accept; ``output_config.format`` or
``strict`` tools on a model without structured outputs; ``tool_choice`` forcing a tool on
a model that refuses forced tool use; a thinking block passed back changed, on another
model or in another conversation (its signature covers the model, the conversation
before it and its text); an assistant turn with tool calls sent back without the
thinking block it came with. A refused request does not consume the script.

Thinking: on a model whose thinking is on (``adaptive``, the default of the 5.x models)
a reply's ``thinking`` comes back as a ``thinking`` block with a signature; its text is
returned only when the request's ``thinking.display`` (or the model's default) is
``summarized``. On a model that writes text between tool calls into thinking blocks
(Sonnet 5.5), a ``ToolUse`` reply's ``text`` comes back that way too.

Prompt caching follows the documented prefix rule: with a top-level ``cache_control``
(automatic caching) the breakpoint is the last block of the prompt (tools, then system,
then messages); a request reads the longest prefix, ending at a block boundary at most
``LOOKBACK`` blocks before its breakpoint, that an earlier request wrote (and not expired),
and writes the rest up to its breakpoint when that prefix is at least the model's minimum
cacheable length. Tokens are counted as 1 per 4 characters of each block's JSON. The
usage then reports input, cache reads and cache writes split by lifetime
(``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``); without
``cache_control``, or with a prompt too short to cache, the scripted usage is reported.

Every request is recorded (headers and JSON body) with its arrival time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from fakehttp import FakeHttpServer


@dataclass(frozen=True)
class Model:
    """What the API accepts from one model (see the module doc)."""

    thinking: tuple[str, ...]
    """Accepted ``thinking.type`` values."""
    efforts: tuple[str, ...] = ()
    sampling: bool = True
    structured: bool = True
    forced_tool: bool = True
    thinking_on: bool = False
    """Thinking is on when the request does not set it (adaptive by default)."""
    display: str = "summarized"
    """The ``thinking.display`` default."""
    text_in_thinking: bool = False
    min_cache: int = 1024
    """The shortest cacheable prefix, in tokens."""


_ALL = ("low", "medium", "high", "xhigh", "max")
_NEW = Model(("adaptive", "disabled"), _ALL, False, thinking_on=True, display="omitted")
_ADAPTIVE_ONLY = Model(("adaptive",), _ALL, False, thinking_on=True, display="omitted")
_OLD = Model(("disabled", "enabled"))

MODELS: dict[str, Model] = {
    "claude-fable-5-2": _ADAPTIVE_ONLY,
    "claude-fable-5-1": _ADAPTIVE_ONLY,
    "claude-fable-5": _ADAPTIVE_ONLY,
    "claude-opus-5-5": _ADAPTIVE_ONLY,
    "claude-opus-5": _NEW,
    "claude-opus-4-8": _NEW,
    "claude-opus-4-7": _NEW,
    "claude-sonnet-5-5": Model(
        ("adaptive", "between_tools"),
        _ALL,
        sampling=False,
        forced_tool=False,
        thinking_on=True,
        display="omitted",
        text_in_thinking=True,
        min_cache=512,
    ),
    "claude-sonnet-5": _NEW,
    # Guessed: the Haiku 5.5 pages found did not say whether sampling parameters are refused
    # or what its minimum cacheable prompt is.
    "claude-haiku-5-5": Model(
        ("adaptive", "disabled"), _ALL, False, thinking_on=True, display="omitted", min_cache=2048
    ),
    "claude-opus-4-6": Model(("adaptive", "disabled", "enabled"), ("low", "medium", "high", "max")),
    "claude-sonnet-4-6": Model(
        ("adaptive", "disabled", "enabled"), ("low", "medium", "high", "max")
    ),
    "claude-opus-4-5": Model(("disabled", "enabled"), ("low", "medium", "high"), min_cache=4096),
    "claude-sonnet-4-5": _OLD,
    "claude-haiku-4-5": Model(("disabled", "enabled"), min_cache=4096),
    "claude-opus-4-1": _OLD,
    "claude-sonnet-4-0": Model(("disabled", "enabled"), structured=False),
    "claude-sonnet-4": Model(("disabled", "enabled"), structured=False),
}
_DATED = re.compile(r"(.+?)-\d{8}")

LOOKBACK = 20
"""How many blocks before its breakpoint a request looks for a cached prefix."""
TTL_S = {"5m": 300.0, "1h": 3600.0}
_SECRET = b"fake-anthropic-thinking"


def model_of(name: str) -> Model | None:
    """The behaviour of model ``name`` (an id or a dated snapshot), or None if unknown."""
    found = MODELS.get(name)
    if found is None and (dated := _DATED.fullmatch(name)):
        found = MODELS.get(dated.group(1))
    return found


@dataclass
class Usage:
    """Token counts a reply reports."""

    input: int = 10
    output: int = 5
    cache_write: int = 0
    cache_read: int = 0
    cache_write_1h: int = 0


@dataclass
class Text:
    """A text answer, streamed in ``chunks`` pieces."""

    text: str
    chunks: int = 4
    usage: Usage = field(default_factory=Usage)
    delay: float = 0.0
    model: str = ""
    thinking: str = ""
    stop: str = "end_turn"
    """The stop reason: ``end_turn``, ``max_tokens``, ``stop_sequence``,
    ``model_context_window_exceeded``..."""


@dataclass
class ToolUse:
    """A tool_use answer whose input is ``input``."""

    input: Any
    name: str = "structured_output"
    usage: Usage = field(default_factory=Usage)
    id: str = "toolu_1"
    text: str = ""
    delay: float = 0.0
    thinking: str = ""
    more: list[tuple[str, str, Any]] = field(default_factory=list)
    """Further tool calls of the same turn: (id, name, input) each, after the first."""


@dataclass
class Refusal:
    """The model declines to answer (``stop_reason: refusal``), after ``text``."""

    text: str = ""
    usage: Usage = field(default_factory=Usage)
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


Reply = Text | ToolUse | Refusal | Error | Stall | Broken
Answer = Text | ToolUse | Refusal


class Refused(Exception):
    """A request the API refuses: ``status``, error ``type`` and ``message``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class FakeAnthropic(FakeHttpServer):
    """``async with FakeAnthropic() as fake``: a running fake; ``fake.url`` is its base URL."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[Reply] = []
        self.default: Reply = Text("Hello from the fake.")
        self.streaming = asyncio.Event()
        self.refusals: list[Refused] = []
        """Requests refused by the API's checks, in order."""
        self.cache: dict[str, float] = {}
        """Cached prefixes: digest -> expiry (monotonic seconds)."""
        self._thought: set[str] = set()
        """Ids of tool calls that came with a thinking block."""
        self.count_tokens = False
        """Count input tokens from the prompt (1 per 4 characters of each block) instead of
        reporting the scripted count, cached or not."""
        self.usages: list[dict[str, Any]] = []
        """The usage of every answered request, in order."""
        self.cap_output = False
        """Report at most the request's max_tokens output tokens (as the API does), whatever
        the scripted count: a budget test lowers max_tokens and sees it honoured."""

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        """Answer ``POST /v1/messages`` from the script, once the request passes the checks."""
        if method != "POST" or not path.startswith("/v1/messages"):
            await self.send_json(writer, 404, _error_body("not_found_error", f"no {path}"))
            return
        try:
            model = check_request(body, self._thought)
        except Refused as e:
            self.refusals.append(e)
            await self.send_json(writer, e.status, _error_body(e.kind, e.message))
            return
        reply = self.script.pop(0) if self.script else self.default
        if isinstance(reply, Error):
            await self.send_json(
                writer, reply.status, _error_body(reply.type, reply.message), reply.headers
            )
            return
        name = body.get("model", "claude-test")
        if isinstance(reply, Stall | Broken):
            await _fault(reply, reader, writer, self, name)
            return
        usage = self._usage(body, model, reply.usage)
        if self.cap_output:
            usage["output_tokens"] = min(usage["output_tokens"], int(body.get("max_tokens", 0)))
        self.usages.append(usage)
        msg = _message(reply, name, body, model, usage)
        for block in msg["content"]:
            if block["type"] == "tool_use" and any(b["type"] == "thinking" for b in msg["content"]):
                self._thought.add(block["id"])
        if not body.get("stream"):
            await self.send_json(writer, 200, msg)
            return
        await self.start_sse(writer)
        self.streaming.set()
        # A client that goes away shows up as EOF on the reader.
        eof = asyncio.ensure_future(reader.read(1))
        try:
            for event, data in _events(msg, getattr(reply, "chunks", 2)):
                if reply.delay and event == "content_block_delta":
                    done, _ = await asyncio.wait({eof}, timeout=reply.delay)
                    if done:
                        self.closed.set()
                        return
                if eof.done():
                    self.closed.set()
                    return
                writer.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                await writer.drain()
        finally:
            eof.cancel()

    def _usage(self, body: dict[str, Any], model: Model | None, scripted: Usage) -> dict[str, Any]:
        """The usage of this request: the scripted one, or the cache's when it asks for one."""
        top = body.get("cache_control")
        blocks = _prompt_blocks(body)
        marks = [i for i, b in enumerate(blocks) if isinstance(b, dict) and b.get("cache_control")]
        if not isinstance(top, dict) and not marks:
            if self.count_tokens:
                counted = _usage(scripted)
                counted["input_tokens"] = sum(
                    max(1, len(_canonical(_strip(b))) // 4) for b in blocks
                )
                return counted
            return _usage(scripted)
        # Automatic caching puts the breakpoint on the last block; explicit ones mark theirs.
        point = len(blocks) - 1 if isinstance(top, dict) else marks[-1]
        ttl = str(
            ((top if isinstance(top, dict) else blocks[point]["cache_control"]) or {}).get(
                "ttl", "5m"
            )
        )
        sizes = [max(1, len(_canonical(_strip(b))) // 4) for b in blocks]
        cumulative = [sum(sizes[: i + 1]) for i in range(len(sizes))]
        digests = _digests(body.get("model", ""), blocks)
        now = time.monotonic()
        read_to = -1
        for i in range(point, max(-1, point - LOOKBACK - 1), -1):
            if self.cache.get(digests[i], 0) > now:
                read_to = i
                break
        read = cumulative[read_to] if read_to >= 0 else 0
        written = 0
        minimum = model.min_cache if model else 1024
        if read_to < 0 and cumulative[point] < minimum and not self.count_tokens:
            return _usage(scripted)  # too short to cache: nothing read, nothing written
        if cumulative[point] >= minimum and read_to < point:
            written = cumulative[point] - read
        if cumulative[point] >= minimum:
            # A write stores the prefix; a hit refreshes it.
            self.cache[digests[point]] = now + TTL_S.get(ttl, 300.0)
        if read_to >= 0:
            self.cache[digests[read_to]] = max(
                self.cache[digests[read_to]], now + TTL_S.get(ttl, 300.0)
            )
        total = cumulative[-1]
        return {
            "input_tokens": total - read - written,
            "output_tokens": scripted.output,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": written if ttl != "1h" else 0,
                "ephemeral_1h_input_tokens": written if ttl == "1h" else 0,
            },
        }


def check_request(body: dict[str, Any], thought: set[str]) -> Model | None:
    """The model of a request the API accepts; raises ``Refused`` as the API would."""
    name = str(body.get("model", ""))
    model = model_of(name)
    if model is None:
        raise Refused(404, "not_found_error", f"model: {name}")
    for param in ("temperature", "top_p", "top_k"):
        # Only non-default values are refused; 1.0 is temperature's default (top_p and top_k
        # have none the pages state, so any value is refused: a guess).
        default = param == "temperature" and body.get(param) == 1
        if param in body and not model.sampling and not default:
            raise Refused(400, "invalid_request_error", f"{param} is deprecated for this model.")
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        if kind not in model.thinking:
            hint = (
                " Use thinking.type.between_tools to turn off up-front thinking."
                if "between_tools" in model.thinking
                else ""
            )
            raise Refused(
                400,
                "invalid_request_error",
                f'thinking.type: "{kind}" is not supported for this model.{hint}',
            )
    config = body.get("output_config") or {}
    effort = config.get("effort")
    if effort is not None and effort not in model.efforts:
        why = (
            f"supported levels: {', '.join(model.efforts)}"
            if model.efforts
            else "this model does not support the effort parameter"
        )
        raise Refused(
            400, "invalid_request_error", f'output_config.effort: "{effort}" is not valid ({why}).'
        )
    if (config.get("format") or body.get("output_format")) and not model.structured:
        raise Refused(
            400,
            "invalid_request_error",
            "output_config.format: structured outputs are not supported on this model.",
        )
    if config.get("format"):
        _check_constrained(config["format"].get("schema") or {}, "output_config.format.schema")
    for i, tool in enumerate(body.get("tools") or []):
        if tool.get("strict") and not model.structured:
            raise Refused(
                400,
                "invalid_request_error",
                f"tools.{i}.strict: strict tool use is not supported on this model.",
            )
        if tool.get("strict"):
            _check_constrained(tool.get("input_schema") or {}, f"tools.{i}.input_schema")
    choice = body.get("tool_choice") or {}
    if choice.get("type") in ("tool", "any") and not model.forced_tool:
        raise Refused(
            400,
            "invalid_request_error",
            "tool_choice: forced tool use is not supported on this model; use "
            'tool_choice {"type": "auto"} and say in the prompt which tool to call.',
        )
    _check_thinking_blocks(body, thought)
    return model


UNCONSTRAINED = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
)
"""JSON Schema keywords constrained decoding refuses (the SDK moves them to descriptions)."""


def _check_constrained(schema: Any, where: str) -> None:
    """Refuse a schema constrained decoding cannot take, as the API does."""
    if isinstance(schema, list):
        for item in schema:
            _check_constrained(item, where)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    for key in UNCONSTRAINED:
        if key in schema:
            raise Refused(
                400,
                "invalid_request_error",
                f"{where}: For '{kind}' type, property '{key}' is not supported",
            )
    if kind == "object" and schema.get("additionalProperties") is not False:
        raise Refused(
            400,
            "invalid_request_error",
            f"{where}: For 'object' type, 'additionalProperties' must be explicitly set to false",
        )
    for key in ("properties", "$defs"):
        for sub in (schema.get(key) or {}).values():
            _check_constrained(sub, where)
    for key in ("items", "anyOf", "allOf"):
        if key in schema:
            _check_constrained(schema[key], where)


def _check_thinking_blocks(body: dict[str, Any], thought: set[str]) -> None:
    messages = body.get("messages") or []
    name = str(body.get("model", ""))
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("role") != "assistant" or not isinstance(content, list):
            continue
        has_thinking = False
        for j, block in enumerate(content):
            if block.get("type") == "thinking":
                has_thinking = True
                if block.get("signature") != _signature(
                    name, messages[:i], str(block.get("thinking", ""))
                ):
                    raise Refused(
                        400,
                        "invalid_request_error",
                        f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block",
                    )
            elif (
                block.get("type") == "tool_use" and block.get("id") in thought and not has_thinking
            ):
                raise Refused(
                    400,
                    "invalid_request_error",
                    f"messages.{i}.content.{j}: Expected `thinking` or `redacted_thinking`, but "
                    "found `tool_use`. When `thinking` is enabled, an `assistant` message with "
                    "tool use must start with the thinking block it came with.",
                )


def _signature(model: str, before: list[Any], thinking: str) -> str:
    # Tied to the model, the conversation before the block and its text, as the API's is.
    digest = hmac.new(_SECRET, _canonical([model, before, thinking]).encode(), hashlib.sha256)
    return digest.hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _strip(block: Any) -> Any:
    """A prompt block without its cache_control (which is not part of the prefix)."""
    if isinstance(block, dict) and "cache_control" in block:
        return {k: v for k, v in block.items() if k != "cache_control"}
    return block


def _prompt_blocks(body: dict[str, Any]) -> list[Any]:
    """The prompt as the cache sees it: tools, then system, then message blocks, in order."""
    blocks: list[Any] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, str) and system:
        blocks.append({"type": "text", "text": system, "_system": True})
    elif isinstance(system, list):
        blocks += [{**b, "_system": True} for b in system]
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            blocks.append({"type": "text", "text": content, "_role": m.get("role")})
        else:
            blocks += [{**b, "_role": m.get("role")} for b in content or []]
    return blocks


def _digests(model: str, blocks: list[Any]) -> list[str]:
    """Per block, the digest of the prompt prefix that ends with it (on this model)."""
    h = hashlib.sha256(model.encode())
    out = []
    for b in blocks:
        h.update(_canonical(_strip(b)).encode())
        out.append(h.copy().hexdigest())
    return out


async def _fault(
    reply: Stall | Broken,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    fake: FakeAnthropic,
    model: str,
) -> None:
    if isinstance(reply, Broken):
        await fake.start_sse(writer)
        msg = _message(Text("a partial answer"), model, {}, None, _usage(Usage()))
        for name, data in _events(msg, 8)[: reply.after]:
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
    return {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": "req_fake",
    }


def _usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input,
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u.cache_write - u.cache_write_1h,
            "ephemeral_1h_input_tokens": u.cache_write_1h,
        },
    }


def _thinking_on(body: dict[str, Any], model: Model | None) -> bool:
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        return thinking.get("type") in ("adaptive", "enabled")
    return model is not None and model.thinking_on


def _display(body: dict[str, Any], model: Model | None) -> str:
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "between_tools":
        return "summarized"  # the progress notes between tool calls are returned as written
    if isinstance(thinking, dict) and thinking.get("display"):
        return str(thinking["display"])
    return model.display if model else "summarized"


def _message(
    reply: Answer, name: str, body: dict[str, Any], model: Model | None, usage: dict[str, Any]
) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    shown = _display(body, model) == "summarized"

    def think(text: str) -> None:
        visible = text if shown else ""
        before = body.get("messages") or []
        content.append(
            {
                "type": "thinking",
                "thinking": visible,
                "signature": _signature(name, before, visible),
            }
        )

    thinking = getattr(reply, "thinking", "")
    if thinking and _thinking_on(body, model):
        think(thinking)
    if isinstance(reply, Text):
        content.append({"type": "text", "text": reply.text})
        stop = reply.stop
        name = reply.model or name
    elif isinstance(reply, Refusal):
        if reply.text:
            content.append({"type": "text", "text": reply.text})
        stop = "refusal"
    else:
        if reply.text:
            # Sonnet 5.5 writes the text between tool calls into a thinking block.
            if model is not None and model.text_in_thinking and body.get("tools"):
                think(reply.text)
            else:
                content.append({"type": "text", "text": reply.text})
        content.append(
            {"type": "tool_use", "id": reply.id, "name": reply.name, "input": reply.input}
        )
        for call_id, tool_name, tool_input in reply.more:
            content.append(
                {"type": "tool_use", "id": call_id, "name": tool_name, "input": tool_input}
            )
        stop = "tool_use"
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage,
    }


def reply_message(reply: Answer, model: str) -> dict[str, Any]:
    """The JSON message ``reply`` is for a plain request to ``model`` (bench/fake_llm.py)."""
    return _message(reply, model, {}, model_of(model), _usage(reply.usage))


def reply_events(reply: Answer, model: str) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events ``reply`` streams for a plain request to ``model``."""
    return _events(reply_message(reply, model), getattr(reply, "chunks", 2))


def split(text: str, n: int) -> list[str]:
    """``text`` in ``n`` pieces (the last takes the remainder)."""
    size = max(1, len(text) // max(1, n))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    return parts or [""]


def _events(msg: dict[str, Any], chunks: int) -> list[tuple[str, dict[str, Any]]]:
    start = {**msg, "content": [], "stop_reason": None}
    start["usage"] = {**msg["usage"], "output_tokens": 1}
    out: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]

    def delta(index: int, d: dict[str, Any]) -> None:
        out.append(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
        )

    for index, block in enumerate(msg["content"]):
        kind = block["type"]
        empty = {
            "text": {"type": "text", "text": ""},
            "thinking": {"type": "thinking", "thinking": "", "signature": ""},
        }.get(kind, {**block, "input": {}})
        out.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
        )
        if kind == "text":
            for piece in split(block["text"], chunks):
                delta(index, {"type": "text_delta", "text": piece})
        elif kind == "thinking":
            if block["thinking"]:
                for piece in split(block["thinking"], 2):
                    delta(index, {"type": "thinking_delta", "thinking": piece})
            delta(index, {"type": "signature_delta", "signature": block["signature"]})
        else:
            for piece in split(json.dumps(block["input"]), 3):
                delta(index, {"type": "input_json_delta", "partial_json": piece})
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
