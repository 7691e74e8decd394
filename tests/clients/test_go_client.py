"""The Go client (clients/go), generated from proto/dago by buf with Debian's protoc-gen-go and
protoc-gen-go-grpc and built offline against Debian's grpc-go (clients/go/build.sh, GOPATH
mode on /usr/share/gocode), run against real stacks: it submits a graph, watches it to the
terminal event and reads the result, on the API's port and through Envoy; it sends the API key
as `authorization: Bearer` metadata to an API that requires keys; and it decodes the
google.rpc.BadRequest details of a rejected graph.

A machine without the Go toolchain fails here (never skips), naming the packages to install
(.ci/run installs them)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dago.api.auth import hash_key, new_key
from harness import ROOT, Edge, ProcessStack, child_logs, start_api_quickly
from redisfixture import RedisServer

# go (build, vet) and the client it builds run as processes.
pytestmark = pytest.mark.process

BUILD = ROOT / "clients" / "go" / "build.sh"
PACKAGES = (
    "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-github-golang-protobuf-1-5-dev"
)
# Go's build cache, kept between sessions: a warm build takes about a second, a cold one ~10 s.
GOCACHE = Path(os.environ.get("DAGO_TEST_GOCACHE", "/tmp/dago-test-gocache"))
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60
TOPIC = "gophers"
REQUEST = {
    "graph": {
        "name": "go-client",
        "nodes": [
            {"id": "start", "tool": {"name": "echo"}, "inputs": {"topic": "{{ inputs.topic }}"}},
            {
                "id": "write",
                "llm": {
                    "provider": "offline",
                    "prompt": "Write one line about {{ nodes.start.output.topic }}.",
                    "max_tokens": 60,
                },
            },
        ],
        "edges": [{"from": "start", "to": "write"}],
        "output": {
            "topic": "nodes.start.output.topic",
            "text": "nodes.write.output.text",
            "provider": "nodes.write.output.provider",
        },
    },
    "inputs": {"topic": TOPIC},
}
TERMINAL = ("graph_completed", "graph_failed", "graph_cancelled")


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go/build.sh into a temporary folder: the dago-example binary."""
    missing = [t for t in ("go", "protoc-gen-go", "protoc-gen-go-grpc") if not shutil.which(t)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not on PATH: install {PACKAGES} (see .ci/run); "
            "the Go client is built with them"
        )
    out = tmp_path_factory.mktemp("go")
    started = time.monotonic()
    p = subprocess.run(
        ["bash", str(BUILD), str(out)],
        env={**os.environ, "GOCACHE": str(GOCACHE)},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert p.returncode == 0, f"{BUILD} exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    print(f"clients/go/build.sh: {time.monotonic() - started:.1f}s (GOCACHE={GOCACHE})")
    binary = out / "bin" / "dago-example"
    assert binary.is_file(), p.stdout + p.stderr
    return binary


@pytest.fixture(scope="module")
def request_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("go-request") / "request.json"
    path.write_text(json.dumps(REQUEST))
    return path


@pytest.fixture(scope="module")
async def keyed_stack(redis_single: RedisServer) -> AsyncIterator[tuple[ProcessStack, str]]:
    """API (DAGO_AUTH=keys, one key) + worker: (the stack, the key)."""
    key = new_key()
    stack = ProcessStack(
        redis_single.url,
        f"tgokeys{secrets.token_hex(3)}",
        DAGO_AUTH="keys",
        DAGO_API_KEYS=f"{hash_key(key)}:team-go",
    )
    try:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        yield stack, key
    finally:
        await stack.close()


def run_client(
    binary: Path, target: str, request: Path, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
    if api_key is not None:
        env["DAGO_API_KEY"] = api_key
    return subprocess.run(
        [str(binary), "-target", target, "-timeout", f"{RUN_TIMEOUT_S - 5}s", str(request)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def lines_of(p: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The JSON objects the client printed, one a line."""
    return [json.loads(line) for line in p.stdout.splitlines()]


def payload(event: dict[str, Any]) -> str:
    """The name of an Event's payload field (proto names: the client prints UseProtoNames)."""
    plain = {"seq", "graph_id", "time", "node_id", "attempt", "iteration", "trace_id"}
    kinds = [k for k in event if k not in plain]
    assert len(kinds) == 1, event
    return kinds[0]


def check_run(p: subprocess.CompletedProcess[str], why: str) -> str:
    """Assert that the client ran the request to completion; the run's id."""
    assert p.returncode == 0, f"dago-example exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{why}"
    out = lines_of(p)
    assert [next(iter(o)) for o in (out[0], out[-1])] == ["submitted", "result"], p.stdout
    gid = out[0]["submitted"]["graph_id"]
    assert gid and out[0]["submitted"]["created"] is True, p.stdout

    events = [o["event"] for o in out[1:-1]]
    assert all(next(iter(o)) == "event" for o in out[1:-1]), p.stdout
    kinds = [payload(e) for e in events]
    assert kinds[0] == "graph_submitted" and kinds[-1] == "graph_completed", kinds
    assert not set(kinds[:-1]) & set(TERMINAL), kinds
    assert "heartbeat" not in kinds, kinds
    # Each event once, in order (int64 seqs are JSON strings in the proto's JSON form).
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1)), kinds
    assert {e["graph_id"] for e in events} == {gid}
    completed = [e["node_id"] for e in events if payload(e) == "node_completed"]
    assert completed == ["start", "write"], kinds
    streamed = "".join(e["llm_delta"].get("text", "") for e in events if payload(e) == "llm_delta")

    result = out[-1]["result"]
    assert result["graph_id"] == gid
    assert result["state"] == "GRAPH_STATE_COMPLETED", result
    output = result["output"]
    assert output["topic"] == TOPIC and output["provider"] == "offline", output
    # The model's text arrived as llm_delta events and is the result's text.
    assert streamed and output["text"] == streamed, (streamed, output)
    return str(gid)


def test_go_client_on_the_api_port(go_client: Path, request_file: Path, edge_stack: Edge) -> None:
    target = f"127.0.0.1:{edge_stack.stack.port}"
    check_run(run_client(go_client, target, request_file), edge_stack.logs())


def test_go_client_through_envoy(go_client: Path, request_file: Path, edge_stack: Edge) -> None:
    # Envoy alone listens there: native gRPC (HTTP/2) shares its port with gRPC-Web and REST,
    # and the watch stays open across Envoy's 1 s stream idle timeout on heartbeats.
    target = f"127.0.0.1:{edge_stack.port}"
    check_run(run_client(go_client, target, request_file), edge_stack.logs())


def test_go_client_sends_the_api_key(
    go_client: Path, request_file: Path, keyed_stack: tuple[ProcessStack, str]
) -> None:
    stack, key = keyed_stack
    target = f"127.0.0.1:{stack.port}"
    check_run(run_client(go_client, target, request_file, api_key=key), child_logs(stack))

    p = run_client(go_client, target, request_file)
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"
    assert "SubmitGraph: Unauthenticated" in p.stderr, p.stderr
    assert p.stdout == "", p.stdout


def test_go_client_prints_the_field_violations(
    go_client: Path, edge_stack: Edge, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "graph": {
                    "nodes": [{"id": "a", "tool": {"name": "echo"}}],
                    "edges": [{"from": "a", "to": "ghost"}],
                }
            }
        )
    )
    p = run_client(go_client, f"127.0.0.1:{edge_stack.stack.port}", bad)
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"
    assert "SubmitGraph: InvalidArgument" in p.stderr, p.stderr
    # The google.rpc.BadRequest detail, decoded by the Go code (genproto's errdetails).
    details = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("  {")]
    violations = [v for d in details for v in d.get("field_violations", [])]
    assert any(
        v["field"] == "graph.edges[0].to" and "ghost" in v["description"] for v in violations
    ), p.stderr
