"""Checks of the Redis test fixtures themselves (tests/conftest.py, redisfixture.py)."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from redisfixture import RedisCluster, RedisServer, RedisTarget, to_redis_py_url


def test_single_set_get(redis_single: RedisServer, key_prefix: str) -> None:
    """The session server is not the system one and stores data."""
    assert redis_single.port != 6379
    assert redis_single.url == f"redis://127.0.0.1:{redis_single.port}/0"
    client = redis.Redis.from_url(redis_single.url, decode_responses=True)
    try:
        client.set(f"{key_prefix}:k", "v")
        assert client.get(f"{key_prefix}:k") == "v"
    finally:
        client.close()


def test_private_kill_and_restart(private_redis: RedisServer) -> None:
    """kill() takes the server down; start() brings it back on the same port."""
    port = private_redis.port
    private_redis.kill()
    assert not private_redis.running
    assert not private_redis.ping()
    private_redis.start()
    assert private_redis.port == port
    assert private_redis.ping()


@pytest.mark.parametrize(
    "private_redis", [{"appendonly": True, "appendfsync": "always"}], indirect=True
)
def test_private_aof_survives_kill(private_redis: RedisServer) -> None:
    """With AOF and appendfsync=always, a write survives SIGKILL and restart."""
    with redis.Redis.from_url(private_redis.url, decode_responses=True) as client:
        client.set("durable", "yes")
    private_redis.kill()
    private_redis.start()
    with redis.Redis.from_url(private_redis.url, decode_responses=True) as client:
        assert client.get("durable") == "yes"


def test_private_stop_is_graceful(private_redis: RedisServer) -> None:
    """stop() ends the process; start() restarts it."""
    private_redis.stop()
    assert not private_redis.running
    private_redis.start()
    assert private_redis.running


async def test_cluster_hash_tags_and_lua(redis_cluster: RedisCluster, key_prefix: str) -> None:
    """Hash tags pick slots; keys write through the cluster client; Lua runs per slot."""
    assert redis_cluster.url.startswith("redis+cluster://127.0.0.1:")
    client = AsyncRedisCluster.from_url(to_redis_py_url(redis_cluster.url), decode_responses=True)
    try:
        k1, k2 = f"{key_prefix}:{{s1}}:a", f"{key_prefix}:{{s2}}:a"
        slot1 = await client.execute_command("CLUSTER KEYSLOT", k1)
        slot2 = await client.execute_command("CLUSTER KEYSLOT", k2)
        assert slot1 != slot2
        node1, node2 = client.get_node_from_key(k1), client.get_node_from_key(k2)
        assert node1 is not None and node2 is not None
        assert node1.name != node2.name, "the two hash tags should live on different nodes"

        await client.set(k1, "one")
        await client.set(k2, "two")
        assert await client.get(k1) == "one"
        assert await client.get(k2) == "two"

        script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"
        k1b = f"{key_prefix}:{{s1}}:b"
        assert await client.eval(script, 2, k1, k1b, "lua") == 1
        assert await client.get(k1) == "lua"
        assert await client.get(k1b) == "1"
    finally:
        await client.aclose()


async def test_redis_target(redis_target: RedisTarget, key_prefix: str) -> None:
    """redis_target yields both kinds; its URL works with the matching redis-py client."""
    assert redis_target.cluster == (redis_target.name == "cluster")
    assert redis_target.url.startswith("redis+cluster://" if redis_target.cluster else "redis://")
    url = to_redis_py_url(redis_target.url)
    client: redis.asyncio.Redis | AsyncRedisCluster = (
        AsyncRedisCluster.from_url(url)
        if redis_target.cluster
        else redis.asyncio.Redis.from_url(url)
    )
    try:
        await client.set(f"{key_prefix}:x", b"1")
        assert await client.get(f"{key_prefix}:x") == b"1"
    finally:
        await client.aclose()
