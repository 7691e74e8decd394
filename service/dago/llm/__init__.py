"""LLM providers (``base.Provider``) and the ``llm`` node kind.

``providers.Providers`` picks the provider of a node from its ``provider`` and
``model`` fields, with defaults from the settings; ``node.LlmHandler`` runs
``llm`` nodes with it.
"""
