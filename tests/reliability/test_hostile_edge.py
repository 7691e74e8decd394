"""Hostile clients at the edge (issue 15, items 3 and 4), against real processes: the API and a
worker (``python -m dago serve|worker``) with authentication on and two namespaces, behind a
real Envoy rendered from envoy/envoy.yaml.in with small limits so the test stays short.

- Connections that never send a byte, more than Envoy's connection cap, and a client that
  sends its headers a byte at a time: the excess is refused at once, the rest are closed
  after the first-byte and header timeouts, and new clients get in again. A client of the
  other namespace with an open connection makes REST and gRPC calls throughout: none fails.
  With a per-client request rate set, one address flooding requests is refused past its
  own bucket (429 / RESOURCE_EXHAUSTED) while a client at another address is not.
- Hundreds of SSE and NDJSON watchers (and a few native gRPC ones) of one live graph whose
  clients never read: each costs only its own bounded buffers, is reset once it has made no
  progress for the watch idle timeout, and can watch again from its cursor and get every
  event exactly once. The other namespace's REST calls and its own NDJSON stream of a live
  graph complete normally.

The other client's latencies are printed (``-s``), not asserted: timing goals belong in
benchmarks. Figures measured while fixing this: docs/security.md, "The edge's limits".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import selectors
import socket
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest

from dago.api.auth import hash_key, new_key
from dago.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from harness import (
    ProcessStack,
    RunningStack,
    edge_healthy,
    envoy_config,
    eventually,
    free_port,
    start_api_quickly,
    start_envoy,
)
from redisfixture import RedisServer

pytestmark = [pytest.mark.edge, pytest.mark.process, pytest.mark.timeout(240)]

KEY_A = new_key()  # the hostile tenant's (item 4; item 3's flood sends no key at all)
KEY_B = new_key()  # the well-behaved client's, another namespace
KEYS = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b"
AUTH_A = {"authorization": f"Bearer {KEY_A}"}
AUTH_B = {"authorization": f"Bearer {KEY_B}"}
TERMINAL = ("graph_completed", "graph_failed", "graph_cancelled")


@dataclass
class Edge:
    """A stack behind Envoy, with the API's metrics."""

    stack: ProcessStack
    port: int
    metrics_port: int
    first_byte_s: float = 0
    headers_s: float = 0
    watch_idle_s: float = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def hostile_edge(url: str, prefix: str, **limits: Any) -> AsyncIterator[Edge]:
    """API + worker with keys for team-a and team-b, Envoy with ``limits`` (EdgeConfig
    fields) in front."""
    metrics_port = free_port()
    async with RunningStack(
        url,
        prefix,
        DAGO_AUTH="keys",
        DAGO_API_KEYS=KEYS,
        DAGO_METRICS_PORT=str(metrics_port),
        DAGO_HEARTBEAT_MS="500",
    ) as stack:
        config, port = envoy_config(stack, metrics_port=metrics_port, **limits)
        envoy = start_envoy(config, stack.logs / "envoy.log")
        try:
            stack.start("w1", "worker")
            await start_api_quickly(stack)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await edge_healthy(envoy, http, stack)
            yield Edge(
                stack,
                port,
                metrics_port,
                first_byte_s=limits.get("first_byte_timeout_s", 0),
                headers_s=limits.get("headers_timeout_s", 0),
                watch_idle_s=limits.get("watch_idle_timeout_s", 0),
            )
            assert envoy.poll() is None, "Envoy exited"
        finally:
            envoy.terminate()
            try:
                envoy.wait(10)
            except Exception:
                envoy.kill()
                envoy.wait()


def chatter(count: int, size: int, batch: int, interval: float) -> dict[str, Any]:
    """A SubmitGraph body: one node emitting ``count`` events, ``batch`` every ``interval``."""
    inputs = {"count": count, "size": size, "batch": batch, "interval": interval}
    node = {"id": "talk", "tool": {"name": "chatter"}, "inputs": inputs}
    return {"graph": {"name": "hostile-edge", "nodes": [node]}}


async def submit(http: httpx.AsyncClient, body: dict[str, Any], auth: dict[str, str]) -> str:
    r = await http.post("/api/v1/graphs", json=body, headers=auth)
    assert r.status_code == 200, r.text
    return str(r.json()["graph_id"])


async def history(http: httpx.AsyncClient, gid: str, auth: dict[str, str]) -> list[int]:
    """The seqs of a graph's stored events (ListGraphEvents, page by page)."""
    seqs: list[int] = []
    token = ""
    while True:
        params = {"page_size": 1000, "page_token": token}
        r = await http.get(f"/api/v1/graphs/{gid}/events/history", params=params, headers=auth)
        assert r.status_code == 200, r.text
        seqs += [int(ev["seq"]) for ev in r.json()["events"]]
        token = r.json()["next_page_token"]
        if not token:
            return seqs


@dataclass
class Caller:
    """The well-behaved client of team-b: calls in a loop, each call's latency and failure
    recorded, until stopped. REST over one keep-alive connection; gRPC over one HTTP/2
    connection; both opened before the attack."""

    edge: Edge
    gid: str = ""
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"rest": [], "grpc": []})
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=1)
        self.http = httpx.AsyncClient(base_url=self.edge.base, timeout=30, limits=limits)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.edge.port}")
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)
        self.gid = await submit(self.http, chatter(5, 10, 5, 0), AUTH_B)
        self._tasks = [asyncio.create_task(self._rest()), asyncio.create_task(self._grpc())]
        await asyncio.sleep(0.3)

    async def _loop(self, name: str, call: Any) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                await call()
            except Exception as e:
                self.failures.append(f"{name}: {type(e).__name__}: {e}")
            self.latencies[name].append(time.monotonic() - t0)
            await asyncio.sleep(0.05)

    async def _rest(self) -> None:
        async def call() -> None:
            r = await self.http.get(f"/api/v1/graphs/{self.gid}/status", headers=AUTH_B)
            if r.status_code != 200:
                raise AssertionError(f"HTTP {r.status_code}: {r.text[:200]}")

        await self._loop("rest", call)

    async def _grpc(self) -> None:
        meta = tuple(AUTH_B.items())

        async def call() -> None:
            req = orchestrator_pb2.ListGraphsRequest(page_size=5)
            listed = await self.stub.ListGraphs(req, metadata=meta, timeout=30)
            if self.gid not in [g.graph_id for g in listed.graphs]:
                raise AssertionError("team-b's graph missing from its list")

        await self._loop("grpc", call)

    async def stop(self) -> str:
        """Stop; a line with the latencies."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.http.aclose()
        await self.channel.close()
        return ", ".join(f"{k} {summary(v)}" for k, v in self.latencies.items())


def summary(latencies: list[float]) -> str:
    """``n=…, p50=… ms, p99=… ms, max=… ms``."""
    if not latencies:
        return "no calls"
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"n={len(ms)} p50={statistics.median(ms):.1f} ms p99={p99:.1f} ms max={ms[-1]:.1f} ms"


def raise_fd_limit(need: int) -> None:
    """Make room for ``need`` sockets here and in Envoy (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files (the hard limit is {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# --- item 3: idle connections, more than the cap, and slow headers ------------------------------

CAP = 1000  # Envoy's connection cap in this test (10,000 by default)
FLOOD = 1500  # sockets that connect and send nothing, no key


async def slow_headers(port: int, every: float) -> tuple[float, bytes]:
    """A client that sends a request line, then one header byte every ``every`` s until the
    connection is closed: (seconds until closed, what it was answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    writer.write(b"GET /api/v1/graphs HTTP/1.1\r\nHost: edge\r\nX-Slow: ")
    answer = b""
    try:
        while True:
            try:
                answer += await asyncio.wait_for(reader.read(4096), every)
            except TimeoutError:
                writer.write(b"a")
                await writer.drain()
                continue
            if reader.at_eof():
                break
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return time.monotonic() - t0, answer


@pytest.mark.slow
async def test_idle_and_slow_connections_are_closed_and_lock_nobody_out(
    redis_single: RedisServer, key_prefix: str
) -> None:
    raise_fd_limit(3 * FLOOD)
    limits = {
        "max_connections": CAP,
        "first_byte_timeout_s": 2,
        "headers_timeout_s": 2,
        "idle_timeout_s": 5,
    }
    async with hostile_edge(redis_single.url, key_prefix, **limits) as e:
        good = Caller(e)
        await good.start()
        slow = asyncio.create_task(slow_headers(e.port, 0.3))

        # The flood: FLOOD sockets, no byte sent. Envoy refuses the ones past its cap at
        # once and closes the others when the first-byte timeout expires.
        sel = selectors.DefaultSelector()
        socks = []
        t0 = time.monotonic()
        for i in range(FLOOD):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", e.port))
            socks.append(s)
            sel.register(s, selectors.EVENT_READ, i)
            if i % 100 == 0:
                await asyncio.sleep(0)
        closed: dict[int, float] = {}
        deadline = t0 + e.first_byte_s + 15
        try:
            while len(closed) < FLOOD and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0):
                    try:
                        data = key.fileobj.recv(64)  # type: ignore[union-attr]
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    assert not data, data  # nothing is ever sent to them but the close
                    closed[key.data] = time.monotonic() - t0
                    sel.unregister(key.fileobj)
                await asyncio.sleep(0.02)
        finally:
            sel.close()
            for s in socks:
                s.close()
        slow_s, answer = await slow

        # A new client gets in again, over REST and gRPC.
        async with httpx.AsyncClient(base_url=e.base, timeout=10) as fresh:
            r = await fresh.get(f"/api/v1/graphs/{good.gid}/status", headers=AUTH_B)
            assert r.status_code == 200, r.text
        async with grpc.aio.insecure_channel(f"127.0.0.1:{e.port}") as ch:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            req = orchestrator_pb2.GetGraphStatusRequest(graph_id=good.gid)
            await stub.GetGraphStatus(req, metadata=tuple(AUTH_B.items()), timeout=10)
        latencies = await good.stop()

        times = sorted(closed.values())
        refused = sum(1 for t in times if t < e.first_byte_s)
        status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
        print(
            f"\nidle flood: {FLOOD} sockets, cap {CAP}: {refused} refused at once, all "
            f"{len(times)} closed after {times[-1]:.2f} s (first-byte timeout "
            f"{e.first_byte_s:g} s); slow headers closed after {slow_s:.2f} s "
            f"({status_line!r}); team-b during the attack: {latencies}"
        )
        assert not good.failures, good.failures[:5]
        assert len(closed) == FLOOD, f"{FLOOD - len(closed)} idle sockets still open"
        # Past the cap a connection is refused at once; the others were held until the
        # first-byte timeout, never longer.
        assert refused >= FLOOD - CAP, refused
        assert times[-1] < e.first_byte_s + 5, times[-1]
        assert sum(1 for t in times if t >= e.first_byte_s - 0.1) >= CAP // 2, times[:20]
        # Headers that never end are cut at the header timeout, with a 408.
        assert e.headers_s - 0.1 <= slow_s < e.headers_s + 5, slow_s
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


async def test_one_client_address_cannot_take_the_request_rate_of_others(
    redis_single: RedisServer, key_prefix: str
) -> None:
    # DAGO_EDGE_CLIENT_RPS=5: a token bucket per client address (bursts of 10). The hostile
    # client (127.0.0.1, any key or none) is refused past it, over REST and gRPC; a client
    # at another address (127.0.0.2, team-b) is not slowed.
    async with hostile_edge(redis_single.url, key_prefix, client_rps=5) as e:
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with (
            httpx.AsyncClient(base_url=e.base, timeout=10) as noisy,
            httpx.AsyncClient(base_url=e.base, timeout=10, transport=other) as calm,
        ):
            codes = [
                (await noisy.get("/api/v1/graphs", headers=AUTH_A)).status_code for _ in range(30)
            ]
            assert codes[:5] == [200] * 5 and codes.count(429) >= 15, codes
            r = await noisy.get("/api/v1/graphs", headers=AUTH_A)
            assert r.status_code == 429 and r.json()["code"] == 8, r.text
            async with grpc.aio.insecure_channel(f"127.0.0.1:{e.port}") as ch:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    for _ in range(20):
                        req = orchestrator_pb2.ListGraphsRequest()
                        await stub.ListGraphs(req, metadata=tuple(AUTH_A.items()), timeout=10)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The other address has a bucket of its own.
            calm_codes = []
            for _ in range(8):
                calm_codes.append((await calm.get("/api/v1/graphs", headers=AUTH_B)).status_code)
            assert calm_codes == [200] * 8, calm_codes
            # /health (load balancers, probes) is answered before the limit.
            assert (await noisy.get("/health")).status_code == 200


# --- item 4: watchers that never read -----------------------------------------------------------

HOSTILE = 200  # raw sockets watching one graph, half SSE, half NDJSON; they never read
RESUMED = 6  # of them, drained and resumed from their cursor at the end
NATIVE = 4  # native gRPC watchers through Envoy that stop reading after their first event


def open_watch(port: int, gid: str, accept: str, auth: dict[str, str]) -> socket.socket:
    """A raw HTTP/1.1 watch request; the socket is then never read (until drained)."""
    s = socket.create_connection(("127.0.0.1", port))
    head = f"GET /api/v1/graphs/{gid}/events HTTP/1.1\r\nHost: edge\r\nAccept: {accept}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    s.sendall((head + "\r\n").encode())
    return s


def drain(socks: list[socket.socket], timeout: float) -> list[tuple[bytes, bool]]:
    """Read what is queued for each socket until the server closes it, all at once, for at
    most ``timeout`` s: (bytes, whether it was closed). (The tail of a closed connection can
    take seconds: the kernel probes a zero window with a growing interval, and on loopback
    (MSS 64 KB) reading 128 KB may not send a window update.)"""
    out = [bytearray() for _ in socks]
    closed = [False] * len(socks)
    with selectors.DefaultSelector() as sel:
        for i, s in enumerate(socks):
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
        deadline = time.monotonic() + timeout
        while not all(closed) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.2):
                i = key.data
                try:
                    chunk = socks[i].recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if chunk:
                    out[i] += chunk
                else:
                    closed[i] = True
                    sel.unregister(socks[i])
    return [(bytes(b), c) for b, c in zip(out, closed, strict=True)]


def dechunk(raw: bytes) -> tuple[int, bytes, bool]:
    """An HTTP/1.1 chunked response: (status, the complete chunks' body, whether the
    terminating chunk came)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    body = bytearray()
    while True:
        size_line, sep, after = rest.partition(b"\r\n")
        if not sep:
            return status, bytes(body), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return status, bytes(body), True
        if len(after) < size + 2:
            return status, bytes(body), False
        body += after[:size]
        rest = after[size + 2 :]


def parse_events(body: bytes, sse: bool) -> list[dict[str, Any]]:
    """The complete events of an SSE or NDJSON body (a cut-off last one is left out),
    heartbeats included, each with the SSE ``id`` it came with (``_id``)."""
    out = []
    if sse:
        for block in body.decode().split("\n\n")[:-1]:
            ev_id, data = None, []
            for line in block.split("\n"):
                if line.startswith("id:"):
                    ev_id = line[3:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            if data:
                out.append({**json.loads("\n".join(data))["event"], "_id": ev_id})
    else:
        for line in body.decode().split("\n")[:-1]:
            if line.strip():
                out.append(json.loads(line)["event"])
    return out


def real(events: list[dict[str, Any]]) -> list[int]:
    """The seqs of the events that are not heartbeats."""
    return [int(ev["seq"]) for ev in events if "heartbeat" not in ev]


async def read_stream(
    http: httpx.AsyncClient, gid: str, sse: bool, auth: dict[str, str], **kw: Any
) -> list[dict[str, Any]]:
    """Watch to the end of the stream (the graph's terminal event)."""
    accept = "text/event-stream" if sse else "application/x-ndjson"
    headers = {"accept": accept, **auth, **kw.pop("headers", {})}
    async with http.stream("GET", f"/api/v1/graphs/{gid}/events", headers=headers, **kw) as r:
        assert r.status_code == 200, (r.status_code, await r.aread())
        body = b"".join([chunk async for chunk in r.aiter_raw()])
    events = parse_events(body, sse)
    assert events and any(k in events[-1] for k in TERMINAL), events[-3:]
    return events


async def watch_cancellations(e: Edge) -> int:
    """WatchGraph calls the API saw end as cancelled (their stream was reset)."""
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"http://127.0.0.1:{e.metrics_port}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        watch = line.startswith("dago_rpc_requests_total{") and "WatchGraph" in line
        if watch and 'code="CANCELLED"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


@pytest.mark.slow
async def test_watchers_that_never_read_cost_their_own_buffers_and_are_dropped(
    redis_single: RedisServer, key_prefix: str
) -> None:
    raise_fd_limit(4 * HOSTILE + 512)
    async with hostile_edge(redis_single.url, key_prefix, watch_idle_timeout_s=3) as e:
        http = httpx.AsyncClient(base_url=e.base, timeout=60)
        channels: list[grpc.aio.Channel] = []
        try:
            # team-a's graph emits steadily for ~15 s (200 events/s of 500 bytes); HOSTILE
            # of team-a's clients watch it and never read.
            hostile = await submit(http, chatter(3000, 500, 20, 0.1), AUTH_A)
            before = await watch_cancellations(e)
            socks = []
            for i in range(HOSTILE):
                accept = "text/event-stream" if i % 2 else "application/x-ndjson"
                socks.append(open_watch(e.port, hostile, accept, AUTH_A))
            # gRPC clients (one HTTP/2 connection each, no window growth) that stop reading.
            channels += [
                grpc.aio.insecure_channel(
                    f"127.0.0.1:{e.port}", options=[("grpc.http2.bdp_probe", 0)]
                )
                for _ in range(NATIVE)
            ]
            native = []
            for ch in channels:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
                req = orchestrator_pb2.WatchGraphRequest(graph_id=hostile)
                call = stub.WatchGraph(req, metadata=tuple(AUTH_A.items()), timeout=120)
                native.append((call, [(await call.read()).event]))

            # Meanwhile team-b: REST calls, and its own NDJSON stream of a live graph.
            good = Caller(e)
            await good.start()
            mine = await submit(http, chatter(400, 200, 10, 0.05), AUTH_B)
            t0 = time.monotonic()
            async with httpx.AsyncClient(base_url=e.base, timeout=60) as own:
                streamed = await read_stream(own, mine, False, AUTH_B)
            stream_s = time.monotonic() - t0
            assert real(streamed) == await history(http, mine, AUTH_B)

            # The non-reading streams made no progress: Envoy resets each after the watch
            # idle timeout, and the API lets go of them (cancelled, not held).
            async def dropped() -> bool:
                return await watch_cancellations(e) - before >= HOSTILE + NATIVE

            await eventually(dropped, e.watch_idle_s + 20, 0.25)
            await asyncio.sleep(0.5)
            latencies = await good.stop()
            state = await http.get(f"/api/v1/graphs/{hostile}/status", headers=AUTH_A)
            assert state.json()["status"]["state"] == "GRAPH_STATE_RUNNING", state.text

            # What each had been sent is all they get: the stream ends (the server closed
            # it) before the graph's end, cut mid-stream (no last chunk).
            cut: list[tuple[bool, list[dict[str, Any]]]] = []
            drained = await asyncio.to_thread(drain, socks, 60)
            for s in socks:
                s.close()
            started = 0
            for i, (raw, closed) in enumerate(drained):
                assert closed, f"watcher {i} was not dropped"
                status, body, complete = dechunk(raw)
                if status == 504:
                    # On a loaded box a watch may get no response headers within the idle
                    # timeout: Envoy answers 504 stream_idle_timeout. Dropped all the same.
                    assert b"stream_idle_timeout" in raw, raw[-200:]
                    events = []
                else:
                    assert status == 200 and not complete, (status, raw[-200:])
                    events = parse_events(body, sse=bool(i % 2))
                    started += 1
                assert not any(k in ev for ev in events for k in TERMINAL)
                if i < RESUMED:
                    cut.append((bool(i % 2), events))
            # Most streams had started: the cut-mid-stream shape was checked, not skipped.
            assert started >= len(drained) // 2, (started, len(drained))
            sizes = [len(real(ev)) for _, ev in cut]

            # Dropped watchers resume from their cursor: Last-Event-ID for SSE, after_seq
            # for NDJSON; together they get every event exactly once.
            stored = None
            for sse, events in cut:
                seqs = real(events)
                assert seqs == list(range(1, len(seqs) + 1)), seqs[:10]
                cursor = seqs[-1] if seqs else 0
                if sse:
                    # Each event came with its seq as the SSE id (what EventSource resends).
                    ids = [ev["_id"] for ev in events if "heartbeat" not in ev]
                    assert ids == [str(q) for q in seqs], ids[:10]
                    rest = await read_stream(
                        http, hostile, True, AUTH_A, headers={"last-event-id": str(cursor)}
                    )
                else:
                    rest = await read_stream(
                        http, hostile, False, AUTH_A, params={"after_seq": cursor}
                    )
                stored = stored or await history(http, hostile, AUTH_A)
                assert seqs + real(rest) == stored, "lost or repeated events"

            # The gRPC ones get what reached them, then the reset (an error, not the end);
            # they watch again after the last event they got.
            for call, got in native:
                with pytest.raises(grpc.aio.AioRpcError):
                    while (msg := await call.read()) is not grpc.aio.EOF:
                        got.append(msg.event)
                seen = [ev.seq for ev in got if ev.WhichOneof("payload") != "heartbeat"]
                assert seen == list(range(1, len(seen) + 1))
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channels[0])
                req = orchestrator_pb2.WatchGraphRequest(graph_id=hostile, after_seq=seen[-1])
                rest_seqs = [
                    msg.event.seq
                    async for msg in stub.WatchGraph(
                        req, metadata=tuple(AUTH_A.items()), timeout=60
                    )
                    if msg.event.WhichOneof("payload") != "heartbeat"
                ]
                assert seen + rest_seqs == stored, "lost or repeated events (gRPC)"
        finally:
            await http.aclose()
            for ch in channels:
                await ch.close()
        print(
            f"\n{HOSTILE} non-reading watchers (SSE and NDJSON) and {NATIVE} gRPC ones of a live "
            "graph: dropped after "
            f"the watch idle timeout ({e.watch_idle_s:g} s), each having been sent "
            f"{min(sizes)}-{max(sizes)} events before; team-b's NDJSON of its live graph "
            f"({len(streamed)} lines) took {stream_s:.2f} s; team-b during the attack: "
            f"{latencies}"
        )
        assert not good.failures, good.failures[:5]
