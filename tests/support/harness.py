"""Running real dago stacks from tests.

``InProcessStack`` runs the real API server and real workers as tasks of the
test's event loop (fast, same code paths); ``ProcessStack`` runs them as
``python -m dago serve|worker`` child processes so tests can SIGKILL and
restart them. Both talk to a real Redis given by URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
from google.protobuf import json_format

from dago.api.server import ApiServer
from dago.app import build_api, build_worker
from dago.config import Settings
from dago.devtools import edge as envoy_edge
from dago.engine.ids import parse_shard
from dago.store.client import connect
from dago.store.keys import Keys
from dago.store.schema import Meta
from dago.store.store import Store
from dago.v1 import execution_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from dago.worker.process import Worker

# The repository (this file is tests/support/harness.py) and the tests' helper modules, which
# pytest puts on sys.path (pyproject.toml: pythonpath) and child processes get on PYTHONPATH.
ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"
FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")
"""The full-size variants of scale tests (``make reliability RELIABILITY_FULL=1``, or
``RELIABILITY_FULL=1 make test``); ``make test`` runs smaller sizes of the same checks."""
TERMINAL = {
    execution_pb2.GRAPH_STATE_COMPLETED,
    execution_pb2.GRAPH_STATE_FAILED,
    execution_pb2.GRAPH_STATE_CANCELLED,
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stack_settings(url: str, prefix: str, **overrides: Any) -> Settings:
    """Settings for tests: short leases and intervals, test tools loaded."""
    base = Settings(
        redis_url=url,
        key_prefix=prefix,
        shards=4,
        grpc_host="127.0.0.1",
        grpc_port=0,
        metrics_port=0,
        worker_metrics_port=0,
        lease_ms=1500,
        sweep_interval_ms=50,
        heartbeat_ms=500,
        tool_modules="testtools",
        drain_timeout_s=5,
        worker_slots=64,
        # Tests that are not about authentication run without it (tests/api/test_auth.py opts in).
        auth="off",
    )
    return dataclasses.replace(base, **overrides)


def knob(name: str, small: int, full: int) -> int:
    """An integer size: ``$name`` if set, else ``full`` under RELIABILITY_FULL, else ``small``."""
    return int(os.environ.get(name, full if FULL else small))


def request(
    nodes: list[dict[str, Any]],
    edges: list[dict[str, Any]] | None = None,
    inputs: dict[str, Any] | None = None,
    **graph: Any,
) -> orchestrator_pb2.SubmitGraphRequest:
    """A SubmitGraphRequest from plain dicts (proto JSON field names)."""
    rid = graph.pop("request_id", "")
    body = {"graph": {"nodes": nodes, "edges": edges or [], **graph}, "inputs": inputs or {}}
    req = json_format.ParseDict(body, orchestrator_pb2.SubmitGraphRequest())
    req.request_id = rid
    return req


def echo(node_id: str, **inputs: Any) -> dict[str, Any]:
    """An echo tool node."""
    return {"id": node_id, "tool": {"name": "echo"}, "inputs": inputs}


def tool(node_id: str, name: str, **fields: Any) -> dict[str, Any]:
    """A tool node; extra fields (inputs, retry, join...) go on the node."""
    return {"id": node_id, "tool": {"name": name}, **fields}


def edge(src: str, dst: str, condition: str = "", label: str = "") -> dict[str, Any]:
    """An edge."""
    e: dict[str, Any] = {"from": src, "to": dst}
    if condition:
        e["condition"] = condition
    if label:
        e["label"] = label
    return e


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def _with_key(details: Any, key: str) -> Any:
    metadata = [*(details.metadata or ()), ("authorization", f"Bearer {key}")]
    return details._replace(metadata=metadata)


class _BearerUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str) -> None:
        self._key = key

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._key), request)


class _BearerStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, key: str) -> None:
        self._key = key

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_key(details, self._key), request)


def bearer_key(key: str) -> list[Any]:
    """Client interceptors sending ``authorization: Bearer <key>`` with every unary and
    server-streaming call (what dago clients do). gRPC files an interceptor under one call
    kind only, hence one object per kind."""
    return [_BearerUnary(key), _BearerStream(key)]


class Client:
    """A gRPC client of one API address, with helpers the tests share."""

    def __init__(self, target: str, api_key: str = "") -> None:
        interceptors = bearer_key(api_key) if api_key else None
        self.channel = grpc.aio.insecure_channel(target, interceptors=interceptors)
        self.stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self.channel)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def submit(self, req: orchestrator_pb2.SubmitGraphRequest) -> str:
        """Submit; returns the graph id."""
        resp = await self.stub.SubmitGraph(req, timeout=10)
        return resp.graph_id

    async def status(self, graph_id: str) -> execution_pb2.GraphStatus:
        """The graph's status."""
        req = orchestrator_pb2.GetGraphStatusRequest(graph_id=graph_id)
        return (await self.stub.GetGraphStatus(req, timeout=10)).status

    async def wait(self, graph_id: str, timeout: float = 20.0) -> execution_pb2.GraphStatus:
        """Poll the status until the graph is finished."""
        deadline = time.monotonic() + timeout
        while True:
            st = await self.status(graph_id)
            if st.state in TERMINAL:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"graph {graph_id} still {st.state} after {timeout}s")
            await asyncio.sleep(0.02)

    async def result(self, graph_id: str) -> orchestrator_pb2.GetGraphResultResponse:
        """The result of a finished graph."""
        req = orchestrator_pb2.GetGraphResultRequest(graph_id=graph_id)
        return await self.stub.GetGraphResult(req, timeout=10)

    async def run(
        self, req: orchestrator_pb2.SubmitGraphRequest, timeout: float = 20.0
    ) -> tuple[str, execution_pb2.GraphStatus]:
        """Submit and wait until finished."""
        gid = await self.submit(req)
        return gid, await self.wait(gid, timeout)

    async def history(self, graph_id: str) -> list[execution_pb2.Event]:
        """Every stored event, through ListGraphEvents pages."""
        out: list[execution_pb2.Event] = []
        token = ""
        while True:
            req = orchestrator_pb2.ListGraphEventsRequest(
                graph_id=graph_id, page_size=100, page_token=token
            )
            resp = await self.stub.ListGraphEvents(req, timeout=10)
            out.extend(resp.events)
            token = resp.next_page_token
            if not token:
                return out

    async def watch(self, graph_id: str, after_seq: int = 0) -> list[execution_pb2.Event]:
        """Watch to the end; returns the events (heartbeats excluded)."""
        req = orchestrator_pb2.WatchGraphRequest(graph_id=graph_id, after_seq=after_seq)
        events = []
        async for msg in self.stub.WatchGraph(req, timeout=60):
            if msg.event.WhichOneof("payload") != "heartbeat":
                events.append(msg.event)
        return events


def kinds(events: list[execution_pb2.Event], node: str | None = None) -> list[str]:
    """The payload kinds of ``events`` (of one node when given)."""
    return [e.WhichOneof("payload") or "" for e in events if node is None or e.node_id == node]


class InProcessStack:
    """The real API server and ``workers`` real workers, as tasks of this event loop.

    ``async with InProcessStack(settings) as stack``, or ``await start()`` and ``await stop()``
    (what the ``make_stack`` fixture of tests/conftest.py does; ``stop`` is idempotent)."""

    def __init__(self, settings: Settings, workers: int = 1) -> None:
        self.settings = settings
        self._workers = workers
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.workers: list[Worker] = []
        """The running workers (a test reads their metrics)."""
        self._stopped = False
        self.client: Client
        self.api: ApiServer
        self.store = Store(connect(settings), Keys(settings.key_prefix, settings.shards))

    async def in_redis(self, graph_id: str) -> bool:
        """Whether the run's state is still in Redis (not yet expired after its retention)."""
        shard = parse_shard(graph_id, self.settings.shards)
        assert shard is not None
        return (await self.store.graph_fields(shard, graph_id, Meta.STATE))[0] is not None

    async def start(self) -> InProcessStack:
        """Start the API (wait until it listens) and the workers."""
        await self.store.ready()
        api = build_api(self.settings)
        ready = asyncio.Event()
        self._tasks.append(asyncio.create_task(api.run(self._stop, ready)))
        await asyncio.wait_for(ready.wait(), 10)
        for n in range(self._workers):
            w = build_worker(dataclasses.replace(self.settings, worker_id=f"w{n}"))
            self.workers.append(w)
            self._tasks.append(asyncio.create_task(w.run(self._stop)))
        self.port = api.port
        self.api = api
        self.client = Client(f"127.0.0.1:{api.port}")
        await self._workers_registered()
        return self

    async def _workers_registered(self) -> None:
        """Wait until every worker sent its first heartbeat (or ended). A worker stopped in
        its first event-loop turns ends only after the 2 s stream read it was starting
        (measured: 2.08 s against 0.00 s a few milliseconds later), which every test that
        stops its stack at once (a refused submit) would pay at teardown; this costs ~30 ms."""
        ids = {w.id for w in self.workers}
        tasks = self._tasks[1:]

        async def up() -> bool:
            seen = {wid for wid, _, _ in await self.store.workers(0)}
            return ids <= seen or any(t.done() for t in tasks)

        await eventually(up, 10, 0.005)

    def add_worker(self, name: str, **overrides: Any) -> None:
        """Start one more worker (stopped with the stack): a stack made with ``workers=0``
        lets a test queue work before anything takes it."""
        settings = dataclasses.replace(self.settings, worker_id=name, **overrides)
        self._tasks.append(asyncio.create_task(build_worker(settings).run(self._stop)))

    async def stop(self) -> None:
        """Stop the API and the workers (once); re-raise what one of them raised."""
        if self._stopped:
            return
        self._stopped = True
        await self.client.close()
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=15)
        for t in pending:
            t.cancel()
        await self.store.redis.aclose()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    async def __aenter__(self) -> InProcessStack:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class HasUrl(Protocol):
    """A Redis to run on: a ``RedisTarget`` or a ``RedisServer`` (anything with a ``url``)."""

    @property
    def url(self) -> str: ...


class MakeStack(Protocol):
    """The ``make_stack`` fixture (tests/conftest.py): ``await make_stack(**overrides)``."""

    async def __call__(
        self, redis: HasUrl | None = None, *, workers: int = 1, **overrides: Any
    ) -> InProcessStack: ...


class ProcessStack:
    """``python -m dago serve`` and ``worker`` as child processes (to kill and restart)."""

    def __init__(self, url: str, prefix: str, **env: str) -> None:
        self.port = free_port()
        self.logs = Path(tempfile.mkdtemp(prefix="dago-test-procs-"))
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                str(ROOT / p) for p in ("service", "gen/python", "clients/python", "tests/support")
            ),
            "DAGO_REDIS_URL": url,
            "DAGO_KEY_PREFIX": prefix,
            "DAGO_SHARDS": "4",
            "DAGO_GRPC_HOST": "127.0.0.1",
            "DAGO_GRPC_PORT": str(self.port),
            "DAGO_METRICS_PORT": "0",
            "DAGO_WORKER_METRICS_PORT": "0",
            "DAGO_LEASE_MS": "1500",
            "DAGO_SWEEP_INTERVAL_MS": "50",
            "DAGO_HEARTBEAT_MS": "500",
            "DAGO_TOOL_MODULES": "testtools",
            "DAGO_DRAIN_TIMEOUT_S": "5",
            "DAGO_AUTH": "off",
            **env,
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client = Client(f"127.0.0.1:{self.port}")

    def start(self, name: str, command: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``python -m dago <command>`` as ``name`` (log in self.logs)."""
        with (self.logs / f"{name}.log").open("ab") as log:  # the child has its own copy
            proc = subprocess.Popen(
                [sys.executable, "-m", "dago", command],
                env={**self.env, "DAGO_WORKER_ID": name, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    async def start_api(self) -> None:
        """Start the API and wait until it answers health checks."""
        self.start("api", "serve")
        await self.wait_serving()

    async def wait_serving(self, timeout: float = 20.0) -> None:
        """Wait until the API reports SERVING."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.client.channel)

        async def serving() -> bool:
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return bool(r.status == health_pb2.HealthCheckResponse.SERVING)

        # Every process stack waits here (its worker's start): polled often, since each
        # tenth of a second of slack is paid by every test that starts one.
        await eventually(serving, timeout, 0.02)

    def signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to a child and wait for it to exit."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def log(self, name: str) -> str:
        """A child's output so far."""
        return (self.logs / f"{name}.log").read_text(errors="replace")

    async def close(self) -> None:
        """Stop every child (SIGTERM, then SIGKILL) and close the client."""
        await self.client.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def aiter_list(it: AsyncIterator[Any]) -> list[Any]:
    """Collect an async iterator."""
    return [x async for x in it]


# --- helpers for tests of the dago command (python -m dago ...) -----------------------------


# What ``python -m dago`` needs on its path (not the tests' helpers).
DAGO_PYTHONPATH = os.pathsep.join(
    str(ROOT / p) for p in ("service", "gen/python", "clients/python")
)


def dago_env(**env: str) -> dict[str, str]:
    """The test's environment without any DAGO_ setting, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
    return {**base, "PYTHONPATH": DAGO_PYTHONPATH, **env}


def children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid``: pid -> command line."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces): state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            out[int(entry.name)] = cmdline
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- helpers for fault tests (processes killed and restarted) -------------------------------


def child_logs(stack: ProcessStack, lines: int = 60) -> str:
    """The last ``lines`` lines of every child's log (killed ones included), for messages."""
    out = []
    for path in sorted(stack.logs.glob("*.log")):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"----- {path.stem} ({path}) -----\n" + "\n".join(tail))
    return "\n".join(out)


def envoy_config(stack: ProcessStack, **options: Any) -> tuple[Path, int]:
    """An Envoy config in front of ``stack``'s API, rendered by dago.devtools.edge into the
    stack's log folder; returns its path and listen port. ``options`` are further EdgeConfig fields
    (the metrics port defaults to a free one; gen/openapi.json is served, and so are the
    live view, the console and the API page when `make web` built them)."""
    port = free_port()
    options.setdefault("metrics_port", free_port())
    options.setdefault("openapi", str(envoy_edge.OPENAPI))
    if envoy_edge.api_page_built(ROOT / "web") and envoy_edge.web_built(ROOT / "web"):
        options.setdefault("web_root", str(ROOT / "web"))
        options.setdefault("api_page", True)
    cfg = envoy_edge.EdgeConfig(
        listen_host="127.0.0.1",
        listen_port=port,
        dago_port=stack.port,
        descriptor=str(ROOT / "gen" / "dago.binpb"),
        **options,
    )
    config = stack.logs / "envoy.yaml"
    config.write_text(envoy_edge.render(cfg))
    return config, port


def start_envoy(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """Envoy on ``config``, its output appended to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            envoy_edge.command(config, concurrency=1), stdout=out, stderr=subprocess.STDOUT
        )


async def edge_healthy(
    envoy: subprocess.Popen[bytes], http: httpx.AsyncClient, stack: ProcessStack
) -> None:
    """Wait until Envoy answers ``/health`` with 200 (``http``: an httpx.AsyncClient on it)."""

    async def up() -> bool:
        assert envoy.poll() is None, child_logs(stack)
        try:
            return (await http.get("/health")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(up, 20, 0.05)


@dataclasses.dataclass
class Edge:
    """A running stack with Envoy in front of it."""

    stack: ProcessStack
    envoy: subprocess.Popen[bytes]
    port: int
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return child_logs(self.stack)


@contextlib.asynccontextmanager
async def running_edge(redis_url: str, prefix: str, **env: str) -> AsyncIterator[Edge]:
    """API + worker + Envoy (its log next to theirs) on free ports: the ``edge_stack`` fixture
    of tests/conftest.py. Envoy allows CORS from ``http://localhost:*`` and
    ``https://app.example``, and closes a stream quiet for 1 s, watch streams included
    (heartbeats every 300 ms). ``env``: more settings of the processes (``DAGO_...``)."""
    metrics_port = free_port()
    stack = ProcessStack(
        redis_url,
        prefix,
        DAGO_METRICS_PORT=str(metrics_port),
        DAGO_HEARTBEAT_MS="300",
        **env,
    )
    config, port = envoy_config(
        stack,
        metrics_port=metrics_port,
        cors_origins=("http://localhost:*", "https://app.example"),
        stream_idle_timeout_s=1,  # only heartbeats (every 300 ms) keep quiet watches open
        watch_idle_timeout_s=1,
    )
    envoy = start_envoy(config, stack.logs / "envoy.log")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20)
    try:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        await edge_healthy(envoy, http, stack)
        yield Edge(stack, envoy, port, http)
    finally:
        await http.aclose()
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
            envoy.wait()
        await stack.close()


def grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """The data frames and the trailers of a binary gRPC-Web response body."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        flags, length = struct.unpack(">BI", body[pos : pos + 5])
        payload = body[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    k, _, v = line.partition(":")
                    trailers[k.strip().lower()] = v.strip()
        else:
            messages.append(payload)
    return messages, trailers


class RunningStack:
    """``async with RunningStack(url, prefix, **env) as stack``: a ProcessStack that is always
    closed, and whose failures carry the children's logs."""

    def __init__(self, url: str, prefix: str, **env: str) -> None:
        self.stack = ProcessStack(url, prefix, **env)

    async def __aenter__(self) -> ProcessStack:
        return self.stack

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        try:
            if exc is not None and isinstance(exc, Exception):
                raise AssertionError(
                    f"{typ.__name__ if typ else ''}: {exc}\n{child_logs(self.stack)}"
                ) from exc
        finally:
            await self.stack.close()


def redis_store(url: str, prefix: str, shards: int = 4) -> Store:
    """A Store on the Redis a stack uses, for checks the API does not expose (close its .redis)."""
    return Store(connect(stack_settings(url, prefix, shards=shards)), Keys(prefix, shards))


# --- helpers for engine tests (tests/engine/test_engine_*.py) --------------------------------


def node_status(st: execution_pb2.GraphStatus, node_id: str) -> execution_pb2.NodeStatus:
    """The status of one node of ``st``."""
    for n in st.nodes:
        if n.node_id == node_id:
            return n
    raise AssertionError(f"no node {node_id!r} in the status of {st.graph_id}")


def node_states(st: execution_pb2.GraphStatus) -> dict[str, str]:
    """Node id -> NodeState name without its prefix, e.g. ``{"a": "COMPLETED"}``."""
    return {
        n.node_id: execution_pb2.NodeState.Name(n.state).removeprefix("NODE_STATE_")
        for n in st.nodes
    }


def plain(msg: Any) -> Any:
    """A Struct / Value / ListValue (or any message) as plain Python."""
    return json_format.MessageToDict(msg)


def of_kind(
    events: list[execution_pb2.Event], kind: str, node: str | None = None
) -> list[execution_pb2.Event]:
    """The events whose payload is ``kind`` (of one node when given)."""
    return [
        e for e in events if e.WhichOneof("payload") == kind and (node is None or e.node_id == node)
    ]


def seq_of(events: list[execution_pb2.Event], kind: str, node: str | None = None) -> int:
    """The seq of the only event of ``kind`` (of ``node``); fails unless there is exactly one."""
    found = of_kind(events, kind, node)
    assert len(found) == 1, f"expected one {kind} of {node!r}, got {len(found)}"
    return found[0].seq


async def rpc_error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    """Await ``call`` and return the RPC error it must raise."""
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e
    raise AssertionError("the call succeeded; an RPC error was expected")


def error_details(err: grpc.aio.AioRpcError) -> list[Any]:
    """The google.rpc.Status details of an RPC error, unpacked."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        return []
    kinds_ = (
        error_details_pb2.BadRequest,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.ErrorInfo,
        error_details_pb2.ResourceInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.QuotaFailure,
    )
    out: list[Any] = []
    for packed in status.details:
        for cls in kinds_:
            if packed.Is(cls.DESCRIPTOR):
                msg = cls()
                packed.Unpack(msg)
                out.append(msg)
    return out


async def watch_raw(
    client: Client, graph_id: str, after_seq: int = 0, timeout: float = 30.0
) -> list[execution_pb2.Event]:
    """Watch to the end, heartbeats included."""
    req = orchestrator_pb2.WatchGraphRequest(graph_id=graph_id, after_seq=after_seq)
    return [msg.event async for msg in client.stub.WatchGraph(req, timeout=timeout)]


async def port_open(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``."""

    async def accepting() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await eventually(accepting, timeout, 0.02)


async def start_api_quickly(stack: ProcessStack, timeout: float = 20.0) -> None:
    """``stack.start_api()`` without gRPC's reconnect backoff: the client's first connection
    attempt is made only once the port accepts connections (saves seconds per start)."""
    stack.start("api", "serve")
    await port_open(stack.port, timeout)
    await stack.wait_serving(timeout)


# --- helpers for LLM provider tests ---------------------------------------------------------


def fast_retry(attempts: int = 3) -> dict[str, Any]:
    """A retry policy with tiny backoffs, for tests that retry."""
    return {"maxAttempts": attempts, "initialBackoff": "0.02s", "maxBackoff": "0.05s"}


async def everything(stack: InProcessStack, gid: str) -> str:
    """Every event, the status and the result of a graph, as text (to look for secrets)."""
    events = await stack.client.history(gid)
    status = await stack.client.status(gid)
    text = "".join(json_format.MessageToJson(e) for e in events) + json_format.MessageToJson(status)
    if status.state == execution_pb2.GRAPH_STATE_COMPLETED:
        text += json_format.MessageToJson(await stack.client.result(gid))
    return text


def varint(n: int) -> bytes:
    """``n`` as a protobuf varint (for requests written byte by byte)."""
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)
