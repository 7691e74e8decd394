"""``python bench/fake_llm.py PORT LATENCY_MS``: the tests' fake Anthropic Messages API
(tests/fake_anthropic.py) as a process of its own, answering every request after a fixed
latency, so the benchmark can subtract the model's own time from an LLM node's."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop

from fake_anthropic import FakeAnthropic, Text, Usage


class FixedLatency(FakeAnthropic):
    """A fake whose every answer takes ``latency`` seconds before its first byte."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self.default = Text("A short fixed answer from the benchmark model.", 3, Usage(12, 9))

    async def handle(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        body: dict[str, Any],
    ) -> None:
        """Wait the fixed latency, then answer as the tests' fake does."""
        await asyncio.sleep(self.latency)
        self.requests.clear()  # a long benchmark must not keep every request
        await super().handle(reader, writer, method, path, body)


async def main(port: int, latency_ms: float) -> None:
    """Serve on 127.0.0.1:``port`` until killed."""
    fake = FixedLatency(latency_ms / 1000)
    server = await asyncio.start_server(fake._serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), float(sys.argv[2])))
