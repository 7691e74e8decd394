"""Traces: a real OTLP/gRPC receiver (the official opentelemetry-proto service) gets the
spans of the API process and of a separate worker process: one trace per graph, joined
to the caller's traceparent, with the node attempts, the LLM call (GenAI conventions) and
the HTTP call as children."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)

from dago.observe.tracing import enabled_by
from dago.v1 import execution_pb2
from fake_anthropic import FakeAnthropic, Text, Usage
from fakehttp import FakeHttpServer
from harness import (
    ROOT,
    RunningStack,
    echo,
    edge,
    eventually,
    fast_retry,
    request,
    start_api_quickly,
    tool,
)
from obshelpers import TOOLS
from redisfixture import RedisServer

# The worker (or the dago command) runs as a process.
pytestmark = pytest.mark.process

MODEL = "claude-sonnet-4-6-20260101"


@dataclass
class Span:
    """What the tests look at in a received span."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    error: bool
    attrs: dict[str, Any]


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace receiver keeping every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            res = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Span(
                            service=str(res.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            kind=s.kind,
                            error=s.status.code == 2,
                            attrs={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()


class Target(FakeHttpServer):
    """An HTTP node's target: answers JSON, records the headers it got."""

    async def handle(self, reader: Any, writer: Any, method: str, path: str, body: Any) -> None:
        await self.send_json(writer, 200, {"path": path})


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    rec = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield rec, port
    finally:
        await server.stop(0)


async def test_one_trace_per_graph_across_api_and_worker_processes(
    redis_single: RedisServer, key_prefix: str, receiver: tuple[Receiver, int]
) -> None:
    rec, port = receiver
    async with FakeAnthropic() as fake, Target() as target:
        fake.script = [Text("four words of text", model=MODEL, usage=Usage(input=12, output=7))]
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "DAGO_TOOL_MODULES": TOOLS,
            "DAGO_AUTH": "off",
            "DAGO_ANTHROPIC_API_KEY": "sk-ant-trace-test-key",
            "DAGO_ANTHROPIC_BASE_URL": fake.url,
            "DAGO_HTTP_ALLOW": "127.0.0.1",
        }
        async with RunningStack(redis_single.url, key_prefix, **env) as stack:
            stack.start("w1", "worker")
            await start_api_quickly(stack)
            nodes = [
                echo("a", x=1),
                tool("f", "flaky", inputs={"fail_attempts": 1}, retry=fast_retry(2)),
                {"id": "ask", "llm": {"prompt": "Four words.", "model": MODEL}},
                {"id": "h", "http": {"url": f"{target.url}/ping?token=secret-query"}},
                {
                    "id": "ag",
                    "agent": {
                        "llm": {"provider": "offline", "prompt": f"Fetch {target.url}/agent"},
                        "tools": ["http"],
                    },
                },
            ]
            edges = [edge("a", "f"), edge("f", "ask"), edge("ask", "h"), edge("h", "ag")]
            caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
            resp = await stack.client.stub.SubmitGraph(
                request(nodes, edges),
                metadata=(("traceparent", f"00-{caller_trace}-{caller_span}-01"),),
                timeout=10,
            )
            gid = resp.graph_id
            st = await stack.client.wait(gid, timeout=20)
            assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st

            def ours() -> list[Span]:
                return [s for s in rec.spans if s.trace_id == caller_trace]

            async def all_arrived() -> bool:
                names = [s.name for s in ours()]
                return names.count("node tool") == 3 and names.count("HTTP GET") == 2

            await eventually(all_arrived, 15, 0.05)
            await asyncio.sleep(0.3)  # nothing more should arrive for this trace
            spans = ours()
            by_name: dict[str, list[Span]] = {}
            for s in spans:
                by_name.setdefault(s.name, []).append(s)
            assert sorted(by_name) == sorted(
                [
                    "dago.v1.OrchestratorService/SubmitGraph",
                    "node tool",
                    "node llm",
                    "node http",
                    f"chat {MODEL}",
                    "HTTP GET",
                    "node agent",
                    "chat offline",
                    "execute_tool http",
                ]
            ), sorted(by_name)

            (submit,) = by_name["dago.v1.OrchestratorService/SubmitGraph"]
            assert submit.service == "dago-api" and submit.parent == caller_span
            assert submit.kind == 2  # SERVER
            assert submit.attrs["rpc.system"] == "grpc"
            assert submit.attrs["rpc.grpc.status_code"] == "OK"

            attempts = [s for s in spans if s.name.startswith("node ")]
            assert len(attempts) == 6
            for s in attempts:
                assert s.service == "dago-worker" and s.parent == submit.span_id
                assert s.attrs["dago.graph.id"] == gid
                assert s.attrs["dago.worker.id"] == "w1"
            f_attempts = sorted(
                (s for s in attempts if s.attrs["dago.node.id"] == "f"),
                key=lambda s: s.attrs["dago.node.attempt"],
            )
            assert [s.attrs["dago.node.attempt"] for s in f_attempts] == [1, 2]
            assert [s.error for s in f_attempts] == [True, False]
            assert f_attempts[0].attrs["dago.node.outcome"] == "retrying"
            assert f_attempts[0].attrs["dago.tool.name"] == "flaky"

            (node_llm,) = by_name["node llm"]
            (chat,) = by_name[f"chat {MODEL}"]
            assert chat.service == "dago-worker" and chat.parent == node_llm.span_id
            assert chat.kind == 3  # CLIENT
            assert chat.attrs["gen_ai.system"] == "anthropic"
            assert chat.attrs["gen_ai.operation.name"] == "chat"
            assert chat.attrs["gen_ai.request.model"] == MODEL
            assert chat.attrs["gen_ai.response.model"] == MODEL
            assert chat.attrs["gen_ai.usage.input_tokens"] == 12
            assert chat.attrs["gen_ai.usage.output_tokens"] == 7

            (node_http,) = by_name["node http"]
            (http_span,) = [s for s in by_name["HTTP GET"] if s.parent == node_http.span_id]
            assert http_span.attrs["http.response.status_code"] == 200
            assert http_span.attrs["url.path"] == "/ping"
            assert "secret-query" not in str(http_span.attrs)
            # The trace continues downstream: the target got the HTTP span's context.
            sent = target.requests[0].headers["traceparent"]
            assert sent.split("-")[1:3] == [caller_trace, http_span.span_id]

            # The agent: model turns and its tool call, the tool's HTTP request under it.
            (node_agent,) = by_name["node agent"]
            turns = by_name["chat offline"]
            assert len(turns) == 2 and all(t.parent == node_agent.span_id for t in turns)
            assert turns[0].attrs["gen_ai.system"] == "offline"
            (call,) = by_name["execute_tool http"]
            assert call.parent == node_agent.span_id
            assert call.attrs["gen_ai.tool.name"] == "http" and call.attrs["gen_ai.tool.call.id"]
            (tool_http,) = [s for s in by_name["HTTP GET"] if s.parent == call.span_id]
            assert tool_http.attrs["url.path"] == "/agent"


def test_tracing_is_off_without_an_endpoint() -> None:
    # Off: no SDK, no exporter, no spans; graphs still get a trace id for their logs.
    script = (
        "import sys, dago.app\n"
        "from dago.observe.tracing import Tracing\n"
        "t = Tracing('dago-worker')\n"
        "with t.span('x') as s:\n"
        "    assert s is None\n"
        "tp = t.traceparent()\n"
        "assert tp.startswith('00-') and tp.endswith('-00') and len(tp) == 55, tp\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace',"
        " 'opentelemetry.exporter'))]\n"
        "print(t.enabled, loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False []"
    for off in (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_SERVICE_NAME": "dago"},
    ):
        assert not enabled_by(off)
    assert enabled_by({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4317"})
