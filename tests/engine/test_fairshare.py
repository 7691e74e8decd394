"""Fair shares between namespaces (``lua/fair.lua``, DAGO_NAMESPACES_FILE): weighted turns
between namespaces, priorities within one, the running-nodes cap, and the submit quotas
(active runs, daily cost), through the real API and workers on a single Redis and on a
cluster. Orders are read from the runs' events and state, not from timing: each test
queues its work before a worker takes any (a stack made with ``workers=0``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2

from dago.api.auth import hash_key, new_key
from dago.config import ConfigError, NamespacesFile, load_namespaces, parse_namespaces
from dago.store.schema import Fair
from dago.store.stats import RedisCollector
from dago.v1 import execution_pb2, orchestrator_pb2
from fake_anthropic import FakeAnthropic
from harness import (
    Client,
    InProcessStack,
    MakeStack,
    error_details,
    eventually,
    request,
    rpc_error,
    tool,
)
from redisfixture import RedisServer, RedisTarget

KEY_A, KEY_B = new_key(), new_key()
KEYS = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


def sleeps(n: int, seconds: float, priority: int = 0) -> orchestrator_pb2.SubmitGraphRequest:
    """A run of ``n`` parallel ``sleep`` nodes (all entries: all queued at submit)."""
    req = request([tool(f"s{i}", "sleep", inputs={"seconds": seconds}) for i in range(n)])
    req.priority = priority
    return req


async def fair_stack(
    make_stack: MakeStack,
    redis: RedisTarget | RedisServer,
    tmp_path: Path,
    shares: dict[str, Any],
    **kw: Any,
) -> tuple[InProcessStack, Client, Client]:
    """A stack with namespaces team-a and team-b (one shard: their work meets in one set of
    queues) and no worker yet; a client per namespace."""
    path = tmp_path / "namespaces.yaml"
    path.write_text(yaml.safe_dump(shares))
    s = await make_stack(
        redis, workers=0, shards=1, auth="keys", api_keys=KEYS, namespaces_file=str(path), **kw
    )
    a, b = Client(f"127.0.0.1:{s.port}", KEY_A), Client(f"127.0.0.1:{s.port}", KEY_B)
    return s, a, b


async def starts(c: Client, gid: str) -> list[tuple[int, str]]:
    """(time ms, node) of each node_started of a run."""
    return [
        (e.time.ToMilliseconds(), e.node_id)
        for e in await c.history(gid)
        if e.WhichOneof("payload") == "node_started"
    ]


async def fair_state_is_clean(s: InProcessStack) -> bool:
    """Nothing counted running or in flight once every item is acked."""
    sk = s.store.keys.shard(0)
    fair = await s.store.redis.hgetall(sk.fair)
    running = {k: v for k, v in fair.items() if k.startswith(Fair.RUNNING.encode())}
    untracked = int(fair.get(Fair.UNTRACKED.encode(), b"0"))
    return not running and not untracked and await s.store.redis.hlen(sk.inflight) == 0


async def test_a_flooded_namespace_does_not_hold_back_another(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, {})
    try:
        flood = [await a.submit(sleeps(100, 0.01)) for _ in range(2)]
        gid = await b.submit(sleeps(1, 0))
        s.add_worker("w0", worker_slots=4)
        st = await b.wait(gid, timeout=30)
        assert st.state == COMPLETED
        # When B's run has finished, most of A's 200 queued nodes have not even started:
        # B's item waited for one turn, not for the flood.
        left = [await a.status(g) for g in flood]
        queued = sum(n.state == execution_pb2.NODE_STATE_QUEUED for x in left for n in x.nodes)
        assert queued > 150, queued
        b_start = (await starts(b, gid))[0][0]
        a_starts = [t for g in flood for t, _ in await starts(a, g)]
        before = sum(t < b_start for t in a_starts)
        assert before <= 8, before  # at most a couple of takes of the 4 slots
        for g in flood:
            assert (await a.wait(g, timeout=60)).state == COMPLETED
        await eventually(lambda: fair_state_is_clean(s), 10)
    finally:
        await a.close()
        await b.close()


async def test_weights_shape_the_share_of_slots(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    shares = {"namespaces": {"team-a": {"weight": 3}}, "default": {"weight": 1}}
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, shares)
    try:
        ga = await a.submit(sleeps(120, 0.01))
        gb = await b.submit(sleeps(120, 0.01))
        s.add_worker("w0", worker_slots=4)
        for c, g in ((a, ga), (b, gb)):
            assert (await c.wait(g, timeout=60)).state == COMPLETED
        # The first 80 starts, from both runs' events: team-a got ~3 of every 4.
        both = sorted(
            [(t, "a") for t, _ in await starts(a, ga)] + [(t, "b") for t, _ in await starts(b, gb)]
        )
        first = [ns for _, ns in both[:80]]
        assert 52 <= first.count("a") <= 66, first.count("a")
    finally:
        await a.close()
        await b.close()


async def test_priorities_order_the_work_of_a_namespace(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, {})
    try:
        low = await a.submit(sleeps(12, 0, priority=1))
        high = await a.submit(sleeps(12, 0, priority=5))
        mid = await a.submit(sleeps(12, 0))  # 0: the default, 3
        assert [(await a.status(g)).priority for g in (low, high, mid)] == [1, 5, 3]
        s.add_worker("w0", worker_slots=2)
        for g in (low, high, mid):
            assert (await a.wait(g, timeout=30)).state == COMPLETED
        t = {g: sorted(x for x, _ in await starts(a, g)) for g in (low, high, mid)}
        assert t[high][-1] <= t[mid][0] and t[mid][-1] <= t[low][0], t
        bad = sleeps(1, 0, priority=6)
        err = await rpc_error(a.stub.SubmitGraph(bad, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "priority" in (
            err.details() or ""
        )
    finally:
        await a.close()
        await b.close()


async def test_the_running_nodes_cap_holds_and_others_go_on(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    shares = {"namespaces": {"team-a": {"max_running_nodes": 3}}}
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, shares)
    try:
        ga = await a.submit(sleeps(24, 0.05))
        gb = await b.submit(sleeps(24, 0.05))
        s.add_worker("w0", worker_slots=12)
        for c, g in ((a, ga), (b, gb)):
            assert (await c.wait(g, timeout=60)).state == COMPLETED
        # Running nodes of team-a over time, from its events (an end before a start at the
        # same millisecond): never more than 3; team-b, uncapped, ran more at once.
        for c, g, most in ((a, ga, 3), (b, gb, 24)):
            marks = [
                (e.time.ToMilliseconds(), 1 if e.WhichOneof("payload") == "node_started" else -1)
                for e in await c.history(g)
                if e.WhichOneof("payload") in ("node_started", "node_completed")
            ]
            level, peak = 0, 0
            for _, d in sorted(marks):
                level += d
                peak = max(peak, level)
            assert peak <= most, (g, peak)
            if most > 3:
                assert peak > 3, peak
        await eventually(lambda: fair_state_is_clean(s), 10)
    finally:
        await a.close()
        await b.close()


def gauge(families: Any, name: str, **labels: str) -> float:
    """The value of one sample of a collected metric family."""
    for fam in families:
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no {name} {labels}")


async def test_queue_depth_and_running_per_namespace_are_metrics(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    shares = {"namespaces": {"team-a": {"max_running_nodes": 2}}}
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, shares)
    collector = RedisCollector(s.settings, s.store.keys)
    try:
        gid = await a.submit(sleeps(10, 30))
        await b.submit(sleeps(3, 0))
        found = await asyncio.to_thread(collector.collect)
        assert gauge(found, "dago_namespace_queue_depth", namespace="team-a") == 10
        # team-b is not named in the namespaces file: it is no label of its own.
        assert gauge(found, "dago_namespace_queue_depth", namespace="other") == 3
        assert not any(s.labels.get("namespace") == "team-b" for fam in found for s in fam.samples)
        assert gauge(found, "dago_queue_depth", shard="0") == 13
        s.add_worker("w0")

        async def capped() -> bool:
            found = await asyncio.to_thread(collector.collect)
            return (
                gauge(found, "dago_namespace_running", namespace="team-a") == 2
                and gauge(found, "dago_namespace_queue_depth", namespace="team-a") == 8
            )

        await eventually(capped, 10, 0.05)
        # GetLimits shows the caller its own namespace's share and load, never another's.
        mine = (await a.stub.GetLimits(orchestrator_pb2.GetLimitsRequest(), timeout=10)).namespace
        assert (mine.namespace, mine.max_running_nodes, mine.weight) == ("team-a", 2, 1.0)
        assert (mine.running_nodes, mine.queued_nodes, mine.active_runs) == (2, 8, 1)
        theirs = (await b.stub.GetLimits(orchestrator_pb2.GetLimitsRequest(), timeout=10)).namespace
        assert (theirs.namespace, theirs.max_running_nodes) == ("team-b", 0)
        await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
    finally:
        await a.close()
        await b.close()


def quota_failure(err: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
    found = [d for d in error_details(err) if isinstance(d, error_details_pb2.QuotaFailure)]
    assert found, error_details(err)
    return found[0]


async def test_over_its_active_runs_a_namespace_is_refused_others_are_not(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    shares = {"namespaces": {"team-a": {"max_active_runs": 2}}}
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, shares)
    try:
        held = [await a.submit(sleeps(1, 0)) for _ in range(2)]
        qf = quota_failure(await rpc_error(a.stub.SubmitGraph(sleeps(1, 0), timeout=10)))
        assert qf.violations[0].subject == "namespace:team-a"
        assert "max_active_runs" in qf.violations[0].description
        await b.submit(sleeps(1, 0))  # another namespace is not held back
        s.add_worker("w0")
        for g in held:
            assert (await a.wait(g)).state == COMPLETED
        await a.submit(sleeps(1, 0))  # room again
    finally:
        await a.close()
        await b.close()


async def test_a_burst_of_submits_cannot_pass_the_active_runs_cap(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    # One shard, no worker: the cap is counted in the step that creates each run, so 20
    # submits at once make exactly 3 runs, whatever the order they meet in.
    shares = {"namespaces": {"team-a": {"max_active_runs": 3}}}
    _, a, b = await fair_stack(make_stack, redis_target, tmp_path, shares)
    try:

        async def submit() -> str | grpc.StatusCode:
            try:
                return await a.submit(sleeps(1, 0))
            except grpc.aio.AioRpcError as e:
                return e.code()

        got = await asyncio.gather(*(submit() for _ in range(20)))
        made = [g for g in got if isinstance(g, str)]
        assert len(made) == 3
        assert got.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 17
        page = orchestrator_pb2.ListGraphsRequest(page_size=100)
        assert len((await a.stub.ListGraphs(page, timeout=10)).graphs) == 3
    finally:
        await a.close()
        await b.close()


@pytest.mark.slow  # the worker's first model call (the SDK's start) takes seconds
async def test_over_its_daily_cost_a_namespace_is_refused(
    redis_single: RedisServer, make_stack: MakeStack, tmp_path: Path, fake: FakeAnthropic
) -> None:
    # One Redis kind: the charge is one command of the apply every other test runs on both.
    shares = {"namespaces": {"team-a": {"daily_cost_usd": 0.000001}}}
    s, a, b = await fair_stack(
        make_stack,
        redis_single,
        tmp_path,
        shares,
        anthropic_api_key="sk-fake",
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
    )
    try:
        s.add_worker("w0")
        llm = request([{"id": "ask", "llm": {"prompt": "hi", "model": "claude-sonnet-4-6"}}])
        gid = await a.submit(llm)
        st = await a.wait(gid)
        assert st.state == COMPLETED and st.usage.cost_usd > 0
        # Charged to team-a's day as the attempt applied its usage; the next run is refused.
        qf = quota_failure(await rpc_error(a.stub.SubmitGraph(llm, timeout=10)))
        assert qf.violations[0].subject == "namespace:team-a"
        assert "daily_cost_usd" in qf.violations[0].description
        await b.submit(llm)  # team-b has no budget set
    finally:
        await a.close()
        await b.close()


def test_the_namespaces_file_is_checked_naming_the_field(tmp_path: Path) -> None:
    shares = parse_namespaces(
        "namespaces: {team-a: {weight: 3, max_running_nodes: 50, max_active_runs: 100, "
        "daily_cost_usd: 20}}\ndefault: {weight: 1, max_running_nodes: 10}"
    )
    assert shares.of("team-a").weight == 3 and shares.of("team-a").daily_cost_usd == 20
    assert shares.of("other").max_running_nodes == 10
    for text, field in (
        ("namespaces: {team-a: {weight: 0}}", "namespaces.team-a.weight"),
        ("namespaces: {team-a: {max_running_nodes: -1}}", "namespaces.team-a.max_running_nodes"),
        ("namespaces: {team-a: {speed: 1}}", "namespaces.team-a.speed"),
        ("namespaces: {'a:b': {}}", "namespaces.a:b"),
        ("default: {max_active_runs: 1.5}", "default.max_active_runs"),
        ("teams: {}", "namespaces and default"),
    ):
        with pytest.raises(ValueError, match=field):
            parse_namespaces(text)
    path = tmp_path / "ns.json"
    path.write_text('{"namespaces": {"team-a": {"weight": 2}}}')  # JSON is YAML too
    assert load_namespaces(str(path)).of("team-a").weight == 2
    with pytest.raises(ConfigError, match="cannot be read"):
        load_namespaces(str(tmp_path / "missing.yaml"))


async def test_queued_items_of_a_cancelled_run_are_dropped(
    redis_target: RedisTarget, make_stack: MakeStack, tmp_path: Path
) -> None:
    s, a, b = await fair_stack(make_stack, redis_target, tmp_path, {})
    try:
        gid = await a.submit(sleeps(50, 0))
        await a.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
        s.add_worker("w0")
        after = await b.submit(sleeps(1, 0))
        assert (await b.wait(after)).state == COMPLETED
        assert not await starts(a, gid)  # its queued items were taken and dropped, not run
        await eventually(lambda: fair_state_is_clean(s), 10)
    finally:
        await a.close()
        await b.close()


def test_the_namespaces_file_is_read_again_when_it_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ns.yaml"
    path.write_text("namespaces: {team-a: {daily_cost_usd: 2}}\n")
    live = NamespacesFile(str(path), load_namespaces(str(path)))
    assert live.current().of("team-a").daily_cost_usd == 2
    path.write_text("namespaces: {team-a: {daily_cost_usd: 25}}\n")
    assert live.current().of("team-a").daily_cost_usd == 25
    # A broken change keeps the last good shares, and says why.
    path.write_text("namespaces: {team-a: {daily_cost_usd: -100}}\n")  # sizes differ: a change
    assert live.current().of("team-a").daily_cost_usd == 25
    assert "namespaces.team-a.daily_cost_usd" in caplog.text
    path.unlink()  # gone (a ConfigMap being swapped): the last good ones too
    assert live.current().of("team-a").daily_cost_usd == 25
    path.write_text("default: {daily_cost_usd: 7}\n")
    assert live.current().of("team-a").daily_cost_usd == 7
