"""The history schema's migrations (dago.history.migrate) and ``dago migrate``, on a real
PostgreSQL: in order, once, recorded, safe when several run at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from dago.history.migrate import MigrationError, migrate, migrate_url, migrations
from harness import ROOT, dago_env

TABLES = {"dago_runs", "dago_run_events", "dago_run_usage", "dago_schema_migrations"}


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows}


def ledger(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT version, name FROM dago_schema_migrations ORDER BY version"
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


async def test_migrate_applies_every_file_once(postgres_url: str) -> None:
    shipped = migrations()
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1))
    first = await migrate_url(postgres_url)
    assert [m.name for m in first] == [m.name for m in shipped]
    assert tables(postgres_url) == TABLES
    assert ledger(postgres_url) == [(m.version, m.name) for m in shipped]
    assert await migrate_url(postgres_url) == []
    assert ledger(postgres_url) == [(m.version, m.name) for m in shipped]


async def test_a_new_file_is_applied_alone(postgres_url: str, tmp_path: Path) -> None:
    for m in migrations():
        (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    await migrate_url(postgres_url, tmp_path)
    (tmp_path / f"{len(migrations()) + 1:04d}_extra.sql").write_text(
        "CREATE TABLE dago_extra (x int);\nALTER TABLE dago_extra ADD COLUMN y int;"
    )
    applied = await migrate_url(postgres_url, tmp_path)
    assert [m.name for m in applied] == ["extra"]
    assert "dago_extra" in tables(postgres_url)


async def test_a_failing_file_leaves_nothing_behind(postgres_url: str, tmp_path: Path) -> None:
    (tmp_path / "0001_half.sql").write_text("CREATE TABLE dago_half (x int);\nSELECT nonsense;")
    with pytest.raises(psycopg.errors.UndefinedColumn):
        await migrate_url(postgres_url, tmp_path)
    assert "dago_half" not in tables(postgres_url)


async def test_concurrent_migrations_apply_each_file_once(postgres_url: str) -> None:
    conns = [await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    # Each file by exactly one of them (with several files, different ones may apply them).
    applied = sorted(m.version for r in results for m in r)
    assert applied == [m.version for m in migrations()]
    assert ledger(postgres_url) == [(m.version, m.name) for m in migrations()]


async def test_a_renamed_or_missing_file_is_refused(postgres_url: str, tmp_path: Path) -> None:
    await migrate_url(postgres_url)
    (tmp_path / "0001_other.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="released files are never changed"):
        await migrate_url(postgres_url, tmp_path)
    (tmp_path / "0001_other.sql").unlink()
    (tmp_path / "0003_gap.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="expected 0001"):
        migrations(tmp_path)


async def test_version_4_upgrades_runs_archived_before_it(
    postgres_url: str, tmp_path: Path
) -> None:
    """A database at version 3 with archived runs: 0004 fills their fork columns from the
    status each row holds, and leaves fork_json NULL (such a run cannot be forked)."""
    for m in migrations()[:3]:
        (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    await migrate_url(postgres_url, tmp_path)
    fork_status = {
        "priority": 5,
        "forkedFrom": "0-SOURCE",
        "nodes": [
            {"nodeId": "a", "reused": True},
            {"nodeId": "b"},
            {"nodeId": "c", "reused": True},
        ],
    }
    plain_status = {"nodes": [{"nodeId": "a"}]}  # written before priorities: none recorded
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for gid, status in (("0-FORK", fork_status), ("0-PLAIN", plain_status)):
            conn.execute(
                "INSERT INTO dago_runs (graph_id, namespace, state, created_at, ended_at,"
                " graph_json, status_json, result_json) VALUES (%s, 'default', 'COMPLETED',"
                " now(), now(), '{}', %s, '{}')",
                (gid, Jsonb(status)),
            )
    applied = await migrate_url(postgres_url)
    assert [m.version for m in applied] == [4]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(
            "SELECT graph_id, forked_from_graph_id, priority, reused_nodes, fork_json"
            " FROM dago_runs ORDER BY graph_id"
        ).fetchall()
    assert rows == [("0-FORK", "0-SOURCE", 5, 2, None), ("0-PLAIN", None, None, 0, None)]


def dago_migrate(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dago", "migrate"],
        env=dago_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.process
def test_the_migrate_command(postgres_url: str) -> None:
    done = dago_migrate(DAGO_POSTGRES_URL=postgres_url)
    assert done.returncode == 0, done.stderr
    assert f"applied 0001_{migrations()[0].name}" in done.stdout
    assert tables(postgres_url) == TABLES
    again = dago_migrate(DAGO_POSTGRES_URL=postgres_url)
    assert again.returncode == 0, again.stderr
    assert "(0 applied now)" in again.stdout


@pytest.mark.process
def test_the_migrate_command_needs_a_url() -> None:
    done = dago_migrate(DAGO_POSTGRES_URL="")
    assert done.returncode == 2
    assert "DAGO_POSTGRES_URL is empty" in done.stderr
    unreachable = dago_migrate(DAGO_POSTGRES_URL="postgresql://nobody@127.0.0.1:1/none")
    assert unreachable.returncode == 1
    assert "dago migrate:" in unreachable.stderr
