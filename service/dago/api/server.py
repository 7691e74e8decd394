"""``dago serve``: the gRPC API with health, reflection, metrics, the timer sweeper and, with
DAGO_POSTGRES_URL, the archiver (dago.history.archive)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from dago.api.auth import ServerGuard, server_credentials
from dago.api.interceptors import RpcObserver
from dago.api.restbody import RestBodyCheck
from dago.api.servicer import OrchestratorServicer
from dago.api.watch import EventHub
from dago.config import Settings
from dago.history.archive import Archiver
from dago.history.db import HistoryDb
from dago.observe.metrics import Metrics, serve
from dago.observe.tracing import Tracing
from dago.store.client import STORE_ERRORS, raise_if_cancelling
from dago.store.store import Store
from dago.v1 import definitions_pb2, definitions_pb2_grpc, orchestrator_pb2, orchestrator_pb2_grpc

log = logging.getLogger("dago.server")

SERVICE = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
DEFINITIONS = definitions_pb2.DESCRIPTOR.services_by_name["DefinitionService"].full_name
LIVENESS = "liveness"
"""Health service name that is SERVING from start to stop whatever Redis and the workers do:
for liveness probes (Kubernetes' `grpc: {service: liveness}`), which must not restart an API
whose dependencies are down; "" and the API's own name report readiness."""


def register(orchestrator: OrchestratorServicer, server: grpc.aio.Server) -> None:
    """Add the OrchestratorService to ``server`` as the generated code does, except that
    WatchGraph and RunGraph have no response serializer: their messages are already
    serialized (a graph's events are encoded once for all its watchers)."""
    capture = _Capture()
    orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
        orchestrator, cast(grpc.aio.Server, capture)
    )
    handlers = dict(capture.handlers)
    for name, stream in (
        ("WatchGraph", orchestrator.WatchGraph),
        ("RunGraph", orchestrator.RunGraph),
    ):
        handlers[name] = grpc.unary_stream_rpc_method_handler(
            stream,
            request_deserializer=handlers[name].request_deserializer,
            response_serializer=None,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class _Capture:
    """Stands in for a server to collect the generated method handlers."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, _: Any) -> None:
        """Ignored: ``register`` adds its own."""

    def add_registered_method_handlers(
        self, _: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Keep the handlers."""
        self.handlers = handlers


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):
    """The standard health service (``grpc.health.v1.Health``), open without a key.

    ``Check`` answers a service's status now (NOT_FOUND for a name never set). ``Watch`` sends
    the status (SERVICE_UNKNOWN for a name never set), then every change, until the client
    cancels or the server stops; at a stop every watcher gets NOT_SERVING and its stream ends
    with OK. A watcher holds no lock while it writes, so a client that does not read cannot
    hold up the API's health loop. Statuses are kept per name set by the server only:
    watching any number of other names costs nothing but the stream itself.
    """

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Condition()
        self._closed = False

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        """The status of ``request.service`` now."""
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service name")
        return health_pb2.HealthCheckResponse(status=cast(Any, status))

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Send the status, then each change, until cancelled or the server stops."""
        last: int | None = None
        while True:
            async with self._changed:
                while True:
                    status = self._status.get(request.service, SERVICE_UNKNOWN)
                    if status != last or self._closed:
                        break
                    await self._changed.wait()
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=cast(Any, status)))
                last = status
            if self._closed:
                return

    async def set(self, service: str, status: int) -> None:
        """Set a service's status and wake its watchers (ignored once closed)."""
        async with self._changed:
            if not self._closed:
                self._status[service] = status
                self._changed.notify_all()

    async def close(self) -> None:
        """Every service NOT_SERVING from now on; every Watch sends it and ends."""
        async with self._changed:
            for name in self._status:
                self._status[name] = NOT_SERVING
            self._closed = True
            self._changed.notify_all()


class ApiServer:
    """The API process: one gRPC server plus its background loops."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        orchestrator: OrchestratorServicer,
        hub: EventHub,
        registry: CollectorRegistry,
        guard: ServerGuard | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        history: tuple[HistoryDb, Archiver] | None = None,
    ) -> None:
        self._settings = settings
        self._history = history
        self._guard = guard
        self._metrics = metrics or Metrics(registry)
        self._tracing = tracing or Tracing("dago-api", {})
        self._store = store
        self._orchestrator = orchestrator
        self._hub = hub
        self._registry = registry
        self._health = HealthService()
        self.port = 0

    @property
    def registry(self) -> CollectorRegistry:
        """The process's metrics (what ``/metrics`` serves)."""
        return self._registry

    async def _build(self) -> grpc.aio.Server:
        limit = self._settings.max_message_bytes
        server = grpc.aio.server(
            # The observer first, so rejected calls are counted too.
            # Then authentication, then the REST body check (dago.api.restbody).
            interceptors=[RpcObserver(self._metrics, self._tracing)]
            + ([self._guard] if self._guard is not None else [])
            + [RestBodyCheck()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                # A REST call carries its JSON body again in metadata (base64: 4/3 of it;
                # Envoy takes bodies up to 1 MiB), see dago.api.restbody: metadata may be as
                # large as a message (the default, 8 KiB, would refuse most REST submits).
                ("grpc.max_metadata_size", limit),
                ("grpc.absolute_max_metadata_size", limit),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        register(self._orchestrator, server)
        definitions_pb2_grpc.add_DefinitionServiceServicer_to_server(
            self._orchestrator.definitions, server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = (SERVICE, DEFINITIONS, health.SERVICE_NAME, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, server)
        address = f"{self._settings.grpc_host}:{self._settings.grpc_port}"
        creds = server_credentials(self._settings)
        if creds is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, creds)
        return server

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE, DEFINITIONS):
            await self._health.set(name, status)

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set, then stop gracefully."""
        server = await self._build()
        try:
            await self._store.ready()
        except STORE_ERRORS as e:  # the health loop reports it and keeps trying
            log.warning("redis is not reachable at start: %s", e)
        if self._history is not None:
            # Connections are made in the background: PostgreSQL down at start delays
            # archiving (the runs wait in Redis), it never keeps the API from serving.
            await self._history[0].open()
        stop_metrics = serve(self._registry, self._settings.metrics_port, "API")
        await self._set_health(False)
        await server.start()
        await self._health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        log.info("dago API listening on %s:%d", self._settings.grpc_host, self.port)
        st = self._settings
        log.info(
            "transport: %s; authentication: %s",
            "plaintext"
            if not st.tls_cert_file
            else "TLS" + (" with client certificates" if st.tls_client_ca_file else ""),
            "API keys"
            if st.auth != "off"
            else "OFF (DAGO_AUTH=off: anyone who reaches the port may call it)",
        )
        async with asyncio.TaskGroup() as tg:
            loops = [
                tg.create_task(self._health_loop()),
                tg.create_task(self._sweep_loop()),
                tg.create_task(self._hub.run()),
            ]
            if self._history is not None:
                loops.append(tg.create_task(self._history[1].run()))
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("dago API stopping")
            # Every health status NOT_SERVING; health watchers get it and their streams end
            # (they would otherwise hold the grace period below).
            await self._health.close()
            await server.stop(grace=5)
            self._orchestrator.close()
            for t in loops:
                t.cancel()
        stop_metrics()
        self._tracing.shutdown()
        # Close the Redis connections here rather than leave them to the process's exit:
        # an API embedded in another process (dago dev, the tests) must not leak them.
        await self._hub.close()
        await self._store.redis.aclose()
        if self._history is not None:
            await self._history[0].close()

    async def _health_loop(self) -> None:
        """SERVING while Redis answers and at least one worker sent a heartbeat within
        DAGO_WORKER_TTL_MS; workers silent for longer (killed ones) are forgotten here."""
        ok: bool | None = None
        serving: bool | None = None
        ttl = self._settings.worker_ttl_ms
        interval = min(1.0, max(0.1, ttl / 4000))
        # Workers usually start beside the API: no heartbeat in the first TTL is expected,
        # not yet worth a warning (a newcomer's `make run` showed one at every start).
        grace_until: float | None = time.monotonic() + ttl / 1000
        while True:
            raise_if_cancelling()
            alive = 0
            try:
                up = await asyncio.wait_for(self._store.ping(), 2.0)
                if up and not ok:
                    await self._store.ensure_groups()
                if up:
                    since = int(time.time() * 1000) - ttl
                    await asyncio.wait_for(self._store.prune_workers(since), 2.0)
                    alive = await asyncio.wait_for(self._store.alive_workers(since), 2.0)
            except STORE_ERRORS:
                up = False
            if up != ok:
                log.log(logging.INFO if up else logging.WARNING, "redis %s", "up" if up else "DOWN")
                ok = up
            now_serving = up and alive > 0
            if now_serving:
                grace_until = None
            elif grace_until is not None and up and time.monotonic() >= grace_until:
                grace_until = None
                log.warning("no worker alive (none sent a heartbeat within %d ms)", ttl)
            if now_serving != serving:
                if up and not alive and serving is None:
                    log.info("not serving until a worker sends its first heartbeat")
                elif up and not alive:
                    log.warning("no worker alive (none sent a heartbeat within %d ms)", ttl)
                elif now_serving:
                    log.info("serving: redis up, %d worker(s) alive", alive)
                await self._set_health(now_serving)
                serving = now_serving
            await asyncio.sleep(interval)

    async def _sweep_loop(self) -> None:
        """Apply due timers; and once per worker TTL, remove the work groups' consumers left
        by workers gone for longer than that (each restart under a new name adds one per
        shard)."""
        interval = self._settings.sweep_interval_ms / 1000
        ttl = self._settings.worker_ttl_ms
        limit = 200
        pruned_at = 0.0
        while True:
            raise_if_cancelling()
            try:
                for shard in range(self._settings.shards):
                    while await self._store.sweep(shard, limit) >= limit:
                        pass
                if time.monotonic() - pruned_at >= ttl / 1000:
                    pruned_at = time.monotonic()
                    since = int(time.time() * 1000) - ttl
                    alive = [w for w, _, _ in await self._store.workers(since)]
                    for shard in range(self._settings.shards):
                        if n := await self._store.prune_consumers(shard, ttl, alive):
                            log.info("removed %d idle consumers on shard %d", n, shard)
            except STORE_ERRORS as e:
                log.warning("sweeping timers failed: %s", e)
            await asyncio.sleep(interval)
