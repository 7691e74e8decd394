"""LLM faults from the fake Anthropic server, through the real SDK and the real stack: a
429 storm (retry-after honoured), 529 overload, no answer at all (timeout), a stream that
stalls, a malformed SSE frame and a connection reset mid-stream. Each is retried within the
node's policy (exactly max_attempts calls), then fails the graph with a clear, classified
error; afterwards the worker still runs as many nodes at once as it has slots (no slot is
leaked by a failed, timed-out or aborted attempt).

(tests/llm/test_llm.py covers one 429 then success, 529/500 then success, a stalled stream then
success, and 4xx failing fast.)"""

from __future__ import annotations

from typing import Any

import pytest

from dago.v1 import execution_pb2, graph_pb2
from fake_anthropic import Broken, Error, FakeAnthropic, Reply, Stall, Text
from harness import (
    InProcessStack,
    MakeStack,
    fast_retry,
    node_status,
    of_kind,
    request,
)

SLOTS = 4
ATTEMPTS = 3
FAILED = execution_pb2.GRAPH_STATE_FAILED
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
EC = graph_pb2


def llm(node_id: str, timeout: str) -> dict[str, Any]:
    """An llm node with a fast retry policy of ATTEMPTS attempts of at most ``timeout`` each."""
    return {
        "id": node_id,
        "llm": {"prompt": "hi"},
        "retry": fast_retry(ATTEMPTS),
        "attemptTimeout": timeout,
    }


@pytest.fixture
async def stack(fake: FakeAnthropic, make_stack: MakeStack) -> InProcessStack:
    s = await make_stack(
        anthropic_api_key="sk-ant-faults",
        anthropic_base_url=fake.url,
        llm_provider="anthropic",
        worker_slots=SLOTS,
    )
    # Warm up: the worker creates its provider (importing the SDK) on first use, which
    # must not count against the short attempt timeouts below.
    _, st = await s.client.run(request([{"id": "w", "llm": {"prompt": "hi"}}]), timeout=30)
    assert st.state == COMPLETED, st
    fake.requests.clear()
    return s


FAULTS: list[tuple[str, Reply, int, str]] = [
    # (case, the reply of every call, error class of the failure, words in its message)
    (
        "429 storm",
        Error(429, "rate_limit_error", "slow down", {"retry-after": "0.3"}),
        EC.ERROR_CLASS_RATE_LIMITED,
        "429 from Anthropic",
    ),
    (
        "529 overloaded",
        Error(529, "overloaded_error", "Overloaded"),
        EC.ERROR_CLASS_TRANSIENT,
        "529",
    ),
    ("no answer", Stall(), EC.ERROR_CLASS_TIMEOUT, "timeout"),
    (
        "stalled stream",
        Text("stalled " * 20, chunks=20, delay=5.0),
        EC.ERROR_CLASS_TIMEOUT,
        "timeout",
    ),
    (
        "malformed SSE frame",
        Broken("malformed"),
        EC.ERROR_CLASS_TRANSIENT,
        "malformed stream event",
    ),
    (
        "connection reset mid-stream",
        Broken("reset"),
        EC.ERROR_CLASS_TRANSIENT,
        "broke off mid-answer",
    ),
]


@pytest.mark.parametrize(
    ("case", "reply", "error_class", "words"), FAULTS, ids=[f[0] for f in FAULTS]
)
async def test_llm_fault_retried_within_policy_then_clear_failure_and_no_slot_leaked(
    stack: InProcessStack,
    fake: FakeAnthropic,
    case: str,
    reply: Reply,
    error_class: int,
    words: str,
) -> None:
    fake.script = [reply] * (ATTEMPTS + 2)  # more than the policy allows
    timeout = "0.5s" if error_class == EC.ERROR_CLASS_TIMEOUT else "10s"
    gid, st = await stack.client.run(request([llm("a", timeout)]), timeout=30)
    assert st.state == FAILED, (case, st)
    a = node_status(st, "a")
    assert a.error.error_class == error_class, (case, a.error)
    assert words in a.error.message, (case, a.error.message)
    assert a.error.message.strip(), case
    assert [x.attempt for x in a.attempts] == list(range(1, ATTEMPTS + 1)), (case, a.attempts)
    tried = [(x.attempt, x.error.error_class, x.error.message) for x in a.attempts]
    assert len(fake.requests) == ATTEMPTS, (case, len(fake.requests), tried)
    assert st.error.error_class == error_class, (case, st.error)
    events = await stack.client.history(gid)
    assert len(of_kind(events, "node_retrying", "a")) == ATTEMPTS - 1, case
    assert of_kind(events, "graph_failed")[0].graph_failed.failed_node_id == "a"
    if reply.__class__ is Error and "retry-after" in reply.headers:  # type: ignore[union-attr]
        gaps = [b.at - a_.at for a_, b in zip(fake.requests, fake.requests[1:], strict=False)]
        assert min(gaps) >= 0.28, (case, gaps)  # retry-after 0.3 s, although the policy says 20 ms

    # No slot leaked: SLOTS slow nodes run at once on the one worker (each streams ~1 s).
    fake.script = []
    fake.default = Text("ok " * 10, chunks=10, delay=0.1)
    nodes = [{"id": f"n{i}", "llm": {"prompt": "hi"}} for i in range(SLOTS)]
    gid, st = await stack.client.run(request(nodes), timeout=30)
    assert st.state == COMPLETED, (case, st)
    events = await stack.client.history(gid)
    last_start = max(e.seq for e in of_kind(events, "node_started"))
    first_done = min(e.seq for e in of_kind(events, "node_completed"))
    assert last_start < first_done, (case, "the nodes did not all run at once: a slot leaked")
