"""Secrets never leave the process: not in logs (at DEBUG), events, statuses, results, RPC
errors, /metrics or `dago config`.

A real API and worker run as processes with an API key, an Anthropic key (the real SDK talks
to the fake Anthropic server), an OpenAI key and a Redis password, then go through successes
and failures: refused calls, invalid graphs, LLM errors whose upstream body echoes the key,
a failing tool, a cancel. Every byte they wrote and everything the API returns is searched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis as redis_sync
from google.protobuf import json_format

from dago.api.auth import hash_key, new_key
from dago.v1 import orchestrator_pb2
from fake_anthropic import Error, FakeAnthropic, Text
from harness import (
    ROOT,
    Client,
    RunningStack,
    echo,
    free_port,
    request,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

# API and worker processes, and the dago command.
pytestmark = pytest.mark.process

API_KEY = new_key()
ANTHROPIC_KEY = "sk-ant-api03-SECRETanthropic0123456789abcdef"
OPENAI_KEY = "sk-proj-SECREToPeNaI0123456789abcdef"
REDIS_PASSWORD = "SECRETredisPassw0rd0123"
SECRETS = {
    "API key": API_KEY,
    "Anthropic key": ANTHROPIC_KEY,
    "OpenAI key": OPENAI_KEY,
    "Redis password": REDIS_PASSWORD,
}


@pytest.fixture
def locked_redis() -> AsyncIterator[RedisServer]:
    """A private Redis that requires a password (set once it answers PING)."""
    server = RedisServer(name="locked")
    server.start()
    redis_sync.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
    try:
        yield server  # type: ignore[misc]
    finally:
        server.kill()


def leaks(text: str) -> list[str]:
    """Which secrets (or a long piece of one) occur in ``text``."""
    found = []
    for name, secret in SECRETS.items():
        pieces = {secret} | {secret[i : i + 16] for i in range(0, len(secret) - 16, 8)}
        if any(p in text for p in pieces):
            found.append(name)
    return found


@pytest.mark.redis
async def test_no_secret_reaches_logs_events_results_errors_or_metrics(
    locked_redis: RedisServer, key_prefix: str
) -> None:
    metrics_port = free_port()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    seen: list[str] = []
    async with FakeAnthropic() as fake:
        env = {
            "DAGO_AUTH": "keys",
            "DAGO_API_KEYS": f"{hash_key(API_KEY)}:team-s",
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
            "OPENAI_API_KEY": OPENAI_KEY,
            "DAGO_ANTHROPIC_BASE_URL": fake.url,
            "DAGO_LLM_PROVIDER": "anthropic",
            "DAGO_LOG_LEVEL": "DEBUG",
            "DAGO_METRICS_PORT": str(metrics_port),
        }
        async with RunningStack(url, key_prefix, **env) as stack:
            stack.start("w1", "worker")
            await start_api_quickly(stack)
            client = Client(f"127.0.0.1:{stack.port}", API_KEY)
            # Keys that are wrong in one character, or sent without the scheme, are refused
            # and never written anywhere either.
            near = API_KEY[:-1] + ("A" if API_KEY[-1] != "A" else "B")
            for value in (f"Bearer {near}", API_KEY, f"Basic {API_KEY}"):
                md = [("authorization", value)]
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(), metadata=md)
                seen.append(str(err.value.details()))
            SECRETS["near key"] = near
            try:
                # Upstream errors that echo the key back (a misbehaving proxy could).
                fake.script = [
                    Text("fine answer"),
                    Error(401, "authentication_error", f"invalid x-api-key {ANTHROPIC_KEY}"),
                    Error(
                        400, "invalid_request_error", f"bad request; your key is {ANTHROPIC_KEY}"
                    ),
                ]
                graphs = [
                    request([{"id": "ok", "llm": {"prompt": "hi"}}]),
                    request([{"id": "denied", "llm": {"prompt": "hi"}}]),
                    request([{"id": "bad", "llm": {"prompt": "hi"}}]),
                    request([tool("t", "fail", inputs={"message": "tool failed"})]),
                    request([echo("e", v="{{ inputs.x }}")], inputs={"x": "plain"}),
                ]
                ids = []
                for g in graphs:
                    gid, _ = await client.run(g, timeout=60)
                    ids.append(gid)
                slow = await client.submit(request([tool("s", "sleep", inputs={"seconds": 30})]))
                await client.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=slow))
                ids.append(slow)
                await client.wait(slow)
                for gid in ids:
                    for ev in await client.history(gid):
                        seen.append(json_format.MessageToJson(ev))
                    seen.append(json_format.MessageToJson(await client.status(gid)))
                    seen.append(json_format.MessageToJson(await client.result(gid)))
                    got = await client.stub.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid))
                    seen.append(json_format.MessageToJson(got))
                # Errors of bad requests.
                for bad in (
                    request([{"id": "x", "llm": {"prompt": "{{ inputs.nope }}"}}]),
                    request([{"id": "1bad", "tool": {"name": "nope"}}]),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await client.submit(bad)
                    seen.append(str(err.value.details()))
                    seen.append(repr(err.value.trailing_metadata()))
                async with httpx.AsyncClient() as http:
                    seen.append((await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text)
            finally:
                await client.close()
            # The key did reach the fake (that is how the SDK authenticates) ...
            assert any(ANTHROPIC_KEY in str(r.headers) for r in fake.requests)
            await stack.close()  # flush and stop before reading the logs
            for name in ("api", "w1"):
                seen.append(stack.log(name))
    # ... and the processes did run at DEBUG, so the search below covers their chatter.
    everything = "\n".join(seen)
    assert "DEBUG" in everything or '"level": "DEBUG"' in everything
    assert "x-api-key" in everything  # the upstream error was recorded, the key cut out of it
    assert "[redacted]" in everything
    assert leaks(everything) == [], [line[:300] for line in everything.splitlines() if leaks(line)][
        :5
    ]


def test_dago_config_redacts_every_secret() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python")),
        "DAGO_API_KEYS": f"{hash_key(API_KEY)}:team-s",
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OPENAI_API_KEY": OPENAI_KEY,
        "DAGO_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:6379/0",
    }
    p = subprocess.run(
        [sys.executable, "-m", "dago", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert leaks(p.stdout + p.stderr) == []
    assert hash_key(API_KEY) not in p.stdout  # even the hashes are shown as ***
