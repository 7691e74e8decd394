"""ListGraphs over 10,000 archived runs, with each filter: how long a page takes.

Run by hand (not part of `make bench`)::

    PYTHONPATH=service:gen/python:clients/python:tests/support:bench \\
        .venv/bin/python bench/history_list.py [--runs 10000] [--calls 50]

It starts a private Redis, makes a database of its own on the PostgreSQL server named by
``DAGO_BENCH_POSTGRES`` (an admin URL; default ``postgresql://postgres@127.0.0.1:5432/
postgres``), applies the migrations, bulk-inserts ``--runs`` rows shaped like the
archiver's (30 days of runs, 3 states, 20 names, metadata with a team and a customer,
costs spread over three orders of magnitude), starts the real API in this process (no
workers) and times ListGraphs over gRPC: the first page and the 10th (a keyset page deep
in the list), 50 runs a page, for each filter, then every matching run in pages of
1,000. Prints p50 and p95 per case, the whole listings' times and the
PostgreSQL plan of the filtered query. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from google.protobuf import timestamp_pb2
from procs import Procs, start_redis
from psycopg.types.json import Jsonb

from dago.engine.ids import new_graph_id
from dago.history.migrate import migrate_url
from dago.v1 import execution_pb2, orchestrator_pb2
from harness import InProcessStack, stack_settings
from pgfixture import ADMIN_URL, fresh_database

STATES = ("COMPLETED", "COMPLETED", "COMPLETED", "FAILED", "CANCELLED")
NOW = datetime(2026, 12, 7, tzinfo=UTC)


def rows(count: int, rng: random.Random) -> list[tuple[Any, ...]]:
    """``count`` dago_runs rows over the 30 days before NOW."""
    out = []
    for n in range(count):
        created = NOW - timedelta(seconds=rng.uniform(0, 30 * 86400))
        ended = created + timedelta(seconds=rng.uniform(0.5, 120))
        cost = round(10 ** rng.uniform(-4, -1), 6)
        meta = {"team": f"team-{n % 7}", "customer": f"c{rng.randrange(500)}", "tier": n % 3}
        tokens = rng.randrange(100, 20000)
        out.append(
            (
                new_graph_id(n % 4), "default", f"graph-{n % 20}", "", rng.choice(STATES),
                created, created, ended, Jsonb(meta), tokens, tokens // 4, 0, tokens // 2,
                cost, 3, 12, Jsonb({}), Jsonb({}), Jsonb({}),
            )
        )  # fmt: skip
    return out


def stamp(when: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when)
    return ts


CASES: dict[str, dict[str, Any]] = {
    "no filter": {},
    "state=FAILED (20%)": {"state": execution_pb2.GRAPH_STATE_FAILED},
    "name (5%)": {"name": "graph-7"},
    "metadata team (14%)": {"metadata": ["team=team-3"]},
    "metadata customer (0.2%)": {"metadata": ["customer=c42"]},
    "min_cost_usd 0.05 (10%)": {"min_cost_usd": 0.05},
    "time range 7 days (23%)": {
        "created_after": stamp(NOW - timedelta(days=10)),
        "created_before": stamp(NOW - timedelta(days=3)),
    },
    "state+name+range (~0.2%)": {
        "state": execution_pb2.GRAPH_STATE_COMPLETED,
        "name": "graph-3",
        "created_after": stamp(NOW - timedelta(days=15)),
    },
}


async def timed(
    stack: InProcessStack, filters: dict[str, Any], pages: int, calls: int
) -> list[float]:
    """Milliseconds per call of ListGraphs' page ``pages`` (50 runs a page) with ``filters``."""
    token = ""
    for _ in range(pages - 1):
        req = orchestrator_pb2.ListGraphsRequest(page_size=50, page_token=token, **filters)
        token = (await stack.client.stub.ListGraphs(req, timeout=30)).next_page_token
        if not token:
            return []
    req = orchestrator_pb2.ListGraphsRequest(page_size=50, page_token=token, **filters)
    for _ in range(5):  # warm up: connections, plans
        await stack.client.stub.ListGraphs(req, timeout=30)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await stack.client.stub.ListGraphs(req, timeout=30)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def whole(stack: InProcessStack, filters: dict[str, Any]) -> tuple[int, float]:
    """(runs, milliseconds) to list every run ``filters`` match, 1,000 a page."""
    t0 = time.perf_counter()
    token, count = "", 0
    while True:
        req = orchestrator_pb2.ListGraphsRequest(page_size=1000, page_token=token, **filters)
        page = await stack.client.stub.ListGraphs(req, timeout=30)
        count += len(page.graphs)
        token = page.next_page_token
        if not token:
            return count, (time.perf_counter() - t0) * 1000


async def main(count: int, calls: int) -> None:
    procs = Procs(Path(tempfile.mkdtemp(prefix="dago-bench-history-")))
    try:
        redis_url, _ = start_redis(procs)
        with fresh_database(ADMIN_URL) as url:
            await migrate_url(url)
            with psycopg.connect(url, autocommit=True) as conn:
                t0 = time.perf_counter()
                with conn.cursor().copy(
                    "COPY dago_runs (graph_id, namespace, name, request_id, state, created_at,"
                    " started_at, ended_at, metadata, input_tokens, output_tokens,"
                    " cache_write_tokens, cache_read_tokens, cost_usd, steps, event_count,"
                    " graph_json, status_json, result_json)"
                    " FROM STDIN"
                ) as copy:
                    for row in rows(count, random.Random(23)):
                        copy.write_row(row)
                conn.execute("ANALYZE dago_runs")
                print(f"inserted {count} runs in {time.perf_counter() - t0:.1f}s")
            settings = dataclasses.replace(
                stack_settings(redis_url, f"bh{secrets.token_hex(3)}"), postgres_url=url
            )
            async with InProcessStack(settings, workers=0) as stack:
                head = ("case", "page 1 p50", "p95", "page 10 p50", "p95")
                print("{:<28} {:>10} {:>7} {:>12} {:>7}  (ms)".format(*head))
                for name, filters in CASES.items():
                    first = await timed(stack, filters, 1, calls)
                    deep = await timed(stack, filters, 10, calls)
                    cells = (_p(first, 50), _p(first, 95), _p(deep, 50), _p(deep, 95))
                    print("{:<28} {:>10} {:>7} {:>12} {:>7}".format(name, *cells))
                print("\nevery matching run, pages of 1,000 (ms for the whole listing):")
                for name, filters in CASES.items():
                    count, took = await whole(stack, filters)
                    print(f"{name:<28} {count:>6} runs {took:>8.1f}")
            with psycopg.connect(url) as conn:
                for where in (_KEYSET, _METADATA):
                    plan = conn.execute(
                        "EXPLAIN ANALYZE SELECT graph_id FROM dago_runs WHERE namespace ="
                        f" 'default' AND {where} ORDER BY created_at DESC,"
                        ' graph_id COLLATE "C" DESC LIMIT 51'
                    ).fetchall()
                    print("\n".join(r[0] for r in plan))
    finally:
        procs.stop_all()


_METADATA = 'metadata @> \'{"customer": "c42"}\''
# A keyset page deep in the list, as the listing asks for it (dago.history.listing).
_KEYSET = (
    "created_at <= '2026-11-20T00:00:00Z' AND (created_at < '2026-11-20T00:00:00Z'"
    " OR graph_id COLLATE \"C\" < '3-ZZZ')"
)


def _p(values: list[float], pct: int) -> str:
    if not values:
        return "-"
    if pct == 50:
        return f"{statistics.median(values):.2f}"
    return f"{statistics.quantiles(values, n=100)[pct - 1]:.2f}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.calls))
