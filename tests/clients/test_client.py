"""The Python client (clients/python/dago_client) against real stacks: the async and the sync
client, paging over several pages, typed errors with their google.rpc details, the API key
sent as a bearer token, idempotent calls retried while the API restarts, and a watch that
resumes after the API process is killed mid-stream (every event seen once, in order)."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from pathlib import Path

import pytest
from google.rpc import error_details_pb2

from dago.api.auth import hash_key, new_key
from dago.v1 import execution_pb2, orchestrator_pb2
from dago_client import (
    AlreadyExistsError,
    AsyncDagoClient,
    ClientConfig,
    DagoClient,
    DagoError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RunFilters,
    UnauthenticatedError,
    UnavailableError,
    load_request,
    parse_document,
    parse_inputs,
    to_dict,
)
from harness import (
    ROOT,
    InProcessStack,
    MakeStack,
    RunningStack,
    echo,
    edge,
    eventually,
    free_port,
    request,
    stack_settings,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack()


def target(stack: InProcessStack) -> str:
    return f"127.0.0.1:{stack.port}"


def sleeper(seconds: float = 5.0) -> orchestrator_pb2.SubmitGraphRequest:
    """A run that lasts (until cancelled)."""
    return request([tool("nap", "sleep", inputs={"seconds": seconds})])


async def test_submit_watch_status_result_with_the_async_client(stack: InProcessStack) -> None:
    async with AsyncDagoClient(target(stack)) as dago:
        req = load_request(ROOT / "examples" / "diamond.json", {"topic": "clients"})
        sub = await dago.submit(req)
        assert sub.created and sub.graph_id
        events = [ev async for ev in dago.watch(sub.graph_id)]
        seqs = [ev.seq for ev in events]
        assert seqs == list(range(1, len(events) + 1)), seqs
        assert events[-1].WhichOneof("payload") == "graph_completed"
        assert "heartbeat" not in {ev.WhichOneof("payload") for ev in events}
        st = await dago.status(sub.graph_id)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        assert {n.node_id for n in st.nodes} == {"start", "left", "right", "join"}
        res = await dago.result(sub.graph_id)
        assert "clients" in str(res.node_outputs["start"])
        got = await dago.get_graph(sub.graph_id)
        assert got.graph.name == req.graph.name and got.inputs["topic"] == "clients"
        # The generated request_id makes the submission idempotent: resending is the same run.
        again = await dago.submit(req, request_id=st.request_id)
        assert st.request_id.startswith("py-") and again.graph_id == sub.graph_id
        assert not again.created
        # Watching from a cursor replays only what comes after it.
        tail = [ev.seq async for ev in dago.watch(sub.graph_id, after_seq=seqs[-3])]
        assert tail == seqs[-2:]
        history = [ev.seq async for ev in dago.list_events(sub.graph_id, page_size=2)]
        assert history == seqs


async def test_the_sync_client_does_the_same_calls(stack: InProcessStack) -> None:
    def work() -> tuple[str, list[str], int, str]:
        with DagoClient(target(stack)) as dago:
            req = parse_document(
                {"nodes": {"a": {"tool": "echo", "inputs": {"x": "{{ inputs.x }}"}}}}
            )
            sub = dago.submit(req, {"x": 7})
            kinds = [ev.WhichOneof("payload") or "" for ev in dago.watch(sub.graph_id)]
            st = dago.wait(sub.graph_id)
            res = dago.result(sub.graph_id)
            cancelled = dago.submit(sleeper())
            dago.cancel(cancelled.graph_id, "test")
            return sub.graph_id, kinds, int(res.output["a"]["x"]), state_of(dago, st.graph_id)

    _, kinds, x, state = await asyncio.to_thread(work)
    assert kinds[0] == "graph_submitted" and kinds[-1] == "graph_completed"
    assert "node_completed" in kinds
    assert x == 7 and state == "completed"


def state_of(dago: DagoClient, gid: str) -> str:
    return (
        execution_pb2.GraphState.Name(dago.status(gid).state).removeprefix("GRAPH_STATE_").lower()
    )


async def test_to_dict_turns_struct_outputs_into_plain_values(stack: InProcessStack) -> None:
    async with AsyncDagoClient(target(stack)) as dago:
        run = await dago.submit(load_request(ROOT / "examples" / "loop.json"))
        await dago.wait(run.graph_id)
        result = await dago.result(run.graph_id)
        # A Struct stores numbers as doubles: to_dict gives the whole ones back as ints.
        assert to_dict(result.output) == {"done": {"polls": 3}}
        assert type(to_dict(result.output)["done"]["polls"]) is int
        req = parse_document(
            {"nodes": {"e": {"tool": "echo", "inputs": {"xs": [1, 2.5, {"n": None}], "t": True}}}}
        )
        run = await dago.submit(req)
        await dago.wait(run.graph_id)
        status = await dago.status(run.graph_id)
        out = to_dict(status.nodes[0].output)
        assert out == {"xs": [1, 2.5, {"n": None}], "t": True}
        assert [type(x) for x in out["xs"]] == [int, float, dict]
        # Any other message: the proto's field names, as the REST API prints them.
        assert to_dict(status)["graph_id"] == run.graph_id
        assert to_dict(status)["state"] == "GRAPH_STATE_COMPLETED"


async def test_list_pages_through_every_run_and_filters_by_state(stack: InProcessStack) -> None:
    async with AsyncDagoClient(target(stack)) as dago:
        ids = [(await dago.submit(request([echo("a", n=i)]))).graph_id for i in range(7)]
        for gid in ids:
            await dago.wait(gid)
        slow = (await dago.submit(sleeper())).graph_id
        await dago.cancel(slow, "not needed")
        listed = [g.graph_id async for g in dago.list_graphs(page_size=3)]
        assert listed == [slow, *reversed(ids)]  # newest first, over 3 pages
        page = await dago.list_graphs_page(page_size=3)
        assert len(page.graphs) == 3 and page.next_page_token
        done = [g.graph_id async for g in dago.list_graphs("completed", page_size=2)]
        assert done == list(reversed(ids))
        cancelled = [g.graph_id async for g in dago.list_graphs("GRAPH_STATE_CANCELLED")]
        assert cancelled == [slow]
        first = [g.graph_id async for g in dago.list_graphs(page_size=2, limit=5)]
        assert first == listed[:5]
        with pytest.raises(ValueError, match="unknown state"):
            await dago.list_graphs_page("sleepy")


async def test_errors_are_typed_and_carry_the_rpc_details(stack: InProcessStack) -> None:
    async with AsyncDagoClient(target(stack)) as dago:
        bad = request([echo("a")], [edge("a", "b")])
        with pytest.raises(InvalidArgumentError) as invalid:
            await dago.submit(bad)
        fields = [fv.field for fv in invalid.value.field_violations]
        assert "graph.edges[0].to" in fields, fields
        assert invalid.value.detail(error_details_pb2.BadRequest) is not None
        with pytest.raises(InvalidArgumentError):
            await dago.validate(bad)
        ok = await dago.validate(request([echo("a")]))
        assert ok.graph_id == ""

        with pytest.raises(NotFoundError) as missing:
            await dago.status("no-such-run")
        info = missing.value.detail(error_details_pb2.ResourceInfo)
        assert info is not None and info.resource_name == "no-such-run"
        with pytest.raises(NotFoundError):
            async for _ in dago.watch("no-such-run"):
                pass

        running = (await dago.submit(sleeper())).graph_id
        with pytest.raises(FailedPreconditionError) as early:
            await dago.result(running)
        assert early.value.precondition_violations, early.value.details
        assert isinstance(early.value, DagoError) and early.value.code.name == "FAILED_PRECONDITION"
        await dago.cancel(running)
        assert (await dago.wait(running)).state == execution_pb2.GRAPH_STATE_CANCELLED

        await dago.submit(request([echo("a")]), request_id="order-1")
        with pytest.raises(AlreadyExistsError):
            await dago.submit(request([echo("b")]), request_id="order-1")


async def test_the_api_key_is_sent_as_a_bearer_token(
    redis_single: RedisServer, key_prefix: str
) -> None:
    key = new_key()
    settings = stack_settings(
        redis_single.url, key_prefix, auth="keys", api_keys=f"{hash_key(key)}:team-c"
    )
    async with InProcessStack(settings) as s:
        where = f"127.0.0.1:{s.port}"
        async with AsyncDagoClient(where, api_key=key) as dago:
            gid = (await dago.submit(request([echo("a")]))).graph_id
            assert (await dago.wait(gid)).state == execution_pb2.GRAPH_STATE_COMPLETED
        # From the environment, as dagoctl reads it.
        env = ClientConfig.from_env({"DAGO_TARGET": where, "DAGO_API_KEY": key})
        async with AsyncDagoClient(config=env) as dago:
            assert (await dago.status(gid)).graph_id == gid
        async with AsyncDagoClient(where, api_key="") as anonymous:
            with pytest.raises(UnauthenticatedError):
                await anonymous.status(gid)


async def test_an_operator_lists_by_namespace_with_both_clients(
    redis_single: RedisServer, key_prefix: str
) -> None:
    keys = {ns: new_key() for ns in ("team-a", "team-b", "ops")}
    settings = stack_settings(
        redis_single.url,
        key_prefix,
        auth="keys",
        api_keys=",".join(f"{hash_key(k)}:{ns}" for ns, k in keys.items()),
        operator_namespaces="ops",
    )
    async with InProcessStack(settings) as s:
        where = f"127.0.0.1:{s.port}"
        runs: dict[str, str] = {}
        for ns in ("team-a", "team-b", "team-a"):
            async with AsyncDagoClient(where, api_key=keys[ns]) as dago:
                gid = (await dago.submit(request([echo("a")], name=f"run-{ns}"))).graph_id
                runs[gid] = ns
        async with AsyncDagoClient(where, api_key=keys["ops"]) as ops:
            every = [(g.graph_id, g.namespace) async for g in ops.list_graphs(page_size=1)]
            assert every == list(reversed(runs.items()))
            only_a = [g.namespace async for g in ops.list_graphs(namespace="team-a")]
            assert only_a == ["team-a", "team-a"]
        async with AsyncDagoClient(where, api_key=keys["team-a"]) as tenant:
            with pytest.raises(PermissionDeniedError) as denied:
                await tenant.list_graphs_page(filters=RunFilters(namespace="team-b"))
            assert "namespace" in str(denied.value)

        def sync_listing() -> list[str]:
            with DagoClient(where, api_key=keys["ops"]) as dago:
                return [g.graph_id for g in dago.list_graphs(namespace="team-b")]

        assert await asyncio.to_thread(sync_listing) == [
            g for g, ns in runs.items() if ns == "team-b"
        ]


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate for dago.test and localhost, and its key (openssl)."""
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=dago.test"),
            *("-addext", "subjectAltName=DNS:dago.test,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.process
async def test_tls_with_a_private_ca(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    settings = stack_settings(
        redis_single.url, key_prefix, tls_cert_file=str(cert), tls_key_file=str(key)
    )
    async with InProcessStack(settings) as s:
        env = {"DAGO_TARGET": f"localhost:{s.port}", "DAGO_TLS_CA": str(cert)}
        async with AsyncDagoClient(config=ClientConfig.from_env(env)) as dago:
            gid = (await dago.submit(request([echo("a")]))).graph_id
            assert (await dago.wait(gid)).state == execution_pb2.GRAPH_STATE_COMPLETED
        # By address, checking the certificate against the name it was issued to.
        named = ClientConfig.from_env(
            {**env, "DAGO_TARGET": f"127.0.0.1:{s.port}", "DAGO_TLS_SERVER_NAME": "dago.test"}
        )
        async with AsyncDagoClient(config=named) as dago:
            assert (await dago.status(gid)).graph_id == gid
        # Without the CA the server is not trusted: the call fails, it does not hang.
        untrusted = ClientConfig(target=f"localhost:{s.port}", tls=True, timeout_s=2)
        async with AsyncDagoClient(config=untrusted) as dago:
            with pytest.raises(UnavailableError):
                await dago.status(gid)


def test_config_from_the_environment() -> None:
    cfg = ClientConfig.from_env(
        {"DAGO_TARGET": "https://dago.example:443", "DAGO_API_KEY": "k1", "DAGO_TIMEOUT": "5"}
    )
    assert cfg.address == "dago.example:443" and cfg.uses_tls and cfg.timeout_s == 5
    assert cfg.metadata() == (("authorization", "Bearer k1"),)
    plain = ClientConfig.from_env({}, target="h:1")
    assert plain.address == "h:1" and not plain.uses_tls and plain.metadata() == ()
    assert ClientConfig.from_env({"DAGO_TLS_CA": "/ca.pem"}).uses_tls
    assert parse_inputs(["n=3", "s=hello", "b=true", 'o={"k": [1]}']) == {
        "n": 3,
        "s": "hello",
        "b": True,
        "o": {"k": [1]},
    }


@pytest.mark.process
async def test_a_dropped_watch_resumes_and_idempotent_calls_retry(
    redis_single: RedisServer,
) -> None:
    async with RunningStack(redis_single.url, f"tcl{secrets.token_hex(3)}") as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        chain = [tool(f"s{i}", "sleep", inputs={"seconds": 0.3}) for i in range(5)]
        edges = [edge(f"s{i}", f"s{i + 1}") for i in range(4)]
        cfg = ClientConfig(target=f"127.0.0.1:{stack.port}", max_attempts=60, timeout_s=30)
        async with AsyncDagoClient(config=cfg) as dago:
            gid = (await dago.submit(request(chain, edges))).graph_id
            resumes: list[tuple[int, str]] = []
            events: list[execution_pb2.Event] = []
            first_done = asyncio.Event()

            async def follow() -> None:
                def resumed(seq: int, attempt: int, err: DagoError) -> None:
                    resumes.append((seq, err.code.name))

                async for ev in dago.watch(gid, on_resume=resumed):
                    events.append(ev)
                    if ev.WhichOneof("payload") == "node_completed":
                        first_done.set()

            watcher = asyncio.create_task(follow())
            await asyncio.wait_for(first_done.wait(), 20)
            stack.signal("api")  # SIGKILL: the stream breaks mid-run
            # A read while the API is down is retried (UNAVAILABLE) until it is back.
            status = asyncio.create_task(dago.status(gid))
            await asyncio.sleep(0.3)
            assert not status.done(), "the status call should wait for the API"
            await start_api_quickly(stack)
            assert (await asyncio.wait_for(status, 30)).graph_id == gid
            await asyncio.wait_for(watcher, 30)

            assert resumes, "the watch never resumed"
            assert all(code == "UNAVAILABLE" for _, code in resumes), resumes
            seqs = [ev.seq for ev in events]
            assert seqs == list(range(1, len(seqs) + 1)), seqs  # once each, in order
            assert events[-1].WhichOneof("payload") == "graph_completed"
            assert len([e for e in events if e.WhichOneof("payload") == "node_completed"]) == 5
            stored = [ev.seq async for ev in dago.list_events(gid)]
            assert stored == seqs
            assert any(ev.seq > resumes[0][0] for ev in events)


async def test_a_watch_dropped_for_reading_too_slowly_resumes_by_itself(
    make_stack: MakeStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DAGO_WATCH_MAX_LAG_S=1 and a consumer that stops for 3 s while the run emits (no BDP
    # probing: the client takes no more than its 64 KiB window meanwhile): the server ends
    # the stream with ABORTED (WATCH_TOO_SLOW) and the client resumes from its last seq.
    stack = await make_stack(watch_max_lag_s=1)
    plain = ClientConfig.channel_options
    monkeypatch.setattr(
        ClientConfig,
        "channel_options",
        lambda self: [*plain(self), ("grpc.http2.bdp_probe", 0)],
    )
    talk = {"count": 1500, "size": 1000, "batch": 50, "interval": 0.05}
    async with AsyncDagoClient(config=ClientConfig(target=target(stack))) as dago:
        gid = (await dago.submit(request([tool("talk", "chatter", inputs=talk)]))).graph_id
        resumes: list[str] = []
        seqs: list[int] = []

        def resumed(seq: int, attempt: int, err: DagoError) -> None:
            resumes.append(err.code.name)

        async for ev in dago.watch(gid, on_resume=resumed):
            seqs.append(ev.seq)
            if len(seqs) == 5:
                await asyncio.sleep(3)
        assert resumes and set(resumes) == {"ABORTED"}, resumes
        assert seqs == [ev.seq async for ev in dago.list_events(gid)]  # once each, in order


async def test_an_unreachable_server_is_unavailable_within_the_deadline() -> None:
    cfg = ClientConfig(target=f"127.0.0.1:{free_port()}", timeout_s=1.0, max_attempts=3)
    async with AsyncDagoClient(config=cfg) as dago:
        with pytest.raises(UnavailableError):
            await dago.status("x")


async def test_a_silent_stream_is_reopened_by_both_clients(stack: InProcessStack) -> None:
    """A stream with no message (event or heartbeat, every 500 ms here) for longer than
    idle_timeout_s is treated as dead and reopened after the last seq: still each event
    once, in order."""
    chain = [tool(f"s{i}", "sleep", inputs={"seconds": 0.6}) for i in range(2)]
    req = request(chain, [edge("s0", "s1")])
    async with AsyncDagoClient(target(stack)) as dago:
        gid = (await dago.submit(req)).graph_id
        resumed: list[str] = []
        seqs = [
            ev.seq
            async for ev in dago.watch(
                gid, idle_timeout_s=0.2, on_resume=lambda s, n, e: resumed.append(e.message)
            )
        ]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 7, seqs
    assert resumed and all("no message for 0.2s" in m for m in resumed), resumed

    def sync_watch() -> tuple[list[int], list[str]]:
        with DagoClient(target(stack)) as client:
            sid = client.submit(req).graph_id
            notes: list[str] = []
            got = [
                ev.seq
                for ev in client.watch(
                    sid, idle_timeout_s=0.2, on_resume=lambda s, n, e: notes.append(e.message)
                )
            ]
            return got, notes

    seqs, resumed = await asyncio.to_thread(sync_watch)
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 7, seqs
    assert resumed and all("no message for 0.2s" in m for m in resumed), resumed


async def test_workers_and_dead_letter_calls_of_both_clients(
    redis_single: RedisServer, key_prefix: str
) -> None:
    settings = stack_settings(redis_single.url, key_prefix, worker_heartbeat_ms=100)
    async with InProcessStack(settings, workers=2) as s, AsyncDagoClient(target(s)) as dago:
        gid = (await dago.submit(sleeper(30))).graph_id

        workers: list[orchestrator_pb2.WorkerInfo] = []

        async def one_in_flight() -> bool:
            workers[:] = await dago.list_workers()
            return sum(w.in_flight for w in workers) == 1

        await eventually(one_in_flight, 10, 0.05)
        assert sorted(w.worker_id for w in workers) == ["w0", "w1"]
        assert all(w.slots == 64 and "tool" in w.node_kinds for w in workers)
        assert all(w.HasField("last_heartbeat_time") for w in workers)

        # No dead letter here: an empty iterator, and typed errors for unknown ids.
        assert [d async for d in dago.dead_letters()] == []
        assert [d async for d in dago.dead_letters(graph_id=gid, page_size=1)] == []
        with pytest.raises(NotFoundError):
            await dago.requeue_dead_letter("0-1-1")
        with pytest.raises(NotFoundError):
            await dago.drop_dead_letter("no-such-letter")

        def sync_calls() -> tuple[list[str], int]:
            with DagoClient(target(s)) as sync:
                ids = sorted(w.worker_id for w in sync.list_workers())
                letters = len(list(sync.dead_letters(limit=5)))
                with pytest.raises(NotFoundError):
                    sync.requeue_dead_letter("0-1-1")
                with pytest.raises(NotFoundError):
                    sync.drop_dead_letter("0-1-1")
                return ids, letters

        assert await asyncio.to_thread(sync_calls) == (["w0", "w1"], 0)
        await dago.cancel(gid)


async def test_waits_and_signals_with_both_clients(stack: InProcessStack) -> None:
    from dago_client import AbortedError

    doc = {
        "nodes": {
            "review": {"wait": {"prompt": "ok?", "payload_schema": '{"type": "object"}'}},
            "done": {"tool": "echo", "inputs": {"d": "{{ nodes.review.output.payload }}"}},
            "hold": {"wait": {}},  # keeps the run going: a loser finds it running
        },
        "edges": ["review -> done", "done -> hold"],
    }
    async with AsyncDagoClient(target(stack)) as dago:
        gids = [(await dago.submit(parse_document(doc))).graph_id for _ in range(3)]

        async def all_wait() -> bool:
            return len([w async for w in dago.waits(page_size=2)]) == 3

        await eventually(all_wait)
        listed = [w async for w in dago.waits(page_size=2)]
        assert {w.graph_id for w in listed} == set(gids)
        since = [w.since.ToMilliseconds() for w in listed]
        assert since == sorted(since)  # oldest first
        assert len([w async for w in dago.waits(limit=2)]) == 2
        resp = await dago.signal(gids[0], "review", "approve", {"k": [1, 2]}, comment="yes")
        assert (resp.decision, resp.actor) == ("approve", "anonymous")
        # A retry of the same call (same signal_id) gets the same answer.
        again = await dago.signal(
            gids[0], "review", "approve", {"k": [1, 2]}, signal_id=resp.signal_id
        )
        assert again == resp
        with pytest.raises(AbortedError) as conflict:
            await dago.signal(gids[0], "review", "reject", {})
        info = conflict.value.detail(error_details_pb2.ErrorInfo)
        assert info is not None and info.metadata["decision"] == "approve"
        with pytest.raises(InvalidArgumentError) as bad:
            await dago.signal(gids[1], "review", "approve", [1])
        assert bad.value.field_violations[0].field == "payload"

        async def done() -> bool:
            return (await dago.status(gids[0])).nodes[2].state == 5  # hold: WAITING

        await eventually(done)
        st = await dago.status(gids[0])
        assert to_dict(st.nodes[1].output) == {"d": {"k": [1, 2]}}

    def work() -> list[tuple[str, str]]:
        with DagoClient(target(stack)) as dago:
            listed = [(w.graph_id, w.node_id) for w in dago.waits()]
            dago.signal(gids[1], "review", "reject", {})
            return listed

    still = await asyncio.to_thread(work)
    assert set(still) == {(gids[0], "hold"), (gids[1], "review"), (gids[2], "review")}


async def test_a_priority_is_sent_by_submit_and_run(stack: InProcessStack) -> None:
    async with AsyncDagoClient(target(stack)) as dago:
        sub = await dago.submit(request([echo("a")]), priority=5)
        assert (await dago.status(sub.graph_id)).priority == 5
        events = [ev async for ev in dago.run(request([echo("a")]), priority=1)]
        assert (await dago.status(events[0].graph_id)).priority == 1
        sub = await dago.submit(request([echo("a")]))
        assert (await dago.status(sub.graph_id)).priority == 3  # the server's default


async def test_map_items_with_both_clients(stack: InProcessStack) -> None:
    doc = {
        "nodes": {
            "each": {
                "map": {
                    "items": "[1, 2, 3, 4]",
                    "node": {"tool": "echo", "inputs": {"v": "{{ item }}"}},
                }
            }
        }
    }
    async with AsyncDagoClient(target(stack)) as dago:
        gid = (await dago.submit(parse_document(doc))).graph_id
        await dago.wait(gid)
        got = [(i.index, to_dict(i.output)) async for i in dago.items(gid, "each", page_size=3)]
        assert got == [(i, {"v": i + 1}) for i in range(4)]
        page = await dago.items_page(gid, "each", page_size=1)
        assert page.progress.completed == 4 and page.next_page_token

    def work() -> list[int]:
        with DagoClient(target(stack)) as dago:
            return [i.index for i in dago.items(gid, "each", limit=2)]

    assert await asyncio.to_thread(work) == [0, 1]


async def test_limits_with_both_clients(make_stack: MakeStack) -> None:
    """GetLimits through the async and the sync client: each configured model with its
    bucket's level (full: nothing called it yet)."""
    rl = '{"anthropic/claude-sonnet-4-6": {"requests_per_minute": 50, "burst_seconds": 6}}'
    s = await make_stack(rate_limits=rl)
    async with AsyncDagoClient(target(s)) as dago:
        (m,) = await dago.limits()
    assert (m.provider, m.model, m.requests_per_minute, m.requests_available) == (
        "anthropic",
        "claude-sonnet-4-6",
        50,
        5,  # six seconds of 50 a minute
    )
    assert m.input_tokens_per_minute == 0 and not m.HasField("paused_until")

    def sync_limits() -> list[orchestrator_pb2.ModelLimit]:
        with DagoClient(target(s)) as sync:
            return sync.limits()

    assert await asyncio.to_thread(sync_limits) == [m]
