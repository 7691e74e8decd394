"""Fair shares: one namespace's flood must not hold back another namespace's runs.

Run by hand (not part of `make bench`)::

    PYTHONPATH=service:gen/python:clients/python:tests/support:bench \\
        .venv/bin/python bench/fairness.py [--flood 5000] [--runs 100] [--sleep 0.05] \\
        [--flood-sleep 0.2]

It starts a private Redis, the API and two worker processes (16 slots each; 4 shards),
with two namespaces (API keys of team-a and team-b, weight 1 each). Namespace B
runs ``--runs`` one-node runs (a ``sleep`` of ``--sleep`` seconds), one after the other,
twice: alone, then while namespace A's ``--flood`` ``sleep`` nodes (runs of 200 parallel
nodes of ``--flood-sleep`` seconds each, all submitted first) are queued. A run's latency
is its graph_completed time minus its graph_submitted time, from its events (the server's
clock, no polling in it). Prints p50/p99 of both phases, the target (p99 loaded < 2 x p99
unloaded + one of A's attempts), and how much of A's flood was still queued when B's last
run ended.
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

from dago.api.auth import hash_key, new_key
from dago.v1 import execution_pb2
from harness import Client, ProcessStack, request, start_api_quickly, tool

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
QUEUED = execution_pb2.NODE_STATE_QUEUED
KEY_A, KEY_B = new_key(), new_key()


def sleeps(n: int, seconds: float) -> object:
    return request([tool(f"s{i}", "sleep", inputs={"seconds": seconds}) for i in range(n)])


async def latency(c: Client, seconds: float) -> float:
    """One run of one sleep node, submitted and awaited; its latency (s) from its events."""
    gid = await c.submit(sleeps(1, seconds))  # type: ignore[arg-type]
    st = await c.wait(gid, timeout=120)
    assert st.state == COMPLETED, st
    ev = {e.WhichOneof("payload"): e.time.ToMilliseconds() for e in await c.history(gid)}
    return (ev["graph_completed"] - ev["graph_submitted"]) / 1000


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100)[98] if len(xs) >= 2 else xs[0]


async def main(args: argparse.Namespace) -> None:
    procs = Procs(Path(tempfile.mkdtemp(prefix="dago-bench-fair-")))
    try:
        redis_url, _ = start_redis(procs)
        keys = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b"
        stack = ProcessStack(
            redis_url,
            f"bf{secrets.token_hex(3)}",
            DAGO_WORKER_SLOTS="16",
            DAGO_AUTH="keys",
            DAGO_API_KEYS=keys,
            DAGO_LEASE_MS="30000",
        )
        try:
            for name in ("w1", "w2"):
                stack.start(name, "worker")
            await start_api_quickly(stack)
            a = Client(f"127.0.0.1:{stack.port}", KEY_A)
            b = Client(f"127.0.0.1:{stack.port}", KEY_B)
            for _ in range(10):  # warm up
                await latency(b, args.sleep)
            alone = [await latency(b, args.sleep) for _ in range(args.runs)]
            per = 200
            t0 = time.perf_counter()
            flood = await asyncio.gather(
                *(a.submit(sleeps(per, args.flood_sleep)) for _ in range(args.flood // per))  # type: ignore[arg-type]
            )
            print(
                f"A: {len(flood) * per:,} sleep nodes submitted in {time.perf_counter() - t0:.1f} s"
            )
            loaded = [await latency(b, args.sleep) for _ in range(args.runs)]
            left = 0
            for g in flood:
                st = await a.status(g)
                left += sum(n.state == QUEUED for n in st.nodes)
            for g in flood:
                await a.wait(g, timeout=600)
            flood_s = time.perf_counter() - t0
            await a.close()
            await b.close()
        finally:
            await stack.close()
        u50, u99 = statistics.median(alone), p99(alone)
        l50, l99 = statistics.median(loaded), p99(loaded)
        target = 2 * u99 + args.flood_sleep  # B may wait for one of A's attempts to end
        print(f"B alone:  p50 {u50 * 1000:.0f} ms, p99 {u99 * 1000:.0f} ms ({args.runs} runs)")
        print(f"B loaded: p50 {l50 * 1000:.0f} ms, p99 {l99 * 1000:.0f} ms ({args.runs} runs)")
        print(
            f"target p99 < 2 x {u99 * 1000:.0f} + {args.flood_sleep * 1000:.0f} = "
            f"{target * 1000:.0f} ms: {'met' if l99 < target else 'NOT met'}"
        )
        print(
            f"A's nodes still queued when B's last run ended: {left:,}; "
            f"flood done in {flood_s:.1f} s"
        )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flood", type=int, default=5_000)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--sleep", type=float, default=0.05, help="B's node (s)")
    p.add_argument("--flood-sleep", type=float, default=0.2, help="each of A's nodes (s)")
    asyncio.run(main(p.parse_args()))
