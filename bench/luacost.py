"""``python bench/luacost.py``: Redis CPU per node execution of dago's Lua transitions alone.

A private Redis; graphs submitted through the real servicer (in process, no gRPC); then a
loop that does exactly what a worker does to Redis (take, then apply, which starts the next
items, in batches) without running anything. Redis's own CPU time (INFO cpu) per node is the cost
of the scripts and the stream commands, free of the Python processes' noise.

    BENCH_LUA_GRAPHS (default 200), BENCH_LUA_WIDTH (default 48: graphs of 1 -> 48 -> 1),
    BENCH_LUA_BATCH (default 64), BENCH_LUA_SEPARATE=1 (every batch taken by a take of its
    own and applied without taking: the calls of a worker with no backlog),
    BENCH_LUA_SHARDS (default 1; ``make bench`` runs 8: graphs spread over that many shards,
    each round's results applied as a worker applies them),
    BENCH_LUA_FIXED=1 (with BENCH_LUA_CALLGRIND=1: instead, the instructions of one call
    that carries no item, per kind of call: what a call costs before its items)

CPU time moves with whatever else the box runs; ``BENCH_LUA_CALLGRIND=1`` runs Redis under
valgrind's callgrind instead and counts the instructions Redis executes per node while
the workers' calls run (instrumentation is switched on for that loop only): the same
count for the same code, however loaded the machine is (~50x slower; use fewer graphs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import uvloop

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]

import workloads as wl  # noqa: E402
from procs import Procs, free_port, start_redis, wait_port  # noqa: E402

from dago.app import build_api  # noqa: E402
from dago.config import Settings  # noqa: E402
from dago.store.functions import Outcome, Result, Started  # noqa: E402


class Callgrind:
    """redis-server under callgrind, instrumented only between on() and off()."""

    def __init__(self, procs: Procs) -> None:
        self.out = procs.dir / "callgrind.out"
        port = free_port()
        exe = shutil.which("redis-server") or "redis-server"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        argv += [f"--callgrind-out-file={self.out}", exe, "--port", str(port)]
        argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = procs.start("redis", argv)
        wait_port(port, self.proc, procs.log("redis"), timeout=60)
        self.url = f"redis://127.0.0.1:{port}/0"

    def _ctl(self, *args: str) -> str:
        cmd = ["callgrind_control", *args, str(self.proc.pid)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def on(self) -> None:
        self._ctl("--instr=on")

    def off(self) -> int:
        """Switch instrumentation off and return the instructions counted so far."""
        self._ctl("--instr=off")
        self._ctl("--dump")
        total = 0
        for f in self.out.parent.glob(self.out.name + "*"):
            m = re.search(r"^totals: (\d+)", f.read_text(errors="replace"), re.M)
            if m:
                total += int(m.group(1))
        return total


async def measure(
    url: str,
    graphs: int,
    width: int,
    batch: int,
    grind: Callgrind | None = None,
    separate: bool = False,
    shards: int = 1,
) -> dict[str, Any]:
    """Submit ``graphs`` fan graphs, then drive them to the end like a worker would."""
    settings = Settings(redis_url=url, key_prefix="lua", shards=shards, auth="off")
    api = build_api(settings)
    orch: Any = api._orchestrator  # the real servicer, in process
    store = orch._store
    graphs_cache = orch._graphs
    await store.ensure_groups()
    r = redis.Redis.from_url(url)
    req = wl.request(wl.fan(width))
    gids = []
    for i in range(graphs):
        # A request id places each graph on a stable shard: the same spread every run.
        req.request_id = f"luacost-{i}"
        gids.append((await orch.SubmitGraph(req, None)).graph_id)
    nodes = graphs * (width + 2)

    def cpu() -> float:
        info = r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    r.config_resetstat()
    if grind is not None:
        grind.on()
    spent = {"take": 0.0, "apply": 0.0}
    done = 0
    rounds = takes = 0
    t0 = time.perf_counter()
    started: list[Started] = []
    while done < nodes:
        if not started:
            c0 = cpu()
            started = (await store.take(list(range(shards)), "w", batch, 60000)).started
            spent["take"] += cpu() - c0
            takes += 1
            if not started:
                break
        results: dict[int, list[Result]] = {}
        for s in started:
            it = s.item
            loaded = await graphs_cache.get(it.shard, it.graph_id)
            node = loaded.compiled.nodes[it.node]
            taken = ",".join(str(e.index) for e in node.out_edges)
            results.setdefault(it.shard, []).append(
                Result(
                    it.msg_id,
                    it.graph_id,
                    it.node,
                    it.attempt,
                    it.iteration,
                    it.execution,
                    '{"x":1}',
                    Outcome.OK,
                    '{"x":1}',
                    taken,
                    "",
                    "",
                    "",
                    0,
                    it.start_deliveries,
                )
            )
        c1 = cpu()
        # As a worker under load: each apply starts as many new items as it applied
        # (BENCH_LUA_SEPARATE=1: none, every batch is taken by its own call).
        parts = [(shard, 0 if separate else len(rs), rs) for shard, rs in results.items()]
        started = []
        for applied in await store.apply_round("w", 60000, parts):  # as the worker's round
            assert not isinstance(applied, Exception), applied
            started += applied.started
        spent["apply"] += cpu() - c1
        rounds += 1
        done += sum(len(rs) for rs in results.values())
    secs = time.perf_counter() - t0
    instructions = grind.off() if grind is not None else 0
    stats = r.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] / nodes for k, v in stats.items()}
    # Redis's count of FCALLs, less the takes: the apply calls.
    apply_calls = stats.get("cmdstat_fcall", {}).get("calls", 0) - takes
    cmd_us = {k.removeprefix("cmdstat_"): v["usec"] / nodes for k, v in stats.items()}
    finished = sum(r.zcard(f"lua:{{s{n}}}:index:{s}") for n in range(shards) for s in (3, 4, 5))
    await store.redis.aclose()
    return {
        "graphs": graphs,
        "finished": finished,
        "nodes": nodes,
        "batch": batch,
        "shards": shards,
        "rounds": rounds,
        # FCALLs of apply per round (take's calls are in calls_per_node's fcall).
        "apply_calls_per_round": apply_calls / rounds if rounds else 0,
        "apply_takes": not separate,
        "seconds": secs,
        "us_per_node": {k: v / nodes * 1e6 for k, v in spent.items()},
        "total_us_per_node": sum(spent.values()) / nodes * 1e6,
        "calls_per_node": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        # Redis's own timing of each command per node (fcall includes the commands it ran).
        "command_us_per_node": dict(sorted(cmd_us.items(), key=lambda kv: -kv[1])[:8]),
        "gids": len(gids),
        **({"redis_instructions_per_node": instructions // nodes} if grind else {}),
    }


NOOP = "#!lua name=luacost_noop\nredis.register_function('noop', function(keys, args) return 1 end)"


async def fixed_costs(grind: Callgrind, calls: int = 1000) -> dict[str, int]:
    """Instructions Redis executes for one call that carries no item (a call's fixed cost),
    per kind of call, each the mean of ``calls`` calls."""
    settings = Settings(redis_url=grind.url, key_prefix="lua", shards=8, auth="off")
    store = build_api(settings)._orchestrator._store
    r = store.redis
    await store.ensure_groups()
    await store.apply(0, "w", 0, 60000, [])  # the library loaded
    await r.function_load(NOOP, replace=True)
    key = store.keys.shard(0).work
    kinds: dict[str, Any] = {
        "PING": r.ping,
        "FCALL of a function that returns 1": lambda: r.fcall("noop", 1, key),
        "apply, no results, want 0": lambda: store.apply(0, "w", 0, 60000, []),
        "apply, no results, want 8 (an empty stream)": lambda: store.apply(0, "w", 8, 60000, []),
        "take, 1 empty shard": lambda: store.take([0], "w", 8, 60000),
        "take, 8 empty shards": lambda: store.take(list(range(8)), "w", 8, 60000),
    }
    out, before = {}, 0
    for name, call in kinds.items():
        grind.on()
        for _ in range(calls):
            await call()
        total = grind.off()  # counted since the start: the difference is this kind's
        out[name] = (total - before) // calls
        before = total
    await r.function_delete("luacost_noop")
    await r.aclose()
    return out


def main() -> int:
    """Entry point: prints the figures as JSON."""
    procs = Procs(Path(tempfile.mkdtemp(prefix="dago-luacost-")))
    try:
        grind = Callgrind(procs) if os.environ.get("BENCH_LUA_CALLGRIND") == "1" else None
        url = grind.url if grind else start_redis(procs)[0]
        graphs = int(os.environ.get("BENCH_LUA_GRAPHS", "200"))
        width = int(os.environ.get("BENCH_LUA_WIDTH", "48"))
        batch = int(os.environ.get("BENCH_LUA_BATCH", "64"))
        separate = os.environ.get("BENCH_LUA_SEPARATE") == "1"
        shards = int(os.environ.get("BENCH_LUA_SHARDS", "1"))
        out: Any
        if grind is not None and os.environ.get("BENCH_LUA_FIXED") == "1":
            out = uvloop.run(fixed_costs(grind))
        else:
            out = uvloop.run(measure(url, graphs, width, batch, grind, separate, shards))
    finally:
        procs.stop_all()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
