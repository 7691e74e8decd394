"""The ``openai`` provider: OpenAI-compatible chat completions through the official SDK.

``AsyncOpenAI(base_url=DAGO_OPENAI_BASE_URL, api_key=...)`` covers OpenAI and the
servers that speak its API (Ollama, vLLM, LM Studio). Calls stream
(``chat.completions.create(stream=True, stream_options={"include_usage": True})``);
text deltas go to the caller as they arrive, and the final chunk carries the usage.

Usage: ``prompt_tokens`` includes the cached prompt tokens
(``prompt_tokens_details.cached_tokens``); they are recorded as cache reads and
the rest as input, so the price table bills each at its own rate. There are no
cache writes.

Structured output follows ``DAGO_OPENAI_STRUCTURED_OUTPUT``, what the endpoint supports:
``json_schema`` (default: ``response_format={"type": "json_schema", ...}`` with the node's
output schema; OpenAI, Gemini, vLLM, Ollama), ``json_object`` (JSON mode, the schema in
the system prompt) or ``prompt`` (the schema in the system prompt only, for servers
without ``response_format``). Either way the answer (a Markdown code fence around it
removed) is parsed and checked with ``jsonschema`` and, when it does not match, the model
is asked once more with the validation error. (Structured answers are not streamed as
text deltas, as with the anthropic provider's forced tool use.)

Compatible servers differ in what they report: ``prompt_tokens_details`` (cached tokens)
is OpenAI's (vLLM sends it only with ``--enable-prompt-tokens-details``; Ollama and
Gemini's endpoint leave it out: no cache reads then); Gemini's endpoint repeats the
running usage on every chunk, so the last usage seen is the call's (never a sum). A
stream without any usage (a server ignoring ``stream_options.include_usage``) counts
zero tokens, logged once per model.

Agents: the request's tools go as ``tools`` of type ``function``; the streamed
``tool_calls`` deltas (id and name first, then the arguments JSON in pieces) are put
together into ``LlmResponse.tool_calls``. An assistant turn that made calls is sent
back with its ``tool_calls``, and each result as a ``tool`` message (failed calls
say so in their content: the chat API has no error flag).

The SDK's own retries are off (``max_retries=0``): dago's retry policy decides,
and a ``retry-after`` the server sends is passed on as ``NodeFailure.retry_after``.
Errors: 429 → RATE_LIMITED, 5xx/connection errors → TRANSIENT, timeouts → TIMEOUT
(all retryable); 400/401/403/404/413/422 fail at once with a message saying what
to fix. The API key is given to the SDK only; it is never logged and never part
of an error message, event or result.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import openai

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

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
SCHEMA_NAME = "structured_output"

_FIX = {
    400: "check the node's model, max_tokens, temperature, messages and output_schema "
    "(a server without json_schema response formats needs DAGO_OPENAI_STRUCTURED_OUTPUT="
    "json_object or prompt)",
    401: "check OPENAI_API_KEY (or DAGO_OPENAI_API_KEY)",
    403: "check that the API key may use this model and project",
    404: "check the model name and DAGO_OPENAI_BASE_URL (it usually ends in /v1)",
    413: "the request is too large: shorten the prompt",
    422: "check the node's parameters",
}


class OpenAIProvider:
    """Chat completions of an OpenAI-compatible server."""

    name = "openai"
    default_model = DEFAULT_MODEL

    def __init__(
        self,
        api_key: str,
        base_url: str = "",
        timeout_s: float = 600.0,
        *,
        structured_output: str = "json_schema",
    ) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            max_retries=0,
            timeout=timeout_s,
        )
        self._structured_output = structured_output
        self._no_usage_warned: set[str] = set()

    async def close(self) -> None:
        """Release the HTTP connection pool."""
        await self._client.close()

    async def complete(self, request: LlmRequest, on_text: OnText) -> LlmResponse:
        """One call (two with a schema repair); raises NodeFailure classified as above."""
        messages: list[dict[str, Any]] = []
        system = request.system
        if request.output_schema is not None and self._structured_output != "json_schema":
            system = "\n\n".join(s for s in (system, _schema_instruction(request)) if s)
        if system:
            messages.append({"role": "system", "content": system})
        for m in request.messages:
            messages += _messages(m)
        calls: list[ToolCallRequest] = []
        try:
            if request.output_schema is None:
                text, usage, model, stop = await self._stream(request, messages, on_text, calls)
                return LlmResponse(text, usage, model, stop_reason=stop, tool_calls=tuple(calls))
            text, usage, model, stop = await self._stream(request, messages, None)
            obj, problem = _structured(text, request.output_schema)
            if problem is not None:
                # One repair: show the model its output and what is wrong with it.
                messages.append({"role": "assistant", "content": text})
                messages.append(
                    {
                        "role": "user",
                        "content": f"That answer does not match the required JSON Schema "
                        f"({problem}). Answer again with JSON that matches it.",
                    }
                )
                text, more, model, stop = await self._stream(request, messages, None)
                usage = usage + more
                obj, problem = _structured(text, request.output_schema)
            if problem is not None or obj is None:
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_PERMANENT,
                    f"the model's output does not match output_schema after one repair: {problem}",
                    False,
                    usage=usage,
                )
            return LlmResponse(_json(obj), usage, model, object=obj, stop_reason=stop)
        except openai.APIStatusError as e:
            raise _status_failure(e) from None
        except openai.APITimeoutError:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TIMEOUT, "the OpenAI-compatible API timed out", True
            ) from None
        except openai.APIConnectionError as e:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TRANSIENT,
                f"cannot reach the OpenAI-compatible API ({type(e.__cause__ or e).__name__}); "
                "check the network or DAGO_OPENAI_BASE_URL",
                True,
            ) from None
        except openai.APIError as e:
            # An error event inside a 200 stream: the server failed mid-answer.
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_TRANSIENT,
                f"the OpenAI-compatible API failed while answering: {_detail(e.body) or e.message}",
                True,
            ) from None

    async def _stream(
        self,
        request: LlmRequest,
        messages: list[dict[str, Any]],
        on_text: OnText | None,
        calls: list[ToolCallRequest] | None = None,
    ) -> tuple[str, Usage, str, str]:
        """(text, usage, model, finish reason) of one streamed call (the model: the one that
        answered, else the one asked for); the tool calls the model made are appended to
        ``calls``."""
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.stop:
            kwargs["stop"] = list(request.stop)
        if "user_id" in request.metadata:
            kwargs["user"] = request.metadata["user_id"]
        if request.output_schema is not None:
            if self._structured_output == "json_schema":
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": SCHEMA_NAME, "schema": request.output_schema},
                }
            elif self._structured_output == "json_object":
                kwargs["response_format"] = {"type": "json_object"}
        elif request.tools:
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    },
                }
                for t in request.tools
            ]
        pending: dict[int, list[str]] = {}  # index -> [id, name, arguments so far]
        parts: list[str] = []
        counts: Any = None
        model = ""
        stop = ""
        # Awaited in the attempt's task: cancelling the task closes the HTTP stream at once.
        stream = await self._client.chat.completions.create(**kwargs)
        try:
            async for chunk in stream:
                model = chunk.model or model
                if chunk.usage is not None:
                    counts = chunk.usage
                for choice in chunk.choices:
                    if choice.finish_reason:
                        stop = choice.finish_reason
                    for tc in (choice.delta.tool_calls if choice.delta else None) or []:
                        slot = pending.setdefault(tc.index, ["", "", ""])
                        slot[0] = tc.id or slot[0]
                        if tc.function is not None:
                            slot[1] = tc.function.name or slot[1]
                            slot[2] += tc.function.arguments or ""
                    piece = choice.delta.content if choice.delta else None
                    if piece:
                        parts.append(piece)
                        if on_text is not None:
                            on_text(piece)
        finally:
            await stream.close()
        for index in sorted(pending):
            call_id, name, raw = pending[index]
            try:
                args = json.loads(raw) if raw.strip() else {}
            except ValueError:
                # Given back to the model as is: the agent reports the bad arguments to it.
                args = {"_unparsed_arguments": raw}
            if calls is not None:
                calls.append(ToolCallRequest(call_id or f"call_{index}", name, _object(args)))
        model = model or request.model
        # Model names come from answers: the set of those warned about stays bounded.
        if counts is None and model not in self._no_usage_warned:
            if len(self._no_usage_warned) < 1024:
                self._no_usage_warned.add(model)
            log.warning(
                "the OpenAI-compatible API reported no usage for model %r (does it honour "
                "stream_options.include_usage?): its tokens and cost are counted as 0",
                model,
            )
        return "".join(parts), _usage(counts, model), model, stop


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": value}


def _messages(m: ChatMessage) -> list[dict[str, Any]]:
    """The chat completions form of one turn (tool results are one message each)."""
    if m.tool_results:
        return [
            {
                "role": "tool",
                "tool_call_id": r.call_id,
                "content": f"ERROR: {r.content}" if r.is_error else r.content,
            }
            for r in m.tool_results
        ]
    if m.tool_calls:
        return [
            {
                "role": "assistant",
                "content": m.content or None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _json(c.arguments)},
                    }
                    for c in m.tool_calls
                ],
            }
        ]
    return [{"role": m.role, "content": m.content}]


def _usage(u: Any, model: str) -> Usage:
    """The counts of a final chunk's ``usage`` (None: none came) as spent on ``model``."""
    if u is None:
        return Usage(provider=OpenAIProvider.name, model=model)
    details = getattr(u, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    prompt = u.prompt_tokens or 0
    return Usage(
        input_tokens=max(0, prompt - cached),
        output_tokens=u.completion_tokens or 0,
        cache_read_input_tokens=cached,
        provider=OpenAIProvider.name,
        model=model,
    )


def _schema_instruction(request: LlmRequest) -> str:
    """The system prompt's part asking for JSON matching the node's schema (JSON mode and
    prompt mode: the server does not constrain the answer to the schema itself)."""
    return (
        "Answer with one JSON object only, no other text, that matches this JSON Schema:\n"
        + _json(request.output_schema)
    )


def _unfenced(text: str) -> str:
    """``text`` without a Markdown code fence around it (models asked for JSON in the prompt
    often wrap it in one)."""
    s = text.strip()
    if s.startswith("```") and s.endswith("```") and len(s) >= 6:
        s = s[3:-3]
        first, _, rest = s.partition("\n")
        return rest if first.strip().isalpha() or not first.strip() else s
    return text


def _structured(text: str, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        obj = json.loads(_unfenced(text))
    except ValueError as e:
        return None, f"the answer is not JSON ({e})"
    if not isinstance(obj, dict):
        return None, "the answer is not a JSON object"
    return obj, validation_error(schema, obj)


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _detail(body: object) -> str:
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message
    return ""


def _status_failure(e: openai.APIStatusError) -> NodeFailure:
    status = e.status_code
    detail = _detail(e.body) or "no detail"
    after = retry_after(e.response.headers)
    where = f"{status} from the OpenAI-compatible API"
    if status == 429:
        return NodeFailure(graph_pb2.ERROR_CLASS_RATE_LIMITED, f"{where}: {detail}", True, after)
    if status == 408:
        return NodeFailure(graph_pb2.ERROR_CLASS_TIMEOUT, f"{where}: {detail}", True, after)
    if status >= 500 or status < 400:
        return NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, f"{where}: {detail}", True, after)
    fix = _FIX.get(status, "the request was refused; retrying will not help")
    return NodeFailure(graph_pb2.ERROR_CLASS_INVALID, f"{where}: {detail}; {fix}", False)
