"""A minimal HTTP/1.1 server on 127.0.0.1 for the fake model APIs (an asyncio server on the
test's event loop): lifecycle, request parsing and recording, JSON and SSE replies. A
subclass answers each request in :meth:`FakeHttpServer.handle`; one request per connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
    """One HTTP/1.1 request: method, path, headers (names lowercased) and body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, raw


@dataclass
class Recorded:
    """One request the fake received."""

    at: float
    headers: dict[str, str]
    body: dict[str, Any]


class FakeHttpServer:
    """``async with Fake() as fake``: a running server; ``fake.url`` is its base URL."""

    url_suffix = ""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.url = ""

    async def __aenter__(self) -> Any:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self.url_suffix}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            method, path, headers, raw = await read_request(reader)
            body = json.loads(raw) if raw else {}
            self.requests.append(Recorded(time.monotonic(), headers, body))
            await self.handle(reader, writer, method, path, body)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed.set()
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        """Answer one request."""
        raise NotImplementedError

    async def send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        extra: dict[str, str] | None = None,
    ) -> None:
        """A complete JSON reply."""
        data = json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} X", "content-type: application/json"]
        head += [f"content-length: {len(data)}", "connection: close"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    async def start_sse(self, writer: asyncio.StreamWriter) -> None:
        """The head of a Server-Sent Events reply."""
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"connection: close\r\n\r\n"
        )
        await writer.drain()
