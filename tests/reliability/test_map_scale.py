"""A map over many items with max_concurrency 200 (docs/RELIABILITY.md, "Map nodes at
scale"): it completes with every item's output in order, Redis memory grows with the items
(quoted per item), the API and worker processes stay bounded (peak RSS quoted), a plain
watcher gets a few map_progress events instead of every item's events, and the status of
the map node holds counts, not items.

``make test``: 500 items. ``make reliability`` with ``RELIABILITY_FULL=1``: 10,000 items
(``MAP_ITEMS`` to choose). Figures go to ``build/reliability/map-<N>.json`` and are printed.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from relkit import REPORT_DIR, RssSampler, kind

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    FULL,
    RunningStack,
    edge,
    knob,
    node_status,
    plain,
    request,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

ITEMS = knob("MAP_ITEMS", 500, 10_000)
CONCURRENCY = 200

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(900 if FULL else 300)]


def graph() -> orchestrator_pb2.SubmitGraphRequest:
    """src -> a map of ITEMS echo items, CONCURRENCY at a time -> sink."""
    body = tool("b", "echo", inputs={"i": "{{ item }}"})
    each = {"id": "each", "map": {"items": "inputs.items", "node": body,
                                  "maxConcurrency": CONCURRENCY}}  # fmt: skip
    nodes = [
        tool("src", "echo", inputs={"n": "{{ size(inputs.items) }}"}),
        each,
        tool("sink", "echo", inputs={"n": "{{ nodes.each.output.total }}"}),
    ]
    edges = [edge("src", "each"), edge("each", "sink")]
    return request(nodes, edges, inputs={"items": list(range(ITEMS))}, name=f"map{ITEMS}")


async def test_a_map_of_many_items_completes_with_bounded_memory(
    redis_single: RedisServer, key_prefix: str
) -> None:
    r = aioredis.Redis.from_url(redis_single.url)
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        pids = {name: proc.pid for name, proc in stack.procs.items()}
        sampler = RssSampler(pids).start()
        before = (await r.info("memory"))["used_memory"]
        t0 = time.monotonic()
        gid = await stack.client.submit(graph())
        # Watched to its end (a status poll would read the whole node hash every time).
        events = await asyncio.wait_for(stack.client.watch(gid), 600 if FULL else 120)
        seconds = time.monotonic() - t0
        after = (await r.info("memory"))["used_memory"]
        st = await stack.client.status(gid)
        await sampler.stop()
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st.error
        each = node_status(st, "each")
        assert (each.map.total, each.map.completed) == (ITEMS, ITEMS)
        assert not each.attempts or len(each.attempts) <= 2  # the map's own, never its items
        out = plain(each.output)
        assert out["items"] == [{"i": i} for i in range(ITEMS)]
        assert not [e for e in events if e.instance]
        progress = [e for e in events if kind(e) == "map_progress"]
        # At most one per 250 ms, plus the first and the last.
        assert 2 <= len(progress) <= seconds * 4 + 3, (len(progress), seconds)
        figures = {
            "items": ITEMS,
            "max_concurrency": CONCURRENCY,
            "seconds": round(seconds, 2),
            "items_per_s": round(ITEMS / seconds),
            "redis_used_memory_before_mb": round(before / 2**20, 1),
            "redis_used_memory_after_mb": round(after / 2**20, 1),
            "redis_bytes_per_item": round((after - before) / ITEMS),
            "peak_rss_mb": {name: round(sampler.peak(name), 1) for name in pids},
            "watch_events": len(events),
            "map_progress_events": len(progress),
        }
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        (REPORT_DIR / f"map-{ITEMS}.json").write_text(json.dumps(figures, indent=2))
        print(json.dumps(figures, indent=2))
    await r.aclose()
