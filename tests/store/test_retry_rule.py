"""The retry rule has one home: a timeout the sweeper finds (a hung worker never reports)
is retried, or not, exactly as a failure a worker reports: by the node's retry_on,
attempts and jittered backoff.

No worker runs: the test takes the work items as a worker would, renews their leases (so
their deadlines are on the shard's timers) and then never reports, like a hung worker.
The API's sweeper finds the deadlines.
"""

from __future__ import annotations

from typing import Any

import pytest

from dago.engine.ids import parse_shard
from dago.v1 import execution_pb2, graph_pb2
from harness import InProcessStack, MakeStack, eventually, request, tool
from redisfixture import RedisTarget

W = "hung-worker"
LEASE = 300


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    s = await make_stack(redis_target, workers=0, lease_ms=LEASE)
    await s.store.ensure_groups()  # a worker would create them
    return s


def timing_out(retry: dict[str, Any]) -> dict[str, Any]:
    # Not an echo: an inline node is delivered unstarted, so it has no deadline to miss.
    node = tool("a", "sleep", inputs={"seconds": 60})
    return {**node, "attempt_timeout": "0.1s", "retry": retry}


async def hang(stack: InProcessStack, gids: list[str]) -> None:
    """Take the first attempt of every graph in ``gids`` and renew its lease once (its
    deadline goes on the timers), then never report."""
    shards = sorted({parse_shard(g, stack.settings.shards) or 0 for g in gids})
    seen = 0
    for shard in shards:
        taken = await stack.store.take([shard], W, 100, LEASE)
        await stack.store.renew(shard, W, [s.item for s in taken.started])
        seen += len(taken.started)
    assert seen == len(gids)


async def events_of(stack: InProcessStack, gid: str, kind: str) -> list[execution_pb2.Event]:
    return [e for e in await stack.client.history(gid) if e.WhichOneof("payload") == kind]


async def test_a_timeout_whose_class_retry_on_excludes_fails_the_node(
    stack: InProcessStack,
) -> None:
    policy = {"max_attempts": 3, "retry_on": ["ERROR_CLASS_TRANSIENT"]}
    gid = await stack.client.submit(request([timing_out(policy)]))
    await hang(stack, [gid])
    st = await stack.client.wait(gid, 10)
    assert st.state == execution_pb2.GRAPH_STATE_FAILED
    (node,) = st.nodes
    assert node.state == execution_pb2.NODE_STATE_FAILED
    assert node.error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT
    assert "did not report" in node.error.message
    (attempt,) = node.attempts
    assert attempt.state == execution_pb2.NODE_STATE_FAILED
    assert not await events_of(stack, gid, "node_retrying")


async def test_a_timeout_whose_class_retry_on_lists_is_retried_with_jittered_backoff(
    stack: InProcessStack,
) -> None:
    policy = {
        "max_attempts": 3,
        "retry_on": ["ERROR_CLASS_TIMEOUT"],
        "initial_backoff": "1s",
        "jitter": 0.5,
    }
    gids = [await stack.client.submit(request([timing_out(policy)])) for _ in range(8)]
    await hang(stack, gids)
    backoffs = []
    for gid in gids:

        async def retrying(gid: str = gid) -> bool:
            return bool(await events_of(stack, gid, "node_retrying"))

        await eventually(retrying, 10)
        (ev,) = await events_of(stack, gid, "node_retrying")
        assert ev.node_retrying.error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT
        assert ev.node_retrying.next_attempt == 2
        backoffs.append(ev.node_retrying.backoff_ms)
        st = await stack.client.status(gid)
        assert st.nodes[0].state == execution_pb2.NODE_STATE_RETRYING
    # Jitter 0.5 around the 1 s initial backoff: within [500, 1500] ms, and not all equal.
    assert all(500 <= b <= 1500 for b in backoffs), backoffs
    assert len(set(backoffs)) > 1, backoffs
