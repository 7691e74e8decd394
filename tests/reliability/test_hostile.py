"""Hostile graphs: no graph can run code, reach the environment or files, or make a worker
spin or grow without bound; every limit answers with a clear error naming the field.

CEL and templates are sandboxed by construction (cel-expr-python: no I/O, no host objects,
no string-multiplying functions; nesting, length and loop iterations capped); tools are only
those the operator registered; HTTP nodes refuse private addresses in every spelling and do
not follow redirects.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from fakehttp import FakeHttpServer
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    error_details,
    node_status,
    plain,
    request,
    rpc_error,
    stack_settings,
    tool,
)
from redisfixture import RedisServer

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack(
        max_nodes=20,
        max_edges=30,
        max_inputs_bytes=20_000,
        max_events_per_graph=300,
        max_message_bytes=256 * 1024,
        http_allow="127.0.0.0/8",
    )


async def refused(
    stack: InProcessStack, req: orchestrator_pb2.SubmitGraphRequest
) -> dict[str, str]:
    """Submit ``req``; it must be INVALID_ARGUMENT. Returns field -> description."""
    err = await rpc_error(stack.client.submit(req))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    out: dict[str, str] = {}
    for d in error_details(err):
        for v in getattr(d, "field_violations", []):
            out[v.field] = v.description
    assert out, err
    return out


# --- no code execution -----------------------------------------------------------------------

SSTI = [
    # Jinja / Python template injection classics: not CEL, so they do not even compile.
    "{{ self.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ config.items() }}",
    "{{ __import__('os').system('touch /tmp/dago-pwned') }}",
    "{% import os %}{{ os.system('id') }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ request.application.__globals__.__builtins__.open('/etc/passwd').read() }}",
    # Functions CEL could have but dago does not enable.
    "{{ env('HOME') }}",
    "{{ file('/etc/passwd') }}",
    "{{ 'a'.repeat(1000000) }}",
    "{{ 'a'.replace('a', 'aa') }}",
    "{{ 2 ** 1000000 }}",
    "{{ math.pow(10, 1000000) }}",
]


@pytest.mark.parametrize("template", SSTI)
async def test_template_injection_is_refused_at_submit(
    stack: InProcessStack, template: str
) -> None:
    fields = await refused(stack, request([echo("a", v=template)]))
    assert any(f.startswith("graph.nodes[0].inputs") for f in fields), fields


async def test_python_attributes_do_not_exist_in_cel(stack: InProcessStack) -> None:
    """``__class__`` and friends compile (a map key could have that name) but are map
    lookups, never Python attributes: the node fails with "no such key"."""
    for expr in (
        "inputs.__class__",
        "inputs.x.__globals__",
        "nodes.__dict__",
        "graph.__init__",
        "inputs.x['__class__']",
    ):
        req = request([echo("a", v="{{ " + expr + " }}")], inputs={"x": {}})
        try:
            _, st = await stack.client.run(req)
        except grpc.aio.AioRpcError as err:  # refused at submit: names no such input
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            continue
        assert st.state == FAILED, expr
        text = json_format.MessageToJson(st)
        assert "no such key" in text or "not a map" in text or "undeclared" in text, text
        assert "<class" not in text and "module" not in text


async def test_unregistered_tools_cannot_be_named(stack: InProcessStack) -> None:
    names = ["os.system", "subprocess.run", "eval", "exec", "__import__", "builtins.open", ""]
    for name in names:
        fields = await refused(stack, request([tool("a", name)]))
        assert "graph.nodes[0].tool.name" in fields, (name, fields)


async def test_code_in_inputs_stays_data(stack: InProcessStack, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        "py": f"__import__('os').system('touch {marker}')",
        "sh": f"$(touch {marker})",
        "backticks": f"`touch {marker}`",
        "pickle": "cos\nsystem\n(S'touch " + str(marker) + "'\ntR.",
    }
    _, st = await stack.client.run(
        request([echo("a", **{k: "{{ inputs." + k + " }}" for k in payloads})], inputs=payloads)
    )
    assert st.state == COMPLETED
    assert plain(node_status(st, "a").output) == payloads
    assert not marker.exists()


# --- bounded evaluation ----------------------------------------------------------------------


async def test_cel_nesting_and_length_are_capped_at_submit(stack: InProcessStack) -> None:
    deep = "(" * 60 + "true" + ")" * 60
    long = "true && " * 600 + "true"
    fields = await refused(stack, request([echo("a"), echo("b")], edges=[edge("a", "b", deep)]))
    assert "nested too deeply" in fields["graph.edges[0].condition"]
    fields = await refused(stack, request([echo("a"), echo("b")], edges=[edge("a", "b", long)]))
    assert "the limit is 4096" in fields["graph.edges[0].condition"]
    fields = await refused(stack, request([echo("a", v="{{ " + deep + " }}")]))
    assert any("nested too deeply" in d for d in fields.values()), fields


async def test_comprehension_bombs_and_overflow_stop_with_a_clear_error(
    stack: InProcessStack,
) -> None:
    """Loops stop below 10,000 iterations per evaluation; arithmetic overflow is an error."""
    big = list(range(150))
    cases = {
        "nested map": "{{ inputs.l.map(x, inputs.l.map(y, inputs.l.map(z, z))) }}",
        "overflow": "{{ 9223372036854775807 + inputs.one }}",
        "division": "{{ inputs.one / 0 }}",
    }
    for name, template in cases.items():
        _, st = await stack.client.run(
            request([echo("a", v=template)], inputs={"l": big, "one": 1}), timeout=30
        )
        assert st.state == FAILED, name
        msg = node_status(st, "a").error.message
        words = ("too many loop iterations", "overflow", "divide by zero")
        assert any(w in msg for w in words), msg
    # The worker still runs ordinary graphs.
    _, st = await stack.client.run(request([echo("a", v=1)]))
    assert st.state == COMPLETED


async def test_comprehensions_over_long_lists_are_refused_quickly(stack: InProcessStack) -> None:
    """Comprehension cost grows with the square of a list's length (9,000 numbers: ~9 s and
    1.3 GB in cel-expr-python), so an expression that loops may only see lists of up to
    2,000 elements; one that does not loop may see any."""
    long = [1] * 5000
    _, st = await stack.client.run(
        request([echo("a", v="{{ inputs.l.map(x, x * 2) }}")], inputs={"l": long})
    )
    assert st.state == FAILED
    assert "up to 2000" in node_status(st, "a").error.message
    nodes = [echo("a", v="{{ size(inputs.l) }}"), echo("b", w="{{ [1, 2].map(x, x) }}")]
    _, st = await stack.client.run(request(nodes, inputs={"l": long}))
    assert st.state == COMPLETED
    assert plain(node_status(st, "a").output) == {"v": 5000}
    assert plain(node_status(st, "b").output) == {"w": [1, 2]}
    _, st = await stack.client.run(
        request([echo("a", v="{{ inputs.l.filter(x, x > 0).size() }}")], inputs={"l": long[:2000]})
    )
    assert st.state == COMPLETED and plain(node_status(st, "a").output) == {"v": 2000}


# --- limits ------------------------------------------------------------------------------------


async def test_nodes_edges_inputs_and_message_size_limits(stack: InProcessStack) -> None:
    fields = await refused(stack, request([echo(f"n{i}") for i in range(21)]))
    assert "the limit is 20" in fields["graph.nodes"]
    nodes = [echo("a"), echo("b")]
    edges = [edge("a", "b", label=str(i)) for i in range(31)]
    fields = await refused(stack, request(nodes, edges=edges))
    assert "the limit is 30" in fields["graph.edges"]
    fields = await refused(stack, request([echo("a")], inputs={"blob": "x" * 30_000}))
    assert "DAGO_MAX_INPUTS_BYTES" in fields["inputs"]
    err = await rpc_error(stack.client.submit(request([echo("a")], inputs={"blob": "x" * 300_000})))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err

    def nested(levels: int) -> Any:
        value: Any = "leaf"
        for _ in range(levels):
            value = {"d": value}
        return value

    # Moderate nesting runs; nesting past protobuf's depth limit (a Struct level is two
    # message levels) is INVALID_ARGUMENT naming the request, never INTERNAL.
    _, st = await stack.client.run(
        request([echo("a", v="{{ inputs.d }}")], inputs={"d": nested(20)})
    )
    assert st.state == COMPLETED
    err = await rpc_error(stack.client.submit(request([echo("a")], inputs={"d": nested(45)})))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert "request" in (err.details() or "") and "Depth" in (err.details() or "")


async def test_events_per_graph_are_capped(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(
        request([tool("a", "chatter", inputs={"count": 1000, "size": 10})]), timeout=30
    )
    assert st.state == FAILED
    assert "DAGO_MAX_EVENTS_PER_GRAPH" in st.error.message, st.error
    events = await stack.client.history(gid)
    assert len(events) <= 300 + 10  # the cap, plus the graph's own closing events
    assert events[-1].WhichOneof("payload") == "graph_failed"


# --- HTTP: private addresses in every spelling, redirects ---------------------------------


class Redirector(FakeHttpServer):
    """Answers every request with a redirect to ``location``."""

    location = "http://169.254.169.254/latest/meta-data/"

    async def handle(self, reader: Any, writer: Any, method: str, path: str, body: Any) -> None:
        await self.send_json(writer, 302, {}, {"location": self.location})


async def test_http_nodes_refuse_obfuscated_private_addresses(
    redis_single: RedisServer, key_prefix: str
) -> None:
    urls = [
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "http://localhost./",
        "http://[::ffff:7f00:1]/",
        "http://[fe80::1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",  # the IPv6 metadata address
        "http://100.64.0.1/",  # carrier-grade NAT
        # IPv6 spellings that carry an IPv4 address: judged by that address.
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
        "http://[64:ff9b:1::7f00:1]/",  # local-use NAT64 of 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/",  # 6to4 of 169.254.169.254
        "http://[::127.0.0.1]/",  # IPv4-compatible
    ]
    async with InProcessStack(stack_settings(redis_single.url, key_prefix)) as stack:
        results = await asyncio.gather(
            *(stack.client.run(request([{"id": "h", "http": {"url": u}}])) for u in urls)
        )
    for url, (_, st) in zip(urls, results, strict=True):
        assert st.state == FAILED, url
        msg = node_status(st, "h").error.message
        assert any(w in msg for w in ("refused", "cannot resolve", "is not a URL")), (url, msg)
        if url.startswith("http://["):
            assert msg.startswith("refused"), (url, msg)


async def test_http_redirects_to_private_addresses_are_not_followed(
    stack: InProcessStack,
) -> None:
    async with Redirector() as redirector, Redirector() as target:
        redirector.location = f"{target.url}/internal"
        _, st = await stack.client.run(request([{"id": "h", "http": {"url": redirector.url}}]))
        assert st.state == COMPLETED
        out = plain(node_status(st, "h").output)
        assert out["status"] == 302 and out["headers"]["location"].endswith("/internal")
        assert target.requests == [] and len(redirector.requests) == 1


def test_graph_protos_reject_unknown_fields_from_json() -> None:
    """A REST body's unknown fields are refused by the transcoder (not silently ignored), so
    nothing outside the schema reaches dago; the Python helpers mirror that."""
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(
            {"graph": {"nodes": [], "exec": "rm -rf /"}}, orchestrator_pb2.SubmitGraphRequest()
        )
    assert {"tool", "llm", "http", "router"} <= set(graph_pb2.Node.DESCRIPTOR.fields_by_name)
