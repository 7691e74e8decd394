"""Connecting to Redis (or a Redis Cluster), and what loops around Redis calls need."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dago.config import Settings

RedisClient = aioredis.Redis | RedisCluster


def connect(settings: Settings) -> RedisClient:
    """A Redis or Redis Cluster client for ``settings.redis_url``."""
    url = settings.redis_url
    opts: dict[str, Any] = {
        "socket_keepalive": True,
        # Blocking stream reads wait up to 5 s; the read timeout must be longer than that.
        "socket_timeout": 15,
        "socket_connect_timeout": 5,
        # A pooled connection to a Redis that restarted fails once; retry on a fresh one.
        # Every script is safe to run twice, so a retry after a lost reply is harmless.
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if settings.cluster:
        # The cluster client's pools refuse a command past their size ("Too many
        # connections") instead of waiting, and cannot be made to wait: an API serving a
        # burst of a thousand submits at once needs more than their default of 100 per node.
        return RedisCluster.from_url(url.replace("+cluster", "", 1), max_connections=2048, **opts)
    if url.startswith("redis://"):  # plain TCP (TLS and unix sockets keep their classes)
        opts["connection_class"] = _Connection
    # redis-py's pool refuses a command past its size (100) with "Too many connections":
    # a burst of a thousand submits would fail. This one makes the command wait for a
    # connection instead (up to the read timeout), and holds more of them.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=2048, timeout=15, health_check_interval=10, **opts
    )
    return aioredis.Redis.from_pool(pool)


class _Connection(aioredis.Connection):
    """redis-py's asyncio connection, encoding commands with hiredis (C) instead of its
    pure-Python encoder: a batch script call carries hundreds of arguments, and packing
    them was a tenth of a worker's CPU. Same bytes on the wire."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """The command in the Redis protocol (a name with a space is split, as redis-py does)."""
        first = args[0]
        if isinstance(first, str | bytes) and len(first.split()) > 1:
            args = (*first.split(), *args[1:])
        return [hiredis.pack_command(args)]


STORE_ERRORS: tuple[type[Exception], ...] = (Exception,)
"""What background loops catch around Redis calls (then log and back off). redis-py, its
cluster client above all, surfaces a broken connection as RedisError, OSError,
RuntimeError or even AttributeError (a transport closed under a concurrent command), so a
loop that must outlive Redis outages cannot enumerate them."""


def raise_if_cancelling() -> None:
    """Re-raise a cancellation redis-py swallowed.

    redis-py's asyncio client can absorb a CancelledError that arrives while a
    command is in flight and return normally, so a loop around Redis calls would
    run on after its task was cancelled. Every such loop calls this each round.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
