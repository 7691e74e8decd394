"""Secrets cut out of what dago writes, by two rules one ``Redactor`` can apply:

- **the operator's secrets** (``Redactor.from_settings``: the LLM provider keys, the Redis
  password), exactly, wherever they appear. A worker applies this to what it records:
  error messages (an upstream may echo a key back), outputs and streamed events.
- **key-shaped text** (``key_shaped=True``): anything that looks like an API key or a
  bearer token (``sk-ant-…``, ``sk-…``, ``Bearer …``), whoever's it is. Every log line
  goes through this (``dago.observe.logs``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from dago.config import Settings

MASK = "[redacted]"

_KEY_SHAPED = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{4,}|sk-[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]+)"
)

_SHORTEST_SECRET = 8
"""Shorter values would match by accident and protect nothing."""


class Redactor:
    """Replaces secrets in text with ``mask`` (see the module doc for the rules).

    Checking a few exact secrets with ``in`` costs well under a microsecond per field; a
    redactor with neither rule returns values as they are.
    """

    def __init__(
        self, secrets: Sequence[str] = (), *, key_shaped: bool = False, mask: str = MASK
    ) -> None:
        self._secrets = tuple(s for s in dict.fromkeys(secrets) if len(s) >= _SHORTEST_SECRET)
        self._key_shaped = key_shaped
        self._active = bool(self._secrets) or key_shaped
        self.mask = mask

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        """The operator's secrets in ``settings``."""
        found = [settings.anthropic_api_key, settings.openai_api_key]
        url = urlsplit(settings.redis_url)
        found.append(url.password or "")
        found += [v for k, v in parse_qsl(url.query) if k.lower() == "password"]
        return cls(found)

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by the mask."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, self.mask)
        if self._key_shaped:
            text = _KEY_SHAPED.sub(self.mask, text)
        return text

    def fields(self, values: Sequence[Any]) -> list[Any]:
        """``values`` with every string redacted (other values as they are)."""
        if not self._active:
            return list(values)
        return [self(v) if isinstance(v, str) else v for v in values]

    def events(self, events: Sequence[tuple[str, str]]) -> Sequence[tuple[str, str]]:
        """(type, detail JSON) pairs with the details redacted."""
        if not self._active:
            return events
        return [(kind, self(detail)) for kind, detail in events]
