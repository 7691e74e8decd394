"""ListGraphs' filters mean the same in both stores: RunFilter.matches (what a run read
from Redis passes) and RunFilter.where (the SQL over dago_runs) pick the same runs out of
one set, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from dago.history.filters import RunFacts, RunFilter, datetime_ms, ms_datetime
from dago.history.migrate import migrate_url

T0 = 1_796_083_200_000  # 2026-12-01T00:00:00Z in ms

METADATA: list[dict[str, Any]] = [
    {},
    {"team": "search"},
    {"team": "search", "tier": 1.0},
    {"team": "ads", "tier": 2.5, "live": True},
    {"team": "1", "tier": 1.5, "live": False},
    {"team": None, "tier": [1.0], "live": "true"},
    {"team": {"name": "search"}, "tier": -0.0},
]


def runs() -> list[tuple[str, RunFacts]]:
    """Runs that differ in every filtered field, some on the same millisecond."""
    out = []
    states = ("COMPLETED", "FAILED", "CANCELLED")
    for n, meta in enumerate(itertools.islice(itertools.cycle(METADATA), 42)):
        out.append(
            (
                f"{n % 4}-run{n:03d}",
                RunFacts(
                    state=states[n % 3],
                    created_ms=T0 + (n // 2) * 1000,  # pairs share a millisecond
                    name=("alpha", "beta", "")[n % 3 if n % 5 else 0],
                    cost_usd=[0.0, 0.25, 0.5, 1.0, 0.1 + 0.2][n % 5],
                    metadata=meta,
                    namespace="other" if n % 7 == 3 else "default",
                    forked_from="0-source" if n % 4 == 1 else "",
                ),
            )
        )
    return out


FILTERS = [
    RunFilter("default"),
    RunFilter("default", state="FAILED"),
    RunFilter("default", created_after_ms=T0 + 5000),
    RunFilter("default", created_before_ms=T0 + 5000),
    RunFilter("default", created_after_ms=T0 + 3000, created_before_ms=T0 + 9000),
    RunFilter("default", created_after_ms=T0 + 3000, created_before_ms=T0 + 3000),
    RunFilter("default", name="alpha"),
    RunFilter("default", name="nobody"),
    RunFilter("default", min_cost_usd=0.5),
    RunFilter("default", min_cost_usd=0.30000000000000004),
    RunFilter("default", metadata=(("team", "search"),)),
    RunFilter("default", metadata=(("tier", "1"),)),
    RunFilter("default", metadata=(("tier", "1.0"),)),
    RunFilter("default", metadata=(("tier", "2.5"),)),
    RunFilter("default", metadata=(("tier", "0"),)),
    RunFilter("default", metadata=(("live", "true"),)),
    RunFilter("default", metadata=(("live", "false"),)),
    RunFilter("default", metadata=(("team", "1"),)),
    RunFilter("default", metadata=(("team", "null"),)),
    RunFilter("default", metadata=(("team", "search"), ("tier", "1e0"))),
    RunFilter("default", state="COMPLETED", name="beta", min_cost_usd=0.2),
    RunFilter(None),
    RunFilter(None, state="FAILED", min_cost_usd=0.2),
    RunFilter("other", state="COMPLETED"),
    RunFilter("default", forked_from="0-source"),
    RunFilter("default", forked_from="0-nobody"),
    RunFilter("default", state="FAILED", forked_from="0-source"),
    RunFilter("other"),
]


@pytest.fixture
def loaded(postgres_url: str) -> str:
    """The history database holding :func:`runs` (in namespaces ``default`` and ``other``)."""
    asyncio.run(migrate_url(postgres_url))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for gid, r in runs():
            at = ms_datetime(r.created_ms)
            conn.execute(
                "INSERT INTO dago_runs (graph_id, namespace, name, state, created_at, ended_at,"
                " metadata, cost_usd, forked_from_graph_id, graph_json, status_json, result_json)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, '{}', '{}', '{}')",
                (
                    gid,
                    r.namespace,
                    r.name,
                    r.state,
                    at,
                    at,
                    Jsonb(r.metadata),
                    r.cost_usd,
                    r.forked_from or None,
                ),
            )
    return postgres_url


def test_sql_and_python_pick_the_same_runs(loaded: str) -> None:
    everything = runs()
    with psycopg.connect(loaded) as conn:
        for f in FILTERS:
            where, params = f.where()
            query = sql.SQL("SELECT graph_id FROM dago_runs WHERE {}").format(where)
            in_sql = {row[0] for row in conn.execute(query, params)}
            in_python = {gid for gid, r in everything if f.matches(r)}
            assert in_sql == in_python, f
    # The filters are not vacuous: most pick some runs and leave others out.
    picked = [sum(f.matches(r) for _, r in everything) for f in FILTERS[1:-1]]
    assert sum(0 < n < len(everything) for n in picked) >= 15, picked


def test_metadata_values_by_type() -> None:
    def one(meta: dict[str, Any], key: str, value: str) -> bool:
        run = RunFacts("COMPLETED", T0, "", 0.0, meta)
        return RunFilter("default", metadata=((key, value),)).matches(run)

    assert one({"k": "v"}, "k", "v") and not one({"k": "v"}, "k", "V")
    assert one({"k": 1.0}, "k", "1") and one({"k": 1.0}, "k", "1.0") and one({"k": 1}, "k", "1e0")
    assert not one({"k": 1.0}, "k", "01") and not one({"k": 1.0}, "k", " 1")
    assert one({"k": True}, "k", "true") and not one({"k": True}, "k", "True")
    assert not one({"k": None}, "k", "null") and not one({"k": [1]}, "k", "[1]")
    assert not one({}, "k", "") and one({"k": ""}, "k", "")


def test_millisecond_times_convert_exactly() -> None:
    for ms in (0, 1, T0, T0 + 999, 253_402_300_799_999):
        assert datetime_ms(ms_datetime(ms)) == ms


def test_digest_tells_filters_apart() -> None:
    digests = {f.digest() for f in FILTERS}
    assert len(digests) == len(FILTERS)
    # The namespace read is a filter too: one namespace's token is not another's, nor that
    # of an operator's listing of every namespace.
    assert len({RunFilter(ns, name="x").digest() for ns in ("a", "b", None)}) == 3
