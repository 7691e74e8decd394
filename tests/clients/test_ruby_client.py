"""The Ruby client (clients/ruby), generated from proto/dago by buf with protoc's Ruby generator
and Debian's grpc_ruby_plugin and run on Debian's ruby-grpc (clients/ruby/run.sh), against real
stacks: it submits a graph, watches it to the terminal event and reads the result, on the API's
port and through Envoy; it sends the API key as `authorization: Bearer` metadata to an API that
requires keys; and it decodes the google.rpc.BadRequest of a rejected graph.

A machine without Ruby's gRPC packages fails here (never skips), naming the packages to install
(.ci/run installs them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
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

# ruby (and buf, through clients/ruby/run.sh) run as processes.
pytestmark = pytest.mark.process

RUN = ROOT / "clients" / "ruby" / "run.sh"
PACKAGES = "ruby-grpc ruby-grpc-tools ruby-googleapis-common-protos-types protobuf-compiler"
RUN_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def ruby_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder clients/ruby/run.sh generates the Ruby code into (a temporary one)."""
    missing = [t for t in ("ruby", "protoc", "grpc_ruby_plugin") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: install {PACKAGES} (see .ci/run)")
    return tmp_path_factory.mktemp("ruby")


@pytest.fixture(scope="module")
def requests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """REQUEST, BAD_REQUEST and SLOW_REQUEST as files: {"good": ..., "bad": ..., "slow": ...}."""
    folder = tmp_path_factory.mktemp("ruby-requests")
    out = {n: folder / f"{n}.json" for n in ("good", "bad", "slow")}
    out["good"].write_text(json.dumps(REQUEST))
    out["bad"].write_text(json.dumps(BAD_REQUEST))
    out["slow"].write_text(json.dumps(SLOW_REQUEST))
    return out


@pytest.fixture(scope="module")
async def keyed(redis_single: RedisServer) -> AsyncIterator[tuple[ProcessStack, str]]:
    async with keyed_stack(redis_single.url, "team-ruby") as stack_and_key:
        yield stack_and_key


def argv_env(
    out: Path, target: str, request: Path, api_key: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """clients/ruby/run.sh's command line (generate into ``out``, run the example on
    ``request``) and environment (no DAGO_ setting but the key)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
    if api_key is not None:
        env["DAGO_API_KEY"] = api_key
    args = [str(out), "--target", target, "--timeout", str(RUN_TIMEOUT_S - 5), str(request)]
    return ["bash", str(RUN), *args], env


def run_client(
    out: Path, target: str, request: Path, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv, env = argv_env(out, target, request, api_key)
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def test_ruby_client_on_the_api_port(
    ruby_out: Path, requests: dict[str, Path], edge_stack: Edge
) -> None:
    target = f"127.0.0.1:{edge_stack.stack.port}"
    check_run(run_client(ruby_out, target, requests["good"]), edge_stack.logs())


def test_ruby_client_through_envoy(
    ruby_out: Path, requests: dict[str, Path], edge_stack: Edge
) -> None:
    # Envoy alone listens there (native gRPC next to gRPC-Web and REST).
    target = f"127.0.0.1:{edge_stack.port}"
    check_run(run_client(ruby_out, target, requests["good"]), edge_stack.logs())


def test_ruby_client_sends_the_api_key(
    ruby_out: Path, requests: dict[str, Path], keyed: tuple[ProcessStack, str]
) -> None:
    stack, key = keyed
    target = f"127.0.0.1:{stack.port}"
    check_run(run_client(ruby_out, target, requests["good"], api_key=key), child_logs(stack))
    check_unauthenticated(run_client(ruby_out, target, requests["good"]))


def test_ruby_client_prints_the_field_violations(
    ruby_out: Path, requests: dict[str, Path], edge_stack: Edge
) -> None:
    check_rejected(run_client(ruby_out, f"127.0.0.1:{edge_stack.stack.port}", requests["bad"]))


async def test_ruby_client_resumes_the_watch_when_the_api_restarts(
    ruby_out: Path, requests: dict[str, Path], redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        argv, env = argv_env(ruby_out, f"127.0.0.1:{stack.port}", requests["slow"])
        await run_across_api_restart(argv, env, stack)
