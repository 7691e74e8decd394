"""The Go client (clients/go), generated from proto/dago by buf with Debian's protoc-gen-go and
protoc-gen-go-grpc and built offline against Debian's grpc-go (clients/go/build.sh: GOPATH mode
on /usr/share/gocode), run against real stacks: it submits a graph, watches it to the terminal
event and reads the result, on the API's port and through Envoy; it sends the API key as
`authorization: Bearer` metadata to an API that requires keys; and it decodes the
google.rpc.BadRequest of a rejected graph.

A machine without the Go toolchain fails here (never skips), naming the packages to install
(.ci/run installs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from genclients import (
    BAD_REQUEST,
    REQUEST,
    SLOW_REQUEST,
    check_rejected,
    check_run,
    check_unauthenticated,
    keyed_stack,
    run_across_api_restart,
)
from harness import ROOT, Edge, ProcessStack, RunningStack, child_logs, start_api_quickly
from redisfixture import RedisServer

# go (vet, build) and the client it builds run as processes.
pytestmark = pytest.mark.process

BUILD = ROOT / "clients" / "go" / "build.sh"
PACKAGES = (
    "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-github-golang-protobuf-1-5-dev"
)
# Go's build cache, kept between sessions: a warm build takes 1-2 s, a cold one 10-25 s.
GOCACHE = Path(os.environ.get("DAGO_TEST_GOCACHE", "/tmp/dago-test-gocache"))
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clients/go/build.sh into a temporary folder: the dago-example binary."""
    missing = [t for t in ("go", "protoc-gen-go", "protoc-gen-go-grpc") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: install {PACKAGES} (see .ci/run)")
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
def requests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """REQUEST, BAD_REQUEST and SLOW_REQUEST as files: {"good": ..., "bad": ..., "slow": ...}."""
    folder = tmp_path_factory.mktemp("go-requests")
    out = {n: folder / f"{n}.json" for n in ("good", "bad", "slow")}
    out["good"].write_text(json.dumps(REQUEST))
    out["bad"].write_text(json.dumps(BAD_REQUEST))
    out["slow"].write_text(json.dumps(SLOW_REQUEST))
    return out


@pytest.fixture(scope="module")
async def keyed(redis_single: RedisServer) -> AsyncIterator[tuple[ProcessStack, str]]:
    async with keyed_stack(redis_single.url, "team-go") as stack_and_key:
        yield stack_and_key


def argv_env(
    binary: Path, target: str, request: Path, api_key: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The example's command line and environment (no DAGO_ setting but the key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
    if api_key is not None:
        env["DAGO_API_KEY"] = api_key
    argv = [str(binary), "-target", target, "-timeout", f"{RUN_TIMEOUT_S - 5}s", str(request)]
    return argv, env


def run_client(
    binary: Path, target: str, request: Path, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv, env = argv_env(binary, target, request, api_key)
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def test_go_client_on_the_api_port(
    go_client: Path, requests: dict[str, Path], edge_stack: Edge
) -> None:
    target = f"127.0.0.1:{edge_stack.stack.port}"
    check_run(run_client(go_client, target, requests["good"]), edge_stack.logs())


def test_go_client_through_envoy(
    go_client: Path, requests: dict[str, Path], edge_stack: Edge
) -> None:
    # Envoy alone listens there: native gRPC (HTTP/2) shares its port with gRPC-Web and REST,
    # and heartbeats keep the watch open across its 1 s stream idle timeout.
    target = f"127.0.0.1:{edge_stack.port}"
    check_run(run_client(go_client, target, requests["good"]), edge_stack.logs())


def test_go_client_sends_the_api_key(
    go_client: Path, requests: dict[str, Path], keyed: tuple[ProcessStack, str]
) -> None:
    stack, key = keyed
    target = f"127.0.0.1:{stack.port}"
    check_run(run_client(go_client, target, requests["good"], api_key=key), child_logs(stack))
    check_unauthenticated(run_client(go_client, target, requests["good"]))


def test_go_client_prints_the_field_violations(
    go_client: Path, requests: dict[str, Path], edge_stack: Edge
) -> None:
    check_rejected(run_client(go_client, f"127.0.0.1:{edge_stack.stack.port}", requests["bad"]))


async def test_go_client_resumes_the_watch_when_the_api_restarts(
    go_client: Path, requests: dict[str, Path], redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        argv, env = argv_env(go_client, f"127.0.0.1:{stack.port}", requests["slow"])
        await run_across_api_restart(argv, env, stack)
