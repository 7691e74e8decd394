"""Picks the provider and model of a node: the node's ``provider`` + ``model``, else settings.

Resolution: the node's provider, else ``DAGO_LLM_PROVIDER``, else ``anthropic``
when an API key is configured and ``offline`` when not. A node (or setting) that
names ``anthropic`` on a worker without a key fails with a message saying so:
offline is never substituted silently for a real provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dago.config import Settings
from dago.handlers import invalid
from dago.llm.base import Provider
from dago.llm.offline import OfflineProvider

if TYPE_CHECKING:
    # Imported on first use: the SDK takes seconds to import, and most processes never need it.
    from dago.llm.anthropic_provider import AnthropicProvider

KNOWN = ("anthropic", "offline")


class Providers:
    """The providers of one worker process (clients are created on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._offline = OfflineProvider()
        self._anthropic: AnthropicProvider | None = None

    def default_name(self) -> str:
        """The provider of nodes that name none."""
        s = self._settings
        return s.llm_provider or ("anthropic" if s.anthropic_api_key else "offline")

    def resolve(self, name: str, model: str) -> tuple[Provider, str]:
        """The provider and model a node with these fields uses; raises NodeFailure if unusable."""
        chosen = name or self.default_name()
        if chosen == "offline":
            return self._offline, "offline"
        if chosen == "anthropic":
            if not self._settings.anthropic_api_key:
                raise invalid(
                    "the anthropic provider is asked for but this worker has no API key: set "
                    "ANTHROPIC_API_KEY (or DAGO_ANTHROPIC_API_KEY), or use provider offline"
                )
            if self._anthropic is None:
                from dago.llm.anthropic_provider import AnthropicProvider

                self._anthropic = AnthropicProvider(
                    self._settings.anthropic_api_key, self._settings.anthropic_base_url
                )
            default = self._settings.llm_model or self._anthropic.default_model
            return self._anthropic, model or default
        raise invalid(
            f"the LLM provider {chosen!r} is not available (available: {', '.join(KNOWN)})"
        )

    async def close(self) -> None:
        """Release HTTP clients."""
        if self._anthropic is not None:
            await self._anthropic.close()
