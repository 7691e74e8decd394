"""A worker SIGKILLed in the middle of a streaming LLM call and of a tool call with a side
effect: the attempt is reclaimed after the lease by another worker, the graph completes,
its status and result show the node once, and the tool's effect happens once (it is
de-duplicated by the attempt's idempotency key, which a redelivery keeps)."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest
from google.protobuf import json_format
from relkit import kind, until

from dago.v1 import execution_pb2
from fake_anthropic import FakeAnthropic, Text, ToolUse
from harness import (
    RunningStack,
    echo,
    edge,
    node_status,
    of_kind,
    request,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
ANSWER = "streamed " * 30


@pytest.mark.slow  # ~11 s
async def test_worker_killed_mid_llm_stream(
    redis_single: RedisServer, key_prefix: str, fake: FakeAnthropic
) -> None:
    fake.default = Text(ANSWER, chunks=30, delay=0.08)  # ~2.4 s of streaming
    env = {
        "DAGO_LLM_PROVIDER": "anthropic",
        "DAGO_ANTHROPIC_API_KEY": "sk-ant-reliability",
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
    }
    req = request(
        [
            {"id": "a", "llm": {"prompt": "write"}},
            echo("after", text="{{ nodes.a.output.text }}"),
        ],
        [edge("a", "after")],
    )
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(req)

        async def streaming() -> bool:
            return bool(of_kind(await stack.client.history(gid), "llm_delta", "a"))

        await until(streaming, 30, "llm_delta events of the first delivery")
        events = await stack.client.history(gid)
        victim = of_kind(events, "node_started", "a")[0].node_started.worker_id
        stack.signal(victim, signal.SIGKILL)
        await until(lambda: _set(fake), 5, "the killed worker's HTTP stream closed")

        st = await stack.client.wait(gid, timeout=40)
        assert st.state == COMPLETED, st
        events = await stack.client.history(gid)
        started = of_kind(events, "node_started", "a")
        assert len(started) == 2, [kind(e) for e in events]
        assert started[1].node_started.redelivered
        assert started[1].node_started.worker_id not in ("", victim)
        assert started[0].attempt == started[1].attempt == 1
        assert len(of_kind(events, "node_completed", "a")) == 1
        assert [kind(e) for e in events].count("graph_completed") == 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        # The rescuer streamed the whole answer again; the deltas after its node_started
        # add up to exactly the output (the first delivery's partial deltas come before).
        rescued = [
            json_format.MessageToDict(e)["llmDelta"]["text"]
            for e in of_kind(events, "llm_delta", "a")
            if e.seq > started[1].seq
        ]
        assert "".join(rescued) == ANSWER

        a = node_status(st, "a")
        assert [(x.attempt, x.execution, x.state) for x in a.attempts] == [
            (1, 1, execution_pb2.NODE_STATE_RECLAIMED),
            (1, 2, execution_pb2.NODE_STATE_COMPLETED),
        ]
        assert json_format.MessageToDict(a.output)["text"] == ANSWER
        result = json_format.MessageToDict((await stack.client.result(gid)).output)
        assert result == {"after": {"text": ANSWER}}
        assert len(fake.requests) == 2


async def _set(fake: FakeAnthropic) -> bool:
    return fake.closed.is_set()


async def test_worker_killed_mid_tool_call_effect_happens_once(
    redis_single: RedisServer, key_prefix: str
) -> None:
    where = Path(tempfile.mkdtemp(prefix="dago-effects-"))
    req = request(
        [
            tool("pay", "effect", inputs={"dir": str(where), "seconds": 2.5}),
            echo("after", applied="{{ nodes.pay.output.applied }}"),
        ],
        [edge("pay", "after")],
    )
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(req)

        async def applied() -> bool:
            log = where / "log"
            if not log.exists():
                return False
            key = log.read_text().split()[0]
            return (where / key.replace("/", "_")).exists()

        await until(applied, 30, "the first delivery applied the effect")
        ((key, victim),) = [ln.split() for ln in (where / "log").read_text().splitlines()]
        assert key.startswith(f"{gid}/pay/"), key
        stack.signal(victim, signal.SIGKILL)

        st = await stack.client.wait(gid, timeout=40)
        assert st.state == COMPLETED, st
        calls = [ln.split() for ln in (where / "log").read_text().splitlines()]
        # Two calls (the redelivery re-runs the attempt), one key, one effect.
        assert [c[0] for c in calls] == [key, key], calls
        assert calls[1][1] not in (victim, "")
        assert names(where) == sorted(["log", key.replace("/", "_")])
        pay = node_status(st, "pay")
        assert json_format.MessageToDict(pay.output) == {"key": key, "applied": False}
        assert [(a.attempt, a.execution) for a in pay.attempts] == [(1, 1), (1, 2)]
        events = await stack.client.history(gid)
        assert len(of_kind(events, "node_completed", "pay")) == 1
        assert len(of_kind(events, "node_started", "pay")) == 2


def names(where: Path) -> list[str]:
    """The files in a directory, sorted."""
    return sorted(p.name for p in where.iterdir())


@pytest.mark.slow  # ~14 s
async def test_worker_killed_mid_agent_tool_call_effect_happens_once(
    redis_single: RedisServer, key_prefix: str, fake: FakeAnthropic
) -> None:
    where = Path(tempfile.mkdtemp(prefix="dago-agent-effects-"))
    call = ToolUse({"dir": str(where), "seconds": 2.5}, "effect", id="toolu_1")
    # The killed worker's first turn takes the first reply; the rescuer re-runs the attempt.
    fake.script = [call, call, Text("paid once")]
    env = {
        "DAGO_LLM_PROVIDER": "anthropic",
        "DAGO_ANTHROPIC_API_KEY": "sk-ant-reliability",
        "DAGO_ANTHROPIC_BASE_URL": fake.url,
    }
    node = {"id": "helper", "agent": {"llm": {"prompt": "pay the bill"}, "tools": ["effect"]}}
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(request([node]))

        async def applied() -> bool:
            log = where / "log"
            if not log.exists():
                return False
            key = log.read_text().split()[0]
            return (where / key.replace("/", "_")).exists()

        await until(applied, 30, "the agent's first tool call applied the effect")
        ((key, victim),) = [ln.split() for ln in (where / "log").read_text().splitlines()]
        assert key.startswith(f"{gid}/helper/") and key.endswith("/t1.1"), key
        stack.signal(victim, signal.SIGKILL)

        st = await stack.client.wait(gid, timeout=40)
        assert st.state == COMPLETED, st
        calls = [ln.split() for ln in (where / "log").read_text().splitlines()]
        assert [c[0] for c in calls] == [key, key], calls  # the same key on redelivery
        assert calls[1][1] not in (victim, "")
        assert names(where) == sorted(["log", key.replace("/", "_")])  # one effect
        helper = node_status(st, "helper")
        assert json_format.MessageToDict(helper.output)["text"] == "paid once"
        assert [(a.attempt, a.execution) for a in helper.attempts] == [(1, 1), (1, 2)]
        events = await stack.client.history(gid)
        results = of_kind(events, "tool_result", "helper")
        assert json_format.MessageToDict(results[-1].tool_result.result) == {
            "key": key,
            "applied": False,
        }
        assert len(of_kind(events, "node_completed", "helper")) == 1
        assert len(fake.requests) == 3
