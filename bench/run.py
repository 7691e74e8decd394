"""``make bench``: dago and Celery side by side on one private Redis, in one run.

    python bench/run.py [--out DIR]

Starts a private redis-server, dago as deployed (``python -m dago serve`` + N
``python -m dago worker`` processes, settings from the environment), Envoy in front
of the API, the fake Anthropic API at a fixed latency, and Celery workers (the
same number of processes, Redis broker and result backend), runs the workloads of
issue 9, and writes ``REPORT.md``, ``chart.png`` and ``results.json`` into DIR
(default: bench/). Every process it starts is stopped at the end, on failure and on
Ctrl-C.

Knobs (environment):
  BENCH_SCALE            multiplies the workload sizes (default 1; the smoke test uses 0.02)
  BENCH_WORKERS          worker processes for the main figures (default 2)
  BENCH_SCALING_WORKERS  worker counts of the scaling figures (default 1,2,4)
  BENCH_CONCURRENCY      concurrent graphs of the scaling figures (default 10,100,1000)
  BENCH_PROFILE          1: py-spy profiles of a worker and the API during workload 1
                         (default 1 when BENCH_SCALE >= 1)
  BENCH_CELERY           0 skips Celery (default 1)
  BENCH_ENVOY            0 skips the REST-through-Envoy latency (default 1)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis
import uvloop

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests" / "support")]

import profiles  # noqa: E402
import report  # noqa: E402
import workloads as wl  # noqa: E402
from procs import (  # noqa: E402
    ROOT,
    Procs,
    children_of,
    cpu_seconds,
    free_port,
    pythonpath,
    rss_kb,
    start_redis,
    wait_port,
)

PREFIX = "bench"
SHARDS = int(os.environ.get("BENCH_SHARDS", "8"))  # DAGO_SHARDS of the dago processes
LLM_LATENCY_MS = 50.0


def env_int_list(name: str, default: str) -> list[int]:
    """A comma-separated list of ints from the environment."""
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip()]


class Sizes:
    """Workload sizes for a BENCH_SCALE."""

    def __init__(self, scale: float) -> None:
        def n(full: int, least: int) -> int:
            return max(least, int(full * scale))

        self.scale = scale
        self.w1_nodes = n(30_000, 200)  # workload 1, dago: node executions
        self.w1_width = 48  # graphs of 1 -> 48 -> 1 (50 nodes)
        self.w1_celery = n(5_000, 100)  # workload 1, Celery: independent tasks
        self.chain = n(200, 20)
        self.chain_runs = 3 if scale >= 1 else 1
        self.fan = 100
        self.map_width = n(10_000, 500)  # workload 9: a map 1 -> N -> 1, and Celery's chord
        self.map_concurrency = 200
        # Celery's chord of N on its Redis backend took 104 s for 2,000 no-ops on the shared
        # VM (19 tasks/s, and it grows faster than N): its chord stops at 2,000, compared by
        # items per second.
        self.map_celery_width = min(self.map_width, 2_000)
        self.fan_runs = 5 if scale >= 1 else 1
        self.seq = n(500, 20)
        self.watch_width = 998 if scale >= 1 else 48
        self.watchers = 50 if scale >= 0.5 else 5
        # A chain long enough that submit and the final poll do not weigh on the per-node
        # figure; the smoke run (scale < 0.1) keeps it short.
        self.llm_chain = 10 if scale >= 0.1 else 3
        self.llm_runs = 5 if scale >= 0.1 else 1
        self.in_flight = n(1000, 50)
        self.budget_dago = n(25_000, 200)  # scaling cells above this many nodes are skipped
        self.budget_celery = n(6_000, 100)


class Bench:
    """One benchmark run: the processes, the Redis view, the results."""

    def __init__(self, out: Path, sizes: Sizes) -> None:
        self.out = out
        self.sizes = sizes
        self.procs = Procs(out / "run")
        self.results: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "scale": sizes.scale,
            "machine": machine(),
        }
        self.redis_url = ""
        self.redis_port = 0
        self.r: redis.Redis[bytes]
        self.api_port = 0
        self.workers: list[str] = []
        self.celery_workers: list[str] = []
        self.llm_port = 0

    # --- processes --------------------------------------------------------------------------

    def dago_env(self) -> dict[str, str]:
        """Settings of every dago process (as deployed: everything from the environment)."""
        return {
            "PYTHONPATH": pythonpath(),
            "DAGO_REDIS_URL": self.redis_url,
            "DAGO_KEY_PREFIX": PREFIX,
            "DAGO_SHARDS": str(SHARDS),
            "DAGO_GRPC_HOST": "127.0.0.1",
            "DAGO_GRPC_PORT": str(self.api_port),
            "DAGO_METRICS_PORT": "0",
            "DAGO_LOG_LEVEL": "WARNING",
            "DAGO_AUTH": "off",
            "DAGO_RETENTION_S": "900",
            "DAGO_LLM_PROVIDER": "anthropic",
            "DAGO_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{self.llm_port}",
            "ANTHROPIC_API_KEY": "sk-ant-bench-not-a-real-key",
        }

    def start_dago_api(self) -> None:
        self.api_port = free_port()
        argv = [sys.executable, "-m", "dago", "serve"]
        proc = self.procs.start("dago-api", argv, self.dago_env())
        wait_port(self.api_port, proc, self.procs.log("dago-api"))

    def health_ok(self) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.api_port}") as ch:
            try:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.RpcError:
                return False
            return bool(r.status == health_pb2.HealthCheckResponse.SERVING)

    def start_dago_workers(self, n: int) -> None:
        if len(self.workers) == n and all(self.procs.live[w].poll() is None for w in self.workers):
            return  # already running: a restart would only cost time
        self.stop_dago_workers()
        self.r.delete(f"{PREFIX}:{{workers}}:info", f"{PREFIX}:{{workers}}:seen")
        for i in range(n):
            name = f"dago-worker-{i + 1}"
            env = {**self.dago_env(), "DAGO_WORKER_ID": name}
            self.procs.start(name, [sys.executable, "-m", "dago", "worker"], env)
            self.workers.append(name)
        self.wait_until(
            lambda: self.r.hlen(f"{PREFIX}:{{workers}}:info") >= n,
            60,
            f"{n} dago workers to register",
        )
        self.wait_idle(self.pids(self.workers))

    def wait_idle(self, pids: list[int], timeout: float = 60) -> None:
        """Wait until the processes are done starting (a worker imports its LLM SDK in the
        background after it registers): below 5 % of a core each over 0.3 s, twice."""
        quiet = 0
        deadline = time.monotonic() + timeout
        while quiet < 2 and time.monotonic() < deadline:
            before = [cpu_seconds(p) for p in pids]
            time.sleep(0.3)
            busy = max(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
            quiet = quiet + 1 if busy < 0.015 else 0

    def stop_dago_workers(self) -> None:
        if self.workers:
            self.procs.stop(*self.workers, timeout=40)
            self.workers = []

    def start_celery(self, n: int) -> None:
        running = [self.procs.live[w].poll() is None for w in self.celery_workers]
        if len(running) == n and all(running):
            return  # already running
        self.stop_celery()
        env = {"PYTHONPATH": pythonpath(), "BENCH_REDIS_URL": self.redis_url}
        for i in range(n):
            name = f"celery-worker-{i + 1}"
            argv = [sys.executable, "-m", "celery", "-A", "celery_app", "worker"]
            argv += ["--pool", "solo", "-n", f"w{i + 1}@bench", "--loglevel", "WARNING"]
            argv += ["--without-gossip", "--without-mingle"]
            self.procs.start(name, argv, env)
            self.celery_workers.append(name)
        os.environ["BENCH_REDIS_URL"] = self.redis_url
        from celery_app import app

        app.conf.broker_url = self.redis_url
        app.conf.result_backend = self.redis_url

        def all_up() -> bool:
            return len(app.control.ping(timeout=0.5) or []) >= n

        self.wait_until(all_up, 60, f"{n} Celery workers to answer ping")

    def stop_celery(self) -> None:
        if self.celery_workers:
            self.procs.stop(*self.celery_workers, timeout=20)
            self.celery_workers = []

    def start_fake_llm(self) -> None:
        self.llm_port = free_port()
        argv = [sys.executable, str(HERE / "fake_llm.py"), str(self.llm_port), str(LLM_LATENCY_MS)]
        proc = self.procs.start("fake-anthropic", argv, {"PYTHONPATH": pythonpath()})
        wait_port(self.llm_port, proc, self.procs.log("fake-anthropic"))

    def start_envoy(self) -> int:
        from dago.devtools import edge

        port = free_port()
        fields = {f.name for f in dataclasses.fields(edge.EdgeConfig)}
        extra = {"web_root": ""} if "web_root" in fields else {}  # no UI bundle needed
        cfg = edge.EdgeConfig(
            listen_host="127.0.0.1",
            listen_port=port,
            dago_port=self.api_port,
            metrics_port=free_port(),
            descriptor=str(ROOT / "gen" / "dago.binpb"),
            **extra,  # type: ignore[arg-type]
        )
        config = self.procs.dir / "envoy.yaml"
        config.write_text(edge.render(cfg))
        proc = self.procs.start("envoy", edge.command(config, concurrency=1))
        wait_port(port, proc, self.procs.log("envoy"))

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        self.wait_until(healthy, 30, "Envoy to pass /health")
        return port

    @staticmethod
    def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def pids(self, names: list[str]) -> list[int]:
        return [self.procs.live[n].pid for n in names if n in self.procs.live]

    # --- measuring --------------------------------------------------------------------------

    def redis_cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def commandstats(self) -> dict[str, dict[str, float]]:
        return {k: dict(v) for k, v in self.r.info("commandstats").items()}

    def dago(self, fn: Callable[[wl.Dago], Any]) -> Any:
        """Run ``fn(client)`` on a fresh event loop with a fresh client."""

        async def main() -> Any:
            client = wl.Dago(f"127.0.0.1:{self.api_port}", self.redis_url, PREFIX, SHARDS)
            try:
                return await fn(client)
            finally:
                await client.close()

        return uvloop.run(main())

    def measured(self, fn: Callable[[], float], pids: list[int]) -> dict[str, float]:
        """Run ``fn`` (returns seconds); also the Redis and processes' CPU it cost."""
        self.r.config_resetstat()
        cpu0 = self.redis_cpu()
        pcpu0 = sum(cpu_seconds(p) for p in pids)
        secs = fn()
        return {
            "seconds": secs,
            "redis_cpu_s": self.redis_cpu() - cpu0,
            "proc_cpu_s": sum(cpu_seconds(p) for p in pids) - pcpu0,
        }

    # --- the workloads: dago ------------------------------------------------------------------

    def dago_throughput(self, profile: bool) -> None:
        s = self.sizes
        per_graph = s.w1_width + 2
        graphs = max(1, s.w1_nodes // per_graph)
        req = wl.request(wl.fan(s.w1_width))
        self.dago(lambda c: c.run_many(req, min(graphs, 20), 60))  # warm up
        pids = self.pids(["dago-api", *self.workers])
        spies: list[profiles.Spy] = []
        if profile:
            for name in ("dago-worker-1", "dago-api"):
                spies.append(profiles.Spy(name, self.procs.live[name].pid, self.procs.dir))
        try:
            m = self.measured(lambda: self.dago(lambda c: c.run_many(req, graphs, 600)), pids)
        finally:
            for spy in spies:
                spy.stop()
        stats = self.commandstats()
        nodes = graphs * per_graph
        self.results["w1_dago"] = {
            **m,
            "graphs": graphs,
            "nodes": nodes,
            "nodes_per_s": nodes / m["seconds"],
            "redis_us_per_node": m["redis_cpu_s"] / nodes * 1e6,
            "proc_cpu_us_per_node": m["proc_cpu_s"] / nodes * 1e6,
            "commandstats": profiles.top_commands(stats, nodes),
            "slowlog": profiles.slowlog(self.r),
        }
        self.results["profiles"] = {spy.name: spy.summary() for spy in spies}

    def dago_chain(self) -> None:
        s = self.sizes
        req = wl.request(wl.chain(s.chain))
        runs = [self.dago(lambda c: c.run_many(req, 1, 300)) for _ in range(s.chain_runs)]
        best = sorted(runs)[len(runs) // 2]
        self.results["w2_dago"] = {
            "length": s.chain,
            "runs_s": runs,
            "ms_per_step": best / s.chain * 1000,
        }

    def dago_fan(self) -> None:
        s = self.sizes
        req = wl.request(wl.fan(s.fan))
        runs = [self.dago(lambda c: c.run_many(req, 1, 300)) for _ in range(s.fan_runs)]
        self.results["w3_dago"] = {"width": s.fan, "runs_ms": [x * 1000 for x in runs]}
        self.results["w3_dago"]["ms"] = sorted(runs)[len(runs) // 2] * 1000

    def dago_map(self) -> None:
        s = self.sizes
        req = wl.map_fan(s.map_width, s.map_concurrency)
        secs = self.dago(lambda c: c.run_many(req, 1, 600))
        self.results["w9_dago"] = {
            "width": s.map_width,
            "max_concurrency": s.map_concurrency,
            "ms": secs * 1000,
            "items_per_s": s.map_width / secs,
        }

    def dago_latency(self) -> None:
        s = self.sizes
        req = wl.request(wl.one())
        self.results["w4_dago_grpc"] = self.dago(
            lambda c: wl.sequential(lambda: c.submit_and_watch(req), s.seq, 20)
        )
        self.results["w4_dago_run"] = self.dago(
            lambda c: wl.sequential(lambda: c.run_graph(req), s.seq, 20)
        )

    def dago_rest_latency(self, envoy_port: int) -> None:
        s = self.sizes

        async def rest() -> tuple[dict[str, float], dict[str, float]]:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{envoy_port}", timeout=30
            ) as http:
                two = await wl.sequential(
                    lambda: wl.rest_submit_and_watch(http, wl.one()), s.seq, 20
                )
                one = await wl.sequential(lambda: wl.rest_run_graph(http, wl.one()), s.seq, 20)
                return two, one

        self.results["w4_dago_rest"], self.results["w4_dago_rest_run"] = uvloop.run(rest())

    def dago_watch(self) -> None:
        s = self.sizes
        req = wl.request(wl.fan(s.watch_width))

        async def run(c: wl.Dago) -> dict[str, Any]:
            # the graph finishes before the replays start (the Redis index says so)
            base = await c.finished()
            gid = await c.submit(req)
            while await c.finished() < base + 1:  # noqa: ASYNC110 - polling Redis
                await asyncio.sleep(0.01)
            n = await c.replay(gid)  # warm
            t0 = time.perf_counter()
            for _ in range(3):
                await c.replay(gid)
            one = 3 * n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(3):
                await c.replay(gid, batch=True)
            one_batch = 3 * n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            counts = await asyncio.gather(*(c.replay(gid) for _ in range(s.watchers)))
            many = sum(counts) / (time.perf_counter() - t0)
            # live: watchers attached before the graph runs
            live_req = wl.request(wl.chain(min(200, s.chain)))
            live_gid = await c.submit(live_req)
            t0 = time.perf_counter()
            live = await asyncio.gather(*(c.replay(live_gid) for _ in range(s.watchers)))
            live_rate = sum(live) / (time.perf_counter() - t0)
            return {
                "events": n,
                "one_watcher_events_per_s": one,
                "one_watcher_batch_events_per_s": one_batch,
                "watchers": s.watchers,
                "many_watchers_events_per_s": many,
                "live_watchers_events_per_s": live_rate,
                "live_events_each": live[0],
            }

        self.results["w5_dago"] = self.dago(run)

    def dago_llm(self) -> None:
        s = self.sizes
        req = wl.request(wl.llm_chain(s.llm_chain))
        self.dago(lambda c: c.run_many(req, 1, 60))  # warm up (SDK import, connections)
        runs = [self.dago(lambda c: c.run_many(req, 1, 120)) for _ in range(s.llm_runs)]
        best = sorted(runs)[len(runs) // 2]
        per_node = best / s.llm_chain * 1000
        sdk_ms = uvloop.run(self.bare_sdk_call(max(5, s.llm_chain * s.llm_runs)))
        self.results["w6_dago"] = {
            "nodes": s.llm_chain,
            "model_latency_ms": LLM_LATENCY_MS,
            "ms_per_node": per_node,
            "overhead_ms_per_node": per_node - LLM_LATENCY_MS,
            "bare_sdk_call_ms": sdk_ms,
            "dago_overhead_ms_per_node": per_node - sdk_ms,
        }

    async def bare_sdk_call(self, n: int) -> float:
        """Median time of the same streamed request made by dago's Anthropic provider (the
        official SDK makes the request, as in the llm node) straight from this process: what
        the SDK and the fake cost without dago's graph around it."""
        from dago.llm.anthropic_provider import AnthropicProvider
        from dago.llm.base import ChatMessage, LlmRequest

        provider = AnthropicProvider("sk-ant-bench", f"http://127.0.0.1:{self.llm_port}")
        req = LlmRequest(
            model="claude-sonnet-4-6",
            messages=[ChatMessage("user", "Say something short.")],
            max_tokens=64,
        )
        samples = []
        try:
            for i in range(n + 2):
                t0 = time.perf_counter()
                await provider.complete(req, lambda _: None)
                if i >= 2:  # the first calls warm the SDK up
                    samples.append((time.perf_counter() - t0) * 1000)
        finally:
            await provider.close()
        return sorted(samples)[len(samples) // 2]

    def dago_memory(self) -> None:
        s = self.sizes
        names = ["dago-api", *self.workers]
        before = {n: rss_kb(self.procs.live[n].pid) for n in names}
        mem0 = int(self.r.info("memory")["used_memory"])
        peak = dict(before)
        peak_redis = mem0
        req = wl.request(wl.sleeper(0.5))

        async def run(c: wl.Dago) -> float:
            nonlocal peak_redis
            task = asyncio.create_task(c.run_many(req, s.in_flight, 300))
            while not task.done():
                for n in names:
                    peak[n] = max(peak[n], rss_kb(self.procs.live[n].pid))
                peak_redis = max(peak_redis, int((await c.redis.info("memory"))["used_memory"]))
                await asyncio.sleep(0.05)
            return await task

        secs = self.dago(run)
        self.results["w7_dago"] = {
            "graphs": s.in_flight,
            "seconds": secs,
            "rss_before_mb": {n: v / 1024 for n, v in before.items()},
            "rss_peak_mb": {n: v / 1024 for n, v in peak.items()},
            "redis_used_mb_delta": (peak_redis - mem0) / 2**20,
        }

    def dago_scaling(self) -> None:
        s = self.sizes
        out: list[dict[str, Any]] = []
        for w in env_int_list("BENCH_SCALING_WORKERS", "1,2,4"):
            self.start_dago_workers(w)
            for conc in env_int_list("BENCH_CONCURRENCY", "10,100,1000"):
                for fig, width in (("w1", 8), ("w3", s.fan)):
                    nodes = conc * (width + 2)
                    row: dict[str, Any] = {"workers": w, "graphs": conc, "fig": fig}
                    row["nodes"] = nodes
                    if nodes > s.budget_dago:
                        row["skipped"] = True
                    else:
                        req = wl.request(wl.fan(width))
                        secs = self.dago(lambda c, r=req, n=conc: c.run_many(r, n, 600))
                        row.update(seconds=secs, nodes_per_s=nodes / secs)
                    out.append(row)
        self.results["w8_dago"] = out

    # --- the workloads: Celery ----------------------------------------------------------------

    def celery_main(self) -> None:
        s = self.sizes
        wl.celery_tasks(50)  # warm up
        pids = self.pids(self.celery_workers)
        m = self.measured(lambda: wl.celery_tasks(s.w1_celery), pids)
        self.results["w1_celery"] = {
            **m,
            "tasks": s.w1_celery,
            "nodes_per_s": s.w1_celery / m["seconds"],
            "redis_us_per_node": m["redis_cpu_s"] / s.w1_celery * 1e6,
            "proc_cpu_us_per_node": m["proc_cpu_s"] / s.w1_celery * 1e6,
            "commandstats": profiles.top_commands(self.commandstats(), s.w1_celery),
        }
        runs = [wl.celery_chain(s.chain) for _ in range(s.chain_runs)]
        self.results["w2_celery"] = {
            "length": s.chain,
            "ms_per_step": sorted(runs)[len(runs) // 2] / s.chain * 1000,
        }
        runs = [wl.celery_fan(s.fan) for _ in range(s.fan_runs)]
        self.results["w3_celery"] = {"width": s.fan, "ms": sorted(runs)[len(runs) // 2] * 1000}
        for _ in range(20):
            wl.celery_one()
        samples = [wl.celery_one() * 1000 for _ in range(s.seq)]
        self.results["w4_celery"] = wl.summary(samples)
        self.celery_memory()

    def celery_map(self) -> None:
        """Workload 9 on Celery: src -> chord(N no-ops) -> sink, beside dago's map."""
        s = self.sizes
        secs = wl.celery_fan(s.map_celery_width)
        self.results["w9_celery"] = {
            "width": s.map_celery_width,
            "ms": secs * 1000,
            "items_per_s": s.map_celery_width / secs,
        }

    def celery_memory(self) -> None:
        from celery_app import sleep as csleep

        s = self.sizes
        pids = {n: self.procs.live[n].pid for n in self.celery_workers}
        peak: dict[str, int] = {}

        def total(pid: int) -> int:
            return rss_kb(pid) + sum(rss_kb(c) for c in children_of(pid))

        before = {n: total(p) for n, p in pids.items()}
        t0 = time.perf_counter()
        results = [csleep.delay(0.01) for _ in range(s.in_flight)]
        while not all(r.ready() for r in results[-10:]):
            for n, p in pids.items():
                peak[n] = max(peak.get(n, 0), total(p))
            time.sleep(0.05)
        for r in results:
            r.get(timeout=300)
        self.results["w7_celery"] = {
            "tasks": s.in_flight,
            "seconds": time.perf_counter() - t0,
            "rss_before_mb": {n: v / 1024 for n, v in before.items()},
            "rss_peak_mb": {n: v / 1024 for n, v in peak.items()},
        }

    def celery_scaling(self) -> None:
        s = self.sizes
        out: list[dict[str, Any]] = []
        for w in env_int_list("BENCH_SCALING_WORKERS", "1,2,4"):
            self.start_celery(w)
            for conc in env_int_list("BENCH_CONCURRENCY", "10,100,1000"):
                for fig, width in (("w1", 8), ("w3", s.fan)):
                    nodes = conc * (width + 2)
                    row: dict[str, Any] = {"workers": w, "graphs": conc, "fig": fig}
                    row["nodes"] = nodes
                    if nodes > s.budget_celery:
                        row["skipped"] = True
                    else:
                        secs = wl.celery_fan(width, conc)
                        row.update(seconds=secs, nodes_per_s=nodes / secs)
                    out.append(row)
        self.results["w8_celery"] = out

    def lua(self) -> None:
        """``bench/luacost.py`` under callgrind: the Redis instructions per node of the
        functions alone, the same count however loaded the machine is."""
        graphs = max(2, round(20 * self.sizes.scale))
        env = {**os.environ, "BENCH_LUA_CALLGRIND": "1", "BENCH_LUA_GRAPHS": str(graphs)}
        argv = [sys.executable, str(HERE / "luacost.py")]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"luacost.py exited {out.returncode}: {out.stderr[-500:]}")
        res = json.loads(out.stdout)
        self.results["lua"] = {
            "graphs": graphs,
            "nodes": res["nodes"],
            "instructions_per_node": res["redis_instructions_per_node"],
        }

    # --- the run ----------------------------------------------------------------------------

    def phase(self, key: str, what: str, fn: Callable[[], Any]) -> None:
        """Run one workload; a failure is recorded in the report and the run goes on.
        BENCH_ONLY (comma-separated keys: w1 ... w9, rest, lua, celery, celery8) picks some."""
        only = os.environ.get("BENCH_ONLY", "")
        if only and not set(key.split(",")) & set(only.split(",")):
            return
        step(what)
        load = self.results.setdefault("load_average", {})
        before = os.getloadavg()[0]
        try:
            fn()
        except Exception as e:  # the other workloads still say something
            step(f"FAILED: {what}: {type(e).__name__}: {e}")
            self.results.setdefault("errors", []).append(f"{what}: {type(e).__name__}: {e}")
        # The 1-minute load average around the phase: anything else on the box shows here.
        load[what] = [round(before, 1), round(os.getloadavg()[0], 1)]

    def run(self) -> None:
        t_start = time.monotonic()
        n_workers = int(os.environ.get("BENCH_WORKERS", "2"))
        self.results["workers"] = n_workers
        profile = os.environ.get("BENCH_PROFILE", "1" if self.sizes.scale >= 1 else "0") == "1"
        self.redis_url, self.redis_port = start_redis(self.procs)
        self.r = redis.Redis.from_url(self.redis_url)
        self.results["redis_version"] = self.r.info("server")["redis_version"]
        self.start_fake_llm()
        self.start_dago_api()
        self.start_dago_workers(n_workers)
        # SERVING needs Redis and a live worker
        self.wait_until(self.health_ok, 30, "the dago API to report SERVING")
        self.phase(
            "w1",
            "dago: workload 1 (sustained node executions)",
            lambda: self.dago_throughput(profile),
        )
        self.phase("w2", "dago: workload 2 (chain)", self.dago_chain)
        self.phase("w3", "dago: workload 3 (fan-out/fan-in)", self.dago_fan)
        self.phase("w9", "dago: workload 9 (a map 1 -> 10,000 -> 1)", self.dago_map)

        def rest() -> None:
            envoy = self.start_envoy()
            try:
                self.dago_rest_latency(envoy)
            finally:
                self.procs.stop("envoy")

        self.phase(
            "w4", "dago: workload 4 (one node, submit -> terminal event, gRPC)", self.dago_latency
        )
        if os.environ.get("BENCH_ENVOY", "1") == "1":
            self.phase("rest", "dago: workload 4 (the same, REST through Envoy)", rest)
        self.phase("w5", "dago: workload 5 (WatchGraph throughput)", self.dago_watch)
        self.phase("w6", "dago: workload 6 (LLM nodes against the fake model)", self.dago_llm)
        self.phase("w7", "dago: workload 7 (memory with graphs in flight)", self.dago_memory)
        self.phase("w8", "dago: workload 8 (scaling)", self.dago_scaling)
        self.phase("lua", "dago: Redis instructions per node (luacost.py, callgrind)", self.lua)
        self.stop_dago_workers()
        self.procs.stop("dago-api")
        if os.environ.get("BENCH_CELERY", "1") == "1":
            self.phase("celery,celery8,w9", "Celery: start", lambda: self.start_celery(n_workers))
            self.phase("celery", "Celery: workloads 1-4, 7", self.celery_main)
            self.phase("w9", "Celery: workload 9 (a chord)", self.celery_map)
            self.phase("celery8", "Celery: workload 8 (scaling)", self.celery_scaling)
            self.stop_celery()
            # Celery's result objects unsubscribe when collected at exit, after Redis is
            # gone; that noise says nothing about the run.
            sys.unraisablehook = lambda _: None
        self.results["duration_s"] = time.monotonic() - t_start


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def step(msg: str) -> None:
    """Progress on stderr."""
    print(f"==> bench: {msg}", file=sys.stderr, flush=True)


def main() -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    bench = Bench(out, Sizes(float(os.environ.get("BENCH_SCALE", "1"))))

    def on_signal(signum: int, _: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bench.run()
    except KeyboardInterrupt:
        step("interrupted; stopping every process")
        return 130
    finally:
        bench.procs.stop_all()
    (out / "results.json").write_text(json.dumps(bench.results, indent=2, default=str))
    report.write(out, bench.results, baseline=load_baseline())
    step(f"wrote {out / 'REPORT.md'} and {out / 'chart.png'} in {bench.results['duration_s']:.0f}s")
    return 0


def load_baseline() -> dict[str, Any] | None:
    """Figures of the first run before the optimizations (bench/baseline.json), if kept."""
    path = HERE / "baseline.json"
    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
