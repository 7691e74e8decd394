"""The Envoy edge (envoy/envoy.yaml.in) with real clients: a real Envoy in front of a real
API and worker (``ProcessStack``) on free ports. REST with httpx (every route, error mapping,
Envoy's own errors as JSON), Server-Sent Events read by an SSE parsing loop (resume with
``Last-Event-ID`` and ``?after_seq=``), NDJSON, grpcurl and a raw gRPC-Web call through the
Envoy port, ``/metrics``, and ``/health`` following the API down and up."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dago.v1 import orchestrator_pb2
from harness import (
    ROOT,
    Edge,
    alive,
    children,
    dago_env,
    eventually,
    free_port,
    grpc_web_frames,
    start_api_quickly,
)

# Envoy in front of dago processes (edge_stack, or `python -m dago dev`).
pytestmark = [pytest.mark.edge, pytest.mark.process]

GRPCURL = str(Path(sys.executable).parent / "grpcurl")
if not Path(GRPCURL).exists():
    GRPCURL = shutil.which("grpcurl") or GRPCURL
SERVICE = "dago.v1.OrchestratorService"
TERMINAL = {"GRAPH_STATE_COMPLETED", "GRAPH_STATE_FAILED", "GRAPH_STATE_CANCELLED"}


def graph(*nodes: dict[str, Any], edges: list[dict[str, str]] | None = None, **extra: Any) -> Any:
    """A SubmitGraph JSON body."""
    return {"graph": {"name": "edge", "nodes": list(nodes), "edges": edges or []}, **extra}


def echo(node_id: str, **inputs: Any) -> dict[str, Any]:
    return {"id": node_id, "tool": {"name": "echo"}, "inputs": inputs}


def sleep(node_id: str, seconds: float) -> dict[str, Any]:
    return {"id": node_id, "tool": {"name": "sleep"}, "inputs": {"seconds": seconds}}


async def submit(e: Edge, body: Any) -> str:
    r = await e.http.post("/api/v1/graphs", json=body)
    assert r.status_code == 200, (r.status_code, r.text, e.logs())
    gid = r.json()["graph_id"]
    assert gid
    return str(gid)


async def wait_state(e: Edge, gid: str, states: set[str] = TERMINAL) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def done() -> bool:
        r = await e.http.get(f"/api/v1/graphs/{gid}/status")
        assert r.status_code == 200, r.text
        seen.update(r.json()["status"])
        return seen["state"] in states

    await eventually(done, 20, 0.02)
    return seen


def error(r: httpx.Response, http_status: int, code: int) -> dict[str, Any]:
    """The google.rpc.Status JSON of an error response, checked."""
    assert r.status_code == http_status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert body["code"] == code, body
    assert body["message"], body
    assert "Traceback" not in r.text
    return body


def detail(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """The one detail of ``kind`` (e.g. ``google.rpc.BadRequest``) of an error body."""
    found = [d for d in body["details"] if d["@type"] == f"type.googleapis.com/{kind}"]
    assert len(found) == 1, body
    return found[0]


@dataclass
class Sse:
    """One Server-Sent Event."""

    id: str | None
    data: dict[str, Any]
    received: float


async def read_sse(
    e: Edge,
    gid: str,
    *,
    headers: dict[str, str] | None = None,
    query: str = "",
    stop: int = 0,
    heartbeats: bool = False,
) -> list[Sse]:
    """Read ``GET /events`` as SSE: the events (heartbeats only if asked) up to the end of the
    stream, or only the first ``stop`` events (the connection is then dropped)."""
    out: list[Sse] = []
    hdrs = {"accept": "text/event-stream", **(headers or {})}
    url = f"/api/v1/graphs/{gid}/events{query}"
    async with e.http.stream("GET", url, headers=hdrs) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        assert r.headers["content-type"] == "text/event-stream", r.headers
        ev_id: str | None = None
        data: list[str] = []
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                ev_id = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                doc = json.loads("\n".join(data))
                if heartbeats or "heartbeat" not in doc["event"]:
                    out.append(Sse(ev_id, doc["event"], time.monotonic()))
                ev_id, data = None, []
                if stop and len(out) == stop:
                    break
    return out


def kind(event: dict[str, Any]) -> str:
    """The payload kind of an event's JSON (e.g. ``graph_completed``)."""
    keys = set(event) - {"seq", "graph_id", "time", "node_id", "attempt", "iteration", "instance"}
    assert len(keys) == 1, event
    return keys.pop()


# --- unary REST routes ----------------------------------------------------------------------


async def test_submit_status_result_and_event_history(edge_stack: Edge) -> None:
    e = edge_stack
    body = json.loads((ROOT / "examples/diamond.json").read_text())
    r = await e.http.post("/api/v1/graphs", json=body)
    assert r.status_code == 200, r.text
    sub = r.json()
    assert sub["created"] is True and sub["graph_id"], sub
    gid = sub["graph_id"]

    status = await wait_state(e, gid)
    assert status["state"] == "GRAPH_STATE_COMPLETED", status
    assert {n["node_id"] for n in status["nodes"]} == {"start", "left", "right", "join"}

    r = await e.http.get(f"/api/v1/graphs/{gid}/result")
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["state"] == "GRAPH_STATE_COMPLETED"
    assert result["output"] == {"join": {"sides": ["left", "right"], "summary": "graphs: joined"}}

    r = await e.http.get(f"/api/v1/graphs/{gid}")
    assert r.status_code == 200, r.text
    assert r.json()["graph"]["name"] == body["graph"]["name"]

    # The stored event log, in pages of 4.
    seqs: list[int] = []
    token = ""
    pages = 0
    while True:
        r = await e.http.get(
            f"/api/v1/graphs/{gid}/events/history", params={"page_size": 4, "page_token": token}
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["events"]) <= 4
        seqs += [int(ev["seq"]) for ev in page["events"]]
        pages += 1
        token = page["next_page_token"]
        if not token:
            break
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 10, seqs
    assert pages >= 3


async def test_result_while_running_then_cancel_then_cancel_finished(edge_stack: Edge) -> None:
    e = edge_stack
    gid = await submit(
        e, graph(sleep("s", 30), echo("after", x=1), edges=[{"from": "s", "to": "after"}])
    )
    await wait_state(e, gid, {"GRAPH_STATE_RUNNING"})

    body = error(await e.http.get(f"/api/v1/graphs/{gid}/result"), 400, 9)  # FAILED_PRECONDITION
    violation = detail(body, "google.rpc.PreconditionFailure")["violations"][0]
    assert violation["type"] == "GRAPH_NOT_FINISHED" and violation["subject"] == gid, body

    r = await e.http.post(f"/api/v1/graphs/{gid}/cancel", json={"reason": "edge test"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "GRAPH_STATE_CANCELLED"
    r = await e.http.post(f"/api/v1/graphs/{gid}/cancel", json={})  # retried: succeeds again
    assert r.status_code == 200 and r.json()["state"] == "GRAPH_STATE_CANCELLED", r.text

    done = await submit(e, graph(echo("a", x=1)))
    await wait_state(e, done)
    body = error(await e.http.post(f"/api/v1/graphs/{done}/cancel", json={}), 400, 9)
    assert detail(body, "google.rpc.PreconditionFailure")["violations"][0]["type"] == (
        "GRAPH_FINISHED"
    )


async def test_list_pagination_and_state_filter(edge_stack: Edge) -> None:
    e = edge_stack
    ids = [await submit(e, graph(echo("a", n=i))) for i in range(5)]
    cancelled = await submit(e, graph(sleep("s", 30)))
    assert (await e.http.post(f"/api/v1/graphs/{cancelled}/cancel", json={})).status_code == 200
    for gid in ids:
        await wait_state(e, gid)

    listed: list[str] = []
    token = ""
    while True:
        r = await e.http.get("/api/v1/graphs", params={"page_size": 2, "page_token": token})
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["graphs"]) <= 2
        listed += [g["graph_id"] for g in page["graphs"]]
        token = page["next_page_token"]
        if not token:
            break
    assert len(listed) == len(set(listed)), listed
    assert set(ids) | {cancelled} <= set(listed)

    # The filter, with the enum name in any case.
    for state in ("GRAPH_STATE_CANCELLED", "graph_state_cancelled"):
        r = await e.http.get("/api/v1/graphs", params={"state": state, "page_size": 1000})
        assert r.status_code == 200, r.text
        graphs = r.json()["graphs"]
        assert cancelled in {g["graph_id"] for g in graphs}
        assert {g["state"] for g in graphs} == {"GRAPH_STATE_CANCELLED"}
        assert not set(ids) & {g["graph_id"] for g in graphs}


async def test_idempotent_resubmit_with_request_id(edge_stack: Edge) -> None:
    e = edge_stack
    rid = f"edge-{secrets.token_hex(4)}"
    first = await e.http.post("/api/v1/graphs", json=graph(echo("a", x=1), request_id=rid))
    again = await e.http.post("/api/v1/graphs", json=graph(echo("a", x=1), request_id=rid))
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json()["created"] is True and again.json()["created"] is False
    assert first.json()["graph_id"] == again.json()["graph_id"]

    other = await e.http.post("/api/v1/graphs", json=graph(echo("b", x=2), request_id=rid))
    body = error(other, 409, 6)  # ALREADY_EXISTS
    assert detail(body, "google.rpc.ErrorInfo")["reason"] == "REQUEST_ID_REUSED", body


async def test_fork_over_rest(edge_stack: Edge) -> None:
    e = edge_stack
    body = graph(
        echo("a", x="{{ inputs.x }}"),
        echo("b", x="{{ inputs.x }}"),
        edges=[{"from": "a", "to": "b"}],
        inputs={"x": 1},
    )
    gid = await submit(e, body)
    await wait_state(e, gid)
    fork = {"from_nodes": ["b"], "inputs_patch": {"x": 2}}
    r = await e.http.post(f"/api/v1/graphs/{gid}:fork", json={**fork, "dry_run": True})
    assert r.status_code == 200, r.text
    assert r.json()["reused_nodes"] == ["a"] and r.json()["run_nodes"] == ["b"]
    r = await e.http.post(f"/api/v1/graphs/{gid}:fork", json=fork)
    assert r.status_code == 200, r.text
    new = r.json()["graph_id"]
    status = await wait_state(e, new)
    assert status["state"] == "GRAPH_STATE_COMPLETED" and status["forked_from"] == gid
    outputs = {n["node_id"]: (n["output"], n.get("reused", False)) for n in status["nodes"]}
    assert outputs == {"a": ({"x": 1}, True), "b": ({"x": 2}, False)}


# --- errors -----------------------------------------------------------------------------------


async def test_patch_limits_over_rest(edge_stack: Edge) -> None:
    e = edge_stack
    body = graph(sleep("s", 30))
    body["graph"]["limits"] = {"maxCostUsd": 0.5}
    gid = await submit(e, body)
    await wait_state(e, gid, {"GRAPH_STATE_RUNNING"})
    r = await e.http.patch(f"/api/v1/graphs/{gid}/limits", json={"maxCostUsd": 2, "maxTokens": 9})
    assert r.status_code == 200, r.text
    status = r.json()["status"]
    assert status["limits"]["max_cost_usd"] == 2 and status["limits"]["max_tokens"] == "9", status
    assert not r.json().get("resumed")
    body = error(await e.http.patch(f"/api/v1/graphs/{gid}/limits", json={"maxTokens": -1}), 400, 3)
    fields = [v["field"] for v in detail(body, "google.rpc.BadRequest")["field_violations"]]
    assert fields == ["limits.max_tokens"], body
    await e.http.post(f"/api/v1/graphs/{gid}/cancel", json={})


async def test_invalid_graph_is_400_with_field_violations(edge_stack: Edge) -> None:
    e = edge_stack
    bad = graph(echo("a"), edges=[{"from": "a", "to": "ghost"}])
    body = error(await e.http.post("/api/v1/graphs", json=bad), 400, 3)
    violations = detail(body, "google.rpc.BadRequest")["field_violations"]
    assert violations[0]["field"] == "graph.edges[0].to", body
    assert "ghost" in violations[0]["description"], body


async def test_unknown_graph_and_unknown_route_are_404_json(edge_stack: Edge) -> None:
    e = edge_stack
    for path in ("/status", "/result", ""):
        body = error(await e.http.get(f"/api/v1/graphs/no-such-graph{path}"), 404, 5)
        assert "no-such-graph" in body["message"], body
    body = error(await e.http.post("/api/v1/graphs/no-such-graph/cancel", json={}), 404, 5)

    for method, path in (
        ("GET", "/nope"),
        ("GET", "/api/v1/nothing"),
        ("DELETE", "/api/v1/graphs"),
    ):
        body = error(await e.http.request(method, path), 404, 5)
        assert "Could not resolve" in body["message"], body
        assert detail(body, "google.rpc.ErrorInfo")["domain"] == "envoy"


async def test_bad_requests_are_400_json(edge_stack: Edge) -> None:
    e = edge_stack
    body = error(await e.http.get("/api/v1/graphs", params={"colour": "red"}), 400, 3)
    assert 'Could not find field "colour"' in body["message"], body

    body = error(await e.http.get("/api/v1/graphs", params={"page_size": "lots"}), 400, 3)
    assert "page_size" in body["message"], body

    body = error(await e.http.get("/api/v1/graphs", params={"state": "bogus"}), 400, 3)
    assert "bogus" in body["message"], body

    r = await e.http.post(
        "/api/v1/graphs", content=b'{"graph": {', headers={"content-type": "application/json"}
    )
    error(r, 400, 3)

    # A path parameter and a body field naming the same thing must agree.
    r = await e.http.post("/api/v1/graphs/abc/cancel", json={"graph_id": "other"})
    body = error(r, 400, 3)
    assert "conflicting" in body["message"], body


async def test_unknown_body_fields_are_400_naming_each_with_the_nearest_name(
    edge_stack: Edge,
) -> None:
    # Envoy's transcoder drops fields the message does not have: the node used to run
    # without retries. Now refused like a gRPC JSON client refuses it, at any depth.
    e = edge_stack
    typo = graph(echo("a") | {"retyr": {"max_attempts": 3}})
    body = error(await e.http.post("/api/v1/graphs", json=typo), 400, 3)
    [v] = detail(body, "google.rpc.BadRequest")["field_violations"]
    assert v["field"] == "graph.nodes[0].retyr", body
    assert v["description"].startswith(
        'unknown field "retyr" in node "a"; did you mean "retry"? (valid: id, name,'
    ), body
    assert body["message"].startswith("graph.nodes[0].retyr: unknown field"), body

    deeper = graph(
        echo("a"),
        {"id": "b", "tol": {"name": "echo"}, "retry": {"max_atempts": 2}},
        edges=[{"from": "a", "to": "b"}],
        inputz={"x": 1},
    )
    body = error(await e.http.post("/api/v1/graphs", json=deeper), 400, 3)
    found = {
        v["field"]: v["description"]
        for v in detail(body, "google.rpc.BadRequest")["field_violations"]
    }
    assert set(found) == {
        "graph.nodes[1].tol",
        "graph.nodes[1].retry.max_atempts",
        "inputz",
    }, body
    assert 'did you mean "max_attempts"?' in found["graph.nodes[1].retry.max_atempts"]
    assert 'did you mean "inputs"?' in found["inputz"]
    # An unknown enum value is refused by the transcoder itself (it parses enums), by path.
    bad_enum = graph(echo("a") | {"join": "ANY"})
    body = error(await e.http.post("/api/v1/graphs", json=bad_enum), 400, 3)
    assert body["message"].startswith('graph.nodes[0].join: invalid value "ANY"'), body

    # Every REST route with a body: cancel too.
    gid = await submit(e, graph(sleep("s", 30)))
    body = error(await e.http.post(f"/api/v1/graphs/{gid}/cancel", json={"reasn": "x"}), 400, 3)
    [v] = detail(body, "google.rpc.BadRequest")["field_violations"]
    assert v["field"] == "reasn" and 'did you mean "reason"?' in v["description"], body
    r = await e.http.post(f"/api/v1/graphs/{gid}/cancel", json={"reason": "done"})
    assert r.status_code == 200, r.text

    # What the transcoder accepts still passes: camelCase names, enums in any case, a large
    # body (it travels to the API twice), a client's own copy of the body header replaced.
    fine = graph(
        echo("a", blob="x" * 600_000) | {"maxIterations": 0, "join": "join_mode_any"},
        requestId=secrets.token_hex(8),
    )
    r = await e.http.post(
        "/api/v1/graphs",
        json=fine,
        headers={"x-dago-rest-body-bin": "e30="},  # {}
    )
    assert r.status_code == 200, r.text
    sneaky = base64.b64encode(b"{}").decode()
    r = await e.http.post("/api/v1/graphs", json=typo, headers={"x-dago-rest-body-bin": sneaky})
    assert r.status_code == 400 and "retyr" in r.text, r.text


async def test_oversized_body_is_413_json(edge_stack: Edge) -> None:
    e = edge_stack
    huge = graph(echo("a", blob="x" * (2 * 1024 * 1024)))
    body = error(await e.http.post("/api/v1/graphs", json=huge), 413, 3)
    assert detail(body, "google.rpc.ErrorInfo")["reason"] == "REQUEST_TOO_LARGE", body
    # Envoy and the API keep serving.
    assert (await e.http.get("/api/v1/graphs", params={"page_size": 1})).status_code == 200


# --- watch: SSE, NDJSON, JSON array -----------------------------------------------------------

# Node "a" outputs text that looks like an SSE event line: `id:` lines must come only from
# real event lines, never from text inside an event.
TRICKY = 'line\ndata: {"event":{"seq":"99"}}\n\nid: 98\ndata: {"seq":"97"}'
CHAIN = graph(
    echo("a", x=TRICKY),
    sleep("b", 0.3),
    sleep("c", 0.3),
    echo("d", x=2),
    edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "c", "to": "d"}],
)


async def test_sse_watch_streams_every_event_live_with_ids(edge_stack: Edge) -> None:
    e = edge_stack
    gid = await submit(e, CHAIN)
    events = await read_sse(e, gid)
    kinds = [kind(s.data) for s in events]
    assert kinds[0] == "graph_submitted" and kinds[-1] == "graph_completed", kinds
    assert kinds.count("node_completed") == 4, kinds
    seqs = [int(s.data["seq"]) for s in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    # `id:` is the event's seq (added by the Lua filter), so EventSource can resume.
    assert [s.id for s in events] == [str(n) for n in seqs]
    outputs = [
        s.data["node_completed"]["output"] for s in events if kind(s.data) == "node_completed"
    ]
    assert {"x": TRICKY} in outputs, outputs
    # Streamed as they happen, not buffered until the end (two 0.3 s sleeps in between).
    assert events[-1].received - events[0].received > 0.4
    # The same events as the stored log.
    r = await e.http.get(f"/api/v1/graphs/{gid}/events/history", params={"page_size": 1000})
    assert [int(ev["seq"]) for ev in r.json()["events"]] == seqs


async def test_quiet_watch_is_kept_open_by_heartbeats(edge_stack: Edge) -> None:
    """Envoy's stream idle timeout is 1 s here; a node sleeping 2.5 s sends no event, yet the
    stream lives on through dago's heartbeats and ends with the graph."""
    e = edge_stack
    gid = await submit(e, graph(sleep("s", 2.5)))
    events = await read_sse(e, gid, heartbeats=True)
    kinds = [kind(s.data) for s in events]
    assert kinds[-1] == "graph_completed", kinds
    assert kinds.count("heartbeat") >= 3, kinds
    # A heartbeat's id is the seq of the last event sent, so resuming from it loses nothing.
    for s in events:
        assert s.id == s.data["seq"], s


async def test_sse_reconnect_with_last_event_id_or_after_seq_gets_the_rest_once(
    edge_stack: Edge,
) -> None:
    e = edge_stack
    gid = await submit(e, CHAIN)
    first = await read_sse(e, gid, stop=3)  # drop the connection mid-run
    last_id = first[-1].id
    assert last_id == "3", [s.id for s in first]
    rest = await read_sse(e, gid, headers={"last-event-id": last_id})
    seqs = [int(s.data["seq"]) for s in first + rest]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # every event once, in order
    assert kind(rest[-1].data) == "graph_completed"

    again = await read_sse(e, gid, query="?after_seq=3")
    assert [s.data for s in again] == [s.data for s in rest]
    # An explicit cursor wins over the header.
    tail = await read_sse(e, gid, headers={"last-event-id": "1"}, query=f"?after_seq={seqs[-2]}")
    assert [int(s.data["seq"]) for s in tail] == [seqs[-1]]


async def test_ndjson_and_json_array_watch(edge_stack: Edge) -> None:
    e = edge_stack
    gid = await submit(e, graph(echo("a", x=1)))
    await wait_state(e, gid)
    url = f"/api/v1/graphs/{gid}/events"

    r = await e.http.get(url, headers={"accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    # The type asked for (Envoy's transcoder alone says application/json).
    assert r.headers["content-type"] == "application/x-ndjson", r.headers
    lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    ndjson = [d["event"] for d in lines if "heartbeat" not in d["event"]]
    assert kind(ndjson[-1]) == "graph_completed"

    # An error before the stream starts is a JSON Status, whatever was asked for.
    body = error(
        await e.http.get(
            "/api/v1/graphs/no-such-graph/events", headers={"accept": "application/x-ndjson"}
        ),
        404,
        5,
    )
    assert "no-such-graph" in body["message"], body

    r = await e.http.get(url, params={"after_seq": 1})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    array = [d["event"] for d in r.json() if "heartbeat" not in d["event"]]
    assert array == ndjson[1:]


async def test_run_graph_over_rest_streams_the_new_run_as_sse_ndjson_or_json(
    edge_stack: Edge,
) -> None:
    """POST /api/v1/graphs:run: the submission and its events in one request, in the three
    forms of the watch route; the same request_id streams the same run again."""
    e = edge_stack
    body = graph(echo("a", x=1), echo("b", y="{{ nodes.a.output.x }}"), request_id="rest-run")
    body["graph"]["edges"] = [{"from": "a", "to": "b"}]
    hdrs = {"accept": "text/event-stream"}
    sse: list[tuple[str | None, dict[str, Any]]] = []
    async with e.http.stream("POST", "/api/v1/graphs:run", json=body, headers=hdrs) as r:
        assert r.status_code == 200, (r.status_code, await r.aread(), e.logs())
        assert r.headers["content-type"] == "text/event-stream", r.headers
        ev_id: str | None = None
        async for line in r.aiter_lines():
            if line.startswith("id:"):
                ev_id = line[3:].strip()
            elif line.startswith("data:"):
                event = json.loads(line[5:])["event"]
                if "heartbeat" not in event:
                    sse.append((ev_id, event))
    events = [ev for _, ev in sse]
    assert kind(events[0]) == "graph_submitted" and kind(events[-1]) == "graph_completed"
    gid = events[0]["graph_id"]
    assert [i for i, _ in sse] == [ev["seq"] for ev in events]  # resumable by seq
    assert (await wait_state(e, gid))["state"] == "GRAPH_STATE_COMPLETED"

    r = await e.http.post(
        "/api/v1/graphs:run", json=body, headers={"accept": "application/x-ndjson"}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-ndjson", r.headers
    lines = [json.loads(line)["event"] for line in r.text.splitlines() if line.strip()]
    assert [ev for ev in lines if "heartbeat" not in ev] == events

    r = await e.http.post("/api/v1/graphs:run", json=body)
    assert r.status_code == 200, r.text
    assert [d["event"] for d in r.json() if "heartbeat" not in d["event"]] == events

    # Refused before anything runs: a typo in the body, an invalid graph.
    typo = graph({"id": "a", "tool": {"name": "echo"}, "retyr": {"max_attempts": 2}})
    v = detail(
        error(await e.http.post("/api/v1/graphs:run", json=typo, headers=hdrs), 400, 3),
        "google.rpc.BadRequest",
    )
    assert v["field_violations"][0]["field"] == "graph.nodes[0].retyr", v
    bad = graph(echo("a"), edges=[{"from": "a", "to": "nowhere"}])
    error(await e.http.post("/api/v1/graphs:run", json=bad, headers=hdrs), 400, 3)


# --- gRPC, gRPC-Web, CORS, metrics, health ---------------------------------------------------


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext", "-max-time", "20", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)


async def test_grpcurl_through_envoy(edge_stack: Edge) -> None:
    e = edge_stack
    target = f"127.0.0.1:{e.port}"
    p = grpcurl(target, "list")
    assert p.returncode == 0, (p.stderr, e.logs())
    assert {SERVICE, "grpc.health.v1.Health"} <= set(p.stdout.split()), p.stdout

    body = json.dumps(graph(echo("a", x=1)))
    p = grpcurl("-d", "@", target, f"{SERVICE}/SubmitGraph", stdin=body)
    assert p.returncode == 0, (p.stderr, e.logs())
    gid = json.loads(p.stdout)["graph_id"]
    assert (await wait_state(e, gid))["state"] == "GRAPH_STATE_COMPLETED"

    # RunGraph: the run's events, streamed through Envoy.
    p = grpcurl("-d", "@", target, f"{SERVICE}/RunGraph", stdin=body)
    assert p.returncode == 0, (p.stderr, e.logs())
    decoder = json.JSONDecoder()
    text, pos, events = p.stdout, 0, []
    while text[pos:].strip():
        msg, end = decoder.raw_decode(text, len(text) - len(text[pos:].lstrip()))
        events.append(msg["event"])
        pos = end
    assert kind(events[0]) == "graph_submitted" and kind(events[-1]) == "graph_completed"


async def test_grpc_web_unary_call(edge_stack: Edge) -> None:
    e = edge_stack
    gid = await submit(e, graph(echo("a", x=1)))
    req = orchestrator_pb2.GetGraphStatusRequest(graph_id=gid).SerializeToString()
    headers = {
        "content-type": "application/grpc-web+proto",
        "x-grpc-web": "1",
        "origin": "http://localhost:5173",
    }
    r = await e.http.post(
        f"/{SERVICE}/GetGraphStatus", content=struct.pack(">BI", 0, len(req)) + req, headers=headers
    )
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/grpc-web"), r.headers
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
    messages, trailers = grpc_web_frames(r.content)
    assert trailers.get("grpc-status") == "0", trailers
    resp = orchestrator_pb2.GetGraphStatusResponse.FromString(messages[0])
    assert resp.status.graph_id == gid

    # An error travels as grpc-status in the trailers (here trailers-only, as headers).
    req = orchestrator_pb2.GetGraphStatusRequest(graph_id="nope").SerializeToString()
    r = await e.http.post(
        f"/{SERVICE}/GetGraphStatus", content=struct.pack(">BI", 0, len(req)) + req, headers=headers
    )
    _, trailers = grpc_web_frames(r.content)
    assert (r.headers.get("grpc-status") or trailers.get("grpc-status")) == "5", (
        r.headers,
        r.content,
    )


async def test_cors_preflight_for_allowed_origins_only(edge_stack: Edge) -> None:
    e = edge_stack
    pre = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-grpc-web",
    }
    for origin in ("http://localhost:3000", "https://app.example"):
        r = await e.http.options(f"/{SERVICE}/SubmitGraph", headers={**pre, "origin": origin})
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.headers["access-control-allow-origin"] == origin
        assert "x-grpc-web" in r.headers["access-control-allow-headers"]
    r = await e.http.options(
        f"/{SERVICE}/SubmitGraph", headers={**pre, "origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in r.headers, r.headers


async def test_metrics_are_prometheus_text(edge_stack: Edge) -> None:
    r = await edge_stack.http.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert "process_cpu_seconds_total" in r.text


async def test_grpc_web_text_and_grpcurl_describe_and_watch_through_envoy(edge_stack: Edge) -> None:
    e = edge_stack
    target = f"127.0.0.1:{e.port}"
    p = grpcurl(target, "describe", SERVICE)
    assert p.returncode == 0 and "rpc WatchGraph " in p.stdout, (p.stdout, p.stderr)

    gid = await submit(e, graph(echo("a", x=1)))
    p = grpcurl("-d", json.dumps({"graph_id": gid}), target, f"{SERVICE}/WatchGraph")
    assert p.returncode == 0, (p.stderr, e.logs())
    assert '"graph_completed"' in p.stdout or '"graphCompleted"' in p.stdout, p.stdout

    # gRPC-Web text (base64 frames), as browsers without binary support send it.
    req = orchestrator_pb2.GetGraphStatusRequest(graph_id=gid).SerializeToString()
    r = await e.http.post(
        f"/{SERVICE}/GetGraphStatus",
        content=base64.b64encode(struct.pack(">BI", 0, len(req)) + req),
        headers={
            "content-type": "application/grpc-web-text",
            "accept": "application/grpc-web-text",
            "x-grpc-web": "1",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/grpc-web-text"), r.headers
    # Each frame may be base64-encoded on its own: decode the padded pieces one by one.
    raw = b"".join(base64.b64decode(p) for p in re.findall(rb"[A-Za-z0-9+/]+=*", r.content))
    messages, trailers = grpc_web_frames(raw)
    assert trailers.get("grpc-status") == "0", trailers
    assert orchestrator_pb2.GetGraphStatusResponse.FromString(messages[0]).status.graph_id == gid


async def test_health_follows_the_api_down_and_up(edge_stack: Edge) -> None:
    """Last in this module: it kills and restarts the API."""
    e = edge_stack
    r = await e.http.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "SERVING"}, r.text

    e.stack.signal("api")  # SIGKILL
    t0 = time.monotonic()

    async def status_is(code: int) -> bool:
        return (await e.http.get("/health")).status_code == code

    await eventually(lambda: status_is(503), 10, 0.05)
    assert time.monotonic() - t0 < 10
    r = await e.http.get("/health")
    assert r.json() == {"status": "NOT_SERVING"}, r.text
    # REST answers a JSON 503 meanwhile, not a hang or an HTML page.
    error(await e.http.get("/api/v1/graphs"), 503, 14)

    await start_api_quickly(e.stack)
    t0 = time.monotonic()
    await eventually(lambda: status_is(200), 10, 0.05)
    assert time.monotonic() - t0 < 5
    assert (await e.http.get("/api/v1/graphs", params={"page_size": 1})).status_code == 200


# --- make run (dago dev) with the edge --------------------------------------------------------


def start_dev(log: Path, **env: str) -> subprocess.Popen[bytes]:
    """``python -m dago dev`` in its own session, on free ports."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dago", "dev"],
            env=dago_env(
                DAGO_GRPC_PORT=str(free_port()), DAGO_METRICS_PORT=str(free_port()), **env
            ),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def stop_dev(dev: subprocess.Popen[bytes], output: Callable[[], str]) -> None:
    """SIGINT (Ctrl-C) and wait for a clean exit."""
    dev.send_signal(signal.SIGINT)

    async def exited() -> bool:
        return dev.poll() is not None

    await eventually(exited, 30, 0.05)
    assert dev.returncode == 0, output()


@contextlib.asynccontextmanager
async def running_dev(
    name: str, **env: str
) -> AsyncIterator[tuple[subprocess.Popen[bytes], Callable[[], str]]]:
    """:func:`start_dev` (its log in a new folder ``dago-test-dev-<name>-*``), once it printed
    its banner and still runs: (the process, a function returning its output so far). It is
    SIGKILLed after, with its session, unless it exited."""
    log = Path(tempfile.mkdtemp(prefix=f"dago-test-dev-{name}-")) / "dev.log"
    dev = start_dev(log, **env)

    def output() -> str:
        return log.read_text(errors="replace")

    try:

        async def banner() -> bool:
            return "Ctrl-C stops everything" in output() or dev.poll() is not None

        await eventually(banner, 30, 0.05)
        assert dev.poll() is None, output()
        yield dev, output
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()


@pytest.mark.redis
async def test_make_run_serves_rest_through_envoy_and_stops_it() -> None:
    port = free_port()
    async with running_dev("edge", DAGO_EDGE_PORT=str(port)) as (dev, output):
        assert f"http://localhost:{port}/api/v1/graphs" in output()
        assert "curl -sN -H 'accept: text/event-stream'" in output()
        envoys = [pid for pid, cmd in children(dev.pid).items() if "envoy" in cmd]
        assert len(envoys) == 1, (children(dev.pid), output())

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:

            async def healthy() -> bool:
                return (await http.get("/health")).status_code == 200

            await eventually(healthy, 10, 0.05)
            r = await http.post(
                "/api/v1/graphs", content=(ROOT / "examples/diamond.json").read_bytes()
            )
            assert r.status_code == 200, (r.text, output())
            gid = r.json()["graph_id"]
            url = f"/api/v1/graphs/{gid}/events"
            r = await http.get(url, headers={"accept": "text/event-stream"})
            assert r.status_code == 200, r.text
            assert "graph_completed" in r.text.strip().split("\n\n")[-1], r.text

        await stop_dev(dev, output)
        assert not alive(envoys[0]), output()
        assert "Traceback" not in output(), output()


@pytest.mark.redis
async def test_make_run_with_the_edge_port_busy_says_so_and_serves_grpc() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        async with running_dev("busy", DAGO_EDGE_PORT=str(port)) as (dev, output):
            assert f"port {port} is busy" in output(), output()
            assert "REST       off" in output(), output()
            assert not [c for c in children(dev.pid).values() if "envoy" in c]
            grpc_port = int(output().split("gRPC API   127.0.0.1:")[1].split()[0])
            p = grpcurl(f"127.0.0.1:{grpc_port}", "grpc.health.v1.Health/Check")
            assert json.loads(p.stdout) == {"status": "SERVING"}, (p.stderr, output())
            await stop_dev(dev, output)


async def test_waits_and_signals_over_rest_and_grpc_web(edge_stack: Edge) -> None:
    e = edge_stack
    review = {
        "id": "review",
        "wait": {"prompt": "ok {{ nodes.a.output.x }}?", "decisions": ["yes", "no"]},
    }
    body = graph(
        echo("a", x=1), review, {"id": "hold", "wait": {}},
        edges=[{"from": "a", "to": "review"}, {"from": "review", "to": "hold"}],
    )  # fmt: skip
    gid = await submit(e, body)
    listed: list[dict[str, Any]] = []

    async def waiting() -> bool:
        r = await e.http.get("/api/v1/waits", params={"page_size": 1000})
        assert r.status_code == 200, r.text
        listed[:] = [w for w in r.json().get("waits", []) if w["graph_id"] == gid]
        return bool(listed)

    await eventually(waiting, 20, 0.05)
    (w,) = listed
    assert (w["node_id"], w["prompt"], w["decisions"], w["iteration"]) == (
        "review",
        "ok 1?",
        ["yes", "no"],
        1,
    )
    assert w["graph_name"] == "edge" and w["since"].endswith("Z")
    # One run's waits: ?graph_id=
    r = await e.http.get("/api/v1/waits", params={"graph_id": gid})
    assert r.status_code == 200, r.text
    assert [x["node_id"] for x in r.json()["waits"]] == ["review"], r.text

    url = f"/api/v1/graphs/{gid}/nodes/review:signal"
    bad = error(await e.http.post(url, json={"decision": "maybe"}), 400, 3)  # INVALID_ARGUMENT
    assert detail(bad, "google.rpc.BadRequest")["field_violations"][0]["field"] == "decision", bad
    r = await e.http.post(
        url, json={"decision": "yes", "payload": {"n": [1]}, "signal_id": "rest-1"}
    )
    assert r.status_code == 200, r.text
    won = r.json()
    assert (won["decision"], won["signal_id"], won["iteration"]) == ("yes", "rest-1", 1), won
    again = await e.http.post(
        url, json={"decision": "yes", "payload": {"n": [1]}, "signal_id": "rest-1"}
    )
    assert again.status_code == 200 and again.json() == won, again.text
    lost = error(await e.http.post(url, json={"decision": "no"}), 409, 10)  # ABORTED
    info = detail(lost, "google.rpc.ErrorInfo")
    assert info["reason"] == "SIGNAL_CONFLICT" and info["metadata"]["decision"] == "yes", lost

    # gRPC-Web: the same call a browser makes, for the wait after it.
    async def hold_waits() -> bool:
        st = await wait_state(e, gid, {"GRAPH_STATE_RUNNING"})
        return any(
            n["node_id"] == "hold" and n["state"] == "NODE_STATE_WAITING" for n in st["nodes"]
        )

    await eventually(hold_waits, 20, 0.05)
    req = orchestrator_pb2.SignalGraphRequest(graph_id=gid, node_id="hold", decision="approve")
    raw = req.SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    r = await e.http.post(
        f"/{SERVICE}/SignalGraph", content=struct.pack(">BI", 0, len(raw)) + raw, headers=headers
    )
    messages, trailers = grpc_web_frames(r.content)
    assert trailers.get("grpc-status") == "0", (r.headers, trailers)
    assert orchestrator_pb2.SignalGraphResponse.FromString(messages[0]).decision == "approve"
    st = await wait_state(e, gid)
    assert st["state"] == "GRAPH_STATE_COMPLETED", st


async def test_an_agent_tool_call_approval_over_rest(edge_stack: Edge) -> None:
    e = edge_stack
    # The offline model calls each tool once, then answers from the results.
    helper = {
        "id": "helper",
        "agent": {
            "llm": {"provider": "offline", "prompt": "say hi"},
            "tools": ["sleep"],
            "approval_required_tools": ["sl*"],
        },
    }
    gid = await submit(e, graph(helper))
    listed: list[dict[str, Any]] = []

    async def waiting() -> bool:
        r = await e.http.get("/api/v1/waits", params={"graph_id": gid})
        assert r.status_code == 200, r.text
        listed[:] = r.json().get("waits", [])
        return bool(listed)

    await eventually(waiting, 20, 0.05)
    (w,) = listed
    assert w["display"]["tool"] == "sleep" and w["decisions"] == ["approve", "reject", "edit"], w
    url = f"/api/v1/graphs/{gid}/nodes/helper:signal"
    bad = error(
        await e.http.post(url, json={"decision": "edit", "payload": {"seconds": -1}}), 400, 3
    )
    assert detail(bad, "google.rpc.BadRequest")["field_violations"][0]["field"] == "payload", bad
    r = await e.http.post(
        url,
        json={"decision": "edit", "payload": {"seconds": 0.01}, "tool_call_id": w["display"]["id"]},
    )
    assert r.status_code == 200, r.text
    st = await wait_state(e, gid)
    assert st["state"] == "GRAPH_STATE_COMPLETED", st
    (node,) = st["nodes"]
    assert "0.01" in node["output"]["text"], node  # the tool ran with the edited arguments


async def test_definitions_over_rest(edge_stack: Edge) -> None:
    e = edge_stack
    name = f"rest-{secrets.token_hex(3)}"
    base = f"/api/v1/definitions/{name}"
    body = {"graph": {"name": "g", "nodes": [echo("a", x=1)]}, "description": "one"}
    first = await e.http.post(f"{base}/versions", json=body)
    assert first.status_code == 200, (first.text, e.logs())
    assert first.json()["created"] is True and first.json()["definition"]["version"] == 1
    again = await e.http.post(f"{base}/versions", json=body)
    assert again.json()["created"] is False and again.json()["definition"]["version"] == 1
    body["graph"]["nodes"] = [echo("a", x=2)]
    assert (await e.http.post(f"{base}/versions", json=body)).json()["definition"]["version"] == 2
    r = await e.http.put(f"{base}/labels/prod", json={"version": 1})
    assert r.status_code == 200 and r.json()["definition"]["labels"] == ["prod"], r.text
    got = await e.http.get(f"{base}/versions/prod")
    assert got.status_code == 200 and got.json()["definition"]["version"] == 1, got.text
    assert (await e.http.get(f"{base}/versions/latest")).json()["definition"]["version"] == 2
    listed = (await e.http.get(f"{base}/versions?page_size=1")).json()
    assert [v["version"] for v in listed["versions"]] == [2] and listed["next_page_token"]
    names = [d["name"] for d in (await e.http.get("/api/v1/definitions")).json()["definitions"]]
    assert name in names
    # Submit by reference; the run records what it ran.
    gid = await submit(e, {"definition": f"{name}@prod"})
    st = await wait_state(e, gid)
    assert st["state"] == "GRAPH_STATE_COMPLETED"
    assert (st["definition"]["name"], st["definition"]["version"]) == (name, 1)
    mine = (await e.http.get(f"/api/v1/graphs?definition={name}")).json()["graphs"]
    assert [g["graph_id"] for g in mine] == [gid]
    # Deprecation, errors as google.rpc.Status JSON.
    r = await e.http.post(f"{base}/versions/1:deprecate", json={})
    assert r.status_code == 200 and r.json()["definition"]["deprecated"] is True, r.text
    error(await e.http.post("/api/v1/graphs", json={"definition": f"{name}@1"}), 400, 9)
    missing = error(await e.http.get(f"{base}/versions/7"), 404, 5)
    assert detail(missing, "google.rpc.ResourceInfo")["resource_type"] == "definition version"
    bad = error(await e.http.post("/api/v1/definitions/Bad%20Name/versions", json=body), 400, 3)
    assert detail(bad, "google.rpc.BadRequest")["field_violations"][0]["field"] == "name"
    # A PUT body is checked for unknown fields like a POST body.
    error(await e.http.put(f"{base}/labels/prod", json={"version": 1, "verison": 2}), 400, 3)
    # DELETE removes a label; a second DELETE is NOT_FOUND.
    r = await e.http.delete(f"{base}/labels/prod")
    assert r.status_code == 200 and r.json()["version"] == 1, r.text
    error(await e.http.delete(f"{base}/labels/prod"), 404, 5)
