"""The ``dago`` command: serve, worker, dev, config (components come from dago.app)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import uvloop

from dago.config import ConfigError, Settings, describe, load
from dago.devtools import probe
from dago.observe import logs


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def serve(settings: Settings) -> None:
    """Run the API process until SIGTERM."""
    from dago.app import build_api

    stop = asyncio.Event()
    _stop_on_signals(stop)
    await build_api(settings).run(stop)


async def work(settings: Settings) -> None:
    """Run a worker process until SIGTERM, then drain."""
    from dago.app import build_worker

    worker = build_worker(settings)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    await worker.run(stop)


def _migrate(settings: Settings) -> int:
    """``dago migrate``: bring DAGO_POSTGRES_URL's schema up to date."""
    if not settings.postgres_url:
        print(
            "dago migrate: DAGO_POSTGRES_URL is empty: set it to the history database "
            "(postgresql://user:pass@host:5432/db); see docs/history.md",
            file=sys.stderr,
        )
        return 2
    import psycopg

    from dago.history.migrate import MigrationError, migrate_url, migrations

    try:
        applied = uvloop.run(migrate_url(settings.postgres_url))
    except (psycopg.Error, MigrationError) as e:
        print(f"dago migrate: {e}", file=sys.stderr)
        return 1
    for mig in applied:
        print(f"applied {mig.version:04d}_{mig.name}")
    print(f"schema at version {len(migrations())} ({len(applied)} applied now)")
    return 0


def _print_config(settings: Settings) -> None:
    width = max(len(v) for v, _, _ in describe(settings))
    for var, value, doc in describe(settings):
        print(f"{var:<{width}}  {value}\n{'':<{width}}  # {doc}")


def _print_models(settings: Settings) -> None:
    """The model catalogue, with the prices this server charges (DAGO_PRICES applied)."""
    from dago.llm import models
    from dago.llm.prices import PriceTable

    table = PriceTable(settings.prices, settings.unknown_model_price, settings.price_multiplier)
    default = settings.llm_model or models.DEFAULT_MODEL
    print(f"Claude models (checked {models.CHECKED}; {models.PRICING_PAGE}); default: {default}")
    print("USD per million tokens: input / output / cache write 5m / cache write 1h / cache read")
    mult = settings.price_multiplier

    def fmt(p: models.Price) -> str:
        figures = (p.input, p.output, p.cache_write_5m, p.cache_write_1h, p.cache_read)
        return " / ".join(f"{x * mult:g}" for x in figures)

    for m in models.CATALOGUE:
        row = table.row(m.id)
        price, long_prompt = row if row is not None else (m.price, m.long_prompt)

        print(f"\n{m.id}  {m.name} ({m.status}){'  [default]' if m.id == default else ''}")
        if m.aliases:
            print(f"  aliases: {', '.join(m.aliases)}")
        print(f"  context {m.context:,} tokens, output up to {m.max_output:,}")
        print(f"  price: {fmt(price)}; batch: {models.BATCH_DISCOUNT:g}x input and output")
        if long_prompt is not None:
            print(f"  prompt over {long_prompt.threshold:,} tokens: {fmt(long_prompt.price)}")
        thinking = ", ".join(m.thinking) or "none"
        efforts = ", ".join(m.efforts) or "none"
        print(
            f"  thinking: {thinking}; effort: {efforts}"
            + (f" (default {m.default_effort})" if m.default_effort else "")
        )
        print(
            f"  temperature: {'yes' if m.sampling else 'refused'}; structured outputs: "
            f"{'native' if m.structured else 'forced tool'}; forced tool use: "
            f"{'yes' if m.forced_tool else 'refused'}"
        )
    if settings.allow_unknown_models:
        print(f"\nother models allowed, priced {settings.unknown_model_price}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m dago``."""
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["keys"]:
        from dago.api.auth import keys_command

        return keys_command(given[1:])
    parser = argparse.ArgumentParser(prog="dago", description="Run graphs of AI-agent steps.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gRPC API (health, reflection, metrics, sweeper)")
    sub.add_parser("worker", help="run a worker process")
    sub.add_parser("dev", help="all in one: Redis (if DAGO_REDIS_URL is unset), API and workers")
    sub.add_parser("config", help="print the effective configuration (secrets redacted)")
    sub.add_parser("models", help="print the model catalogue: limits, settings and prices")
    sub.add_parser("migrate", help="apply the run history's schema migrations to PostgreSQL")
    sub.add_parser("keys", help="make API keys: `dago keys new --namespace NS`, `dago keys hash`")
    probe.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        settings = load()
        if args.command == "serve":
            from dago.api.auth import check

            check(settings)  # keys and TLS files, before anything listens
    except ConfigError as e:
        print(f"dago: configuration error: {e}", file=sys.stderr)
        return 2
    logs.setup(settings)
    if args.command == "health":
        return probe.run(args, settings)
    if args.command == "config":
        _print_config(settings)
        return 0
    if args.command == "models":
        _print_models(settings)
        return 0
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "dev":
        from dago.devtools.dev import run_dev

        return run_dev(settings)
    runners: dict[str, Callable[[Settings], Coroutine[Any, Any, None]]] = {
        "serve": serve,
        "worker": work,
    }
    uvloop.run(runners[args.command](settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
