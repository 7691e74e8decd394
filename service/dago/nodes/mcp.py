"""Tools of MCP servers the operator configures, through the official ``mcp`` SDK.

``DAGO_MCP_SERVERS`` is a JSON object naming each server::

    {"files": {"command": ["python", "-m", "my_mcp_server"], "env": {"ROOT": "/data"}},
     "search": {"url": "https://mcp.example/mcp", "headers": {"authorization": "Bearer ..."}}}

``command`` (a list: program and arguments; optional ``env`` merged over the SDK's
minimal default environment, optional ``cwd``) starts a stdio server;
``url`` (optional ``headers``) connects to a streamable HTTP server. Graphs name a
server's tools ``<server>/<tool>``, or ``<server>/*`` for all of them.

The setting is parsed by ``dago.config.parse_mcp_servers`` (checked at start).
Validation: the API only checks that ``<server>`` is configured (it never starts a
server); whether ``<tool>`` exists is checked when a worker runs the node, which
then fails (not retryable) saying which tools the server has.

Sessions start lazily, on a worker's first use of a server, and are reused by every
attempt of that worker process; each lives in its own task (the SDK's transports
must be entered and left by the same task) until ``close()`` at worker shutdown.
A session that ended (its process died) is started again on the next use. The
SDK is imported on first use, off the event loop (it takes about a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import re
from typing import Any

from dago.config import MCP_SERVER_NAME, McpServerConfig
from dago.engine.outcome import NodeFailure, invalid
from dago.nodes.base import NodeContext, Tool
from dago.v1 import graph_pb2

log = logging.getLogger("dago.mcp")

START_TIMEOUT_S = 30.0
IDEMPOTENCY_META = "dago.dev/idempotency-key"
CONNECTION_CLOSED = -32000
"""The SDK's MCPError code when the server went away (its process died, the HTTP session ended)."""


def split_name(name: str) -> tuple[str, str] | None:
    """``(server, tool)`` of an MCP tool name ``<server>/<tool>``, else None: the server a
    valid server name (``MCP_SERVER_NAME``), the tool 1-128 printable ASCII characters
    without spaces (or ``*``); full matches, so ``"srv/t\\n"`` is no tool name."""
    server, sep, tool = name.partition("/")
    if sep and MCP_SERVER_NAME.fullmatch(server) and _TOOL_NAME.fullmatch(tool):
        return server, tool
    return None


_TOOL_NAME = re.compile(r"[!-~]{1,128}")


class _Session:
    """One server's live client, owned by its own task."""

    def __init__(self, config: McpServerConfig) -> None:
        self.config = config
        self.client: Any = None
        self.tools: dict[str, Any] = {}
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._own(ready), name=f"mcp:{self.config.name}")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await asyncio.shield(ready)
        except BaseException:
            await self.close()
            raise

    async def _own(self, ready: asyncio.Future[None]) -> None:
        mcp = importlib.import_module("mcp")
        c = self.config
        try:
            async with contextlib.AsyncExitStack() as stack:
                if c.command:
                    params = mcp.StdioServerParameters(
                        command=c.command[0], args=list(c.command[1:]), env=c.env, cwd=c.cwd or None
                    )
                    client = mcp.Client(params)
                else:
                    httpx2 = importlib.import_module("httpx2")
                    http = await stack.enter_async_context(httpx2.AsyncClient(headers=c.headers))
                    transport = importlib.import_module("mcp.client.streamable_http")
                    client = mcp.Client(transport.streamable_http_client(c.url, http_client=http))
                self.client = await stack.enter_async_context(client)
                listing = await self.client.list_tools()
                self.tools = {t.name: t for t in listing.tools}
                log.info("MCP server %s started: %d tools", c.name, len(self.tools))
                ready.set_result(None)
                await self._stop.wait()
        except BaseException as e:
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            elif not isinstance(e, asyncio.CancelledError):
                log.warning("MCP server %s ended: %s", c.name, e)
            if isinstance(e, asyncio.CancelledError):
                raise
        finally:
            self.client = None

    async def close(self) -> None:
        stopping = self._task is not None and not self._task.done()
        self._stop.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(5):
                    await asyncio.gather(self._task, return_exceptions=True)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if stopping:
            log.info("MCP server %s stopped", self.config.name)


class McpServers:
    """The MCP servers of one worker process: sessions started on first use, then reused."""

    def __init__(self, configs: dict[str, McpServerConfig]) -> None:
        self.configs = configs
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False

    async def _session(self, server: str) -> _Session:
        config = self.configs.get(server)
        if config is None:
            raise invalid(f'no MCP server named "{server}" is configured (DAGO_MCP_SERVERS)')
        if self._closed:
            raise NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, "the worker is stopping", True)
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            session = self._sessions.get(server)
            if session is not None and session.alive and session.client is not None:
                return session
            if session is not None:
                await session.close()
            await asyncio.to_thread(importlib.import_module, "mcp")
            session = _Session(config)
            try:
                await session.start()
            except Exception as e:
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_TRANSIENT,
                    f"cannot start MCP server {server!r}: {type(e).__name__}: {e}",
                    True,
                ) from None
            self._sessions[server] = session
            return session

    async def tools(self, server: str) -> list[Tool]:
        """Every tool of ``server``, named ``<server>/<tool>``."""
        session = await self._session(server)
        return [self._tool(server, t) for t in session.tools.values()]

    async def tool(self, name: str) -> Tool | None:
        """The tool ``<server>/<tool>``; None when the server is not configured; NodeFailure
        when it is but has no such tool."""
        parts = split_name(name)
        if parts is None or parts[0] not in self.configs:
            return None
        server, tool = parts
        session = await self._session(server)
        found = session.tools.get(tool)
        if found is None:
            raise invalid(
                f'MCP server "{server}" has no tool "{tool}"; it has: '
                + (", ".join(sorted(session.tools)) or "none")
            )
        return self._tool(server, found)

    def _tool(self, server: str, t: Any) -> Tool:
        async def call(args: Any, ctx: NodeContext) -> Any:
            return await self.call(server, t.name, args, ctx)

        schema = t.input_schema if isinstance(t.input_schema, dict) else {"type": "object"}
        return Tool(f"{server}/{t.name}", t.description or t.title or t.name, call, schema)

    async def call(self, server: str, tool: str, args: Any, ctx: NodeContext) -> Any:
        """Call a tool; its structured content (else its text) is the result. A result the
        server marks as an error raises a (not retryable) NodeFailure with its text."""
        session = await self._session(server)
        arguments = args if isinstance(args, dict) else {"value": args}
        try:
            result = await session.client.call_tool(
                tool, arguments, meta={IDEMPOTENCY_META: ctx.idempotency_key}
            )
        except Exception as e:
            code = getattr(e, "code", None)
            if code == CONNECTION_CLOSED or session.client is None:
                # The next use starts the server again.
                await self._drop(server, session)
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_TRANSIENT,
                    f"MCP server {server!r} went away during {tool} ({e}); it is started again "
                    "on the next call",
                    True,
                ) from None
            if isinstance(code, int):  # the server refused the request (bad arguments...)
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_PERMANENT, f"{server}/{tool}: {e}", False
                ) from None
            raise
        texts = [getattr(c, "text", "") for c in result.content if getattr(c, "type", "") == "text"]
        text = "\n".join(texts)
        if result.is_error:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_PERMANENT,
                f"{server}/{tool}: {text or 'the tool failed'}",
                False,
            )
        if result.structured_content is not None:
            sc = result.structured_content
            # The SDK wraps a bare return value as {"result": value}.
            return sc["result"] if set(sc) == {"result"} else sc
        return text

    async def _drop(self, server: str, session: _Session) -> None:
        async with self._locks.setdefault(server, asyncio.Lock()):
            if self._sessions.get(server) is session:
                del self._sessions[server]
        await session.close()

    async def close(self) -> None:
        """Stop every session (and the stdio servers' processes)."""
        self._closed = True
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
