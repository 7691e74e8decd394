"""A model rate limit holds across worker processes: the calls two workers make to one model
under DAGO_RATE_LIMITS, counted over a minute of load far above the limit.

Run by hand (not part of `make bench`)::

    PYTHONPATH=service:gen/python:clients/python:tests/support:bench \\
        .venv/bin/python bench/ratelimits.py [--rpm 60] [--seconds 60] [--runs 150]

It starts a private Redis, the benchmark's fake Anthropic API (bench/fake_llm.py, 50 ms per
answer), the API and two worker processes with ``{"anthropic/<model>": {"requests_per_minute":
RPM}}`` (burst: one second), submits ``--runs`` one-llm-node runs at once (far more than a
minute's allowance, so the workers always have calls waiting), and counts the model calls
(the llm nodes' completions: one call each) in the ``--seconds`` after the first. Prints the
count, the limit's allowance over that time (the bucket's two requests plus the rate), the
deviation, how many attempts were throttled and that none was consumed by throttling, how
late throttled nodes started again after their due time and how far apart those were.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path

import redis
from procs import Procs, free_port, pythonpath, start_redis, wait_port

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import Client, eventually, request

HERE = Path(__file__).parent
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
MODEL = "claude-sonnet-4-6"


def env(redis_url: str, prefix: str, api_port: int, llm_port: int, rpm: float) -> dict[str, str]:
    """The settings of every dago process."""
    return {
        "PYTHONPATH": pythonpath(),
        "DAGO_REDIS_URL": redis_url,
        "DAGO_KEY_PREFIX": prefix,
        "DAGO_GRPC_HOST": "127.0.0.1",
        "DAGO_GRPC_PORT": str(api_port),
        "DAGO_METRICS_PORT": "0",
        "DAGO_WORKER_METRICS_PORT": "0",
        "DAGO_LOG_LEVEL": "WARNING",
        "DAGO_AUTH": "off",
        "DAGO_LLM_PROVIDER": "anthropic",
        "DAGO_ANTHROPIC_BASE_URL": f"http://127.0.0.1:{llm_port}",
        "ANTHROPIC_API_KEY": "sk-ant-bench-not-a-real-key",
        "DAGO_RATE_LIMITS": json.dumps({f"anthropic/{MODEL}": {"requests_per_minute": rpm}}),
    }


async def measure(args: argparse.Namespace, client: Client) -> None:
    node = {
        "id": "ask",
        "llm": {"prompt": "One word.", "model": MODEL},
        "retry": {"maxAttempts": 1},
    }
    gids = [await client.submit(request([node])) for _ in range(args.runs)]
    t0 = time.monotonic()

    async def one_call() -> bool:  # the workers' first call waits for their SDK import
        states = [(await client.status(g)).state for g in gids[:3]]
        return COMPLETED in states

    await eventually(one_call, 120, 0.2)
    await asyncio.sleep(args.seconds + 3)
    ends: list[float] = []
    throttled = attempts_over_one = 0
    late: list[float] = []
    dues: list[float] = []
    for gid in gids:
        st = await client.status(gid)
        (n,) = st.nodes
        if n.state == execution_pb2.NODE_STATE_COMPLETED:
            ends.append(n.end_time.ToMilliseconds() / 1000)
            attempts_over_one += n.attempt > 1
        req = orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, page_size=1000)
        events = (await client.stub.ListGraphEvents(req, timeout=30)).events
        throttled += sum(1 for e in events if e.WhichOneof("payload") == "node_throttled")
        due = 0.0
        for e in events:
            kind = e.WhichOneof("payload")
            if kind == "node_throttled":
                due = e.time.ToMilliseconds() + e.node_throttled.wait_ms
            elif kind == "node_started" and due:
                late.append(e.time.ToMilliseconds() - due)
                dues.append(due)
                due = 0.0
    ends.sort()
    first = ends[0]
    calls = sum(1 for t in ends if t - first <= args.seconds)
    allowed = 2 + args.rpm * args.seconds / 60  # the bucket (two requests) and the refill
    print(f"{len(ends)} of {args.runs} runs completed in {time.monotonic() - t0:.0f} s")
    print(
        f"calls in the {args.seconds:g} s after the first: {calls}; the limit allows {allowed:g} "
        f"({args.rpm:g}/min + the bucket's 2): {100 * (calls - allowed) / allowed:+.1f}%"
    )
    print(f"throttled attempts: {throttled}; attempts consumed by throttling: {attempts_over_one}")
    if late:
        late.sort()
        p50, p90 = late[len(late) // 2], late[int(len(late) * 0.9)]
        print(f"throttled nodes started again {p50:.0f} ms (p50), {p90:.0f} ms (p90) after due")
        dues.sort()
        gaps = sorted(b - a for a, b in itertools.pairwise(dues))
        print(
            f"their due times {gaps[len(gaps) // 2]:.0f} ms apart (p50), {gaps[-1]:.0f} ms at most"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpm", type=float, default=60)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--runs", type=int, default=150)
    args = parser.parse_args()
    procs = Procs(Path(tempfile.mkdtemp(prefix="dago-bench-ratelimits-")))
    try:
        redis_url, _ = start_redis(procs)
        llm_port, api_port = free_port(), free_port()
        fake = [sys.executable, str(HERE / "fake_llm.py"), str(llm_port), "50"]
        proc = procs.start("fake-anthropic", fake, {"PYTHONPATH": pythonpath()})
        wait_port(llm_port, proc, procs.log("fake-anthropic"))
        prefix = f"brl{secrets.token_hex(3)}"
        e = env(redis_url, prefix, api_port, llm_port, args.rpm)
        api = procs.start("api", [sys.executable, "-m", "dago", "serve"], e)
        wait_port(api_port, api, procs.log("api"))
        for w in ("w1", "w2"):
            procs.start(w, [sys.executable, "-m", "dago", "worker"], {**e, "DAGO_WORKER_ID": w})
        r = redis.Redis.from_url(redis_url)

        async def run() -> None:
            async def registered() -> bool:
                return bool(r.hlen(f"{prefix}:{{workers}}:info") >= 2)

            await eventually(registered, 60, 0.2)
            client = Client(f"127.0.0.1:{api_port}")
            try:
                await measure(args, client)
            finally:
                await client.close()

        asyncio.run(run())
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
