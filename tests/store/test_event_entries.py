"""The event log's packed layout (schema.Event): several events per stream entry, read back
one by one with gap-free seqs from any cursor, also when a cursor falls inside an entry and
when one call appends more events than one entry holds."""

from __future__ import annotations

import pytest

from dago.store.events import expand
from dago.store.schema import Event
from dago.v1 import orchestrator_pb2
from harness import InProcessStack, MakeStack, echo, edge, eventually, kinds, request, tool
from redisfixture import RedisTarget


def _packed(kind: str, node: str = "") -> bytes:
    return f"{kind}|1700000000000|{node}|{'1' if node else ''}|{'1' if node else ''}|".encode()


@pytest.mark.unit
def test_entries_expand_to_events_with_their_seqs_from_any_cursor() -> None:
    first = [b"1", _packed("graph_submitted"), b"2", _packed("graph_started")]
    second = {b"1": _packed("node_started", "a"), b"2": _packed("node_completed", "a")}
    found = [(b"0-2", first), (b"0-4", second)]  # flat (Redis's reply) and mapped (redis-py)
    events = expand(found)
    assert [seq for seq, _ in events] == [1, 2, 3, 4]
    assert [e[0] for _, e in events] == [
        b"graph_submitted",
        b"graph_started",
        b"node_started",
        b"node_completed",
    ]
    assert events[2][1][2:5] == [b"a", b"1", b"1"]
    # A cursor inside an entry keeps only the events after it.
    assert [seq for seq, _ in expand(found, after=3)] == [4]
    assert expand(found, after=4) == []


@pytest.mark.unit
def test_a_detail_holding_the_separator_is_kept_whole() -> None:
    detail = b'{"text": "a|b||c"}'
    (event,) = [e for _, e in expand([(b"0-1", [b"1", b"llm_delta|5|n|1|1|" + detail])])]
    assert event[5] == detail


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


async def test_one_call_with_more_events_than_an_entry_holds(stack: InProcessStack) -> None:
    # Cancelling while the root runs skips every successor in one call: more events than
    # one entry holds, so they span entries.
    width = Event.PER_ENTRY + 40
    nodes = [tool("root", "sleep", inputs={"seconds": 30})]
    nodes += [echo(f"n{i}", v=i) for i in range(width)]
    req = request(nodes, [edge("root", f"n{i}") for i in range(width)])
    gid = await stack.client.submit(req)

    async def root_started() -> bool:
        return "node_started" in kinds(await stack.client.history(gid))

    await eventually(root_started)
    await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="test"), timeout=10
    )
    await stack.client.wait(gid)
    history = await stack.client.history(gid)
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert kinds(history).count("node_skipped") == width
    assert kinds(history)[-1] == "graph_cancelled"
    # Resuming inside an entry, and right at an entry's end, loses and repeats nothing.
    for after in (1, Event.PER_ENTRY - 3, len(history) - 2):
        assert await stack.client.watch(gid, after_seq=after) == history[after:]
    assert await stack.client.watch(gid) == history
