"""The composition root: every process's components are built here and handed to
each other by their constructors (tests build the same objects in-process)."""

from __future__ import annotations

from dago.api.admission import FairGate
from dago.api.archived import ArchivedReads
from dago.api.auth import Authenticator, ServerGuard
from dago.api.export import RedisRuns
from dago.api.server import ApiServer
from dago.api.servicer import OrchestratorServicer
from dago.api.watch import EventHub
from dago.config import NamespacesFile, Settings, load_namespaces
from dago.engine.cel import CelCompiler
from dago.engine.graphcache import GraphCache
from dago.engine.model import CompileOptions
from dago.history.archive import Archiver
from dago.history.db import HistoryDb
from dago.history.runs import RunHistory
from dago.llm.providers import default_provider
from dago.nodes import build_deps, build_handlers, kind_checks
from dago.nodes.toolbox import known_names
from dago.observe.metrics import Metrics, new_registry
from dago.observe.tracing import Tracing
from dago.store.client import connect
from dago.store.keys import Keys
from dago.store.stats import RedisCollector
from dago.store.store import Store
from dago.worker.budget import RedisBudget
from dago.worker.process import Worker
from dago.worker.ratelimits import StoreLimiter


def _common(settings: Settings) -> tuple[Store, CelCompiler, CompileOptions]:
    store = Store(
        connect(settings),
        Keys(settings.key_prefix, settings.shards),
        load_namespaces(settings.namespaces_file),
    )
    known = known_names(settings)
    options = CompileOptions(
        kinds=kind_checks(),
        tools=known.tools,
        inline_tools=known.inline,
        mcp_servers=known.mcp_servers,
        max_nodes=settings.max_nodes,
        max_edges=settings.max_edges,
        default_attempt_timeout=settings.attempt_timeout_s,
        max_graph_bytes=settings.max_graph_bytes,
        budget_s=settings.compile_budget_s,
        llm_provider=default_provider(settings),
        llm_model=settings.llm_model,
        allow_unknown_models=settings.allow_unknown_models,
        max_depth=settings.max_graph_depth,
    )
    cel = CelCompiler(
        max_expression_tokens=settings.max_expression_tokens,
        max_value_bytes=settings.max_value_bytes,
    )
    return store, cel, options


def build_api(settings: Settings) -> ApiServer:
    """The API process: gRPC server, event hub, sweeper; with DAGO_POSTGRES_URL the run
    history (the archiver, and reads of runs Redis no longer holds)."""
    store, cel, options = _common(settings)
    hub = EventHub(store, settings.heartbeat_ms, settings.cluster, settings.watch_max_lag_s)
    auth = Authenticator(settings)
    graphs = GraphCache(store, cel, options)
    tracing = Tracing("dago-api")
    # Two slots keep the compile thread busy (one request on it, one ready); a namespace may
    # have 1,000 more waiting, in its turn, before it is told to retry.
    gate = FairGate(slots=2, max_waiting=1000)
    registry = new_registry()
    registry.register(RedisCollector(settings, store.keys))
    metrics = Metrics(registry)
    history: tuple[HistoryDb, Archiver] | None = None
    db: HistoryDb | None = None
    archive = ArchivedReads(None, auth, settings)
    if settings.postgres_url:
        db = HistoryDb(settings)
        history = (db, Archiver(store, db, RedisRuns(store, graphs), settings, metrics))
        archive = ArchivedReads(RunHistory(db), auth, settings)
    api = OrchestratorServicer(
        store,
        settings,
        cel,
        options,
        graphs,
        hub,
        auth,
        gate,
        tracing=tracing,
        archive=archive,
        history=db,
        metrics=metrics,
    )
    return ApiServer(
        settings,
        store,
        api,
        hub,
        registry,
        ServerGuard(auth),
        metrics=metrics,
        tracing=tracing,
        history=history,
    )


def build_worker(settings: Settings) -> Worker:
    """A worker process."""
    store, cel, options = _common(settings)
    metrics = Metrics(new_registry())
    tracing = Tracing("dago-worker")
    limiter = StoreLimiter.from_settings(settings, store, metrics)
    shares = NamespacesFile(settings.namespaces_file, store.shares)
    budget = RedisBudget(store, settings.budget_floor_tokens, metrics, shares)
    handlers = build_handlers(build_deps(settings, metrics, tracing, limiter, budget))
    graphs = GraphCache(store, cel, options)
    return Worker(
        store,
        settings,
        graphs,
        handlers,
        settings.effective_worker_id(),
        metrics=metrics,
        tracing=tracing,
    )
