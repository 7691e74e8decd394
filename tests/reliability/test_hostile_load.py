"""Hostile tenants against real processes (issue 15, items 1 and 2): graphs built to hold the
API's or a worker's CPU, and runs built to store without bound. Each attack is refused or
bounded, and a well-behaved client of another namespace, measured during the attack, keeps
working: no failed call, the API stays SERVING (its latencies are printed, not asserted:
timing goals belong in benchmarks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dago.api.auth import hash_key, new_key
from dago.store.schema import Meta
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from harness import (
    Client,
    RunningStack,
    echo,
    edge,
    error_details,
    node_status,
    request,
    rpc_error,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

pytestmark = [pytest.mark.process]

KEY_A = new_key()
KEY_B = new_key()
KEYS = f"{hash_key(KEY_A)}:attacker,{hash_key(KEY_B)}:bystander"
FAILED = execution_pb2.GRAPH_STATE_FAILED
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


@dataclass
class Tenants:
    stack: RunningStack
    attacker: Client
    bystander: Client


@pytest.fixture
async def tenants(redis_single: RedisServer, key_prefix: str) -> AsyncIterator[Tenants]:
    env = {
        "DAGO_AUTH": "keys",
        "DAGO_API_KEYS": KEYS,
        "DAGO_MAX_NODE_BYTES": str(64 * 1024),
        "DAGO_MAX_EVENT_BYTES": str(16 * 1024),
        "DAGO_MAX_RUN_BYTES": str(2 * 1024 * 1024),
        # Below what the graph of 1,000 expressions of ~480 tokens takes here (~1.8 s).
        "DAGO_COMPILE_BUDGET_S": "0.5",
    }
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        attacker = Client(f"127.0.0.1:{stack.port}", KEY_A)
        bystander = Client(f"127.0.0.1:{stack.port}", KEY_B)
        try:
            yield Tenants(stack, attacker, bystander)
        finally:
            await attacker.close()
            await bystander.close()


@dataclass
class Bystander:
    """A well-behaved client of another namespace: small graphs run to the end, and health
    checks, over and over while an attack runs."""

    client: Client
    runs: list[float] = field(default_factory=list)
    checks: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    async def work(self, stop: asyncio.Event) -> None:
        health = health_pb2_grpc.HealthStub(self.client.channel)
        req = request([echo("a", v=1), echo("b", v="{{ nodes.a.output.v }}")], [edge("a", "b")])
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if r.status != health_pb2.HealthCheckResponse.SERVING:
                    self.failures.append(f"health {r.status}")
                self.checks.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                _, st = await self.client.run(req, timeout=30)
                if st.state != COMPLETED:
                    self.failures.append(f"run {st.state}")
                self.runs.append(time.perf_counter() - t0)
            except (grpc.aio.AioRpcError, AssertionError) as e:
                self.failures.append(repr(e))
            await asyncio.sleep(0.02)

    def report(self, what: str) -> None:
        def ms(xs: list[float]) -> str:
            if not xs:
                return "none"
            xs = sorted(xs)
            return f"median {xs[len(xs) // 2] * 1e3:.1f} ms, max {xs[-1] * 1e3:.1f} ms, n={len(xs)}"

        print(f"\n{what}: bystander health {ms(self.checks)}; runs {ms(self.runs)}")


async def during(tenants: Tenants, attack: Callable[[], Awaitable[None]], what: str) -> Bystander:
    """Run ``attack`` while the bystander works; the bystander must not see one failure."""
    by = Bystander(tenants.bystander)
    stop = asyncio.Event()
    task = asyncio.create_task(by.work(stop))
    try:
        await attack()
    finally:
        stop.set()
        await task
    by.report(what)
    assert not by.failures, by.failures
    assert by.runs, "the bystander completed no run during the attack"
    return by


def violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in error_details(err):
        for v in getattr(d, "field_violations", []):
            out[v.field] = v.description
    return out


def wide(nodes: int, elements: int) -> orchestrator_pb2.SubmitGraphRequest:
    """A graph of ``nodes`` unconnected echo nodes, each input one list-literal template of
    ``elements`` elements, every one different (``{{ [i,1,1,...] }}``: nothing is cached)."""
    ones = ",1" * (elements - 1)
    return request([echo(f"n{i}", v="{{ [" + str(i) + ones + "] }}") for i in range(nodes)])


# --- item 1: CPU at submit ------------------------------------------------------------------


async def test_graphs_built_to_hold_the_cpu_are_refused_while_others_are_served(
    tenants: Tenants,
) -> None:
    """1,000 nodes with a ~4 KB list literal each (what held an API's loop for ~45 s):
    refused at once by the graph size limit; 200 of them: by the expression size limit; 1,000
    nodes with expressions just under it: by the per-graph CPU budget, compiled off the event
    loop; a graph far over the node limit: before any node is compiled."""
    cases = {
        "graph": (wide(1000, 2000), "DAGO_MAX_GRAPH_BYTES"),
        "graph.nodes[0].inputs.v": (wide(200, 2000), "more than 512 tokens"),
        "graph ": (wide(1000, 240), "DAGO_COMPILE_BUDGET_S"),
        "graph.nodes": (request([echo(f"n{i}") for i in range(5000)]), "5000 nodes"),
    }

    async def attack() -> None:
        for where, (req, says) in cases.items():
            req.validate_only = True
            errors = await asyncio.gather(
                *(rpc_error(tenants.attacker.stub.SubmitGraph(req, timeout=60)) for _ in range(3))
            )
            for err in errors:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
                found = violations(err)
                assert says in found[where.strip()], found

    await during(tenants, attack, "submits built to hold the CPU")


# --- item 2: what a run stores ---------------------------------------------------------------


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_runs_built_to_store_without_bound_are_stopped(tenants: Tenants) -> None:
    """A comprehension that would copy 100 KB 1,999 times; a chain that doubles a string; a
    node that emits huge events; a fan-out whose outputs add up past the run's limit. Each
    fails with a clear error before it stores much; Redis and the worker stay small."""
    worker = tenants.stack.procs["w1"].pid
    chain = [echo("c0", s="x" * 10_000)]
    for i in range(1, 6):
        prev = f"nodes.c{i - 1}.output.s"
        chain.append(echo(f"c{i}", s="{{ " + prev + " + " + prev + " }}"))
    chain_edges = [edge(f"c{i - 1}", f"c{i}") for i in range(1, 6)]
    fan = [echo("src")] + [echo(f"f{i}", s="{{ inputs.s }}") for i in range(80)]
    fan_edges = [edge("src", f"f{i}") for i in range(80)]
    cases = {
        "comprehension": request(
            [echo("m", v="{{ inputs.l.map(x, inputs.s) }}")],
            inputs={"l": list(range(1999)), "s": "z" * 100_000},
        ),
        "chain": request(chain, chain_edges),
        "events": request([tool("e", "chatter", inputs={"count": 3, "size": 100_000})]),
        "fan": request(fan, fan_edges, inputs={"s": "y" * 40_000}),
    }
    statuses: dict[str, execution_pb2.GraphStatus] = {}

    async def attack() -> None:
        for name, req in cases.items():
            _, statuses[name] = await tenants.attacker.run(req, timeout=60)

    await during(tenants, attack, "runs built to store without bound")

    comp = node_status(statuses["comprehension"], "m")
    assert statuses["comprehension"].state == FAILED
    assert "map/filter/all/exists" in comp.error.message, comp.error

    st = statuses["chain"]
    assert st.state == FAILED
    failed = [n for n in st.nodes if n.state == execution_pb2.NODE_STATE_FAILED]
    assert [n.node_id for n in failed] == ["c3"], st  # 80 KB > 64 KB (DAGO_MAX_NODE_BYTES)
    assert failed[0].error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "DAGO_MAX_NODE_BYTES" in failed[0].error.message

    ev = node_status(statuses["events"], "e")
    assert ev.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "DAGO_MAX_EVENT_BYTES" in ev.error.message

    st = statuses["fan"]
    assert st.state == FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "DAGO_MAX_RUN_BYTES" in st.error.message, st.error

    assert rss_peak_mb(worker) < 400, rss_peak_mb(worker)


async def test_a_run_never_stores_more_than_its_limit(
    tenants: Tenants, redis_single: RedisServer
) -> None:
    """What the fan-out above left in Redis is bounded by DAGO_MAX_RUN_BYTES (plus the
    overhead of keys and counters), whatever its nodes produced."""
    fan = [echo("src")] + [echo(f"f{i}", s="{{ inputs.s }}") for i in range(80)]
    req = request(fan, [edge("src", f"f{i}") for i in range(80)], inputs={"s": "y" * 40_000})
    gid, st = await tenants.attacker.run(req, timeout=60)
    assert st.state == FAILED
    import redis

    r = redis.Redis.from_url(redis_single.url)
    try:
        stored = sum(int(r.memory_usage(k, samples=0) or 0) for k in r.scan_iter(f"*{gid}*"))
        counted = sum(int(r.hget(k, Meta.BYTES) or 0) for k in r.scan_iter(f"*:g:{gid}"))
    finally:
        r.close()
    # What the functions counted stays within the limit; what Redis holds for the run (with
    # its own overhead per key, field and entry) stays within a small multiple of it.
    assert 0 < counted <= 2 * 1024 * 1024, counted
    assert stored < 3 * 1024 * 1024, stored
    js = json_format.MessageToDict(st)
    assert "DAGO_MAX_RUN_BYTES" in js["error"]["message"]
