"""Graph ids: ``<shard>-<ULID>``.

The shard is part of the id so any process finds a graph's keys without a
lookup; the ULID part sorts by creation time.
"""

from __future__ import annotations

import os
import re
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_GRAPH_ID = re.compile(r"([0-9]{1,4})-([0-9A-HJKMNP-TV-Z]{26})")
"""Always ``fullmatch``ed, with ASCII digits: ``match`` with ``$`` takes a trailing newline
and ``\\d`` takes any script's digits (an Arabic-Indic one would name shard 1)."""


def ulid(now_ms: int | None = None) -> str:
    """A new ULID: 48 bits of milliseconds then 80 random bits, Crockford base32."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_graph_id(shard: int) -> str:
    """A fresh graph id on ``shard``."""
    return f"{shard}-{ulid()}"


def parse_shard(graph_id: str, shards: int) -> int | None:
    """The shard of ``graph_id``, or None when it is not a graph id of this deployment."""
    m = _GRAPH_ID.fullmatch(graph_id)
    if m is None:
        return None
    shard = int(m.group(1))
    return shard if shard < shards else None
