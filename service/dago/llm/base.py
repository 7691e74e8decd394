"""The provider interface every LLM backend implements.

A provider makes one model call: it streams the text it generates to a
callback as it arrives, and returns the whole answer (text, or a JSON object
when the request carries an output schema), the token usage and the model
that answered. Failures are raised as ``dago.handlers.NodeFailure`` with an
error class the node's retry policy understands.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dago.handlers import NodeFailure

OnText = Callable[[str], None]
"""Receives each text delta as the model produces it (synchronous, must not block)."""


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation: ``user`` or ``assistant``."""

    role: str
    content: str


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


@dataclass(frozen=True)
class TokenUsage:
    """Tokens one call used: input, output, cache writes and cache reads."""

    input: int = 0
    output: int = 0
    cache_write: int = 0
    cache_read: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input + other.input,
            self.output + other.output,
            self.cache_write + other.cache_write,
            self.cache_read + other.cache_read,
        )


@dataclass(frozen=True)
class LlmResponse:
    """What a call returned; ``object`` is set (schema-valid) when an output schema was given."""

    text: str
    usage: TokenUsage
    model: str
    object: dict[str, Any] | None = None
    stop_reason: str = ""


class CallFailed(NodeFailure):
    """A provider failure after the model answered: the tokens spent are still billed."""

    def __init__(
        self, error_class: int, message: str, retryable: bool, tokens: TokenUsage, model: str
    ) -> None:
        super().__init__(error_class, message, retryable)
        self.tokens = tokens
        self.model = model


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
