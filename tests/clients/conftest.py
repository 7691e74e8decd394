"""Fixtures of the tests of the generated example clients (test_go_client.py,
test_ruby_client.py): the request files and a stack that requires an API key, one of each
per module. What the clients print is checked by tests/support/genclients.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from genclients import keyed_stack, write_requests
from harness import ProcessStack
from redisfixture import RedisServer


@pytest.fixture(scope="module")
def requests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """REQUEST, BAD_REQUEST and SLOW_REQUEST as files: {"good": ..., "bad": ..., "slow": ...}."""
    return write_requests(tmp_path_factory.mktemp("requests"))


@pytest.fixture(scope="module")
async def keyed(
    request: pytest.FixtureRequest, redis_single: RedisServer
) -> AsyncIterator[tuple[ProcessStack, str]]:
    """API (keys required) + worker, and the one key: of namespace ``team-go`` for
    test_go_client.py, ``team-ruby`` for test_ruby_client.py."""
    client = request.module.__name__.removeprefix("test_").removesuffix("_client")
    async with keyed_stack(redis_single.url, f"team-{client}") as stack_and_key:
        yield stack_and_key
