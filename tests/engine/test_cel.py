"""Tests for dago.cel: compile errors, scopes, evaluation, refs scanning and templates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dago.engine.cel import CelCompiler, CelError, EvalError, Refs, Scope, TemplateError


@pytest.fixture(scope="module")
def cel() -> CelCompiler:
    return CelCompiler()


def state(**extra: Any) -> dict[str, Any]:
    """Execution state as json.loads gives it."""
    data: dict[str, Any] = json.loads(
        """{
          "inputs": {"x": 5, "f": 3.0, "half": 2.5, "topic": "cats", "tags": ["a", "b"],
                     "obj": {"k": 1, "nodes": {"z": 1}}, "none": null, "which": "a"},
          "nodes": {"a": {"output": {"ok": true, "x": 1, "text": "héllo"}},
                    "b-c": {"output": {"n": 2}}},
          "graph": {"id": "g1"}
        }"""
    )
    data.update(extra)
    return data


def ev(cel: CelCompiler, source: str, scope: Scope = Scope.CONDITION, **extra: Any) -> Any:
    return cel.compile(source, scope).evaluate(state(**extra))


def compile_error(cel: CelCompiler, source: str, scope: Scope = Scope.CONDITION) -> str:
    with pytest.raises(CelError) as info:
        cel.compile(source, scope)
    message = str(info.value)
    assert "\n" not in message
    assert "INVALID_ARGUMENT" not in message
    assert "ERROR:" not in message
    assert "^" not in message
    return message


# --------------------------------------------------------------------------- compile errors


def test_syntax_error_keeps_position_and_drops_noise(cel: CelCompiler) -> None:
    message = compile_error(cel, "1 +")
    assert message.startswith("syntax error at 1:4: ")
    assert "'<EOF>'" in message


def test_syntax_error_on_second_line(cel: CelCompiler) -> None:
    assert compile_error(cel, "inputs.x > 1 &&\n  ) ").startswith("syntax error at 2:3")


def test_several_errors_are_joined_on_one_line(cel: CelCompiler) -> None:
    message = compile_error(cel, "foo + bar")
    assert "undeclared reference to 'foo' at 1:1" in message
    assert "undeclared reference to 'bar' at 1:7" in message
    assert message.endswith("(usable here: inputs, nodes, graph)")


def test_undeclared_reference_lists_usable_variables(cel: CelCompiler) -> None:
    message = compile_error(cel, "foo")
    assert message == "undeclared reference to 'foo' at 1:1 (usable here: inputs, nodes, graph)"


def test_unknown_function(cel: CelCompiler) -> None:
    message = compile_error(cel, "inputs.topic.lowerAscii()")
    assert "unknown function 'lowerAscii' at 1:24" in message


def test_type_error_found_at_compile_time(cel: CelCompiler) -> None:
    message = compile_error(cel, "'a' * 3")
    assert message == "no matching overload for '*' applied to (string, int) at 1:5"


def test_empty_expression(cel: CelCompiler) -> None:
    assert compile_error(cel, "   ") == "expression is empty"


def test_length_limit() -> None:
    cel = CelCompiler(max_expression_length=20)
    cel.compile("1 + 1" + " " * 15, Scope.CONDITION)
    with pytest.raises(CelError, match=r"^expression is 21 characters; the limit is 20$"):
        cel.compile("1 + 1" + " " * 16, Scope.CONDITION)


def test_default_length_limit_is_4096(cel: CelCompiler) -> None:
    message = compile_error(cel, "'" + "a" * 5000 + "'")
    assert message == "expression is 5002 characters; the limit is 4096"


@pytest.mark.parametrize(
    "source",
    [
        "(" * 200 + "1" + ")" * 200,
        "[" * 200 + "]" * 200,
        "inputs" + ".a" * 200,
        "1" + " + 1" * 200,
        "f(" * 100 + ")" * 100,
    ],
)
def test_deep_nesting_is_a_compile_error_not_a_crash(cel: CelCompiler, source: str) -> None:
    assert "nested too deeply" in compile_error(cel, source)


def test_an_expression_over_the_token_limit_is_refused_before_it_compiles() -> None:
    small = CelCompiler(max_expression_tokens=9)
    assert small.compile("[1, 2, 3, 4]", Scope.CONDITION).source == "[1, 2, 3, 4]"  # 9 tokens
    with pytest.raises(CelError, match="more than 9 tokens"):
        small.compile("[1, 2, 3, 4, 5]", Scope.CONDITION)
    with pytest.raises(TemplateError, match="more than 9 tokens") as info:
        small.template({"x": ["{{ [1, 2, 3, 4, 5] }}"]}, Scope.TEMPLATE)
    assert info.value.path == "x[0]"


@pytest.mark.parametrize("source", ["'abc", "1 = 2", ")", "inputs.", "{", "\x00", "🙂"])
def test_garbage_is_a_compile_error(cel: CelCompiler, source: str) -> None:
    compile_error(cel, source)


def test_compile_error_keeps_the_source(cel: CelCompiler) -> None:
    with pytest.raises(CelError) as info:
        cel.compile("nope", Scope.ROUTE)
    assert info.value.source == "nope"
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- scopes


@pytest.mark.parametrize(
    ("scope", "usable"),
    [
        (Scope.CONDITION, {"inputs", "nodes", "graph"}),
        (Scope.TEMPLATE, {"inputs", "nodes", "graph", "item", "index"}),
        (Scope.ROUTE, {"inputs", "nodes", "graph", "input", "item", "index"}),
        (Scope.OUTPUT, {"result", "input", "inputs", "nodes", "graph", "item", "index"}),
        (Scope.GRAPH_OUTPUT, {"inputs", "nodes", "graph"}),
    ],
)
def test_scope_variables(cel: CelCompiler, scope: Scope, usable: set[str]) -> None:
    assert set(scope.variables) == usable
    for name in ("inputs", "nodes", "graph", "input", "result"):
        if name in usable:
            cel.compile(f"{name} != null", scope)
        else:
            message = compile_error(cel, f"{name} != null", scope)
            assert f"undeclared reference to '{name}' at 1:1" in message
            assert ", ".join(scope.variables) in message


def test_input_usable_in_route_only(cel: CelCompiler) -> None:
    route = cel.compile("input.text.contains('yes')", Scope.ROUTE)
    assert route.evaluate_bool(state(input={"text": "oh yes"})) is True
    message = compile_error(cel, "input.text.contains('yes')", Scope.CONDITION)
    assert "undeclared reference to 'input' at 1:1 (usable here: inputs, nodes, graph)" in message


def test_result_usable_in_output_only(cel: CelCompiler) -> None:
    out = cel.compile("{'answer': result.text, 'q': input.q}", Scope.OUTPUT)
    data = state(result={"text": "42"}, input={"q": "why"})
    assert out.evaluate(data) == {"answer": "42", "q": "why"}
    for scope in (Scope.CONDITION, Scope.TEMPLATE, Scope.ROUTE, Scope.GRAPH_OUTPUT):
        assert "'result'" in compile_error(cel, "result.text", scope)


# --------------------------------------------------------------------------- caching


def test_compile_is_cached_per_source_and_scope(cel: CelCompiler) -> None:
    first = cel.compile("inputs.x > 3", Scope.CONDITION)
    assert cel.compile("inputs.x > 3", Scope.CONDITION) is first
    other = cel.compile("inputs.x > 3", Scope.ROUTE)
    assert other is not first
    assert other.scope is Scope.ROUTE


def test_cache_is_bounded_lru() -> None:
    cel = CelCompiler(cache_size=2)
    a = cel.compile("1", Scope.CONDITION)
    b = cel.compile("2", Scope.CONDITION)
    assert cel.compile("1", Scope.CONDITION) is a  # now "2" is the least recently used
    cel.compile("3", Scope.CONDITION)
    assert cel.compile("1", Scope.CONDITION) is a
    assert cel.compile("2", Scope.CONDITION) is not b


def test_compilers_are_independent() -> None:
    assert CelCompiler().compile("1", Scope.CONDITION) is not CelCompiler().compile(
        "1", Scope.CONDITION
    )


# --------------------------------------------------------------------------- evaluation


def test_condition(cel: CelCompiler) -> None:
    expr = cel.compile("inputs.x > 3 && nodes.a.output.ok", Scope.CONDITION)
    assert expr.evaluate_bool(state()) is True
    data = state()
    data["inputs"]["x"] = 1
    assert expr.evaluate_bool(data) is False


def test_int_stays_int_and_float_stays_float(cel: CelCompiler) -> None:
    assert type(ev(cel, "inputs.x")) is int
    assert type(ev(cel, "inputs.f")) is float
    assert ev(cel, "inputs.f") == 3.0
    assert type(ev(cel, "inputs.x / 2")) is int
    assert ev(cel, "inputs.half * 2.0") == 5.0
    assert type(ev(cel, "1u")) is int


def test_json_float_equals_int(cel: CelCompiler) -> None:
    assert ev(cel, "inputs.f == 3") is True
    assert ev(cel, "inputs.x == 5.0") is True
    assert ev(cel, "inputs.f in [1, 2, 3]") is True
    assert ev(cel, "inputs.f < 4") is True


def test_has(cel: CelCompiler) -> None:
    assert ev(cel, "has(nodes.a.output.x)") is True
    assert ev(cel, "has(nodes.a.output.missing)") is False
    assert ev(cel, "has(inputs.none)") is True
    assert ev(cel, "inputs.none == null") is True


def test_common_functions(cel: CelCompiler) -> None:
    assert ev(cel, "size(inputs.tags) == 2 && 'a' in inputs.tags") is True
    assert ev(cel, "inputs.topic.startsWith('ca') && inputs.topic.matches('^c.t')") is True
    assert ev(cel, "nodes.a.output.text.contains('é')") is True
    assert ev(cel, "inputs.tags.map(t, t + '!')") == ["a!", "b!"]
    assert ev(cel, "nodes.exists(k, k == 'b-c')") is True
    assert ev(cel, "nodes.?a.output.?zz.orValue('dflt')") == "dflt"
    assert ev(cel, "math.greatest(1, inputs.x, 3)") == 5


def test_missing_key_names_key_and_expression(cel: CelCompiler) -> None:
    with pytest.raises(EvalError) as info:
        ev(cel, "nodes.zz.output.ok")
    error = info.value
    assert error.reason == "no such key: 'zz'"
    assert "nodes.zz.output.ok" in str(error)
    assert error.expression == "nodes.zz.output.ok"
    assert error.path == ""


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("inputs.x + 's'", "no matching overload for '+' applied to (int, string)"),
        ("inputs.f + 1", "no matching overload for '+' applied to (double, int)"),
        ("inputs.tags[5]", "index 5 out of range (size 2)"),
        ("inputs.x.y", "cannot select a field from a value that is not a map"),
        ("1 / (inputs.x - 5)", "divide by zero"),
        ("inputs.topic.matches('(')", "invalid regular expression"),
        ("9223372036854775807 + inputs.x", "integer overflow"),
        ("optional.of(inputs.x)", ".orValue(default)"),
    ],
)
def test_runtime_errors_are_eval_errors(cel: CelCompiler, source: str, reason: str) -> None:
    with pytest.raises(EvalError) as info:
        ev(cel, source)
    assert reason in info.value.reason
    assert source in str(info.value)
    assert "[" + "INVALID_ARGUMENT]" not in str(info.value)


def test_unset_variable(cel: CelCompiler) -> None:
    with pytest.raises(EvalError, match="variable 'graph' is not set"):
        cel.compile("graph.id", Scope.CONDITION).evaluate({"inputs": {}, "nodes": {}})


@pytest.mark.parametrize(
    "data",
    [
        {"inputs": {"x": 2**70}},
        {"inputs": {"x": (1, 2)}},
        {"inputs": {"x": object()}},
        {"inputs": "not a map"},
        {"inputs": None},
        {},
    ],
)
def test_bad_data_is_an_eval_error_not_a_crash(cel: CelCompiler, data: dict[str, Any]) -> None:
    with pytest.raises(EvalError):
        cel.compile("inputs.x > 1", Scope.CONDITION).evaluate({**data, "nodes": {}, "graph": {}})


def test_data_that_is_not_a_mapping(cel: CelCompiler) -> None:
    with pytest.raises(EvalError):
        cel.compile("inputs.x > 1", Scope.CONDITION).evaluate([])  # type: ignore[arg-type]


def test_out_of_range_int_reports_where(cel: CelCompiler) -> None:
    with pytest.raises(EvalError, match=r"integer 1180591620717411303424 in inputs\['x'\]"):
        cel.compile("inputs.x", Scope.CONDITION).evaluate({"inputs": {"x": 2**70}})


def test_iteration_limit_gives_eval_error(cel: CelCompiler) -> None:
    data = state()
    data["inputs"]["l"] = list(range(200))
    expr = cel.compile("inputs.l.map(a, inputs.l.map(b, a * b)).size()", Scope.CONDITION)
    with pytest.raises(EvalError, match="too many loop iterations"):
        expr.evaluate(data)
    # Small enough loops run.
    data["inputs"]["l"] = list(range(50))
    assert expr.evaluate(data) == 50


def test_iteration_limit_without_data(cel: CelCompiler) -> None:
    ten = "[0,1,2,3,4,5,6,7,8,9]"
    source = f"{ten}.map(a, {ten}.map(b, {ten}.map(c, {ten}.map(d, a + b + c + d))))"
    with pytest.raises(EvalError, match="too many loop iterations"):
        cel.compile(source, Scope.CONDITION).evaluate(state())


def test_evaluate_bool_requires_a_bool(cel: CelCompiler) -> None:
    expr = cel.compile("inputs.topic", Scope.CONDITION)
    with pytest.raises(EvalError, match=r"^condition must be a bool, got string") as info:
        expr.evaluate_bool(state())
    assert "inputs.topic" in str(info.value)
    for source, kind in [("1", "int"), ("null", "null"), ("[true]", "list"), ("{}", "map")]:
        with pytest.raises(EvalError, match=f"got {kind}"):
            cel.compile(source, Scope.CONDITION).evaluate_bool(state())


def test_results_are_plain_json_values(cel: CelCompiler) -> None:
    assert ev(cel, "nodes.a.output") == {"ok": True, "x": 1, "text": "héllo"}
    assert ev(cel, "[1, 2.5, 'x', null, true, {'k': [1]}]") == [1, 2.5, "x", None, True, {"k": [1]}]
    assert ev(cel, "{1: 'one', 2: {true: 'yes'}}") == {"1": "one", "2": {"true": "yes"}}
    assert ev(cel, "b'hi'") == "aGk="
    assert ev(cel, "{'raw': b'\\xff'}") == {"raw": "/w=="}
    assert ev(cel, "timestamp('2024-05-01T12:30:00Z')") == "2024-05-01T12:30:00Z"
    assert ev(cel, "timestamp('2024-05-01T12:30:00.25+02:00')") == "2024-05-01T10:30:00.250000Z"
    assert ev(cel, "duration('1m30.5s')") == 90.5
    assert ev(cel, "type(inputs.x)") == "int"
    json.dumps(ev(cel, "[nodes, inputs, graph]"))


def test_evaluation_reuses_compiled_program(cel: CelCompiler) -> None:
    expr = cel.compile("inputs.x * 2", Scope.CONDITION)
    for x in range(100):
        data = state()
        data["inputs"]["x"] = x
        assert expr.evaluate(data) == x * 2


def test_narrowing_does_not_change_results(cel: CelCompiler) -> None:
    # Only the nodes and inputs an expression names are handed to CEL; a broken value in
    # another node must not matter, and dynamic uses still see everything.
    data = state()
    data["nodes"]["broken"] = {"output": 2**70}
    assert cel.compile("nodes.a.output.ok", Scope.CONDITION).evaluate(data) is True
    assert cel.compile("has(nodes.a)", Scope.CONDITION).evaluate(data) is True
    assert cel.compile("nodes['b-c'].output.n", Scope.CONDITION).evaluate(data) == 2
    with pytest.raises(EvalError):
        cel.compile("size(nodes) > 0", Scope.CONDITION).evaluate(data)
    del data["nodes"]["broken"]
    assert cel.compile("size(nodes)", Scope.CONDITION).evaluate(data) == 2
    assert cel.compile("nodes[inputs.which].output.x", Scope.CONDITION).evaluate(data) == 1
    assert cel.compile("size(inputs) > 3", Scope.CONDITION).evaluate(data) is True
    assert cel.compile("'a' in nodes && inputs.x == 5", Scope.CONDITION).evaluate(data) is True


# --------------------------------------------------------------------------- refs


def refs(cel: CelCompiler, source: str, scope: Scope = Scope.CONDITION) -> Refs:
    return cel.compile(source, scope).refs


@pytest.mark.parametrize(
    ("source", "nodes", "all_nodes", "inputs", "all_inputs"),
    [
        ("nodes.a.output", {"a"}, False, set(), False),
        ('nodes["b-c"].output', {"b-c"}, False, set(), False),
        ("nodes['d'].output", {"d"}, False, set(), False),
        ("nodes[r'e'] != null", {"e"}, False, set(), False),
        ("nodes['''f'''] != null", {"f"}, False, set(), False),
        ("nodes.`g-h`.output", {"g-h"}, False, set(), False),
        ("nodes . a . output", {"a"}, False, set(), False),
        ("nodes // why\n  .a.output", {"a"}, False, set(), False),
        ("inputs.topic", set(), False, {"topic"}, False),
        ('inputs["k"] == 1', set(), False, {"k"}, False),
        ("inputs.topic == nodes.a.output && nodes.b.ok", {"a", "b"}, False, {"topic"}, False),
        ('"nodes.x" == inputs.s', set(), False, {"s"}, False),
        ("'nodes.x' + '''inputs.y''' + r\"nodes[q]\" == ''", set(), False, set(), False),
        ("'it\\'s nodes.x' == ''", set(), False, set(), False),
        ("inputs.nodes.z", set(), False, {"nodes"}, False),
        ("inputs.obj.inputs.q", set(), False, {"obj"}, False),
        ("graph.nodes.a == 1", set(), False, set(), False),
        ("{'k': 1}.nodes", set(), False, set(), False),
        ("[inputs][0].nodes", set(), False, set(), True),
        ("nodes.exists(k, true)", set(), True, set(), False),
        ("nodes.all(k, nodes[k].output.ok)", set(), True, set(), False),
        ("nodes[inputs.which]", set(), True, {"which"}, False),
        ("size(nodes)", set(), True, set(), False),
        ("'a' in nodes", set(), True, set(), False),
        ("has(nodes.a)", {"a"}, False, set(), False),
        ("has(nodes.a.output.x)", {"a"}, False, set(), False),
        ("nodes.?a.output", {"a"}, False, set(), False),
        ("nodes[?'a'].orValue(1)", {"a"}, False, set(), False),
        ("inputs.x.?nodes.orValue(1)", set(), False, {"x"}, False),
        (".nodes.a.output", {"a"}, False, set(), False),
        ("true && .nodes.a.ok", {"a"}, False, set(), False),
        ("'a' in .nodes", set(), True, set(), False),
        ("nodes['x\\n']", set(), True, set(), False),
        ("nodes[b'a']", set(), True, set(), False),
        ("inputs", set(), False, set(), True),
        ("inputs.map(k, k)", set(), False, set(), True),
        ("1.5 + inputs.x", set(), False, {"x"}, False),
        ("1 + 2", set(), False, set(), False),
    ],
)
def test_refs(
    cel: CelCompiler,
    source: str,
    nodes: set[str],
    all_nodes: bool,
    inputs: set[str],
    all_inputs: bool,
) -> None:
    assert refs(cel, source) == Refs(
        nodes=frozenset(nodes),
        all_nodes=all_nodes,
        inputs=frozenset(inputs),
        all_inputs=all_inputs,
    )


def test_refs_of_output_scope(cel: CelCompiler) -> None:
    found = refs(cel, "result.nodes + input.inputs + nodes.a.x", Scope.OUTPUT)
    assert found == Refs(nodes=frozenset({"a"}))


def test_refs_union_and_empty() -> None:
    a = Refs(nodes=frozenset({"a"}), inputs=frozenset({"x"}))
    b = Refs(nodes=frozenset({"b"}), all_inputs=True)
    assert a.union(b) == Refs(nodes=frozenset({"a", "b"}), inputs=frozenset({"x"}), all_inputs=True)
    assert a.union(Refs.EMPTY) is a
    assert Refs.EMPTY.union(b) is b
    assert Refs(frozenset(), False, frozenset(), False) == Refs.EMPTY


# --------------------------------------------------------------------------- templates


def test_static_template_is_returned_unchanged(cel: CelCompiler) -> None:
    value = {"model": "m", "messages": [{"role": "user", "content": "hi } {"}], "n": 1.5}
    template = cel.template(value, Scope.TEMPLATE)
    assert template.is_static
    assert template.refs == Refs.EMPTY
    assert template.render(state()) is value
    assert template.render({}) is value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ nodes.a.output }}", {"ok": True, "x": 1, "text": "héllo"}),
        ("{{inputs.tags}}", ["a", "b"]),
        ("{{   inputs.x   }}", 5),
        ("{{ inputs.f }}", 3.0),
        ("{{ inputs.none }}", None),
        ("{{ nodes.a.output.ok }}", True),
        ("{{ inputs.topic }}", "cats"),
    ],
)
def test_single_placeholder_keeps_type(cel: CelCompiler, text: str, expected: Any) -> None:
    template = cel.template_string(text, Scope.TEMPLATE)
    assert not template.is_static
    result = template.render(state())
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("topic: {{ inputs.topic }}", "topic: cats"),
        (" {{ inputs.x }}", " 5"),
        ("{{ inputs.x }}{{ inputs.x }}", "55"),
        ("f={{ inputs.f }} h={{ inputs.half }}", "f=3.0 h=2.5"),
        ("[{{ inputs.none }}]", "[]"),
        ("ok={{ nodes.a.output.ok }} no={{ !nodes.a.output.ok }}", "ok=true no=false"),
        ("o={{ nodes.a.output }}", 'o={"ok":true,"text":"héllo","x":1}'),
        ("l={{ inputs.tags }}", 'l=["a","b"]'),
        ("{{ '{{' }} literal {{ '}}' }}", "{{ literal }}"),
        ('{{ "{{" }}', "{{"),
        ("{{ {'a': {'b': 1}}.a.b }}!", "1!"),
        ("{{ '}}' + \"}}\" }}.", "}}}}."),
        ("{{ r'}}\\d' }}.", "}}\\d."),
        ("{{ r'\\d' }}", "\\d"),
        ("no placeholders }} here", "no placeholders }} here"),
        ("x={{ inputs.x // five }}\n }}", "x=5"),
    ],
)
def test_interpolation(cel: CelCompiler, text: str, expected: str) -> None:
    assert cel.template_string(text, Scope.TEMPLATE).render(state()) == expected


def test_nested_template(cel: CelCompiler) -> None:
    value: dict[str, Any] = {
        "model": "fixed",
        "{{ not.a.key }}": "keys are not templated",
        "messages": [
            {"role": "system", "content": "about {{ inputs.topic }}"},
            {"role": "user", "content": "{{ nodes.a.output.text }}"},
        ],
        "settings": {"max": "{{ inputs.x * 100 }}", "fixed": [1, 2]},
    }
    template = cel.template(value, Scope.TEMPLATE)
    assert not template.is_static
    assert template.refs == Refs(nodes=frozenset({"a"}), inputs=frozenset({"topic", "x"}))
    rendered = template.render(state())
    assert rendered == {
        "model": "fixed",
        "{{ not.a.key }}": "keys are not templated",
        "messages": [
            {"role": "system", "content": "about cats"},
            {"role": "user", "content": "héllo"},
        ],
        "settings": {"max": 500, "fixed": [1, 2]},
    }
    assert value["settings"]["max"] == "{{ inputs.x * 100 }}"  # the template is untouched
    assert rendered["settings"]["fixed"] is value["settings"]["fixed"]  # static parts shared


def test_template_error_paths(cel: CelCompiler) -> None:
    value = {"messages": [{"content": "ok"}, {"content": "x"}, {"content": "hi {{ foo }}"}]}
    with pytest.raises(TemplateError) as info:
        cel.template(value, Scope.TEMPLATE)
    error = info.value
    assert error.path == "messages[2].content"
    message = str(error)
    assert message.startswith("messages[2].content: placeholder {{ foo }}: ")
    assert "undeclared reference to 'foo' at 1:1" in message
    assert isinstance(error, CelError)


def test_template_error_path_with_root_and_odd_keys(cel: CelCompiler) -> None:
    with pytest.raises(TemplateError) as info:
        cel.template({"a b": ["{{ input }}"]}, Scope.TEMPLATE, path="inputs")
    assert info.value.path == 'inputs["a b"][0]'
    with pytest.raises(TemplateError) as info:
        cel.template_string("{{ 1 + }}", Scope.TEMPLATE)
    assert info.value.path == ""
    assert str(info.value).startswith("placeholder {{ 1 + }}: syntax error at 1:4")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("hello {{ inputs.x", "unterminated placeholder: '{{' at character 6"),
        ("{{ 'oops }}", "unterminated placeholder"),
        ("a {{ {'k': 1} ", "unterminated placeholder"),
        ("a {{ }} b", "empty placeholder '{{ }}' at character 2"),
        ("{{}}", "empty placeholder"),
        ("{{ inputs.x }} {{ nodes.a. }}", "placeholder {{ nodes.a. }}: syntax error at 1:9"),
    ],
)
def test_bad_placeholders(cel: CelCompiler, text: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as info:
        cel.template({"p": [text]}, Scope.TEMPLATE)
    assert fragment in str(info.value)
    assert info.value.path == "p[0]"


def test_template_rejects_non_json_values(cel: CelCompiler) -> None:
    with pytest.raises(TemplateError, match="a: a set is not a JSON-like template value"):
        cel.template({"a": {1, 2}}, Scope.TEMPLATE)


def test_template_scope_is_enforced(cel: CelCompiler) -> None:
    with pytest.raises(TemplateError, match="undeclared reference to 'input'"):
        cel.template_string("{{ input.text }}", Scope.TEMPLATE)
    text = cel.template_string("said {{ input.text }}", Scope.ROUTE)
    assert text.render(state(input={"text": "hi"})) == "said hi"


def test_template_placeholder_length_limit() -> None:
    cel = CelCompiler(max_expression_length=10)
    with pytest.raises(TemplateError, match="expression is 13 characters; the limit is 10"):
        cel.template_string("{{ 1 + 2 + 3 + 4 }}", Scope.TEMPLATE)  # 13 characters
    # The limit applies to each placeholder, not to the text around them.
    long_text = "x" * 1000 + "{{ 1 + 2 }}"
    assert cel.template_string(long_text, Scope.TEMPLATE).render({}) == "x" * 1000 + "3"


def test_render_error_names_the_path(cel: CelCompiler) -> None:
    value = {"messages": [{"content": "a"}, {"content": "b"}, "{{ nodes.zz.output }}"]}
    template = cel.template(value, Scope.TEMPLATE, path="inputs")
    with pytest.raises(EvalError) as info:
        template.render(state())
    error = info.value
    assert error.path == "inputs.messages[2]"
    assert str(error).startswith("inputs.messages[2]: no such key: 'zz'")
    assert "nodes.zz.output" in str(error)

    interpolated = cel.template({"a": {"b": "x {{ inputs.x + 'y' }}"}}, Scope.TEMPLATE)
    with pytest.raises(EvalError, match=r"^a\.b: no matching overload for '\+'"):
        interpolated.render(state())


def test_render_with_bad_data_is_an_eval_error(cel: CelCompiler) -> None:
    template = cel.template_string("{{ inputs.x }}", Scope.TEMPLATE)
    with pytest.raises(EvalError):
        template.render({"inputs": {"x": 2**70}})
    with pytest.raises(EvalError):
        template.render(None)  # type: ignore[arg-type]


def test_template_refs_and_dynamic_use(cel: CelCompiler) -> None:
    template = cel.template(
        ["{{ nodes[inputs.which].output.x }}", "{{ nodes.a.output.x }}"], Scope.TEMPLATE
    )
    assert template.refs == Refs(
        nodes=frozenset({"a"}), all_nodes=True, inputs=frozenset({"which"})
    )
    assert template.render(state()) == [1, 1]


def test_template_string_is_reused(cel: CelCompiler) -> None:
    first = cel.template({"a": "{{ inputs.x }}", "b": "{{ inputs.x }}"}, Scope.TEMPLATE)
    assert first.render(state()) == {"a": 5, "b": 5}
    again = cel.template_string("{{ inputs.x }}", Scope.TEMPLATE)
    assert again.render(state()) == 5
