// The live graph view: draws a run's graph as layered SVG and follows its events over
// gRPC-Web (WatchGraph through Envoy, same origin), resuming after drops. Bundled by esbuild
// (`make web`) with the TypeScript client into web/dist/app.js.
import { fromJson } from "@bufbuild/protobuf";
import { createDagoClient } from "../../clients/typescript/src/dago.js";
import { SubmitGraphRequestSchema } from "../../clients/typescript/gen/dago/v1/orchestrator_pb.js";
import { GraphState, NodeState } from "../../clients/typescript/gen/dago/v1/execution_pb.js";
import { RouterMode } from "../../clients/typescript/gen/dago/v1/graph_pb.js";
import diamond from "../../examples/diamond.json";
import fanout from "../../examples/fanout.json";
import loop from "../../examples/loop.json";
import research from "../../examples/research.json";
import router from "../../examples/router.json";
import triage from "../../examples/triage.json";

const EXAMPLES = { research, triage, diamond, router, loop, fanout };
const SVGNS = "http://www.w3.org/2000/svg";
const NODE_W = 160;
const NODE_H = 50;
const GAP_X = 40;
const GAP_Y = 70;

const $ = (id) => document.getElementById(id);
// A page left open keeps following its run across restarts (each retry waits up to 2 s).
// With authentication on, the key typed in the page is sent as a bearer token; it stays in
// this tab's sessionStorage only.
let clientFor = { key: null, client: null };
function dago() {
  const key = $("api-key").value.trim();
  if (clientFor.key !== key) {
    sessionStorage.setItem("dago.apiKey", key);
    clientFor = {
      key,
      client: createDagoClient(window.location.origin, {
        transport: "grpc-web",
        maxRetries: 100,
        apiKey: key || undefined,
      }),
    };
  }
  return clientFor.client;
}
let current = null; // { id, abort }

function el(name, attrs = {}, parent = null, ns = SVGNS) {
  const e = ns ? document.createElementNS(ns, name) : document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function kindOf(node) {
  const c = node.kind.case ?? "?";
  if (c === "tool") return `tool:${node.kind.value.name}`;
  if (c === "llm" && node.kind.value.model) return `llm:${node.kind.value.model}`;
  if (c === "http") return `http:${node.kind.value.method || "GET"}`;
  if (c === "router" && node.kind.value.mode >= 2) {
    return `router:${RouterMode[node.kind.value.mode].toLowerCase()}`;
  }
  return c;
}

const stateName = (s) => (NodeState[s] ?? "PENDING").toLowerCase();
const graphStateName = (s) => (GraphState[s] ?? "UNSPECIFIED").toLowerCase();
const tsMillis = (t) => (t ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) : 0);

// Layers: longest path from the entry nodes over forward edges (DFS back edges are loops).
export function layout(graph) {
  const ids = graph.nodes.map((n) => n.id);
  const out = new Map(ids.map((id) => [id, []]));
  const indeg = new Map(ids.map((id) => [id, 0]));
  for (const e of graph.edges) out.get(e.from)?.push(e.to);
  const entries = graph.entryNodes.length
    ? graph.entryNodes
    : ids.filter((id) => !graph.edges.some((e) => e.to === id && e.from !== id));
  const back = new Set();
  const seen = new Set();
  const onStack = new Set();
  const dfs = (id) => {
    seen.add(id);
    onStack.add(id);
    for (const to of out.get(id) ?? []) {
      if (onStack.has(to)) back.add(`${id}->${to}`);
      else if (!seen.has(to)) dfs(to);
    }
    onStack.delete(id);
  };
  for (const id of [...entries, ...ids]) if (!seen.has(id)) dfs(id);
  const fwd = graph.edges.filter((e) => !back.has(`${e.from}->${e.to}`));
  for (const e of fwd) indeg.set(e.to, indeg.get(e.to) + 1);
  const layer = new Map(ids.map((id) => [id, 0]));
  const queue = ids.filter((id) => indeg.get(id) === 0);
  while (queue.length) {
    const id = queue.shift();
    for (const e of fwd.filter((f) => f.from === id)) {
      layer.set(e.to, Math.max(layer.get(e.to), layer.get(id) + 1));
      indeg.set(e.to, indeg.get(e.to) - 1);
      if (indeg.get(e.to) === 0) queue.push(e.to);
    }
  }
  const rows = [];
  for (const id of ids) (rows[layer.get(id)] ??= []).push(id);
  const widest = Math.max(...rows.map((r) => r.length), 1);
  // Room on the right for loop arcs and edge labels.
  const width = widest * (NODE_W + GAP_X) + GAP_X + (back.size ? 140 : 60);
  const pos = new Map();
  rows.forEach((row, y) =>
    row.forEach((id, i) => {
      const used = widest * (NODE_W + GAP_X);
      const x = (used - row.length * (NODE_W + GAP_X)) / 2 + GAP_X / 2 + i * (NODE_W + GAP_X);
      pos.set(id, { x, y: 30 + y * (NODE_H + GAP_Y) });
    }),
  );
  return { pos, back, width, height: 60 + rows.length * (NODE_H + GAP_Y) };
}

function draw(graph) {
  const svg = $("svg");
  svg.replaceChildren();
  const { pos, back, width, height } = layout(graph);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const defs = el("defs", {}, svg);
  const marker = el("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  }, defs);
  el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#78909c" }, marker);
  for (const e of graph.edges) {
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    if (!a || !b) continue;
    const g = el("g", { class: "edge", "data-edge": `${e.from}->${e.to}` }, svg);
    let d;
    let lx;
    let ly;
    if (e.from === e.to) {
      // A node looping on itself: an arc on its right side.
      const x = a.x + NODE_W;
      d = `M ${x} ${a.y + 12} C ${x + 70} ${a.y - 14}, ${x + 70} ${a.y + NODE_H + 14}, ${x} ${a.y + NODE_H - 12}`;
      lx = x + 56;
      ly = a.y + NODE_H / 2 + 4;
    } else if (back.has(`${e.from}->${e.to}`)) {
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x + NODE_W;
      const y2 = b.y + NODE_H / 2;
      const bulge = 60 + Math.abs(y1 - y2) / 4;
      d = `M ${x1} ${y1} C ${x1 + bulge} ${y1}, ${x2 + bulge} ${y2}, ${x2} ${y2}`;
      lx = Math.max(x1, x2) + bulge * 0.6;
      ly = (y1 + y2) / 2;
    } else {
      const x1 = a.x + NODE_W / 2;
      const y1 = a.y + NODE_H;
      const x2 = b.x + NODE_W / 2;
      const y2 = b.y;
      d = `M ${x1} ${y1} C ${x1} ${y1 + GAP_Y / 2}, ${x2} ${y2 - GAP_Y / 2}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2 + 4;
      ly = (y1 + y2) / 2;
    }
    el("path", { d, "marker-end": "url(#arrow)" }, g);
    const text = e.label || (e.condition ? `if ${e.condition}` : "");
    if (text) el("text", { x: lx, y: ly }, g).textContent = text.length > 32 ? `${text.slice(0, 31)}…` : text;
  }
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const g = el("g", {
      class: "node state-pending", "data-node": n.id, "data-state": "pending",
      transform: `translate(${p.x},${p.y})`,
    }, svg);
    el("rect", { width: NODE_W, height: NODE_H }, g);
    el("text", { x: 10, y: 18 }, g).textContent = n.id;
    el("text", { x: 10, y: 32, class: "kind" }, g).textContent = kindOf(n);
    el("text", { x: 10, y: 44, class: "meta" }, g).textContent = "pending";
    el("title", {}, g).textContent = n.description || n.id;
  }
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
    $("nodes").replaceChildren();
    $("log").replaceChildren();
    for (const n of graph.nodes) {
      const box = el("div", { class: "nodeinfo", "data-info": n.id }, $("nodes"), null);
      el("h3", {}, box, null).textContent = `${n.id} · ${kindOf(n)}`;
      el("div", { class: "note", "data-note": n.id }, box, null);
      el("pre", { "data-text": n.id }, box, null);
    }
    this.render();
  }

  setNode(id, state, meta) {
    const info = this.nodes.get(id);
    if (!info) return;
    info.state = state;
    const g = document.querySelector(`[data-node="${CSS.escape(id)}"]`);
    if (g) {
      g.setAttribute("class", `node state-${state}`);
      g.setAttribute("data-state", state);
      g.querySelector(".meta").textContent = meta ?? state;
    }
    const box = document.querySelector(`[data-info="${CSS.escape(id)}"]`);
    if (box) box.className = `nodeinfo state-${state}`;
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
      case "nodeSkipped":
        this.setNode(id, "skipped", "skipped");
        break;
      case "nodeCancelled":
        this.setNode(id, "cancelled", "cancelled");
        break;
      case "routerDecision":
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
        for (const [nid, n] of this.nodes) {
          if (n.state === "pending" || n.state === "queued") this.setNode(nid, this.state === "completed" ? "skipped" : "cancelled");
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

  render() {
    const secs = (((this.ended ?? Date.now()) - this.started) / 1000).toFixed(1);
    const s = $("summary");
    s.replaceChildren();
    s.appendChild(document.createTextNode(`run ${this.id}${this.graph.name ? ` (${this.graph.name})` : ""}\nstate `));
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
