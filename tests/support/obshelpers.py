"""Helpers shared by the observability tests (metrics, traces, logs, health, dead letters)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from dago.v1 import orchestrator_pb2
from harness import (
    Client,
    ProcessStack,
    echo,
    edge,
    edge_healthy,
    envoy_config,
    eventually,
    request,
    start_envoy,
    tool,
)

TOOLS = "testtools,obstools"


@asynccontextmanager
async def envoy(stack: ProcessStack, metrics_port: int = 0) -> AsyncIterator[httpx.AsyncClient]:
    """Envoy in front of ``stack``'s API (started already); yields an HTTP client on it."""
    config, port = envoy_config(stack, **({"metrics_port": metrics_port} if metrics_port else {}))
    proc = start_envoy(config, stack.logs / "envoy.log")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20)
    try:
        await edge_healthy(proc, http, stack)
        yield http
    finally:
        await http.aclose()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def marker(tmp: Path, name: str = "poison") -> Path:
    """A marker file: the ``die`` tool kills its worker while it exists."""
    path = tmp / name
    path.write_text("x")
    return path


def poison(mark: Path) -> orchestrator_pb2.SubmitGraphRequest:
    """p (dies while ``mark`` exists) -> after."""
    return request(
        [tool("p", "die", inputs={"marker": str(mark)}), echo("after", x="{{ nodes.p.output }}")],
        [edge("p", "after")],
    )


async def dead_letters(client: Client, timeout: float = 30.0) -> list[orchestrator_pb2.DeadLetter]:
    """The dead letters ``client`` lists, once there is one (a poison's worker died)."""
    found: list[orchestrator_pb2.DeadLetter] = []

    async def dead() -> bool:
        resp = await client.stub.ListDeadLetters(orchestrator_pb2.ListDeadLettersRequest())
        found[:] = resp.dead_letters
        return bool(found)

    await eventually(dead, timeout, 0.1)
    return found
