"""HTTP nodes through the real stack against a real local HTTP server.

Private, loopback, link-local and metadata addresses are refused (checked on the resolved
address, so a host name resolving to loopback is refused too) unless allowed by
``DAGO_HTTP_ALLOW``; allowed requests render their templates, parse JSON, cap the response
size, do not follow redirects, and classify 5xx as retryable and 4xx as final.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dago.nodes.http import SafeHttp
from dago.v1 import execution_pb2, graph_pb2
from harness import InProcessStack, node_status, plain, request, stack_settings
from redisfixture import RedisServer

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED


class LocalServer:
    """A tiny HTTP/1.1 server on 127.0.0.1 (one request per connection)."""

    def __init__(self) -> None:
        self.port = 0
        self.hits: list[tuple[str, str, dict[str, str], bytes]] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> LocalServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (h.split(":", 1) for h in head[1:] if ":" in h)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.hits.append((method, path, headers, body))
            status, ctype, data, extra = self._route(method, path, headers, body)
            lines = [f"HTTP/1.1 {status} X", f"content-type: {ctype}"]
            lines += [f"content-length: {len(data)}", "connection: close", *extra]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes, list[str]]:
        if path == "/json":
            echo = {"method": method, "body": body.decode(), "x-token": headers.get("x-token")}
            return 200, "application/json", json.dumps({"ok": True, "echo": echo}).encode(), []
        if path == "/text":
            return 200, "text/plain; charset=utf-8", b"plain words", []
        if path == "/big":
            return 200, "text/plain", b"x" * 5000, []
        if path == "/redirect":
            return 302, "text/plain", b"", ["location: http://169.254.169.254/"]
        if path == "/boom":
            return 503, "text/plain", b"down for maintenance", []
        return 404, "text/plain", b"no such page", []


def http(node_id: str, url: str, **fields: Any) -> dict[str, Any]:
    node_fields = {k: fields.pop(k) for k in ("retry", "inputs") if k in fields}
    return {"id": node_id, "http": {"url": url, **fields}, **node_fields}


@pytest.fixture
async def server() -> AsyncIterator[LocalServer]:
    async with LocalServer() as s:
        yield s


async def run_one(stack: InProcessStack, node: dict[str, Any], **inputs: Any) -> Any:
    _, st = await stack.client.run(request([node], inputs=inputs))
    return node_status(st, node["id"]), st


async def test_private_and_loopback_addresses_are_refused(
    redis_single: RedisServer, key_prefix: str, server: LocalServer
) -> None:
    urls = [
        f"http://127.0.0.1:{server.port}/json",
        f"http://localhost:{server.port}/json",  # a name that resolves to loopback
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
    ]
    async with InProcessStack(stack_settings(redis_single.url, key_prefix)) as stack:
        results = await asyncio.gather(*(run_one(stack, http("h", u)) for u in urls))
    for url, (ns, st) in zip(urls, results, strict=True):
        assert st.state == FAILED, url
        assert ns.error.error_class == graph_pb2.ERROR_CLASS_INVALID, url
        assert "refused" in ns.error.message and "DAGO_HTTP_ALLOW" in ns.error.message, url
        assert len(ns.attempts) == 1
    assert server.hits == []  # nothing reached the server


async def test_allowlisted_server_json_text_caps_redirects_and_errors(
    redis_single: RedisServer, key_prefix: str, server: LocalServer
) -> None:
    base = f"http://127.0.0.1:{server.port}"
    settings = stack_settings(redis_single.url, key_prefix, http_allow="127.0.0.0/8,example.test")
    retry = {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.02s"}
    async with InProcessStack(settings) as stack:
        post = http(
            "h",
            base + "/{{ inputs.path }}",
            method="POST",
            headers={"X-Token": "t-{{ inputs.n }}"},
            body="{{ inputs.payload }}",
        )
        (ns, st), (text, _), (big, _), (redir, _), (boom, _), (missing, _) = await asyncio.gather(
            run_one(stack, post, path="json", n=7, payload={"q": [1, 2]}),
            run_one(stack, http("h", base + "/text")),
            run_one(stack, http("h", base + "/big", maxResponseBytes=1000)),
            run_one(stack, http("h", base + "/redirect")),
            run_one(stack, http("h", base + "/boom", retry=retry)),
            run_one(stack, http("h", base + "/nope", retry=retry)),
        )
    assert st.state == COMPLETED, st
    out = plain(ns.output)
    assert out["status"] == 200 and out["headers"]["content-type"] == "application/json"
    assert out["body"] == {
        "ok": True,
        "echo": {"method": "POST", "body": '{"q":[1,2]}', "x-token": "t-7"},
    }
    assert plain(text.output)["body"] == "plain words"
    assert big.error.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert "larger than 1000 bytes" in big.error.message
    # Redirects are not followed (the target would be the metadata service).
    r = plain(redir.output)
    assert r["status"] == 302 and r["headers"]["location"] == "http://169.254.169.254/"
    assert boom.error.error_class == graph_pb2.ERROR_CLASS_TRANSIENT and len(boom.attempts) == 2
    assert "503" in boom.error.message
    assert missing.error.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert len(missing.attempts) == 1 and "404" in missing.error.message


def test_allow_rules_match_names_networks_and_mapped_addresses() -> None:
    h = SafeHttp("10.0.0.0/8, internal.example", 1000)
    ip = ipaddress.ip_address
    assert h.allowed("x", ip("10.9.8.7"))
    assert not h.allowed("x", ip("172.16.0.1"))
    assert h.allowed("internal.example", ip("172.16.0.1"))
    assert h.allowed("INTERNAL.example.", ip("192.168.1.1"))
    assert not h.allowed("x", ip("::ffff:127.0.0.1"))
    assert h.allowed("x", ip("::ffff:10.0.0.1"))
    assert not h.allowed("x", ip("100.64.0.1"))  # carrier-grade NAT
    assert not h.allowed("x", ip("fd00:ec2::254"))  # the IPv6 metadata service
    assert h.allowed("x", ip("93.184.216.34"))
