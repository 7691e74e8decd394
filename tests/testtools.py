"""Operator tools used by the tests, loaded the way an operator's are: through
DAGO_TOOL_MODULES=testtools and its ``dago_tools()`` function."""

from __future__ import annotations

from typing import Any

from dago.handlers import NodeContext, NodeFailure, Tool
from dago.v1 import graph_pb2


async def _flaky(args: Any, ctx: NodeContext) -> Any:
    """Fails (retryably, with the given class) until attempt > fail_attempts."""
    fail_attempts = int(args.get("fail_attempts", 1))
    if ctx.attempt <= fail_attempts:
        cls = int(args.get("error_class", graph_pb2.ERROR_CLASS_TRANSIENT))
        raise NodeFailure(cls, f"flaky: attempt {ctx.attempt} fails on purpose", True)
    return {"attempt": ctx.attempt, "value": args.get("value")}


async def _fail(args: Any, ctx: NodeContext) -> Any:
    """Always fails, not retryable."""
    raise NodeFailure(graph_pb2.ERROR_CLASS_PERMANENT, str(args.get("message", "failed")), False)


async def _crash(args: Any, ctx: NodeContext) -> Any:
    """Raises an unexpected exception (a bug in a tool)."""
    raise RuntimeError("tool bug")


async def _context(args: Any, ctx: NodeContext) -> Any:
    """Returns what the tool sees of its attempt."""
    return {
        "graph_id": ctx.graph_id,
        "node": ctx.node.id,
        "attempt": ctx.attempt,
        "iteration": ctx.iteration,
        "idempotency_key": ctx.idempotency_key,
        "input": args,
    }


async def _count(args: Any, ctx: NodeContext) -> Any:
    """Adds 1 to the number it is given (a loop counter)."""
    return {"n": int(args.get("n") or 0) + 1}


def dago_tools() -> list[Tool]:
    """The tools this module provides."""
    return [
        Tool("flaky", "Fails until a given attempt.", _flaky),
        Tool("fail", "Always fails.", _fail),
        Tool("crash", "Raises an unexpected exception.", _crash),
        Tool("context", "Returns its attempt context.", _context),
        Tool("count", "Adds one.", _count),
    ]
