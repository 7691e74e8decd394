"""ListGraphs and GetUsageSummary over runs spread across both stores, on the real stack:
runs archived and expired from Redis (PostgreSQL only), archived and still in Redis (both),
and never archived (Redis only), interleaved in time. Paging with every page size from 1
to 7 lists every run once, newest first, with each filter; usage sums match the runs' own
GetGraphStatus usage."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import json_format, timestamp_pb2

from dago.api.auth import hash_key, new_key
from dago.engine.ids import parse_shard
from dago.history.filters import RunFilter
from dago.history.listing import RunListing
from dago.history.migrate import migrate_url
from dago.store.schema import Meta
from dago.v1 import definitions_pb2, definitions_pb2_grpc, execution_pb2, orchestrator_pb2
from fake_anthropic import FakeAnthropic, Text, Usage
from harness import (
    ROOT,
    Client,
    InProcessStack,
    MakeStack,
    echo,
    edge,
    eventually,
    request,
    running_edge,
    tool,
)
from pgfixture import PrivatePostgres
from redisfixture import RedisServer

KEY = "sk-ant-test-history-listing"
MODELS = ("claude-sonnet-4-6", "claude-haiku-4-5")
NAMES = ("alpha", "beta", "gamma")
RUNS = 24
FAILED = execution_pb2.GRAPH_STATE_FAILED
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


def run_request(i: int) -> orchestrator_pb2.SubmitGraphRequest:
    """Run ``i``: its name, metadata, model and fate vary with i (every 4th fails)."""
    nodes: list[dict[str, Any]] = [
        {"id": "ask", "llm": {"prompt": f"question {i}", "model": MODELS[i % 2]}}
    ]
    edges = []
    if i % 3 == 0:  # a second model call, so runs differ in cost beyond their model
        nodes.append({"id": "again", "llm": {"prompt": "more", "model": MODELS[0]}})
        edges.append(edge("ask", "again"))
    if i % 4 == 3:
        nodes.append(tool("boom", "fail"))
        edges.append(edge("ask", "boom"))
    meta = {"team": ("search", "ads")[i % 2], "i": i, "even": i % 2 == 0}
    # Names, teams, models and failures cut across the three stores (a run's store is i % 3).
    return request(nodes, edges, name=NAMES[(i // 4) % 3], metadata=meta)


def model_of(st: execution_pb2.GraphStatus, node_id: str) -> str:
    """The model node ``node_id`` of a run_request() run called ('' for the tool)."""
    i = int(json_format.MessageToDict(st.metadata)["i"])
    return {"ask": MODELS[i % 2], "again": MODELS[0]}.get(node_id, "")


@dataclass
class Spread:
    """The runs (final GetGraphStatus by id) and where they are."""

    lister: InProcessStack
    """A stack with the history database: what ListGraphs is asked."""
    plain: InProcessStack
    """A stack without it."""
    status: dict[str, execution_pb2.GraphStatus]
    where: dict[str, str]
    """graph id -> "postgres" (expired from Redis), "both" or "redis"."""
    url: str


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as f:
        f.default = Text("fine", usage=Usage(input=100, output=50, cache_write=20, cache_read=10))
        yield f


@pytest.fixture(scope="module")
async def spread_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as f:
        f.default = Text("fine", usage=Usage(input=100, output=50, cache_write=20, cache_read=10))
        yield f


# Module-scoped: the tests using it only list and sum these runs (none submits, cancels or
# changes one), so the 24 runs and their archiving and expiry are made once, not per test.
@pytest.fixture(scope="module")
async def spread(
    module_postgres_url: str, module_make_stack: MakeStack, spread_fake: FakeAnthropic
) -> Spread:
    postgres_url, make_stack, fake = module_postgres_url, module_make_stack, spread_fake
    await migrate_url(postgres_url)
    llm = {"anthropic_api_key": KEY, "anthropic_base_url": fake.url, "llm_provider": "anthropic"}
    # One Redis and key prefix for the three: runs of the first expire a second after they
    # are archived, the second's stay a day, the third (no history) archives nothing.
    gone = await make_stack(postgres_url=postgres_url, retention_s=1, **llm)
    kept = await make_stack(postgres_url=postgres_url, retention_s=86400, **llm)
    plain = await make_stack(**llm)
    stacks = {"postgres": gone, "both": kept, "redis": plain}
    where: dict[str, str] = {}
    for i, home in zip(range(RUNS), itertools.cycle(stacks), strict=False):
        where[await stacks[home].client.submit(run_request(i))] = home
    status = {gid: await kept.client.wait(gid) for gid in where}
    assert {st.state for st in status.values()} == {COMPLETED, FAILED}

    archived = {gid for gid, home in where.items() if home != "redis"}

    async def all_archived() -> bool:
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            cur = await conn.execute("SELECT graph_id FROM dago_runs")
            return {r[0] for r in await cur.fetchall()} == archived

    async def expired() -> bool:
        for gid, home in where.items():
            shard = parse_shard(gid, kept.settings.shards)
            assert shard is not None
            (state,) = await kept.store.graph_fields(shard, gid, Meta.STATE)
            if (state is None) != (home == "postgres"):
                return False
        return True

    await eventually(all_archived, timeout=30)
    await eventually(expired, timeout=30)
    return Spread(kept, plain, status, where, postgres_url)


async def list_all(
    stack: InProcessStack, size: int, **filters: Any
) -> list[orchestrator_pb2.GraphSummary]:
    """Every page of ListGraphs with ``filters`` and page size ``size``."""
    out: list[orchestrator_pb2.GraphSummary] = []
    token = ""
    for _ in range(10 * RUNS + 10):
        req = orchestrator_pb2.ListGraphsRequest(page_size=size, page_token=token, **filters)
        page = await stack.client.stub.ListGraphs(req, timeout=10)
        assert len(page.graphs) <= size
        out.extend(page.graphs)
        token = page.next_page_token
        if not token:
            return out
    raise AssertionError("ListGraphs never ended")


def stamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(ms)
    return ts


def newest_first(runs: dict[str, execution_pb2.GraphStatus]) -> list[str]:
    return [
        g
        for g, _ in sorted(
            runs.items(), key=lambda kv: (kv[1].create_time.ToMilliseconds(), kv[0]), reverse=True
        )
    ]


async def test_paging_across_both_stores_lists_every_run_once(spread: Spread) -> None:
    assert set(spread.where.values()) == {"postgres", "both", "redis"}
    times = sorted(st.create_time.ToMilliseconds() for st in spread.status.values())
    low, high = times[5], times[17]
    cost = sorted(st.usage.cost_usd for st in spread.status.values())[RUNS // 2]

    def meta(st: execution_pb2.GraphStatus) -> dict[str, Any]:
        return json_format.MessageToDict(st.metadata)

    cases: list[tuple[dict[str, Any], Any]] = [
        ({}, lambda st: True),
        ({"state": FAILED}, lambda st: st.state == FAILED),
        ({"name": "beta"}, lambda st: st.name == "beta"),
        ({"metadata": ["team=search"]}, lambda st: meta(st)["team"] == "search"),
        ({"metadata": ["i=7"]}, lambda st: meta(st)["i"] == 7),
        ({"metadata": ["even=true", "team=search"]}, lambda st: meta(st)["i"] % 2 == 0),
        ({"min_cost_usd": cost}, lambda st: st.usage.cost_usd >= cost),
        (
            {"created_after": stamp(low), "created_before": stamp(high)},
            lambda st: low <= st.create_time.ToMilliseconds() < high,
        ),
        (
            {"state": COMPLETED, "name": "alpha", "created_after": stamp(low)},
            lambda st: (
                st.state == COMPLETED
                and st.name == "alpha"
                and st.create_time.ToMilliseconds() >= low
            ),
        ),
    ]
    for filters, picks in cases:
        expected = newest_first({g: st for g, st in spread.status.items() if picks(st)})
        assert filters == {} or 0 < len(expected) < RUNS, filters  # each filter decides
        homes = {spread.where[g] for g in expected}
        for size in range(1, 8):
            listed = await list_all(spread.lister, size, **filters)
            assert [s.graph_id for s in listed] == expected, (filters, size, homes)
    # Not vacuous: the unfiltered listing holds runs of every store.
    assert len(await list_all(spread.lister, 100)) == RUNS


async def test_summaries_carry_the_runs_usage_from_either_store(spread: Spread) -> None:
    for s in await list_all(spread.lister, 5):
        st = spread.status[s.graph_id]
        assert (s.name, s.state, s.steps) == (st.name, st.state, st.steps)
        assert s.usage == st.usage and s.usage.cost_usd > 0
        assert s.create_time == st.create_time and s.end_time == st.end_time
        assert s.namespace == "default"


async def test_usage_sums_match_the_runs_usage(spread: Spread) -> None:
    archived = {g: st for g, st in spread.status.items() if spread.where[g] != "redis"}
    stub = spread.lister.client.stub

    async def summary(group: int, **kw: Any) -> orchestrator_pb2.GetUsageSummaryResponse:
        req = orchestrator_pb2.GetUsageSummaryRequest(group_by=group, **kw)  # type: ignore[arg-type]
        return await stub.GetUsageSummary(req, timeout=10)

    def total(runs: list[execution_pb2.GraphStatus]) -> tuple[int, int, int, int, float]:
        return (
            sum(st.usage.input_tokens for st in runs),
            sum(st.usage.output_tokens for st in runs),
            sum(st.usage.cache_creation_input_tokens for st in runs),
            sum(st.usage.cache_read_input_tokens for st in runs),
            round(sum(st.usage.cost_usd for st in runs), 9),
        )

    def of(row: orchestrator_pb2.UsageSummaryRow) -> tuple[int, int, int, int, float]:
        u = row.usage
        return (
            u.input_tokens,
            u.output_tokens,
            u.cache_creation_input_tokens,
            u.cache_read_input_tokens,
            round(u.cost_usd, 9),
        )

    whole = await summary(orchestrator_pb2.USAGE_GROUP_BY_UNSPECIFIED)
    assert not whole.rows and whole.total.runs == len(archived)
    assert whole.total.failed_runs == sum(st.state == FAILED for st in archived.values())
    assert of(whole.total) == total(list(archived.values())) and whole.total.usage.cost_usd > 0

    by_name = await summary(orchestrator_pb2.USAGE_GROUP_BY_GRAPH_NAME)
    assert [r.key for r in by_name.rows] == sorted({st.name for st in archived.values()})
    for row in by_name.rows:
        runs = [st for st in archived.values() if st.name == row.key]
        assert (row.runs, of(row)) == (len(runs), total(runs))

    by_model = await summary(orchestrator_pb2.USAGE_GROUP_BY_MODEL)
    assert {r.key for r in by_model.rows} == {*MODELS, ""}  # the fail tool calls no model
    for row in by_model.rows:
        nodes = [
            n for st in archived.values() for n in st.nodes if model_of(st, n.node_id) == row.key
        ]
        runs = {
            st.graph_id
            for st in archived.values()
            for n in st.nodes
            if model_of(st, n.node_id) == row.key
        }
        assert row.runs == len(runs), row.key
        assert (row.usage.input_tokens, round(row.usage.cost_usd, 9)) == (
            sum(n.usage.input_tokens for n in nodes),
            round(sum(n.usage.cost_usd for n in nodes), 9),
        ), row.key

    by_day = await summary(orchestrator_pb2.USAGE_GROUP_BY_DAY)
    days = {st.create_time.ToDatetime().strftime("%Y-%m-%d") for st in archived.values()}
    assert [r.key for r in by_day.rows] == sorted(days)
    assert sum(r.runs for r in by_day.rows) == len(archived)

    by_ns = await summary(orchestrator_pb2.USAGE_GROUP_BY_NAMESPACE)
    assert [(r.key, r.runs) for r in by_ns.rows] == [("default", len(archived))]

    # A range: the same runs ListGraphs lists with the same bounds.
    times = sorted(st.create_time.ToMilliseconds() for st in archived.values())
    low, high = times[3], times[-3]
    ranged = await summary(0, start_time=stamp(low), end_time=stamp(high))
    inside = [st for st in archived.values() if low <= st.create_time.ToMilliseconds() < high]
    assert (ranged.total.runs, of(ranged.total)) == (len(inside), total(inside))


async def test_bad_arguments_name_the_field(spread: Spread) -> None:
    stub = spread.lister.client.stub
    first = await stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(page_size=2), timeout=10)
    assert first.next_page_token
    bad: list[tuple[Any, Any, str]] = [
        (
            stub.ListGraphs,
            orchestrator_pb2.ListGraphsRequest(page_token="bm90LWEtdG9rZW4="),
            "page_token",
        ),
        # A token of one filter set is not valid with another.
        (
            stub.ListGraphs,
            orchestrator_pb2.ListGraphsRequest(page_token=first.next_page_token, name="alpha"),
            "page_token",
        ),
        (
            stub.ListGraphs,
            orchestrator_pb2.ListGraphsRequest(
                created_after=stamp(2000), created_before=stamp(1000)
            ),
            "created_before",
        ),
        (
            stub.ListGraphs,
            orchestrator_pb2.ListGraphsRequest(metadata=["no-equals-sign"]),
            "metadata[0]",
        ),
        (stub.ListGraphs, orchestrator_pb2.ListGraphsRequest(min_cost_usd=-1), "min_cost_usd"),
        (
            stub.GetUsageSummary,
            orchestrator_pb2.GetUsageSummaryRequest(start_time=stamp(2000), end_time=stamp(1000)),
            "end_time",
        ),
        (stub.GetUsageSummary, orchestrator_pb2.GetUsageSummaryRequest(group_by=99), "group_by"),  # type: ignore[arg-type]
    ]
    for call, req, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, req
        assert (e.value.details() or "").startswith(f"{field}:"), (e.value.details(), field)


async def test_usage_without_history_says_what_to_set(spread: Spread) -> None:
    req = orchestrator_pb2.GetUsageSummaryRequest()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await spread.plain.client.stub.GetUsageSummary(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "DAGO_POSTGRES_URL" in (e.value.details() or "")
    # Without history, ListGraphs lists what Redis holds: the runs not expired.
    listed = {s.graph_id for s in await list_all(spread.plain, 7)}
    assert listed == {g for g, home in spread.where.items() if home != "postgres"}


async def test_rest_usage_and_filtered_listing_through_envoy(
    redis_single: RedisServer, postgres_url: str
) -> None:
    await migrate_url(postgres_url)
    prefix = f"trest{secrets.token_hex(3)}"
    async with running_edge(redis_single.url, prefix, DAGO_POSTGRES_URL=postgres_url) as edge_:
        http = edge_.http
        ids = []
        for team in ("search", "ads", "search"):
            body = {
                "graph": {
                    "name": f"rest-{team}",
                    "metadata": {"team": team},
                    "nodes": [{"id": "a", "tool": {"name": "echo"}, "inputs": {"x": "1"}}],
                }
            }
            r = await http.post("/api/v1/graphs", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.json()["graph_id"])

        async def archived() -> bool:
            async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
                cur = await conn.execute("SELECT count(*) FROM dago_runs")
                row = await cur.fetchone()
                return row is not None and row[0] == len(ids)

        await eventually(archived, timeout=30)
        today = datetime.now(UTC).strftime("%Y-%m-%d")
        r = await http.get(
            "/api/v1/usage",
            params={"from": f"{today}T00:00:00Z", "to": "2999-01-01T00:00:00Z", "group_by": "day"},
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["total"]["runs"] == "3" and doc["total"]["failed_runs"] == "0"
        assert [row["key"] for row in doc["rows"]] == [today]
        r = await http.get("/api/v1/usage", params={"group_by": "GRAPH_NAME"})
        assert [(x["key"], x["runs"]) for x in r.json()["rows"]] == [
            ("rest-ads", "1"),
            ("rest-search", "2"),
        ]

        r = await http.get(
            "/api/v1/graphs",
            params={"state": "graph_state_completed", "name": "rest-search", "page_size": 1},
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert [g["graph_id"] for g in page["graphs"]] == [ids[2]] and page["next_page_token"]
        r = await http.get(
            "/api/v1/graphs",
            params={
                "state": "graph_state_completed",
                "name": "rest-search",
                "page_size": 1,
                "page_token": page["next_page_token"],
            },
        )
        assert [g["graph_id"] for g in r.json()["graphs"]] == [ids[0]]
        r = await http.get("/api/v1/graphs", params=[("metadata", "team=ads")])
        assert [g["graph_id"] for g in r.json()["graphs"]] == [ids[1]]

        for path, params, field in (
            ("/api/v1/graphs", {"page_token": "bm9wZQ=="}, "page_token"),
            ("/api/v1/graphs", {"min_cost_usd": "-1"}, "min_cost_usd"),
            (
                "/api/v1/usage",
                {"from": "2026-12-02T00:00:00Z", "to": "2026-12-01T00:00:00Z"},
                "end_time",
            ),
            ("/api/v1/usage", {"group_by": "week"}, "group_by"),
        ):
            r = await http.get(path, params=params)
            assert r.status_code == 400, (path, params, r.text)
            assert r.json()["message"].startswith(f"{field}:"), r.text


async def test_each_namespace_sees_its_own_runs_and_usage_operators_all(
    postgres_url: str, make_stack: MakeStack
) -> None:
    await migrate_url(postgres_url)
    keys = {ns: new_key() for ns in ("team-a", "team-b", "ops")}
    stack = await make_stack(
        postgres_url=postgres_url,
        retention_s=1,  # archived runs leave Redis: the PostgreSQL side is what is read
        auth="keys",
        api_keys=",".join(f"{hash_key(k)}:{ns}" for ns, k in keys.items()),
        operator_namespaces="ops",
    )
    client = {ns: Client(f"127.0.0.1:{stack.port}", k) for ns, k in keys.items()}
    mine = {"team-a": [], "team-b": []}
    for ns in ("team-a", "team-b", "team-a"):
        gid, _ = await client[ns].run(request([echo("a", v=1)], name="shared-name"))
        mine[ns].append(gid)

    async def gone_from_redis() -> bool:
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            cur = await conn.execute("SELECT count(*) FROM dago_runs")
            row = await cur.fetchone()
        if row is None or row[0] != 3:
            return False
        return not any([await stack.in_redis(gid) for gid in mine["team-a"] + mine["team-b"]])

    await eventually(gone_from_redis, timeout=30)
    by_ns = orchestrator_pb2.GetUsageSummaryRequest(
        group_by=orchestrator_pb2.USAGE_GROUP_BY_NAMESPACE
    )
    for ns, expected in (
        ("team-a", [("team-a", 2)]),
        ("team-b", [("team-b", 1)]),
        ("ops", [("team-a", 2), ("team-b", 1)]),
    ):
        resp = await client[ns].stub.GetUsageSummary(by_ns, timeout=10)
        assert [(r.key, r.runs) for r in resp.rows] == expected, ns
        assert resp.total.runs == sum(n for _, n in expected)
    for ns in ("team-a", "team-b"):
        listed = await client[ns].stub.ListGraphs(
            orchestrator_pb2.ListGraphsRequest(name="shared-name"), timeout=10
        )
        assert [g.graph_id for g in listed.graphs] == list(reversed(mine[ns]))
        assert {g.namespace for g in listed.graphs} == {ns}
    for c in client.values():
        await c.close()


async def test_a_bounded_redis_scan_ends_pages_early_and_misses_nothing(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(shards=2)
    ids = []
    for i in range(20):
        # Only the 4 oldest runs match: the newest 16 fill every scan of the first pages.
        tag = "x" if i < 4 else "y"
        gid, _ = await stack.client.run(request([echo("a", v=i)], name=tag, metadata={"k": tag}))
        ids.append(gid)
    expected = newest_first({g: await stack.client.status(g) for g in ids[:4]})
    # Scan budgets of 4 index entries per shard and page (20 // 5 with a metadata filter,
    # which reads definitions): most pages stop before they fill.
    for budget, f in (
        (4, RunFilter("default", name="x")),
        (20, RunFilter("default", metadata=(("k", "x"),))),
    ):
        listing = RunListing(stack.store, 2, None, scan_budget=budget)
        seen: list[str] = []
        partial = 0
        after = None
        for _ in range(40):
            page = await listing.page(f, after, 2)
            seen += [s.graph_id for s in page.runs]
            if page.next is None:
                break
            partial += len(page.runs) < 2
            after = page.next
        assert seen == expected, f
        assert partial > 0, f  # the budget did cut pages short


async def test_postgres_down_makes_listing_and_usage_unavailable_not_partial(
    private_postgres: PrivatePostgres, make_stack: MakeStack
) -> None:
    await migrate_url(private_postgres.url)
    stack = await make_stack(postgres_url=private_postgres.url)
    gid, _ = await stack.client.run(request([echo("a", v=1)]))
    listed = await stack.client.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(), timeout=10)
    assert [g.graph_id for g in listed.graphs] == [gid]
    private_postgres.stop()
    # A listing without the archive would leave runs out without saying so: it is refused
    # as retryable instead, as the summary is.
    for call, req in (
        (stack.client.stub.ListGraphs, orchestrator_pb2.ListGraphsRequest()),
        (stack.client.stub.GetUsageSummary, orchestrator_pb2.GetUsageSummaryRequest()),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        assert "PostgreSQL" in (e.value.details() or "")
    private_postgres.start()

    async def listed_again() -> bool:
        try:
            page = await stack.client.stub.ListGraphs(
                orchestrator_pb2.ListGraphsRequest(), timeout=10
            )
        except grpc.aio.AioRpcError:
            return False
        return [g.graph_id for g in page.graphs] == [gid]

    await eventually(listed_again, timeout=30, interval=0.2)


async def test_dagoctl_usage_and_filtered_list(spread: Spread) -> None:
    async def ctl(*args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
        env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("gen/python", "clients/python"))
        env["DAGO_TARGET"] = f"127.0.0.1:{spread.lister.port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dago_client", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    req = orchestrator_pb2.GetUsageSummaryRequest(group_by=orchestrator_pb2.USAGE_GROUP_BY_MODEL)
    by_model = await spread.lister.client.stub.GetUsageSummary(req, timeout=10)
    code, out, _ = await ctl("usage", "--group-by", "model", "-o", "json")
    assert code == 0
    assert json_format.Parse(out, orchestrator_pb2.GetUsageSummaryResponse()) == by_model
    code, out, _ = await ctl("usage", "--group-by", "model", "--from", "2000-01-01")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["KEY", "RUNS", "FAILED"]
    assert [ln.split()[0] for ln in lines[1:]] == ["-", *MODELS[::-1], "TOTAL"]
    assert lines[-1].split()[1] == str(by_model.total.runs)
    code, out, _ = await ctl("-o", "json", "list", "--limit", "0", "--meta", "team=ads")
    expected = newest_first(
        {
            g: st
            for g, st in spread.status.items()
            if json_format.MessageToDict(st.metadata)["team"] == "ads"
        }
    )
    assert code == 0 and [g["graph_id"] for g in json.loads(out)] == expected


async def test_runs_by_reference_are_listed_and_filtered_from_the_archive(
    postgres_url: str, make_stack: MakeStack
) -> None:
    await migrate_url(postgres_url)
    stack = await make_stack(postgres_url=postgres_url, retention_s=1)
    c = stack.client
    stub = definitions_pb2_grpc.DefinitionServiceStub(c.channel)
    versions = []
    for x in (1, 2):
        g = request([echo("a", v=x)], name="archived-def").graph
        publish = definitions_pb2.PublishDefinitionRequest(name="arch", graph=g)
        versions.append((await stub.PublishDefinition(publish, timeout=10)).definition)
    runs = {}
    for ref in ("arch@1", "arch@2"):
        gid, st = await c.run(orchestrator_pb2.SubmitGraphRequest(definition=ref))
        runs[ref] = gid
    plain, _ = await c.run(request([echo("a", v=3)], name="archived-def"))

    async def gone_from_redis() -> bool:
        return not any([await stack.in_redis(gid) for gid in [*runs.values(), plain]])

    await eventually(gone_from_redis, timeout=30)
    one = await c.stub.ListGraphs(
        orchestrator_pb2.ListGraphsRequest(definition="arch", definition_version=1), timeout=10
    )
    assert [g.graph_id for g in one.graphs] == [runs["arch@1"]]
    ref = one.graphs[0].definition
    assert (ref.name, ref.version, ref.digest) == ("arch", 1, versions[0].digest)
    both = await c.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(definition="arch"))
    assert [g.graph_id for g in both.graphs] == [runs["arch@2"], runs["arch@1"]]
    st = await c.status(runs["arch@2"])  # from the archive
    assert (st.definition.name, st.definition.version) == ("arch", 2)
