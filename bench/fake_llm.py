"""``python bench/fake_llm.py PORT LATENCY_MS``: a fake Anthropic Messages API as a process of
its own, answering every request after a fixed latency, so the benchmark can subtract the
model's own time from an LLM node's.

The answer is the tests' fake's (tests/support/fake_anthropic.py: the same SSE events, usage and
text), but the connection handling is the real API's: HTTP/1.1 keep-alive, the streamed
answer in chunked transfer encoding, so a client's connection pool reuses its connections
instead of connecting for every call (the tests' fake closes each connection after one
answer, which the tests need to see a client go away). The reply bytes are built once per
model: the fake's own CPU per call stays small next to the client's on a shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import uvloop

from fake_anthropic import Text, Usage, reply_events, reply_message
from fakehttp import read_request

ANSWER = Text("A short fixed answer from the benchmark model.", 3, Usage(12, 9))


class FixedLatency:
    """A keep-alive server whose every answer takes ``latency`` seconds before its first byte."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self._sse: dict[str, bytes] = {}
        self._json: dict[str, bytes] = {}

    def _stream_body(self, model: str) -> bytes:
        body = self._sse.get(model)
        if body is None:
            chunks = []
            for name, data in reply_events(ANSWER, model):
                frame = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                chunks.append(b"%x\r\n%s\r\n" % (len(frame), frame))
            body = self._sse[model] = b"".join(chunks) + b"0\r\n\r\n"
        return body

    def _json_body(self, model: str) -> bytes:
        body = self._json.get(model)
        if body is None:
            body = self._json[model] = json.dumps(reply_message(ANSWER, model)).encode()
        return body

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer the requests of one connection, one after the other, until it closes."""
        try:
            while True:
                try:
                    method, path, headers, raw = await read_request(reader)
                except asyncio.IncompleteReadError:
                    return  # the client closed its idle connection
                close = headers.get("connection", "").lower() == "close"
                keep = b"connection: close\r\n" if close else b"connection: keep-alive\r\n"
                if method != "POST" or not path.startswith("/v1/messages"):
                    writer.write(b"HTTP/1.1 404 X\r\ncontent-length: 0\r\n" + keep + b"\r\n")
                    await writer.drain()
                    continue
                body: dict[str, Any] = json.loads(raw) if raw else {}
                model = str(body.get("model", "claude-test"))
                await asyncio.sleep(self.latency)
                if body.get("stream"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n%s\r\n" % keep
                    )
                    writer.write(self._stream_body(model))
                else:
                    data = self._json_body(model)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\n%s\r\n%s" % (len(data), keep, data)
                    )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def main(port: int, latency_ms: float) -> None:
    """Serve on 127.0.0.1:``port`` until killed."""
    fake = FixedLatency(latency_ms / 1000)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2])))
