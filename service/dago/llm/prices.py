"""Prices of models, in US dollars per million tokens, and the cost of a call.

The built-in prices are the model catalogue's (``dago.llm.models``): per model, base input,
output, 5-minute and 1-hour cache writes, cache reads, and a higher row for requests whose
prompt is over a threshold (Haiku 5.5). ``DAGO_PRICES`` overrides or extends them (JSON, or
the path of a JSON file: ``{"model": {"input": 3, "output": 15, "cache_write": 3.75,
"cache_write_1h": 6, "cache_read": 0.3, "long_prompt": {"threshold": 100000, "input":
...}}}``; ``cache_write`` is the 5-minute rate, and ``cache_write_1h`` defaults to 1.6x it,
the ratio of Anthropic's 2x and 1.25x multipliers). An override key matches the model
exactly or as a prefix ending at a ``-`` (``claude-sonnet-4-5`` prices
``claude-sonnet-4-5-20250929``), the longest first.

A call is priced on its own (a prompt-length tier applies per request, so summing the
tokens of several calls first would misprice them) and every figure is multiplied by
``DAGO_PRICE_MULTIPLIER`` (deployment options that carry one, such as a regional endpoint).

A model with no price is refused at submit when it is a Claude model; one an operator
allowed (``DAGO_ALLOW_UNKNOWN_MODELS``) is priced by ``DAGO_UNKNOWN_MODEL_PRICE``. Only a
model of another provider with no price anywhere costs 0, with a warning logged once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dago.engine.outcome import Usage
from dago.llm.models import LongPrompt, Price, find

log = logging.getLogger("dago.llm")

OFFLINE = Price(0.0, 0.0, 0.0, 0.0, 0.0)

PriceRow = tuple[Price, LongPrompt | None]


def parse_row(row: dict[str, Any]) -> PriceRow:
    """A price row from its JSON form (see the module doc)."""
    price = _price(row)
    lp = row.get("long_prompt")
    long_prompt = (
        LongPrompt(int(lp.get("threshold", 0)), _price(lp)) if isinstance(lp, dict) else None
    )
    return price, long_prompt


def _price(row: dict[str, Any]) -> Price:
    write = float(row.get("cache_write", 0))
    return Price(
        float(row.get("input", 0)),
        float(row.get("output", 0)),
        write,
        float(row.get("cache_write_1h", write * 1.6)),
        float(row.get("cache_read", 0)),
    )


def load_json(value: str) -> Any:
    """``value`` as JSON, or the JSON of the file it names."""
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    return json.loads(text)


class PriceTable:
    """Looks up prices and computes costs."""

    def __init__(self, override: str = "", unknown: str = "", multiplier: float = 1.0) -> None:
        self._override: dict[str, PriceRow] = {"offline": (OFFLINE, None)}
        if override:
            raw: dict[str, Any] = load_json(override)
            for model, row in raw.items():
                self._override[model] = parse_row(row)
        self._unknown = parse_row(load_json(unknown)) if unknown else None
        self._multiplier = multiplier
        self._warned: set[str] = set()
        self._found: dict[str, PriceRow | None] = {}

    def row(self, model: str) -> PriceRow | None:
        """The price row of ``model`` (override, else catalogue), or None."""
        if model in self._found:
            return self._found[model]
        best = ""
        for key in self._override:
            # A key prices the model, its dated snapshots (-2026...) and its tags (Ollama's
            # llama3.2:1b under llama3.2).
            matches = model == key or model.startswith((key + "-", key + ":"))
            if matches and len(key) > len(best):
                best = key
        found: PriceRow | None = self._override[best] if best else None
        if found is None:
            info = find(model)
            found = (info.price, info.long_prompt) if info is not None else None
        if len(self._found) < 1024:  # model names come from answers: keep the memo bounded
            self._found[model] = found
        return found

    def price(self, model: str) -> Price | None:
        """The base price of ``model`` (short prompts), or None when it has none."""
        row = self.row(model)
        return row[0] if row is not None else None

    def worst(self, model: str, prompt_tokens: int, cache_ttl: str) -> tuple[float, float]:
        """What one input and one output token of a call of ``model`` with a prompt of
        ``prompt_tokens`` cost at most, in USD: an input token at the dearest of the input
        and cache-write rates the call may be billed (a budget reserves the worst case)."""
        row = self.row(model) or self._unknown
        if row is None:
            return 0.0, 0.0
        base, long_prompt = row
        p = long_prompt.price if long_prompt and prompt_tokens > long_prompt.threshold else base
        write = p.cache_write_1h if cache_ttl == "1h" else p.cache_write_5m if cache_ttl else 0.0
        unit = self._multiplier / 1_000_000
        return max(p.input, write) * unit, p.output * unit

    def cost(self, usage: Usage) -> float:
        """The cost of one call's ``usage`` on its model in USD."""
        model = usage.model
        row = self.row(model) or self._unknown
        if row is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning(
                    "no price for model %r: its cost is counted as 0 (set DAGO_PRICES)", model
                )
            return 0.0
        base, long_prompt = row
        prompt = (
            usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
        )
        p = long_prompt.price if long_prompt and prompt > long_prompt.threshold else base
        hour = min(usage.cache_write_1h_input_tokens, usage.cache_creation_input_tokens)
        total = (
            usage.input_tokens * p.input
            + usage.output_tokens * p.output
            + (usage.cache_creation_input_tokens - hour) * p.cache_write_5m
            + hour * p.cache_write_1h
            + usage.cache_read_input_tokens * p.cache_read
        )
        return round(total * self._multiplier / 1_000_000, 10)
