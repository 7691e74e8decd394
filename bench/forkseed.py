"""A fork's map seeds: the ``seed`` function inside Redis against pages through the API.

Run by hand (not part of `make bench`)::

    PYTHONPATH=service:gen/python:clients/python:tests/support:bench \\
        .venv/bin/python bench/forkseed.py [--items 10000]

It starts a private Redis and the real API with two workers in this process, runs a map of
``--items`` items (one in ten fails, collected), then copies its completed items as a
fork's seeds both ways ``Store.seed_items`` does (into graph ids no run uses): on the
source's shard (one call of ``seed``) and on another shard (pages of ``SEED_PAGE`` through
this process), three times each. For each it prints the time and the bytes Redis sent
(``INFO stats`` ``total_net_output_bytes``: what travels to the API), then the longest
call of the function as Redis's slowlog timed it. Last, a real ``failed_only`` fork of
the map with the body fixed, timed from ForkGraph to the fork's end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
import time
from pathlib import Path

from procs import Procs, start_redis

from dago.engine.ids import new_graph_id, parse_shard
from dago.v1 import orchestrator_pb2
from harness import InProcessStack, request, stack_settings, tool


async def sent(stack: InProcessStack) -> int:
    """Bytes Redis has sent to its clients so far."""
    info = await stack.store.redis.info("stats")
    return int(info["total_net_output_bytes"])


async def main(count: int) -> None:
    procs = Procs(Path(tempfile.mkdtemp(prefix="dago-bench-forkseed-")))
    try:
        redis_url, _ = start_redis(procs)
        settings = stack_settings(redis_url, f"fs{secrets.token_hex(3)}")
        async with InProcessStack(settings, workers=2) as stack:
            items = [{"f": i % 10 == 3} for i in range(count)]
            body = tool("body", "pause", inputs={"value": "{{ index }}", "fail": "{{ item.f }}"})
            spec = {
                "onFailure": "MAP_FAILURE_POLICY_COLLECT",
                "maxFailures": count,
                "maxConcurrency": 256,
            }
            nodes = [{"id": "each", "map": {"items": "inputs.items", "node": body, **spec}}]
            t0 = time.perf_counter()
            gid, st = await stack.client.run(request(nodes, [], {"items": items}), timeout=900)
            m = st.nodes[0].map
            took = time.perf_counter() - t0
            print(f"map of {m.total} items, {m.completed} completed, run in {took:.1f}s")
            shard = parse_shard(gid, settings.shards)
            assert shard is not None
            for label, to in 3 * (("seed function", shard), ("pages via API", (shard + 1) % 4)):
                before, t0 = await sent(stack), time.perf_counter()
                seeded = await stack.store.seed_items(
                    shard, gid, to, new_graph_id(to), {"each": count}, 60
                )
                took = time.perf_counter() - t0
                out = await sent(stack) - before
                print(f"{label:<14} {seeded} items {took * 1000:8.1f} ms {out / 1024:10.1f} KiB")
            # Each call of the function, as Redis timed it (slowlog: calls over 1 ms).
            calls = [
                e["duration"]
                for e in await stack.store.redis.slowlog_get(128)
                if b"_seed " in e["command"]
            ]
            print(f"seed calls over 1 ms: {len(calls)}, longest {max(calls, default=0)} us")
            patch = orchestrator_pb2.ForkGraphRequest(graph_id=gid, failed_only=True)
            patch.node_patches["each"].map.node.inputs.update({"fail": False})
            t0 = time.perf_counter()
            resp = await stack.client.stub.ForkGraph(patch, timeout=60)
            forked = time.perf_counter() - t0
            new = await stack.client.wait(resp.graph_id, timeout=900)
            print(
                f"failed_only fork: ForkGraph {forked * 1000:.0f} ms, run to the end "
                f"{time.perf_counter() - t0:.1f}s, {new.nodes[0].map.completed} completed"
            )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    asyncio.run(main(parser.parse_args().items))
