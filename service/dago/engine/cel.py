"""CEL for dago: compile, cache and evaluate conditions, routes, templates and output mappings.

Every expression a graph carries is compiled once by a :class:`CelCompiler` (at submit time, to
report mistakes with their position) and again by each worker that runs the graph, where the LRU
cache makes repeat compiles free. Evaluation runs on the hot path of every node execution.

The language is core CEL plus two extensions: ``optional`` (``nodes.?a.output.?x.orValue('')``,
handy in templates) and ``math`` (``math.greatest``, ``math.ceil``...). The ``strings`` extension
is deliberately absent: chained ``replace()`` calls multiply a string sixteenfold per call, so a
200-character expression can exhaust memory without any input at all. cel-expr-python caps nesting
(32 levels) and loops (fewer than 10,000 iterations per evaluation) but not memory or time; an
expression with a comprehension is refused data holding lists or maps longer than
``MAX_LOOP_ELEMENTS`` (its cost grows with the square of the length). Per-iteration work on large
values is not bounded separately; callers that need a hard stop must run evaluation in a killable
process.

Values crossing the boundary are plain JSON-like Python (what ``json.loads`` gives). Results are
normalised to the same shape:

* ``int`` stays ``int`` and ``float`` stays ``float`` (``uint`` becomes ``int``); NaN and
  infinities are returned as Python floats;
* ``bytes`` become base64 text (standard alphabet, padded);
* timestamps become RFC 3339 text in UTC with a ``Z`` suffix (microsecond precision: the
  nanoseconds CEL keeps are lost by cel-expr-python already);
* durations become seconds as a ``float``;
* type values (``type(x)``) become their lower-case name, e.g. ``"int"``;
* map keys become strings (``true``/``false`` for bools, decimal for integers).
"""

from __future__ import annotations

import base64
import datetime
import enum
import itertools
import json
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, NamedTuple

# Imported module by module: the package has no __init__.py, and mypy resolves the stubs
# (read through pyproject's follow_untyped_imports) only in this form.
import cel_expr_python.cel as cel
import cel_expr_python.ext.ext_math as ext_math
import cel_expr_python.ext.ext_optional as ext_optional

__all__ = [
    "CelCompiler",
    "CelError",
    "EvalError",
    "Expression",
    "Refs",
    "Scope",
    "Template",
    "TemplateError",
]


class Scope(enum.Enum):
    """Where an expression appears, which decides the variables it may use."""

    CONDITION = "condition"
    """Edge conditions: ``inputs``, ``nodes``, ``graph``."""
    TEMPLATE = "template"
    """Node input templates: ``inputs``, ``nodes``, ``graph``, ``item``, ``index``."""
    ROUTE = "route"
    """Router route conditions and LLM templates: ``inputs``, ``nodes``, ``graph``, ``input``,
    ``item``, ``index``."""
    OUTPUT = "output"
    """Node output mapping: ``result``, ``input``, ``inputs``, ``nodes``, ``graph``, ``item``,
    ``index``."""
    GRAPH_OUTPUT = "graph_output"
    """Graph result mapping: ``inputs``, ``nodes``, ``graph``."""

    @property
    def variables(self) -> tuple[str, ...]:
        """The variable names an expression in this scope may reference."""
        return _SCOPE_VARIABLES[self]


_SCOPE_VARIABLES: Final[Mapping[Scope, tuple[str, ...]]] = {
    Scope.CONDITION: ("inputs", "nodes", "graph"),
    # item and index: a map item's value and position (null outside a map's body).
    Scope.TEMPLATE: ("inputs", "nodes", "graph", "item", "index"),
    Scope.ROUTE: ("inputs", "nodes", "graph", "input", "item", "index"),
    Scope.OUTPUT: ("result", "input", "inputs", "nodes", "graph", "item", "index"),
    Scope.GRAPH_OUTPUT: ("inputs", "nodes", "graph"),
}


class CelError(ValueError):
    """An expression or template that cannot be compiled.

    ``str()`` is one line a person can act on: the position (``line:column``, 1-based, counted
    in code points of the expression) and the problem, without the library's status codes and
    caret art.
    """

    def __init__(self, message: str, *, source: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.source = source


class TemplateError(CelError):
    """A template that cannot be compiled; ``path`` locates the bad string inside the value.

    ``path`` is ``""`` for the root and looks like ``a.b[2]`` (or ``a["odd key"]``) inside it.
    """

    def __init__(self, message: str, *, path: str, source: str = "") -> None:
        super().__init__(message, source=source)
        self.path = path


class EvalError(RuntimeError):
    """An expression that failed at run time (no such key, type mismatch, loop limit...).

    ``expression`` is the CEL source, ``reason`` the problem alone, and ``path`` the place in a
    template's value ("" for a bare expression or the template root).
    """

    def __init__(self, message: str, *, expression: str, reason: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class Refs:
    """What an expression or template reads, found by scanning its source.

    When ``all_nodes`` is true the expression may read any node, and ``nodes`` still lists the ids
    it names statically; the same holds for ``all_inputs`` and ``inputs``.
    """

    nodes: frozenset[str] = field(default_factory=frozenset)
    """Node ids read as ``nodes.<id>``, ``nodes.?<id>``, ``nodes["id"]`` or ``nodes['id']``."""
    all_nodes: bool = False
    """``nodes`` is used in a way the scan cannot resolve (``nodes[x]``, ``size(nodes)``...)."""
    inputs: frozenset[str] = field(default_factory=frozenset)
    """Top-level input keys read as ``inputs.<key>`` or ``inputs["key"]``."""
    all_inputs: bool = False
    """``inputs`` is used in a way the scan cannot resolve."""

    EMPTY: ClassVar[Refs]

    def union(self, other: Refs) -> Refs:
        """Everything either side reads."""
        if other is self or other == Refs.EMPTY:
            return self
        if self == Refs.EMPTY:
            return other
        return Refs(
            nodes=self.nodes | other.nodes,
            all_nodes=self.all_nodes or other.all_nodes,
            inputs=self.inputs | other.inputs,
            all_inputs=self.all_inputs or other.all_inputs,
        )


Refs.EMPTY = Refs()


# ---------------------------------------------------------------------------------------------
# Lexing: just enough of CEL's lexical grammar to skip string literals and comments, find the
# end of a template placeholder and see how `nodes` and `inputs` are used.

_LEX: Final = re.compile(
    r"(?P<skip>\s+|//[^\n]*)"
    r"|(?P<quote>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"|'''|\"|'))"
    r"|(?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d+(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?"
    r"|\d+[eE][+-]?\d+|\d+[uU]?)"
    r"|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<quoted>`[^`]*`)"
    r"|(?P<punct>.)",
    re.DOTALL,
)


class _Tok(NamedTuple):
    kind: str  # "str", "num", "ident", "quoted", "punct", or "unterminated"
    text: str
    start: int
    end: int
    value: str | None = None  # a string literal's value when it is plain text without escapes


def _string_end(src: str, pos: int, delim: str, raw: bool) -> int:
    if raw:
        # CEL's lexer ends a raw literal at the first closing quote, backslash or not.
        end = src.find(delim, pos)
        return -1 if end < 0 else end + len(delim)
    n = len(src)
    while pos < n:
        c = src[pos]
        if c == "\\":
            pos += 2
        elif src.startswith(delim, pos):
            return pos + len(delim)
        else:
            pos += 1
    return -1


def _lex(src: str, pos: int = 0) -> Iterator[_Tok]:
    n = len(src)
    while pos < n:
        m = _LEX.match(src, pos)
        assert m is not None  # the last alternative matches any character
        kind = m.lastgroup
        assert kind is not None
        if kind == "quote":
            opener = m.group()
            delim = opener.lstrip("rRbB")
            prefix = opener[: len(opener) - len(delim)].lower()
            end = _string_end(src, m.end(), delim, "r" in prefix)
            if end < 0:
                yield _Tok("unterminated", src[pos:], pos, n)
                return
            body = src[m.end() : end - len(delim)]
            # Only plain text is trusted as a key: escapes would need CEL's unescaping rules,
            # and a bytes literal never equals a string key anyway.
            plain = "b" not in prefix and ("r" in prefix or "\\" not in body)
            yield _Tok("str", src[pos:end], pos, end, body if plain else None)
            pos = end
            continue
        if kind != "skip":
            yield _Tok(kind, m.group(), pos, m.end())
        pos = m.end()


def _ends_operand(tok: _Tok) -> bool:
    if tok.kind == "ident":
        # `in` is CEL's one keyword operator: `'a' in .nodes` reads the variable.
        return tok.text != "in"
    if tok.kind in ("str", "num", "quoted"):
        return True
    return tok.kind == "punct" and tok.text in ")]}"


def _is_punct(toks: Sequence[_Tok], i: int, text: str) -> bool:
    return 0 <= i < len(toks) and toks[i].kind == "punct" and toks[i].text == text


def _is_field_name(toks: Sequence[_Tok], i: int) -> bool:
    """Whether the identifier at ``i`` is selected from something (``x.nodes``, ``x.?nodes``)."""
    j = i - 1
    if _is_punct(toks, j, "?") and _is_punct(toks, j - 1, "."):
        j -= 1
    # A dot after an operator or at the start is CEL's root-scope prefix (`.nodes`), which still
    # names the variable.
    return _is_punct(toks, j, ".") and j >= 1 and _ends_operand(toks[j - 1])


def _static_member(toks: Sequence[_Tok], i: int) -> str | None:
    """The key read right after the variable at ``i``, or None when it is not a constant."""
    if _is_punct(toks, i + 1, "."):
        k = i + 2
        if _is_punct(toks, k, "?"):
            k += 1
        if k >= len(toks) or toks[k].kind not in ("ident", "quoted"):
            return None
        if _is_punct(toks, k + 1, "("):
            # A macro or method on the map itself (`nodes.exists(k, ...)`) may read every entry.
            return None
        name = toks[k].text
        return name[1:-1] if toks[k].kind == "quoted" else name
    if _is_punct(toks, i + 1, "["):
        k = i + 2
        if _is_punct(toks, k, "?"):
            k += 1
        if k < len(toks) and toks[k].kind == "str" and _is_punct(toks, k + 1, "]"):
            return toks[k].value
    return None


def _scan_refs(toks: Sequence[_Tok]) -> Refs:
    """What the tokens of an expression read (see ``Refs``)."""
    found: dict[str, set[str]] = {"nodes": set(), "inputs": set()}
    dynamic = {"nodes": False, "inputs": False}
    for i, tok in enumerate(toks):
        if tok.kind != "ident" or tok.text not in found or _is_field_name(toks, i):
            continue
        key = _static_member(toks, i)
        if key is None:
            dynamic[tok.text] = True
        else:
            found[tok.text].add(key)
    if not (found["nodes"] or found["inputs"] or dynamic["nodes"] or dynamic["inputs"]):
        return Refs.EMPTY
    return Refs(
        nodes=frozenset(found["nodes"]),
        all_nodes=dynamic["nodes"],
        inputs=frozenset(found["inputs"]),
        all_inputs=dynamic["inputs"],
    )


# ---------------------------------------------------------------------------------------------
# Error messages: cel-expr-python reports problems as absl status text with caret art, e.g.
# "INVALID_ARGUMENT: ERROR: <input>:1:4: Syntax error: ...\n | 1 +\n | ...^ [INVALID_ARGUMENT]".

_COMPILE_ISSUE: Final = re.compile(r"ERROR: <input>:(-?\d+):(-?\d+): ([^\n]*)")
_STATUS_PREFIX: Final = re.compile(r"^[A-Z][A-Z_]*: ")
_STATUS_SUFFIX: Final = re.compile(r"\s*\[[A-Z][A-Z_]*\]\s*$")
_UNDECLARED: Final = re.compile(r"undeclared reference to '([^']*)'(?: \(in container '[^']*'\))?")
_NO_OVERLOAD_CHECK: Final = re.compile(
    r"found no matching overload for '([^']*)' applied to '\((.*)\)'"
)
_NO_OVERLOAD_RUN: Final = re.compile(r"No matching overloads found : ([^(]+)\((.*)\)")
_DEPTH: Final = re.compile(
    r"(?:Exceeded max recursion depth of|Expression recursion limit exceeded\. limit:) (\d+)"
)
_KEY_NOT_FOUND: Final = re.compile(r"Key not found in map : (.*)")
_INDEX: Final = re.compile(r"Index error: index=(-?\d+) size=(\d+)")
_UNSET: Final = re.compile(r'No value with name "(.*)" found in Activation')
_BIG_INT: Final = re.compile(r"Integer value '(-?\d+)' out of range for '(.*?)(?: -> .*)?'\.?")
_NON_CEL: Final = re.compile(r"Non-CEL value type for '(.*)': (.*?)\.?")
# ANTLR lists every token that may start an operand; "an expression" says the same.
_ANY_OPERAND: Final = re.compile(r"expecting \{'\[', '\{', '\(', [^}]*IDENTIFIER\}")
_OPERATORS: Final[Mapping[str, str]] = {
    "_+_": "+",
    "_-_": "-",
    "_*_": "*",
    "_/_": "/",
    "_%_": "%",
    "_==_": "==",
    "_!=_": "!=",
    "_<_": "<",
    "_<=_": "<=",
    "_>_": ">",
    "_>=_": ">=",
    "_&&_": "&&",
    "_||_": "||",
    "_[_]": "[]",
    "_[?_]": "[?]",
    "!_": "!",
    "-_": "unary -",
    "_?_:_": "?:",
    "@in": "in",
}
_LOOP_LIMIT_TEXT: Final = "too many loop iterations (the limit is 10000 per evaluation)"


def _strip_status(text: str) -> str:
    return _STATUS_SUFFIX.sub("", _STATUS_PREFIX.sub("", text.strip(), count=1))


def _type_list(text: str) -> str:
    return re.sub(r"\buint64\b", "uint", re.sub(r"\bint64\b", "int", text))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _char_at(source: str, line: int, column: int) -> str:
    lines = source.split("\n")
    if 1 <= line <= len(lines) and 1 <= column <= len(lines[line - 1]):
        return lines[line - 1][column - 1]
    return ""


def _offset(source: str, line: int, column: int) -> int:
    lines = source.split("\n")
    return sum(len(text) + 1 for text in lines[: line - 1]) + column - 1


def _position(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    return line, offset - (source.rfind("\n", 0, offset) + 1) + 1


def _qualified_root(
    source: str, line: int, column: int, parts: Sequence[str]
) -> tuple[int, int] | None:
    """Where the first name of ``a.b.c`` starts, given the position of its last dot."""
    toks = list(_lex(source))
    offset = _offset(source, line, column)
    i = next((k for k, tok in enumerate(toks) if tok.start == offset), -1)
    if not _is_punct(toks, i, "."):
        return None
    j = i - 1
    for k in range(len(parts) - 2, -1, -1):
        if j < 0 or toks[j].kind != "ident" or toks[j].text != parts[k]:
            return None
        if k > 0:
            if not _is_punct(toks, j - 1, "."):
                return None
            j -= 2
    return _position(source, toks[j].start)


def _describe_compile_issue(line: int, column: int, text: str, source: str) -> str:
    at = f" at {line}:{column}" if line > 0 and column > 0 else ""
    text = _STATUS_SUFFIX.sub("", text)
    if text.startswith("Syntax error: "):
        detail = _ANY_OPERAND.sub("expecting an expression", text[len("Syntax error: ") :])
        return f"syntax error{at}: {detail}"
    if m := _UNDECLARED.fullmatch(text):
        if _char_at(source, line, column) == "(":
            # The checker points at the call's parenthesis when the function is unknown.
            return f"unknown function '{m[1]}'{at} (or wrong number of arguments)"
        name = m[1]
        if "." in name and at:
            # The checker reports `input.text` as one qualified name at its last dot; the
            # person needs the variable and where it starts.
            root = _qualified_root(source, line, column, name.split("."))
            if root is not None:
                name = name.split(".")[0]
                at = f" at {root[0]}:{root[1]}"
        return f"undeclared reference to '{name}'{at}"
    if m := _NO_OVERLOAD_CHECK.fullmatch(text):
        op = _OPERATORS.get(m[1], m[1])
        return f"no matching overload for '{op}' applied to ({m[2]}){at}"
    if m := _DEPTH.search(text):
        return f"expression is nested too deeply (the limit is {m[1]} levels)"
    return f"{text}{at}"


def _compile_message(raw: str, source: str, scope: Scope) -> str:
    issues = _COMPILE_ISSUE.findall(raw)
    if not issues:
        text = _strip_status(raw)
        if m := _DEPTH.search(text):
            return f"expression is nested too deeply (the limit is {m[1]} levels)"
        return _one_line(text) or "invalid expression"
    messages: list[str] = []
    for line, column, text in issues:
        message = _describe_compile_issue(int(line), int(column), text, source)
        if message not in messages:
            messages.append(message)
    joined = "; ".join(messages)
    if "undeclared reference to" in joined:
        joined += f" (usable here: {', '.join(scope.variables)})"
    return _one_line(joined)


def _runtime_reason(raw: str) -> str:
    text = _strip_status(raw)
    if m := _KEY_NOT_FOUND.fullmatch(text):
        key = m[1]
        if len(key) >= 2 and key[0] == key[-1] == '"':
            key = key[1:-1]
        return f"no such key: '{key}'"
    if m := _NO_OVERLOAD_RUN.fullmatch(text):
        op = _OPERATORS.get(m[1].strip(), m[1].strip())
        return f"no matching overload for '{op}' applied to ({_type_list(m[2])})"
    if m := _INDEX.fullmatch(text):
        return f"index {m[1]} out of range (size {m[2]})"
    if m := _UNSET.fullmatch(text):
        return f"variable '{m[1]}' is not set"
    if text == "Applying SELECT to non-message type":
        return "cannot select a field from a value that is not a map"
    if text == "Iteration budget exceeded":
        return _LOOP_LIMIT_TEXT
    if m := _BIG_INT.fullmatch(text):
        return f"integer {m[1]} in {m[2]} does not fit in 64 bits"
    if m := _NON_CEL.fullmatch(text):
        return f"{m[1]} holds a Python {m[2]} value, which is not JSON-like"
    return _one_line(text) or "evaluation failed"


def _shorten(source: str, limit: int = 80) -> str:
    flat = _one_line(source)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _eval_error(source: str, reason: str, path: str = "") -> EvalError:
    where = f"{path}: " if path else ""
    return EvalError(
        f"{where}{reason} (evaluating `{_shorten(source)}`)",
        expression=source,
        reason=reason,
        path=path,
    )


# ---------------------------------------------------------------------------------------------
# Results back to plain JSON-like Python.

_ERROR: Final = cel.Type.ERROR
_CEL_TYPE: Final[type[Any]] = cel.Type
_UNCONVERTIBLE: Final = (
    "the result cannot be converted to a plain value "
    "(an optional? finish it with .orValue(default) or .value())"
)


def _plain_key(key: Any) -> str:
    if type(key) is str:
        return key
    if key is True or key is False:
        return "true" if key else "false"
    return str(key)


def _to_plain(value: Any, budget: list[int]) -> Any:
    """``value`` as JSON-like Python, counting its size (a string's length, 8 per other
    scalar, a few per container and key) off ``budget[0]``: _TooLarge once it is spent."""
    t = type(value)
    if t is str:
        budget[0] -= len(value) + 2
        if budget[0] < 0:
            raise _TooLarge
        return value
    if t is int or t is float or t is bool or value is None:
        budget[0] -= 8
        return value
    if t is list:
        budget[0] -= 2
        return [_to_plain(v, budget) for v in value]
    if t is dict:
        budget[0] -= 2 + 4 * len(value)
        return {_plain_key(k): _to_plain(v, budget) for k, v in value.items()}
    if t is bytearray or t is bytes:
        budget[0] -= len(value) * 4 // 3
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(datetime.UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, _CEL_TYPE):
        return str(value.name()).lower()
    raise _Unconvertible(t.__name__)


class _Unconvertible(Exception):
    pass


class _TooLarge(Exception):
    pass


def _too_large(size: int | None, limit: int) -> str:
    what = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return f"the value is {what}; the limit is {limit} (DAGO_MAX_VALUE_BYTES)"


def _cel_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _to_text(value: Any) -> str:
    if type(value) is str:
        return value
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if type(value) is int or type(value) is float:
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------------------------------------
# Narrowing: cel-expr-python converts a whole variable to CEL on its first use in an evaluation
# (about 1 ms for 100 nodes with 2 kB outputs), so only the entries an expression can read are
# handed over. This also keeps a broken value in one node from failing conditions on another.


class _Narrowing:
    __slots__ = ("input_keys", "node_keys")

    def __init__(self, refs: Refs) -> None:
        self.node_keys = None if refs.all_nodes else tuple(sorted(refs.nodes))
        self.input_keys = None if refs.all_inputs else tuple(sorted(refs.inputs))

    def apply(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
        node_keys = self.node_keys
        input_keys = self.input_keys
        narrowed: dict[str, Any] | None = None
        if node_keys is not None:
            nodes = data.get("nodes")
            if type(nodes) is dict and len(nodes) > len(node_keys):
                narrowed = dict(data)
                narrowed["nodes"] = {k: nodes[k] for k in node_keys if k in nodes}
        if input_keys is not None:
            inputs = data.get("inputs")
            if type(inputs) is dict and len(inputs) > len(input_keys):
                if narrowed is None:
                    narrowed = dict(data)
                narrowed["inputs"] = {k: inputs[k] for k in input_keys if k in inputs}
        return data if narrowed is None else narrowed


# ---------------------------------------------------------------------------------------------
# A bound on comprehensions. cel-expr-python stops loops below 10,000 iterations but their cost
# grows with the square of the list's length (`l.map(x, x)` over 9,000 numbers took ~9 s and
# 1.3 GB), so an expression that loops may only see lists and maps of up to MAX_LOOP_ELEMENTS
# elements (~0.4 s and ~65 MB at worst). Expressions without a comprehension are not checked.

MAX_LOOP_ELEMENTS: Final = 2000
_MACROS: Final = frozenset({"map", "filter", "all", "exists", "exists_one"})


def _has_loops(toks: Sequence[_Tok]) -> bool:
    """Whether the tokens call a comprehension macro (``x.map(...)``, ``x.all(...)``...)."""
    return any(
        t.kind == "ident"
        and t.text in _MACROS
        and _is_punct(toks, i - 1, ".")
        and _is_punct(toks, i + 1, "(")
        for i, t in enumerate(toks)
    )


MAX_LOOP_WORK: Final = 64 << 20
"""A comprehension may repeat (longest list) x (bytes of the data it sees) up to this much:
each of its iterations may copy any of that data, which CEL would build before any limit on
the result could see it."""


def _loop_problem(data: Any) -> str | None:
    """Why ``data`` is too large for an expression with a comprehension, or None."""
    todo = [data]
    longest = 0
    size = 0
    while todo:
        value = todo.pop()
        if isinstance(value, dict | list):
            if len(value) > MAX_LOOP_ELEMENTS:
                return (
                    f"the data holds a list or map of {len(value)} elements; an expression "
                    f"with map/filter/all/exists may only see up to {MAX_LOOP_ELEMENTS} "
                    "(comprehension cost grows with the square of the length)"
                )
            longest = max(longest, len(value))
            size += 2 * len(value)
            todo.extend(value.values() if isinstance(value, dict) else value)
        elif isinstance(value, str):
            size += len(value)
        else:
            size += 8
    if longest * size > MAX_LOOP_WORK:
        return (
            f"the data it sees is {size} bytes with a list or map of {longest} elements; an "
            "expression with map/filter/all/exists may repeat at most "
            f"{MAX_LOOP_WORK >> 20} MiB of it (elements x bytes): narrow what it reads"
        )
    return None


# ---------------------------------------------------------------------------------------------
# Expressions


class Expression:
    """A compiled CEL expression, ready to evaluate many times.

    Build it with :meth:`CelCompiler.compile`; instances are shared through the compiler's cache
    and must be treated as immutable.
    """

    __slots__ = (
        "_env",
        "_narrowing",
        "_program",
        "loops",
        "max_bytes",
        "refs",
        "scope",
        "source",
    )

    source: str
    """The CEL source text."""
    scope: Scope
    """The scope it was compiled for."""
    refs: Refs
    """What it reads."""

    def __init__(
        self,
        source: str,
        scope: Scope,
        refs: Refs,
        env: Any,
        program: Any,
        loops: bool,
        max_bytes: int,
    ) -> None:
        self.source = source
        self.scope = scope
        self.refs = refs
        self._env = env
        self._program = program
        self._narrowing = _Narrowing(refs)
        # With a comprehension, the data it sees is checked first (MAX_LOOP_ELEMENTS).
        self.loops = loops
        # Its results are refused past this size (DAGO_MAX_VALUE_BYTES).
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"Expression({self.source!r}, {self.scope})"

    def evaluate(self, data: Mapping[str, Any]) -> Any:
        """Evaluate over ``data`` (variable name -> JSON-like value) and return a plain value.

        Raises :class:`EvalError` for any failure; nothing the data or the expression holds can
        escape as another exception.
        """
        try:
            narrowed = self._narrowing.apply(data)
            problem = _loop_problem(narrowed) if self.loops else None
            if problem is None:
                # eval(data=...) is ~2 µs cheaper than building an Activation for a single use.
                result = self._program.eval(data=narrowed)
        except Exception as exc:
            raise self._raised(exc) from None
        if problem is not None:
            raise _eval_error(self.source, problem)
        return self._finish(result)

    def evaluate_bool(self, data: Mapping[str, Any]) -> bool:
        """Evaluate a condition; a result that is not a bool raises :class:`EvalError`."""
        value = self.evaluate(data)
        if value is True or value is False:
            return value
        reason = f"condition must be a bool, got {_cel_type_name(value)}"
        raise _eval_error(self.source, reason)

    def _run(self, activation: Any) -> Any:
        """Evaluate with an activation shared by several expressions (a template's)."""
        try:
            result = self._program.eval(activation)
        except Exception as exc:
            raise self._raised(exc) from None
        return self._finish(result)

    def _raised(self, exc: Exception) -> EvalError:
        # Limits (the iteration budget) and unusable data arrive as exceptions rather than as
        # error values.
        return _eval_error(self.source, _runtime_reason(str(exc)))

    def _finish(self, result: Any) -> Any:
        try:
            value = result.plain_value()
        except Exception:
            # Optionals (and any other type the binding does not map) cannot be converted.
            raise _eval_error(self.source, _UNCONVERTIBLE) from None
        # An error value's plain value is its status text, so only strings need the (costlier)
        # type check.
        if type(value) is str:
            if result.type() == _ERROR:
                raise _eval_error(self.source, _runtime_reason(value))
            if len(value) > self.max_bytes:
                raise _eval_error(self.source, _too_large(len(value), self.max_bytes))
            return value
        budget = [self.max_bytes]
        try:
            plain = _to_plain(value, budget)
        except _Unconvertible:
            raise _eval_error(self.source, _UNCONVERTIBLE) from None
        except _TooLarge:
            raise _eval_error(self.source, _too_large(None, self.max_bytes)) from None
        if budget[0] < 0:
            raise _eval_error(self.source, _too_large(None, self.max_bytes))
        return plain


# ---------------------------------------------------------------------------------------------
# Templates


class _RenderFailure(Exception):
    """Carries an EvalError up through containers, collecting path segments on the way."""

    def __init__(self, error: EvalError) -> None:
        super().__init__(error.reason)
        self.error = error
        self.segments: list[str] = []


class _Plan:
    __slots__ = ()

    def render(self, activation: Any) -> Any:
        raise NotImplementedError


class _Const(_Plan):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, activation: Any) -> Any:
        return self.value


class _Whole(_Plan):
    """A string that is exactly one placeholder: the result keeps its type."""

    __slots__ = ("expression",)

    def __init__(self, expression: Expression) -> None:
        self.expression = expression

    def render(self, activation: Any) -> Any:
        try:
            return self.expression._run(activation)
        except EvalError as exc:
            raise _RenderFailure(exc) from None


class _Interpolated(_Plan):
    __slots__ = ("parts",)

    def __init__(self, parts: tuple[str | Expression, ...]) -> None:
        self.parts = parts

    def render(self, activation: Any) -> Any:
        out: list[str] = []
        for part in self.parts:
            if type(part) is str:
                out.append(part)
            else:
                assert isinstance(part, Expression)
                try:
                    out.append(_to_text(part._run(activation)))
                except EvalError as exc:
                    raise _RenderFailure(exc) from None
        return "".join(out)


class _Dict(_Plan):
    __slots__ = ("items",)

    def __init__(self, items: tuple[tuple[Any, str, _Plan], ...]) -> None:
        self.items = items

    def render(self, activation: Any) -> Any:
        out: dict[Any, Any] = {}
        for key, segment, plan in self.items:
            try:
                out[key] = plan.render(activation)
            except _RenderFailure as failure:
                failure.segments.append(segment)
                raise
        return out


class _List(_Plan):
    __slots__ = ("items",)

    def __init__(self, items: tuple[_Plan, ...]) -> None:
        self.items = items

    def render(self, activation: Any) -> Any:
        out: list[object] = []
        for index, plan in enumerate(self.items):
            try:
                out.append(plan.render(activation))
            except _RenderFailure as failure:
                failure.segments.append(f"[{index}]")
                raise
        return out


def _plan_refs(plan: _Plan | None, segments: list[str], out: list[tuple[str, Refs]]) -> None:
    """What each string with placeholders in ``plan`` reads, by its path (see
    :meth:`Template.refs_by_path`)."""
    if isinstance(plan, _Whole):
        out.append((_join_path("", segments), plan.expression.refs))
    elif isinstance(plan, _Interpolated):
        refs = Refs.EMPTY
        for part in plan.parts:
            if isinstance(part, Expression):
                refs = refs.union(part.refs)
        out.append((_join_path("", segments), refs))
    elif isinstance(plan, _Dict):
        for _, segment, sub in plan.items:
            _plan_refs(sub, [*segments, segment], out)
    elif isinstance(plan, _List):
        for index, sub in enumerate(plan.items):
            _plan_refs(sub, [*segments, f"[{index}]"], out)


def _plan_loops(plan: _Plan | None) -> bool:
    """Whether any placeholder of a template has a comprehension."""
    if isinstance(plan, _Whole):
        return plan.expression.loops
    if isinstance(plan, _Interpolated):
        return any(isinstance(p, Expression) and p.loops for p in plan.parts)
    if isinstance(plan, _Dict):
        return any(_plan_loops(p) for _, _, p in plan.items)
    if isinstance(plan, _List):
        return any(_plan_loops(p) for p in plan.items)
    return False


_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _key_segment(key: Any) -> str:
    text = str(key)
    if _IDENTIFIER.fullmatch(text):
        return f".{text}"
    return f"[{json.dumps(text, ensure_ascii=False)}]"


def _join_path(root: str, segments: Sequence[str]) -> str:
    path = root + "".join(segments)
    return path[1:] if path.startswith(".") else path


def _placeholder_end(text: str, pos: int, limit: int) -> tuple[int, list[_Tok]]:
    """Index of the ``}}`` closing the placeholder whose body starts at ``pos`` (-1 when
    there is none), and the body's tokens; stops after ``limit`` tokens (the body is then
    too long to compile anyway)."""
    depth = 0
    toks: list[_Tok] = []
    for tok in _lex(text, pos):
        if tok.kind == "unterminated" or len(toks) > limit:
            return -1, toks
        if tok.kind == "punct":
            if tok.text == "{":
                depth += 1
            elif tok.text == "}":
                if depth == 0:
                    if text.startswith("}}", tok.start):
                        return tok.start, toks
                else:
                    depth -= 1
        toks.append(tok)
    return -1, toks


class Template:
    """A JSON-like value whose strings may hold ``{{ cel }}`` placeholders.

    Build it with :meth:`CelCompiler.template` or :meth:`CelCompiler.template_string`. A string
    that is exactly one placeholder renders to the expression's value with its type; any other
    string with placeholders renders to a string (see :meth:`render`). Dict keys are never
    templated. Rendered values share unchanged parts with ``value``: treat both as read-only.
    """

    __slots__ = (
        "_env",
        "_loops",
        "_narrowing",
        "_path",
        "_plan",
        "is_static",
        "refs",
        "scope",
        "value",
    )

    value: Any
    """The template as given."""
    scope: Scope
    """The scope its placeholders were compiled for."""
    refs: Refs
    """What its placeholders read, together."""
    is_static: bool
    """True when it holds no placeholder: :meth:`render` returns ``value`` itself."""

    def __init__(
        self, value: Any, scope: Scope, refs: Refs, env: Any, plan: _Plan | None, path: str
    ) -> None:
        self.value = value
        self.scope = scope
        self.refs = refs
        self.is_static = plan is None
        self._env = env
        self._plan = plan
        self._path = path
        self._narrowing = _Narrowing(refs)
        self._loops = _plan_loops(plan)

    def __repr__(self) -> str:
        return f"Template({self.value!r}, {self.scope})"

    def refs_by_path(self) -> list[tuple[str, Refs]]:
        """What each string with placeholders reads, by its path inside the value (``""``
        for the value itself, else like ``title``, ``items[2]`` or ``a["odd key"]``), in
        the value's order: so a problem with what a template reads names the key."""
        out: list[tuple[str, Refs]] = []
        _plan_refs(self._plan, [], out)
        return out

    def render(self, data: Mapping[str, Any]) -> Any:
        """Fill the placeholders from ``data`` and return the resulting plain value.

        In a string with text around its placeholders, each value is written as: strings as
        they are, null as nothing, bools as ``true``/``false``, numbers as JSON writes them
        (``3``, ``2.5``, ``3.0``) and lists and maps as compact JSON with sorted keys.

        Raises :class:`EvalError` whose message starts with the path of the failing string.
        """
        plan = self._plan
        if plan is None:
            return self.value
        try:
            narrowed = self._narrowing.apply(data)
            problem = _loop_problem(narrowed) if self._loops else None
            if problem is not None:
                where = self._path or "template"
                raise EvalError(
                    f"{where}: {problem}", expression="", reason=problem, path=self._path
                )
            activation = self._env.Activation(data=narrowed)
            return plan.render(activation)
        except _RenderFailure as failure:
            error = failure.error
            path = _join_path(self._path, failure.segments[::-1])
            raise _eval_error(error.expression, error.reason, path) from None
        except EvalError:
            raise
        except Exception as exc:
            # Only reachable when ``data`` itself is unusable (not a mapping, say).
            reason = _runtime_reason(str(exc))
            where = self._path or "template"
            raise EvalError(
                f"{where}: {reason}", expression="", reason=reason, path=self._path
            ) from None


# ---------------------------------------------------------------------------------------------
# The compiler


class CelCompiler:
    """Compiles and caches CEL for every scope.

    Create one per process and pass it to whatever needs it; it holds the CEL environments and
    the caches, and nothing about it is global. Not thread-safe (dago evaluates on one asyncio
    thread); compiled expressions are reused across evaluations.
    """

    def __init__(
        self,
        max_expression_length: int = 4096,
        cache_size: int = 4096,
        max_expression_tokens: int = 512,
        max_value_bytes: int = 1 << 20,
    ) -> None:
        if max_expression_length < 1:
            raise ValueError("max_expression_length must be at least 1")
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        if max_expression_tokens < 1:
            raise ValueError("max_expression_tokens must be at least 1")
        self.max_expression_length = max_expression_length
        self.max_expression_tokens = max_expression_tokens
        self.max_value_bytes = max_value_bytes
        self.cache_size = cache_size
        envs: dict[tuple[str, ...], Any] = {}
        self._envs: dict[Scope, Any] = {}
        for scope in Scope:
            names = scope.variables
            if names not in envs:
                envs[names] = cel.NewEnv(
                    variables={name: cel.Type.DYN for name in names},
                    extensions=[ext_optional.ExtOptional(), ext_math.ExtMath()],
                )
            self._envs[scope] = envs[names]
        self._expressions: OrderedDict[tuple[str, Scope], Expression] = OrderedDict()
        self._strings: OrderedDict[tuple[str, Scope], tuple[_Plan | None, Refs]] = OrderedDict()

    def compile(
        self, source: str, scope: Scope, tokens: Sequence[_Tok] | None = None
    ) -> Expression:
        """Compile ``source`` for ``scope``, or return the cached result of an earlier compile
        (``tokens``: the source's, when the caller lexed it already).

        Raises :class:`CelError` for a syntax or type error, an unknown variable or function,
        nesting deeper than 32 levels, or a source longer than ``max_expression_length`` or
        ``max_expression_tokens`` (what bounds the time one compile holds its thread).
        """
        key = (source, scope)
        cache = self._expressions
        expression = cache.get(key)
        if expression is not None:
            cache.move_to_end(key)
            return expression
        expression = self._compile(source, scope, tokens)
        cache[key] = expression
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return expression

    def template(self, value: Any, scope: Scope, *, path: str = "") -> Template:
        """Compile every placeholder in the JSON-like ``value`` (e.g. ``MessageToDict`` output).

        ``path`` names ``value`` itself in error messages (e.g. ``"inputs"``). Raises
        :class:`TemplateError` whose ``path`` locates the bad string.
        """
        plan, refs = self._build(value, scope, path)
        return Template(value, scope, refs, self._envs[scope], plan, path)

    def template_string(self, text: str, scope: Scope, *, path: str = "") -> Template:
        """:meth:`template` for a single string."""
        if type(text) is not str:
            raise TemplateError(f"{path or 'template'}: expected a string", path=path)
        plan, refs = self._string_plan(text, scope, path)
        return Template(text, scope, refs, self._envs[scope], plan, path)

    def _compile(self, source: str, scope: Scope, tokens: Sequence[_Tok] | None) -> Expression:
        if type(source) is not str:
            raise CelError(f"expression must be a string, not {type(source).__name__}")
        length = len(source)
        if length > self.max_expression_length:
            raise CelError(
                f"expression is {length} characters; the limit is {self.max_expression_length}",
                source=source,
            )
        if not source.strip():
            raise CelError("expression is empty", source=source)
        limit = self.max_expression_tokens
        if tokens is None:
            tokens = list(itertools.islice(_lex(source), limit + 1))
        if len(tokens) > limit:
            raise CelError(
                f"expression has more than {limit} tokens (the limit is "
                "DAGO_MAX_EXPRESSION_TOKENS): pass large literal data as inputs, not as code",
                source=source,
            )
        toks = [t for t in tokens if t.kind != "unterminated"]
        env = self._envs[scope]
        try:
            program = env.compile(source)
        except Exception as exc:
            raise CelError(_compile_message(str(exc), source, scope), source=source) from None
        refs, loops = _scan_refs(toks), _has_loops(toks)
        return Expression(source, scope, refs, env, program, loops, self.max_value_bytes)

    def _build(self, value: Any, scope: Scope, path: str) -> tuple[_Plan | None, Refs]:
        """The render plan for ``value`` (None when static) and what it reads."""
        if type(value) is str:
            return self._string_plan(value, scope, path)
        if value is None or isinstance(value, (bool, int, float)):
            return None, Refs.EMPTY
        if isinstance(value, Mapping):
            refs = Refs.EMPTY
            items: list[tuple[Any, str, _Plan]] = []
            dynamic = False
            for key, item in value.items():
                segment = _key_segment(key)
                plan, item_refs = self._build(item, scope, _join_path(path, [segment]))
                refs = refs.union(item_refs)
                dynamic = dynamic or plan is not None
                items.append((key, segment, _Const(item) if plan is None else plan))
            return (_Dict(tuple(items)) if dynamic else None), refs
        if isinstance(value, (list, tuple)):
            refs = Refs.EMPTY
            elements: list[_Plan] = []
            dynamic = False
            for index, item in enumerate(value):
                plan, item_refs = self._build(item, scope, _join_path(path, [f"[{index}]"]))
                refs = refs.union(item_refs)
                dynamic = dynamic or plan is not None
                elements.append(_Const(item) if plan is None else plan)
            return (_List(tuple(elements)) if dynamic else None), refs
        where = f"{path}: " if path else ""
        raise TemplateError(
            f"{where}a {type(value).__name__} is not a JSON-like template value", path=path
        )

    def _string_plan(self, text: str, scope: Scope, path: str) -> tuple[_Plan | None, Refs]:
        if "{{" not in text:
            return None, Refs.EMPTY
        key = (text, scope)
        cache = self._strings
        cached = cache.get(key)
        if cached is not None:
            cache.move_to_end(key)
            return cached
        built = self._parse_string(text, scope, path)
        cache[key] = built
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return built

    def _parse_string(self, text: str, scope: Scope, path: str) -> tuple[_Plan, Refs]:
        where = f"{path}: " if path else ""
        parts: list[str | Expression] = []
        refs = Refs.EMPTY
        pos = 0
        while True:
            start = text.find("{{", pos)
            if start < 0:
                if pos < len(text):
                    parts.append(text[pos:])
                break
            if start > pos:
                parts.append(text[pos:start])
            end, tokens = _placeholder_end(text, start + 2, self.max_expression_tokens)
            if len(tokens) > self.max_expression_tokens:
                raise TemplateError(
                    f"{where}placeholder at character {start} has more than "
                    f"{self.max_expression_tokens} tokens (the limit is "
                    "DAGO_MAX_EXPRESSION_TOKENS): pass large literal data as inputs, not as code",
                    path=path,
                    source=text[start : start + 200],
                )
            if end < 0:
                raise TemplateError(
                    f"{where}unterminated placeholder: '{{{{' at character {start} has no "
                    "closing '}}' (or a string literal inside it is not closed)",
                    path=path,
                    source=text,
                )
            source = text[start + 2 : end].strip()
            if not source:
                raise TemplateError(
                    f"{where}empty placeholder '{{{{ }}}}' at character {start}",
                    path=path,
                    source=text,
                )
            try:
                expression = self.compile(source, scope, tokens)
            except CelError as exc:
                raise TemplateError(
                    f"{where}placeholder {{{{ {_shorten(source)} }}}}: {exc.message}",
                    path=path,
                    source=source,
                ) from None
            parts.append(expression)
            refs = refs.union(expression.refs)
            pos = end + 2
        if len(parts) == 1 and isinstance(parts[0], Expression):
            return _Whole(parts[0]), refs
        return _Interpolated(tuple(parts)), refs
