"""Runs waiting for a person must not slow the others: echo chains with and without
thousands of runs waiting.

Run by hand (not part of `make bench`)::

    PYTHONPATH=service:gen/python:clients/python:tests/support:bench \\
        .venv/bin/python bench/waits.py [--waiting 10000] [--chains 1000]

It starts a private Redis and the real API with two workers in this process, then times
``--chains`` three-node echo chains (submitted and awaited, 50 at a time) three times:
with nothing waiting, after ``--waiting`` runs of one wait node have entered
NODE_STATE_WAITING, and after all of those have been decided. Prints the chains'
rate in each phase, the time ``--waiting`` runs took to reach WAITING, ListWaits' first page
time with them all waiting, and Redis memory per waiting run.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from procs import Procs, start_redis

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import Client, InProcessStack, echo, edge, eventually, request, stack_settings

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
CHAIN = request([echo("a"), echo("b"), echo("c")], [edge("a", "b"), edge("b", "c")])
WAIT = request([{"id": "review", "wait": {"prompt": "ok?"}}, echo("after")],
               [edge("review", "after")])  # fmt: skip


async def chains(client: Client, count: int) -> float:
    """Run ``count`` chains, 50 at a time; their rate (runs/s)."""
    t0 = time.perf_counter()
    left = count
    while left:
        batch = min(50, left)
        done = await asyncio.gather(*(client.run(CHAIN, timeout=60) for _ in range(batch)))
        assert all(st.state == COMPLETED for _, st in done)
        left -= batch
    return count / (time.perf_counter() - t0)


async def all_listed(client: Client, count: int) -> bool:
    """True when ListWaits lists ``count`` waits (all pages)."""
    n, token = 0, ""
    while True:
        req = orchestrator_pb2.ListWaitsRequest(page_size=1000, page_token=token)
        resp = await client.stub.ListWaits(req, timeout=30)
        n += len(resp.waits)
        token = resp.next_page_token
        if not token:
            return n == count


async def main(args: argparse.Namespace) -> None:
    procs = Procs(Path(tempfile.mkdtemp(prefix="dago-bench-waits-")))
    try:
        redis_url, _ = start_redis(procs)
        settings = stack_settings(redis_url, f"bw{secrets.token_hex(3)}", worker_slots=64)
        async with InProcessStack(settings, workers=2) as stack:
            c = stack.client
            await chains(c, 100)  # warm up
            before = await chains(c, args.chains)
            print(f"{args.chains} chains, nothing waiting: {before:,.0f} runs/s")
            used0 = (await stack.store.redis.info("memory"))["used_memory"]
            t0 = time.perf_counter()
            gids: list[str] = []
            for k in range(0, args.waiting, 500):
                part = min(500, args.waiting - k)
                gids += await asyncio.gather(*(c.submit(WAIT) for _ in range(part)))
            await eventually(lambda: all_listed(c, args.waiting), 600, 0.2)
            took = time.perf_counter() - t0
            used1 = (await stack.store.redis.info("memory"))["used_memory"]
            print(f"{args.waiting:,} runs submitted and waiting in {took:.1f} s; Redis memory "
                  f"+{(used1 - used0) / args.waiting:,.0f} B per waiting run")  # fmt: skip
            pages = []
            for _ in range(20):
                t = time.perf_counter()
                await c.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(page_size=50), timeout=30)
                pages.append((time.perf_counter() - t) * 1000)
            print(f"ListWaits first page (50) with {args.waiting:,} waiting: "
                  f"p50 {statistics.median(pages):.1f} ms")  # fmt: skip
            during = await chains(c, args.chains)
            print(f"{args.chains} chains, {args.waiting:,} waiting: {during:,.0f} runs/s "
                  f"({during / before:.0%} of the rate with nothing waiting)")  # fmt: skip
            for k in range(0, len(gids), 500):
                await asyncio.gather(*(
                    c.stub.SignalGraph(orchestrator_pb2.SignalGraphRequest(
                        graph_id=g, node_id="review", decision="approve"), timeout=30)
                    for g in gids[k:k + 500]
                ))  # fmt: skip
            await eventually(lambda: all_listed(c, 0), 600, 0.2)
            after = await chains(c, args.chains)
            print(f"{args.chains} chains, all decided: {after:,.0f} runs/s")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--waiting", type=int, default=10_000)
    p.add_argument("--chains", type=int, default=1_000)
    asyncio.run(main(p.parse_args()))
