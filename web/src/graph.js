// A run's graph as layered SVG, shared by the live view (/ui/) and the console (/console/):
// layers by longest path, edges routed orthogonally through the channels between layers
// (and through gaps between boxes, or a lane on the right, when they span several layers),
// so no edge crosses a box. Nodes and edges carry their state as data attributes and
// classes; the styles are injected once (graphStyles).
import { RouterMode } from "../../clients/typescript/gen/dago/v1/graph_pb.js";
import { NodeState } from "../../clients/typescript/gen/dago/v1/execution_pb.js";

export const SVGNS = "http://www.w3.org/2000/svg";
export const NODE_W = 160;
export const NODE_H = 50;
const GAP_X = 40;
const GAP_Y = 70;
const TOP = 40; // room above the first layer (back edges into it)
const LEFT = 30; // room left of the widest layer (a lane)
const LANE = 10; // spacing of parallel lanes
const MANY = 100; // a graph with more nodes than this does not animate its running nodes

export const stateName = (s) => (NodeState[s] ?? "PENDING").toLowerCase();
const FINAL = new Set(["completed", "failed", "skipped", "cancelled", "dead_lettered"]);

/** An element (SVG unless ns is null) with attributes, appended to parent. */
export function el(name, attrs = {}, parent = null, ns = SVGNS) {
  const e = ns ? document.createElementNS(ns, name) : document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

export function kindOf(node) {
  const c = node.kind.case ?? "?";
  if (c === "tool") return `tool:${node.kind.value.name}`;
  if (c === "llm" && node.kind.value.model) return `llm:${node.kind.value.model}`;
  if (c === "http") return `http:${node.kind.value.method || "GET"}`;
  if (c === "router" && node.kind.value.mode >= 2) {
    return `router:${RouterMode[node.kind.value.mode].toLowerCase()}`;
  }
  return c;
}

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
  // Each node's forward edges, indexed once (a scan of every edge per node is quadratic).
  const fwdOut = new Map(ids.map((id) => [id, []]));
  for (const e of fwd) {
    indeg.set(e.to, indeg.get(e.to) + 1);
    fwdOut.get(e.from)?.push(e);
  }
  const layer = new Map(ids.map((id) => [id, 0]));
  const queue = ids.filter((id) => indeg.get(id) === 0);
  for (let q = 0; q < queue.length; q++) {
    const id = queue[q];
    for (const e of fwdOut.get(id) ?? []) {
      layer.set(e.to, Math.max(layer.get(e.to), layer.get(id) + 1));
      indeg.set(e.to, indeg.get(e.to) - 1);
      if (indeg.get(e.to) === 0) queue.push(e.to);
    }
  }
  const rows = [];
  for (const id of ids) (rows[layer.get(id)] ??= []).push(id);
  for (let i = 0; i < rows.length; i++) rows[i] ??= [];
  const widest = Math.max(...rows.map((r) => r.length), 1);
  const used = widest * (NODE_W + GAP_X);
  const pos = new Map();
  rows.forEach((row, y) =>
    row.forEach((id, i) => {
      const x = LEFT + (used - row.length * (NODE_W + GAP_X)) / 2 + GAP_X / 2 + i * (NODE_W + GAP_X);
      pos.set(id, { x, y: TOP + y * (NODE_H + GAP_Y) });
    }),
  );
  const right = LEFT + used;
  return { pos, back, rows, layer, right, height: TOP + rows.length * (NODE_H + GAP_Y) };
}

// A free x for a vertical segment through rows lo..hi (exclusive), nearest to a and b: the
// middle of a gap between boxes (three lanes at most, 10 px apart), the left margin, or else
// a new lane on the right (`right()`).
function laneX(lay, lo, hi, a, b, taken, right) {
  const boxes = [];
  for (let r = lo + 1; r < hi; r++) for (const id of lay.rows[r]) boxes.push(lay.pos.get(id).x);
  const free = (x) => boxes.every((bx) => x < bx - 6 || x > bx + NODE_W + 6);
  const cands = [LEFT];
  for (const bx of boxes) cands.push(bx - GAP_X / 2, bx + NODE_W + GAP_X / 2);
  let best = null;
  for (const c of cands) {
    if (!free(c) || (taken.get(c) ?? 0) >= 3 || c >= lay.right) continue;
    const cost = Math.abs(c - a) + Math.abs(c - b);
    if (best === null || cost < best.cost) best = { x: c, cost };
  }
  if (!best || best.cost > Math.abs(lay.right - a) + Math.abs(lay.right - b)) return right();
  const n = taken.get(best.x) ?? 0;
  taken.set(best.x, n + 1);
  return best.x + [0, -LANE, LANE][n];
}

/** The routes of every edge: { key, edge, points | d, label: {x, y} }, and the width. */
export function route(graph, lay) {
  const { pos, back, layer } = lay;
  const isBack = (e) => back.has(`${e.from}->${e.to}`) || layer.get(e.to) <= layer.get(e.from);
  const edges = graph.edges.filter((e) => pos.has(e.from) && pos.has(e.to));
  // Ports: outgoing edges spread along the bottom, incoming along the top, by the other end's x.
  const far = (id, e) => (isBack(e) ? 1e9 : pos.get(id).x);
  const ports = new Map();
  const outsOf = new Map();
  const insOf = new Map();
  for (const e of edges) {
    if (e.from === e.to) continue;
    (outsOf.get(e.from) ?? outsOf.set(e.from, []).get(e.from)).push(e);
    (insOf.get(e.to) ?? insOf.set(e.to, []).get(e.to)).push(e);
  }
  for (const n of graph.nodes) {
    const outs = outsOf.get(n.id) ?? [];
    const ins = insOf.get(n.id) ?? [];
    outs.sort((a, b) => far(a.to, a) - far(b.to, b));
    ins.sort((a, b) => far(a.from, a) - far(b.from, b));
    const p = pos.get(n.id);
    outs.forEach((e, i) => ports.set(`out:${e.from}->${e.to}`, p.x + (NODE_W * (i + 1)) / (outs.length + 1)));
    ins.forEach((e, i) => ports.set(`in:${e.from}->${e.to}`, p.x + (NODE_W * (i + 1)) / (ins.length + 1)));
  }
  // Horizontal tracks in the channel under each layer (-1: above the first).
  const tracks = new Map();
  const want = (channel, ref) => (tracks.get(channel) ?? tracks.set(channel, []).get(channel)).push(ref);
  const lanes = new Map();
  let rightLanes = 0; // lanes right of every box: loops back up, and long edges with no gap
  const right = () => lay.right + LANE * rightLanes++;
  const routes = [];
  for (const e of edges) {
    const key = `${e.from}->${e.to}`;
    const a = pos.get(e.from);
    const b = pos.get(e.to);
    if (e.from === e.to) {
      const x = a.x + NODE_W;
      const d = `M ${x} ${a.y + 14} H ${x + 18} V ${a.y + NODE_H - 14} H ${x}`;
      routes.push({ key, edge: e, d, label: { x: x + 4, y: a.y + 10 } });
      continue;
    }
    const px = ports.get(`out:${key}`);
    const qx = ports.get(`in:${key}`);
    const r = { key, edge: e, px, qx, y1: a.y + NODE_H, y2: b.y, t1: { x: px, to: qx }, t2: null };
    const la = layer.get(e.from);
    const lb = layer.get(e.to);
    want(la, r.t1);
    if (isBack(e)) {
      r.lane = right();
      r.t1.to = r.lane;
      r.t2 = { x: r.lane, to: qx };
      want(lb - 1, r.t2);
    } else if (lb > la + 1) {
      r.lane = laneX(lay, la, lb, px, qx, lanes, right);
      r.t1.to = r.lane;
      r.t2 = { x: r.lane, to: qx };
      want(lb - 1, r.t2);
    }
    routes.push(r);
  }
  // Every horizontal run comes down at x and leaves down at `to`: leftward runs first, the
  // leftmost highest, then rightward ones, the rightmost highest (no crossing unless nested).
  const rank = (r) => (r.to < r.x ? [0, r.x] : [1, -r.x]);
  for (const [channel, refs] of tracks) {
    refs.sort((u, v) => rank(u)[0] - rank(v)[0] || rank(u)[1] - rank(v)[1]);
    const top = channel < 0 ? 0 : TOP + channel * (NODE_H + GAP_Y) + NODE_H;
    const span = channel < 0 ? TOP : GAP_Y;
    refs.forEach((ref, i) => (ref.y = top + (span * (i + 1)) / (refs.length + 1)));
  }
  for (const r of routes) {
    if (r.d) continue;
    const pts = [[r.px, r.y1], [r.px, r.t1.y]];
    if (r.t2) pts.push([r.lane, r.t1.y], [r.lane, r.t2.y], [r.qx, r.t2.y]);
    else pts.push([r.qx, r.t1.y]);
    pts.push([r.qx, r.y2]);
    r.d = `M ${pts.map((p) => p.join(" ")).join(" L ")}`;
    r.label = { x: r.qx + 6, y: r.y2 - 8 };
  }
  // Room on the right for the labels next to the rightmost boxes.
  const labels = edges.some((e) => e.label || e.condition) ? 160 : 20;
  return { routes, width: lay.right + LANE * rightLanes + Math.max(rightLanes ? 30 : 0, labels) };
}

/** Draws `graph` into `svg`; onSelect(nodeId) is called when a node is clicked or keyed. */
export function draw(svg, graph, onSelect = null) {
  graphStyles();
  svg.replaceChildren();
  const index = { nodes: new Map(), edges: new Map() };
  drawn.set(svg, index);
  const lay = layout(graph);
  const { routes, width } = route(graph, lay);
  svg.setAttribute("width", width);
  svg.setAttribute("height", lay.height);
  svg.setAttribute("viewBox", `0 0 ${width} ${lay.height}`);
  svg.classList.toggle("many", graph.nodes.length > MANY);
  const defs = el("defs", {}, svg);
  for (const [id, fill] of [["arrow", "#78909c"], ["arrow-taken", "#2e7d32"], ["arrow-untaken", "#cfd8dc"]]) {
    const m = el("marker", {
      id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 9, markerHeight: 9,
      markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
    }, defs);
    el("path", { d: "M 0 0 L 10 5 L 0 10 z", fill }, m);
  }
  for (const r of routes) {
    const g = el("g", { class: "edge", "data-edge": r.key, "data-taken": "" }, svg);
    index.edges.set(r.key, g);
    el("path", { d: r.d, "marker-end": "url(#arrow)" }, g);
    const e = r.edge;
    const text = e.label || (e.condition ? `if ${e.condition}` : "");
    if (text) {
      el("text", { x: r.label.x, y: r.label.y }, g).textContent = text.length > 28 ? `${text.slice(0, 27)}…` : text;
      el("title", {}, g).textContent = `${r.key}: ${text}`;
    }
  }
  for (const n of graph.nodes) {
    const p = lay.pos.get(n.id);
    const g = el("g", {
      class: "node state-pending", "data-node": n.id, "data-state": "pending",
      transform: `translate(${p.x},${p.y})`,
    }, svg);
    index.nodes.set(n.id, g);
    el("rect", { width: NODE_W, height: NODE_H }, g);
    el("text", { x: 10, y: 18 }, g).textContent = n.id;
    el("text", { x: 10, y: 32, class: "kind" }, g).textContent = kindOf(n);
    el("text", { x: 10, y: 44, class: "meta" }, g).textContent = "pending";
    el("title", {}, g).textContent = n.description || n.id;
    if (onSelect) {
      g.setAttribute("tabindex", "0");
      g.setAttribute("role", "button");
      g.setAttribute("aria-label", `node ${n.id}`);
      g.addEventListener("click", () => onSelect(n.id));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          onSelect(n.id);
        }
      });
    }
  }
  return lay;
}

/** Sets a drawn node's state (a NodeState name in lower case) and its third line. */
// The drawn elements of each svg by node id and edge key ("from->to"): a state update of a
// large graph looks them up instead of querying the DOM once per node and edge.
const drawn = new WeakMap();

/** The drawn <g> of node `id` in svg (undefined if not drawn). */
export function nodeElement(svg, id) {
  return drawn.get(svg)?.nodes.get(id);
}

/**
 * Sets a drawn node's state (a NodeState name in lower case) and its third line. Nothing is
 * written when both are unchanged (a large graph's updates touch only the nodes that moved).
 */
export function setNodeState(svg, id, state, meta) {
  const g = nodeElement(svg, id);
  if (!g) return;
  const text = meta ?? state;
  const line = g.querySelector(".meta");
  if (g.getAttribute("data-state") === state && line.textContent === text) return;
  g.classList.remove(`state-${g.getAttribute("data-state")}`);
  g.classList.add(`state-${state}`);
  g.setAttribute("data-state", state);
  line.textContent = text;
}

/**
 * Which edges were taken ("taken"), are known not to be ("untaken") or are open (""):
 * a router's edge is taken when its decision targets the edge's end; a loop edge when a
 * loop iteration came over it; any other edge when its source completed and its target
 * went on to run (untaken when the target was skipped, or the source never completed).
 * `states`: node id -> state name; `decisions`: router id -> targets; `loops`: "from->to".
 */
export function edgeStates(graph, lay, states, decisions, loops) {
  const out = new Map();
  for (const e of graph.edges) {
    const key = `${e.from}->${e.to}`;
    const from = states.get(e.from) ?? "pending";
    const to = states.get(e.to) ?? "pending";
    let v = "";
    if (decisions.has(e.from)) v = decisions.get(e.from).includes(e.to) ? "taken" : "untaken";
    else if (lay.back.has(key) || e.from === e.to) {
      if (loops.has(key)) v = "taken";
      else if (FINAL.has(from) && from !== "completed") v = "untaken";
    } else if (from === "completed") {
      if (to === "skipped") v = "untaken";
      else if (to !== "pending" && to !== "unspecified") v = "taken";
    } else if (FINAL.has(from)) v = "untaken";
    out.set(key, v);
  }
  return out;
}

/** Marks the drawn edges with edgeStates' result. */
export function setEdgeStates(svg, marks) {
  for (const [key, v] of marks) {
    const g = drawn.get(svg)?.edges.get(key);
    if (!g || g.getAttribute("data-taken") === v) continue;
    g.setAttribute("data-taken", v);
    g.setAttribute("class", v ? `edge ${v}` : "edge");
    g.querySelector("path").setAttribute("marker-end", `url(#arrow${v ? `-${v}` : ""})`);
  }
}

const CSS_TEXT = `
.node rect { stroke-width: 2; rx: 8; }
.node text { font-size: 12px; pointer-events: none; }
.node .kind, .node .meta { font-size: 10px; fill: #555; }
.node[role=button] { cursor: pointer; }
.node:focus { outline: none; }
.node:focus rect, .node.selected rect { stroke-width: 4; stroke: #0d47a1; }
.edge path { fill: none; stroke: #78909c; stroke-width: 1.5; }
.edge text { font-size: 10px; fill: #455a64; }
.edge.taken path { stroke: #2e7d32; stroke-width: 2.5; }
.edge.taken text { fill: #1b5e20; font-weight: bold; }
.edge.untaken path { stroke: #cfd8dc; stroke-dasharray: 5 4; }
.edge.untaken text { fill: #90a4ae; }
.state-pending rect { fill: #eeeeee; stroke: #9e9e9e; }
.state-queued rect { fill: #fff8e1; stroke: #f9a825; }
.state-running rect { fill: #bbdefb; stroke: #1565c0; }
.state-retrying rect { fill: #ffe0b2; stroke: #ef6c00; }
.state-waiting rect { fill: #e1bee7; stroke: #6a1b9a; }
.state-completed rect { fill: #c8e6c9; stroke: #2e7d32; }
.state-failed rect, .state-dead_lettered rect { fill: #ffcdd2; stroke: #c62828; }
.state-skipped rect { fill: #f5f5f5; stroke: #bdbdbd; stroke-dasharray: 4 3; }
.state-cancelled rect { fill: #cfd8dc; stroke: #455a64; }
.state-running rect { animation: pulse 1s ease-in-out infinite alternate; }
svg.many .state-running rect { animation: none; } /* a repaint of the whole graph per frame */
@keyframes pulse { from { stroke-opacity: 1; } to { stroke-opacity: .3; } }
`;

/** Adds the graph's styles to the document once. */
export function graphStyles() {
  if (document.getElementById("dago-graph-css")) return;
  el("style", { id: "dago-graph-css" }, document.head, null).textContent = CSS_TEXT;
}
