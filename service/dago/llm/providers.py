"""Picks the provider and model of a node: the node's ``provider`` + ``model``, else settings.

Resolution: the node's provider, else ``DAGO_LLM_PROVIDER``, else ``anthropic``
when an Anthropic API key is configured, ``openai`` when an OpenAI API key is,
and ``offline`` when neither is. A node (or setting) that names ``anthropic`` or
``openai`` on a worker without its key fails with a message saying so: offline
is never substituted silently for a real provider.

The SDKs are imported when their provider is first used; the ``openai`` package
is optional, and a node asking for it on a worker without it fails saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from typing import TYPE_CHECKING

from dago.config import LLM_PROVIDERS, Settings
from dago.engine.outcome import invalid
from dago.llm.base import Provider
from dago.llm.offline import OfflineProvider

if TYPE_CHECKING:
    # Imported on first use: the SDK takes seconds to import, and most processes never need it.
    from dago.llm.anthropic_provider import AnthropicProvider
    from dago.llm.openai_provider import OpenAIProvider

_MODULES = {"anthropic": "dago.llm.anthropic_provider", "openai": "dago.llm.openai_provider"}


class Providers:
    """The providers of one worker process (clients are created on first use)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._offline = OfflineProvider(settings.offline_tokens_per_s)
        self._anthropic: AnthropicProvider | None = None
        self._openai: OpenAIProvider | None = None
        self._imports: dict[str, asyncio.Future[None]] = {}

    def default_name(self) -> str:
        """The provider of nodes that name none."""
        return default_provider(self._settings)

    async def load(self, name: str) -> None:
        """Import the SDK of the provider ``name`` would resolve to, off the event loop.

        An SDK import takes seconds of CPU; done inline it would stall the worker's loop
        (lease renewals included) long enough for its own work to be reclaimed.
        """
        module = _MODULES.get(name or self.default_name())
        if module is None:
            return
        # One import per module, awaited by every caller: a second caller that found the
        # module half-imported in sys.modules would block the loop on its import lock.
        # Once it is done, awaiting it returns (or raises) at once, without a hop through the loop.
        pending = self._imports.get(module)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.to_thread(_import, module))
            self._imports[module] = pending
        await asyncio.shield(pending)

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
        if chosen == "openai":
            return self._resolve_openai(model)
        raise invalid(
            f"the LLM provider {chosen!r} is not available (available: {', '.join(LLM_PROVIDERS)})"
        )

    def _resolve_openai(self, model: str) -> tuple[Provider, str]:
        if not self._settings.openai_api_key:
            raise invalid(
                "the openai provider is asked for but this worker has no API key: set "
                "OPENAI_API_KEY (or DAGO_OPENAI_API_KEY; any value for a local server such as "
                "Ollama), or use provider offline"
            )
        if self._openai is None:
            try:
                from dago.llm.openai_provider import OpenAIProvider
            except ImportError as e:
                raise invalid(
                    f"the openai provider needs the openai package, which this worker cannot "
                    f"import ({e}): install it (pip install -r requirements.txt) or use "
                    "another provider"
                ) from None
            self._openai = OpenAIProvider(
                self._settings.openai_api_key,
                self._settings.openai_base_url,
                structured_output=self._settings.openai_structured_output,
            )
        return self._openai, model or self._settings.llm_model or self._openai.default_model

    async def close(self) -> None:
        """Release HTTP clients."""
        if self._anthropic is not None:
            await self._anthropic.close()
        if self._openai is not None:
            await self._openai.close()


def default_provider(s: Settings) -> str:
    """The provider of nodes that name none, by the resolution of the module doc."""
    if s.llm_provider:
        return s.llm_provider
    if s.anthropic_api_key:
        return "anthropic"
    return "openai" if s.openai_api_key else "offline"


def _import(module: str) -> None:
    # A missing optional package is reported by Providers.resolve() with what to do.
    with contextlib.suppress(ImportError):
        importlib.import_module(module)
