"""The provider interface every LLM backend implements.

A provider makes one model call: it streams the text it generates to a
callback as it arrives, and returns the whole answer (text, or a JSON object
when the request carries an output schema), the token usage and the model
that answered. Failures are raised as ``dago.engine.outcome.NodeFailure`` with an
error class the node's retry policy understands; a failure after the model answered
carries the tokens it spent as its ``usage``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dago.engine.outcome import Usage

OnText = Callable[[str], None]
"""Receives each text delta as the model produces it (synchronous, must not block)."""


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name (as the model sees it), description and the JSON
    Schema of its arguments."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolCallRequest:
    """A tool call the model asked for: ``arguments`` are the model's JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gave back to the model: ``content`` is text (JSON for structured
    results); ``is_error`` marks a failed call (the model sees the error and may recover)."""

    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation: ``user`` or ``assistant``.

    An assistant turn of an agent may carry the ``tool_calls`` the model made; the user
    turn after it carries their ``tool_results`` (and usually no text).
    """

    role: str
    content: str
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_results: tuple[ToolOutcome, ...] = ()
    raw: tuple[Any, ...] = ()
    """An assistant turn's content blocks as the provider returned them (thinking blocks with
    their signatures included), sent back unchanged: some models refuse a conversation
    whose thinking was changed or dropped. Empty: built from ``content`` and ``tool_calls``."""


@dataclass(frozen=True)
class LlmRequest:
    """One model call, with its templates already rendered."""

    model: str
    messages: list[ChatMessage]
    max_tokens: int
    system: str = ""
    temperature: float | None = None
    stop: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    tools: tuple[ToolSpec, ...] = ()
    """Tools the model may call (agents); a response then may hold ``tool_calls``."""
    effort: str = ""
    """``low`` .. ``max``; empty: the model's default (checked against the model at submit)."""
    thinking: str = ""
    """``adaptive``, ``between_tools`` or ``disabled``; empty: the model's default."""
    cache_ttl: str = ""
    """Prompt cache lifetime, ``5m`` or ``1h``; empty: no caching asked for."""
    cache_system: bool = False
    """Cache up to the end of the system prompt (it repeats, the rest varies) instead of the
    whole prompt (a conversation whose every turn repeats the previous one)."""


@dataclass(frozen=True)
class LlmResponse:
    """What a call returned; ``object`` is set (schema-valid) when an output schema was given."""

    text: str
    usage: Usage
    """The tokens, labelled with the provider and ``model`` (cost 0: the caller prices them)."""
    model: str
    object: dict[str, Any] | None = None
    stop_reason: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()
    """The tool calls the model made (it ended its turn to get their results)."""
    raw: tuple[Any, ...] = ()
    """The answer's content blocks as the provider sent them (``ChatMessage.raw``)."""


class Provider(Protocol):
    """An LLM backend."""

    name: str
    """The provider name graphs use (``anthropic``, ``openai``, ``offline``)."""
    default_model: str
    """The model used when neither the node nor the settings name one."""

    async def complete(self, request: LlmRequest, on_text: OnText) -> LlmResponse:
        """Make the call, passing text deltas to ``on_text``; raise ``NodeFailure`` on errors.

        Cancelling the awaiting task must abort any request in flight at once.
        """
        ...


def retry_after(headers: Any) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``retry-after`` seconds or date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None
