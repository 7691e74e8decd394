"""Collecting every problem of a request before answering: ``Violation`` names the field
and says what is wrong; ``Checker`` gathers them while a graph compiles, so the client sees
all of them at once (``GraphInvalid``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.duration_pb2 import Duration

from dago.engine.cel import CelCompiler, CelError, Expression, Scope, Template, TemplateError

MAX_DURATION_S = 30 * 24 * 3600
"""Longest duration a graph may ask for (timeouts, deadlines)."""


@dataclass(frozen=True)
class Violation:
    """One problem with a request: the field path and what is wrong."""

    field: str
    description: str


class GraphInvalid(ValueError):
    """A graph that cannot run; carries every violation found."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__(f"{len(violations)} problem(s) in the graph")
        self.violations = violations


class Checker:
    """Collects violations while compiling, so the client sees all at once."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, path: str, message: str) -> None:
        """Record one problem at ``path``."""
        self.violations.append(Violation(path, message))

    def duration(self, d: Duration, path: str) -> None:
        """Record a problem at ``path`` unless ``d`` is positive and at most 30 days."""
        s = d.seconds + d.nanos / 1e9
        if s <= 0:
            self.add(path, "must be positive")
        elif s > MAX_DURATION_S:
            self.add(path, "must be at most 30 days")

    def compile(self, cel: CelCompiler, source: str, scope: Scope, path: str) -> Expression | None:
        """The compiled expression, or None after recording why it does not compile."""
        try:
            return cel.compile(source, scope)
        except CelError as e:
            self.add(path, str(e))
            return None

    def template(self, cel: CelCompiler, value: Any, scope: Scope, path: str) -> Template | None:
        """The compiled template, or None after recording why it does not compile."""
        try:
            return cel.template(value, scope)
        except TemplateError as e:
            self.add(f"{path}.{e.path}" if e.path else path, str(e))
            return None

    def field_templates(
        self, cel: CelCompiler, fields: Mapping[str, str], node_path: str
    ) -> dict[str, Template]:
        """Compile kind fields (key: field path inside the node) as string templates."""
        out: dict[str, Template] = {}
        for key, text in fields.items():
            try:
                t = cel.template_string(text, Scope.ROUTE, path=key)
            except TemplateError as e:
                self.add(f"{node_path}.{key}", str(e))
                continue
            if not t.is_static:
                out[key] = t
        return out
