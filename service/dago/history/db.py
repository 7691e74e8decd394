"""The connection pool to the history database, opened and closed with its process."""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from dago.config import Settings


class HistoryDb:
    """A pool of async connections to ``DAGO_POSTGRES_URL`` (rows as dicts).

    Built by the composition root only when the URL is set; ``open`` waits until one
    connection works, so a wrong URL fails the start with PostgreSQL's own message."""

    def __init__(self, settings: Settings) -> None:
        self.pool: AsyncConnectionPool = AsyncConnectionPool(
            settings.postgres_url,
            min_size=1,
            max_size=settings.postgres_pool_size,
            kwargs={"row_factory": dict_row, "autocommit": True},
            open=False,
            name="dago-history",
        )

    async def open(self, timeout_s: float = 10.0) -> None:
        """Open the pool and wait for a first connection."""
        await self.pool.open(wait=True, timeout=timeout_s)

    async def close(self) -> None:
        """Close every connection."""
        await self.pool.close()
