"""Wait nodes and signals (docs/semantics.md, "Waits and signals"), through the real API,
workers and Redis functions: routing on a decision, timeouts, the first decision winning
among concurrent signals, idempotent retries, early and late signals, validation, cancel and
deadlines, loops, restarts, slots, and the ListWaits inbox with its namespaces."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from dago.api.auth import hash_key, new_key
from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    Client,
    InProcessStack,
    MakeStack,
    echo,
    edge,
    error_details,
    eventually,
    node_states,
    node_status,
    of_kind,
    plain,
    request,
    rpc_error,
)
from redisfixture import RedisServer, RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
APPROVED = 'nodes.review.output.decision == "approve"'
REJECTED = 'nodes.review.output.decision == "reject"'


def wait(node_id: str = "review", **spec: Any) -> dict[str, Any]:
    """A wait node (proto JSON names)."""
    return {"id": node_id, "wait": spec}


def review_graph(**spec: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """draft -> review (wait) -> publish on approve, drop on reject."""
    nodes = [
        echo("draft", text="hello {{ inputs.who }}"),
        wait(
            prompt="Publish {{ nodes.draft.output.text }}?",
            display={"draft": "{{ nodes.draft.output }}"},
            **spec,
        ),
        echo(
            "publish",
            by="{{ nodes.review.output.actor }}",
            data="{{ nodes.review.output.payload }}",
        ),
        echo("drop", why="{{ nodes.review.output.comment }}"),
    ]
    edges = [
        edge("draft", "review"),
        edge("review", "publish", APPROVED),
        edge("review", "drop", REJECTED),
    ]
    return request(nodes, edges, inputs={"who": "world"}, name="review")


def signal(
    gid: str, decision: str, node: str = "review", **fields: Any
) -> orchestrator_pb2.SignalGraphRequest:
    req = orchestrator_pb2.SignalGraphRequest(
        graph_id=gid, node_id=node, decision=decision, **fields
    )
    return req


def payload(value: Any) -> struct_pb2.Value:
    v = struct_pb2.Value()
    if isinstance(value, dict):
        v.struct_value.update(value)
    else:
        v.string_value = str(value)
    return v


async def waiting(client: Client, gid: str, node: str = "review", iteration: int = 1) -> None:
    """Until ``node`` waits (in ``iteration``)."""

    async def check() -> bool:
        n = node_status(await client.status(gid), node)
        return n.state == execution_pb2.NODE_STATE_WAITING and n.iteration == iteration

    await eventually(check)


async def inbox(client: Client, page_size: int = 0) -> list[orchestrator_pb2.Wait]:
    """Every wait ListWaits lists, page after page."""
    out: list[orchestrator_pb2.Wait] = []
    token = ""
    while True:
        req = orchestrator_pb2.ListWaitsRequest(page_size=page_size, page_token=token)
        resp = await client.stub.ListWaits(req, timeout=10)
        out.extend(resp.waits)
        token = resp.next_page_token
        if not token:
            return out


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


@pytest.fixture
async def single(redis_single: RedisServer, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_single)


# --- routing, on a single Redis and on the cluster -----------------------------------------


@pytest.mark.parametrize(
    ("decision", "taken", "skipped"),
    [("approve", "publish", "drop"), ("reject", "drop", "publish")],
)
async def test_each_decision_routes_through_the_edges_cel(
    stack: InProcessStack, decision: str, taken: str, skipped: str
) -> None:
    c = stack.client
    gid = await c.submit(review_graph(payloadSchema='{"type": "object"}'))
    await waiting(c, gid)
    (w,) = [w for w in await inbox(c) if w.graph_id == gid]
    assert (w.graph_name, w.node_id, w.iteration, w.prompt) == (
        "review",
        "review",
        1,
        "Publish hello world?",
    )
    assert plain(w.display) == {"draft": {"text": "hello world"}}
    assert list(w.decisions) == ["approve", "reject"] and w.payload_schema == '{"type": "object"}'
    assert w.since.ToMilliseconds() > 0 and not w.HasField("deadline")

    resp = await c.stub.SignalGraph(
        signal(gid, decision, payload=payload({"n": 1}), signal_id="s1", comment="looks fine"),
        timeout=10,
    )
    assert (resp.decision, resp.actor, resp.signal_id, resp.iteration) == (
        decision,
        "anonymous",
        "s1",
        1,
    )
    st = await c.wait(gid)
    assert st.state == COMPLETED
    assert node_states(st)[taken] == "COMPLETED" and node_states(st)[skipped] == "SKIPPED"
    out = plain(node_status(st, "review").output)
    assert (
        out["decision"] == decision and out["payload"] == {"n": 1} and out["actor"] == "anonymous"
    )
    assert out["timed_out"] is False and out["comment"] == "looks fine" and out["at"].endswith("Z")
    events = await c.history(gid)
    (ev,) = of_kind(events, "node_waiting", "review")
    assert ev.node_waiting.prompt == "Publish hello world?" and list(ev.node_waiting.decisions) == [
        "approve",
        "reject",
    ]
    (sig,) = of_kind(events, "signal_received", "review")
    assert (
        sig.signal_received.decision,
        sig.signal_received.actor,
        sig.signal_received.signal_id,
    ) == (decision, "anonymous", "s1")
    assert sig.signal_received.comment == "looks fine" and plain(sig.signal_received.payload) == {
        "n": 1
    }
    # The wait's first execution ended WAITING; the one after the decision completed it.
    req = orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="review")
    attempts = (await c.stub.ListNodeAttempts(req, timeout=10)).attempts
    assert [(a.execution, a.state) for a in attempts] == [
        (1, execution_pb2.NODE_STATE_WAITING),
        (2, execution_pb2.NODE_STATE_COMPLETED),
    ]
    assert [w for w in await inbox(c) if w.graph_id == gid] == []


# --- timeouts --------------------------------------------------------------------------------


async def test_a_timeout_records_the_timeout_decision(single: InProcessStack) -> None:
    c = single.client
    gid = await c.submit(review_graph(timeout="0.3s", timeoutDecision="reject"))
    st = await c.wait(gid)
    assert st.state == COMPLETED and node_states(st)["drop"] == "COMPLETED"
    out = plain(node_status(st, "review").output)
    assert (out["decision"], out["actor"], out["timed_out"]) == ("reject", "timeout", True)
    events = await c.history(gid)
    (ev,) = of_kind(events, "node_waiting", "review")
    assert ev.node_waiting.deadline.ToMilliseconds() > ev.time.ToMilliseconds()
    (sig,) = of_kind(events, "signal_received", "review")
    assert sig.signal_received.timed_out and sig.signal_received.actor == "timeout"
    assert sig.signal_received.signal_id == ""  # no signal can pass for it


# --- the first decision wins ------------------------------------------------------------------


async def test_of_20_concurrent_conflicting_signals_exactly_one_wins(stack: InProcessStack) -> None:
    c = stack.client
    # A second wait after the first keeps the run going, so every loser finds it running.
    nodes = [wait(decisions=["a", "b", "c", "d"]), wait("hold")]
    gid = await c.submit(request(nodes, [edge("review", "hold")]))
    await waiting(c, gid)
    clients = [Client(f"127.0.0.1:{stack.port}") for _ in range(20)]
    try:
        calls = [
            cl.stub.SignalGraph(signal(gid, "abcd"[i % 4], signal_id=f"s{i}"), timeout=10)
            for i, cl in enumerate(clients)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await asyncio.gather(*(cl.close() for cl in clients))
    wins = [r for r in results if isinstance(r, orchestrator_pb2.SignalGraphResponse)]
    losses = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(wins) == 1 and len(losses) == 19, results
    winner = wins[0]
    for err in losses:
        assert err.code() == grpc.StatusCode.ABORTED, err
        (info,) = [d for d in error_details(err) if d.DESCRIPTOR.name == "ErrorInfo"]
        assert info.reason == "SIGNAL_CONFLICT"
        assert (
            info.metadata["decision"] == winner.decision
            and info.metadata["signal_id"] == winner.signal_id
        )
    await waiting(c, gid, "hold")
    events = await c.history(gid)
    assert len(of_kind(events, "signal_received", "review")) == 1
    assert plain(node_status(await c.status(gid), "review").output)["decision"] == winner.decision


async def test_a_repeated_signal_id_returns_the_same_response(single: InProcessStack) -> None:
    c = single.client
    gid = await c.submit(request([wait(), wait("hold")], [edge("review", "hold")]))
    await waiting(c, gid)
    first = await c.stub.SignalGraph(signal(gid, "approve", signal_id="retry-me"), timeout=10)
    await waiting(c, gid, "hold")  # the decision was applied since
    again = await c.stub.SignalGraph(signal(gid, "approve", signal_id="retry-me"), timeout=10)
    assert again == first
    # A retry that changed its mind is still the same signal: the first answer stands.
    assert (
        await c.stub.SignalGraph(signal(gid, "reject", signal_id="retry-me"), timeout=10) == first
    )
    other = await rpc_error(
        c.stub.SignalGraph(signal(gid, "reject", signal_id="other"), timeout=10)
    )
    assert other.code() == grpc.StatusCode.ABORTED and "'approve'" in (other.details() or "")
    assert len(of_kind(await c.history(gid), "signal_received")) == 1
    # Without a signal_id the server makes one (each call is then a signal of its own).
    assert first.signal_id == "retry-me"


# --- early and late signals, validation --------------------------------------------------------


async def test_early_and_late_signals_are_refused_naming_the_state(single: InProcessStack) -> None:
    c = single.client
    # review comes after another wait: it is PENDING while `first` waits.
    gid = await c.submit(request([wait("first"), wait()], [edge("first", "review")]))
    await waiting(c, gid, "first")
    early = await rpc_error(c.stub.SignalGraph(signal(gid, "approve"), timeout=10))
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "PENDING" in (early.details() or "")
    (pf,) = [d for d in error_details(early) if d.DESCRIPTOR.name == "PreconditionFailure"]
    assert pf.violations[0].type == "NODE_NOT_WAITING"

    gid, st = await c.run(review_graph(timeout="0.05s", timeoutDecision="approve"))
    assert st.state == COMPLETED
    late = await rpc_error(c.stub.SignalGraph(signal(gid, "reject"), timeout=10))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION and "COMPLETED" in (
        late.details() or ""
    )


async def test_a_decision_or_payload_the_node_refuses_is_invalid_argument(
    single: InProcessStack,
) -> None:
    c = single.client
    schema = (
        '{"type": "object", "required": ["title"], "properties": {"title": {"type": "string"}}}'
    )
    review = wait(decisions=["approve", "edit"], payloadSchema=schema)
    gid = await c.submit(request([review, wait("hold")], [edge("review", "hold")]))
    await waiting(c, gid)

    async def violation(req: orchestrator_pb2.SignalGraphRequest) -> tuple[str, str]:
        err = await rpc_error(c.stub.SignalGraph(req, timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        (br,) = [d for d in error_details(err) if d.DESCRIPTOR.name == "BadRequest"]
        return br.field_violations[0].field, br.field_violations[0].description

    field, why = await violation(signal(gid, "reject"))
    assert field == "decision" and "approve, edit" in why
    field, why = await violation(signal(gid, "edit", payload=payload({"title": 3})))
    assert field == "payload" and "title" in why
    # The values a violation quotes are JSON, as the client sent them (not Python reprs).
    field, why = await violation(signal(gid, "edit"))  # no payload: null is not an object
    assert field == "payload" and 'null is not of type "object"' in why, why
    field, why = await violation(signal(gid, "edit", payload=payload({"text": ""})))
    assert '"title" is a required property' in why, why
    err = await rpc_error(c.stub.SignalGraph(signal(gid, "approve", node="nope"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    nan = struct_pb2.Value()
    nan.struct_value.update({"title": "t", "n": float("nan")})
    field, why = await violation(signal(gid, "edit", payload=nan))
    assert field == "payload.n" and "finite" in why, why
    long = await rpc_error(c.stub.SignalGraph(signal(gid, "edit", comment="x" * 5000), timeout=10))
    assert long.code() == grpc.StatusCode.INVALID_ARGUMENT and "comment" in (long.details() or "")
    ok = await c.stub.SignalGraph(signal(gid, "edit", payload=payload({"title": "t"})), timeout=10)
    assert ok.decision == "edit"
    # Once decided, a late signal hears that it lost, whatever it sent: ABORTED naming the
    # winner, not INVALID_ARGUMENT for its payload or decision; FAILED_PRECONDITION once the
    # run ended.
    for late in (signal(gid, "edit", payload=payload({"text": ""})), signal(gid, "nope")):
        err = await rpc_error(c.stub.SignalGraph(late, timeout=10))
        assert err.code() == grpc.StatusCode.ABORTED and "'edit'" in (err.details() or ""), err
    await c.stub.SignalGraph(signal(gid, "approve", node="hold"), timeout=10)
    assert (await c.wait(gid)).state == COMPLETED
    err = await rpc_error(c.stub.SignalGraph(signal(gid, "edit", payload=payload(3)), timeout=10))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "'edit'" in (err.details() or ""), err


BAD_WAITS = [
    ({"payloadSchema": "{not json"}, "wait.payload_schema", "is not JSON"),
    ({"payloadSchema": '{"type": 12}'}, "wait.payload_schema", "not a valid JSON Schema"),
    ({"timeout": "5s"}, "wait.timeout_decision", "required with a timeout"),
    (
        {"timeout": "5s", "timeoutDecision": "maybe"},
        "wait.timeout_decision",
        "not one of the decisions",
    ),
    ({"timeoutDecision": "approve"}, "wait.timeout_decision", "only used with a timeout"),
    ({"decisions": ["ok", "ok"]}, "wait.decisions[1]", "duplicate"),
    ({"decisions": ["no way"]}, "wait.decisions[0]", "letters"),
    ({"prompt": "{{ nodes.nope.output }}"}, "wait.prompt", "nope"),
]


async def test_a_bad_wait_is_refused_at_submit_naming_the_field(single: InProcessStack) -> None:
    for spec, field, words in BAD_WAITS:
        err = await rpc_error(single.client.stub.SubmitGraph(request([wait(**spec)]), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        (br,) = [d for d in error_details(err) if d.DESCRIPTOR.name == "BadRequest"]
        found = {v.field: v.description for v in br.field_violations}
        assert any(f.endswith(field) and words in d for f, d in found.items()), (spec, found)


# --- cancel, deadline, loops ------------------------------------------------------------------


async def test_cancel_and_the_graph_deadline_end_a_wait(single: InProcessStack) -> None:
    c = single.client
    gid = await c.submit(review_graph(timeout="600s", timeoutDecision="reject"))
    await waiting(c, gid)
    await c.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
    st = await c.wait(gid)
    assert (
        st.state == execution_pb2.GRAPH_STATE_CANCELLED and node_states(st)["review"] == "CANCELLED"
    )
    timers = await single.store.redis.zrange(
        single.store.keys.shard(int(gid.split("-")[0])).timers, 0, -1
    )
    assert not [t for t in timers if gid.encode() in t and t.startswith(b"w|")]

    gid = await c.submit(request([wait()], limits={"deadline": "0.3s"}))
    st = await c.wait(gid)
    assert st.state == execution_pb2.GRAPH_STATE_FAILED and node_states(st)["review"] == "CANCELLED"
    assert await inbox(c) == []


async def test_a_wait_in_a_loop_waits_again_in_each_iteration(single: InProcessStack) -> None:
    c = single.client
    nodes = [
        {**echo("draft", n="{{ graph.id }}"), "maxIterations": 3},
        wait(decisions=["approve", "revise"]),
        echo("publish"),
    ]
    edges = [
        edge("draft", "review"),
        edge("review", "draft", 'nodes.review.output.decision == "revise"'),
        edge("review", "publish", APPROVED),
    ]
    gid = await c.submit(request(nodes, edges, entryNodes=["draft"]))
    await waiting(c, gid, iteration=1)
    await c.stub.SignalGraph(signal(gid, "revise", signal_id="r1"), timeout=10)
    await waiting(c, gid, iteration=2)
    (w,) = await inbox(c)
    assert w.iteration == 2
    # Iteration 1 is decided: its signal again is a replay, a new one for it a conflict.
    replay = await c.stub.SignalGraph(signal(gid, "revise", signal_id="r1"), timeout=10)
    assert replay.iteration == 1
    resp = await c.stub.SignalGraph(signal(gid, "approve", iteration=2), timeout=10)
    assert resp.iteration == 2
    st = await c.wait(gid)
    assert st.state == COMPLETED and node_states(st)["publish"] == "COMPLETED"
    assert len(of_kind(await c.history(gid), "node_waiting", "review")) == 2


# --- waiting costs nothing; restarts ------------------------------------------------------------


async def test_list_waits_of_one_run(single: InProcessStack) -> None:
    c = single.client
    # Two waits at once in one run (parallel branches), and another run waiting too.
    gid = await c.submit(
        request(
            [
                echo("start", text="hello world"),
                wait(
                    prompt="Publish {{ nodes.start.output.text }}?",
                    display={"draft": "{{ nodes.start.output }}"},
                ),
                wait("hold"),
            ],
            [edge("start", "review"), edge("start", "hold")],
        )
    )
    other = await c.submit(review_graph())
    await waiting(c, gid)
    await waiting(c, gid, "hold")
    await waiting(c, other)

    async def listed(page_size: int = 0) -> list[orchestrator_pb2.Wait]:
        out: list[orchestrator_pb2.Wait] = []
        token = ""
        while True:
            req = orchestrator_pb2.ListWaitsRequest(
                graph_id=gid, page_size=page_size, page_token=token
            )
            resp = await c.stub.ListWaits(req, timeout=10)
            out.extend(resp.waits)
            token = resp.next_page_token
            if not token:
                return out

    one = await listed()
    assert {w.node_id for w in one} == {"review", "hold"} and {w.graph_id for w in one} == {gid}
    assert [w.since.ToMilliseconds() for w in one] == sorted(w.since.ToMilliseconds() for w in one)
    assert [w.node_id for w in await listed(page_size=1)] == [w.node_id for w in one]

    # GetGraphStatus shows the wait on the waiting node (the display in the FULL view only).
    def status_req(view: Any) -> orchestrator_pb2.GetGraphStatusRequest:
        return orchestrator_pb2.GetGraphStatusRequest(graph_id=gid, view=view)

    full = (await c.stub.GetGraphStatus(status_req(0), timeout=10)).status
    nw = node_status(full, "review").wait
    assert nw.prompt == "Publish hello world?" and list(nw.decisions) == ["approve", "reject"]
    assert "draft" in plain(nw.display), nw
    (listed_review,) = [w for w in one if w.node_id == "review"]
    assert nw.since == listed_review.since
    assert not node_status(full, "start").HasField("wait")
    basic = orchestrator_pb2.GRAPH_STATUS_VIEW_BASIC
    bw = node_status((await c.stub.GetGraphStatus(status_req(basic), timeout=10)).status, "review")
    assert bw.wait.prompt == nw.prompt and not bw.wait.HasField("display")
    await c.stub.SignalGraph(signal(gid, "approve", node="hold"), timeout=10)
    assert [w.node_id for w in await listed()] == ["review"]
    assert not node_status(await c.status(gid), "hold").HasField("wait")
    missing = orchestrator_pb2.ListWaitsRequest(graph_id="0-01ARZ3NDEKTSV4RRFFQ69G5FAV")
    err = await rpc_error(c.stub.ListWaits(missing, timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND, err


async def test_waiting_nodes_hold_no_slot(redis_single: RedisServer, make_stack: MakeStack) -> None:
    s = await make_stack(redis_single, worker_slots=2)
    c = s.client
    gids = [await c.submit(request([wait()])) for _ in range(10)]
    for gid in gids:
        await waiting(c, gid)
    _, st = await c.run(request([echo("a"), echo("b")], [edge("a", "b")]), timeout=10)
    assert st.state == COMPLETED
    pending = await s.store.redis.xpending(
        s.store.keys.shard(int(gids[0].split("-")[0])).work, "workers"
    )
    assert pending["pending"] == 0
    assert len(await inbox(c, page_size=3)) == 10


async def test_waits_survive_a_restart_of_every_process(
    redis_single: RedisServer, make_stack: MakeStack
) -> None:
    first = await make_stack(redis_single)
    gids = await asyncio.gather(*(first.client.submit(review_graph()) for _ in range(100)))
    await asyncio.gather(*(waiting(first.client, gid) for gid in gids))
    await first.stop()
    second = await make_stack(redis_single)
    c = second.client
    assert {w.graph_id for w in await inbox(c)} == set(gids)
    await asyncio.gather(
        *(
            c.stub.SignalGraph(signal(gid, "approve" if i % 2 else "reject"), timeout=10)
            for i, gid in enumerate(gids)
        )
    )
    done = await asyncio.gather(*(c.wait(gid) for gid in gids))
    for i, st in enumerate(done):
        assert node_states(st)["publish" if i % 2 else "drop"] == "COMPLETED", st


# --- the inbox: paging, namespaces, actors -----------------------------------------------------

KEY_A, KEY_B = new_key(), new_key()


async def test_list_waits_pages_oldest_first_within_the_callers_namespace(
    make_stack: MakeStack,
) -> None:
    keys = f"{hash_key(KEY_A)}:team-a:alice,{hash_key(KEY_B)}:team-b"
    s = await make_stack(auth="keys", api_keys=keys)
    a, b = Client(f"127.0.0.1:{s.port}", KEY_A), Client(f"127.0.0.1:{s.port}", KEY_B)
    try:
        mine = []
        for _ in range(7):
            gid = await a.submit(review_graph())
            await waiting(a, gid)
            mine.append(gid)
        theirs = await b.submit(review_graph())
        await waiting(b, theirs)
        listed = await inbox(a, page_size=2)
        assert [w.graph_id for w in listed] == mine  # oldest first, every page
        assert [w.graph_id for w in await inbox(b)] == [theirs]
        # Another namespace's graph is not there to signal, nor to list the waits of.
        err = await rpc_error(b.stub.SignalGraph(signal(mine[0], "approve"), timeout=10))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        one = orchestrator_pb2.ListWaitsRequest(graph_id=mine[0])
        err = await rpc_error(b.stub.ListWaits(one, timeout=10))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert [w.graph_id for w in (await a.stub.ListWaits(one, timeout=10)).waits] == mine[:1]
        # The actor is the key's name (its hash's first digits when it has none).
        assert (await a.stub.SignalGraph(signal(mine[0], "approve"), timeout=10)).actor == "alice"
        resp = await b.stub.SignalGraph(signal(theirs, "approve"), timeout=10)
        assert resp.actor == f"key-{hash_key(KEY_B)[:8]}"
        bad = await rpc_error(
            a.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(page_token="x"), timeout=10)
        )
        assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await a.close()
        await b.close()


async def test_many_waiting_runs_leave_the_workers_free(
    redis_single: RedisServer, make_stack: MakeStack
) -> None:
    s = await make_stack(redis_single, worker_slots=4)
    c = s.client
    n = 1000
    gids = await asyncio.gather(*(c.submit(request([wait()])) for _ in range(n)))

    async def all_wait() -> bool:
        return len(await inbox(c, page_size=1000)) == n

    await eventually(all_wait, 60, 0.1)
    # A batch of 1,000 echo graphs runs on the 4 slots while 1,000 runs wait (their rate,
    # with 10,000 waiting, is bench/waits.py's).
    # Submitted together, then awaited one by one (1,000 concurrent pollers would load the
    # API more than the runs do).
    chain = request([echo("a"), echo("b"), echo("c")], [edge("a", "b"), edge("b", "c")])
    echoes = await asyncio.gather(*(c.submit(chain) for _ in range(1000)))
    for gid in echoes:
        assert (await c.wait(gid, timeout=120)).state == COMPLETED, gid
    for shard in s.store.keys.all_shards():  # nothing pending: no item held for a waiting node
        assert (await s.store.redis.xpending(shard.work, "workers"))["pending"] == 0
    listed = await inbox(c, page_size=97)
    assert sorted(w.graph_id for w in listed) == sorted(gids)
    since = [w.since.ToMilliseconds() for w in listed]
    assert since == sorted(since)
