// The live graph view: draws a run's graph as layered SVG and follows its events over
// gRPC-Web (WatchGraph through Envoy, same origin), resuming after drops. Bundled by esbuild
// (`make web`) with the TypeScript client into web/dist/app.js.
import { fromJson } from "@bufbuild/protobuf";
import { $, dago } from "./client.js";
import { decisionText, decisionWidget, waitOfEvent } from "./decide.js";
import { SubmitGraphRequestSchema } from "../../clients/typescript/gen/dago/v1/orchestrator_pb.js";
import { GraphState } from "../../clients/typescript/gen/dago/v1/execution_pb.js";
import { draw as drawGraph, edgeStates, el, kindOf, layout, setEdgeStates, setNodeState } from "./graph.js";
import agent from "../../examples/agent.json";
import approval from "../../examples/approval.json";
import diamond from "../../examples/diamond.json";
import fanout from "../../examples/fanout.json";
import loop from "../../examples/loop.json";
import map_summaries from "../../examples/map_summaries.json";
import research from "../../examples/research.json";
import router from "../../examples/router.json";
import subgraph from "../../examples/subgraph.json";
import triage from "../../examples/triage.json";

// Every file of examples/ (tests/clients/test_liveview.py checks it), named by its file.
const EXAMPLES = { research, triage, diamond, router, loop, fanout, approval, agent, map_summaries, subgraph };
let current = null; // { id, abort }
let drawn = null; // the layout of the graph drawn

const graphStateName = (s) => (GraphState[s] ?? "UNSPECIFIED").toLowerCase();
const tsMillis = (t) => (t ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) : 0);

function draw(graph) {
  drawn = drawGraph($("svg"), graph);
}

class Run {
  constructor(id, graph) {
    this.id = id;
    this.graph = graph;
    this.state = "submitted";
    this.nodes = new Map(graph.nodes.map((n) => [n.id, { state: "pending", text: "", ms: null, tokens: 0, cost: 0, note: "" }]));
    this.tokensIn = 0;
    this.tokensOut = 0;
    this.cost = 0;
    this.started = Date.now();
    this.ended = null;
    this.error = "";
    this.decisions = new Map(); // router id -> targets
    this.loops = new Set(); // "from->to" edges a loop iteration came over
    this.marksDirty = false;
    $("nodes").replaceChildren();
    $("log").replaceChildren();
    for (const n of graph.nodes) {
      const box = el("div", { class: "nodeinfo", "data-info": n.id }, $("nodes"), null);
      el("h3", {}, box, null).textContent = `${n.id} · ${kindOf(n)}`;
      el("div", { class: "note", "data-note": n.id }, box, null);
      el("div", { class: "wait-slot", "data-wait": n.id }, box, null);
      el("div", { class: "extra", "data-extra": n.id }, box, null);
      el("pre", { "data-text": n.id }, box, null);
    }
    this.widgets = new Map(); // wait node id -> its decision widget
    this.render();
  }

  setNode(id, state, meta) {
    const info = this.nodes.get(id);
    if (!info) return;
    info.state = state;
    setNodeState($("svg"), id, state, meta);
    this.marksDirty = true;
    const box = document.querySelector(`[data-info="${CSS.escape(id)}"]`);
    if (box) box.className = `nodeinfo state-${state}`;
  }

  /** The node's box's slot for a map's bar or a child run's link. */
  extra(id) {
    return document.querySelector(`[data-extra="${CSS.escape(id)}"]`);
  }

  log(line) {
    const log = $("log");
    log.appendChild(document.createTextNode(`${line}\n`));
    log.scrollTop = log.scrollHeight;
  }

  apply(ev) {
    const p = ev.payload;
    const id = ev.nodeId;
    const info = this.nodes.get(id);
    switch (p.case) {
      case "graphStarted":
        this.state = "running";
        break;
      case "nodeStarted":
        this.setNode(
          id,
          "running",
          `running · attempt ${ev.attempt}${ev.iteration > 1 ? ` · iteration ${ev.iteration}` : ""}`,
        );
        break;
      case "nodeCompleted":
        if (info) info.ms = Number(p.value.durationMs);
        this.setNode(
          id,
          "completed",
          `completed · ${p.value.durationMs} ms${ev.iteration > 1 ? ` · iteration ${ev.iteration}` : ""}`,
        );
        break;
      case "nodeFailed":
        if (info) info.note = p.value.error?.message ?? "";
        this.setNode(id, "failed", "failed");
        break;
      case "nodeRetrying":
        this.setNode(id, "retrying", `retrying → attempt ${p.value.nextAttempt}`);
        break;
      case "nodeWaiting": {
        this.setNode(id, "waiting", `waiting for a decision${ev.iteration > 1 ? ` · iteration ${ev.iteration}` : ""}`);
        const slot = document.querySelector(`[data-wait="${CSS.escape(id)}"]`);
        if (slot) {
          slot.replaceChildren();
          this.widgets.set(id, decisionWidget(slot, waitOfEvent(ev), { label: `node ${id}` }));
        }
        if (info) info.note = "";
        break;
      }
      case "signalReceived": {
        const d = { ...p.value };
        this.widgets.get(id)?.decided(d);
        if (info) info.note = decisionText(d);
        break;
      }
      case "mapProgress": {
        // Item events are not sent (WatchGraph's item_events): the counts come a few a second.
        const m = p.value;
        const done = m.completed + m.failed + m.cancelled;
        if (info) info.note = `items ${done}/${m.total} · completed ${m.completed} · failed ${m.failed} · running ${m.running} · queued ${m.queued}`;
        const slot = this.extra(id);
        if (slot) {
          let bar = slot.querySelector("progress");
          if (!bar) bar = el("progress", { "data-map": id, "aria-label": `items of ${id}` }, slot, null);
          bar.max = Math.max(1, m.total);
          bar.value = done;
        }
        break;
      }
      case "childStarted":
      case "childEnded": {
        const child = p.value.childGraphId;
        const ended = p.case === "childEnded";
        const how = ` ${ended ? graphStateName(p.value.state) : "running"}`;
        if (info) info.note = `child run${how}`;
        const slot = this.extra(id);
        if (slot) {
          slot.replaceChildren();
          slot.appendChild(document.createTextNode("child run "));
          el("a", { href: `#${encodeURIComponent(child)}`, "data-child": id }, slot, null).textContent = child;
        }
        if (!ended) this.setNode(id, "waiting", "waiting for its child run");
        break;
      }
      case "nodeThrottled":
        if (info) info.note = `throttled ${(Number(p.value.waitMs) / 1000).toFixed(1)} s by ${p.value.provider}/${p.value.model} (${p.value.reason})`;
        this.setNode(id, "queued", "throttled by a model rate limit");
        break;
      case "budgetExhausted":
        this.state = "paused";
        this.error = `paused: ${p.value.message} (raise ${p.value.limit} with dagoctl limits ${this.id})`;
        break;
      case "graphResumed":
        this.state = "running";
        this.error = "";
        break;
      case "nodeSkipped":
        this.setNode(id, "skipped", "skipped");
        break;
      case "nodeCancelled":
        this.setNode(id, "cancelled", "cancelled");
        break;
      case "loopIteration":
        if (!p.value.exhausted) this.loops.add(`${p.value.fromNodeId}->${id}`);
        this.marksDirty = true;
        break;
      case "routerDecision":
        this.decisions.set(id, p.value.targets);
        this.marksDirty = true;
        if (info) info.note = `route ${p.value.route} → ${p.value.targets.join(", ")} (${p.value.reason})`;
        break;
      case "llmDelta":
        if (info) {
          info.text += p.value.text;
          const pre = document.querySelector(`[data-text="${CSS.escape(id)}"]`);
          if (pre) pre.textContent = info.text;
        }
        break;
      case "toolCall":
        if (info) info.note = `tool ${p.value.tool}(${JSON.stringify(p.value.arguments ?? null)})`;
        break;
      case "usage": {
        const u = p.value.usage;
        this.tokensIn += Number(u.inputTokens);
        this.tokensOut += Number(u.outputTokens);
        this.cost += u.costUsd;
        if (info) {
          info.tokens += Number(u.inputTokens) + Number(u.outputTokens);
          info.cost += u.costUsd;
        }
        break;
      }
      case "graphCompleted":
      case "graphFailed":
      case "graphCancelled":
        this.state = p.case.slice(5).toLowerCase();
        this.ended = tsMillis(ev.time) || Date.now();
        if (p.case === "graphFailed") this.error = p.value.error?.message ?? "";
        if (p.case === "graphCancelled") this.error = p.value.reason;
        for (const w of this.widgets.values()) w.close(`not decided: the run ${this.state}`);
        for (const [nid, n] of this.nodes) {
          if (n.state === "pending" || n.state === "queued" || n.state === "waiting") this.setNode(nid, this.state === "completed" ? "skipped" : "cancelled");
        }
        break;
      default:
        break;
    }
    if (p.case !== "llmDelta") this.log(`${ev.seq} ${p.case}${id ? ` ${id}` : ""}`);
    if (info) {
      const note = document.querySelector(`[data-note="${CSS.escape(id)}"]`);
      const parts = [info.state];
      if (info.ms !== null) parts.push(`${info.ms} ms`);
      if (info.tokens) parts.push(`${info.tokens} tokens`);
      if (info.cost) parts.push(`$${info.cost.toFixed(4)}`);
      if (info.note) parts.push(info.note);
      if (note) note.textContent = parts.join(" · ");
    }
    this.render();
  }

  // The taken and untaken edges, from the node states, router decisions and loops so far.
  markEdges() {
    if (!this.marksDirty || !drawn) return;
    this.marksDirty = false;
    const states = new Map([...this.nodes].map(([nid, n]) => [nid, n.state]));
    setEdgeStates($("svg"), edgeStates(this.graph, drawn, states, this.decisions, this.loops));
  }

  render() {
    this.markEdges();
    const secs = (((this.ended ?? Date.now()) - this.started) / 1000).toFixed(1);
    const s = $("summary");
    s.replaceChildren();
    s.appendChild(document.createTextNode(`run ${this.id}${this.graph.name ? ` (${this.graph.name})` : ""}\n`));
    if (this.forkedFrom) {
      s.appendChild(document.createTextNode("forked from "));
      el("a", { id: "forked-from", href: `#${encodeURIComponent(this.forkedFrom)}`, "data-forked-from": this.forkedFrom }, s, null)
        .textContent = this.forkedFrom;
      s.appendChild(document.createTextNode("\n"));
    }
    if (this.parent) {
      s.appendChild(document.createTextNode("child run of "));
      el("a", { id: "parent", href: `#${encodeURIComponent(this.parent[0])}`, "data-parent": this.parent[0] }, s, null)
        .textContent = this.parent[0];
      s.appendChild(document.createTextNode(` (node ${this.parent[1]})\n`));
    }
    if (this.definition) {
      el("span", { id: "definition", "data-definition": this.definition }, s, null)
        .textContent = `definition ${this.definition}\n`;
    }
    s.appendChild(document.createTextNode("state "));
    const st = el("span", { id: "run-state", "data-state": this.state }, s, null);
    st.textContent = this.state.toUpperCase();
    s.appendChild(document.createTextNode(
      `   elapsed ${secs}s\ntokens ${this.tokensIn} in / ${this.tokensOut} out   cost $${this.cost.toFixed(4)}` +
      (this.error ? `\n${this.error}` : ""),
    ));
  }
}

// Starts following a run (the one before stops): the abort signal of this one.
function follow(id) {
  current?.abort.abort();
  const abort = new AbortController();
  current = { id, abort };
  $("error").textContent = "";
  if (id) show(id);
  return abort;
}

function show(id) {
  current.id = id;
  $("graph-id").value = id;
  if (window.location.hash !== `#${id}`) history.replaceState(null, "", `#${id}`);
}

// Applies a run's events as they come (and redraws it twice a second) until the stream
// ends. With no run yet (a RunGraph), the first event makes it: `runOf(event)`.
async function play(events, run, runOf = null) {
  const ticker = setInterval(() => run?.render(), 500);
  try {
    for await (const ev of events) {
      run ??= runOf(ev);
      $("conn").textContent = "";
      run.apply(ev);
    }
  } finally {
    clearInterval(ticker);
    run?.render();
  }
}

function streamOptions(abort, log) {
  return {
    signal: abort.signal,
    onResume: ({ afterSeq, error }) => {
      $("conn").textContent = `stream dropped (${error.message}); resuming after ${afterSeq}`;
      log(`-- resumed after seq ${afterSeq}`);
    },
  };
}

async function watch(id) {
  const abort = follow(id);
  try {
    const { graph } = await dago().graph(id);
    draw(graph);
    const run = new Run(id, graph);
    const st = await dago().status(id);
    run.started = tsMillis(st.status.createTime) || Date.now();
    run.forkedFrom = st.status.forkedFrom;
    run.parent = st.status.parentGraphId ? [st.status.parentGraphId, st.status.parentNodeId] : null;
    const def = st.status.definition;
    run.definition = def?.name ? `${def.name}@${def.version}` : "";
    await play(dago().watch(id, streamOptions(abort, (line) => run.log(line))), run);
  } catch (err) {
    if (!abort.signal.aborted) $("error").textContent = String(err?.message ?? err);
  }
}

// Submits the chosen example and follows it in one call (RunGraph): the graph is drawn
// from the request, and the run's id comes with its first event.
async function submit() {
  const name = $("example").value;
  const abort = follow("");
  try {
    const req = fromJson(SubmitGraphRequestSchema, EXAMPLES[name]);
    draw(req.graph);
    let run = null;
    const events = dago().run(req, streamOptions(abort, (line) => run?.log(line)));
    await play(events, null, (ev) => {
      show(ev.graphId);
      run = new Run(ev.graphId, req.graph);
      run.started = tsMillis(ev.time) || Date.now();
      return run;
    });
  } catch (err) {
    if (!abort.signal.aborted) $("error").textContent = String(err?.message ?? err);
  }
}

$("api-key").value = sessionStorage.getItem("dago.apiKey") ?? "";
for (const name of Object.keys(EXAMPLES)) {
  el("option", { value: name }, $("example"), null).textContent = name;
}
$("submit").addEventListener("click", submit);
$("watch").addEventListener("click", () => {
  const id = $("graph-id").value.trim();
  if (id) watch(id);
});
window.addEventListener("hashchange", () => {
  const id = window.location.hash.slice(1);
  if (id && id !== current?.id) watch(id);
});
if (window.location.hash.length > 1) watch(window.location.hash.slice(1));
window.dagoView = { watch, submit, layout, graphStateName };
