"""Run history (issue 23): finished runs are archived to a real PostgreSQL exactly once and
only then expire from Redis; the single-run reads answer from PostgreSQL, as Redis did, for
runs Redis no longer holds; an outage of PostgreSQL delays expiry and loses nothing."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest

from dago.api.auth import hash_key, new_key
from dago.engine.ids import parse_shard
from dago.history.migrate import migrate_url
from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    Client,
    InProcessStack,
    MakeStack,
    echo,
    edge,
    eventually,
    request,
    rpc_error,
    tool,
    watch_raw,
)
from pgfixture import PrivatePostgres
from redisfixture import RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
BASIC = orchestrator_pb2.GRAPH_STATUS_VIEW_BASIC


def run_request(**graph: Any) -> orchestrator_pb2.SubmitGraphRequest:
    """A run with a retried node (two attempts), an LLM node (usage and a model), and a
    graph output mapping, so every column and read has something to carry."""
    flaky = tool(
        "f",
        "flaky",
        inputs={"fail_attempts": 1, "value": "{{ inputs.q }}"},
        retry={"max_attempts": 3, "initial_backoff": "0.02s"},
    )
    llm = {"id": "think", "llm": {"prompt": "say {{ nodes.f.output.value }}"}}
    return request(
        [echo("a", q="{{ inputs.q }}"), flaky, llm],
        [edge("a", "f"), edge("f", "think")],
        inputs={"q": "hello"},
        name="archived-run",
        metadata={"team": "blue"},
        output={"answer": "nodes.f.output.value"},
        **graph,
    )


def shard_of(stack: InProcessStack, gid: str) -> int:
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    return shard


async def rows(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute(query.encode(), args)
        return await cur.fetchall()


async def archived(url: str, gid: str) -> bool:
    try:
        return bool(await rows(url, "SELECT 1 FROM dago_runs WHERE graph_id = %s", gid))
    except psycopg.errors.UndefinedTable:  # the archiver has not migrated the schema yet
        return False


async def expired(stack: InProcessStack, gid: str) -> bool:
    gk = stack.store.keys.shard(shard_of(stack, gid)).graph(gid)
    return not await stack.store.redis.exists(*gk.all())


async def reads(stack: InProcessStack, gid: str) -> dict[str, Any]:
    """Every single-run read of ``gid``, as messages."""
    stub = stack.client.stub
    out: dict[str, Any] = {
        "graph": await stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid)),
        "status": await stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=gid)),
        "basic": await stub.GetGraphStatus(
            orchestrator_pb2.GetGraphStatusRequest(graph_id=gid, view=BASIC)
        ),
        "result": await stub.GetGraphResult(orchestrator_pb2.GetGraphResultRequest(graph_id=gid)),
        "history": await stack.client.history(gid),
        "page": await stub.ListGraphEvents(
            orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, after_seq=2, page_size=3)
        ),
        "watch": await watch_raw(stack.client, gid),
        "watch_after": await watch_raw(stack.client, gid, after_seq=4),
        "attempts": await stub.ListNodeAttempts(
            orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="f", page_size=1)
        ),
    }
    batch = orchestrator_pb2.WatchGraphRequest(graph_id=gid, batch=True)
    out["batch"] = [e for m in [m async for m in stub.WatchGraph(batch)] for e in m.events]
    return out


async def test_a_run_reads_the_same_from_postgres_after_redis_expired_it(
    postgres_url: str, make_stack: MakeStack
) -> None:
    stack = await make_stack(postgres_url=postgres_url, migrate_at_start=True, retention_s=3)
    gid, st = await stack.client.run(run_request())
    assert st.state == COMPLETED
    before = await reads(stack, gid)  # from Redis: it expires 3 s after it is archived
    await eventually(lambda: archived(postgres_url, gid))
    assert [e.seq for e in before["history"]] == list(range(1, len(before["history"]) + 1))
    assert len(before["status"].status.nodes[1].attempts) == 2
    assert before["result"].output["answer"] == "hello"
    await eventually(lambda: expired(stack, gid), timeout=15, interval=0.1)

    after = await reads(stack, gid)
    assert after == before
    assert not after["basic"].status.nodes[0].HasField("output")
    assert after["status"].status.nodes[0].HasField("output")
    assert after["page"].next_page_token and [e.seq for e in after["page"].events] == [3, 4, 5]
    assert after["attempts"].next_page_token and len(after["attempts"].attempts) == 1
    assert after["watch"][-1].WhichOneof("payload") == "graph_completed"
    assert after["batch"] == after["watch"]

    # Not found stays not found, and the archive has no run of a made-up id either.
    missing = f"{shard_of(stack, gid)}-01J00000000000000000000000"
    for call in (
        stack.client.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=missing)),
        stack.client.stub.GetGraphResult(orchestrator_pb2.GetGraphResultRequest(graph_id=missing)),
        watch_raw(stack.client, missing),
    ):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_every_finished_run_is_archived_once_with_its_events_and_usage(
    postgres_url: str, make_stack: MakeStack, redis_target: RedisTarget
) -> None:
    # On a single Redis and on a cluster: the archive queue lives in the shard's slot.
    stack = await make_stack(redis_target, postgres_url=postgres_url, migrate_at_start=True)
    ok, _ = await stack.client.run(run_request())
    failed, st = await stack.client.run(request([tool("x", "fail")], name="broken"))
    assert st.state == FAILED
    for gid in (ok, failed):
        await eventually(lambda g=gid: archived(postgres_url, g))  # type: ignore[misc]
    events = await stack.client.history(ok)
    status = await stack.client.status(ok)

    runs = await rows(
        postgres_url,
        "SELECT graph_id, namespace, name, state, metadata, event_count, input_tokens, "
        "cost_usd, started_at IS NOT NULL FROM dago_runs ORDER BY name",
    )
    assert runs == [
        (ok, "default", "archived-run", "COMPLETED", {"team": "blue"}, len(events),
         status.usage.input_tokens, status.usage.cost_usd, True),
        (failed, "default", "broken", "FAILED", {}, len(await stack.client.history(failed)),
         0, 0.0, True),
    ]  # fmt: skip
    stored = await rows(
        postgres_url,
        "SELECT seq, kind, node_id FROM dago_run_events WHERE graph_id = %s ORDER BY seq",
        ok,
    )
    assert stored == [(e.seq, (e.WhichOneof("payload") or "").upper(), e.node_id) for e in events]
    usage = await rows(
        postgres_url,
        "SELECT node_id, model, input_tokens, output_tokens FROM dago_run_usage "
        "WHERE graph_id = %s ORDER BY node_id",
        ok,
    )
    by_node = {n.node_id: n.usage for n in status.nodes}
    assert usage == [
        (n, "offline" if n == "think" else "", by_node[n].input_tokens, by_node[n].output_tokens)
        for n in ("a", "f", "think")
    ]
    assert by_node["think"].output_tokens > 0

    # Once archived, each run left the queue and expires after its retention.
    for gid in (ok, failed):
        sk = stack.store.keys.shard(shard_of(stack, gid))
        assert await stack.store.redis.zscore(sk.archive, gid) is None
        assert 0 < await stack.store.redis.ttl(sk.graph(gid).meta) <= stack.settings.retention_s


async def test_an_archived_run_is_its_namespace_s_alone(
    postgres_url: str, make_stack: MakeStack
) -> None:
    key_a, key_b = new_key(), new_key()
    keys = f"{hash_key(key_a)}:team-a,{hash_key(key_b)}:team-b"
    stack = await make_stack(
        postgres_url=postgres_url, migrate_at_start=True, retention_s=1, auth="keys", api_keys=keys
    )
    a, b = Client(f"127.0.0.1:{stack.port}", key_a), Client(f"127.0.0.1:{stack.port}", key_b)
    try:
        gid, _ = await a.run(request([echo("x", v=1)]))
        await eventually(lambda: archived(postgres_url, gid))
        await eventually(lambda: expired(stack, gid), timeout=15, interval=0.1)
        assert (await a.status(gid)).namespace == "team-a"
        assert len(await a.history(gid)) > 0
        for call in (
            b.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid)),
            b.stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=gid)),
            b.stub.GetGraphResult(orchestrator_pb2.GetGraphResultRequest(graph_id=gid)),
            b.stub.ListGraphEvents(orchestrator_pb2.ListGraphEventsRequest(graph_id=gid)),
            b.stub.ListNodeAttempts(
                orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="x")
            ),
            watch_raw(b, gid),
        ):
            assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    finally:
        await a.close()
        await b.close()


async def test_replicas_racing_archive_each_run_once(
    postgres_url: str, make_stack: MakeStack
) -> None:
    await migrate_url(postgres_url)
    stack = await make_stack(postgres_url=postgres_url)
    replica = await make_stack(postgres_url=postgres_url, workers=0)  # a second API
    ids = [await stack.client.submit(request([echo("a", n=n)])) for n in range(20)]

    async def all_archived() -> bool:
        found = await rows(
            postgres_url, "SELECT count(*) FROM dago_runs WHERE graph_id = ANY(%s)", ids
        )
        return bool(found[0][0] == len(ids)) and await stack.store.archive_backlog() == 0

    await eventually(all_archived, timeout=30, interval=0.1)
    written = _sample(stack, "dago_archived_runs_total") + _sample(
        replica, "dago_archived_runs_total"
    )
    assert written == len(ids)

    # A run queued again after it was written (the archiver stopped between its commit and
    # `archived`): written again, nothing changes, and it leaves the queue.
    sk = stack.store.keys.shard(shard_of(stack, ids[0]))
    await stack.store.redis.zadd(sk.archive, {ids[0]: 1})
    await eventually(lambda: _left_queue(stack, ids[0]))
    counts = await rows(
        postgres_url,
        "SELECT r.graph_id, r.event_count, count(e.seq) FROM dago_runs r "
        "JOIN dago_run_events e USING (graph_id) GROUP BY 1, 2",
    )
    assert len(counts) == len(ids)
    assert all(events == count for _, events, count in counts)
    again = _sample(stack, "dago_archived_runs_total") + _sample(
        replica, "dago_archived_runs_total"
    )
    assert again == len(ids)


async def _left_queue(stack: InProcessStack, gid: str) -> bool:
    sk = stack.store.keys.shard(shard_of(stack, gid))
    return await stack.store.redis.zscore(sk.archive, gid) is None


@pytest.mark.slow  # ~11 s: a PostgreSQL server stopped and started again
async def test_an_outage_of_postgres_delays_expiry_and_loses_no_run(
    private_postgres: PrivatePostgres, make_stack: MakeStack
) -> None:
    url = private_postgres.url
    stack = await make_stack(postgres_url=url, migrate_at_start=True, retention_s=2)
    first, _ = await stack.client.run(request([echo("a", n=0)]))
    await eventually(lambda: archived(url, first))

    private_postgres.stop()
    ids = [(await stack.client.run(request([echo("a", n=n)])))[0] for n in range(1, 6)]
    redis = stack.store.redis

    async def errors_counted() -> bool:
        return _sample(stack, "dago_archive_errors_total") >= 2

    await eventually(errors_counted, timeout=30, interval=0.1)
    for gid in ids:  # still in Redis, in full, without expiry, queued
        sk = stack.store.keys.shard(shard_of(stack, gid))
        assert await redis.ttl(sk.graph(gid).meta) == -1
        assert await redis.ttl(sk.graph(gid).events) == -1
        assert await redis.zscore(sk.archive, gid) is not None
        assert (await stack.client.status(gid)).state == COMPLETED
    assert await stack.store.archive_backlog() == len(ids)
    # Archived before the outage, it expires from Redis; its reads then need PostgreSQL.
    await eventually(lambda: expired(stack, first), timeout=15, interval=0.1)
    unavailable = await rpc_error(
        stack.client.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=first))
    )
    assert unavailable.code() == grpc.StatusCode.UNAVAILABLE

    private_postgres.start()

    async def all_archived() -> bool:
        found = await rows(url, "SELECT count(*) FROM dago_runs WHERE graph_id = ANY(%s)", ids)
        return bool(found[0][0] == len(ids))

    await eventually(all_archived, timeout=60, interval=0.1)
    for gid in ids:
        await eventually(lambda g=gid: expired(stack, g), timeout=15, interval=0.1)  # type: ignore[misc]
        events = await stack.client.history(gid)
        assert events[-1].WhichOneof("payload") == "graph_completed"
        assert (await stack.client.status(gid)).state == COMPLETED
    assert _sample(stack, "dago_archived_runs_total") == len(ids) + 1


def _sample(stack: InProcessStack, name: str) -> float:
    return float(stack.api.registry.get_sample_value(name) or 0.0)


async def test_postgres_down_at_start_keeps_the_api_serving_and_runs_waiting(
    private_postgres: PrivatePostgres, make_stack: MakeStack
) -> None:
    url = private_postgres.url
    private_postgres.stop()
    # The schema is applied by the archiver once PostgreSQL answers (DAGO_MIGRATE_AT_START).
    stack = await make_stack(postgres_url=url, migrate_at_start=True)
    gid, st = await stack.client.run(request([echo("a", n=1)]))
    assert st.state == COMPLETED
    await eventually(lambda: _errors_counted(stack), timeout=30, interval=0.1)
    assert await stack.store.archive_backlog() == 1
    private_postgres.start()
    await eventually(lambda: archived(url, gid), timeout=60, interval=0.1)
    await eventually(lambda: _left_queue(stack, gid))
    assert await stack.store.archive_backlog() == 0


async def _errors_counted(stack: InProcessStack) -> bool:
    return _sample(stack, "dago_archive_errors_total") >= 1


POISON = """
CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.name = 'poison' THEN RAISE EXCEPTION 'refused for the test'; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_poison BEFORE INSERT ON dago_runs
    FOR EACH ROW EXECUTE FUNCTION refuse_poison();
"""


async def test_a_run_postgres_refuses_is_held_back_and_the_others_go_on(
    postgres_url: str, make_stack: MakeStack
) -> None:
    await migrate_url(postgres_url)
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(POISON.encode())
    stack = await make_stack(postgres_url=postgres_url)
    poison, _ = await stack.client.run(request([echo("a", v=1)], name="poison"))
    # A NUL character (which PostgreSQL's text and jsonb refuse) is stored as U+FFFD.
    nul, _ = await stack.client.run(request([echo("a", v="x\x00y")], name="with\x00nul"))
    await eventually(lambda: archived(postgres_url, nul))
    (name, output), *_ = await rows(
        postgres_url,
        "SELECT name, status_json #>> '{nodes,0,output,v}' FROM dago_runs WHERE graph_id = %s",
        nul,
    )
    assert (name, output) == ("with\ufffdnul", "x\ufffdy")
    sk = stack.store.keys.shard(shard_of(stack, poison))
    assert await stack.store.redis.zscore(sk.archive, poison) is not None
    assert await stack.store.redis.ttl(sk.graph(poison).meta) == -1
    assert _sample(stack, "dago_archive_errors_total") >= 1
    assert not await archived(postgres_url, poison)

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute("DROP TRIGGER refuse_poison ON dago_runs")
    await eventually(lambda: archived(postgres_url, poison), timeout=30, interval=0.1)
    await eventually(lambda: _left_queue(stack, poison))


async def test_reads_of_a_history_without_its_schema_say_to_migrate(
    postgres_url: str, make_stack: MakeStack
) -> None:
    # A new database nobody migrated: a run Redis does not hold is looked up there.
    stack = await make_stack(postgres_url=postgres_url)
    req = orchestrator_pb2.GetGraphStatusRequest(graph_id="0-01JDXXXXXXXXXXXXXXXXXXXXXX")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stack.client.stub.GetGraphStatus(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "dago migrate" in (e.value.details() or "")
