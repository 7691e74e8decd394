"""Model rate limits shared by every worker (docs/limits.md, "Model rate limits"): the
bucket rules of the ``ratelimit`` function on a real Redis, then real API and worker
processes (and Envoy) with the fake Anthropic server at the HTTP boundary: an RPM limit
holds across two worker processes, a 429 with retry-after pauses the model for every
worker, a throttled node holds no slot and consumes no attempt, GetLimits over gRPC and
REST."""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

import pytest

from dago.config import ModelRateLimit, find_rate_limit, parse_rate_limits
from dago.store.functions import RateOp, rate_limit_args
from dago.v1 import execution_pb2, orchestrator_pb2
from fake_anthropic import Error, FakeAnthropic, Text, ToolUse
from fake_anthropic import Usage as FakeUsage
from harness import (
    ROOT,
    InProcessStack,
    MakeStack,
    RunningStack,
    eventually,
    fast_retry,
    node_status,
    of_kind,
    redis_store,
    request,
    running_edge,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

MODEL = "claude-sonnet-4-6"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


def llm(node_id: str, **fields: Any) -> dict[str, Any]:
    """An llm node on MODEL that may not fail even once (max_attempts 1): a throttle that
    consumed its attempt would fail its run."""
    return {
        "id": node_id,
        "llm": {"prompt": f"Say {node_id}.", "model": MODEL},
        "retry": {"maxAttempts": 1},
        **fields,
    }


async def both_workers_alive(c: Any) -> None:
    """Until workers w1 and w2 both sent a heartbeat (ListWorkers lists them)."""

    async def both() -> bool:
        resp = await c.stub.ListWorkers(orchestrator_pb2.ListWorkersRequest(), timeout=5)
        return {"w1", "w2"} <= {w.worker_id for w in resp.workers}

    await eventually(both, 60, 0.05)


def limits(**per_model: dict[str, float]) -> str:
    """DAGO_RATE_LIMITS for MODEL (``anthropic/<MODEL>``)."""
    return json.dumps({f"anthropic/{MODEL}": per_model.get("model", {})})


def worker_of(events: list[execution_pb2.Event]) -> set[str]:
    """The workers that started attempts in these events."""
    return {e.node_started.worker_id for e in of_kind(events, "node_started")}


# --- the bucket (lua/ratelimit.lua) ---------------------------------------------------------


def test_the_documented_limits_parse() -> None:
    """docs/limits.md's example of DAGO_RATE_LIMITS is a valid value, and a bad one is refused
    naming what is wrong."""
    doc = (ROOT / "docs" / "limits.md").read_text()
    example = doc.split("```json\n", 1)[1].split("```", 1)[0]
    limits = parse_rate_limits(example)
    assert limits["anthropic/claude-sonnet-4-6"].requests_per_minute == 50
    assert find_rate_limit(limits, "anthropic", "claude-opus-4-1") == ModelRateLimit()
    assert find_rate_limit(limits, "openai", "gpt-5") is None
    with pytest.raises(ValueError, match="requests_per_minute must be a non-negative number"):
        parse_rate_limits('{"anthropic/x": {"requests_per_minute": -1}}')
    with pytest.raises(ValueError, match="provider/model"):
        parse_rate_limits('{"claude": {}}')


async def test_the_bucket_grants_refuses_settles_and_pauses(redis_single: RedisServer) -> None:
    store = redis_store(redis_single.url, f"trl{secrets.token_hex(3)}")
    limit = ModelRateLimit(requests_per_minute=60, input_tokens_per_minute=6000)

    async def op(o: RateOp, r: int = 0, i: int = 0, pause_ms: int = 0) -> Any:
        args = rate_limit_args(limit, o, r, i, 0, pause_ms)
        return await store.rate_limit("anthropic", MODEL, args)

    try:
        # A bucket holds burst_seconds (1) of a minute's allowance, at least two units: 2
        # requests and 100 input tokens. A first call larger than the bucket passes on the
        # full bucket, leaving it in debt.
        first = await op(RateOp.RESERVE, 1, 500)
        assert first.granted and 1 <= first.requests < 1.1 and first.input_tokens < -399
        # The next waits for the measure that is short: ~410 input tokens at 100/s.
        second = await op(RateOp.RESERVE, 1, 10)
        assert not second.granted and second.reason == "input_tokens_per_minute"
        assert 3900 <= second.wait_ms <= 4200
        # Settling gives back what the first call did not use (450 of 500): room again, for
        # input tokens (the second call, refused, is owed 10 first).
        await op(RateOp.SETTLE, 0, 450)
        assert (await op(RateOp.READ)).input_tokens > 40
        assert (await op(RateOp.RESERVE, 1, 10)).granted
        # A crowd refused at once is told to come back one after another (each behind those
        # refused before it), not all at the next refill.
        crowd = [(await op(RateOp.RESERVE, 1, 0)).wait_ms for _ in range(4)]
        gaps = [b - a for a, b in itertools.pairwise(crowd)]
        assert crowd[0] > 0 and all(900 <= g <= 1100 for g in gaps), crowd
        # A provider's 429 pauses everything, whatever the levels.
        await op(RateOp.PAUSE, pause_ms=2000)
        paused = await op(RateOp.RESERVE, 0, 0)
        assert not paused.granted and paused.reason == "paused" and paused.wait_ms > 1500
        # Reading changes nothing and waits for nothing.
        before = await op(RateOp.READ)
        assert before.granted is False and before.wait_ms == 0
        assert (await op(RateOp.READ)).paused_until_ms == before.paused_until_ms
    finally:
        await store.redis.aclose()


# --- across worker processes ----------------------------------------------------------------


@pytest.mark.slow
async def test_an_rpm_limit_holds_across_two_worker_processes_and_shows_in_get_limits(
    redis_single: RedisServer, fake: FakeAnthropic
) -> None:
    """60 requests per minute, a bucket of one second: six one-call runs on two workers
    with one slot each are called at most one per second (plus the two the full bucket
    holds), each run completing on its first attempt; GetLimits shows the bucket through
    gRPC and, through Envoy, over REST."""
    env = {
        "DAGO_RATE_LIMITS": limits(model={"requests_per_minute": 60}),
        "DAGO_ANTHROPIC_API_KEY": "sk-fake",
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
        "DAGO_LLM_PROVIDER": "anthropic",
        "DAGO_WORKER_SLOTS": "1",
    }
    async with running_edge(redis_single.url, f"trl{secrets.token_hex(3)}", **env) as edge:
        stack = edge.stack
        stack.start("w2", "worker")
        c = stack.client
        await both_workers_alive(c)  # else the first worker may take every run
        runs = 6
        gids = [await c.submit(request([llm(f"n{k}")])) for k in range(runs)]
        for k, gid in enumerate(gids):
            st = await c.wait(gid, timeout=30)
            assert st.state == COMPLETED, st
            assert node_status(st, f"n{k}").attempt == 1
        times = sorted(r.at for r in fake.requests)
        assert len(times) == runs
        # Over any stretch of the calls: at most the bucket (2) plus a call per second of it
        # (0.25 s for the arrival times' jitter).
        for i in range(runs):
            for j in range(i + 1, runs):
                assert j - i + 1 <= 2 + (times[j] - times[i] + 0.25), (i, j, times)
        assert times[-1] - times[0] >= runs - 3
        events = [e for gid in gids for e in await c.history(gid)]
        throttled = of_kind(events, "node_throttled")
        assert len(throttled) >= runs - 3
        t = throttled[0].node_throttled
        assert (t.provider, t.model, t.reason) == ("anthropic", MODEL, "requests_per_minute")
        assert 0 < t.wait_ms <= runs * 1000  # each waits behind those refused before it
        assert worker_of(events) == {"w1", "w2"}  # both took part, one slot each

        resp = await c.stub.GetLimits(orchestrator_pb2.GetLimitsRequest(), timeout=10)
        (m,) = resp.models
        assert (m.provider, m.model, m.requests_per_minute, m.burst_seconds) == (
            "anthropic",
            MODEL,
            60,
            1,
        )
        assert m.requests_available <= 2 and not m.HasField("paused_until")  # the bucket: 2
        rest = await edge.http.get("/api/v1/limits")
        assert rest.status_code == 200, rest.text
        (row,) = rest.json()["models"]
        assert (row["provider"], row["model"]) == ("anthropic", MODEL)
        assert row["requests_per_minute"] == 60


@pytest.mark.slow
async def test_a_429_with_retry_after_pauses_the_model_for_every_worker(
    redis_single: RedisServer, fake: FakeAnthropic
) -> None:
    """The first call gets a 429 with retry-after 2 s: no worker calls the model again until
    it passes. The runs submitted meanwhile are throttled (reason paused) on both workers,
    without a failed attempt; the run that got the 429 retries as a failed attempt."""
    fake.script = [Error(429, "rate_limit_error", "slow down", {"retry-after": "2"})]
    env = {
        "DAGO_RATE_LIMITS": limits(),  # no limit: the model only shares its 429 pauses
        "DAGO_ANTHROPIC_API_KEY": "sk-fake",
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
        "DAGO_LLM_PROVIDER": "anthropic",
        "DAGO_WORKER_SLOTS": "1",
    }
    async with RunningStack(redis_single.url, f"trl{secrets.token_hex(3)}", **env) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        c = stack.client
        await both_workers_alive(c)  # the 429 must reach the other worker, not a late one
        first = await c.submit(request([llm("a", retry=fast_retry(3))]))

        async def paused() -> bool:  # GetLimits shows the pause the 429 set
            resp = await c.stub.GetLimits(orchestrator_pb2.GetLimitsRequest(), timeout=10)
            return resp.models[0].HasField("paused_until")

        await eventually(paused, 60, 0.05)  # a worker's first call waits for its SDK import
        others = [await c.submit(request([llm(f"b{k}")])) for k in range(4)]
        for gid in [first, *others]:
            st = await c.wait(gid, timeout=30)
            assert st.state == COMPLETED, st
        t429 = fake.requests[0].at
        later = [r.at - t429 for r in fake.requests[1:]]
        assert len(later) == 5 and min(later) >= 1.95, later
        assert node_status(await c.status(first), "a").attempt == 2
        events = [e for gid in others for e in await c.history(gid)]
        reasons = {e.node_throttled.reason for e in of_kind(events, "node_throttled")}
        assert reasons == {"paused"}
        for gid in others:
            assert (await c.status(gid)).nodes[0].attempt == 1


# --- a throttled node holds no slot ----------------------------------------------------------


@pytest.fixture
async def one_slot(make_stack: MakeStack, fake: FakeAnthropic) -> InProcessStack:
    return await make_stack(
        worker_slots=1,
        rate_limits=limits(model={"requests_per_minute": 1}),
        anthropic_api_key="sk-fake",
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
    )


@pytest.mark.slow
async def test_a_throttled_node_holds_no_slot_and_no_attempt(
    one_slot: InProcessStack, fake: FakeAnthropic
) -> None:
    """One request per minute (a bucket of two), one worker slot: of three parallel llm nodes
    two are called, the third is throttled for about a minute, QUEUED at its first attempt,
    with no pending work item, while another run's tool node runs on the only slot."""
    c = one_slot.client
    gid = await c.submit(request([llm("a"), llm("b"), llm("c")]))

    async def throttled() -> bool:
        return bool(of_kind(await c.history(gid), "node_throttled"))

    await eventually(throttled, 10)
    (ev,) = of_kind(await c.history(gid), "node_throttled")
    assert ev.node_throttled.reason == "requests_per_minute"
    assert 50_000 < ev.node_throttled.wait_ms <= 60_000
    _, other = await c.run(request([tool("t", "context")]), timeout=10)
    assert other.state == COMPLETED, other
    st = await c.status(gid)
    waiting = node_status(st, ev.node_id)
    assert waiting.state == execution_pb2.NODE_STATE_QUEUED and waiting.attempt == 1
    due = ev.time.ToMilliseconds() + ev.node_throttled.wait_ms
    assert waiting.throttled_until.ToMilliseconds() == due
    assert len(fake.requests) == 2
    store = one_slot.store
    pending = [await store.redis.xpending(sk.work, "workers") for sk in store.keys.all_shards()]
    assert sum(p["pending"] for p in pending) == 0
    resp = await c.stub.GetLimits(orchestrator_pb2.GetLimitsRequest(), timeout=10)
    assert resp.models[0].requests_available < 0.5


@pytest.mark.slow
async def test_an_agent_past_its_first_turn_waits_for_the_limit_in_place(
    make_stack: MakeStack, fake: FakeAnthropic
) -> None:
    """An agent throttled after its first turn waits where it is instead of being queued
    again: its first turn's usage stays on the record and is not bought twice. 6,000 output
    tokens a minute (a bucket of 100) and max_tokens 100: the first turn passes on the full
    bucket, the second finds only what the first gave back and waits for the rest."""
    s = await make_stack(
        rate_limits=limits(model={"output_tokens_per_minute": 6000}),
        anthropic_api_key="sk-fake",
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
    )
    fake.script = [
        ToolUse({"text": "hi"}, "echo", FakeUsage(10, 50), "toolu_1"),
        Text("done", usage=FakeUsage(10, 5)),
    ]
    node = {
        "id": "ag",
        "agent": {
            "llm": {"prompt": "Echo hi.", "model": MODEL, "maxTokens": 100},
            "tools": ["echo"],
        },
        "retry": {"maxAttempts": 1},
    }
    _, st = await s.client.run(request([node]), timeout=20)
    assert st.state == COMPLETED, st
    ag = node_status(st, "ag")
    assert ag.attempt == 1 and ag.usage.output_tokens == 55 and len(fake.requests) == 2
    gap = fake.requests[1].at - fake.requests[0].at
    assert gap >= 0.3  # ~50 of the 100 tokens refilled at 100 a second
    assert not of_kind(await s.client.history(st.graph_id), "node_throttled")
