"""LLM providers (``base.Provider``): one model call each, streamed.

``providers.Providers`` picks the provider of a node from its ``provider`` and
``model`` fields, with defaults from the settings; ``prices.PriceTable`` prices the
``Usage`` a provider counts. The node kinds that call models live in ``dago.nodes``.
"""
