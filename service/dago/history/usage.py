"""GetUsageSummary: tokens, cost, runs and failures of archived runs, summed in PostgreSQL.

The range is on the runs' creation time, as ListGraphs' created_after/created_before, so
a summary and the listing with the same range count the same runs. Days are UTC days of
the creation time. Grouping by model sums ``dago_run_usage`` (one row per node and its
model) joined to the runs of the range; every other grouping sums ``dago_runs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from psycopg import sql

from dago.history.db import HistoryDb, SqlParam
from dago.history.filters import ms_datetime
from dago.v1 import execution_pb2, orchestrator_pb2


class GroupBy(Enum):
    """What rows are grouped by (UsageGroupBy), with the SQL of a row's key."""

    NONE = ""
    DAY = "to_char(date_trunc('day', r.created_at AT TIME ZONE 'UTC'), 'YYYY-MM-DD')"
    MODEL = "u.model"
    NAMESPACE = "r.namespace"
    GRAPH_NAME = "r.name"


@dataclass(frozen=True)
class UsageQuery:
    """One summary's range and scope."""

    start_ms: int | None
    """Inclusive lower bound of the creation time; None: no bound."""
    end_ms: int | None
    """Exclusive upper bound; None: no bound."""
    group_by: GroupBy
    namespace: str | None
    """Only this namespace's runs; None: every namespace (an operator's summary)."""


_RUN_SUMS = sql.SQL(
    "count(*) AS runs, count(*) FILTER (WHERE r.state = 'FAILED') AS failed_runs,"
    " coalesce(sum(r.input_tokens), 0)::bigint AS input_tokens,"
    " coalesce(sum(r.output_tokens), 0)::bigint AS output_tokens,"
    " coalesce(sum(r.cache_write_tokens), 0)::bigint AS cache_write_tokens,"
    " coalesce(sum(r.cache_read_tokens), 0)::bigint AS cache_read_tokens,"
    " coalesce(sum(r.cost_usd), 0) AS cost_usd"
)
# Per model: a run counts once per model it called, its nodes' usage with that model.
_MODEL_SUMS = sql.SQL(
    "count(DISTINCT r.graph_id) AS runs,"
    " count(DISTINCT r.graph_id) FILTER (WHERE r.state = 'FAILED') AS failed_runs,"
    " sum(u.input_tokens)::bigint AS input_tokens, sum(u.output_tokens)::bigint AS output_tokens,"
    " sum(u.cache_write_tokens)::bigint AS cache_write_tokens,"
    " sum(u.cache_read_tokens)::bigint AS cache_read_tokens, sum(u.cost_usd) AS cost_usd"
)


class UsageReport:
    """Builds GetUsageSummaryResponse from the history database."""

    def __init__(self, db: HistoryDb) -> None:
        self._db = db

    async def summary(self, q: UsageQuery) -> orchestrator_pb2.GetUsageSummaryResponse:
        """The totals of the range and, with a grouping, its rows ordered by key."""
        where, params = _where(q)
        resp = orchestrator_pb2.GetUsageSummaryResponse()
        async with self._db.pool.connection() as conn, conn.transaction():
            # One snapshot for the totals and the rows: runs archived meanwhile are in
            # neither or both, so the rows add up to the totals.
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = await conn.execute(
                sql.SQL("SELECT {} FROM dago_runs r WHERE {}").format(_RUN_SUMS, where), params
            )
            total = await cur.fetchone()
            _fill(resp.total, total)
            if q.group_by is GroupBy.NONE:
                return resp
            key = sql.SQL(q.group_by.value)
            if q.group_by is GroupBy.MODEL:
                source, sums = (
                    sql.SQL("dago_runs r JOIN dago_run_usage u USING (graph_id)"),
                    _MODEL_SUMS,
                )
            else:
                source, sums = sql.SQL("dago_runs r"), _RUN_SUMS
            cur = await conn.execute(
                sql.SQL("SELECT {} AS key, {} FROM {} WHERE {} GROUP BY 1 ORDER BY 1").format(
                    key, sums, source, where
                ),
                params,
            )
            for row in await cur.fetchall():
                _fill(resp.rows.add(key=row["key"]), row)
        return resp


def _where(q: UsageQuery) -> tuple[sql.Composed, list[SqlParam]]:
    parts: list[sql.Composable] = [sql.SQL("true")]
    params: list[SqlParam] = []
    if q.namespace is not None:
        parts.append(sql.SQL("r.namespace = %s"))
        params.append(q.namespace)
    if q.start_ms is not None:
        parts.append(sql.SQL("r.created_at >= %s"))
        params.append(ms_datetime(q.start_ms))
    if q.end_ms is not None:
        parts.append(sql.SQL("r.created_at < %s"))
        params.append(ms_datetime(q.end_ms))
    return sql.SQL(" AND ").join(parts), params


def _fill(row: orchestrator_pb2.UsageSummaryRow, sums: Any) -> None:
    row.runs = sums["runs"]
    row.failed_runs = sums["failed_runs"]
    u: execution_pb2.Usage = row.usage
    u.input_tokens = sums["input_tokens"]
    u.output_tokens = sums["output_tokens"]
    u.cache_creation_input_tokens = sums["cache_write_tokens"]
    u.cache_read_input_tokens = sums["cache_read_tokens"]
    u.cost_usd = sums["cost_usd"]
