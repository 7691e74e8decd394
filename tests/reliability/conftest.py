"""Fixtures of the reliability tests: the fixtures of tests/conftest.py (real Redis) apply
here too; this folder adds a marker so ``make reliability`` can select it by path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fake_anthropic import FakeAnthropic


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    """A fake Anthropic Messages API on the test's event loop."""
    async with FakeAnthropic() as f:
        yield f
