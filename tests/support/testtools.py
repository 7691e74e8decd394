"""Operator tools used by the tests, loaded the way an operator's are: through
DAGO_TOOL_MODULES=testtools and its ``dago_tools()`` function."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from dago.nodes.base import NodeContext, NodeFailure, Tool
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


async def _chatter(args: Any, ctx: NodeContext) -> Any:
    """Emits ``count`` llm_delta events of ``size`` characters (in batches of ``batch``,
    default 100, ``interval`` seconds apart, default none): a node that produces many events
    quickly (or steadily, for a while), for watcher back-pressure tests."""
    count, size = int(args.get("count", 100)), int(args.get("size", 100))
    batch, interval = int(args.get("batch", 100)), float(args.get("interval", 0))
    text = json.dumps({"text": "x" * size})
    for start in range(0, count, batch):
        if start and interval:
            await asyncio.sleep(interval)
        await ctx.emit([("llm_delta", text)] * min(batch, count - start))
    return {"events": count}


async def _effect(args: Any, ctx: NodeContext) -> Any:
    """A side effect de-duplicated by the attempt's idempotency key: every call appends to
    ``<dir>/log``; only the first call with a key applies the effect (creates ``<dir>/<key>``
    with O_EXCL), a redelivered attempt finds it applied. Then waits ``seconds``, so tests can
    kill the worker after the effect and before the attempt's result is recorded."""
    where = Path(str(args["dir"]))
    key = ctx.idempotency_key
    with (where / "log").open("a") as log:
        log.write(f"{key} {ctx.worker_id}\n")
    try:
        os.close(os.open(where / key.replace("/", "_"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        applied = True
    except FileExistsError:
        applied = False
    await asyncio.sleep(float(args.get("seconds", 0)))
    return {"key": key, "applied": applied}


HOLD_CANCELLED: list[str] = []
"""Idempotency keys of ``hold`` calls that were cancelled (the tests run workers in-process)."""


async def _hold(args: Any, ctx: NodeContext) -> Any:
    """Waits ``seconds``; a cancelled call records its idempotency key in HOLD_CANCELLED."""
    try:
        await asyncio.sleep(float(args.get("seconds", 60)))
    except asyncio.CancelledError:
        HOLD_CANCELLED.append(ctx.idempotency_key)
        raise
    return {"held": True}


async def _stubborn(args: Any, ctx: NodeContext) -> Any:
    """Runs for ``seconds`` and ignores being cancelled: a hung tool its worker cannot stop
    (the worker's own timeout cannot end it; the Redis-held deadline must)."""
    end = asyncio.get_running_loop().time() + float(args.get("seconds", 5))
    while (left := end - asyncio.get_running_loop().time()) > 0:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(min(left, 0.05))
    return {"finished": True}


async def _pause(args: Any, ctx: NodeContext) -> Any:
    """Waits ``seconds`` (recording a cancellation as ``hold`` does), then fails (not
    retryable) when ``fail`` is true, else returns ``value``: a map body whose items differ."""
    try:
        await asyncio.sleep(float(args.get("seconds", 0)))
    except asyncio.CancelledError:
        HOLD_CANCELLED.append(ctx.idempotency_key)
        raise
    if args.get("fail"):
        raise NodeFailure(graph_pb2.ERROR_CLASS_PERMANENT, f"item {args.get('value')} fails", False)
    return {"value": args.get("value")}


ORDERS = {"A-100": "shipped", "A-200": "delayed"}


async def _order_status(args: Any, ctx: NodeContext) -> Any:
    """The status of an order (an operator tool with a JSON Schema, for agents); the
    idempotency key it was given is part of the answer."""
    order = str(args["order_id"])
    if order not in ORDERS:
        raise NodeFailure(graph_pb2.ERROR_CLASS_PERMANENT, f"no order {order}", False)
    return {"order_id": order, "status": ORDERS[order], "key": ctx.idempotency_key}


def dago_tools() -> list[Tool]:
    """The tools this module provides."""
    return [
        Tool("flaky", "Fails until a given attempt.", _flaky),
        Tool("fail", "Always fails.", _fail),
        Tool("crash", "Raises an unexpected exception.", _crash),
        Tool("context", "Returns its attempt context.", _context),
        Tool("count", "Adds one.", _count),
        Tool("chatter", "Emits many events.", _chatter),
        Tool("effect", "A side effect de-duplicated by the idempotency key.", _effect),
        Tool("hold", "Waits, recording a cancellation.", _hold),
        Tool("stubborn", "Runs on through cancellation.", _stubborn),
        Tool("pause", "Waits, then fails or returns its value.", _pause),
        Tool(
            "order_status",
            "Looks up the shipping status of an order by its id.",
            _order_status,
            {
                "type": "object",
                "properties": {"order_id": {"type": "string", "pattern": "^[A-Z]-[0-9]+$"}},
                "required": ["order_id"],
                "additionalProperties": False,
            },
        ),
    ]
