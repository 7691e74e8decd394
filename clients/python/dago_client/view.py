"""The live view of a run for terminals: a table of nodes redrawn in place, streamed LLM text,
tool calls, router decisions, usage and cost; plain lines when the output is not a terminal."""

from __future__ import annotations

import collections
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from google.protobuf import json_format

from dago.v1 import execution_pb2, graph_pb2
from dago_client._common import node_state_name, state_name
from dago_client.render import node_kind

_ANSI = {
    "pending": "2",
    "queued": "33",
    "running": "1;34",
    "retrying": "1;33",
    "waiting": "35",
    "completed": "32",
    "failed": "1;31",
    "skipped": "2",
    "cancelled": "2;37",
    "dead_lettered": "1;35",
    "submitted": "2",
}


@dataclass
class NodeRow:
    """What the view knows of one node."""

    node_id: str
    kind: str
    state: str = "pending"
    attempt: int = 0
    iteration: int = 1
    started: float | None = None
    duration_ms: int | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    note: str = ""
    text: str = ""
    _pending_line: str = field(default="", repr=False)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(msg: Any) -> Any:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _money(cost: float) -> str:
    return f"${cost:.4f}" if cost else "-"


def _ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"


def map_line(m: execution_pb2.MapProgress, width: int = 30) -> str:
    """A map's progress as one line: a bar of the items ended, then the counts by state."""
    ended = m.completed + m.failed + m.cancelled
    filled = round(width * ended / m.total) if m.total else width
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {ended}/{m.total}  "
        f"completed {m.completed}  failed {m.failed}  running {m.running}  "
        f"queued {m.queued}  cancelled {m.cancelled}"
    )


class RunView:
    """The state of one run, built from its events, printable as a frame or as lines."""

    def __init__(self, graph_id: str, graph: graph_pb2.Graph | None = None) -> None:
        self.graph_id = graph_id
        self.name = graph.name if graph is not None else ""
        self.nodes: dict[str, NodeRow] = {}
        if graph is not None:
            for n in graph.nodes:
                self.nodes[n.id] = NodeRow(n.id, node_kind(n))
        self.state = "submitted"
        self.started = time.monotonic()
        self.ended: float | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.error = ""
        self.last_seq = 0
        self.activity: collections.deque[str] = collections.deque(maxlen=8)

    def _node(self, node_id: str) -> NodeRow:
        if node_id not in self.nodes:
            self.nodes[node_id] = NodeRow(node_id, "?")
        return self.nodes[node_id]

    def apply(self, ev: execution_pb2.Event) -> list[str]:
        """Take one event into account; returns the lines the plain output prints for it."""
        kind = ev.WhichOneof("payload") or ""
        if kind == "heartbeat":
            return []
        self.last_seq = max(self.last_seq, ev.seq)
        nid = ev.node_id
        row = self._node(nid) if nid else None
        out: list[str] = []
        if kind == "graph_submitted":
            self.name = self.name or ev.graph_submitted.name
            out.append(f"graph {self.graph_id} submitted")
        elif kind == "graph_started":
            self.state = "running"
            out.append("graph started")
        elif kind == "node_started" and row is not None:
            row.state, row.attempt, row.iteration = "running", ev.attempt, ev.iteration or 1
            row.started, row.duration_ms = time.monotonic(), None
            extra = " (redelivered)" if ev.node_started.redelivered else ""
            out.append(f"{nid}: started, attempt {ev.attempt}{extra}")
        elif kind == "node_completed" and row is not None:
            out.extend(self._flush_text(row))
            nc = ev.node_completed
            row.state, row.duration_ms = "completed", nc.duration_ms
            shown = _short(_plain(nc.output)) if nc.HasField("output") else "-"
            out.append(f"{nid}: completed in {_ms(row.duration_ms)}, output {shown}")
        elif kind == "node_failed" and row is not None:
            out.extend(self._flush_text(row))
            row.state, row.note = "failed", ev.node_failed.error.message
            out.append(f"{nid}: FAILED: {ev.node_failed.error.message}")
        elif kind == "node_retrying" and row is not None:
            out.extend(self._flush_text(row))
            nr = ev.node_retrying
            row.state, row.note = "retrying", nr.error.message
            out.append(
                f"{nid}: retrying (attempt {nr.next_attempt} in {nr.backoff_ms}ms): "
                f"{nr.error.message}"
            )
        elif kind == "node_skipped" and row is not None:
            row.state, row.note = "skipped", ev.node_skipped.reason
            out.append(f"{nid}: skipped ({ev.node_skipped.reason})")
        elif kind == "node_cancelled" and row is not None:
            out.extend(self._flush_text(row))
            row.state, row.note = "cancelled", ev.node_cancelled.reason
            out.append(f"{nid}: cancelled ({ev.node_cancelled.reason})")
        elif kind == "node_dead_lettered" and row is not None:
            out.extend(self._flush_text(row))
            dl = ev.node_dead_lettered
            row.state, row.note = "dead_lettered", f"dead letter {dl.dead_letter_id}"
            out.append(
                f"{nid}: DEAD-LETTERED after {dl.deliveries} deliveries "
                f"(dagoctl dead-letters requeue|drop {dl.dead_letter_id})"
            )
        elif kind == "node_requeued" and row is not None:
            row.state, row.note = "queued", ""
            out.append(f"{nid}: requeued from dead letter {ev.node_requeued.dead_letter_id}")
        elif kind == "node_waiting" and row is not None:
            w = ev.node_waiting
            row.state, row.note = "waiting", "|".join(w.decisions)
            out.append(
                f"{nid}: waiting for a decision ({', '.join(w.decisions)}): {_short(w.prompt)} "
                f"(dagoctl signal {self.graph_id} {nid} <decision>)"
            )
        elif kind == "signal_received" and row is not None:
            sr = ev.signal_received
            row.state, row.note = "queued", f"{sr.decision} by {sr.actor}"
            how = " (timed out)" if sr.timed_out else ""
            said = f": {_short(sr.comment)}" if sr.comment else ""
            out.append(f"{nid}: decision {sr.decision!r} by {sr.actor}{how}{said}")
        elif kind == "child_started" and row is not None:
            child = ev.child_started.child_graph_id
            row.state, row.note = "waiting", f"child {child}"
            out.append(f"{nid}: started child run {child} (dagoctl watch {child})")
        elif kind == "child_ended" and row is not None:
            ce = ev.child_ended
            row.state = "queued"
            out.append(f"{nid}: child run {ce.child_graph_id} {state_name(ce.state)}")
        elif kind == "map_progress" and row is not None:
            row.note = map_line(ev.map_progress, 10)
            out.append(f"{nid}: items {row.note}")
        elif kind == "router_decision" and row is not None:
            d = ev.router_decision
            conf = f", confidence {d.confidence:.2f}" if d.confidence else ""
            row.note = f"route {d.route}"
            out.append(
                f"{nid}: router chose {d.route!r} -> {', '.join(d.targets) or '-'}"
                f" ({d.reason}{conf})"
            )
        elif kind == "llm_delta" and row is not None:
            row.text += ev.llm_delta.text
            row._pending_line += ev.llm_delta.text
            *done, row._pending_line = row._pending_line.split("\n")
            out.extend(f"{nid} | {line}" for line in done)
            return out  # not activity: the text has its own section
        elif kind == "tool_call" and row is not None:
            c = ev.tool_call
            row.note = f"tool {c.tool}"
            out.append(f"{nid}: tool call {c.tool}({_short(_plain(c.arguments))})")
        elif kind == "tool_result" and row is not None:
            r = ev.tool_result
            shown = f"error {r.error}" if r.error else _short(_plain(r.result))
            out.append(f"{nid}: tool {r.tool} -> {shown}")
        elif kind == "usage":
            u = ev.usage.usage
            self.input_tokens += u.input_tokens
            self.output_tokens += u.output_tokens
            self.cost_usd += u.cost_usd
            if row is not None:
                row.input_tokens += u.input_tokens
                row.output_tokens += u.output_tokens
                row.cost_usd += u.cost_usd
            model = "/".join(x for x in (ev.usage.provider, ev.usage.model) if x)
            out.append(
                f"{nid or 'graph'}: usage {u.input_tokens} in / {u.output_tokens} out tokens, "
                f"{_money(u.cost_usd)} ({model or '?'})"
            )
        elif kind == "loop_iteration" and row is not None:
            li = ev.loop_iteration
            what = "bound reached, loop exits" if li.exhausted else f"iteration {li.iteration}"
            out.append(f"{nid}: loop from {li.from_node_id}: {what}")
        elif kind == "budget_warning":
            bw = ev.budget_warning
            out.append(f"budget warning: {bw.limit} at {bw.used:g} of {bw.max:g}")
        elif kind == "budget_exhausted":
            self.state = "paused"
            if row is not None:
                row.state = "queued"
            be = ev.budget_exhausted
            # A descendant run's call (its root's budget): named by run and node.
            who = f"{be.child_graph_id}/{be.child_node_id}" if be.child_graph_id else nid
            flags = {"max_cost_usd": "--max-cost USD", "max_tokens": "--max-tokens N"}
            if be.limit in flags:
                out.append(
                    f"{who}: run paused, {be.message} (raise the limit to resume: "
                    f"dagoctl limits {self.graph_id} {flags[be.limit]})"
                )
            else:
                out.append(f"{who}: run paused, {be.message}")
        elif kind == "graph_resumed":
            self.state = "running"
            gr = ev.graph_resumed
            parked = [*gr.node_ids, *(n.replace("|", "/") for n in gr.child_nodes)]
            out.append(f"run resumed ({', '.join(parked) or 'no node parked'})")
        elif kind == "graph_completed":
            self._end("completed")
            u = ev.graph_completed.usage
            if u.input_tokens or u.output_tokens or u.cost_usd:
                self.input_tokens, self.output_tokens = u.input_tokens, u.output_tokens
                self.cost_usd = u.cost_usd
            out.append("graph completed")
        elif kind == "graph_failed":
            self._end("failed")
            f = ev.graph_failed
            self.error = f.error.message + (
                f" (node {f.failed_node_id})" if f.failed_node_id else ""
            )
            out.append(f"graph FAILED: {self.error}")
        elif kind == "graph_cancelled":
            self._end("cancelled")
            self.error = ev.graph_cancelled.reason
            out.append(f"graph cancelled ({ev.graph_cancelled.reason or 'no reason given'})")
        self.activity.extend(out)
        return out

    def _end(self, state: str) -> None:
        self.state = state
        self.ended = time.monotonic()
        for row in self.nodes.values():
            if row.state in ("pending", "queued"):
                row.state = "skipped" if state == "completed" else "cancelled"

    def _flush_text(self, row: NodeRow) -> list[str]:
        line, row._pending_line = row._pending_line, ""
        return [f"{row.node_id} | {line}"] if line else []

    def elapsed(self) -> float:
        """Seconds since the view started (until the run ended)."""
        return (self.ended or time.monotonic()) - self.started

    def header(self) -> str:
        """One line: id, name, state, elapsed, usage."""
        name = f" ({self.name})" if self.name else ""
        return (
            f"dago run {self.graph_id}{name}  state {self.state.upper()}  "
            f"elapsed {self.elapsed():.1f}s  tokens {self.input_tokens} in / "
            f"{self.output_tokens} out  cost {_money(self.cost_usd)}"
        )

    def table(self, colour: Callable[[str, str], str] = lambda s, t: t) -> list[str]:
        """The node table, one row per node."""
        wid = max([4, *(len(r.node_id) for r in self.nodes.values())])
        wkind = max([4, *(len(r.kind) for r in self.nodes.values())])
        head = (
            f"{'NODE':<{wid}}  {'KIND':<{wkind}}  {'STATE':<9}  ATT  {'DURATION':>8}  "
            f"{'TOKENS':>11}  {'COST':>8}  NOTE"
        )
        rows = [head]
        for r in self.nodes.values():
            if r.duration_ms is not None:
                dur = _ms(r.duration_ms)
            elif r.started is not None and r.state in ("running", "retrying"):
                dur = _ms((time.monotonic() - r.started) * 1000)
            else:
                dur = "-"
            tokens = f"{r.input_tokens}/{r.output_tokens}" if r.input_tokens else "-"
            state = colour(r.state, f"{r.state:<9}")
            rows.append(
                f"{r.node_id:<{wid}}  {r.kind:<{wkind}}  {state}  {r.attempt or '-':>3}  "
                f"{dur:>8}  {tokens:>11}  {_money(r.cost_usd):>8}  {r.note[:40]}"
            )
        return rows

    def frame(self, width: int, height: int, colour: Callable[[str, str], str]) -> list[str]:
        """The whole screen of the live view, cut to ``width`` x ``height``."""
        lines = [colour(self.state, self.header()), "", *self.table(colour)]
        texts = [(r.node_id, r.text) for r in self.nodes.values() if r.text]
        if texts:
            lines += ["", "── model output ──"]
            for nid, text in texts[-4:]:
                tail = " ".join(text.split())[-(width * 2) :]
                lines.append(f"{nid}: {tail}")
        if self.activity:
            lines += ["", "── activity ──", *self.activity]
        lines = lines[: max(height - 1, 5)]
        return [ln if len(ln) <= width + 16 else ln[: width + 16] for ln in lines]

    def summary(self, status: execution_pb2.GraphStatus | None = None) -> list[str]:
        """The final summary: outcome, duration, node counts, usage and cost, error."""
        if status is not None:
            self.state = state_name(status.state)
            for n in status.nodes:
                row = self._node(n.node_id)
                row.state = node_state_name(n.state)
            u = status.usage
            self.input_tokens, self.output_tokens = u.input_tokens, u.output_tokens
            self.cost_usd = u.cost_usd
            if status.HasField("error") and status.error.message:
                self.error = status.error.message
            if status.HasField("start_time") and status.HasField("end_time"):
                span = status.end_time.ToDatetime() - status.start_time.ToDatetime()
                self.ended = self.started + span.total_seconds()
        counts = collections.Counter(r.state for r in self.nodes.values())
        parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        out = [
            f"run {self.graph_id} {self.state.upper()} in {self.elapsed():.2f}s: {parts}",
            f"usage: {self.input_tokens} input + {self.output_tokens} output tokens, "
            f"cost {_money(self.cost_usd)}",
        ]
        if self.error:
            out.append(f"error: {self.error}")
        return out


class Screen:
    """Redraws a frame in place on a terminal (ANSI cursor movement), at most ~12 times/s."""

    def __init__(self, out: TextIO, colour: bool) -> None:
        self.out = out
        self.colour_on = colour
        self._drawn = 0
        self._last = 0.0

    def colour(self, state: str, text: str) -> str:
        """``text`` in the colour of ``state`` (unchanged without colour)."""
        code = _ANSI.get(state)
        if not self.colour_on or code is None:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"

    def draw(self, view: RunView, force: bool = False) -> None:
        """Replace the previous frame by the current one."""
        now = time.monotonic()
        if not force and now - self._last < 0.08:
            return
        self._last = now
        size = shutil.get_terminal_size((100, 40))
        lines = view.frame(size.columns, size.lines, self.colour)
        up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.out.write(up + "\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)
