"""The ``dago`` command: serve, worker, dev, config. Also the composition root:
every component is built here and handed to the next by its constructor."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from dago.cel import CelCompiler
from dago.config import ConfigError, Settings, describe, load
from dago.graphcache import GraphCache
from dago.graphdef import CompileOptions
from dago.handlers import default_handlers, load_tools
from dago.keys import Keys
from dago.store import Store, connect


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _common(settings: Settings) -> tuple[Store, CelCompiler, CompileOptions]:
    store = Store(connect(settings), Keys(settings.key_prefix, settings.shards))
    tools = load_tools(settings.tool_modules)
    options = CompileOptions(
        tools=frozenset(tools),
        max_nodes=settings.max_nodes,
        max_edges=settings.max_edges,
        default_attempt_timeout=settings.attempt_timeout_s,
    )
    return store, CelCompiler(), options


async def serve(settings: Settings) -> None:
    """Run the API process until SIGTERM."""
    from dago.api import Orchestrator
    from dago.server import ApiServer
    from dago.watch import EventHub

    store, cel, options = _common(settings)
    hub = EventHub(store, settings.heartbeat_ms, settings.cluster)
    api = Orchestrator(store, settings, cel, options, GraphCache(store, cel, options), hub)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    await ApiServer(settings, store, api, hub, CollectorRegistry()).run(stop)


async def work(settings: Settings) -> None:
    """Run a worker process until SIGTERM, then drain."""
    from dago.worker import Worker

    store, cel, options = _common(settings)
    handlers = default_handlers(load_tools(settings.tool_modules))
    worker = Worker(
        store, settings, GraphCache(store, cel, options), handlers, settings.effective_worker_id()
    )
    stop = asyncio.Event()
    _stop_on_signals(stop)
    await _wait_for_redis(store)
    await worker.run(stop)


async def _wait_for_redis(store: Store) -> None:
    log = logging.getLogger("dago")
    delay = 0.2
    while True:
        try:
            await store.ping()
            return
        except Exception as e:  # any connection failure: say so and keep trying
            log.warning("waiting for Redis (%s); retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _print_config(settings: Settings) -> None:
    width = max(len(v) for v, _, _ in describe(settings))
    for var, value, doc in describe(settings):
        print(f"{var:<{width}}  {value}\n{'':<{width}}  # {doc}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dago``."""
    parser = argparse.ArgumentParser(prog="dago", description="Run graphs of AI-agent steps.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC API (health, reflection, metrics, sweeper)")
    sub.add_parser("worker", help="run a worker process")
    sub.add_parser("dev", help="all in one: Redis (if DAGO_REDIS_URL is unset), API and workers")
    sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    args = parser.parse_args(argv)
    try:
        settings = load()
    except ConfigError as e:
        print(f"dago: configuration error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "config":
        _print_config(settings)
        return 0
    if args.command == "dev":
        from dago.dev import run_dev

        return run_dev(settings)
    runners: dict[str, Callable[[Settings], Coroutine[Any, Any, None]]] = {
        "serve": serve,
        "worker": work,
    }
    uvloop.run(runners[args.command](settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
