"""Shared fixtures, and the markers every test gets.

Layout: one folder per layer of service/dago (api, engine, store, worker, nodes, llm,
observe, devtools), plus clients/ and reliability/; the helper modules are in support/,
which pytest puts on sys.path (pyproject.toml), so they are imported by name (``harness``,
``redisfixture``, ``fake_anthropic``...). Test modules are imported by their base name too
(the folders have no ``__init__.py``): two test files may not share a name.

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
- ``make_stack``: ``await make_stack(redis=None, *, workers=1, **settings_overrides)``
  starts an :class:`InProcessStack` (the real API and workers in this event loop) with
  ``harness.stack_settings`` on the test's Redis and ``key_prefix``, and stops it at
  teardown. ``redis`` defaults to ``redis_target`` when the test uses it (so it runs on
  both kinds), else ``redis_single``. ``await stack.stop()`` stops one earlier, to check
  what it left behind. A module's ``stack`` fixture is one call:
  ``return await make_stack(redis_target, auth="keys")``.
- ``module_make_stack``, ``module_postgres_url`` (module): the same for a module-scoped
  fixture whose stacks and runs every test of the module only reads (one start, not one per
  test; tests/history/test_listing.py's ``spread``). Isolation from other modules: the
  module's own key prefix and database.
- ``edge_stack`` (module): API + worker processes with Envoy in front (``harness.Edge``).
- ``fake``: a :class:`fake_anthropic.FakeAnthropic` server for this test (test_openai.py and
  test_listing.py override it).

Markers (registered in pyproject.toml; ``make test-fast`` runs ``-m unit``, ``make test-quick``
``-m "not slow and not browser"``, ``make test`` everything):

- ``redis``, ``edge``, ``browser``: set by :func:`pytest_collection_modifyitems` from the
  fixtures a test uses (:data:`MARKS_BY_FIXTURE`, through fixtures that use them too), or
  by hand where a test starts them itself.
- ``process``: the test runs another program (``python -m dago``, node, helm, openssl,
  grpcurl...); from ``edge_stack``, else by hand (a module's ``pytestmark`` or the test's
  decorator).
- ``unit``: set on every test that has none of the four above. A unit test that starts a
  process anyway fails, naming the command (:func:`_no_processes`): mark it.
- ``slow``: more than ~10 s; by hand, measured with ``--durations``.

Redis logs live under ``redisfixture.LOG_ROOT``; it is removed after a green run
and kept (its path printed) otherwise.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from fake_anthropic import FakeAnthropic
from harness import Edge, HasUrl, InProcessStack, MakeStack, running_edge, stack_settings
from pgfixture import PrivatePostgres, fresh_database
from redisfixture import LOG_ROOT, RedisCluster, RedisServer, RedisTarget

# A test whose fixture closure (its fixtures and theirs) holds one of these gets the markers.
MARKS_BY_FIXTURE = {
    "redis_single": ("redis",),
    "redis_cluster": ("redis",),
    "redis_target": ("redis",),
    "private_redis": ("redis",),
    "make_stack": ("redis",),
    "module_make_stack": ("redis",),
    "edge_stack": ("edge", "process"),
    "browser": ("browser",),
    "postgres_url": ("postgres",),
    "module_postgres_url": ("postgres",),
    "private_postgres": ("postgres", "process"),
}
# Markers that keep a test out of the unit tier.
EXTERNAL = ("redis", "edge", "browser", "process", "postgres")


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
def postgres_url() -> Iterator[str]:
    """The URL of an empty PostgreSQL database for this test only, dropped after it."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server for this test only (it may stop and start it), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="dago-pg-"))
    server = PrivatePostgres(folder)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


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


@pytest.fixture(scope="module")
def module_postgres_url() -> Iterator[str]:
    """Like ``postgres_url``, for a module's shared fixtures (runs every test only reads)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
async def make_stack(request: pytest.FixtureRequest, key_prefix: str) -> AsyncIterator[MakeStack]:
    """Starts in-process stacks for this test; stops them (last started first) at teardown."""
    async with _stacks(request, key_prefix) as make:
        yield make


@pytest.fixture(scope="module")
async def module_make_stack(request: pytest.FixtureRequest) -> AsyncIterator[MakeStack]:
    """``make_stack`` for a module's shared fixtures (one key prefix for the module): stacks
    started once for tests that only read what they hold, stopped after the module."""
    async with _stacks(request, f"m{secrets.token_hex(4)}", "redis_single") as make:
        yield make


@contextlib.asynccontextmanager
async def _stacks(
    request: pytest.FixtureRequest, key_prefix: str, default: str = ""
) -> AsyncIterator[MakeStack]:
    """What ``make_stack`` and ``module_make_stack`` give: ``make`` starts a stack (on
    ``default``, else the test's ``redis_target`` or ``redis_single``, unless given a Redis);
    all are stopped (last started first) when the context ends, re-raising the first failure."""
    started: list[InProcessStack] = []

    async def make(
        redis: HasUrl | None = None, *, workers: int = 1, **overrides: Any
    ) -> InProcessStack:
        if redis is None:
            name = "redis_target" if "redis_target" in request.fixturenames else "redis_single"
            redis = request.getfixturevalue(default or name)
        stack = InProcessStack(stack_settings(redis.url, key_prefix, **overrides), workers)
        await stack.start()
        started.append(stack)
        return stack

    yield make
    errors: list[BaseException] = []
    for stack in reversed(started):
        try:
            await stack.stop()
        except Exception as e:  # stop every stack, then report the first failure
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    """A fake Anthropic Messages API on the test's event loop (a module may override it,
    e.g. with a FakeOpenAI or another default answer)."""
    async with FakeAnthropic() as f:
        yield f


@pytest.fixture(scope="module")
async def edge_stack(redis_single: RedisServer) -> AsyncIterator[Edge]:
    """API + worker + Envoy on free ports (``harness.running_edge``), shared by a module."""
    async with running_edge(redis_single.url, f"tenvoy{secrets.token_hex(3)}") as edge:
        yield edge


@pytest.hookimpl(tryfirst=True)  # before -m selects by them
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the fixtures they use; ``unit`` where nothing external is involved."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        for mark in sorted({m for f, ms in MARKS_BY_FIXTURE.items() if f in names for m in ms}):
            item.add_marker(mark)
        if not any(item.get_closest_marker(m) for m in EXTERNAL):
            item.add_marker("unit")


@contextlib.contextmanager
def _no_processes(item: pytest.Item) -> Iterator[None]:
    """While a unit test is set up and runs, starting a process fails it. (Not at teardown: the
    last test of a module or session also tears down the fixtures of the tests before it.)"""
    if item.get_closest_marker("unit") is None:
        yield
        return

    def refuse(what: str, command: Any = lambda *args: args[0]) -> Any:
        def start(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(
                f"{item.nodeid} is marked unit (it has no redis/edge/browser/process marker) "
                f"but starts a process: {what}({command(*args)!r}). Mark it with what it runs "
                "(see tests/conftest.py)."
            )

        return start

    with contextlib.ExitStack() as patches:
        patches.enter_context(
            mock.patch.object(
                subprocess.Popen, "_execute_child", refuse("subprocess.Popen", lambda _, a, *r: a)
            )
        )
        for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp"):
            patches.enter_context(mock.patch.object(os, name, refuse(f"os.{name}")))
        yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """A unit test's fixtures start no process."""
    with _no_processes(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A unit test starts no process."""
    with _no_processes(item):
        return (yield)


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
