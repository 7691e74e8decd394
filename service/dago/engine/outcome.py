"""What a node attempt spent and how it failed: ``Usage`` and ``NodeFailure``.

They sit in the engine because every layer above speaks them: LLM providers (``dago.llm``)
count tokens into a ``Usage`` and raise ``NodeFailure``; node kinds (``dago.nodes``) price
the usage and raise failures of their own; the worker records both with the attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

from dago.v1 import graph_pb2


@dataclass(frozen=True)
class Usage:
    """Tokens and cost of one call or attempt, and which provider and model it used.

    Providers count the tokens (``cost_usd`` 0); the ``llm`` node kind prices them. Field
    names follow the API's ``Usage`` message.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    """Tokens written to the provider's prompt cache."""
    cache_read_input_tokens: int = 0
    """Tokens read from the provider's prompt cache."""
    cost_usd: float = 0.0
    provider: str = ""
    model: str = ""
    cache_write_1h_input_tokens: int = 0
    """Of ``cache_creation_input_tokens``, those written with the 1-hour lifetime (they cost
    more than 5-minute writes); priced by the worker, not recorded on their own."""

    @property
    def tokens(self) -> int:
        """Every token counted, of any kind."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def __add__(self, other: Usage) -> Usage:
        """Both summed; provider and model of ``other`` where it names them (the later call)."""
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            self.cache_read_input_tokens + other.cache_read_input_tokens,
            self.cost_usd + other.cost_usd,
            other.provider or self.provider,
            other.model or self.model,
            self.cache_write_1h_input_tokens + other.cache_write_1h_input_tokens,
        )


class NodeFailure(Exception):
    """A node attempt failed; ``retryable`` says whether the retry policy may retry it.

    ``retry_after`` is a delay in seconds a downstream service asked for (an HTTP
    ``retry-after`` header): a retry waits at least that long. ``usage`` is what the
    failed attempt spent (an LLM call that answered, but not usably); it is recorded
    with the attempt and counts against the graph's limits.
    """

    def __init__(
        self,
        error_class: int,
        message: str,
        retryable: bool,
        retry_after: float | None = None,
        usage: Usage | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.usage = usage


def invalid(message: str) -> NodeFailure:
    """A failure retrying cannot fix (bad input or configuration)."""
    return NodeFailure(graph_pb2.ERROR_CLASS_INVALID, message, False)


class Throttled(Exception):
    """A model rate limit had no room for a call (``dago.nodes.ratelimit``): the attempt ends
    without a call and without failing, and its node is queued again after ``wait_ms``
    (the ``throttle`` function; the attempt is not consumed). Not a ``NodeFailure``: no
    handler's failure handling may take it for one."""

    def __init__(self, provider: str, model: str, wait_ms: int, reason: str) -> None:
        super().__init__(f"{provider}/{model}: no room ({reason}) for {wait_ms} ms")
        self.provider = provider
        self.model = model
        self.wait_ms = wait_ms
        self.reason = reason
