"""Execution semantics, part 1: how work flows through a graph.

Fan-out, fan-in (ALL / ANY), skip propagation, CEL edge conditions, routers,
bounded loops, templating and results, each through the real stack (gRPC API,
workers, Lua state machine) on a single Redis and on a 3-node cluster.
"""

from __future__ import annotations

from typing import Any

import pytest

from dago.v1 import execution_pb2, graph_pb2
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    kinds,
    node_states,
    node_status,
    of_kind,
    plain,
    request,
    seq_of,
    tool,
)
from redisfixture import RedisTarget

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED
N_COMPLETED = execution_pb2.NODE_STATE_COMPLETED
N_SKIPPED = execution_pb2.NODE_STATE_SKIPPED
N_FAILED = execution_pb2.NODE_STATE_FAILED
NO_EDGE = "no incoming edge was taken"


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


def sleep(node_id: str, seconds: float, **fields: Any) -> dict[str, Any]:
    """A node running the built-in sleep tool."""
    return tool(node_id, "sleep", inputs={"seconds": seconds}, **fields)


def skipped_reason(events: list[execution_pb2.Event], node: str) -> str:
    (ev,) = of_kind(events, "node_skipped", node)
    return ev.node_skipped.reason


# --- fan-out -------------------------------------------------------------------------------


async def test_fan_out_starts_every_successor_in_parallel(stack: InProcessStack) -> None:
    nodes = [echo("a", v=1), sleep("b", 0.3), sleep("c", 0.3), sleep("d", 0.3)]
    gid, st = await stack.client.run(
        request(nodes, [edge("a", "b"), edge("a", "c"), edge("a", "d")])
    )
    assert st.state == COMPLETED
    assert set(node_states(st).values()) == {"COMPLETED"}
    events = await stack.client.history(gid)
    a_done = seq_of(events, "node_completed", "a")
    starts = [seq_of(events, "node_started", n) for n in "bcd"]
    ends = [seq_of(events, "node_completed", n) for n in "bcd"]
    assert all(s > a_done for s in starts)
    # In parallel: every successor started before the first of them finished.
    assert max(starts) < min(ends)


# --- fan-in --------------------------------------------------------------------------------


async def test_fan_in_all_waits_for_every_edge_and_runs_once(stack: InProcessStack) -> None:
    nodes = [
        echo("a"),
        echo("b", side="left"),
        sleep("c", 0.2),
        echo("j", left="{{ nodes.b.output.side }}", slept="{{ nodes.c.output.slept }}"),
    ]
    edges = [edge("a", "b"), edge("a", "c"), edge("b", "j"), edge("c", "j")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    j = node_status(st, "j")
    assert j.state == N_COMPLETED
    assert len(j.attempts) == 1
    assert plain(j.output) == {"left": "left", "slept": 0.2}
    events = await stack.client.history(gid)
    j_start = seq_of(events, "node_started", "j")
    assert j_start > seq_of(events, "node_completed", "b")
    assert j_start > seq_of(events, "node_completed", "c")


async def test_fan_in_any_runs_once_on_the_first_taken_edge(stack: InProcessStack) -> None:
    nodes = [
        echo("a"),
        echo("fast", tag="fast"),
        sleep("slow", 0.3),
        tool("j", "echo", join="JOIN_MODE_ANY", inputs={"first": "{{ nodes.fast.output.tag }}"}),
    ]
    edges = [edge("a", "fast"), edge("a", "slow"), edge("fast", "j"), edge("slow", "j")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    j = node_status(st, "j")
    assert j.state == N_COMPLETED
    assert len(j.attempts) == 1
    assert plain(j.output) == {"first": "fast"}
    assert node_status(st, "slow").state == N_COMPLETED
    events = await stack.client.history(gid)
    # j ran before the slow branch finished, and did not run again when it did.
    assert seq_of(events, "node_completed", "j") < seq_of(events, "node_completed", "slow")
    assert kinds(events, "j") == ["node_started", "node_completed"]


async def test_fan_in_any_waits_past_an_untaken_edge(stack: InProcessStack) -> None:
    nodes = [
        echo("a"),
        echo("x"),
        sleep("y", 0.2),
        tool("j", "echo", join="JOIN_MODE_ANY", inputs={"v": "{{ nodes.y.output.slept }}"}),
    ]
    edges = [edge("a", "x"), edge("a", "y"), edge("x", "j", "false"), edge("y", "j")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    assert node_status(st, "j").state == N_COMPLETED
    assert plain(node_status(st, "j").output) == {"v": 0.2}
    events = await stack.client.history(gid)
    assert seq_of(events, "node_started", "j") > seq_of(events, "node_completed", "y")


# --- skips ---------------------------------------------------------------------------------


async def test_untaken_edge_skips_its_target_and_skips_propagate(stack: InProcessStack) -> None:
    nodes = [echo("a"), echo("b"), echo("c"), echo("d")]
    edges = [edge("a", "b", "false"), edge("b", "c"), edge("c", "d")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    assert node_states(st) == {"a": "COMPLETED", "b": "SKIPPED", "c": "SKIPPED", "d": "SKIPPED"}
    events = await stack.client.history(gid)
    for n in "bcd":
        assert skipped_reason(events, n) == NO_EDGE
        assert "node_started" not in kinds(events, n)
    assert kinds(events)[-1] == "graph_completed"


async def test_all_join_runs_when_one_edge_is_taken(stack: InProcessStack) -> None:
    nodes = [echo("a"), echo("x", v="x"), echo("y"), echo("j", got="{{ nodes.x.output.v }}")]
    edges = [
        edge("a", "x", "true"),
        edge("a", "y", "false"),
        edge("x", "j"),
        edge("y", "j"),
    ]
    _, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    assert node_states(st) == {"a": "COMPLETED", "x": "COMPLETED", "y": "SKIPPED", "j": "COMPLETED"}
    assert plain(node_status(st, "j").output) == {"got": "x"}


async def test_node_with_no_taken_incoming_edge_is_skipped(stack: InProcessStack) -> None:
    nodes = [echo("a"), echo("b"), echo("j"), echo("k")]
    edges = [edge("a", "j", "false"), edge("b", "j", "1 > 2"), edge("j", "k")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    assert node_states(st) == {"a": "COMPLETED", "b": "COMPLETED", "j": "SKIPPED", "k": "SKIPPED"}
    events = await stack.client.history(gid)
    assert skipped_reason(events, "j") == NO_EDGE
    # Skipped only once both incoming edges were resolved.
    assert seq_of(events, "node_skipped", "j") > seq_of(events, "node_completed", "a")
    assert seq_of(events, "node_skipped", "j") > seq_of(events, "node_completed", "b")


async def test_any_join_with_every_edge_untaken_is_skipped(stack: InProcessStack) -> None:
    nodes = [echo("a"), tool("j", "echo", join="JOIN_MODE_ANY"), echo("k")]
    edges = [edge("a", "j", "false"), edge("a", "k"), edge("k", "j", "false")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    assert node_status(st, "j").state == N_SKIPPED
    assert skipped_reason(await stack.client.history(gid), "j") == NO_EDGE


# --- CEL conditions ------------------------------------------------------------------------


async def test_edge_conditions_over_inputs_and_outputs(stack: InProcessStack) -> None:
    nodes = [
        echo("a", ok="{{ inputs.flag }}"),
        echo("big"),
        echo("small"),
        echo("yes"),
        echo("no"),
    ]
    edges = [
        edge("a", "big", "inputs.n > 3"),
        edge("a", "small", "inputs.n <= 3"),
        edge("a", "yes", "nodes.a.output.ok == true"),
        edge("a", "no", "nodes.a.output.ok == false"),
    ]
    _, st = await stack.client.run(request(nodes, edges, {"n": 5, "flag": True}))
    assert st.state == COMPLETED
    assert node_states(st) == {
        "a": "COMPLETED",
        "big": "COMPLETED",
        "small": "SKIPPED",
        "yes": "COMPLETED",
        "no": "SKIPPED",
    }
    _, st = await stack.client.run(request(nodes, edges, {"n": 2, "flag": False}))
    assert st.state == COMPLETED
    assert node_states(st) == {
        "a": "COMPLETED",
        "big": "SKIPPED",
        "small": "COMPLETED",
        "yes": "SKIPPED",
        "no": "COMPLETED",
    }


async def test_edge_condition_that_errors_fails_the_source_node(stack: InProcessStack) -> None:
    nodes = [echo("a", v=1), echo("b")]
    gid, st = await stack.client.run(request(nodes, [edge("a", "b", "nodes.a.output.missing > 1")]))
    assert st.state == FAILED
    a = node_status(st, "a")
    assert a.state == N_FAILED
    assert a.error.error_class == graph_pb2.ERROR_CLASS_INVALID
    assert "edges[0].condition" in a.error.message
    assert "missing" in a.error.message
    assert node_status(st, "b").state == N_SKIPPED
    (failed,) = of_kind(await stack.client.history(gid), "graph_failed")
    assert failed.graph_failed.failed_node_id == "a"


# --- routers -------------------------------------------------------------------------------


def router_graph(n: int) -> Any:
    router = {
        "id": "r",
        "router": {
            "routes": [
                {"name": "big", "condition": "inputs.n > 10"},
                {"name": "mid", "condition": "inputs.n > 3"},
            ],
            "default_route": "small",
        },
    }
    nodes = [router, echo("big_n"), echo("mid_n"), echo("mid_n2"), echo("small_n")]
    edges = [
        edge("r", "big_n", label="big"),
        edge("r", "mid_n", label="mid"),
        edge("r", "mid_n2", label="mid"),
        edge("r", "small_n", label="small"),
    ]
    return request(nodes, edges, {"n": n})


@pytest.mark.parametrize(
    ("n", "route", "targets"),
    [(20, "big", ["big_n"]), (5, "mid", ["mid_n", "mid_n2"]), (1, "small", ["small_n"])],
)
async def test_router_takes_first_matching_route_else_default(
    stack: InProcessStack, n: int, route: str, targets: list[str]
) -> None:
    gid, st = await stack.client.run(router_graph(n))
    assert st.state == COMPLETED
    r = node_status(st, "r")
    assert r.state == N_COMPLETED
    assert r.route == route
    events = await stack.client.history(gid)
    (decision,) = of_kind(events, "router_decision", "r")
    assert decision.router_decision.route == route
    assert sorted(decision.router_decision.targets) == targets
    assert decision.router_decision.reason
    assert decision.seq > seq_of(events, "node_started", "r")
    for nid in ("big_n", "mid_n", "mid_n2", "small_n"):
        want = N_COMPLETED if nid in targets else N_SKIPPED
        assert node_status(st, nid).state == want, nid
        if nid not in targets:
            assert skipped_reason(events, nid) == NO_EDGE


async def test_router_edge_needs_its_label_and_its_condition(stack: InProcessStack) -> None:
    router = {
        "id": "r",
        "router": {"routes": [{"name": "go", "condition": "inputs.n > 0"}]},
    }
    nodes = [router, echo("plain"), echo("guarded"), echo("vetoed")]
    edges = [
        edge("r", "plain", label="go"),
        edge("r", "guarded", "nodes.r.output.route == 'go'", label="go"),
        edge("r", "vetoed", "inputs.n > 100", label="go"),
    ]
    gid, st = await stack.client.run(request(nodes, edges, {"n": 1}))
    assert st.state == COMPLETED
    assert node_states(st) == {
        "r": "COMPLETED",
        "plain": "COMPLETED",
        "guarded": "COMPLETED",
        "vetoed": "SKIPPED",
    }
    (decision,) = of_kind(await stack.client.history(gid), "router_decision")
    assert sorted(decision.router_decision.targets) == ["guarded", "plain"]


async def test_router_condition_error_fails_the_node(stack: InProcessStack) -> None:
    router = {
        "id": "r",
        "router": {
            "routes": [{"name": "num", "condition": "int(inputs.s) > 1"}],
            "default_route": "other",
        },
    }
    nodes = [router, echo("x"), echo("y")]
    edges = [edge("r", "x", label="num"), edge("r", "y", label="other")]
    gid, st = await stack.client.run(request(nodes, edges, {"s": "abc"}))
    assert st.state == FAILED
    r = node_status(st, "r")
    assert r.state == N_FAILED
    assert r.error.error_class == graph_pb2.ERROR_CLASS_INVALID
    assert "route 'num'" in r.error.message
    assert "int(inputs.s)" in r.error.message
    assert r.route == ""
    assert node_states(st)["x"] == node_states(st)["y"] == "SKIPPED"
    events = await stack.client.history(gid)
    assert not of_kind(events, "router_decision")
    (failed,) = of_kind(events, "graph_failed")
    assert failed.graph_failed.failed_node_id == "r"
    assert failed.graph_failed.error.message == r.error.message


async def test_router_without_match_or_default_fails(stack: InProcessStack) -> None:
    router = {"id": "r", "router": {"routes": [{"name": "a", "condition": "inputs.n > 10"}]}}
    _, st = await stack.client.run(
        request([router, echo("x")], [edge("r", "x", label="a")], {"n": 1})
    )
    assert st.state == FAILED
    r = node_status(st, "r")
    assert r.error.error_class == graph_pb2.ERROR_CLASS_INVALID
    assert "default_route" in r.error.message


# --- bounded loops -------------------------------------------------------------------------

COUNTER = {"n": "{{ has(nodes.inc) ? nodes.inc.output.n : 0 }}"}


async def test_self_loop_runs_until_its_exit_condition(stack: InProcessStack) -> None:
    nodes = [
        tool("inc", "count", inputs=COUNTER, max_iterations=5),
        echo("done", n="{{ nodes.inc.output.n }}"),
    ]
    edges = [
        edge("inc", "inc", "nodes.inc.output.n < 3"),
        edge("inc", "done", "nodes.inc.output.n >= 3"),
    ]
    gid, st = await stack.client.run(request(nodes, edges, entry_nodes=["inc"]))
    assert st.state == COMPLETED
    inc = node_status(st, "inc")
    assert inc.state == N_COMPLETED
    assert inc.iteration == 3
    assert plain(inc.output) == {"n": 3}
    assert [(a.iteration, a.attempt) for a in inc.attempts] == [(1, 1), (2, 1), (3, 1)]
    assert [plain(a.output) for a in inc.attempts] == [{"n": 1}, {"n": 2}, {"n": 3}]
    done = node_status(st, "done")
    assert done.state == N_COMPLETED
    assert plain(done.output) == {"n": 3}
    assert len(done.attempts) == 1
    events = await stack.client.history(gid)
    loops = of_kind(events, "loop_iteration", "inc")
    assert [e.loop_iteration.iteration for e in loops] == [2, 3]
    assert [e.loop_iteration.from_node_id for e in loops] == ["inc", "inc"]
    assert not any(e.loop_iteration.exhausted for e in loops)
    assert [e.iteration for e in of_kind(events, "node_started", "inc")] == [1, 2, 3]
    assert kinds(events, "done") == ["node_started", "node_completed"]


async def test_loop_that_reaches_max_iterations_exits(stack: InProcessStack) -> None:
    nodes = [
        tool("inc", "count", inputs=COUNTER, max_iterations=3),
        echo("done", n="{{ nodes.inc.output.n }}"),
    ]
    edges = [
        edge("inc", "inc", "nodes.inc.output.n < 10"),
        edge("inc", "done", "nodes.inc.output.n >= 10"),
    ]
    gid, st = await stack.client.run(request(nodes, edges, entry_nodes=["inc"]))
    # The bound ends the loop: the back edge counts as not taken, the exit edge (whose
    # condition never held) resolves untaken, and the graph still completes.
    assert st.state == COMPLETED
    inc = node_status(st, "inc")
    assert inc.iteration == 3
    assert len(inc.attempts) == 3
    assert plain(inc.output) == {"n": 3}
    assert node_status(st, "done").state == N_SKIPPED
    events = await stack.client.history(gid)
    loops = of_kind(events, "loop_iteration", "inc")
    assert [(e.loop_iteration.iteration, e.loop_iteration.exhausted) for e in loops] == [
        (2, False),
        (3, False),
        (3, True),
    ]
    assert skipped_reason(events, "done") == NO_EDGE
    assert kinds(events)[-1] == "graph_completed"


async def test_two_node_loop(stack: InProcessStack) -> None:
    nodes = [
        tool(
            "a",
            "count",
            inputs={"n": "{{ has(nodes.b) ? nodes.b.output.n : 0 }}"},
            max_iterations=5,
        ),
        tool("b", "count", inputs={"n": "{{ nodes.a.output.n }}"}),
        echo("done", n="{{ nodes.b.output.n }}"),
    ]
    edges = [
        edge("a", "b"),
        edge("b", "a", "nodes.b.output.n < 6"),
        edge("b", "done", "nodes.b.output.n >= 6"),
    ]
    gid, st = await stack.client.run(request(nodes, edges, entry_nodes=["a"]))
    assert st.state == COMPLETED
    a, b = node_status(st, "a"), node_status(st, "b")
    assert (a.iteration, b.iteration) == (3, 3)
    assert [plain(x.output)["n"] for x in a.attempts] == [1, 3, 5]
    assert [plain(x.output)["n"] for x in b.attempts] == [2, 4, 6]
    assert plain(node_status(st, "done").output) == {"n": 6}
    events = await stack.client.history(gid)
    loops = of_kind(events, "loop_iteration", "a")
    assert [(e.loop_iteration.iteration, e.loop_iteration.from_node_id) for e in loops] == [
        (2, "b"),
        (3, "b"),
    ]
    # Each iteration of b starts after the same iteration of a completed.
    for it in (1, 2, 3):
        (a_done,) = [e for e in of_kind(events, "node_completed", "a") if e.iteration == it]
        (b_start,) = [e for e in of_kind(events, "node_started", "b") if e.iteration == it]
        assert b_start.seq > a_done.seq


async def test_two_node_loop_bounded_by_max_iterations(stack: InProcessStack) -> None:
    nodes = [
        tool(
            "a",
            "count",
            inputs={"n": "{{ has(nodes.b) ? nodes.b.output.n : 0 }}"},
            max_iterations=2,
        ),
        tool("b", "count", inputs={"n": "{{ nodes.a.output.n }}"}),
        echo("after"),
    ]
    edges = [edge("a", "b"), edge("b", "a"), edge("b", "after", "nodes.b.output.n > 100")]
    gid, st = await stack.client.run(request(nodes, edges, entry_nodes=["a"]))
    assert st.state == COMPLETED
    assert node_status(st, "a").iteration == 2
    assert plain(node_status(st, "b").output) == {"n": 4}
    assert node_status(st, "after").state == N_SKIPPED
    events = await stack.client.history(gid)
    assert [e.loop_iteration.exhausted for e in of_kind(events, "loop_iteration")] == [
        False,
        True,
    ]


# --- templating ----------------------------------------------------------------------------


async def test_templates_keep_types_and_interpolate(stack: InProcessStack) -> None:
    inputs = {"items": [1, 2, 3], "k": 7, "obj": {"x": 1, "y": "z"}, "name": "bob"}
    nodes = [
        echo(
            "a",
            list="{{ inputs.items }}",
            num="{{ inputs.k }}",
            dict="{{ inputs.obj }}",
            text="hi {{ inputs.name }} #{{ inputs.k }}",
            fixed="plain",
        ),
        echo(
            "b",
            first="{{ nodes.a.output.list[0] }}",
            sum="{{ nodes.a.output.num + 1 }}",
            size="{{ size(nodes.a.output.list) }}",
            text="{{ nodes.a.output.text }}!",
            nested={"deep": ["{{ nodes.a.output.dict.y }}", "{{ inputs.k * 2 }}"]},
        ),
    ]
    gid, st = await stack.client.run(request(nodes, [edge("a", "b")], inputs))
    assert st.state == COMPLETED, st.error.message
    a = node_status(st, "a")
    assert plain(a.output) == {
        "list": [1, 2, 3],
        "num": 7,
        "dict": {"x": 1, "y": "z"},
        "text": "hi bob #7",
        "fixed": "plain",
    }
    b = node_status(st, "b")
    assert plain(b.output) == {
        "first": 1,
        "sum": 8,
        "size": 3,
        "text": "hi bob #7!",
        "nested": {"deep": ["z", 14]},
    }
    # The rendered input is kept with the attempt (graph.proto, Node.inputs).
    assert plain(b.attempts[0].input) == plain(b.output)
    events = await stack.client.history(gid)
    (b_done,) = of_kind(events, "node_completed", "b")
    assert plain(b_done.node_completed.output) == plain(b.output)


async def test_template_failing_at_runtime_fails_the_node(stack: InProcessStack) -> None:
    nodes = [
        echo("a"),
        echo("gone", v=1),
        echo("x"),
        echo("j", v="{{ nodes.gone.output.v }}"),
    ]
    edges = [edge("a", "gone", "false"), edge("a", "x"), edge("gone", "j"), edge("x", "j")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == FAILED
    j = node_status(st, "j")
    assert j.state == N_FAILED
    assert j.error.error_class == graph_pb2.ERROR_CLASS_INVALID
    assert not j.error.retryable
    assert j.error.message.startswith("inputs")
    assert "gone" in j.error.message
    assert node_status(st, "gone").state == N_SKIPPED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_INVALID
    (failed,) = of_kind(await stack.client.history(gid), "graph_failed")
    assert failed.graph_failed.failed_node_id == "j"


# --- results and usage ---------------------------------------------------------------------


async def test_result_output_mapping(stack: InProcessStack) -> None:
    nodes = [echo("a", x="{{ inputs.x }}"), echo("b", x="{{ nodes.a.output.x * 10 }}")]
    req = request(
        nodes,
        [edge("a", "b")],
        {"x": 4},
        output={"total": "nodes.b.output.x + 1", "echo": "inputs.x"},
    )
    gid, st = await stack.client.run(req)
    assert st.state == COMPLETED
    res = await stack.client.result(gid)
    assert res.state == COMPLETED
    assert plain(res.output) == {"total": 41, "echo": 4}
    assert {k: plain(v) for k, v in res.node_outputs.items()} == {"a": {"x": 4}, "b": {"x": 40}}
    assert not res.HasField("error")


async def test_result_without_mapping_holds_sink_outputs(stack: InProcessStack) -> None:
    nodes = [echo("a", v="a"), echo("s1", v="s1"), echo("s2", v="s2"), echo("s3", v="s3")]
    edges = [edge("a", "s1"), edge("a", "s2"), edge("a", "s3", "false")]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED
    res = await stack.client.result(gid)
    # s3 is a sink too, but skipped: it has no output.
    assert plain(res.output) == {"s1": {"v": "s1"}, "s2": {"v": "s2"}}
    assert sorted(res.node_outputs) == ["a", "s1", "s2"]


async def test_tool_graphs_record_zero_usage(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(request([echo("a"), echo("b")], [edge("a", "b")]))
    assert st.state == COMPLETED
    zero = execution_pb2.Usage()
    assert st.usage == zero
    assert all(n.usage == zero for n in st.nodes)
    res = await stack.client.result(gid)
    assert res.usage == zero
    events = await stack.client.history(gid)
    (done,) = of_kind(events, "graph_completed")
    assert done.graph_completed.usage == zero
    assert not of_kind(events, "usage")
