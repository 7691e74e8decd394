"""A node's retry policy: what a graph may ask for, and the policy in effect for each node
(the node's own, else the graph's defaults, else dago's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dago.engine.checker import Checker
from dago.v1 import graph_pb2

MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class Retry:
    """A node's effective retry policy, durations in seconds."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    jitter: float
    retry_on: frozenset[int]


def seconds(d: Any) -> float:
    """A google.protobuf.Duration in seconds."""
    return float(d.seconds) + float(d.nanos) / 1e9


def check_retry(r: graph_pb2.RetryPolicy, path: str, chk: Checker) -> None:
    """Record what is wrong with the retry policy at ``path``."""
    if not 0 <= r.max_attempts <= MAX_ATTEMPTS:
        chk.add(f"{path}.max_attempts", f"must be between 0 and {MAX_ATTEMPTS}")
    for name in ("initial_backoff", "max_backoff"):
        if r.HasField(name):
            s = seconds(getattr(r, name))
            if not 0 <= s <= 24 * 3600:
                chk.add(f"{path}.{name}", "must be between 0 and 24 hours")
    both = r.HasField("initial_backoff") and r.HasField("max_backoff")
    if both and seconds(r.max_backoff) < seconds(r.initial_backoff):
        chk.add(f"{path}.max_backoff", "must not be less than initial_backoff")
    if r.backoff_multiplier != 0 and not 1 <= r.backoff_multiplier <= 100:
        chk.add(f"{path}.backoff_multiplier", "must be between 1 and 100 (0 means 2)")
    if not 0 <= r.jitter <= 1:
        chk.add(f"{path}.jitter", "must be between 0 and 1")


def effective_retry(node: graph_pb2.Node, graph: graph_pb2.Graph) -> Retry:
    """The policy in effect for ``node``: its own fields, else the graph's defaults."""
    r = node.retry if node.HasField("retry") else graph.defaults.retry
    d = graph.defaults.retry

    def dur(name: Literal["initial_backoff", "max_backoff"], default: float) -> float:
        if r.HasField(name):
            return seconds(getattr(r, name))
        if d.HasField(name):
            return seconds(getattr(d, name))
        return default

    return Retry(
        max_attempts=r.max_attempts or d.max_attempts or 1,
        initial_backoff=dur("initial_backoff", 1.0),
        max_backoff=dur("max_backoff", 60.0),
        multiplier=r.backoff_multiplier or d.backoff_multiplier or 2.0,
        jitter=r.jitter or d.jitter,
        retry_on=frozenset(r.retry_on or d.retry_on),
    )
