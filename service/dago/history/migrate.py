"""The history schema's versioned migrations: ``migrations/NNNN_name.sql``, applied in order.

Each file runs in a transaction of its own and is recorded in ``dago_schema_migrations``
in that same transaction, so a file is applied entirely and once, or not at all. The
transaction first takes a PostgreSQL advisory lock: several ``dago migrate`` (or processes
started with ``DAGO_MIGRATE_AT_START``) at once apply each file once and the others wait
for it, then see it recorded. Released files are never edited: a change is a new file."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row

MIGRATIONS = Path(__file__).parent / "migrations"
# Any fixed bigint both sides agree on: 'dago' in ASCII, then 'mg'.
LOCK_KEY = 0x6461676F6D67
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_LEDGER = b"""
CREATE TABLE IF NOT EXISTS dago_schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(RuntimeError):
    """The migration files, or what the database recorded, are not a consistent history."""


@dataclass(frozen=True)
class Migration:
    """One schema file: ``version`` from its number, ``name`` from the rest of its name."""

    version: int
    name: str
    sql: str


def migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    """The files of ``folder`` in order; their versions must be 1, 2, 3... without gaps."""
    found: list[Migration] = []
    for path in sorted(folder.glob("*.sql")):
        m = _FILE.match(path.name)
        if m is None:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        found.append(Migration(int(m[1]), m[2], path.read_text(encoding="utf-8")))
    for expected, mig in enumerate(found, start=1):
        if mig.version != expected:
            raise MigrationError(f"migration {mig.version:04d}_{mig.name}: expected {expected:04d}")
    return found


async def migrate(conn: psycopg.AsyncConnection[Any], folder: Path = MIGRATIONS) -> list[Migration]:
    """Apply the files of ``folder`` that ``conn``'s database has not recorded; return them.

    ``conn`` must be in autocommit mode (each file opens its own transaction)."""
    applied: list[Migration] = []
    for mig in migrations(folder):
        async with conn.transaction():
            # Taken before the ledger exists: two first migrations at once would otherwise
            # race on CREATE TABLE IF NOT EXISTS (a unique violation in pg_type).
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            await conn.execute(_LEDGER)
            async with conn.cursor(row_factory=tuple_row) as cur:
                await cur.execute(
                    "SELECT name FROM dago_schema_migrations WHERE version = %s", (mig.version,)
                )
                row = await cur.fetchone()
            if row is not None:
                if row[0] != mig.name:
                    raise MigrationError(
                        f"the database recorded migration {mig.version:04d} as {row[0]!r}, "
                        f"this dago ships {mig.name!r}: released files are never changed"
                    )
                continue
            # No parameters: psycopg sends the file as one simple query, statements and all.
            await conn.execute(mig.sql.encode())
            await conn.execute(
                "INSERT INTO dago_schema_migrations (version, name) VALUES (%s, %s)",
                (mig.version, mig.name),
            )
            applied.append(mig)
    return applied


async def migrate_url(url: str, folder: Path = MIGRATIONS) -> list[Migration]:
    """``migrate`` on a connection of its own to ``url`` (``dago migrate``)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await migrate(conn, folder)
