"""The benchmark's workloads: graphs and clients for dago, the equivalent Celery canvases.

dago is driven the way a user drives it: gRPC (``SubmitGraph``, ``WatchGraph``) and REST
through Envoy. Completion of many graphs at once is observed from Redis (the per-state
graph indexes), so watching thousands of graphs does not load the API being measured.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import httpx
import redis.asyncio as aioredis
from google.protobuf import json_format

from dago.v1 import orchestrator_pb2, orchestrator_pb2_grpc

COMPLETED, FAILED, CANCELLED = 3, 4, 5


# --- graphs ---------------------------------------------------------------------------------


def echo(node_id: str) -> dict[str, Any]:
    """A no-op node: the built-in echo tool."""
    return {"id": node_id, "tool": {"name": "echo"}, "inputs": {"x": 1}}


def chain(n: int) -> dict[str, Any]:
    """a0 -> a1 -> ... -> a<n-1>."""
    nodes = [echo(f"a{i}") for i in range(n)]
    edges = [{"from": f"a{i}", "to": f"a{i + 1}"} for i in range(n - 1)]
    return {"name": f"chain{n}", "nodes": nodes, "edges": edges}


def fan(width: int) -> dict[str, Any]:
    """src -> width parallel nodes -> sink (an ALL join)."""
    mids = [echo(f"m{i}") for i in range(width)]
    edges = [{"from": "src", "to": f"m{i}"} for i in range(width)]
    edges += [{"from": f"m{i}", "to": "sink"} for i in range(width)]
    return {"name": f"fan{width}", "nodes": [echo("src"), *mids, echo("sink")], "edges": edges}


def map_fan(width: int, concurrency: int) -> orchestrator_pb2.SubmitGraphRequest:
    """src -> a map of ``width`` echo items (at most ``concurrency`` at once) -> sink: the
    1 -> N -> 1 of ``fan`` as one map node, its items a list in the run's inputs."""
    body = {"id": "item", "tool": {"name": "echo"}, "inputs": {"x": "{{ item }}"}}
    graph = {
        "name": f"map{width}",
        "nodes": [
            echo("src"),
            {"id": "each", "map": {"items": "inputs.items", "node": body,
                                   "max_concurrency": concurrency}},
            echo("sink"),
        ],
        "edges": [{"from": "src", "to": "each"}, {"from": "each", "to": "sink"}],
    }  # fmt: skip
    body_req = {"graph": graph, "inputs": {"items": list(range(width))}}
    return json_format.ParseDict(body_req, orchestrator_pb2.SubmitGraphRequest())


def one() -> dict[str, Any]:
    """A one-node graph."""
    return {"name": "one", "nodes": [echo("a")], "edges": []}


def sleeper(seconds: float) -> dict[str, Any]:
    """A one-node graph whose node sleeps."""
    node = {"id": "s", "tool": {"name": "sleep"}, "inputs": {"seconds": seconds}}
    return {"name": "sleep", "nodes": [node], "edges": []}


def llm_chain(n: int) -> dict[str, Any]:
    """n LLM nodes in a chain, each prompting with the previous answer's text."""
    nodes = [{"id": "l0", "llm": {"prompt": "Say something short.", "maxTokens": 64}}]
    for i in range(1, n):
        prompt = f"Go on from: {{{{ nodes.l{i - 1}.output.text }}}}"
        nodes.append({"id": f"l{i}", "llm": {"prompt": prompt, "maxTokens": 64}})
    edges = [{"from": f"l{i}", "to": f"l{i + 1}"} for i in range(n - 1)]
    return {"name": f"llm{n}", "nodes": nodes, "edges": edges}


def request(graph: dict[str, Any]) -> orchestrator_pb2.SubmitGraphRequest:
    """The SubmitGraphRequest of a graph given as proto JSON."""
    return json_format.ParseDict({"graph": graph}, orchestrator_pb2.SubmitGraphRequest())


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * len(s) + 0.5) - 1))
    return s[k]


# --- dago client ----------------------------------------------------------------------------


class Dago:
    """A gRPC client of the API, plus a Redis view of graph completion."""

    def __init__(self, target: str, redis_url: str, prefix: str, shards: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)
        self.redis = aioredis.Redis.from_url(redis_url)
        self._indexes = [
            f"{prefix}:{{s{s}}}:index:{st}"
            for s in range(shards)
            for st in (COMPLETED, FAILED, CANCELLED)
        ]
        self._failed = [f"{prefix}:{{s{s}}}:index:{FAILED}" for s in range(shards)]

    async def close(self) -> None:
        """Close the channel and the Redis client."""
        await self.channel.close()
        await self.redis.aclose()

    async def finished(self) -> int:
        """Graphs of this prefix that reached a terminal state so far."""
        pipe = self.redis.pipeline(transaction=False)
        for k in self._indexes:
            pipe.zcard(k)
        return sum(await pipe.execute())

    async def failed(self) -> int:
        """Graphs that failed so far."""
        pipe = self.redis.pipeline(transaction=False)
        for k in self._failed:
            pipe.zcard(k)
        return sum(await pipe.execute())

    async def submit(self, req: orchestrator_pb2.SubmitGraphRequest) -> str:
        """Submit; returns the graph id."""
        return (await self.stub.SubmitGraph(req, timeout=60)).graph_id

    async def run_many(
        self, req: orchestrator_pb2.SubmitGraphRequest, count: int, limit_s: float
    ) -> float:
        """Submit ``count`` copies at once (64 calls in flight) and wait until all are
        finished; returns the wall time from the first submit to the last completion."""
        base = await self.finished()
        base_failed = await self.failed()
        sem = asyncio.Semaphore(64)

        async def one() -> None:
            async with sem:
                await self.submit(req)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        deadline = t0 + limit_s
        while await self.finished() - base < count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{count} graphs not finished after {limit_s:.0f}s")
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - t0
        if await self.failed() != base_failed:
            raise RuntimeError("some benchmark graphs failed; see the worker logs")
        return elapsed

    async def submit_and_watch(self, req: orchestrator_pb2.SubmitGraphRequest) -> float:
        """Submit, then watch until the terminal event; returns the seconds it took."""
        t0 = time.perf_counter()
        gid = await self.submit(req)
        watch = orchestrator_pb2.WatchGraphRequest(graph_id=gid)
        async for msg in self.stub.WatchGraph(watch, timeout=60):
            kind = msg.event.WhichOneof("payload")
            if kind in ("graph_completed", "graph_failed", "graph_cancelled"):
                if kind != "graph_completed":
                    raise RuntimeError(f"graph {gid} ended with {kind}")
                break
        return time.perf_counter() - t0

    async def run_graph(self, req: orchestrator_pb2.SubmitGraphRequest) -> float:
        """RunGraph (submit and watch in one call) until the terminal event; seconds."""
        t0 = time.perf_counter()
        run = orchestrator_pb2.RunGraphRequest(graph=req.graph, inputs=req.inputs, batch=True)
        async for msg in self.stub.RunGraph(run, timeout=60):
            kinds = [ev.WhichOneof("payload") for ev in msg.events]
            if "graph_completed" in kinds:
                break
            if "graph_failed" in kinds or "graph_cancelled" in kinds:
                raise RuntimeError(f"a RunGraph ended with {kinds[-1]}")
        return time.perf_counter() - t0

    async def replay(self, gid: str, batch: bool = False) -> int:
        """Watch ``gid`` (finished) from the start (``batch``: several events per message);
        returns the events received."""
        n = 0
        watch = orchestrator_pb2.WatchGraphRequest(graph_id=gid, batch=batch)
        async for msg in self.stub.WatchGraph(watch, timeout=120):
            n += len(msg.events) if batch else 1
        return n


async def rest_submit_and_watch(http: httpx.AsyncClient, graph: dict[str, Any]) -> float:
    """POST /api/v1/graphs, then read GET /events as SSE until graph_completed."""
    t0 = time.perf_counter()
    r = await http.post("/api/v1/graphs", json={"graph": graph})
    r.raise_for_status()
    gid = r.json()["graph_id"]
    hdrs = {"accept": "text/event-stream"}
    async with http.stream("GET", f"/api/v1/graphs/{gid}/events", headers=hdrs) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if line.startswith("data:") and "graph_" in line:
                doc = json.loads(line[5:])
                ev = doc.get("event", doc)
                if "graphCompleted" in ev or "graph_completed" in ev:
                    break
                if any(k in ev for k in ("graphFailed", "graph_failed", "graphCancelled")):
                    raise RuntimeError(f"graph {gid} did not complete: {ev}")
    return time.perf_counter() - t0


async def rest_run_graph(http: httpx.AsyncClient, graph: dict[str, Any]) -> float:
    """POST /api/v1/graphs:run read as SSE until graph_completed."""
    t0 = time.perf_counter()
    hdrs = {"accept": "text/event-stream"}
    async with http.stream("POST", "/api/v1/graphs:run", json={"graph": graph}, headers=hdrs) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data:") and "graph_" in line:
                ev = json.loads(line[5:])["event"]
                if "graph_completed" in ev:
                    break
                if "graph_failed" in ev or "graph_cancelled" in ev:
                    raise RuntimeError(f"a run did not complete: {ev}")
    return time.perf_counter() - t0


async def sequential(fn: Callable[[], Awaitable[float]], n: int, warmup: int) -> dict[str, float]:
    """Run ``fn`` ``warmup`` + ``n`` times one after another; latency stats in ms."""
    for _ in range(warmup):
        await fn()
    samples = [await fn() * 1000 for _ in range(n)]
    return summary(samples)


def summary(samples_ms: list[float]) -> dict[str, float]:
    """p50 / p99 / mean / max of samples in ms."""
    return {
        "n": len(samples_ms),
        "p50_ms": pct(samples_ms, 50),
        "p99_ms": pct(samples_ms, 99),
        "mean_ms": statistics.fmean(samples_ms),
        "max_ms": max(samples_ms),
    }


# --- Celery ---------------------------------------------------------------------------------


def celery_tasks(n: int) -> float:
    """n independent no-op tasks submitted, then every result collected; seconds."""
    from celery_app import noop

    t0 = time.perf_counter()
    results = [noop.delay(i) for i in range(n)]
    for r in results:
        r.get(timeout=600)
    return time.perf_counter() - t0


def celery_chain(n: int) -> float:
    """A chain of n no-op tasks; seconds until its last result."""
    from celery import chain as cchain
    from celery_app import noop

    t0 = time.perf_counter()
    cchain(*(noop.si(i) for i in range(n)))().get(timeout=600)
    return time.perf_counter() - t0


def celery_fan(width: int, copies: int = 1) -> float:
    """``copies`` canvases src -> chord(width no-ops) -> sink at once; seconds until all end."""
    from celery import chain as cchain
    from celery import chord
    from celery_app import noop

    t0 = time.perf_counter()
    runs = [
        cchain(noop.si(0), chord([noop.si(i) for i in range(width)], noop.si(0)))()
        for _ in range(copies)
    ]
    for r in runs:
        r.get(timeout=600)
    return time.perf_counter() - t0


def celery_one() -> float:
    """One task end to end (submit, result); seconds."""
    from celery_app import noop

    t0 = time.perf_counter()
    noop.delay(1).get(timeout=60)
    return time.perf_counter() - t0
