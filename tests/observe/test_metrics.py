"""Prometheus metrics after real traffic: scraped from the API's and a worker's /metrics
ports and parsed with prometheus_client's parser.

Traffic: a poison message (two workers die running it, the third dead-letters it: one
reclaim, one dead letter), then on the surviving worker a two-node graph, a retried node,
a failing node and an LLM node answered by the fake Anthropic server after a 429.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dago.engine.ids import parse_shard
from dago.v1 import execution_pb2, orchestrator_pb2
from fake_anthropic import Error, FakeAnthropic, Text, Usage
from harness import (
    InProcessStack,
    RunningStack,
    echo,
    edge,
    eventually,
    fast_retry,
    free_port,
    request,
    rpc_error,
    stack_settings,
    start_api_quickly,
    tool,
)
from obshelpers import TOOLS, marker
from redisfixture import RedisCluster, RedisServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
MODEL = "claude-sonnet-4-6-20260101"
PRICES = {"claude-sonnet-4-6": {"input": 3, "output": 15, "cache_write": 3.75, "cache_read": 0.3}}


async def scrape(port: int) -> Samples:
    """Every sample of a /metrics endpoint: (name, labels) -> value."""
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200, r.text
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} missing; have: " + ", ".join(
        sorted(f"{n}{dict(lb)}" for n, lb in samples if n == name)
    )
    return samples[key]


@pytest.mark.process
async def test_metrics_after_real_traffic(
    redis_single: RedisServer, key_prefix: str, fake: FakeAnthropic, tmp_path: Path
) -> None:
    api_port = free_port()
    worker_ports = {f"w{n}": free_port() for n in (1, 2, 3)}
    env = {
        "DAGO_MAX_DELIVERIES": "2",
        "DAGO_TOOL_MODULES": TOOLS,
        "DAGO_AUTH": "off",
        "DAGO_METRICS_PORT": str(api_port),
        "DAGO_WORKER_HEARTBEAT_MS": "200",
        "DAGO_WORKER_TTL_MS": "1000",
        "DAGO_ANTHROPIC_API_KEY": "sk-ant-metrics-test-key",
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
        "DAGO_PRICES": json.dumps(PRICES),
    }
    fake.script = [
        Error(429, "rate_limit_error", "slow down"),
        Text("four words of text", model=MODEL, usage=Usage(input=12, output=7, cache_read=3)),
    ]
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        for name, port in worker_ports.items():
            stack.start(name, "worker", DAGO_WORKER_METRICS_PORT=str(port))
        await start_api_quickly(stack)
        stub = stack.client.stub

        # A poison message: the first two deliveries kill their workers, the third is
        # dead-lettered by the survivor (DAGO_MAX_DELIVERIES=2).
        poison = await stack.client.submit(
            request([tool("p", "die", inputs={"marker": str(marker(tmp_path))})])
        )

        async def dead_lettered() -> bool:
            resp = await stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest())
            return len(resp.dead_letters) == 1

        await eventually(dead_lettered, 30, 0.1)
        alive = [n for n in worker_ports if stack.procs[n].poll() is None]
        assert len(alive) == 1, alive
        survivor = alive[0]

        # Traffic on the survivor: success, retry, failure, an LLM call after a 429.
        ok, st = await stack.client.run(request([echo("a", x=1), echo("b", y=2)], [edge("a", "b")]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        retried = request([tool("f", "flaky", inputs={"fail_attempts": 1}, retry=fast_retry(2))])
        _, st = await stack.client.run(retried)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        _, st = await stack.client.run(request([tool("x", "fail")]))
        assert st.state == execution_pb2.GRAPH_STATE_FAILED
        llm = {
            "id": "ask",
            "llm": {"prompt": "Say four words.", "provider": "anthropic", "model": MODEL},
            "retry": fast_retry(2),
        }
        llm_gid, st = await stack.client.run(request([llm]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        cost = st.usage.cost_usd
        assert cost > 0
        err = await rpc_error(
            stub.GetGraphStatus(
                orchestrator_pb2.GetGraphStatusRequest(graph_id="0-01JAAAAAAAAAAAAAAAAAAAAAAA")
            )
        )
        assert err.code().name == "NOT_FOUND"

        # --- the surviving worker's own metrics --------------------------------------
        w = await scrape(worker_ports[survivor])
        executions = "dago_node_executions_total"
        assert value(w, executions, kind="tool", outcome="completed") == 3
        assert value(w, executions, kind="tool", outcome="retrying") == 1
        assert value(w, executions, kind="tool", outcome="failed") == 1
        assert value(w, executions, kind="llm", outcome="retrying") == 1
        assert value(w, executions, kind="llm", outcome="completed") == 1
        assert value(w, "dago_node_retries_total", kind="tool") == 1
        assert value(w, "dago_node_retries_total", kind="llm") == 1
        assert value(w, "dago_node_duration_seconds_count", kind="tool") == 5
        assert value(w, "dago_node_duration_seconds_count", kind="llm") == 2
        assert value(w, "dago_node_duration_seconds_bucket", kind="tool", le="+Inf") == 5
        assert value(w, "dago_worker_slots") == 64
        assert value(w, "dago_worker_slots_busy") == 0
        anth = {"provider": "anthropic", "model": MODEL}
        assert value(w, "dago_llm_requests_total", outcome="ok", **anth) == 1
        assert value(w, "dago_llm_requests_total", outcome="error", **anth) == 1
        assert (
            value(w, "dago_llm_errors_total", provider="anthropic", error_class="rate_limited") == 1
        )
        assert value(w, "dago_llm_tokens_total", type="input", **anth) == 12
        assert value(w, "dago_llm_tokens_total", type="output", **anth) == 7
        assert value(w, "dago_llm_tokens_total", type="cache_read", **anth) == 3
        assert value(w, "dago_llm_cost_usd_total", **anth) == pytest.approx(cost)
        assert value(w, "dago_llm_time_to_first_token_seconds_count", **anth) == 1
        assert value(w, "dago_llm_request_duration_seconds_count", **anth) == 2
        assert value(w, "process_cpu_seconds_total") > 0
        assert not any(llm_gid in str(labels) or ok in str(labels) for _, labels in w)

        # --- the API: RPCs, and the cluster's state read from Redis -------------------
        a = await scrape(api_port)
        submit = "dago.v1.OrchestratorService/SubmitGraph"
        assert value(a, "dago_rpc_requests_total", method=submit, code="OK") == 5
        assert value(a, "dago_rpc_duration_seconds_count", method=submit) == 5
        status_rpc = "dago.v1.OrchestratorService/GetGraphStatus"
        assert value(a, "dago_rpc_requests_total", method=status_rpc, code="NOT_FOUND") == 1
        assert value(a, "dago_redis_up") == 1
        assert value(a, "dago_graphs_submitted_total") == 5
        assert value(a, "dago_graphs_finished_total", status="completed") == 3
        assert value(a, "dago_graphs_finished_total", status="failed") == 1
        assert value(a, "dago_graphs_finished_total", status="cancelled") == 0
        assert value(a, "dago_graphs_active") == 1  # the poisoned graph waits
        assert value(a, "dago_graph_duration_seconds_count") == 4
        assert value(a, "dago_graph_duration_seconds_bucket", le="+Inf") == 4
        assert value(a, "dago_graph_duration_seconds_sum") > 0
        assert value(a, "dago_work_reclaimed_total") == 1
        assert value(a, "dago_work_dead_lettered_total") == 1
        poison_shard = str(parse_shard(poison, 4))
        for shard in map(str, range(4)):
            assert value(a, "dago_dead_letters", shard=shard) == (shard == poison_shard)
            assert value(a, "dago_queue_depth", shard=shard) == 0
            assert value(a, "dago_queue_pending", shard=shard) == 0
            assert value(a, "dago_queue_lag_seconds", shard=shard) == 0

        async def one_alive() -> bool:
            return value(await scrape(api_port), "dago_workers_alive") == 1

        await eventually(one_alive, 10, 0.1)

        # With no worker left, submitted work waits: depth and lag show it.
        stack.signal(survivor, signal.SIGTERM)
        waiting = await stack.client.submit(request([echo("w", z=3)]))
        shard = str(parse_shard(waiting, 4))

        async def backlog() -> bool:
            a = await scrape(api_port)
            return (
                value(a, "dago_queue_depth", shard=shard) == 1
                and value(a, "dago_queue_lag_seconds", shard=shard) > 0.05
            )

        await eventually(backlog, 10, 0.05)


async def test_cluster_metrics_on_redis_cluster(
    redis_cluster: RedisCluster, key_prefix: str
) -> None:
    # The scrape-time reads work on a Redis Cluster too (one pipeline per shard's slot).
    port = free_port()
    settings = stack_settings(redis_cluster.url, key_prefix, metrics_port=port)
    async with InProcessStack(settings) as stack:
        _, st = await stack.client.run(request([echo("a", x=1), echo("b", y=2)], [edge("a", "b")]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        a = await scrape(port)
        assert value(a, "dago_redis_up") == 1
        assert value(a, "dago_graphs_submitted_total") == 1
        assert value(a, "dago_graphs_finished_total", status="completed") == 1
        assert value(a, "dago_graph_duration_seconds_count") == 1
        assert value(a, "dago_workers_alive") == 1
        for shard in map(str, range(4)):
            assert value(a, "dago_queue_depth", shard=shard) == 0
            assert value(a, "dago_queue_pending", shard=shard) == 0
        # Node metrics belong to the worker's own port, not the API's.
        assert not any(name.startswith("dago_node_") for name, _ in a)


@pytest.mark.redis
async def test_open_watch_streams_are_counted_until_they_end(
    redis_single: RedisServer, key_prefix: str
) -> None:
    # dago_rpc_streams_open: the watchers (the dashboard's "Watchers" panel).
    port = free_port()
    watch = "dago.v1.OrchestratorService/WatchGraph"
    settings = stack_settings(redis_single.url, key_prefix, metrics_port=port)
    async with InProcessStack(settings) as stack:
        gid = await stack.client.submit(request([tool("h", "hold", inputs={"seconds": 60})]))
        calls = [
            stack.client.stub.WatchGraph(orchestrator_pb2.WatchGraphRequest(graph_id=gid))
            for _ in range(2)
        ]
        for call in calls:
            await call.read()  # the stream is open: its first event arrived

        async def streams(n: int) -> bool:
            return value(await scrape(port), "dago_rpc_streams_open", method=watch) == n

        await eventually(lambda: streams(2), 10, 0.05)
        calls[0].cancel()
        await eventually(lambda: streams(1), 10, 0.05)
        await stack.client.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid))
        while await calls[1].read() is not grpc.aio.EOF:  # it ends after the terminal event
            pass
        await eventually(lambda: streams(0), 10, 0.05)
        a = await scrape(port)
        assert value(a, "dago_rpc_requests_total", method=watch, code="OK") == 1
        assert value(a, "dago_rpc_requests_total", method=watch, code="CANCELLED") == 1


@pytest.mark.process
async def test_wait_metrics(redis_single: RedisServer, key_prefix: str) -> None:
    # dago_waits_open (cluster), dago_signals_total (API), dago_wait_duration_seconds and the
    # `waiting` outcome of node executions (worker).
    api_port, worker_port = free_port(), free_port()
    settings = stack_settings(
        redis_single.url, key_prefix, metrics_port=api_port, worker_metrics_port=worker_port
    )
    wait = {"id": "w", "wait": {}}
    timed = {"id": "w", "wait": {"timeout": "0.2s", "timeoutDecision": "reject"}}
    async with InProcessStack(settings) as stack:
        c = stack.client
        gids = [await c.submit(request([wait])) for _ in range(3)]

        async def open_waits(n: int) -> bool:
            a = await scrape(api_port)
            return sum(v for (name, _), v in a.items() if name == "dago_waits_open") == n

        await eventually(lambda: open_waits(3), 10, 0.05)
        signal = orchestrator_pb2.SignalGraphRequest(graph_id=gids[0], node_id="w")
        signal.decision = "approve"
        await c.stub.SignalGraph(signal, timeout=10)
        signal.decision = "reject"
        await rpc_error(c.stub.SignalGraph(signal, timeout=10))  # conflict, or ended
        await c.wait(gids[0])
        _, st = await c.run(request([timed]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        await eventually(lambda: open_waits(2), 10, 0.05)
        a = await scrape(api_port)
        assert value(a, "dago_signals_total", outcome="recorded") == 1
        refused = sum(
            value(a, "dago_signals_total", outcome=o)
            for o in ("conflict", "not_waiting")
            if ("dago_signals_total", frozenset({("outcome", o)})) in a
        )
        assert refused == 1
        w = await scrape(worker_port)
        assert value(w, "dago_wait_duration_seconds_count", decided_by="signal") == 1
        assert value(w, "dago_wait_duration_seconds_count", decided_by="timeout") == 1
        assert value(w, "dago_node_executions_total", kind="wait", outcome="waiting") == 4
        assert value(w, "dago_node_executions_total", kind="wait", outcome="completed") == 2
