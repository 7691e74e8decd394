"""The Claude model catalogue: what each model is, what it accepts and what it costs.

One place for every fact dago relies on about a Claude model: its id and aliases, context
window and largest output, which ``thinking`` types and ``effort`` levels the Messages API
accepts for it, whether it accepts non-default sampling parameters (``temperature``,
``top_p``, ``top_k``), native structured outputs (``output_config.format``, strict tools)
and forced tool use (``tool_choice`` naming a tool), and its prices. Submit-time checks
(``dago.nodes.llm.check_model``), the provider (``dago.llm.anthropic_provider``), the
price table (``dago.llm.prices``) and ``dago models`` all read it; nothing else decides
these things.

Every row says when it was checked and on which page. Prices are USD per million tokens:
base input, output, cache writes with a 5-minute and a 1-hour lifetime, cache reads (hits
and refreshes), and for a model priced by prompt length a second row that applies to
*every* token of a request whose prompt (input + cache reads + cache writes) is over the
threshold. The Message Batches API halves input and output (``BATCH_DISCOUNT``); dago does
not use it, but the figure is here so the table is complete.

A model is found by its id, an alias, or a dated snapshot of either
(``claude-sonnet-4-5-20250929``): never by a looser prefix, so a new model is unknown
rather than silently priced as its elder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CHECKED = "2026-12-07"
"""When the rows below were last compared with Anthropic's pages."""
PRICING_PAGE = "https://platform.claude.com/docs/en/about-claude/pricing"
MODELS_PAGE = "https://platform.claude.com/docs/en/about-claude/models/overview"

EFFORTS = ("low", "medium", "high", "xhigh", "max")
"""Every ``output_config.effort`` level the API knows, lowest first."""
THINKING_TYPES = ("adaptive", "between_tools", "disabled", "enabled")
"""Every ``thinking.type`` the API knows."""
CACHE_TTLS = ("5m", "1h")
"""The prompt cache lifetimes the API offers."""
BATCH_DISCOUNT = 0.5
"""The Message Batches API bills input and output at half price."""


@dataclass(frozen=True)
class Price:
    """USD per million tokens of one price row."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


@dataclass(frozen=True)
class LongPrompt:
    """A higher price for requests whose prompt is over ``threshold`` tokens (all of them)."""

    threshold: int
    price: Price


@dataclass(frozen=True)
class ModelInfo:
    """One Claude model as the Messages API sees it."""

    id: str
    name: str
    price: Price
    context: int
    max_output: int
    thinking: tuple[str, ...]
    """The ``thinking.type`` values it accepts; empty: it has no thinking (omit the field)."""
    efforts: tuple[str, ...]
    """The ``output_config.effort`` levels it accepts; empty: no effort parameter."""
    default_effort: str = ""
    sampling: bool = True
    """Whether non-default ``temperature``/``top_p``/``top_k`` are accepted (else a 400)."""
    structured: bool = True
    """Whether ``output_config.format`` and ``strict`` tools (constrained decoding) work."""
    forced_tool: bool = True
    """Whether ``tool_choice`` may name a tool (else a 400)."""
    thinking_display: str = ""
    """The ``display`` default of adaptive thinking ("omitted": thinking text not returned)."""
    text_in_thinking: bool = False
    """Text the model writes between tool calls comes back inside thinking blocks."""
    long_prompt: LongPrompt | None = None
    aliases: tuple[str, ...] = ()
    status: str = "active"
    """``latest``, ``active``, ``legacy``, ``deprecated`` or ``retired`` (as its model page and
    the SDK's deprecation list say). Retired models are kept: some clouds still serve them."""
    source: str = MODELS_PAGE
    checked: str = CHECKED

    def price_for(self, prompt_tokens: int) -> Price:
        """The price row a request with ``prompt_tokens`` prompt tokens pays."""
        lp = self.long_prompt
        return lp.price if lp is not None and prompt_tokens > lp.threshold else self.price


def _p(inp: float, out: float, read: float | None = None) -> Price:
    # The standard cache multipliers (5m write 1.25x, 1h write 2x, read 0.1x); the 5.x
    # generation reads cheaper on some models, given explicitly.
    return Price(inp, out, inp * 1.25, inp * 2, inp * 0.1 if read is None else read)


_ADAPTIVE_ONLY = ("adaptive",)
_ALL_EFFORTS = EFFORTS
_NO_MANUAL = ("adaptive", "disabled")

CATALOGUE: tuple[ModelInfo, ...] = (
    ModelInfo(
        "claude-fable-5-2",
        "Claude Fable 5.2",
        _p(8, 40, 0.20),
        1_000_000,
        128_000,
        _ADAPTIVE_ONLY,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
        status="latest",
    ),
    ModelInfo(
        "claude-fable-5-1",
        "Claude Fable 5.1",
        _p(10, 50, 0.25),
        1_000_000,
        128_000,
        _ADAPTIVE_ONLY,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
    ),
    ModelInfo(
        "claude-fable-5",
        "Claude Fable 5",
        _p(10, 50, 1.0),
        1_000_000,
        128_000,
        _ADAPTIVE_ONLY,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
        status="legacy",
    ),
    ModelInfo(
        "claude-opus-5-5",
        "Claude Opus 5.5",
        Price(4, 20, 5, 8, 0.20),
        1_000_000,
        128_000,
        _ADAPTIVE_ONLY,
        _ALL_EFFORTS,
        "medium",
        sampling=False,
        thinking_display="omitted",
        status="latest",
    ),
    ModelInfo(
        "claude-opus-5",
        "Claude Opus 5",
        _p(5, 25),
        1_000_000,
        128_000,
        _NO_MANUAL,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
        status="legacy",
    ),
    ModelInfo(
        "claude-opus-4-8",
        "Claude Opus 4.8",
        _p(5, 25),
        1_000_000,
        128_000,
        _NO_MANUAL,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
        status="legacy",
    ),
    ModelInfo(
        "claude-opus-4-7",
        "Claude Opus 4.7",
        _p(5, 25),
        1_000_000,
        128_000,
        _NO_MANUAL,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
        status="legacy",
    ),
    ModelInfo(
        "claude-opus-4-6",
        "Claude Opus 4.6",
        _p(5, 25),
        1_000_000,
        128_000,
        ("adaptive", "disabled", "enabled"),
        ("low", "medium", "high", "max"),
        "high",
        status="legacy",
    ),
    ModelInfo(
        "claude-opus-4-5",
        "Claude Opus 4.5",
        _p(5, 25),
        200_000,
        64_000,
        ("disabled", "enabled"),
        ("low", "medium", "high"),
        "high",
        aliases=("claude-opus-4-5-20251101",),
        status="deprecated",  # retires 2027-01-22
    ),
    ModelInfo(
        "claude-opus-4-1",
        "Claude Opus 4.1",
        _p(15, 75),
        200_000,
        32_000,
        ("disabled", "enabled"),
        (),
        aliases=("claude-opus-4-1-20250805",),
        status="retired",
    ),
    ModelInfo(
        "claude-sonnet-5-5",
        "Claude Sonnet 5.5",
        # Cache reads: $0.10 since 2026-10-07 (0.05x input); the model page still showed
        # $0.20 when this row was checked. Override with DAGO_PRICES if your bill differs.
        Price(2, 10, 2.5, 4, 0.10),
        1_000_000,
        128_000,
        ("adaptive", "between_tools"),
        _ALL_EFFORTS,
        "high",
        sampling=False,
        forced_tool=False,
        thinking_display="omitted",
        text_in_thinking=True,
        status="latest",
    ),
    ModelInfo(
        "claude-sonnet-5",
        "Claude Sonnet 5",
        _p(2, 10),
        1_000_000,
        128_000,
        _NO_MANUAL,
        _ALL_EFFORTS,
        "high",
        sampling=False,
        thinking_display="omitted",
        status="legacy",
    ),
    ModelInfo(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        _p(3, 15),
        1_000_000,
        64_000,
        ("adaptive", "disabled", "enabled"),
        ("low", "medium", "high", "max"),
        "high",
        status="legacy",
    ),
    ModelInfo(
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        _p(3, 15),
        200_000,
        64_000,
        ("disabled", "enabled"),
        (),
        aliases=("claude-sonnet-4-5-20250929",),
        status="retired",  # 2026-11-30
    ),
    ModelInfo(
        "claude-sonnet-4-0",
        "Claude Sonnet 4",
        _p(3, 15),
        200_000,
        64_000,
        ("disabled", "enabled"),
        (),
        structured=False,
        aliases=("claude-sonnet-4-20250514",),
        status="retired",
    ),
    ModelInfo(
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        Price(0.10, 0.50, 0.125, 0.20, 0.01),
        1_000_000,
        128_000,
        _NO_MANUAL,
        _ALL_EFFORTS,
        "medium",
        sampling=False,
        thinking_display="omitted",
        long_prompt=LongPrompt(100_000, Price(0.50, 2.50, 0.625, 1.00, 0.05)),
        status="latest",
    ),
    ModelInfo(
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        _p(1, 5),
        200_000,
        64_000,
        ("disabled", "enabled"),
        (),
        aliases=("claude-haiku-4-5-20251001",),
        status="legacy",
    ),
)

DEFAULT_MODEL = "claude-sonnet-5-5"
"""The model of nodes that name none: the current Sonnet (the overview's pick for general
work, balancing speed, cost and intelligence)."""

_BY_NAME: dict[str, ModelInfo] = {name: m for m in CATALOGUE for name in (m.id, *m.aliases)}
_DATED = re.compile(r"(.+?)-\d{8}")


def find(model: str) -> ModelInfo | None:
    """The catalogue row of ``model`` (an id, alias or dated snapshot), or None."""
    found = _BY_NAME.get(model)
    if found is None:
        dated = _DATED.fullmatch(model)
        found = _BY_NAME.get(dated.group(1)) if dated else None
    return found


def is_claude(model: str) -> bool:
    """True for a name in Anthropic's scheme (``claude-...``), known or not."""
    return model.startswith("claude-")
