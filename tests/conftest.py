"""Shared fixtures: real Redis (single and cluster) started by the tests.

Fixtures:

- ``redis_single`` (session): a :class:`RedisServer`, persistence off.
- ``redis_cluster`` (session): a 3-node :class:`RedisCluster`.
- ``redis_target`` (session, params ``single`` / ``cluster``): a :class:`RedisTarget`
  with ``.url`` and ``.cluster``; a test using it runs once per Redis kind.
- ``key_prefix``: a unique key prefix per test (``t<hex>``); tests share Redis.
- ``private_redis``: a test's own :class:`RedisServer` (to kill / restart it),
  stopped at teardown. Options through indirect parametrization, e.g.
  ``@pytest.mark.parametrize("private_redis", [{"appendonly": True,
  "appendfsync": "always"}], indirect=True)``.

Redis logs live under ``redisfixture.LOG_ROOT``; it is removed after a green run
and kept (its path printed) otherwise.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from redisfixture import LOG_ROOT, RedisCluster, RedisServer, RedisTarget


@pytest.fixture(scope="session")
def redis_single() -> Iterator[RedisServer]:
    """A session-wide single Redis server (no persistence)."""
    server = RedisServer(name="single")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A session-wide 3-master Redis Cluster; its ``url`` is ``redis+cluster://...``."""
    cluster = RedisCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session", params=["single", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """Runs the test against the single server and against the cluster."""
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return RedisTarget(url=cluster.url, cluster=True, name="cluster")
    single: RedisServer = request.getfixturevalue("redis_single")
    return RedisTarget(url=single.url, cluster=False, name="single")


@pytest.fixture
def key_prefix() -> str:
    """A prefix unique to this test, e.g. ``t3fa91c0d``."""
    return f"t{secrets.token_hex(4)}"


@pytest.fixture
def private_redis(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A Redis server for this test only; accepts RedisServer kwargs via indirect param."""
    options: dict[str, Any] = getattr(request, "param", None) or {}
    server = RedisServer(name="private", **options)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def pytest_report_header() -> str:
    """Show where Redis data and logs go."""
    return f"redis: {shutil.which('redis-server')}, logs in {LOG_ROOT}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int) -> None:
    """Point at the kept Redis logs when the run failed."""
    if exitstatus != 0:
        terminalreporter.write_line(f"redis logs kept in {LOG_ROOT}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove Redis dirs after a green run (processes are already stopped)."""
    if exitstatus == 0:
        shutil.rmtree(LOG_ROOT, ignore_errors=True)
