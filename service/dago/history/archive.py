"""The archiver: finished runs from Redis to PostgreSQL, exactly once, before they expire.

A run submitted while ``DAGO_POSTGRES_URL`` is set ends in its shard's archive queue
(``ShardKeys.archive``) with no expiry. Each round, for each shard, the archiver takes the
oldest queued runs, reads each one completely from Redis (a :class:`RunSource`), writes it
in one PostgreSQL transaction (:func:`dago.history.write.write_run`), and only then calls
the ``archived`` function, which lets the run expire after its retention. A crash between
the two leaves the run queued: the next round writes it again, ``ON CONFLICT DO NOTHING``
keeps the first copy, and it is let go. Several API replicas archive side by side the
same way.

PostgreSQL (or Redis) down: the round fails, the runs stay queued (and in Redis, without
expiry), the archiver logs one warning for the outage, counts each failed round and tries
again with a capped backoff. A run that PostgreSQL refuses on its own (its data) is held
back with a backoff of its own, logged once, and the others go on: it stays queued, never
lost and never expired, until a write succeeds."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from google.protobuf import json_format

from dago.config import Settings
from dago.history.db import HistoryDb
from dago.history.migrate import migrate
from dago.history.write import RunSource, write_run
from dago.observe.metrics import Metrics
from dago.store.client import STORE_ERRORS, raise_if_cancelling
from dago.store.store import Store

log = logging.getLogger("dago.history")

BACKOFF_S = (0.5, 30.0)
"""First and longest wait after a failed round (doubling in between)."""
HELD_BACK_S = (1.0, 300.0)
"""First and longest wait before a run PostgreSQL refused is tried again."""
RUN_ERRORS = (
    psycopg.DataError, psycopg.IntegrityError, psycopg.InternalError, json_format.Error,
    ValueError, TypeError,
)  # fmt: skip
"""Failures of one run's write (its data), not of PostgreSQL or Redis."""


class Archiver:
    """The archive loop of an API process (only when ``DAGO_POSTGRES_URL`` is set)."""

    def __init__(
        self,
        store: Store,
        db: HistoryDb,
        source: RunSource,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._db = db
        self._source = source
        self._settings = settings
        self._metrics = metrics
        # Runs PostgreSQL refused: graph id -> (when to try again, the wait after that).
        self._held: dict[str, tuple[float, float]] = {}

    async def run(self) -> None:
        """Archive rounds until cancelled: right after a round that found work, else after
        the sweep interval; after a failure, after a doubling backoff. With
        DAGO_MIGRATE_AT_START the schema is brought up to date first (retried the same way).

        Cancelled (SIGTERM) at any point, nothing is lost or doubled: a transaction not
        committed rolls back and its run stays queued; a run committed but not yet let go
        is written again by the next round, which changes nothing."""
        idle = self._settings.sweep_interval_ms / 1000
        delay = BACKOFF_S[0]
        failing = False
        migrated = not self._settings.migrate_at_start
        while True:
            raise_if_cancelling()
            try:
                if not migrated:
                    await self._migrate()
                    migrated = True
                done = await self.round()
            except STORE_ERRORS as e:  # PostgreSQL's errors too: any failure waits and retries
                self._metrics.archive_errors.inc()
                if not failing:
                    log.warning(
                        "archiving finished runs failed, retrying (runs wait in Redis): %s", e
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            if failing:
                log.info("archiving finished runs again")
            failing, delay = False, BACKOFF_S[0]
            if not done:
                await asyncio.sleep(idle)

    async def _migrate(self) -> None:
        async with self._db.pool.connection() as conn:
            for mig in await migrate(conn):
                log.info("applied migration %04d_%s", mig.version, mig.name)

    async def round(self) -> int:
        """Archive up to ``archive_batch`` queued runs of each shard, oldest first (past
        the ones held back); returns how many."""
        done = 0
        batch = self._settings.archive_batch
        for shard in range(self._settings.shards):
            ids = await self._store.to_archive(shard, batch + len(self._held))
            due = [g for g in ids if self._held.get(g, (0.0, 0.0))[0] <= time.monotonic()]
            for gid in due[:batch]:
                try:
                    await self.archive(shard, gid)
                except RUN_ERRORS as e:
                    self._hold(gid, e)
                    continue
                self._held.pop(gid, None)
                done += 1
        return done

    def _hold(self, graph_id: str, error: Exception) -> None:
        self._metrics.archive_errors.inc()
        _, wait = self._held.get(graph_id, (0.0, 0.0))
        if not wait:
            log.error(
                "PostgreSQL refused run %s, which stays in Redis until a retry succeeds: %s",
                graph_id,
                error,
                extra={"graph_id": graph_id},
            )
        wait = min(max(wait * 2, HELD_BACK_S[0]), HELD_BACK_S[1])
        self._held[graph_id] = (time.monotonic() + wait, wait)

    async def archive(self, shard: int, graph_id: str) -> None:
        """Write one queued run to PostgreSQL (unless it is there), then let it expire."""
        run = await self._source.finished_run(shard, graph_id)
        if run is not None:
            async with self._db.pool.connection() as conn:
                if await write_run(conn, run, self._settings):
                    self._metrics.archived_runs.inc()
        # A queued run Redis lost (flushed by hand) has nothing left to keep: let it go.
        await self._store.archived(shard, graph_id)
