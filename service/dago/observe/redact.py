"""Secrets cut out of what dago writes, by two rules one ``Redactor`` can apply:

- **credential-shaped text** (``key_shaped=True``): anything that looks like an API key, a
  bearer token or a password — ``sk-ant-…``, ``sk-…``, ``Bearer …``, ``Basic …``, the value
  of ``x-api-key: …``, ``api_key=…``, ``"password": "…"``, the password of a URL's
  ``user:password@`` — whoever's it is. Whether text is cut depends on its shape only, never
  on the server's secrets, so a tenant learns nothing by sending guesses through it: a right
  guess and a wrong one come back cut alike. This is the rule for what tenants see (the
  error messages of failed node attempts: :data:`TENANT`) and one of the two of the logs.
- **the operator's secrets** (``Redactor.from_settings``: the LLM provider keys, the Redis
  password), exactly, wherever they appear, whatever their shape. Only for the logs, which
  only operators read (``dago.observe.logs``): applied to text a tenant sees, it would tell
  the tenant which of its guesses is a secret (docs/security.md, "Secrets stay secret").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlsplit

from dago.config import Settings

MASK = "[redacted]"

_KEY_SHAPED = re.compile(
    r"sk-ant-[A-Za-z0-9_\-]{4,}"
    r"|sk-[A-Za-z0-9_\-]{16,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}"
)
"""Keys and tokens by their look (Anthropic, OpenAI, HTTP authorization values)."""

_LABELLED = re.compile(
    r"(?i)\b((?:x-)?api[-_]?key|access[-_]?token|auth[-_]?token|secret|password|passwd"
    r"|authorization)((?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?)(?!\[redacted\]|\*\*\*)"
    r"([^\s\"',;&}\\]{4,})"
)
"""A value labelled as a credential (``x-api-key: v``, ``"password": "v"``, ``token=v``),
also inside JSON text, where the quotes are escaped (an error message is stored as JSON)."""

_URL_PASSWORD = re.compile(r"(://[^/\s:@]{0,128}:)([^@\s/]{1,128})@")
"""The password of ``scheme://user:password@host``. It starts at ``://`` and its parts are
bounded: a pattern starting with the scheme (``[A-Za-z][A-Za-z0-9+.-]*://``) takes time
quadratic in the length of a text without ``://`` (a 3 MB error message: minutes)."""

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
    def from_settings(
        cls, settings: Settings, *, key_shaped: bool = False, mask: str = MASK
    ) -> Redactor:
        """The operator's secrets in ``settings`` (for the logs: see the module doc)."""
        found = [settings.anthropic_api_key, settings.openai_api_key]
        url = urlsplit(settings.redis_url)
        found.append(url.password or "")
        found += [v for k, v in parse_qsl(url.query) if k.lower() == "password"]
        return cls(found, key_shaped=key_shaped, mask=mask)

    def __call__(self, text: str) -> str:
        """``text`` with every secret replaced by the mask."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, self.mask)
        if self._key_shaped:
            text = _KEY_SHAPED.sub(self.mask, text)
            text = _LABELLED.sub(lambda m: m[1] + m[2] + self.mask, text)
            text = _URL_PASSWORD.sub(lambda m: m[1] + self.mask + "@", text)
        return text


TENANT = Redactor(key_shaped=True)
"""What the error message of a failed node attempt goes through before it is stored (the
shape rule only: see the module doc)."""
