"""``dago dev`` supervises its children and stops them in order.

- A child that exits is restarted after a backoff (1, 2, 4, 8 s by default), saying so; the
  fifth exit within 60 s stops everything (:class:`Restarts`, and end to end).
- A worker killed while it runs a node is restarted under its own name and takes that node
  back at once: the graph completes seconds after the kill, with a lease of 60 s.
- Ctrl-C (SIGINT to the dev process group, as a terminal sends it) with a node running:
  the supervisor alone gets it (its children have sessions of their own) and stops Envoy,
  then the API and the workers, which finish and record the node, then Redis; in seconds.
- Its children do not outlive a killed ``dago dev``.
- It paces offline answers (40 words/s) unless told otherwise.

Each test runs ``python -m dago dev`` in a folder of its own (its ``.run`` holds the Redis
data), with offline answers paced (DAGO_OFFLINE_TOKENS_PER_S) so a node runs for seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dago.config import Settings
from dago.devtools import edge
from dago.devtools.dev import Restarts, _banner
from dago.llm.base import ChatMessage, LlmRequest
from dago.llm.offline import offline_answer
from dago.v1 import execution_pb2
from harness import (
    Client,
    ProcessStack,
    alive,
    children,
    dago_env,
    eventually,
    free_port,
    kinds,
    node_status,
    of_kind,
    plain,
    port_open,
    request,
)
from redisfixture import RedisServer

PROMPT = "Compare Redis Streams and Kafka for a small team that ships weekly."
"""Answered offline in 15 words: 3 s at 5 words/s."""
FIRST_RESTART_S = 0.25
"""The first restart delay of the test of repeated crashes (then 0.5, 1, 2 s)."""
ANSWER = offline_answer(LlmRequest("offline", [ChatMessage("user", PROMPT)], max_tokens=1024))


def test_restarts_back_off_and_give_up_on_the_fifth_exit_within_a_minute() -> None:
    r = Restarts()
    assert [r.exited(t) for t in (0.0, 1.0, 3.0, 7.0)] == [1, 2, 4, 8]
    assert r.exited(15.0) is None  # the fifth within 60 s
    r = Restarts()
    assert [r.exited(t) for t in (0.0, 61.0, 122.0, 183.0, 244.0, 305.0)] == [1] * 6
    r = Restarts(limit=10)
    assert [r.exited(float(t)) for t in range(7)] == [1, 2, 4, 8, 16, 30, 30]


@pytest.mark.process  # bash -n checks the commands
def test_the_banner_names_every_page_and_commands_that_run_as_typed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What a newcomer reads first: every page Envoy serves (README promises the console),
    and commands that run from the checkout without a PATH of their own (grpcurl is in
    .venv/bin, not on the PATH of a fresh machine)."""
    _banner(Settings(), "redis://127.0.0.1:6379/0", edge.EdgeConfig(listen_port=8080))
    out = capsys.readouterr().out
    for page in ("/ui/", "/console/", "/docs/", "/api/v1/openapi.json", "/health", "/metrics"):
        assert f"http://localhost:8080{page}" in out, (page, out)
    commands = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  ") and ln.split()]
    assert "grpcurl" not in commands and ".venv/bin/grpcurl" in commands, out
    # No <id> to paste into a shell (a redirect from a file "id"): the id comes from the
    # command that submits, and the next commands use $ID.
    shell = [ln for ln in out.splitlines() if ln.startswith("  ") and "/ui/#<id>" not in ln]
    assert not [ln for ln in shell if "<id>" in ln], out
    assert "ID=$(" in out and "/api/v1/graphs/$ID/status" in out, out
    # The commands under "Try:" and "REST (...):" paste into bash as they are.
    sections = [out.split(head, 1)[1].split("\n\n", 1)[0] for head in ("Try:\n", 'Envoy"):\n')]
    block = "\n".join(sections)
    assert block.count("curl ") >= 6 and block.count("grpcurl ") == 2, block
    check = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
    assert check.returncode == 0, (check.stderr, block)


@dataclass
class Dev:
    """A running ``python -m dago dev`` (its own session, like a terminal's foreground job)."""

    proc: subprocess.Popen[bytes]
    cwd: Path
    log: Path
    client: Client
    seen: dict[int, str] = field(default_factory=dict)
    """Every child seen, to kill at teardown: a child outliving a killed dev has no parent."""

    def children(self) -> dict[int, str]:
        """Its live child processes: pid -> command line."""
        kids = children(self.proc.pid)
        self.seen.update(kids)
        return kids

    def output(self) -> str:
        """What it printed so far (its children's output included)."""
        return self.log.read_text(errors="replace")

    def workers(self) -> dict[int, str]:
        """Its live worker processes: pid -> command line."""
        return {p: c for p, c in self.children().items() if "dago worker" in c}

    async def running(self, gid: str) -> None:
        """Wait until node ``x`` of ``gid`` has streamed text (it runs)."""

        async def streaming() -> bool:
            return bool(of_kind(await self.client.history(gid), "llm_delta", "x"))

        await eventually(streaming, 20, 0.05)

    async def exited(self, timeout: float) -> float:
        """Wait until it exits; returns how long that took."""
        t0 = time.monotonic()

        async def done() -> bool:
            return self.proc.poll() is not None

        await eventually(done, timeout, 0.05)
        return time.monotonic() - t0


@pytest.fixture
async def dev_factory() -> AsyncIterator[list[Dev]]:
    """Started devs, killed (with every child) at teardown if still running."""
    devs: list[Dev] = []
    yield devs
    for dev in devs:
        await dev.client.close()
        dev.children()
        if dev.proc.poll() is None:
            os.killpg(dev.proc.pid, signal.SIGKILL)
            dev.proc.wait()
        for pid, cmd in dev.seen.items():
            if alive(pid) and children_cmdline(pid) == cmd:  # not a reused pid
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(dev.cwd, ignore_errors=True)


def children_cmdline(pid: int) -> str:
    """The command line of ``pid`` as :func:`harness.children` reports it."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def spawn_dev(cwd: Path, log: Path, settings: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m dago dev`` in ``cwd`` and a session of its own, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dago", "dev"],
            env=dago_env(**settings),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def start_dev(devs: list[Dev], **env: str) -> Dev:
    """Start ``python -m dago dev`` in a new folder; wait for its banner."""
    cwd = Path(tempfile.mkdtemp(prefix="dago-test-devsup-"))
    grpc_port = free_port()
    settings = {
        "DAGO_GRPC_PORT": str(grpc_port),
        "DAGO_METRICS_PORT": str(free_port()),
        "DAGO_WORKER_METRICS_PORT": "0",
        "DAGO_EDGE_PORT": "0",
        "DAGO_OFFLINE_TOKENS_PER_S": "5",
        **env,
    }
    log = cwd / "dev.log"
    proc = spawn_dev(cwd, log, settings)
    dev = Dev(proc, cwd, log, Client(f"127.0.0.1:{grpc_port}"))
    devs.append(dev)

    async def banner() -> bool:
        return "dago is running" in dev.output() or proc.poll() is not None

    await eventually(banner, 30, 0.05)
    assert proc.poll() is None, dev.output()
    await port_open(grpc_port)
    dev.children()
    return dev


@pytest.mark.process
@pytest.mark.redis
async def test_a_killed_worker_is_restarted_and_takes_its_node_back_at_once(
    dev_factory: list[Dev],
) -> None:
    dev = await start_dev(dev_factory, DAGO_LEASE_MS="60000")
    gid = await dev.client.submit(request([{"id": "x", "llm": {"prompt": PROMPT}}]))
    await dev.running(gid)
    (worker,) = dev.workers()
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()

    st = await dev.client.wait(gid, timeout=30)
    took = time.monotonic() - killed
    out = dev.output()
    assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, out
    assert plain(node_status(st, "x").output)["text"] == ANSWER
    # Restart after 1 s, start, take back, 3 s of answer: far sooner than the 60 s lease.
    assert took < 20, (took, out)
    assert "worker-1 exited with code -9 (SIGKILL); restarting in 1 s (crash 1 of 5 in 60 s)" in out
    assert "worker-1 restarted" in out, out
    assert "held before it restarted" in out, out  # taken back, not reclaimed after the lease
    started = kinds(await dev.client.history(gid), "x").count("node_started")
    assert started == 2, started  # the killed run and the one that finished
    assert dev.proc.poll() is None, out
    assert list(dev.workers()) != [worker]

    os.killpg(dev.proc.pid, signal.SIGINT)
    await dev.exited(30)
    assert dev.proc.returncode == 0, dev.output()


@pytest.mark.process
@pytest.mark.redis
@pytest.mark.slow
async def test_a_child_that_keeps_crashing_stops_everything(dev_factory: list[Dev]) -> None:
    """Five kills of the worker within a minute: four restarts (first delay doubled each
    time), then a stop. The first delay is 0.25 s here (DAGO_DEV_RESTART_DELAY_S) instead of
    the default 1 s, which the killed-worker test above sees: 3.75 s of backoff, not 15."""
    dev = await start_dev(dev_factory, DAGO_DEV_RESTART_DELAY_S=str(FIRST_RESTART_S))
    kids = dev.children()
    killed: set[int] = set()
    for n in range(1, 6):

        async def new_worker() -> bool:
            return bool(set(dev.workers()) - killed)

        await eventually(new_worker, 30, 0.05)
        (worker,) = dev.workers()
        os.kill(worker, signal.SIGKILL)
        killed.add(worker)
        if n < 5:
            said = f"restarting in {FIRST_RESTART_S * 2 ** (n - 1):g} s (crash {n} of 5 in 60 s)"

            async def restarting(said: str = said) -> bool:
                return said in dev.output()

            await eventually(restarting, 10, 0.05)
    await dev.exited(30)
    out = dev.output()
    assert dev.proc.returncode == 1, out
    assert (
        "worker-1 exited with code -9 (SIGKILL): 5 exits in 60 s, so it is not restarted "
        "again; stopping everything (its output is above)" in out
    ), out
    assert not [p for p in {**kids, **dev.seen} if alive(p)], out


@pytest.mark.process
@pytest.mark.redis
@pytest.mark.edge
async def test_ctrl_c_stops_edge_then_api_and_drained_workers_then_redis(
    dev_factory: list[Dev],
) -> None:
    dev = await start_dev(dev_factory, DAGO_EDGE_PORT=str(free_port()))
    kids = dev.children()
    assert sum("envoy" in c for c in kids.values()) == 1, (kids, dev.output())
    gid = await dev.client.submit(request([{"id": "x", "llm": {"prompt": PROMPT}}]))
    await dev.running(gid)

    os.killpg(dev.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    took = await dev.exited(60)
    out = dev.output()
    assert dev.proc.returncode == 0, out
    assert out.rstrip().endswith(
        "dago dev: stopped; Redis keeps its data in .run/redis for the next start."
    ), out
    assert took < 10, (took, out)  # the node's 3 s, not the 35 s of a failing drain
    assert not [p for p in kids if alive(p)], out
    redis_log = (dev.cwd / ".run/redis/redis.log").read_text()
    # Redis was stopped by dago dev (SIGTERM, last), not by the terminal's SIGINT.
    assert "Received SIGINT" not in redis_log and "Received SIGTERM" in redis_log, redis_log

    # The node's result is in Redis's data: read it with an API and no worker, so nothing
    # could have run the node since.
    redis = RedisServer(appendonly=True)
    shutil.copytree(dev.cwd / ".run/redis/appendonlydir", redis.dir / "appendonlydir")
    redis.start()
    api = ProcessStack(redis.url, "dago", DAGO_SHARDS="8")
    try:
        api.start("api", "serve")  # not SERVING (no worker), but it answers
        await port_open(api.port)
        st = await api.client.status(gid)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, (st, out)
        assert plain(node_status(st, "x").output)["text"] == ANSWER
        assert kinds(await api.client.history(gid), "x").count("node_started") == 1
    finally:
        await api.close()
        redis.kill()


@pytest.mark.process
@pytest.mark.redis
async def test_dev_paces_offline_answers_unless_told_otherwise(dev_factory: list[Dev]) -> None:
    """40 words/s: 15 words in 5 deltas, the last 0.3 s after the first (unpaced: within
    milliseconds)."""
    dev = await start_dev(dev_factory, DAGO_OFFLINE_TOKENS_PER_S="")
    gid = await dev.client.submit(request([{"id": "x", "llm": {"prompt": PROMPT}}]))
    await dev.client.wait(gid)
    deltas = of_kind(await dev.client.history(gid), "llm_delta", "x")
    spread = deltas[-1].time.ToDatetime() - deltas[0].time.ToDatetime()
    assert len(deltas) >= 4 and spread.total_seconds() >= 0.25, (len(deltas), spread)


@pytest.mark.process
@pytest.mark.redis
async def test_children_stop_when_dago_dev_is_killed(dev_factory: list[Dev]) -> None:
    """Its children have sessions of their own, so a SIGKILL of dago dev reaches none of
    them; they must not run on, holding the ports and the Redis data."""
    dev = await start_dev(dev_factory)
    kids = dev.children()
    assert len(kids) == 3, kids  # redis, api, worker
    dev.proc.kill()
    dev.proc.wait()

    async def gone() -> bool:
        return not any(alive(p) for p in kids)

    await eventually(gone, 30, 0.05)
