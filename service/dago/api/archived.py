"""The reads of runs Redis no longer holds: from the archive (DAGO_POSTGRES_URL), else
NOT_FOUND. The servicer asks Redis first and comes here only when Redis has no such run,
so this is the one place that decides "Redis, else history".

Answers are the messages the run was archived as, checked as in Redis: another
namespace's run is NOT_FOUND, a FULL status or a result too large for one response is
FAILED_PRECONDITION (GRAPH_TOO_LARGE), and BASIC leaves out outputs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from dago.api import errors
from dago.api.auth import Authenticator
from dago.api.fork import ForkSource, from_record
from dago.config import Settings
from dago.history.runs import Archived, ForkRecord, RunHistory
from dago.store.events import batched
from dago.v1 import execution_pb2, orchestrator_pb2

PAGE = 1000
"""Events per read of a replay."""


class ArchivedReads:
    """Single-run reads from the archive; ``history`` None: no archive, always NOT_FOUND."""

    def __init__(self, history: RunHistory | None, auth: Authenticator, settings: Settings) -> None:
        self._history = history
        self._auth = auth
        self._settings = settings

    def _db(self, graph_id: str) -> RunHistory:
        if self._history is None:
            raise errors.not_found("graph", graph_id)
        return self._history

    def _mine(self, graph_id: str, found: Archived | None) -> Any:
        if found is None or found.namespace != self._auth.current():
            raise errors.not_found("graph", graph_id)
        return found.message

    def _fits(self, graph_id: str, msg: Any, what: str) -> None:
        budget = self._settings.max_message_bytes // 2
        if msg.ByteSize() > budget:
            raise errors.failed_precondition(
                "GRAPH_TOO_LARGE",
                graph_id,
                f"graph {graph_id} is {msg.ByteSize()} bytes in {what}, more than one response "
                f"can carry ({budget} bytes): read it with GetGraphStatus "
                "view=GRAPH_STATUS_VIEW_BASIC and each node's attempts with ListNodeAttempts",
            )

    async def graph(self, graph_id: str) -> orchestrator_pb2.GetGraphResponse:
        """GetGraph of an archived run."""
        found = await self._db(graph_id).graph(graph_id)
        msg: orchestrator_pb2.GetGraphResponse = self._mine(graph_id, found)
        return msg

    async def status(self, graph_id: str, full: bool) -> execution_pb2.GraphStatus:
        """GetGraphStatus of an archived run, in the FULL or BASIC view."""
        found = await self._db(graph_id).status(graph_id, full)
        status: execution_pb2.GraphStatus = self._mine(graph_id, found)
        if full:
            self._fits(graph_id, status, "GRAPH_STATUS_VIEW_FULL")
        return status

    async def result(self, graph_id: str) -> orchestrator_pb2.GetGraphResultResponse:
        """GetGraphResult of an archived run (always finished)."""
        found = await self._db(graph_id).result(graph_id)
        result: orchestrator_pb2.GetGraphResultResponse = self._mine(graph_id, found)
        self._fits(graph_id, result, "GetGraphResult")
        return result

    async def fork_source(self, graph_id: str) -> ForkSource:
        """A run to fork that Redis let go, as the history kept it; FAILED_PRECONDITION for
        a run archived before the history kept what a fork needs (or with no history: not
        found, as any read)."""
        found = await self._db(graph_id).fork_source(graph_id)
        run: ForkRecord = self._mine(graph_id, found)
        if run.fork is None:
            raise errors.failed_precondition(
                "GRAPH_EXPIRED",
                graph_id,
                f"graph {graph_id} is no longer in Redis (its state expired after its "
                "retention) and was archived before the history kept what a fork needs "
                "(node outputs and map items): submit the graph again instead",
            )
        nodes, items = from_record(run.fork)
        return ForkSource(graph_id, run.state, run.graph, run.inputs, nodes, items)

    async def attempts(self, graph_id: str, node_id: str) -> list[execution_pb2.Attempt]:
        """Every attempt of one node of an archived run, in order (inputs and outputs
        included); NOT_FOUND for a node the graph does not have."""
        found = await self._db(graph_id).status(graph_id, True)
        status: execution_pb2.GraphStatus = self._mine(graph_id, found)
        for node in status.nodes:
            if node.node_id == node_id:
                return list(node.attempts)
        raise errors.not_found("node", f"{graph_id}/{node_id}")

    async def events(self, graph_id: str, after_seq: int, count: int) -> list[execution_pb2.Event]:
        """Up to ``count`` events of an archived run after ``after_seq``."""
        history = self._db(graph_id)
        ns = await history.namespace(graph_id)
        self._mine(graph_id, None if ns is None else Archived(ns, None))
        return await history.events(graph_id, after_seq, count)

    async def watch(self, graph_id: str, after_seq: int, batch: bool) -> AsyncIterator[bytes]:
        """WatchGraph of an archived run: its log after ``after_seq`` as serialized
        ``WatchGraphResponse`` messages (batched in batch mode), then the end of the stream
        (the run ended long ago: nothing follows)."""
        after = after_seq
        while events := await self.events(graph_id, after, PAGE):
            raw = [orchestrator_pb2.WatchGraphResponse(event=e).SerializeToString() for e in events]
            for message in batched(raw) if batch else raw:
                yield message
            after = events[-1].seq
