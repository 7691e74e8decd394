"""ListGraphs' filters, decided once for both stores.

A :class:`RunFilter` answers the same question two ways: :meth:`RunFilter.matches` over a
run read from Redis (its meta hash, decoded into :class:`RunFacts`), and
:meth:`RunFilter.where` as a parameterized SQL condition over ``dago_runs``. Each rule is
written here, side by side, so the two cannot drift apart: a run is listed or not whatever
store it is read from (tests/history/test_listing.py pages across both with each filter).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from dago.config import DEFAULT_NAMESPACE
from dago.history.db import SqlParam

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
"""A JSON number, the only numbers a metadata filter value is read as (``float`` alone
also takes ``inf``, ``nan``, `` 1`` and ``1_0``)."""


def ms_datetime(ms: int) -> datetime:
    """The UTC time ``ms`` milliseconds after the epoch, exactly (what PostgreSQL stores)."""
    seconds, rest = divmod(ms, 1000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest * 1000)


def datetime_ms(value: datetime) -> int:
    """Milliseconds since the epoch of a PostgreSQL time (dago writes whole milliseconds)."""
    delta = value - datetime(1970, 1, 1, tzinfo=UTC)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


@dataclass(frozen=True)
class RunFacts:
    """What the filters look at of one run."""

    state: str
    """GraphState name without its prefix (``COMPLETED``), as ``dago_runs.state``."""
    created_ms: int
    name: str
    cost_usd: float
    metadata: dict[str, Any] | None
    """Graph.metadata as JSON values; None when it was not read (no metadata filter)."""
    definition_name: str = ""
    """The definition the run was submitted from ("" for a graph sent whole)."""
    definition_version: int = 0
    parent_graph_id: str = ""
    """The run that started this one ("" for a run a client submitted)."""
    namespace: str = DEFAULT_NAMESPACE
    """The namespace the run belongs to."""
    forked_from: str = ""
    """The run this one was forked from ("" for a run that is no fork)."""


@dataclass(frozen=True)
class RunFilter:
    """Which runs a listing shows (ListGraphsRequest's filters, checked)."""

    namespace: str | None
    """Only this namespace's runs; None: every namespace's (an operator's listing)."""
    state: str = ""
    """GraphState name without its prefix; empty: any state."""
    created_after_ms: int | None = None
    """Inclusive lower bound of the creation time."""
    created_before_ms: int | None = None
    """Exclusive upper bound of the creation time."""
    name: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    min_cost_usd: float = 0.0
    definition: str = ""
    """Only runs submitted from this definition name."""
    definition_version: int = 0
    """With ``definition``: only runs of this version (0: any)."""
    parent_graph_id: str = ""
    """Only the child runs of this run."""
    forked_from: str = ""
    """Only the forks of this run."""

    @property
    def needs_metadata(self) -> bool:
        """Whether matching reads Graph.metadata (Redis keeps it inside the definition)."""
        return bool(self.metadata)

    def digest(self) -> str:
        """A short fingerprint of the filters: a page token carries it, so a token is
        refused when the next request changed the filters under it."""
        text = json.dumps(
            [
                self.state,
                self.created_after_ms,
                self.created_before_ms,
                self.name,
                self.metadata,
                self.min_cost_usd,
            ]
            # Only when set: tokens made before definitions existed stay valid.
            + ([self.definition, self.definition_version] if self.definition else [])
            + ([self.parent_graph_id] if self.parent_graph_id else [])
            # The namespace read ("*": every one): a token of one namespace's listing is
            # refused for another's, or for an operator's listing of every namespace.
            + [self.namespace if self.namespace is not None else "*"]
            + ([["forked_from", self.forked_from]] if self.forked_from else [])
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def matches(self, run: RunFacts) -> bool:
        """Whether a run read from Redis passes every filter (the twin of :meth:`where`)."""
        if self.namespace is not None and run.namespace != self.namespace:
            return False  # a parent's children index is read whatever the namespace
        if self.state and run.state != self.state:
            return False
        if self.created_after_ms is not None and run.created_ms < self.created_after_ms:
            return False
        if self.created_before_ms is not None and run.created_ms >= self.created_before_ms:
            return False
        if self.name and run.name != self.name:
            return False
        if self.min_cost_usd and not run.cost_usd >= self.min_cost_usd:
            return False
        if self.definition and run.definition_name != self.definition:
            return False
        if self.definition_version and run.definition_version != self.definition_version:
            return False
        if self.parent_graph_id and run.parent_graph_id != self.parent_graph_id:
            return False
        if self.forked_from and run.forked_from != self.forked_from:
            return False
        if self.metadata:
            meta = run.metadata or {}
            return all(k in meta and _equal(meta[k], v) for k, v in self.metadata)
        return True

    def where(self) -> tuple[sql.Composed, list[SqlParam]]:
        """The same filters as a condition over ``dago_runs`` and its parameters (values are
        always parameters, never SQL text)."""
        parts: list[sql.Composable] = []
        params: list[SqlParam] = []
        if self.namespace is not None:
            parts.append(sql.SQL("namespace = %s"))
            params.append(self.namespace)
        if self.state:
            parts.append(sql.SQL("state = %s"))
            params.append(self.state)
        if self.created_after_ms is not None:
            parts.append(sql.SQL("created_at >= %s"))
            params.append(ms_datetime(self.created_after_ms))
        if self.created_before_ms is not None:
            parts.append(sql.SQL("created_at < %s"))
            params.append(ms_datetime(self.created_before_ms))
        if self.name:
            parts.append(sql.SQL("name = %s"))
            params.append(self.name)
        if self.min_cost_usd:
            parts.append(sql.SQL("cost_usd >= %s"))
            params.append(self.min_cost_usd)
        if self.definition:
            parts.append(sql.SQL("definition_name = %s"))
            params.append(self.definition)
        if self.definition_version:
            parts.append(sql.SQL("definition_version = %s"))
            params.append(self.definition_version)
        if self.parent_graph_id:
            parts.append(sql.SQL("parent_graph_id = %s"))
            params.append(self.parent_graph_id)
        if self.forked_from:
            parts.append(sql.SQL("forked_from_graph_id = %s"))
            params.append(self.forked_from)
        for key, value in self.metadata:
            # jsonb containment (the GIN index dago_runs_metadata): one document per JSON
            # value the text can stand for; numbers compare as numbers (1 contains 1.0).
            docs = [Jsonb({key: candidate}) for candidate in _candidates(value)]
            parts.append(
                sql.SQL("({})").format(
                    sql.SQL(" OR ").join(sql.SQL("metadata @> %s") for _ in docs)
                )
            )
            params.extend(docs)
        return sql.SQL(" AND ").join(parts or [sql.SQL("TRUE")]), params


def _candidates(value: str) -> list[str | bool | float]:
    """The JSON values a metadata filter's text matches: itself as a string, and the boolean
    or number it spells, if any."""
    out: list[str | bool | float] = [value]
    if value in ("true", "false"):
        out.append(value == "true")
    elif _JSON_NUMBER.fullmatch(value):
        number = float(value)
        if abs(number) != float("inf"):
            out.append(number)
    return out


def _equal(stored: Any, value: str) -> bool:
    """Whether a metadata field's JSON value matches a filter's text (see _candidates)."""
    if isinstance(stored, bool):
        return value == ("true" if stored else "false")
    if isinstance(stored, str):
        return stored == value
    if isinstance(stored, int | float):
        return any(isinstance(c, float) and c == float(stored) for c in _candidates(value))
    return False
