"""The asyncio client of dago's OrchestratorService, on the generated stubs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc

from dago.v1 import (
    definitions_pb2,
    definitions_pb2_grpc,
    execution_pb2,
    graph_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)
from dago_client._common import (
    RECONNECT_OPTIONS,
    RESUMABLE_CODES,
    TERMINAL_EVENTS,
    OnResume,
    RunFilters,
    backoff,
    events_of,
    fork_request,
    read_stream_async,
    run_request,
    signal_request,
    split_reference,
    submit_request,
    usage_request,
    with_namespace,
)
from dago_client.config import ClientConfig
from dago_client.errors import DagoError, UnavailableError, from_rpc_error

Resp = TypeVar("Resp")


class AsyncDagoClient:
    """dago's API for asyncio code.

    ``AsyncDagoClient()`` reads ``DAGO_TARGET``, ``DAGO_API_KEY`` and ``DAGO_TLS*`` (see
    :mod:`dago_client.config`); keyword arguments override them. Use it as an async
    context manager, or call :meth:`close`. Failed calls raise
    :class:`dago_client.DagoError` subclasses. Idempotent calls (reads, cancel, submit with
    a request_id, which submit generates when none is given) are retried on UNAVAILABLE
    within their deadline.
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool | None = None,
        tls_ca: str | None = None,
        timeout_s: float | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        self.config = config or ClientConfig.from_env(
            target=target, api_key=api_key, tls=tls, tls_ca=tls_ca, timeout_s=timeout_s
        )
        options = self.config.channel_options() + RECONNECT_OPTIONS
        creds = self.config.credentials()
        if creds is None:
            self.channel = grpc.aio.insecure_channel(self.config.address, options=options)
        else:
            self.channel = grpc.aio.secure_channel(self.config.address, creds, options=options)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)
        self.definitions_stub = definitions_pb2_grpc.DefinitionServiceStub(self.channel)
        self._metadata = self.config.metadata()

    async def __aenter__(self) -> AsyncDagoClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def _call(
        self,
        method: Callable[..., Awaitable[Resp]],
        request: Any,
        *,
        idempotent: bool,
        deadline_s: float | None,
    ) -> Resp:
        total = self.config.timeout_s if deadline_s is None else deadline_s
        deadline = time.monotonic() + total
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - time.monotonic(), 0.001)
            try:
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                if (
                    not idempotent
                    or err.code != grpc.StatusCode.UNAVAILABLE
                    or attempt >= self.config.max_attempts
                ):
                    raise err from None
                delay = err.retry_delay_s or backoff(
                    attempt, self.config.initial_backoff_s, self.config.max_backoff_s
                )
                if time.monotonic() + delay >= deadline:
                    raise err from None
                await asyncio.sleep(delay)

    async def submit(
        self,
        graph: orchestrator_pb2.SubmitGraphRequest | graph_pb2.Graph | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        definition: str | None = None,
        allow_deprecated: bool = False,
        request_id: str | None = None,
        validate_only: bool = False,
        deadline_s: float | None = None,
        priority: int = 0,
    ) -> orchestrator_pb2.SubmitGraphResponse:
        """Submit a graph (or a whole SubmitGraphRequest), or a stored definition by
        reference (``definition="name@prod"``: a name, ``name@7``, ``name@label`` or
        ``name@latest``; ``allow_deprecated`` to run a deprecated version); ``inputs`` are
        merged into its inputs; ``priority`` (1-5, higher first) orders the run's work within
        its namespace (0: the server's default, 3). Without a request_id one is generated,
        which makes retries safe."""
        req = submit_request(
            graph, inputs, request_id, validate_only, definition, allow_deprecated, priority
        )
        return await self._call(self.stub.SubmitGraph, req, idempotent=True, deadline_s=deadline_s)

    # --- stored definitions (DefinitionService, docs/definitions.md) ---------------------

    async def publish_definition(
        self,
        name: str,
        graph: graph_pb2.Graph,
        description: str = "",
        *,
        deadline_s: float | None = None,
    ) -> definitions_pb2.PublishDefinitionResponse:
        """Publish ``graph`` as the next version of ``name`` (the latest version, with
        ``created`` False, when its graph is the same): safe to retry."""
        req = definitions_pb2.PublishDefinitionRequest(
            name=name, graph=graph, description=description
        )
        return await self._call(
            self.definitions_stub.PublishDefinition, req, idempotent=True, deadline_s=deadline_s
        )

    async def definition(
        self, name: str, version: str | int = "latest", *, deadline_s: float | None = None
    ) -> definitions_pb2.DefinitionVersion:
        """One version of a definition: a number, a label or ``latest``; ``name@v`` too."""
        name, version = split_reference(name, version)
        req = definitions_pb2.GetDefinitionRequest(name=name, version=version)
        resp = await self._call(
            self.definitions_stub.GetDefinition, req, idempotent=True, deadline_s=deadline_s
        )
        return resp.definition

    async def definitions_page(
        self, page_size: int = 0, page_token: str = "", *, deadline_s: float | None = None
    ) -> definitions_pb2.ListDefinitionsResponse:
        """One page of the namespace's definitions, by name."""
        req = definitions_pb2.ListDefinitionsRequest(page_size=page_size, page_token=page_token)
        return await self._call(
            self.definitions_stub.ListDefinitions, req, idempotent=True, deadline_s=deadline_s
        )

    async def definitions(self, page_size: int = 100) -> list[definitions_pb2.DefinitionSummary]:
        """Every definition of the namespace, by name."""
        out: list[definitions_pb2.DefinitionSummary] = []
        token = ""
        while True:
            page = await self.definitions_page(page_size, token)
            out.extend(page.definitions)
            token = page.next_page_token
            if not token:
                return out

    async def definition_versions(
        self, name: str, page_size: int = 100
    ) -> list[definitions_pb2.DefinitionVersion]:
        """Every version of a definition, newest first (without their graphs)."""
        out: list[definitions_pb2.DefinitionVersion] = []
        token = ""
        while True:
            req = definitions_pb2.ListDefinitionVersionsRequest(
                name=name, page_size=page_size, page_token=token
            )
            page = await self._call(
                self.definitions_stub.ListDefinitionVersions, req, idempotent=True, deadline_s=None
            )
            out.extend(page.versions)
            token = page.next_page_token
            if not token:
                return out

    async def label_definition(
        self, name: str, label: str, version: int, *, deadline_s: float | None = None
    ) -> definitions_pb2.DefinitionVersion:
        """Point ``label`` (e.g. ``prod``) at ``version`` of ``name``."""
        req = definitions_pb2.SetDefinitionLabelRequest(name=name, label=label, version=version)
        resp = await self._call(
            self.definitions_stub.SetDefinitionLabel, req, idempotent=True, deadline_s=deadline_s
        )
        return resp.definition

    async def unlabel_definition(
        self, name: str, label: str, *, deadline_s: float | None = None
    ) -> int:
        """Remove ``label`` of ``name``: the version it pointed at (NotFoundError when the
        label does not exist)."""
        req = definitions_pb2.DeleteDefinitionLabelRequest(name=name, label=label)
        resp = await self._call(
            self.definitions_stub.DeleteDefinitionLabel, req, idempotent=True, deadline_s=deadline_s
        )
        return resp.version

    async def deprecate_definition(
        self, name: str, version: str | int, *, deadline_s: float | None = None
    ) -> definitions_pb2.DefinitionVersion:
        """Deprecate a version (a number, a label or ``latest``): new runs of it are refused
        unless they set allow_deprecated."""
        req = definitions_pb2.DeprecateDefinitionVersionRequest(name=name, version=str(version))
        resp = await self._call(
            self.definitions_stub.DeprecateDefinitionVersion,
            req,
            idempotent=True,
            deadline_s=deadline_s,
        )
        return resp.definition

    async def validate(
        self,
        graph: orchestrator_pb2.SubmitGraphRequest | graph_pb2.Graph,
        inputs: Mapping[str, Any] | None = None,
        *,
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.SubmitGraphResponse:
        """Validate only (``validate_only``); raises InvalidArgumentError when invalid."""
        return await self.submit(graph, inputs, validate_only=True, deadline_s=deadline_s)

    async def get_graph(
        self, graph_id: str, *, deadline_s: float | None = None
    ) -> orchestrator_pb2.GetGraphResponse:
        """The graph and inputs of a run, as submitted."""
        req = orchestrator_pb2.GetGraphRequest(graph_id=graph_id)
        return await self._call(self.stub.GetGraph, req, idempotent=True, deadline_s=deadline_s)

    async def status(
        self, graph_id: str, *, deadline_s: float | None = None
    ) -> execution_pb2.GraphStatus:
        """The state of a run: per-node states, attempts, timings, usage."""
        req = orchestrator_pb2.GetGraphStatusRequest(graph_id=graph_id)
        resp = await self._call(
            self.stub.GetGraphStatus, req, idempotent=True, deadline_s=deadline_s
        )
        return resp.status

    async def result(
        self, graph_id: str, *, deadline_s: float | None = None
    ) -> orchestrator_pb2.GetGraphResultResponse:
        """The outputs of a finished run (FailedPreconditionError while it runs)."""
        req = orchestrator_pb2.GetGraphResultRequest(graph_id=graph_id)
        return await self._call(
            self.stub.GetGraphResult, req, idempotent=True, deadline_s=deadline_s
        )

    async def cancel(
        self, graph_id: str, reason: str = "", *, deadline_s: float | None = None
    ) -> orchestrator_pb2.CancelGraphResponse:
        """Cancel a run (cancelling a cancelled run succeeds again, so it is retried)."""
        req = orchestrator_pb2.CancelGraphRequest(graph_id=graph_id, reason=reason)
        return await self._call(self.stub.CancelGraph, req, idempotent=True, deadline_s=deadline_s)

    async def update_limits(
        self,
        graph_id: str,
        *,
        max_tokens: int = 0,
        max_cost_usd: float = 0.0,
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.UpdateGraphLimitsResponse:
        """Raise a run's token or cost budget (0 keeps one) and resume it if its budget paused
        it (setting the same limits again changes nothing, so it is retried)."""
        limits = graph_pb2.GraphLimits(max_tokens=max_tokens, max_cost_usd=max_cost_usd)
        req = orchestrator_pb2.UpdateGraphLimitsRequest(graph_id=graph_id, limits=limits)
        return await self._call(
            self.stub.UpdateGraphLimits, req, idempotent=True, deadline_s=deadline_s
        )

    async def list_graphs_page(
        self,
        state: str | int | None = None,
        page_size: int = 0,
        page_token: str = "",
        *,
        filters: RunFilters | None = None,
        namespace: str = "",
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.ListGraphsResponse:
        """One page of runs, newest first (``filters``: see :class:`RunFilters`;
        ``namespace``, when set, stands for ``filters.namespace``)."""
        req = with_namespace(filters, namespace).request(state, page_size, page_token)
        return await self._call(self.stub.ListGraphs, req, idempotent=True, deadline_s=deadline_s)

    async def list_graphs(
        self,
        state: str | int | None = None,
        page_size: int = 100,
        limit: int | None = None,
        *,
        filters: RunFilters | None = None,
        namespace: str = "",
    ) -> AsyncIterator[orchestrator_pb2.GraphSummary]:
        """Every run (or the first ``limit``), newest first, fetching pages as needed
        (``namespace``: only that namespace's runs, see :attr:`RunFilters.namespace`)."""
        token, seen = "", 0
        filters = with_namespace(filters, namespace)
        while True:
            page = await self.list_graphs_page(state, page_size, token, filters=filters)
            for g in page.graphs:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield g
            token = page.next_page_token
            if not token:
                return

    async def usage_summary(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: str | int | None = None,
        *,
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.GetUsageSummaryResponse:
        """Tokens, cost, runs and failed runs of the archived runs created in
        ``[start, end)``, in total and grouped by ``group_by`` (day, model, namespace,
        graph_name); FailedPreconditionError when the server keeps no history."""
        req = usage_request(start, end, group_by)
        return await self._call(
            self.stub.GetUsageSummary, req, idempotent=True, deadline_s=deadline_s
        )

    async def list_events(
        self, graph_id: str, after_seq: int = 0, page_size: int = 100
    ) -> AsyncIterator[execution_pb2.Event]:
        """The stored events of a run after ``after_seq``, in order, page by page."""
        token = ""
        while True:
            req = orchestrator_pb2.ListGraphEventsRequest(
                graph_id=graph_id, page_size=page_size, page_token=token, after_seq=after_seq
            )
            page = await self._call(
                self.stub.ListGraphEvents, req, idempotent=True, deadline_s=None
            )
            for ev in page.events:
                yield ev
            token = page.next_page_token
            if not token:
                return

    async def list_workers(
        self, *, deadline_s: float | None = None
    ) -> list[orchestrator_pb2.WorkerInfo]:
        """The worker processes alive now (heartbeat within DAGO_WORKER_TTL_MS), by id."""
        req = orchestrator_pb2.ListWorkersRequest()
        resp = await self._call(self.stub.ListWorkers, req, idempotent=True, deadline_s=deadline_s)
        return list(resp.workers)

    async def limits(self, *, deadline_s: float | None = None) -> list[orchestrator_pb2.ModelLimit]:
        """The model rate limits shared by every worker, with their buckets' levels now
        (GetLimits; docs/limits.md)."""
        req = orchestrator_pb2.GetLimitsRequest()
        resp = await self._call(self.stub.GetLimits, req, idempotent=True, deadline_s=deadline_s)
        return list(resp.models)

    async def dead_letters_page(
        self,
        graph_id: str = "",
        page_size: int = 0,
        page_token: str = "",
        *,
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.ListDeadLettersResponse:
        """One page of dead letters (of one run when ``graph_id`` is given), newest first."""
        req = orchestrator_pb2.ListDeadLettersRequest(
            graph_id=graph_id, page_size=page_size, page_token=page_token
        )
        return await self._call(
            self.stub.ListDeadLetters, req, idempotent=True, deadline_s=deadline_s
        )

    async def dead_letters(
        self, graph_id: str = "", page_size: int = 100, limit: int | None = None
    ) -> AsyncIterator[orchestrator_pb2.DeadLetter]:
        """Every dead letter (or the first ``limit``), newest first, fetching pages as needed."""
        token, seen = "", 0
        while True:
            page = await self.dead_letters_page(graph_id, page_size, token)
            for d in page.dead_letters:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield d
            token = page.next_page_token
            if not token:
                return

    async def requeue_dead_letter(
        self, dead_letter_id: str, *, deadline_s: float | None = None
    ) -> orchestrator_pb2.RequeueDeadLetterResponse:
        """Run a dead-lettered node attempt again; NotFoundError when the letter is gone,
        FailedPreconditionError when its run finished or moved on. Not retried: a second
        requeue after a lost answer would find the letter gone."""
        req = orchestrator_pb2.RequeueDeadLetterRequest(dead_letter_id=dead_letter_id)
        return await self._call(
            self.stub.RequeueDeadLetter, req, idempotent=False, deadline_s=deadline_s
        )

    async def drop_dead_letter(
        self, dead_letter_id: str, *, deadline_s: float | None = None
    ) -> orchestrator_pb2.DropDeadLetterResponse:
        """Remove a dead letter; a node still waiting for it fails, and so does its run
        (``failed_node``). Not retried, like :meth:`requeue_dead_letter`."""
        req = orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=dead_letter_id)
        return await self._call(
            self.stub.DropDeadLetter, req, idempotent=False, deadline_s=deadline_s
        )

    async def fork(
        self,
        graph_id: str,
        *,
        from_nodes: Sequence[str] = (),
        failed_only: bool = False,
        node_patches: Mapping[str, Any] | None = None,
        inputs_patch: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        request_id: str | None = None,
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.ForkGraphResponse:
        """A new run of a finished run (ForkGraph): the nodes not downstream of
        ``from_nodes`` (or of the failed nodes, ``failed_only``) keep their recorded outputs;
        the others run again with ``node_patches`` (node id -> partial node) and
        ``inputs_patch`` (a JSON merge patch). ``dry_run``: the plan only (nodes reused and
        to run, cost saved and estimated). See docs/fork.md."""
        req = fork_request(
            graph_id, from_nodes, failed_only, node_patches, inputs_patch, dry_run, request_id
        )
        return await self._call(self.stub.ForkGraph, req, idempotent=True, deadline_s=deadline_s)

    async def signal(
        self,
        graph_id: str,
        node_id: str,
        decision: str,
        payload: Any = None,
        *,
        comment: str = "",
        signal_id: str | None = None,
        iteration: int = 0,
        tool_call_id: str = "",
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.SignalGraphResponse:
        """Send ``decision`` (with an optional JSON ``payload``) to a waiting wait node, or to
        an agent waiting for the approval of a tool call (``tool_call_id``: which call;
        empty: the one it waits on now).
        InvalidArgumentError for a decision or payload the node refuses,
        FailedPreconditionError when it is not waiting, AbortedError when another signal
        decided it first (the winner is in the error's ErrorInfo). Without a signal_id one is
        generated, so a retry after a lost answer gets the first answer."""
        req = signal_request(
            graph_id, node_id, decision, payload, comment, signal_id, iteration, tool_call_id
        )
        return await self._call(self.stub.SignalGraph, req, idempotent=True, deadline_s=deadline_s)

    async def items_page(
        self,
        graph_id: str,
        node_id: str,
        page_size: int = 0,
        page_token: str = "",
        state: int = 0,
        *,
        deadline_s: float | None = None,
    ) -> orchestrator_pb2.ListMapItemsResponse:
        """One page of a map node's items by index (``state``: only items in that
        ``NodeState``), with the map's counts."""
        req = orchestrator_pb2.ListMapItemsRequest(
            graph_id=graph_id,
            node_id=node_id,
            page_size=page_size,
            page_token=page_token,
            state=execution_pb2.NodeState.ValueType(state),
        )
        return await self._call(self.stub.ListMapItems, req, idempotent=True, deadline_s=deadline_s)

    async def items(
        self,
        graph_id: str,
        node_id: str,
        state: int = 0,
        page_size: int = 100,
        limit: int | None = None,
    ) -> AsyncIterator[orchestrator_pb2.MapItem]:
        """Every item of a map node (or the first ``limit``), by index, fetching pages as
        needed."""
        token, seen = "", 0
        while True:
            page = await self.items_page(graph_id, node_id, page_size, token, state)
            for item in page.items:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield item
            token = page.next_page_token
            if not token:
                return

    async def waits_page(
        self, page_size: int = 0, page_token: str = "", *, deadline_s: float | None = None
    ) -> orchestrator_pb2.ListWaitsResponse:
        """One page of the wait nodes waiting now in the caller's namespace, oldest first."""
        req = orchestrator_pb2.ListWaitsRequest(page_size=page_size, page_token=page_token)
        return await self._call(self.stub.ListWaits, req, idempotent=True, deadline_s=deadline_s)

    async def waits(
        self, page_size: int = 100, limit: int | None = None
    ) -> AsyncIterator[orchestrator_pb2.Wait]:
        """Every wait node waiting now (or the first ``limit``), oldest first, fetching pages
        as needed."""
        token, seen = "", 0
        while True:
            page = await self.waits_page(page_size, token)
            for w in page.waits:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield w
            token = page.next_page_token
            if not token:
                return

    async def watch(
        self,
        graph_id: str,
        after_seq: int = 0,
        *,
        heartbeats: bool = False,
        idle_timeout_s: float | None = 60.0,
        max_resumes: int = 20,
        on_resume: OnResume | None = None,
    ) -> AsyncIterator[execution_pb2.Event]:
        """A run's events after ``after_seq`` in order, ending after the terminal event.

        A stream that drops (server restart, proxy cut, no message for ``idle_timeout_s``)
        is reopened after the last seq delivered, so every event is seen exactly once.
        Gives up after ``max_resumes`` failures in a row. Heartbeats are skipped unless
        ``heartbeats`` is set.
        """

        def open_call(last: int) -> Any:
            req = orchestrator_pb2.WatchGraphRequest(graph_id=graph_id, after_seq=last, batch=True)
            return self.stub.WatchGraph(req, metadata=self._metadata)

        async for ev in self._follow(
            open_call, after_seq, heartbeats, idle_timeout_s, max_resumes, on_resume
        ):
            yield ev

    async def run(
        self,
        graph: orchestrator_pb2.SubmitGraphRequest | graph_pb2.Graph | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        definition: str | None = None,
        allow_deprecated: bool = False,
        priority: int = 0,
        heartbeats: bool = False,
        idle_timeout_s: float | None = 60.0,
        max_resumes: int = 20,
        on_resume: OnResume | None = None,
    ) -> AsyncIterator[execution_pb2.Event]:
        """Submit a graph and stream its events in one call (RunGraph), ending after the
        terminal event; the first event (``graph_submitted``) carries the run's graph_id.
        ``definition`` (``name@label``) runs a published definition instead of ``graph``.

        Submission errors raise before any event. A stream that drops is resumed as
        :meth:`watch` resumes (by WatchGraph once the graph_id is known, else by the same
        RunGraph again: its request_id, generated when none is given, names the same run).
        """
        req = run_request(graph, inputs, request_id, definition, allow_deprecated, priority)
        graph_id = ""

        def open_call(last: int) -> Any:
            if graph_id:
                watch = orchestrator_pb2.WatchGraphRequest(
                    graph_id=graph_id, after_seq=last, batch=True
                )
                return self.stub.WatchGraph(watch, metadata=self._metadata)
            return self.stub.RunGraph(req, metadata=self._metadata)

        async for ev in self._follow(
            open_call, 0, heartbeats, idle_timeout_s, max_resumes, on_resume
        ):
            graph_id = graph_id or ev.graph_id
            yield ev

    async def _follow(
        self,
        open_call: Callable[[int], Any],
        last: int,
        heartbeats: bool,
        idle_timeout_s: float | None,
        max_resumes: int,
        on_resume: OnResume | None,
    ) -> AsyncIterator[execution_pb2.Event]:
        """The events of the streams ``open_call(after_seq)`` opens, in order and each once,
        reopening a dropped stream after the last seq delivered (see :meth:`watch`)."""
        failures = 0
        while True:
            call = open_call(last)
            err: DagoError
            try:
                async for msg in read_stream_async(call, idle_timeout_s):
                    failures = 0
                    for ev in events_of(msg):
                        kind = ev.WhichOneof("payload")
                        if kind == "heartbeat":
                            if heartbeats:
                                yield ev
                            continue
                        if ev.seq <= last:
                            continue  # delivered before a resume
                        last = ev.seq
                        yield ev
                        if kind in TERMINAL_EVENTS:
                            return
                err = UnavailableError(
                    grpc.StatusCode.UNAVAILABLE, "the watch stream ended before the run finished"
                )
            except TimeoutError:
                err = UnavailableError(
                    grpc.StatusCode.UNAVAILABLE, f"no message for {idle_timeout_s}s"
                )
            except grpc.aio.AioRpcError as e:
                err = from_rpc_error(e)
                if err.code not in RESUMABLE_CODES:
                    raise err from None
            finally:
                call.cancel()
            failures += 1
            if failures > max_resumes:
                raise err
            if on_resume is not None:
                on_resume(last, failures, err)
            await asyncio.sleep(
                backoff(failures, self.config.initial_backoff_s, self.config.max_backoff_s)
            )

    async def wait(self, graph_id: str) -> execution_pb2.GraphStatus:
        """Watch a run to its end; returns its final status."""
        async for _ in self.watch(graph_id):
            pass
        return await self.status(graph_id)
