"""The namespaces' fair shares in Redis (``lua/fair.lua`` reads them): writing each shard's
weights and caps from DAGO_NAMESPACES_FILE, reading what a namespace spent today, and the
rule of its daily cost budget (``over_daily``: the API refuses new runs by it, the workers
stop the running ones' model calls by it).

The running cap of a namespace is divided over the shards here (each shard is a slot of
its own on a cluster, so no function can count across shards): a cap of 50 on 8 shards
lets 7 items of the namespace run per shard (at least 1). With one shard it is exact."""

from __future__ import annotations

import math
import time
from typing import Any

from dago.config import NamespaceShare, NamespaceShares
from dago.store.keys import Keys
from dago.store.schema import Fair


def _fields(name: str, share: NamespaceShare, shards: int) -> dict[str, str]:
    cap = share.max_running_nodes
    per_shard = math.ceil(cap / shards) if cap else 0
    return {f"{Fair.WEIGHT}{name}": repr(share.weight), f"{Fair.MAX_RUNNING}{name}": str(per_shard)}


def share_fields(shares: NamespaceShares, shards: int) -> dict[str, str]:
    """The shares hash of every shard: per named namespace and for the default ('')."""
    out = _fields("", shares.default, shards)
    for name, share in shares.named.items():
        out |= _fields(name, share, shards)
    return out


async def write_shares(redis: Any, keys: Keys, shares: NamespaceShares) -> None:
    """Make every shard's shares hash say what ``shares`` says (fields of namespaces no
    longer named are removed after the new ones are written, so no read sees none)."""
    want = share_fields(shares, keys.shards)
    for sk in keys.all_shards():
        have = {k.decode() if isinstance(k, bytes) else k for k in await redis.hkeys(sk.shares)}
        await redis.hset(sk.shares, mapping=want)
        stale = sorted(have - set(want))
        if stale:
            await redis.hdel(sk.shares, *stale)


def today() -> int:
    """The UTC day (days since the epoch) the functions charge spend to."""
    return int(time.time() * 1000) // 86_400_000


async def spent_today(redis: Any, keys: Keys, namespace: str) -> float:
    """What ``namespace``'s runs cost today (USD), over every shard."""
    pipe = redis.pipeline(transaction=False)
    day = today()
    for sk in keys.all_shards():
        pipe.hget(sk.spend(day), namespace or "default")
    return sum(float(v) for v in await pipe.execute() if v is not None)


def over_daily(namespace: str, budget: float, spent: float) -> str | None:
    """Why ``namespace`` may spend no more today (what it ``spent`` reached its daily
    ``budget``, USD; 0: none), or None: the one rule of the daily cost budget."""
    if not budget or spent < budget:
        return None
    return (
        f"namespace {namespace or 'default'!r} has spent ${spent:.4f} today (UTC), "
        f"reaching its daily_cost_usd of ${budget:g} (DAGO_NAMESPACES_FILE)"
    )
