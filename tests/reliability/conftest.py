"""Fixtures of the reliability tests (``make reliability`` runs this folder): the fixtures and
markers of tests/conftest.py apply here too; their helpers are in relkit.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fake_anthropic import FakeAnthropic


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    """A fake Anthropic Messages API on the test's event loop."""
    async with FakeAnthropic() as f:
        yield f
