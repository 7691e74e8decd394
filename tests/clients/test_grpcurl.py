"""grpcurl against a running API (reflection, health, the orchestrator service): what an
operator with no proto files at hand can do."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dago.v1 import execution_pb2
from harness import ROOT, ProcessStack, child_logs, start_api_quickly
from redisfixture import RedisServer

# grpcurl against an API process.
pytestmark = pytest.mark.process

SERVICE = "dago.v1.OrchestratorService"
PAYLOADS = {f.name for f in execution_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields}
GRPCURL = str(Path(sys.executable).parent / "grpcurl")
if not Path(GRPCURL).exists():  # a venv elsewhere: the wrapper package's binary on PATH
    GRPCURL = shutil.which("grpcurl") or GRPCURL


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``grpcurl -plaintext -max-time 20 <args...>``."""
    cmd = [GRPCURL, "-plaintext", "-max-time", "20", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)


def call(port: int, method: str, body: str) -> subprocess.CompletedProcess[str]:
    """grpcurl -d <body> 127.0.0.1:<port> dago.v1.OrchestratorService/<method>."""
    data = "@" if body.startswith("@") else body
    stdin = body[1:] if body.startswith("@") else None
    return grpcurl("-d", data, f"127.0.0.1:{port}", f"{SERVICE}/{method}", stdin=stdin)


def json_stream(text: str) -> list[Any]:
    """The JSON documents grpcurl printed one after another."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return out
        doc, pos = decoder.raw_decode(text, pos)
        out.append(doc)


def explain(p: subprocess.CompletedProcess[str], stack: ProcessStack) -> str:
    """A failure message: the command's output and the servers' logs."""
    return f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}\n{child_logs(stack)}"


@pytest.fixture(scope="module")
async def stack(redis_single: RedisServer) -> AsyncIterator[ProcessStack]:
    """One API and one worker for every test of this module."""
    s = ProcessStack(redis_single.url, f"tgrpcurl{secrets.token_hex(3)}")
    try:
        s.start("w1", "worker")
        await start_api_quickly(s)
        yield s
    finally:
        await s.close()


def test_list_shows_every_service(stack: ProcessStack) -> None:
    p = grpcurl(f"127.0.0.1:{stack.port}", "list")
    assert p.returncode == 0, explain(p, stack)
    services = set(p.stdout.split())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= (
        services
    ), explain(p, stack)


def test_describe_shows_the_rpcs(stack: ProcessStack) -> None:
    p = grpcurl(f"127.0.0.1:{stack.port}", "describe", SERVICE)
    assert p.returncode == 0, explain(p, stack)
    assert f"{SERVICE} is a service" in p.stdout, explain(p, stack)
    for rpc in ("SubmitGraph", "WatchGraph", "GetGraphResult", "CancelGraph", "ListGraphs"):
        assert f"rpc {rpc} " in p.stdout, explain(p, stack)
    assert "returns ( stream .dago.v1.WatchGraphResponse )" in p.stdout, explain(p, stack)


def test_health_check(stack: ProcessStack) -> None:
    p = grpcurl(f"127.0.0.1:{stack.port}", "grpc.health.v1.Health/Check")
    assert p.returncode == 0, explain(p, stack)
    assert json.loads(p.stdout) == {"status": "SERVING"}, explain(p, stack)


def test_submit_watch_and_result_of_the_diamond_example(stack: ProcessStack) -> None:
    example = (ROOT / "examples/diamond.json").read_text()
    p = call(stack.port, "SubmitGraph", "@" + example)
    assert p.returncode == 0, explain(p, stack)
    submitted = json.loads(p.stdout)
    gid = submitted["graph_id"]
    assert gid and submitted["created"] is True, explain(p, stack)

    p = call(stack.port, "WatchGraph", json.dumps({"graph_id": gid}))
    assert p.returncode == 0, explain(p, stack)
    events = [doc["event"] for doc in json_stream(p.stdout) if "heartbeat" not in doc["event"]]
    payloads = [next(k for k in ev if k in PAYLOADS) for ev in events]
    assert payloads[0] == "graph_submitted", payloads
    assert payloads[-1] == "graph_completed", payloads
    assert payloads.count("node_completed") == 4, payloads
    assert [int(ev["seq"]) for ev in events] == list(range(1, len(events) + 1))
    assert all(ev["graph_id"] == gid for ev in events)

    p = call(stack.port, "GetGraphResult", json.dumps({"graph_id": gid}))
    assert p.returncode == 0, explain(p, stack)
    result = json.loads(p.stdout)
    assert result["state"] == "GRAPH_STATE_COMPLETED", explain(p, stack)
    assert result["output"] == {"join": {"sides": ["left", "right"], "summary": "graphs: joined"}}


def test_invalid_graph_exits_67_with_the_field_violation(stack: ProcessStack) -> None:
    bad = {
        "graph": {
            "nodes": [{"id": "a", "tool": {"name": "echo"}}],
            "edges": [{"from": "a", "to": "ghost"}],
        }
    }
    p = call(stack.port, "SubmitGraph", json.dumps(bad))
    assert p.returncode == 64 + 3, explain(p, stack)  # grpcurl: 64 + INVALID_ARGUMENT
    assert "InvalidArgument" in p.stderr, explain(p, stack)
    assert "google.rpc.BadRequest" in p.stderr, explain(p, stack)
    assert '"field":"graph.edges[0].to"' in p.stderr.replace(" ", ""), explain(p, stack)
    assert "ghost" in p.stderr, explain(p, stack)
    # The server keeps serving.
    p = grpcurl(f"127.0.0.1:{stack.port}", "grpc.health.v1.Health/Check")
    assert json.loads(p.stdout) == {"status": "SERVING"}, explain(p, stack)
