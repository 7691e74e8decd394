"""Load, bounded and on 127.0.0.1 only: N concurrent graphs of 10 nodes (a fan-out of three,
an ALL join, a router choosing one of two branches, an ANY join) on an API, two workers and
Envoy, with W watchers: REST SSE and binary gRPC-Web through Envoy, and native gRPC.

Checked: every graph completes exactly once with the right route and result, every node
once; each watcher's events equal the stored history; API, worker and Envoy memory stay
under a fixed bound. The figures (throughput, submit→complete p50/p99 from the graphs'
own create/end times, SubmitGraph latency, peak RSS per process) go to
``build/reliability/load-<N>.json`` (``RELIABILITY_REPORT_DIR`` to change) and are printed.

``make test``: N=200, W=40. ``make reliability`` with ``RELIABILITY_FULL=1``: N=1000, W=200
(the issue's figures, in docs/RELIABILITY.md). ``RELIABILITY_LOAD_GRAPHS`` /
``RELIABILITY_LOAD_WATCHERS`` set other sizes."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from typing import Any

import pytest
from google.protobuf import json_format
from relkit import (
    REPORT_DIR,
    RssSampler,
    Watched,
    behind_envoy,
    check_watched,
    histories,
    kind,
    until,
    watch_grpc,
    watch_grpc_web,
    watch_sse,
)

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import FULL, Client, echo, edge, knob, request
from redisfixture import RedisServer

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
# Envoy in front of API and worker processes; the full variants (RELIABILITY_FULL=1) run
# for minutes.
pytestmark = [pytest.mark.edge, pytest.mark.process, pytest.mark.timeout(900 if FULL else 300)]
GRAPHS = knob("RELIABILITY_LOAD_GRAPHS", 200, 1000)
WATCHERS = knob("RELIABILITY_LOAD_WATCHERS", 40, 200)
RSS_LIMIT_MB = 600  # per process; a leak per graph or per event would cross it at N=1000
NODES = ["start", "a", "b", "c", "join", "triage", "hi", "lo", "notify", "end"]


def graph(i: int) -> orchestrator_pb2.SubmitGraphRequest:
    """10 nodes: start -> a, b, c -> join (ALL) -> triage (router on i's parity) -> hi | lo
    -> notify (ANY) -> end."""
    return request(
        [
            echo("start", i="{{ inputs.i }}"),
            echo("a", v="{{ nodes.start.output.i }}"),
            echo("b", v="{{ nodes.start.output.i }}"),
            echo("c", v="{{ nodes.start.output.i }}"),
            echo("join", sum="{{ nodes.a.output.v + nodes.b.output.v + nodes.c.output.v }}"),
            {
                "id": "triage",
                "router": {
                    "routes": [{"name": "even", "condition": "inputs.i % 2 == 0"}],
                    "defaultRoute": "odd",
                },
            },
            echo("hi", parity="even"),
            echo("lo", parity="odd"),
            {
                "id": "notify",
                "join": "JOIN_MODE_ANY",
                "tool": {"name": "echo"},
                "inputs": {"route": "{{ nodes.triage.output.route }}"},
            },
            echo("end", sum="{{ nodes.join.output.sum }}", route="{{ nodes.notify.output.route }}"),
        ],
        [
            edge("start", "a"),
            edge("start", "b"),
            edge("start", "c"),
            edge("a", "join"),
            edge("b", "join"),
            edge("c", "join"),
            edge("join", "triage"),
            edge("triage", "hi", label="even"),
            edge("triage", "lo", label="odd"),
            edge("hi", "notify"),
            edge("lo", "notify"),
            edge("notify", "end"),
        ],
        inputs={"i": i},
        name="load",
    )


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def count_completed(client: Client) -> int:
    """Graphs of this stack's prefix in state COMPLETED (ListGraphs pages)."""
    n, token = 0, ""
    while True:
        resp = await client.stub.ListGraphs(
            orchestrator_pb2.ListGraphsRequest(page_size=1000, page_token=token, state=COMPLETED),
            timeout=20,
        )
        n += len(resp.graphs)
        token = resp.next_page_token
        if not token:
            return n


async def test_load_graphs_and_watchers_complete_exactly_once_with_bounded_memory(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with behind_envoy(redis_single.url, key_prefix) as (stack, envoy, _):
        assert envoy.proc is not None
        pids = {name: p.pid for name, p in stack.procs.items()}
        sampler = RssSampler({**pids, "envoy": envoy.proc.pid}, interval=0.25).start()

        # Submit everything at once (64 calls in flight), attaching watchers to the
        # first WATCHERS graphs as soon as they are accepted.
        gids: list[str] = [""] * GRAPHS
        submit_s: list[float] = []
        seen: list[Watched] = []
        tasks: list[asyncio.Task[Watched]] = []
        sem = asyncio.Semaphore(64)
        target = f"127.0.0.1:{stack.port}"
        hows = ["sse", "sse", "grpc-web", "grpc"]

        async def submit(i: int) -> None:
            async with sem:
                t = time.monotonic()
                gids[i] = await stack.client.submit(graph(i))
                submit_s.append(time.monotonic() - t)
            if i < WATCHERS:
                w = Watched(gids[i], hows[i % len(hows)])
                seen.append(w)
                if w.how == "sse":
                    coro = watch_sse(envoy.base, w.graph_id, 600, w)
                elif w.how == "grpc-web":
                    coro = watch_grpc_web(envoy.base, w.graph_id, 600, w)
                else:
                    coro = watch_grpc(target, w.graph_id, "grpc", 600, w)
                tasks.append(asyncio.create_task(coro))

        t0 = time.monotonic()
        await asyncio.gather(*(submit(i) for i in range(GRAPHS)))
        submitted_s = time.monotonic() - t0

        async def all_done() -> bool:
            return await count_completed(stack.client) >= GRAPHS

        await until(all_done, 60 + GRAPHS * 0.5, f"{GRAPHS} graphs completed")
        wall_s = time.monotonic() - t0
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        await sampler.stop()
        assert all(p.poll() is None for p in stack.procs.values()), "a process exited"

        # Exactly once, every node once, the right route and result.
        assert len(set(gids)) == GRAPHS
        assert await count_completed(stack.client) == GRAPHS
        stored = await histories(stack.client, gids)
        sem2 = asyncio.Semaphore(20)

        async def status(g: str) -> execution_pb2.GraphStatus:
            async with sem2:
                return await stack.client.status(g)

        statuses = await asyncio.gather(*(status(g) for g in gids))
        for i, (gid, events, st) in enumerate(zip(gids, stored, statuses, strict=True)):
            k = [kind(e) for e in events]
            assert st.state == COMPLETED, (gid, st)
            assert k.count("graph_completed") == 1 and k[-1] == "graph_completed", (gid, k)
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), gid
            ran = sorted(e.node_id for e in events if kind(e) == "node_completed")
            skipped = "lo" if i % 2 == 0 else "hi"
            assert ran == sorted(n for n in NODES if n != skipped), (gid, k)
            assert [e.node_id for e in events if kind(e) == "node_skipped"] == [skipped]
            end = json_format.MessageToDict(next(n for n in st.nodes if n.node_id == "end").output)
            assert end == {"sum": 3 * i, "route": "even" if i % 2 == 0 else "odd"}, end
        by_gid = dict(zip(gids, stored, strict=True))
        for w in seen:
            check_watched(w, by_gid[w.graph_id])

        # Figures.
        latency = [
            (st.end_time.ToMilliseconds() - st.create_time.ToMilliseconds()) / 1000
            for st in statuses
        ]
        first = min(st.create_time.ToMilliseconds() for st in statuses)
        last = max(st.end_time.ToMilliseconds() for st in statuses)
        span_s = (last - first) / 1000
        report: dict[str, Any] = {
            "graphs": GRAPHS,
            "nodes_per_graph": len(NODES),
            "watchers": {h: sum(1 for w in seen if w.how == h) for h in set(hows)},
            "workers": 2,
            "graphs_per_s": round(GRAPHS / span_s, 1),
            "node_runs_per_s": round(GRAPHS * (len(NODES) - 1) / span_s, 1),
            "events_stored": sum(len(h) for h in stored),
            "submit_to_complete_s": {
                "p50": round(pct(latency, 50), 3),
                "p99": round(pct(latency, 99), 3),
                "max": round(max(latency), 3),
            },
            "submit_call_s": {
                "p50": round(pct(submit_s, 50), 4),
                "p99": round(pct(submit_s, 99), 4),
            },
            "all_submitted_s": round(submitted_s, 2),
            "all_completed_s": round(wall_s, 2),
            "peak_rss_mb": {n: round(sampler.peak(n), 1) for n in sampler.samples},
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}",
            # Other processes share the machine: the load average says how much.
            "load_average_1m": round(os.getloadavg()[0], 1),
            "when": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        }
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        path = REPORT_DIR / f"load-{GRAPHS}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nload report ({path}):\n{json.dumps(report, indent=2)}")
        for name, peak in report["peak_rss_mb"].items():
            assert peak < RSS_LIMIT_MB, (name, peak, report)
        assert statistics.median(latency) > 0
