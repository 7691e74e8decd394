"""Helpers of the reliability tests (tests/reliability/): Envoy in front of a ProcessStack,
watchers that reconnect and resume from their cursor (gRPC direct or through Envoy, REST
SSE with ``Last-Event-ID``, binary gRPC-Web) and process memory from /proc. The knobs that
make ``make reliability`` run the long variants (``RELIABILITY_FULL=1``) are ``harness.FULL``
and ``harness.knob``, which scale tests elsewhere (the console's big map) use too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
from google.protobuf import json_format

from dago.devtools import edge
from dago.v1 import execution_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from harness import (
    ROOT,
    Client,
    ProcessStack,
    RunningStack,
    envoy_config,
    eventually,
    free_port,
    start_api_quickly,
)

Event = execution_pb2.Event
SERVICE = "dago.v1.OrchestratorService"
TERMINAL_KINDS = {"graph_completed", "graph_failed", "graph_cancelled"}
REPORT_DIR = Path(os.environ.get("RELIABILITY_REPORT_DIR", str(ROOT / "build" / "reliability")))


def kind(ev: Event) -> str:
    """The payload kind of an event."""
    return ev.WhichOneof("payload") or ""


# --- memory ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc/PID/status."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(rest.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


class RssSampler:
    """Samples the RSS of some processes every ``interval`` s in the background."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: dict[str, list[float]] = {name: [] for name in pids}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError, KeyError):
                    self.samples[name].append(rss_mb(pid)[0])
            await asyncio.sleep(self.interval)

    def start(self) -> RssSampler:
        """Start sampling."""
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def peak(self, name: str) -> float:
        """Largest sample of ``name`` (MiB)."""
        return max(self.samples[name], default=0.0)


# --- Envoy -----------------------------------------------------------------------------------


class Envoy:
    """A real Envoy (envoy/envoy.yaml.in rendered) in front of a ProcessStack, restartable on
    the same port. The stack must have been made with ``DAGO_METRICS_PORT=<metrics_port>``."""

    def __init__(self, stack: ProcessStack, metrics_port: int, idle_timeout_s: int = 300) -> None:
        self.stack = stack
        self.config, self.port = envoy_config(
            stack, metrics_port=metrics_port, stream_idle_timeout_s=idle_timeout_s
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start Envoy (its output appended to envoy.log next to the stack's logs)."""
        with (self.stack.logs / "envoy.log").open("ab") as out:
            self.proc = subprocess.Popen(
                edge.command(self.config, concurrency=1), stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        """SIGKILL Envoy and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) Envoy."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def health(self, http: httpx.AsyncClient) -> int:
        """The HTTP status of ``GET /health`` (0 when Envoy does not answer)."""
        try:
            return (await http.get(f"{self.base}/health", timeout=3)).status_code
        except httpx.TransportError:
            return 0

    async def wait_healthy(self, http: httpx.AsyncClient, timeout: float = 30.0) -> None:
        """Wait until ``/health`` answers 200 through Envoy."""

        async def ok() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "envoy exited"
            return await self.health(http) == 200

        await eventually(ok, timeout, 0.05)


@contextlib.asynccontextmanager
async def behind_envoy(
    redis_url: str, prefix: str
) -> AsyncIterator[tuple[RunningStack, Envoy, httpx.AsyncClient]]:
    """API and two workers (w1, w2) as processes with an :class:`Envoy` in front, up and
    healthy: (the stack, Envoy, an HTTP client). Envoy is stopped, the stack closed after."""
    metrics = free_port()
    async with (
        RunningStack(redis_url, prefix, DAGO_METRICS_PORT=str(metrics)) as stack,
        httpx.AsyncClient() as http,
    ):
        envoy = Envoy(stack, metrics)
        try:
            stack.start("w1", "worker")
            stack.start("w2", "worker")
            await start_api_quickly(stack)
            envoy.start()
            await envoy.wait_healthy(http)
            yield stack, envoy, http
        finally:
            envoy.stop()


# --- watchers that reconnect -----------------------------------------------------------------


@dataclass
class Watched:
    """What one reconnecting watcher saw."""

    graph_id: str
    how: str
    events: list[Event] = field(default_factory=list)
    connects: int = 0
    errors: list[str] = field(default_factory=list)
    finished_at: float = 0.0

    @property
    def cursor(self) -> int:
        """The seq of the last event received (0: none yet)."""
        return self.events[-1].seq if self.events else 0

    @property
    def done(self) -> bool:
        """True once the terminal event arrived."""
        return bool(self.events) and kind(self.events[-1]) in TERMINAL_KINDS


RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,  # a connection cut mid-stream can surface as INTERNAL/UNKNOWN
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


async def watch_grpc(
    target: str,
    graph_id: str,
    how: str = "grpc",
    deadline: float = 120.0,
    w: Watched | None = None,
) -> Watched:
    """Watch over native gRPC to the end, reconnecting (a new channel each time) and resuming
    from the last seq received after any transport failure. Events go to ``w`` (new if None),
    so callers can look at them while the watch runs."""
    w = w or Watched(graph_id, how)
    stop_at = time.monotonic() + deadline
    while not w.done:
        if time.monotonic() > stop_at:
            raise AssertionError(f"{how} watcher of {graph_id} not done: {w.errors[-5:]}")
        async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            req = orchestrator_pb2.WatchGraphRequest(graph_id=graph_id, after_seq=w.cursor)
            w.connects += 1
            try:
                async for msg in stub.WatchGraph(req, timeout=max(1.0, stop_at - time.monotonic())):
                    if kind(msg.event) != "heartbeat":
                        w.events.append(msg.event)
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE:
                    raise
                w.errors.append(f"{e.code().name}: {e.details()}")
                await asyncio.sleep(0.1)
    w.finished_at = time.monotonic()
    return w


async def watch_sse(
    base: str, graph_id: str, deadline: float = 120.0, w: Watched | None = None
) -> Watched:
    """Watch ``GET /api/v1/graphs/{id}/events`` as SSE to the end, reconnecting with
    ``Last-Event-ID`` (the id of the last event received) after any failure."""
    w = w or Watched(graph_id, "sse")
    stop_at = time.monotonic() + deadline
    timeout = httpx.Timeout(10.0, read=30.0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        while not w.done:
            if time.monotonic() > stop_at:
                raise AssertionError(f"sse watcher of {graph_id} not done: {w.errors[-5:]}")
            headers = {"accept": "text/event-stream"}
            if w.events:
                headers["last-event-id"] = str(w.cursor)
            w.connects += 1
            try:
                async with http.stream(
                    "GET", f"/api/v1/graphs/{graph_id}/events", headers=headers
                ) as r:
                    if r.status_code != 200:
                        w.errors.append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                        await asyncio.sleep(0.1)
                        continue
                    data: list[str] = []
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif line == "" and data:
                            doc = json.loads("\n".join(data))["event"]
                            data = []
                            if "heartbeat" not in doc:
                                w.events.append(json_format.ParseDict(doc, Event()))
            except (httpx.TransportError, httpx.StreamError) as e:
                w.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.1)
    w.finished_at = time.monotonic()
    return w


def _grpc_web_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop the complete gRPC-Web frames (flags, payload) at the start of ``buf``."""
    out = []
    while len(buf) >= 5:
        flags, length = struct.unpack(">BI", bytes(buf[:5]))
        if len(buf) < 5 + length:
            break
        out.append((flags, bytes(buf[5 : 5 + length])))
        del buf[: 5 + length]
    return out


async def watch_grpc_web(
    base: str, graph_id: str, deadline: float = 120.0, w: Watched | None = None
) -> Watched:
    """Watch through Envoy's gRPC-Web filter (binary ``application/grpc-web+proto``, as the
    TypeScript client sends it) to the end, resuming with ``after_seq`` after any failure."""
    w = w or Watched(graph_id, "grpc-web")
    stop_at = time.monotonic() + deadline
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1"}
    timeout = httpx.Timeout(10.0, read=30.0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as http:
        while not w.done:
            if time.monotonic() > stop_at:
                raise AssertionError(f"grpc-web watcher of {graph_id} not done: {w.errors[-5:]}")
            req = orchestrator_pb2.WatchGraphRequest(graph_id=graph_id, after_seq=w.cursor)
            body = req.SerializeToString()
            w.connects += 1
            try:
                async with http.stream(
                    "POST",
                    f"/{SERVICE}/WatchGraph",
                    content=struct.pack(">BI", 0, len(body)) + body,
                    headers=headers,
                ) as r:
                    buf = bytearray()
                    status = r.headers.get("grpc-status")
                    async for chunk in r.aiter_raw():
                        buf += chunk
                        for flags, payload in _grpc_web_frames(buf):
                            if flags & 0x80:
                                status = _trailer(payload, "grpc-status")
                                continue
                            msg = orchestrator_pb2.WatchGraphResponse.FromString(payload)
                            if kind(msg.event) != "heartbeat":
                                w.events.append(msg.event)
                    if not w.done:
                        w.errors.append(f"HTTP {r.status_code} grpc-status {status}")
                        await asyncio.sleep(0.1)
            except (httpx.TransportError, httpx.StreamError) as e:
                w.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.1)
    w.finished_at = time.monotonic()
    return w


def _trailer(payload: bytes, name: str) -> str:
    for line in payload.decode(errors="replace").split("\r\n"):
        k, _, v = line.partition(":")
        if k.strip().lower() == name:
            return v.strip()
    return ""


def check_watched(w: Watched, stored: list[Event]) -> None:
    """A watcher saw the stored history exactly: every event once, in order, equal."""
    seqs = [e.seq for e in w.events]
    assert seqs == list(range(1, len(stored) + 1)), (w.how, w.graph_id, seqs, w.errors)
    assert w.events == stored, (w.how, w.graph_id, "events differ from ListGraphEvents")


async def histories(client: Client, gids: list[str], parallel: int = 20) -> list[list[Event]]:
    """ListGraphEvents of many graphs, ``parallel`` at a time."""
    sem = asyncio.Semaphore(parallel)

    async def one(gid: str) -> list[Event]:
        async with sem:
            return await client.history(gid)

    return list(await asyncio.gather(*(one(g) for g in gids)))


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    """``eventually`` with a message saying what was waited for."""
    try:
        await eventually(check, timeout, 0.05)
    except AssertionError:
        raise AssertionError(f"{what}: not within {timeout}s") from None
