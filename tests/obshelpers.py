"""Helpers shared by the observability tests (metrics, traces, logs, health, dead letters)."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from dago import edge
from harness import ROOT, ProcessStack, eventually, free_port

TOOLS = "testtools,obstools"


def _start_envoy(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            edge.command(config, concurrency=1), stdout=out, stderr=subprocess.STDOUT
        )


@asynccontextmanager
async def envoy(stack: ProcessStack, metrics_port: int = 0) -> AsyncIterator[httpx.AsyncClient]:
    """Envoy in front of ``stack``'s API (started already); yields an HTTP client on it."""
    port = free_port()
    cfg = edge.EdgeConfig(
        listen_host="127.0.0.1",
        listen_port=port,
        dago_port=stack.port,
        metrics_port=metrics_port or free_port(),
        descriptor=str(ROOT / "gen" / "dago.binpb"),
    )
    config = stack.logs / "envoy.yaml"
    config.write_text(edge.render(cfg))
    proc = _start_envoy(config, stack.logs / "envoy.log")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20)
    try:

        async def up() -> bool:
            assert proc.poll() is None, (stack.logs / "envoy.log").read_text()
            try:
                return (await http.get("/health")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(up, 20, 0.05)
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
