"""The connection pool to the history database, opened and closed with its process."""

from __future__ import annotations

from datetime import datetime

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from dago.config import Settings

POOL_WAIT_S = 5.0
"""How long a caller waits for a free (or any) connection before PoolTimeout."""


SqlParam = str | int | float | bool | datetime | Jsonb | None
"""A value passed to PostgreSQL as a query parameter (never formatted into SQL text)."""


class HistoryDb:
    """A pool of async connections to ``DAGO_POSTGRES_URL`` (rows as dicts).

    Built by the composition root only when the URL is set. ``open`` does not wait for
    PostgreSQL: connections are made in the background, and a caller waits up to
    ``POOL_WAIT_S`` for one, then gets PoolTimeout (an OperationalError) with the reason."""

    def __init__(self, settings: Settings) -> None:
        self.pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
            settings.postgres_url,
            connection_class=AsyncConnection[DictRow],
            min_size=1,
            max_size=settings.postgres_pool_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=False,
            name="dago-history",
            # A read or an archive round waits this long for a connection while PostgreSQL
            # is down, then fails (UNAVAILABLE; the archiver retries), instead of 30 s.
            timeout=POOL_WAIT_S,
        )

    async def open(self) -> None:
        """Open the pool (connecting starts in the background)."""
        await self.pool.open(wait=False)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()
