"""The TypeScript client (clients/typescript: protoc-gen-es code + Connect) run by Node against a
real Envoy in front of a real API and worker: gRPC-Web through Envoy (submit, watch with resume,
cancel, google.rpc.BadRequest details) and native gRPC to the API port.
``node --test clients/typescript/test/`` does the calls; this module starts the stack for it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time

import pytest

from harness import ROOT
from test_envoy import Edge

# The module-scoped fixture (API + worker + Envoy on free ports), imported to be used here.
from test_envoy import edge_stack as edge_stack

CLIENT = ROOT / "clients" / "typescript"
NODE_TIMEOUT_S = 60


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


async def test_typescript_client_through_envoy(edge_stack: Edge) -> None:
    node = node_binary()
    env = {
        **os.environ,
        "DAGO_EDGE_URL": edge_stack.base,
        "DAGO_GRPC_URL": f"http://127.0.0.1:{edge_stack.stack.port}",
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
    for line in ("pass 5", "fail 0", "skipped 0", "cancelled 0"):
        assert re.search(rf"(?m)^\S+ {line}$", text), f"no '{line}' in Node's summary:\n{text}"
    print(f"node --test: {time.monotonic() - started:.1f}s\n{text}")
