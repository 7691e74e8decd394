"""The blocking Python client is generated from the asyncio one (dago.devtools.unasync)."""

from __future__ import annotations

import pytest

from dago.devtools import unasync


@pytest.mark.process  # ruff
def test_the_committed_sync_client_is_what_the_generator_renders() -> None:
    """A change to aio.py (or to sync.py by hand) without `make gen` fails here."""
    assert unasync.OUT.read_text() == unasync.render(), "run `make gen`"


def test_a_rule_that_no_longer_matches_fails() -> None:
    source = unasync.SOURCE.read_text().replace("__aenter__", "__aenter_renamed__")
    with pytest.raises(unasync.UnasyncError, match="__aenter__"):
        unasync.convert(source)


def test_an_asyncio_name_left_over_fails() -> None:
    source = unasync.SOURCE.read_text() + "\nasyncio.gather()\n"
    with pytest.raises(unasync.UnasyncError, match=r"asyncio\.gather"):
        unasync.convert(source)
