"""``dagoctl``: dago from the command line (``python -m dago_client`` is the same).

Exit codes (for scripts):

==  =====================================================================
0   success (for submit --watch, watch and result: the run completed)
1   any other error
2   bad command line
3   the run FAILED
4   the run was CANCELLED
5   invalid input: the graph file or the request was rejected (field violations on stderr)
6   not found: no such run (or dead letter)
7   unavailable: the server cannot be reached (or the deadline passed)
8   precondition: not finished yet (result), already finished (cancel), request_id reused,
    the dead letter's run finished or moved on (dead-letters requeue), the node is not
    waiting or another signal decided it first (signal)
9   unauthenticated or permission denied (set DAGO_API_KEY)
==  =====================================================================
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import google.rpc.error_details_pb2 as error_details_pb2
import grpc
import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from dago_client._common import RunFilters, node_state_name, state_name, to_dict
from dago_client.config import ClientConfig
from dago_client.errors import DagoError
from dago_client.graphfile import GraphFileError, load_request, parse_inputs
from dago_client.render import dot, mermaid
from dago_client.sync import DagoClient
from dago_client.view import RunView, Screen, map_line

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_CANCELLED = 4
EXIT_INVALID = 5
EXIT_NOT_FOUND = 6
EXIT_UNAVAILABLE = 7
EXIT_PRECONDITION = 8
EXIT_AUTH = 9

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INVALID,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_PRECONDITION,
    grpc.StatusCode.ABORTED: EXIT_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_AUTH,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_AUTH,
}


def _size(graph: graph_pb2.Graph) -> str:
    """``2 nodes, 1 edge``: a graph's size as a person writes it."""
    n, e = len(graph.nodes), len(graph.edges)
    return f"{n} node{'s' * (n != 1)}, {e} edge{'s' * (e != 1)}"


# Events after which a run waits for someone (submit --wait says so on stderr).
_NEEDS_SOMEONE = frozenset({"node_waiting", "budget_exhausted", "node_dead_lettered"})

_EXIT_BY_STATE = {
    execution_pb2.GRAPH_STATE_COMPLETED: EXIT_OK,
    execution_pb2.GRAPH_STATE_FAILED: EXIT_FAILED,
    execution_pb2.GRAPH_STATE_CANCELLED: EXIT_CANCELLED,
}


def _json(msg: Message) -> str:
    return json_format.MessageToJson(msg, preserving_proto_field_name=True, indent=2)


def _dicts(msgs: Iterable[Message]) -> str:
    """Messages as a JSON list, field names as in the proto (like the REST API)."""
    return json.dumps(
        [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs], indent=2
    )


def _age(msg: Any, name: str, now: float) -> str:
    """How long ago a Timestamp field was: ``0.4s``, ``12s``, ``3m05s``."""
    if not msg.HasField(name):
        return "-"
    secs = max(now - getattr(msg, name).ToMilliseconds() / 1000, 0.0)
    if secs < 10:
        return f"{secs:.1f}s"
    if secs < 60:
        return f"{secs:.0f}s"
    return f"{int(secs // 60)}m{int(secs % 60):02d}s"


def _time(text: str) -> datetime:
    """A command-line time: ISO 8601 (``2026-12-01``, ``2026-12-01T08:00:00Z``)."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--meta {text!r}: use KEY=VALUE")
    return key, value


_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}(@[A-Za-z0-9._-]+)?")


_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def _names_a_file(arg: str) -> bool:
    """Whether an argument that may be a file or a name (a definition, a run id) is a graph
    file: it exists, or it is named like one (``graph.yaml`` mistyped or in another folder
    is "no such file", not "no such definition" or "no such run")."""
    return arg == "-" or Path(arg).exists() or arg.endswith(_FILE_SUFFIXES) or os.sep in arg


def _is_reference(arg: str) -> bool:
    """Whether ``submit``'s argument names a stored definition: no graph file, and the
    shape of ``NAME[@VERSION|@LABEL]``."""
    return not _names_a_file(arg) and bool(_REFERENCE.fullmatch(arg))


def _when(msg: Any, name: str) -> str:
    if not msg.HasField(name):
        return "-"
    return str(getattr(msg, name).ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


class Cli:
    """The commands, writing to ``out`` (results) and ``err`` (progress and errors)."""

    def __init__(self, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.config = ClientConfig.from_env(
            target=args.target,
            api_key=args.api_key,
            tls=True if args.tls else None,
            tls_ca=args.tls_ca,
            timeout_s=args.timeout,
        )
        self._client: DagoClient | None = None

    @property
    def client(self) -> DagoClient:
        """The client, connected on first use."""
        if self._client is None:
            self._client = DagoClient(config=self.config)
        return self._client

    def close(self) -> None:
        """Close the client if one was made."""
        if self._client is not None:
            self._client.close()

    def print(self, *lines: str) -> None:
        """Lines to stdout."""
        for line in lines:
            print(line, file=self.out)
        self.out.flush()

    @property
    def as_json(self) -> bool:
        """Whether -o json was asked."""
        return bool(self.args.output == "json")

    # --- commands -------------------------------------------------------------------------

    def submit(self) -> int:
        """``submit FILE`` or ``submit NAME[@VERSION|@LABEL]`` (a stored definition, when
        no such file exists): prints the run's id (then watches it with --watch)."""
        inputs = parse_inputs(self.args.input or [])
        if _is_reference(self.args.file):
            req = orchestrator_pb2.SubmitGraphRequest(
                definition=self.args.file, allow_deprecated=self.args.allow_deprecated
            )
            if inputs:
                req.inputs.update(inputs)
        else:
            req = load_request(self.args.file, inputs)
        if self.args.priority:
            req.priority = self.args.priority
        if self.args.watch and req.definition:
            resp = self.client.submit(req, request_id=self.args.request_id)
            print(resp.graph_id, file=self.err)
            return self._watch(resp.graph_id, 0, self.client.get_graph(resp.graph_id).graph)
        if self.args.watch:
            # One call (RunGraph): the run's id comes with its first event.
            return self._watch("", 0, req.graph, run=req)
        resp = self.client.submit(req, request_id=self.args.request_id)
        if self.as_json:
            self.print(_json(resp))
        else:
            self.print(resp.graph_id)
        if not resp.created:
            print(f"(request_id matched an earlier run: {resp.graph_id})", file=self.err)
        if self.args.wait:
            return self._wait(resp.graph_id)
        return EXIT_OK

    def _wait(self, graph_id: str) -> int:
        """Wait for a run's end, silently but for what needs someone: a wait node's decision,
        a budget pause, a dead letter (on stderr, with the command that moves it on), so a
        run that waits for a person is not taken for a hung command."""
        view = RunView(graph_id)
        for ev in self.client.watch(graph_id):
            lines = view.apply(ev)
            if ev.WhichOneof("payload") in _NEEDS_SOMEONE:
                print(*lines, sep="\n", file=self.err, flush=True)
        return _EXIT_BY_STATE.get(self.client.status(graph_id).state, EXIT_ERROR)

    def def_(self) -> int:
        """``def publish|list|show|versions|label|unlabel|deprecate``: stored definitions."""
        action = self.args.def_action
        c = self.client
        if action == "publish":
            req = load_request(self.args.file)
            resp = c.publish_definition(self.args.name, req.graph, self.args.description or "")
            d = resp.definition
            if self.as_json:
                self.print(_json(resp))
            else:
                what = "published" if resp.created else "unchanged (same as the latest):"
                self.print(f"{what} {d.name}@{d.version} {d.digest[:12]}")
            return EXIT_OK
        if action == "list":
            defs = c.definitions()
            if self.as_json:
                self.print(_dicts(defs))
                return EXIT_OK
            wid = max([4, *(len(x.name) for x in defs)])
            self.print(f"{'NAME':<{wid}}  LATEST  {'UPDATED':<19}  LABELS")
            for x in defs:
                labels = " ".join(f"{k}={v}" for k, v in sorted(x.labels.items()))
                self.print(
                    f"{x.name:<{wid}}  {x.latest_version:>6}  "
                    f"{_when(x, 'update_time'):<19}  {labels}"
                )
            return EXIT_OK
        if action == "versions":
            versions = c.definition_versions(self.args.name)
            if self.as_json:
                self.print(_dicts(versions))
                return EXIT_OK
            self.print(f"VERSION  {'PUBLISHED':<19}  {'DIGEST':<12}  FLAGS")
            for v in versions:
                flags = " ".join([*v.labels, *(["deprecated"] if v.deprecated else [])])
                self.print(
                    f"{v.version:>7}  {_when(v, 'create_time'):<19}  {v.digest[:12]}  {flags}"
                )
            return EXIT_OK
        if action == "show":
            d = c.definition(self.args.ref)
            if self.as_json:
                self.print(_json(d))
                return EXIT_OK
            self.print(
                f"definition  {d.name}@{d.version}" + (" (deprecated)" if d.deprecated else ""),
                f"published   {_when(d, 'create_time')}",
                f"digest      {d.digest}",
                f"labels      {' '.join(d.labels) or '-'}",
                f"description {d.description or '-'}",
                f"graph       {d.graph.name or '-'} ({_size(d.graph)})",
            )
            return EXIT_OK
        if action == "label":
            d = c.label_definition(self.args.name, self.args.label, self.args.version)
            self.print(_json(d) if self.as_json else f"{self.args.label} -> {d.name}@{d.version}")
            return EXIT_OK
        if action == "unlabel":
            was = c.unlabel_definition(self.args.name, self.args.label)
            self.print(
                json.dumps({"version": was})
                if self.as_json
                else f"removed {self.args.label} (was {self.args.name}@{was})"
            )
            return EXIT_OK
        d = c.deprecate_definition(self.args.name, self.args.version)
        self.print(_json(d) if self.as_json else f"deprecated {d.name}@{d.version}")
        return EXIT_OK

    def validate(self) -> int:
        """``validate FILE``: checks the graph on the server without running it."""
        req = load_request(self.args.file, parse_inputs(self.args.input or []))
        self.client.validate(req)
        g = req.graph
        self.print(f"valid: {g.name or self.args.file} ({_size(g)})")
        return EXIT_OK

    def status(self) -> int:
        """``status ID``: the run's state and a table of its nodes."""
        st = self.client.status(self.args.graph_id)
        if self.as_json:
            self.print(_json(st))
            return EXIT_OK
        u = st.usage
        self.print(
            f"run      {st.graph_id}" + (f" ({st.name})" if st.name else ""),
            f"state    {state_name(st.state).upper()}",
            f"created  {_when(st, 'create_time')}   ended {_when(st, 'end_time')}",
            f"steps    {st.steps}   tokens {u.input_tokens} in / {u.output_tokens} out   "
            f"cost ${u.cost_usd:.4f}",
        )
        if st.HasField("definition"):
            d = st.definition
            self.print(f"from     {d.name}@{d.version} (digest {d.digest[:12]})")
        if st.parent_graph_id:
            self.print(
                f"parent   {st.parent_graph_id} (node {st.parent_node_id}, depth {st.depth})"
            )
        if st.forked_from:
            self.print(f"forked   from {st.forked_from} ({st.reused_nodes} node(s) reused)")
        children = [f"{n.node_id} -> {n.child_graph_id}" for n in st.nodes if n.child_graph_id]
        if children:
            self.print(f"children {', '.join(children)}")
        if st.HasField("error") and st.error.message:
            self.print(f"error    {st.error.message}")
        if st.state == execution_pb2.GRAPH_STATE_PAUSED:
            # Else a paused run is a queued node and no reason: say which budget and the way on.
            lim = st.limits
            budget = [f"max_tokens {lim.max_tokens}"] if lim.max_tokens else []
            budget += [f"max_cost_usd {lim.max_cost_usd:g}"] if lim.max_cost_usd else []
            self.print(
                f"paused   a model call did not fit in the run's limits "
                f"({', '.join(budget) or 'none left'}); resume: dagoctl limits "
                f"{st.graph_id} --max-tokens N --max-cost USD"
            )
        self.print("")
        wid = max([4, *(len(n.node_id) for n in st.nodes)])
        self.print(f"{'NODE':<{wid}}  {'STATE':<9}  ATT  {'DURATION':>8}  ROUTE/ERROR")
        for n in st.nodes:
            dur = "-"
            if n.HasField("start_time") and n.HasField("end_time"):
                ms = (n.end_time.ToDatetime() - n.start_time.ToDatetime()).total_seconds() * 1000
                dur = f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.1f}s"
            note = n.route or (n.error.message if n.HasField("error") else "")
            if n.reused:  # else a reused node reads as one that ran, with no attempt or time
                note = f"reused from {st.forked_from}" + (f", {note}" if note else "")
            self.print(
                f"{n.node_id:<{wid}}  {node_state_name(n.state):<9}  {n.attempt or '-':>3}  "
                f"{dur:>8}  {note}"
            )
            if n.HasField("map"):
                self.print(f"{'':<{wid}}  {map_line(n.map)}")
        return EXIT_OK

    def items(self) -> int:
        """``items ID NODE``: a map node's items by index (``--state`` to filter)."""
        state = 0
        if self.args.state:
            name = f"NODE_STATE_{self.args.state.upper()}"
            state = execution_pb2.NodeState.Value(name)
        items = list(
            self.client.items(
                self.args.graph_id, self.args.node_id, state, limit=self.args.limit or None
            )
        )
        if self.as_json:
            self.print(_dicts(items))
            return EXIT_OK
        self.print(f"{'INDEX':>5}  {'STATE':<9}  ATT  OUTPUT/ERROR")
        for i in items:
            if i.HasField("error") and i.error.message:
                note = i.error.message
            else:
                note = json.dumps(to_dict(i.output)) if i.HasField("output") else ""
            note = note.replace("\n", " ")
            self.print(
                f"{i.index:>5}  {node_state_name(i.state):<9}  {i.attempt or '-':>3}  "
                f"{note[:80] + ('…' if len(note) > 80 else '')}"
            )
        if not items:
            print("(no items)", file=self.err)
        return EXIT_OK

    def result(self) -> int:
        """``result ID``: the output of a finished run (exit code by its state)."""
        res = self.client.result(self.args.graph_id)
        if self.as_json:
            self.print(_json(res))
        else:
            self.print(json.dumps(to_dict(res.output), indent=2))
            if res.HasField("error") and res.error.message:
                print(f"{state_name(res.state)}: {res.error.message}", file=self.err)
        return _EXIT_BY_STATE.get(res.state, EXIT_ERROR)

    def cancel(self) -> int:
        """``cancel ID``."""
        resp = self.client.cancel(self.args.graph_id, self.args.reason)
        self.print(f"{self.args.graph_id} {state_name(resp.state)}")
        return EXIT_OK

    def limits(self) -> int:
        """``limits``: the model rate limits and their buckets' levels; ``limits ID
        [--max-tokens N] [--max-cost USD]``: raise a run's budget (a run its budget paused
        resumes)."""
        if not self.args.graph_id:
            if self.args.max_tokens or self.args.max_cost:
                raise GraphFileError("--max-tokens and --max-cost need the run's id: limits ID")
            return self._rate_limits()
        resp = self.client.update_limits(
            self.args.graph_id, max_tokens=self.args.max_tokens, max_cost_usd=self.args.max_cost
        )
        if self.as_json:
            self.print(json.dumps(to_dict(resp)))
            return EXIT_OK
        lim = resp.status.limits
        resumed = " (resumed)" if resp.resumed else ""
        self.print(
            f"{self.args.graph_id} {state_name(resp.status.state)}{resumed}: "
            f"max_tokens {lim.max_tokens or '-'}, max_cost_usd {lim.max_cost_usd or '-'}"
        )
        return EXIT_OK

    def fork(self) -> int:
        """``fork ID --from NODE | --failed-only [--patch FILE] [--inputs-patch JSON]
        [--dry-run]``: prints the new run's id, or the plan with --dry-run."""
        patches = None
        if self.args.patch:
            text = Path(self.args.patch).read_text()
            patches = yaml.safe_load(text) or {}
            if not isinstance(patches, dict):
                raise GraphFileError(f"{self.args.patch}: a mapping of node id -> partial node")
        inputs_patch = json.loads(self.args.inputs_patch) if self.args.inputs_patch else None
        resp = self.client.fork(
            self.args.graph_id,
            from_nodes=self.args.from_nodes or (),
            failed_only=self.args.failed_only,
            node_patches=patches,
            inputs_patch=inputs_patch,
            dry_run=self.args.dry_run,
            request_id=self.args.request_id,
        )
        if self.as_json:
            self.print(_json(resp))
        elif self.args.dry_run:
            self.print(
                f"reuse    {', '.join(resp.reused_nodes) or '-'}",
                f"run      {', '.join(resp.run_nodes) or '-'}",
                f"saved    ${resp.cost_saved_usd:.4f}   estimate ${resp.cost_estimate_usd:.4f}",
            )
        else:
            self.print(resp.graph_id)
        return EXIT_OK

    def list(self) -> int:
        """``list``: runs, newest first, every page fetched up to --limit (filters: --state,
        --since, --until, --name, --meta K=V, --min-cost, --definition, --parent, --forked-from,
        and for an operator --namespace); a NAMESPACE column when the runs are of several
        namespaces."""
        limit = self.args.limit or None
        def_name, _, def_version = (self.args.definition or "").partition("@")
        if def_version and not def_version.isdigit():
            raise ValueError(f"--definition {self.args.definition!r}: use NAME or NAME@VERSION")
        filters = RunFilters(
            created_after=self.args.since,
            created_before=self.args.until,
            name=self.args.name or "",
            metadata=dict(_pair(kv) for kv in self.args.meta or ()),
            min_cost_usd=self.args.min_cost,
            definition=def_name,
            definition_version=int(def_version) if def_version else 0,
            parent_graph_id=self.args.parent or "",
            forked_from=self.args.forked_from or "",
            namespace=self.args.namespace or "",
        )
        runs = list(
            self.client.list_graphs(
                self.args.status, page_size=self.args.page_size, limit=limit, filters=filters
            )
        )
        if self.as_json:
            self.print(_dicts(runs))
            return EXIT_OK
        wid = max([8, *(len(g.graph_id) for g in runs)])
        # An operator's listing of every namespace says whose each run is.
        nsw = max(len(g.namespace) for g in runs) if len({g.namespace for g in runs}) > 1 else 0
        self.print(
            f"{'GRAPH ID':<{wid}}  {'STATE':<9}  {'CREATED':<19}  {'ENDED':<19}  "
            f"{'COST USD':>10}  " + (f"{'NAMESPACE':<{nsw}}  " if nsw else "") + "NAME"
        )
        for g in runs:
            self.print(
                f"{g.graph_id:<{wid}}  {state_name(g.state):<9}  {_when(g, 'create_time'):<19}  "
                f"{_when(g, 'end_time'):<19}  {g.usage.cost_usd:>10.4f}  "
                + (f"{g.namespace:<{nsw}}  " if nsw else "")
                + g.name
            )
        return EXIT_OK

    def usage(self) -> int:
        """``usage``: tokens, cost, runs and failures of the archived runs created in
        [--from, --to), grouped by --group-by (day, model, namespace, graph_name)."""
        resp = self.client.usage_summary(self.args.start, self.args.end, self.args.group_by or None)
        if self.as_json:
            self.print(_json(resp))
            return EXIT_OK
        rows = [*resp.rows, resp.total]
        wid = max([5, *(len(r.key) for r in resp.rows)])
        self.print(
            f"{'KEY':<{wid}}  {'RUNS':>7}  {'FAILED':>7}  {'INPUT':>12}  {'OUTPUT':>12}  "
            f"{'CACHE W':>12}  {'CACHE R':>12}  {'COST USD':>12}"
        )
        for r in rows:
            u = r.usage
            key = r.key if r is not resp.total else "TOTAL"
            self.print(
                f"{key or '-':<{wid}}  {r.runs:>7}  {r.failed_runs:>7}  {u.input_tokens:>12}  "
                f"{u.output_tokens:>12}  {u.cache_creation_input_tokens:>12}  "
                f"{u.cache_read_input_tokens:>12}  {u.cost_usd:>12.4f}"
            )
        return EXIT_OK

    def watch(self) -> int:
        """``watch ID``: the live view until the run ends (exit code by its state)."""
        graph = self.client.get_graph(self.args.graph_id).graph
        return self._watch(self.args.graph_id, self.args.after_seq, graph)

    def _watch(
        self,
        graph_id: str,
        after_seq: int,
        graph: graph_pb2.Graph,
        run: orchestrator_pb2.SubmitGraphRequest | None = None,
    ) -> int:
        """Follow a run (or, with ``run``, start it with RunGraph and follow it: its id is
        printed when its first event brings it) until it ends; the exit code by its state."""
        view = RunView(graph_id, graph)
        live = self.out.isatty() and not self.args.plain and not self.as_json
        screen = Screen(self.out, colour=live and not os.environ.get("NO_COLOR"))

        def resumed(seq: int, attempt: int, err: DagoError) -> None:
            note = f"stream dropped ({err.code.name}); resuming after event {seq}"
            view.activity.append(note)
            if not live:
                print(note, file=self.err)

        # On a terminal a ticker also redraws twice a second, so running durations move while
        # no event comes; the lock keeps it and the event loop from drawing at the same time.
        lock = threading.Lock()
        done = threading.Event()

        def tick() -> None:
            while not done.wait(0.5):
                with lock:
                    screen.draw(view, force=True)

        ticker = threading.Thread(target=tick, daemon=True) if live else None
        if ticker is not None:
            ticker.start()
        try:
            if run is not None:
                events = self.client.run(
                    run, request_id=self.args.request_id, heartbeats=live, on_resume=resumed
                )
            else:
                events = self.client.watch(graph_id, after_seq, heartbeats=live, on_resume=resumed)
            for ev in events:
                if not graph_id:
                    graph_id = view.graph_id = ev.graph_id
                    with lock:
                        self.print(json.dumps({"graph_id": graph_id}) if self.as_json else graph_id)
                if self.as_json:
                    one_line = json_format.MessageToJson(
                        ev, preserving_proto_field_name=True, indent=None
                    )
                    self.print(one_line)
                    continue
                with lock:
                    lines = view.apply(ev)
                    if live:
                        screen.draw(view)
                    else:
                        self.print(*lines)
        finally:
            done.set()
            if ticker is not None:
                ticker.join()
        status = self.client.status(graph_id)
        if live:
            screen.draw(view, force=True)
        if not self.as_json:
            self.print("", *view.summary(status))
        return _EXIT_BY_STATE.get(status.state, EXIT_ERROR)

    def workers(self) -> int:
        """``workers``: the live worker processes and what they run now."""
        workers = self.client.list_workers()
        if self.as_json:
            self.print(_dicts(workers))
            return EXIT_OK
        now = time.time()
        wid = max([9, *(len(w.worker_id) for w in workers)])
        hwid = max([4, *(len(w.host) for w in workers)])
        self.print(
            f"{'WORKER ID':<{wid}}  {'HOST':<{hwid}}  SLOTS  IN FLIGHT  {'HEARTBEAT':>9}  KINDS"
        )
        for w in workers:
            self.print(
                f"{w.worker_id:<{wid}}  {w.host:<{hwid}}  {w.slots:>5}  {w.in_flight:>9}  "
                f"{_age(w, 'last_heartbeat_time', now) + ' ago':>9}  {','.join(w.node_kinds)}"
            )
        if not workers:
            print("(no live worker: graphs will not run)", file=self.err)
        return EXIT_OK

    def _rate_limits(self) -> int:
        """The model rate limits and what each bucket holds now."""
        models = self.client.limits()
        if self.as_json:
            self.print(_dicts(models))
            return EXIT_OK
        name = max([5, *(len(f"{m.provider}/{m.model}") for m in models)])
        self.print(f"{'MODEL':<{name}}  {'REQUESTS':>15}  {'INPUT TOKENS':>21}  "
                   f"{'OUTPUT TOKENS':>21}  PAUSED")  # fmt: skip
        now = time.time()
        for m in models:
            paused = ""
            if m.HasField("paused_until"):
                paused = f"{max(0.0, m.paused_until.ToMilliseconds() / 1000 - now):.1f}s more"
            self.print(
                f"{m.provider + '/' + m.model:<{name}}  "
                f"{_level(m.requests_available, m.requests_per_minute):>15}  "
                f"{_level(m.input_tokens_available, m.input_tokens_per_minute):>21}  "
                f"{_level(m.output_tokens_available, m.output_tokens_per_minute):>21}  {paused}"
            )
        if not models:
            print("(no model rate limits: DAGO_RATE_LIMITS is not set)", file=self.err)
        return EXIT_OK

    def dead_letters(self) -> int:
        """``dead-letters [list|requeue ID|drop ID]``."""
        action = self.args.dl_action or "list"
        if action == "requeue":
            resp = self.client.requeue_dead_letter(self.args.dead_letter_id)
            if self.as_json:
                self.print(_json(resp))
            else:
                self.print(f"requeued {self.args.dead_letter_id}: run {resp.graph_id} goes on")
            return EXIT_OK
        if action == "drop":
            dropped = self.client.drop_dead_letter(self.args.dead_letter_id)
            if self.as_json:
                self.print(
                    json.dumps({"failed_node": dropped.failed_node}, indent=2)
                )  # an explicit false, which MessageToJson would omit
            elif dropped.failed_node:
                self.print(f"dropped {self.args.dead_letter_id}: its node and its run failed")
            else:
                self.print(f"dropped {self.args.dead_letter_id} (its node no longer waited)")
            return EXIT_OK
        letters = list(self.client.dead_letters(self.args.graph, limit=self.args.limit or None))
        if self.as_json:
            self.print(_dicts(letters))
            return EXIT_OK
        did = max([14, *(len(d.dead_letter_id) for d in letters)])
        gid = max([8, *(len(d.graph_id) for d in letters)])
        nid = max([4, *(len(d.node_id) for d in letters)])
        self.print(
            f"{'DEAD LETTER ID':<{did}}  {'GRAPH ID':<{gid}}  {'NODE':<{nid}}  ATT  DELIV  "
            f"{'CREATED':<19}  WAITING  ERROR"
        )
        for d in letters:
            self.print(
                f"{d.dead_letter_id:<{did}}  {d.graph_id:<{gid}}  {d.node_id:<{nid}}  "
                f"{d.attempt:>3}  {d.deliveries:>5}  {_when(d, 'create_time'):<19}  "
                f"{'yes' if d.current else 'no':<7}  {d.error.message}"
            )
        return EXIT_OK

    def waits(self) -> int:
        """``waits``: the wait nodes waiting for a signal now, oldest first."""
        waits = list(self.client.waits(limit=self.args.limit or None))
        if self.as_json:
            self.print(_dicts(waits))
            return EXIT_OK
        now = time.time()
        gid = max([8, *(len(w.graph_id) for w in waits)])
        nid = max([4, *(len(w.node_id) for w in waits)])
        self.print(
            f"{'GRAPH ID':<{gid}}  {'NODE':<{nid}}  ITER  {'WAITING':>7}  {'DEADLINE':<19}  "
            "DECISIONS  PROMPT"
        )
        for w in waits:
            deadline = _when(w, "deadline") if w.HasField("deadline") else "-"
            prompt = w.prompt.replace("\n", " ")
            self.print(
                f"{w.graph_id:<{gid}}  {w.node_id:<{nid}}  {w.iteration:>4}  "
                f"{_age(w, 'since', now):>7}  {deadline:<19}  {'|'.join(w.decisions)}  "
                f"{prompt[:60] + ('…' if len(prompt) > 60 else '')}"
            )
        if not waits:
            print("(nothing waits for a signal)", file=self.err)
        return EXIT_OK

    def signal(self) -> int:
        """``signal GRAPH NODE DECISION [--payload JSON] [--comment TEXT]``."""
        payload = None
        if self.args.payload is not None:
            try:
                payload = json.loads(self.args.payload)
            except ValueError as e:
                raise ValueError(f"--payload is not JSON: {e}") from None
        try:
            resp = self.client.signal(
                self.args.graph_id,
                self.args.node_id,
                self.args.decision,
                payload,
                comment=self.args.comment or "",
                signal_id=self.args.signal_id,
                iteration=self.args.iteration,
                tool_call_id=self.args.tool_call_id or "",
            )
        except DagoError as e:
            info = e.detail(error_details_pb2.ErrorInfo)
            if info is not None and info.reason == "SIGNAL_CONFLICT":
                m = info.metadata
                print(
                    f"dagoctl: another signal decided first: {m.get('decision', '')!r} by "
                    f"{m.get('actor', '')} (iteration {m.get('iteration', '')})",
                    file=self.err,
                )
            raise
        if self.as_json:
            self.print(_json(resp))
        else:
            self.print(
                f"{resp.decision} recorded for {resp.node_id} (iteration {resp.iteration}) of "
                f"{resp.graph_id} by {resp.actor}"
            )
        return EXIT_OK

    def render(self) -> int:
        """``render FILE|ID``: Mermaid or DOT; a run's node states as colours."""
        target = self.args.source
        states: dict[str, str] | None = None
        if _names_a_file(target):
            graph = load_request(target).graph
        else:
            graph = self.client.get_graph(target).graph
            st = self.client.status(target)
            states = {n.node_id: node_state_name(n.state) for n in st.nodes}
        text = dot(graph, states) if self.args.format == "dot" else mermaid(graph, states)
        self.out.write(text)
        return EXIT_OK


def parser() -> argparse.ArgumentParser:
    """The argument parser of dagoctl."""
    p = argparse.ArgumentParser(
        prog="dagoctl",
        description="Submit, watch and inspect dago runs.",
        epilog=__doc__.split("Exit codes", 1)[1].join(["Exit codes", ""]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", help="host:port of dago (env DAGO_TARGET; localhost:50051)")
    p.add_argument("--api-key", help="API key (env DAGO_API_KEY; prefer the environment)")
    p.add_argument("--tls", action="store_true", help="use TLS (env DAGO_TLS)")
    p.add_argument("--tls-ca", help="PEM roots to trust (env DAGO_TLS_CA)")
    p.add_argument("--timeout", type=float, help="seconds per call, retries included (30)")
    p.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="json: for programs"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def inputs(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-i",
            "--input",
            action="append",
            metavar="K=V",
            help="an input (JSON value or string; K=@file reads a file); repeatable",
        )

    s = sub.add_parser(
        "submit",
        help="submit a graph file (YAML or JSON) or a stored definition; prints the run id",
    )
    s.add_argument(
        "file",
        help="graph file (YAML or JSON; - for stdin), or a stored definition: NAME, NAME@7, "
        "NAME@LABEL, NAME@latest (when no such file exists)",
    )
    s.add_argument(
        "--allow-deprecated", action="store_true", help="run a deprecated definition version"
    )
    inputs(s)
    s.add_argument("--request-id", help="idempotency key (default: a new one)")
    s.add_argument(
        "--priority",
        type=int,
        choices=range(1, 6),
        metavar="1-5",
        help="the run's priority within its namespace, higher first (default: the server's, 3)",
    )
    s.add_argument("-w", "--watch", action="store_true", help="then watch it live")
    s.add_argument("--wait", action="store_true", help="then wait for the end (exit by state)")
    s.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    v = sub.add_parser("validate", help="check a graph file on the server without running it")
    v.add_argument("file")
    inputs(v)
    for name, text in (("status", "a run's state and nodes"), ("result", "a run's output")):
        sub.add_parser(name, help=text).add_argument("graph_id")
    c = sub.add_parser("cancel", help="cancel a run")
    c.add_argument("graph_id")
    c.add_argument("--reason", default="cancelled with dagoctl")
    lm = sub.add_parser(
        "limits",
        help="model rate limits and their levels now; with a run's id, raise its token or cost "
        "budget (resumes a run its budget paused)",
    )
    lm.add_argument("graph_id", nargs="?", default="", help="the run whose budget to raise")
    lm.add_argument("--max-tokens", type=int, default=0, help="the new max_tokens (0: keep)")
    lm.add_argument("--max-cost", type=float, default=0.0, help="the new max_cost_usd (0: keep)")
    fk = sub.add_parser(
        "fork", help="a new run of a finished run, reusing the outputs not downstream of --from"
    )
    fk.add_argument("graph_id")
    fk.add_argument(
        "--from",
        dest="from_nodes",
        action="append",
        metavar="NODE",
        help="a node to run again (with its downstream); repeatable",
    )
    fk.add_argument("--failed-only", action="store_true", help="run again what failed")
    fk.add_argument("--patch", metavar="FILE", help="YAML/JSON: node id -> partial node")
    fk.add_argument("--inputs-patch", metavar="JSON", help="a JSON merge patch of the inputs")
    fk.add_argument("--dry-run", action="store_true", help="print the plan only")
    fk.add_argument("--request-id", help="idempotency key (default: a new one)")
    ls = sub.add_parser("list", help="list runs, newest first")
    ls.add_argument("--status", "--state", dest="status", help="completed, failed, running...")
    ls.add_argument("--limit", type=int, default=20, help="at most this many (0: all)")
    ls.add_argument("--page-size", type=int, default=100, help=argparse.SUPPRESS)
    ls.add_argument("--since", type=_time, help="created at or after (ISO 8601; UTC if no zone)")
    ls.add_argument("--until", type=_time, help="created before (ISO 8601; UTC if no zone)")
    ls.add_argument("--name", help="only runs of graphs with exactly this name")
    ls.add_argument(
        "--meta", action="append", metavar="K=V", help="metadata field K equals V; repeatable"
    )
    ls.add_argument("--min-cost", type=float, default=0.0, help="cost at least this (USD)")
    ls.add_argument("--definition", help="only runs of this stored definition (NAME or NAME@V)")
    ls.add_argument("--parent", metavar="ID", help="only the child runs of run ID")
    ls.add_argument("--forked-from", metavar="ID", help="only the runs forked from run ID")
    ls.add_argument(
        "--namespace",
        metavar="NS",
        help="only runs of namespace NS (an operator's key: any; by default every namespace)",
    )
    df = sub.add_parser("def", help="stored, versioned graph definitions")
    df_sub = df.add_subparsers(dest="def_action", required=True, metavar="ACTION")
    pub = df_sub.add_parser("publish", help="publish a graph file as the next version of NAME")
    pub.add_argument("file", help="graph file (YAML or JSON; - for stdin)")
    pub.add_argument("--name", required=True, help="the definition's name")
    pub.add_argument("--description", help="what this version changes")
    df_sub.add_parser("list", help="the namespace's definitions")
    df_sub.add_parser("versions", help="a definition's versions, newest first").add_argument("name")
    df_sub.add_parser("show", help="one version: NAME, NAME@7, NAME@LABEL").add_argument("ref")
    lb = df_sub.add_parser("label", help="point LABEL at VERSION of NAME")
    lb.add_argument("name")
    lb.add_argument("label")
    lb.add_argument("version", type=int)
    ul = df_sub.add_parser("unlabel", help="remove LABEL of NAME")
    ul.add_argument("name")
    ul.add_argument("label")
    dp = df_sub.add_parser("deprecate", help="refuse new runs of a version unless allowed")
    dp.add_argument("name")
    dp.add_argument("version")
    us = sub.add_parser(
        "usage",
        help="tokens, cost, runs and failures of archived runs (needs DAGO_POSTGRES_URL)",
    )
    us.add_argument("--from", dest="start", type=_time, help="created at or after (ISO 8601)")
    us.add_argument("--to", dest="end", type=_time, help="created before (ISO 8601)")
    us.add_argument(
        "--group-by", help="day, model, namespace or graph_name (default: the totals only)"
    )
    w = sub.add_parser("watch", help="watch a run live until it ends")
    w.add_argument("graph_id")
    w.add_argument("--after-seq", type=int, default=0, help="resume after this event")
    w.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    sub.add_parser("workers", help="list live workers: slots, work in flight, heartbeat age")
    dl = sub.add_parser(
        "dead-letters",
        help="list, requeue or drop dead-lettered work items",
        description="Work items delivered more than DAGO_MAX_DELIVERIES times (their "
        "worker died each time); their nodes wait until requeued or dropped.",
    )

    def dl_filters(sp: argparse.ArgumentParser, suppress: bool) -> None:
        # On `dead-letters` itself and on `dead-letters list`; SUPPRESS on the latter keeps
        # its defaults from overwriting a value given before `list`.
        sp.add_argument(
            "--graph",
            metavar="ID",
            default=argparse.SUPPRESS if suppress else "",
            help="only this run's",
        )
        sp.add_argument(
            "--limit",
            type=int,
            default=argparse.SUPPRESS if suppress else 0,
            help="at most this many (0: all)",
        )

    dl_filters(dl, suppress=False)
    dl_sub = dl.add_subparsers(dest="dl_action", metavar="ACTION")
    dl_filters(dl_sub.add_parser("list", help="newest first (the default)"), suppress=True)
    dl_sub.add_parser("requeue", help="run its node attempt again").add_argument("dead_letter_id")
    dl_sub.add_parser("drop", help="remove it: its node and its run fail").add_argument(
        "dead_letter_id"
    )
    it = sub.add_parser("items", help="a map node's items by index: state, attempt, output")
    it.add_argument("graph_id")
    it.add_argument("node_id")
    it.add_argument("--state", help="only items in this state (completed, failed, running...)")
    it.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    wt = sub.add_parser("waits", help="list the wait nodes waiting for a signal, oldest first")
    wt.add_argument("--limit", type=int, default=0, help="at most this many (0: all)")
    sg = sub.add_parser(
        "signal", help="send a decision to a waiting wait node (or agent tool call approval)"
    )
    sg.add_argument("graph_id")
    sg.add_argument("node_id")
    sg.add_argument("decision")
    sg.add_argument("--payload", help="data sent with the decision (JSON)")
    sg.add_argument("--comment", help="free text recorded with the decision")
    sg.add_argument("--signal-id", help="makes the signal idempotent (default: generated)")
    sg.add_argument(
        "--iteration", type=int, default=0, help="the iteration meant (0: the current one)"
    )
    sg.add_argument(
        "--tool-call-id",
        help="an agent's tool call the decision is for (default: the one it waits on now)",
    )
    r = sub.add_parser("render", help="a graph file or a run as Mermaid or Graphviz DOT")
    r.add_argument("source", help="graph file, or a run id (node states coloured)")
    r.add_argument("-f", "--format", choices=("mermaid", "dot"), default="mermaid")
    # `-o json` after the command too (`dagoctl status ID -o json`): SUPPRESS keeps a command's
    # default from overwriting a value given before the command.
    for command in [*sub.choices.values(), *dl_sub.choices.values(), *df_sub.choices.values()]:
        command.add_argument(
            "-o",
            "--output",
            choices=("text", "json"),
            default=argparse.SUPPRESS,
            help="json: for programs",
        )
    return p


def _level(available: float, per_minute: float) -> str:
    """``12/60 per min``: what a bucket holds now of a per-minute limit (``-``: none)."""
    return f"{available:.0f}/{per_minute:.0f}/min" if per_minute else "-"


def main(
    argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Run dagoctl; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)
    cli = Cli(args, out, err)
    try:
        command = args.command.replace("-", "_")
        code: int = getattr(cli, "def_" if command == "def" else command)()
        return code
    except DagoError as e:
        print(f"dagoctl: {e.code.name}: {e.message}", file=err)
        for fv in e.field_violations:
            print(f"  {fv.field}: {fv.description}", file=err)
        for pv in e.precondition_violations:
            print(f"  {pv.subject}: {pv.description}", file=err)
        if e.code == grpc.StatusCode.UNAVAILABLE:
            print(f"  (is dago running at {cli.config.target}? try `make run`)", file=err)
        return _EXIT_BY_CODE.get(e.code, EXIT_ERROR)
    except GraphFileError as e:
        print(f"dagoctl: invalid input: {e}", file=err)
        return EXIT_INVALID
    except ValueError as e:  # e.g. an unknown --status
        print(f"dagoctl: {e}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `dagoctl -o json watch ID | head`: quiet, like SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 141
    finally:
        cli.close()


if __name__ == "__main__":
    sys.exit(main())
