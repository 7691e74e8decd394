"""Property-based bad input: whatever a client sends, the answer is a clear status, never
UNKNOWN / INTERNAL / 5xx, and the service keeps serving.

Hypothesis builds SubmitGraph requests from the proto (random nodes of every kind, edges,
conditions, templates, inputs, limits, retry policies, unknown enum numbers), raw and
mutated request bytes, and raw JSON bodies posted to the REST route through Envoy. A real
API and worker run as processes (ProcessStack) with Envoy in front; the tests are plain
synchronous gRPC / HTTP clients.
"""

from __future__ import annotations

import base64
import json
import secrets
import subprocess
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dago.history.filters import RunFilter
from dago.v1 import graph_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from harness import ProcessStack, envoy_config, port_open, start_envoy, varint
from redisfixture import RedisServer

# Envoy in front of API and worker processes (the target fixture).
pytestmark = [pytest.mark.edge, pytest.mark.process]

SERVICE = "dago.v1.OrchestratorService"
# Codes a bad request may get. Anything else (UNKNOWN, INTERNAL, UNAVAILABLE...) is a bug.
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # a message over DAGO_MAX_MESSAGE_BYTES
    grpc.StatusCode.ALREADY_EXISTS,  # a request_id reused with another body
}
PROFILE = settings(
    max_examples=80,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Target:
    """The running service, reached by gRPC and through Envoy."""

    stack: ProcessStack
    grpc: grpc.Channel
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub
    http: httpx.Client


@pytest.fixture(scope="module")
async def target(redis_single: RedisServer) -> Any:
    stack = ProcessStack(redis_single.url, f"tfuzz{secrets.token_hex(3)}")
    config, port = envoy_config(stack)
    envoy = start_envoy(config, stack.logs / "envoy.log")
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.port}")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        stack.start("w1", "worker")
        stack.start("api", "serve")
        await port_open(stack.port)
        await stack.wait_serving()
        await port_open(port)
        yield Target(stack, channel, orchestrator_pb2_grpc.OrchestratorServiceStub(channel), http)
    finally:
        http.close()  # noqa: ASYNC212 - the tests are synchronous clients
        channel.close()
        envoy.terminate()
        try:
            envoy.wait(10)
        except subprocess.TimeoutExpired:
            envoy.kill()
        await stack.close()


def still_serving(t: Target) -> None:
    """The service answers health checks and a normal request."""
    health = health_pb2_grpc.HealthStub(t.grpc).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    t.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest(page_size=1), timeout=10)
    for name in ("api", "w1"):
        proc = t.stack.procs[name]
        assert proc.poll() is None, f"{name} exited:\n{t.stack.log(name)[-3000:]}"


def bad_request(err: grpc.RpcError) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """The field violations of an INVALID_ARGUMENT error (from its google.rpc.Status)."""
    raw = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")  # type: ignore[attr-defined]
    assert raw, f"no google.rpc.Status details: {err}"
    status = status_pb2.Status.FromString(raw)
    out = []
    for any_ in status.details:
        if any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            any_.Unpack(br)
            out += list(br.field_violations)
    return out


def check_answer(call: Any) -> None:
    """``call()`` succeeds, or fails with a client error that says which field is wrong."""
    try:
        call()
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        assert code in CLIENT_CODES, (code, err.details())  # type: ignore[attr-defined]
        assert err.details(), err  # type: ignore[attr-defined]
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            violations = bad_request(err)
            assert violations, err
            for v in violations:
                assert v.field and v.description, v
                assert v.field.split(".")[0].split("[")[0] in (
                    "graph",
                    "inputs",
                    "request_id",
                    "request",
                ), v


# --- strategies ------------------------------------------------------------------------------

IDS = st.one_of(st.sampled_from(["a", "b", "c", "d", "_x"]), st.text(max_size=70))
CEL = st.one_of(
    st.sampled_from(
        [
            "true",
            "inputs.x > 1",
            "nodes.a.output.v == 'x'",
            "size(inputs) > 0",
            "nodes.zz.output",
            "1 +",
            "inputs.",
            "[1,2,3].map(x, x * 2).size() > 1",
            "'a' + 1",
            "has(nodes.a.output.v)",
            "1/0 == 1",
            "((((((((((((((((((((((((((((((((((1))))))))))))))))))))))))))))))))))",
            "int('9' * 3) > 0",
            "inputs.x.__class__",
            "dyn(inputs).exists(k, k == 'x')",
        ]
    ),
    st.text(max_size=60),
)
TEMPLATE_TEXT = st.one_of(
    st.sampled_from(
        [
            "{{ inputs.x }}",
            "hello {{ inputs.name }}!",
            "{{ nodes.a.output }}",
            "{{",
            "}}",
            "{{ }}",
            "{{ 1 + }}",
            "{{ '}}' }}",
            "{{ input }}",
            "{{ nodes.nope.output }}",
            "{{ {'a': 1}.a }}",
        ]
    ),
    CEL.map(lambda e: "{{ " + e + " }}"),
    st.text(max_size=40),
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | TEMPLATE_TEXT,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
DURATION = st.integers(-5, 40 * 24 * 3600).map(lambda s: f"{s}s")
ENUM = st.integers(-2, 12)


@st.composite
def retry(draw: st.DrawFn) -> graph_pb2.RetryPolicy:
    out = graph_pb2.RetryPolicy()
    if draw(st.booleans()):
        out.max_attempts = draw(st.integers(-3, 200))
    if draw(st.booleans()):
        json_format.Parse(json.dumps(draw(DURATION)), out.initial_backoff)
    if draw(st.booleans()):
        json_format.Parse(json.dumps(draw(DURATION)), out.max_backoff)
    if draw(st.booleans()):
        out.backoff_multiplier = draw(st.floats(allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        out.jitter = draw(st.floats(allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        out.retry_on.extend(draw(st.lists(ENUM, max_size=3)))
    return out


@st.composite
def node(draw: st.DrawFn) -> graph_pb2.Node:
    n = graph_pb2.Node(id=draw(IDS), name=draw(st.text(max_size=20)))
    kind = draw(st.sampled_from(["tool", "llm", "router", "http", "agent", "none"]))
    if kind == "tool":
        n.tool.name = draw(st.one_of(st.sampled_from(["echo", "sleep", "nope", "os.system"]), IDS))
    elif kind == "llm":
        n.llm.prompt = draw(TEMPLATE_TEXT)
        n.llm.provider = draw(st.sampled_from(["", "offline", "anthropic", "bogus"]))
        n.llm.max_tokens = draw(st.integers(-5, 2_000_000))
        if draw(st.booleans()):
            n.llm.temperature = draw(st.floats(allow_nan=True, allow_infinity=True))
        if draw(st.booleans()):
            n.llm.output_schema.update(draw(st.dictionaries(st.text(max_size=8), JSON, max_size=3)))
    elif kind == "router":
        n.router.mode = draw(ENUM)  # type: ignore[assignment]
        for _ in range(draw(st.integers(0, 3))):
            n.router.routes.add(name=draw(st.text(max_size=70)), condition=draw(CEL))
        n.router.default_route = draw(st.text(max_size=10))
    elif kind == "http":
        n.http.url = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "http://169.254.169.254/",
                        "https://example.com/{{ inputs.x }}",
                        "file:///etc/passwd",
                        "{{",
                    ]
                ),
                st.text(max_size=40),
            )
        )
        n.http.method = draw(st.sampled_from(["GET", "POST", "TRACE", "", "get"]))
        n.http.max_response_bytes = draw(st.integers(-5, 2**40))
        for k in draw(st.lists(st.text(max_size=10), max_size=2)):
            n.http.headers[k] = draw(TEMPLATE_TEXT)
    elif kind == "agent":
        n.agent.llm.prompt = draw(TEMPLATE_TEXT)
        n.agent.tools.extend(draw(st.lists(IDS, max_size=3)))
        n.agent.max_turns = draw(st.integers(-3, 10_000))
    if draw(st.booleans()):
        n.inputs.update(draw(st.dictionaries(st.text(max_size=10), JSON, max_size=4)))
    for k in draw(st.lists(st.text(max_size=10), max_size=2)):
        n.output[k] = draw(CEL)
    if draw(st.booleans()):
        n.retry.CopyFrom(draw(retry()))
    if draw(st.booleans()):
        json_format.Parse(json.dumps(draw(DURATION)), n.attempt_timeout)
    n.join = draw(ENUM)  # type: ignore[assignment]
    n.max_iterations = draw(st.integers(-5, 20_000))
    return n


@st.composite
def submit_request(draw: st.DrawFn) -> orchestrator_pb2.SubmitGraphRequest:
    g = graph_pb2.Graph(name=draw(st.text(max_size=30)))
    nodes = draw(st.lists(node(), max_size=6))
    g.nodes.extend(nodes)
    ids = [n.id for n in nodes] or ["a"]
    for _ in range(draw(st.integers(0, 8))):
        e = g.edges.add(to=draw(st.one_of(st.sampled_from(ids), IDS)))
        setattr(e, "from", draw(st.one_of(st.sampled_from(ids), IDS)))  # a keyword in Python
        if draw(st.booleans()):
            e.condition = draw(CEL)
        e.label = draw(st.text(max_size=5))
    g.entry_nodes.extend(draw(st.lists(st.one_of(st.sampled_from(ids), IDS), max_size=2)))
    for k in draw(st.lists(st.text(max_size=8), max_size=2)):
        g.output[k] = draw(CEL)
    if draw(st.booleans()):
        g.defaults.retry.CopyFrom(draw(retry()))
    g.limits.max_steps = draw(st.integers(-(2**31), 2**31 - 1))
    g.limits.max_tokens = draw(st.integers(-(2**63), 2**63 - 1))
    g.limits.max_cost_usd = draw(st.floats(allow_nan=True, allow_infinity=True))
    if draw(st.booleans()):
        json_format.Parse(json.dumps(draw(DURATION)), g.limits.deadline)
    if draw(st.booleans()):
        g.metadata.update(draw(st.dictionaries(st.text(max_size=8), JSON, max_size=3)))
    req = orchestrator_pb2.SubmitGraphRequest(graph=g, validate_only=True)
    if draw(st.booleans()):
        req.inputs.update(draw(st.dictionaries(st.text(max_size=10), JSON, max_size=5)))
    req.request_id = draw(st.one_of(st.just(""), st.text(max_size=140)))
    return req


# --- properties ------------------------------------------------------------------------------


@PROFILE
@given(req=submit_request())
def test_random_graphs_get_a_clear_answer(target: Target, req: Any) -> None:
    check_answer(lambda: target.stub.SubmitGraph(req, timeout=20))


@settings(PROFILE, max_examples=60)
@given(req=submit_request(), really=st.booleans())
def test_random_graphs_submitted_for_real_keep_the_service_up(
    target: Target, req: Any, really: bool
) -> None:
    # Only tool (echo) and router nodes run for real: the point is the engine's handling of
    # whatever validation lets through, not the network or an LLM.
    for n in req.graph.nodes:
        if n.WhichOneof("kind") not in ("tool", "router"):
            n.tool.name = "echo"
    req.validate_only = not really
    check_answer(lambda: target.stub.SubmitGraph(req, timeout=20))


def test_the_service_still_serves_after_the_graph_properties(target: Target) -> None:
    still_serving(target)


def raw_submit(t: Target) -> Any:
    return t.grpc.unary_unary(f"/{SERVICE}/SubmitGraph")  # bytes in, bytes out


@PROFILE
@given(data=st.binary(max_size=400))
def test_random_bytes_are_invalid_argument_not_internal(target: Target, data: bytes) -> None:
    check_answer(lambda: raw_submit(target)(data, timeout=20))


@PROFILE
@given(
    req=submit_request(),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_messages_are_invalid_argument_not_internal(
    target: Target, req: Any, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(req.SerializeToString())
    if not data:
        data = bytearray(b"\x0a\x00")
    for pos, value in flips:
        data[pos % len(data)] = value
    check_answer(lambda: raw_submit(target)(bytes(data), timeout=20))


def test_known_undecodable_messages(target: Target) -> None:
    """Invalid UTF-8 in a string field, a truncated varint, nesting past protobuf's limit."""
    deep = b""
    for _ in range(150):  # Value{list_value{values{...}}}: deeper than the parser allows
        inner = b"\x0a" + varint(len(deep)) + deep
        deep = b"\x32" + varint(len(inner)) + inner
    entry = b"\x0a\x03key\x12" + varint(len(deep)) + deep  # Struct.fields entry
    inputs = b"\x0a" + varint(len(entry)) + entry
    cases = {
        "bad utf-8 in graph.name": b"\x0a\x04\x0a\x02\xff\xfe",
        "truncated varint": b"\x18\xff\xff",
        "field length past the end": b"\x0a\x7f\x0a",
        "deep nesting in inputs": b"\x12" + varint(len(inputs)) + inputs,
    }
    for name, data in cases.items():
        with pytest.raises(grpc.RpcError) as err:
            raw_submit(target)(data, timeout=20)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value)  # type: ignore[attr-defined]
        assert "request" in (err.value.details() or ""), name  # type: ignore[attr-defined]
    still_serving(target)


def check_http(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    if r.status_code >= 400:
        body = r.json()
        assert body.get("message"), body
        assert body.get("code") not in (2, 13), body  # UNKNOWN, INTERNAL


REST_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.one_of(
                st.sampled_from(
                    [
                        "graph",
                        "nodes",
                        "edges",
                        "inputs",
                        "id",
                        "tool",
                        "name",
                        "from",
                        "to",
                        "requestId",
                        "validateOnly",
                        "limits",
                        "retry",
                        "maxAttempts",
                    ]
                ),
                st.text(max_size=8),
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@PROFILE
@given(body=REST_JSON)
def test_random_rest_json_is_never_a_5xx(target: Target, body: Any) -> None:
    text = json.dumps(body)
    r = target.http.post(
        "/api/v1/graphs", content=text, headers={"content-type": "application/json"}
    )
    check_http(r)


@PROFILE
@given(req=submit_request())
def test_random_graphs_as_rest_json_are_never_a_5xx(target: Target, req: Any) -> None:
    body = json_format.MessageToDict(req)
    r = target.http.post("/api/v1/graphs", json=body)
    check_http(r)
    if r.status_code == 400:
        assert r.json().get("code") == 3, r.text  # INVALID_ARGUMENT


@PROFILE
@given(raw=st.binary(max_size=300))
def test_random_rest_bytes_are_never_a_5xx(target: Target, raw: bytes) -> None:
    r = target.http.post(
        "/api/v1/graphs", content=raw, headers={"content-type": "application/json"}
    )
    check_http(r)


# --- byte-size and CPU-shape strategies ------------------------------------------------------
#
# Requests a hostile client sends to take bytes or CPU: megabyte strings in every free-text
# field, hundreds of nodes and thousands of edges, deep nesting in inputs and templates, NaN
# and Infinity wherever a number goes. The answer is OK or a client error naming the field
# (RESOURCE_EXHAUSTED past the message size), never INTERNAL, and the service keeps serving.

SIZES = st.sampled_from([0, 1, 64, 65, 128, 129, 256, 257, 4096, 4097, 20_000, 300_000])
LONG_TEXT = st.builds(
    lambda n, c: c * n, SIZES, st.sampled_from(["x", "\u00e9", "\n", "{{", "a\u200b", "\x00"])
)
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
FREE_TEXT = (
    "graph.name",
    "graph.description",
    "node.name",
    "node.description",
    "node.id",
    "node.output key",
    "graph.output key",
    "edge.label",
    "edge.from",
    "entry_nodes",
    "llm.model",
    "llm.prompt",
    "tool.name",
    "route.name",
    "route.description",
    "http.header name",
    "metadata",
    "inputs",
    "request_id",
)


def nested(depth: int, leaf: Any) -> Any:
    """``leaf`` inside ``depth`` alternating lists and objects."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


def set_text(req: orchestrator_pb2.SubmitGraphRequest, where: str, text: str) -> None:
    """Put ``text`` in the free-text field ``where`` of ``req`` (adding a node if needed)."""
    g = req.graph
    if not g.nodes:
        g.nodes.add(id="a", tool=graph_pb2.ToolNode(name="echo"))
    n = g.nodes[0]
    if where == "graph.name":
        g.name = text
    elif where == "graph.description":
        g.description = text
    elif where == "node.name":
        n.name = text
    elif where == "node.description":
        n.description = text
    elif where == "node.id":
        n.id = text
    elif where == "node.output key":
        n.output[text] = "result"
    elif where == "graph.output key":
        g.output[text] = "1"
    elif where in ("edge.label", "edge.from"):
        e = g.edges.add(to=n.id)
        setattr(e, "from", text if where == "edge.from" else n.id)
        if where == "edge.label":
            e.label = text
    elif where == "entry_nodes":
        g.entry_nodes.append(text)
    elif where in ("llm.model", "llm.prompt"):
        n.llm.prompt = text if where == "llm.prompt" else "hi"
        if where == "llm.model":
            n.llm.model = text
    elif where == "tool.name":
        n.tool.name = text
    elif where in ("route.name", "route.description"):
        r = n.router.routes.add(name="go", condition="true")
        if where == "route.name":
            r.name = text
        else:
            r.description = text
    elif where == "http.header name":
        n.http.url = "https://example.com/"
        n.http.headers[text] = "v"
    elif where == "metadata":
        g.metadata.update({"m": text})
    elif where == "inputs":
        req.inputs.update({"m": text})
    elif where == "request_id":
        req.request_id = text


@st.composite
def hostile_request(draw: st.DrawFn, struct_numbers: bool = True) -> Any:
    """A request of one of four shapes: long text, many nodes and edges, deep nesting, or
    non-finite numbers (in Struct values only when ``struct_numbers``)."""
    shape = draw(st.sampled_from(["long", "many", "deep", "numbers"]))
    req = orchestrator_pb2.SubmitGraphRequest(validate_only=True)
    req.graph.nodes.add(id="a", tool=graph_pb2.ToolNode(name="echo"))
    if shape == "long":
        for where in draw(st.lists(st.sampled_from(FREE_TEXT), min_size=1, max_size=4)):
            set_text(req, where, draw(LONG_TEXT))
    elif shape == "many":
        count = draw(st.sampled_from([2, 50, 300, 999, 1000, 1001, 1500]))
        del req.graph.nodes[:]
        for i in range(count):
            req.graph.nodes.add(id=f"n{i}", tool=graph_pb2.ToolNode(name="echo"))
        for i in range(count - 1):
            setattr(req.graph.edges.add(to=f"n{i + 1}"), "from", f"n{i}")
        extra = draw(st.sampled_from([0, 100, 4000, 5200]))
        for j in range(extra):  # parallel edges, told apart by their labels
            e = req.graph.edges.add(to=f"n{count - 1}", label=f"l{j}")
            setattr(e, "from", "n0")
    elif shape == "deep":
        depth = draw(st.sampled_from([5, 20, 40, 49, 60, 120]))
        where = draw(st.sampled_from(["inputs", "node inputs", "template", "condition"]))
        if where == "inputs":
            req.inputs.update({"d": nested(depth, 1)})
        elif where == "node inputs":
            req.graph.nodes[0].inputs.update({"d": nested(depth, 1)})
        else:
            brackets = draw(st.sampled_from([10, 31, 33, 200, 3000]))
            opener = draw(st.sampled_from(["[", "(", "{'a': "]))
            closer = {"[": "]", "(": ")", "{'a': ": "}"}[opener]
            expr = opener * brackets + "1" + closer * brackets
            if where == "template":
                req.graph.nodes[0].inputs.update({"v": "{{ " + expr + " }}"})
            else:
                req.graph.nodes.add(id="b", tool=graph_pb2.ToolNode(name="echo"))
                e = req.graph.edges.add(to="b", condition=expr + " == 1")
                setattr(e, "from", "a")
    else:
        x = draw(NON_FINITE)
        spots = ["max_cost_usd", "temperature", "jitter", "backoff_multiplier"]
        if struct_numbers:
            spots += ["inputs", "node inputs", "metadata", "output_schema", "deep inputs"]
        where = draw(st.sampled_from(spots))
        n = req.graph.nodes[0]
        if where == "max_cost_usd":
            req.graph.limits.max_cost_usd = x
        elif where == "temperature":
            n.llm.prompt = "hi"
            n.llm.temperature = x
        elif where == "jitter":
            n.retry.jitter = x
        elif where == "backoff_multiplier":
            n.retry.backoff_multiplier = x
        elif where == "inputs":
            req.inputs.update({"x": x})
        elif where == "node inputs":
            n.inputs.update({"x": x})
        elif where == "metadata":
            req.graph.metadata.update({"x": x})
        elif where == "output_schema":
            n.llm.prompt = "hi"
            n.llm.output_schema.update({"type": "object", "maximum": x})
        else:
            req.inputs.update({"d": nested(draw(st.integers(1, 30)), x)})
    return req


HOSTILE = settings(PROFILE, max_examples=40)


@HOSTILE
@given(req=hostile_request())
def test_hostile_sizes_and_shapes_get_a_clear_answer(target: Target, req: Any) -> None:
    check_answer(lambda: target.stub.SubmitGraph(req, timeout=60))


@settings(PROFILE, max_examples=15)
@given(req=hostile_request())
def test_hostile_sizes_and_shapes_submitted_for_real_keep_the_service_up(
    target: Target, req: Any
) -> None:
    req.validate_only = len(req.graph.nodes) > 50  # big graphs are validated only
    check_answer(lambda: target.stub.SubmitGraph(req, timeout=60))


@settings(PROFILE, max_examples=25)
@given(req=hostile_request(struct_numbers=False))
def test_hostile_sizes_and_shapes_as_rest_json_are_never_a_5xx(target: Target, req: Any) -> None:
    body = json_format.MessageToDict(req)  # NaN and Infinity in double fields: "NaN" strings
    r = target.http.post("/api/v1/graphs", json=body)
    check_http(r)
    if r.status_code == 400:
        assert r.json().get("code") == 3, r.text[:300]


def test_the_service_serves_reads_after_the_hostile_shapes(target: Target) -> None:
    still_serving(target)
    r = target.http.get("/api/v1/graphs", params={"page_size": 1000})
    assert r.status_code == 200, r.text[:300]
    log = target.stack.log("api")
    assert "internal error" not in log, log[log.find("internal error") - 200 :][:3000]
    assert max(map(len, log.splitlines()), default=0) < 80_000  # no client string logged whole


def test_the_service_still_serves_after_everything(target: Target) -> None:
    still_serving(target)
    assert target.http.get("/health").status_code == 200


GRAPH_IDS = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"\A[0-9]{1,3}-[0-9A-Z]{26}\Z"),
    st.sampled_from(["0-", "-1-x", "99999999999999999999-x", "3-../../etc", "0-*", "0-{s0}"]),
    # Dead letter ids Redis cannot hold, full-match bait, other scripts' digits, megabytes.
    st.sampled_from(
        [
            "0-99999999999999999999-1",
            "0-1-18446744073709551616",
            "0-1-1\n",
            "\u0663-01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "1-01ARZ3NDEKTSV4RRFFQ69G5FAV\n",
            "1-" + "A" * 1_000_000,
        ]
    ),
)
# Authentication is off: the caller is an operator and an unfiltered listing reads every
# namespace (RunFilter(None)), so a token of that digest reaches the number parsing.
LIST_TOKEN = "g2:" + RunFilter(None).digest() + ":{}:0-X"
TOKEN_NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.sampled_from(["\u00b2", "\u0661", "", "1e3"])
)


@PROFILE
@given(
    gid=GRAPH_IDS,
    token=st.one_of(
        st.just(""),
        st.text(max_size=40),
        st.binary(max_size=30).map(lambda b: base64.urlsafe_b64encode(b).decode()),
        # Tokens of the right kinds with numbers that are huge, negative or not ASCII.
        # (ListGraphs' tokens carry the digest of their filters: an unfiltered listing's.)
        st.tuples(st.sampled_from([LIST_TOKEN, "e:{}", "d:{}:1:0", "d:1:{}:0"]), TOKEN_NUMBERS)
        .map(lambda kn: kn[0].format(kn[1]))
        .map(lambda t: base64.urlsafe_b64encode(t.encode()).decode()),
    ),
    size=st.integers(-(2**31), 2**31 - 1),
    seq=st.integers(-(2**63), 2**63 - 1),
    state=st.integers(-3, 20),
)
def test_random_reads_get_a_clear_answer(
    target: Target, gid: str, token: str, size: int, seq: int, state: int
) -> None:
    s = target.stub
    ok = CLIENT_CODES | {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
    calls = [
        lambda: s.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=gid), timeout=10),
        lambda: s.GetGraphResult(orchestrator_pb2.GetGraphResultRequest(graph_id=gid), timeout=10),
        lambda: s.GetGraph(orchestrator_pb2.GetGraphRequest(graph_id=gid), timeout=10),
        lambda: s.ListGraphs(
            orchestrator_pb2.ListGraphsRequest(page_size=size, page_token=token, state=state),  # type: ignore[arg-type]
            timeout=10,
        ),
        lambda: s.GetUsageSummary(
            orchestrator_pb2.GetUsageSummaryRequest(group_by=state),  # type: ignore[arg-type]
            timeout=10,
        ),
        lambda: s.ListGraphEvents(
            orchestrator_pb2.ListGraphEventsRequest(
                graph_id=gid, page_size=size, page_token=token, after_seq=seq
            ),
            timeout=10,
        ),
        lambda: list(
            s.WatchGraph(
                orchestrator_pb2.WatchGraphRequest(graph_id=gid, after_seq=seq), timeout=10
            )
        ),
        lambda: s.CancelGraph(
            orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason=token), timeout=10
        ),
        lambda: s.ListDeadLetters(
            orchestrator_pb2.ListDeadLettersRequest(graph_id=gid, page_size=size, page_token=token),
            timeout=10,
        ),
        lambda: s.DropDeadLetter(
            orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=gid), timeout=10
        ),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as err:
            assert err.code() in ok, (err.code(), err.details())  # type: ignore[attr-defined]
            assert err.details()  # type: ignore[attr-defined]
