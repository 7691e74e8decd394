"""``dago.engine.outcome``: the one ``Usage`` type (summed, priced, encoded for the Redis
functions by ``dago.store.functions``) and ``NodeFailure``."""

from __future__ import annotations

import json

from dago.engine.outcome import NodeFailure, Usage, invalid
from dago.llm.prices import PriceTable
from dago.store.functions import error_json, usage_arg
from dago.v1 import graph_pb2


def test_usages_add_up_and_keep_the_later_label() -> None:
    first = Usage(10, 2, 3, 4, 0.5, provider="anthropic", model="claude-a")
    later = Usage(1, 1, 0, 1, 0.25, provider="anthropic", model="claude-b")
    total = first + later
    assert (total.input_tokens, total.output_tokens) == (11, 3)
    assert (total.cache_creation_input_tokens, total.cache_read_input_tokens) == (3, 5)
    assert total.cost_usd == 0.75 and total.tokens == 22
    assert (total.provider, total.model) == ("anthropic", "claude-b")
    # A usage that names no model keeps the one before.
    assert (later + Usage(1)).model == "claude-b"


def test_the_redis_form_is_counts_cost_then_provider_and_model() -> None:
    assert usage_arg(1, 2, 3, 4, 0.5) == "1,2,3,4,0.5"
    assert usage_arg(1, 2, 0, 0, 0.0, "openai", "gpt 4,o") == "1,2,0,0,0.0,openai,gpt_4_o"


def test_a_price_is_by_the_usage_s_own_model() -> None:
    prices = PriceTable('{"m": {"input": 2, "output": 10, "cache_write": 1, "cache_read": 0.5}}')
    usage = Usage(1_000_000, 100_000, 1_000_000, 2_000_000, provider="p", model="m-1")
    assert prices.cost(usage) == 2 + 1 + 1 + 1


def test_a_failure_carries_what_it_spent_and_stores_class_message_retryable() -> None:
    f = NodeFailure(graph_pb2.ERROR_CLASS_PERMANENT, "bad é", False, usage=Usage(5))
    assert f.usage == Usage(5) and f.retry_after is None
    assert json.loads(error_json(f.error_class, f.message, f.retryable)) == {
        "c": graph_pb2.ERROR_CLASS_PERMANENT,
        "m": "bad é",
        "r": False,
    }
    bad = invalid("no")
    assert (bad.error_class, bad.retryable, bad.usage) == (
        graph_pb2.ERROR_CLASS_INVALID,
        False,
        None,
    )
