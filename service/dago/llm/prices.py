"""Prices of models, in US dollars per million tokens, and the cost of a call.

The built-in table covers current Claude models; ``DAGO_PRICES`` overrides or
extends it (JSON, or the path of a JSON file: ``{"model": {"input": 3,
"output": 15, "cache_write": 3.75, "cache_read": 0.3}}``). A model is priced by
its longest matching key, so ``claude-sonnet-4-5-20250929`` uses
``claude-sonnet-4-5``. Unknown models cost 0 (and are logged once).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dago.engine.outcome import Usage

log = logging.getLogger("dago.llm")


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


def _claude(inp: float, out: float) -> Price:
    # Anthropic bills 5-minute cache writes at 1.25x and cache reads at 0.1x the input price.
    return Price(inp, out, inp * 1.25, inp * 0.1)


# List prices as published for these models; newer models match by prefix (claude-sonnet-4-6
# is priced as claude-sonnet-4). Check them against Anthropic's price list and override with
# DAGO_PRICES where they differ.
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-6": _claude(5.0, 25.0),
    "claude-opus-4-5": _claude(5.0, 25.0),
    "claude-opus-4-1": _claude(15.0, 75.0),
    "claude-opus-4": _claude(15.0, 75.0),
    "claude-sonnet-4-5": _claude(3.0, 15.0),
    "claude-sonnet-4": _claude(3.0, 15.0),
    "claude-3-7-sonnet": _claude(3.0, 15.0),
    "claude-haiku-4-5": _claude(1.0, 5.0),
    "claude-3-5-haiku": _claude(0.8, 4.0),
    "offline": Price(0.0, 0.0, 0.0, 0.0),
}


class PriceTable:
    """Looks up prices and computes costs."""

    def __init__(self, override: str = "") -> None:
        self._prices = dict(DEFAULT_PRICES)
        if override:
            text = (
                override
                if override.lstrip().startswith("{")
                else Path(override).read_text(encoding="utf-8")
            )
            raw: dict[str, Any] = json.loads(text)
            for model, row in raw.items():
                self._prices[model] = Price(
                    float(row.get("input", 0)),
                    float(row.get("output", 0)),
                    float(row.get("cache_write", 0)),
                    float(row.get("cache_read", 0)),
                )
        self._warned: set[str] = set()
        self._found: dict[str, Price | None] = {}

    def price(self, model: str) -> Price | None:
        """The price of ``model`` (longest matching key), or None."""
        if model in self._found:
            return self._found[model]
        best = ""
        for key in self._prices:
            if model.startswith(key) and len(key) > len(best):
                best = key
        found = self._prices[best] if best else None
        if len(self._found) < 1024:  # model names come from answers: keep the memo bounded
            self._found[model] = found
        return found

    def cost(self, usage: Usage) -> float:
        """The cost of ``usage`` on its model in USD (0 for an unknown model)."""
        model = usage.model
        p = self.price(model)
        if p is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price for model %r: its cost is counted as 0 (set DAGO_PRICES)", model
                )
            return 0.0
        total = (
            usage.input_tokens * p.input
            + usage.output_tokens * p.output
            + usage.cache_creation_input_tokens * p.cache_write
            + usage.cache_read_input_tokens * p.cache_read
        )
        return round(total / 1_000_000, 10)
