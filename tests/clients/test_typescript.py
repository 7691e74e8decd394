"""The TypeScript client (clients/typescript: protoc-gen-es code + Connect) run by Node against a
real Envoy in front of a real API and worker: gRPC-Web through Envoy (submit, watch with resume,
cancel, google.rpc.BadRequest details, graph() and list() with the apiKey option against a
second stack that requires API keys) and native gRPC to the API port.
``node --test clients/typescript/test/`` does the calls; this module starts the stacks for it."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from dago.api.auth import hash_key, new_key
from harness import (
    ROOT,
    Edge,
    ProcessStack,
    edge_healthy,
    envoy_config,
    start_api_quickly,
    start_envoy,
)
from redisfixture import RedisServer

# node runs the client against Envoy in front of API and worker processes.
pytestmark = [pytest.mark.edge, pytest.mark.process]

CLIENT = ROOT / "clients" / "typescript"
NODE_TIMEOUT_S = 60
# The Node tests in clients/typescript/test/ (each must run: none skipped).
NODE_TESTS = 14
KEYED_NAMESPACE = "team-ts"
OPERATOR_NAMESPACE = "ops-ts"
OPERATOR_KEY = new_key()
"""A key of the keyed stack's operators' namespace (DAGO_OPERATOR_NAMESPACES)."""


@pytest.fixture(scope="module")
async def keyed_edge(redis_single: RedisServer) -> AsyncIterator[tuple[str, str]]:
    """API (DAGO_AUTH=keys, one key of namespace team-ts and OPERATOR_KEY of the operators'
    namespace ops-ts) + worker + Envoy: (Envoy's URL, the team-ts key)."""
    key = new_key()
    stack = ProcessStack(
        redis_single.url,
        f"ttskeys{secrets.token_hex(3)}",
        DAGO_AUTH="keys",
        DAGO_API_KEYS=f"{hash_key(key)}:{KEYED_NAMESPACE},{hash_key(OPERATOR_KEY)}:{OPERATOR_NAMESPACE}",
        DAGO_OPERATOR_NAMESPACES=OPERATOR_NAMESPACE,
    )
    config, port = envoy_config(stack)
    envoy = start_envoy(config, stack.logs / "envoy.log")
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20)
    try:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        await edge_healthy(envoy, http, stack)
        yield f"http://127.0.0.1:{port}", key
    finally:
        await http.aclose()
        envoy.terminate()
        envoy.wait(10)
        await stack.close()


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node (Node.js 20+) is not on PATH: it runs the TypeScript client's tests")
    if not (CLIENT / "node_modules" / "@connectrpc" / "connect-web").is_dir():
        pytest.fail(
            f"{CLIENT / 'node_modules'} is missing or incomplete: run `make setup` "
            "(it runs `npm ci --prefix clients/typescript`)"
        )
    return node


async def test_typescript_client_through_envoy(
    edge_stack: Edge, keyed_edge: tuple[str, str]
) -> None:
    node = node_binary()
    keyed_url, key = keyed_edge
    env = {
        **os.environ,
        "DAGO_EDGE_URL": edge_stack.base,
        "DAGO_GRPC_URL": f"http://127.0.0.1:{edge_stack.stack.port}",
        "DAGO_KEYED_EDGE_URL": keyed_url,
        "DAGO_KEYED_API_KEY": key,
        "DAGO_KEYED_NAMESPACE": KEYED_NAMESPACE,
        "DAGO_KEYED_OPERATOR_KEY": OPERATOR_KEY,
        "DAGO_KEYED_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,
        "NO_COLOR": "1",
    }
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=spec",
        str(CLIENT / "test"),
        cwd=CLIENT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"node --test ran over {NODE_TIMEOUT_S}s:\n{out.decode()}\n{edge_stack.logs()}")
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"node --test exit {proc.returncode}:\n{text}\n{edge_stack.logs()}"
    # Every test ran (none skipped), so native gRPC was exercised too.
    for line in (f"tests {NODE_TESTS}", f"pass {NODE_TESTS}", "fail 0", "skipped 0", "cancelled 0"):
        assert re.search(rf"(?m)^\S+ {line}$", text), f"no '{line}' in Node's summary:\n{text}"
    print(f"node --test: {time.monotonic() - started:.1f}s\n{text}")
