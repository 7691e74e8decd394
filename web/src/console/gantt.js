// The timeline of a run: one row per node, one bar per attempt (start → end, or now while it
// runs; coloured by state like the graph), a dotted line for the wait between attempts. Each
// bar is a keyboard stop (tabindex, aria-label naming node, attempt, state and duration)
// that opens its node's panel (onSelect) on click, Enter or Space.
import { el, graphStyles, stateName } from "../graph.js";
import { duration, errorClassName, ms } from "./util.js";

const LABEL_W = 150;
const ROW_H = 24;
const AXIS_H = 22;

function tickStep(span) {
  const steps = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 30_000, 60_000, 300_000, 600_000, 3_600_000];
  return steps.find((s) => span / s <= 8) ?? 3_600_000;
}

const fmt = (d) => (d < 1000 ? `${d} ms` : d < 120_000 ? `${(d / 1000).toFixed(d % 1000 ? 1 : 0)} s` : `${Math.round(d / 60_000)} min`);

// The onSelect of each timeline svg: one click and one keydown listener per svg (delegated)
// rather than two per bar, re-added on each redraw of hundreds of bars.
const selects = new WeakMap();

function delegate(svg, onSelect) {
  if (!selects.has(svg)) {
    const barOf = (ev) => ev.target.closest?.(".bar[data-node]");
    svg.addEventListener("click", (ev) => {
      const bar = barOf(ev);
      if (bar) selects.get(svg)?.(bar.dataset.node);
    });
    svg.addEventListener("keydown", (ev) => {
      const bar = barOf(ev);
      if (!bar || (ev.key !== "Enter" && ev.key !== " ")) return;
      ev.preventDefault();
      selects.get(svg)?.(bar.dataset.node);
    });
  }
  selects.set(svg, onSelect);
}

// What is drawn in each timeline svg: its graph, the axis and a row per node with the
// signature of what the row shows and the time span of each of its bars and lines. A redraw
// rebuilds only the rows whose attempts changed (and the rows still running, whose bars end
// now); the other rows only move their bars when the time scale changed. A 500-node run's
// timeline then costs a few rows per update, not 500 rebuilt.
const drawnRows = new WeakMap();

/** Draws one node's row: its label, a bar per attempt, the waits; returns { g, spans }. */
function drawRow(n, y, st, attempts, x, ends, running) {
  const g = el("g", { class: "gantt-row", "data-row": n.id });
  const spans = []; // [element, start, end] of every bar rect and wait line (moved on rescale)
  el("text", { x: 4, y: y + 16, class: "row-label" }, g).textContent = n.id;
  if (!attempts.length) {
    const state = stateName(st?.state ?? 0);
    const note = el("text", { x: LABEL_W + 4, y: y + 16, class: `row-note${st?.reused ? " reused" : ""}` }, g);
    note.textContent = st?.reused ? `${state} · reused (not executed)` : state;
    if (st?.reused) note.setAttribute("data-reused", "");
  }
  const line = (a, b, attrs) => {
    const w = el("line", { x1: x(a), x2: x(b), y1: y + 12, y2: y + 12, ...attrs }, g);
    spans.push([w, a, b]);
    return w;
  };
  let prev = null;
  for (const a of attempts) {
    const s = ms(a.startTime);
    if (!s) continue;
    const e = ms(a.endTime) || ends;
    const prevEnd = prev ? ms(prev.endTime) : 0;
    if (prevEnd && s > prevEnd) {
      const decision = stateName(prev.state) === "waiting";
      const what = a.iteration !== prev.iteration ? `iteration ${a.iteration}` : `attempt ${a.attempt}`;
      const w = line(prevEnd, s, { class: decision ? "wait decision" : "wait" });
      el("title", {}, w).textContent = decision
        ? `waited ${fmt(s - prevEnd)} for a decision`
        : `waited ${fmt(s - prevEnd)} before ${what}`;
    }
    prev = a;
    const state = stateName(a.state);
    const bar = el("g", {
      class: `bar state-${state}`, "data-node": n.id, "data-attempt": String(a.attempt),
      "data-iteration": String(a.iteration), "data-state": state,
    }, g);
    const rect = el("rect", { x: x(s), y: y + 4, width: Math.max(3, x(e) - x(s)), height: ROW_H - 8 }, bar);
    spans.push([rect, s, e]);
    const err = a.error?.message ? ` · ${errorClassName(a.error.errorClass)}: ${a.error.message}` : "";
    const what = `${n.id} attempt ${a.attempt}${a.iteration > 1 ? ` iteration ${a.iteration}` : ""}: ${state}, ${duration(s, e)}${err}`;
    el("title", {}, bar).textContent = what;
    // Keyboard: each bar is a tab stop; Enter (or Space) opens the node's panel (delegate).
    bar.setAttribute("tabindex", "0");
    bar.setAttribute("role", "button");
    bar.setAttribute("aria-label", `node ${what}`);
  }
  // A wait node waiting now: a dotted line from its last attempt to now.
  const last = prev ? ms(prev.endTime) : 0;
  if (last && running && stateName(st?.state ?? 0) === "waiting") {
    const w = line(last, Math.max(ends, last), { class: "wait decision", "data-waiting": n.id });
    el("title", {}, w).textContent = `waiting for a decision for ${fmt(Math.max(0, ends - last))}`;
  }
  return { g, spans };
}

/** Moves a row's bars and lines to the time scale x. */
function rescale(spans, x) {
  for (const [e, a, b] of spans) {
    if (e.tagName === "rect") {
      e.setAttribute("x", x(a));
      e.setAttribute("width", Math.max(3, x(b) - x(a)));
    } else {
      e.setAttribute("x1", x(a));
      e.setAttribute("x2", x(b));
    }
  }
}

/** Draws the timeline of `status` (GraphStatus) for the nodes of `graph` into svg. */
export function drawGantt(svg, graph, status, width, onSelect) {
  graphStyles();
  if (onSelect) delegate(svg, onSelect);
  // The bar with the keyboard focus keeps it across redraws (once a second while a run runs).
  const focused = svg.contains(document.activeElement) ? document.activeElement.dataset : null;
  const refocus = focused ? `.bar[data-node="${CSS.escape(focused.node ?? "")}"][data-attempt="${focused.attempt}"][data-iteration="${focused.iteration}"]` : "";
  let drawn = drawnRows.get(svg);
  if (drawn?.graph !== graph) {
    svg.replaceChildren();
    drawn = { graph, axis: el("g", { class: "axis" }, svg), rows: new Map(), scale: "" };
    drawnRows.set(svg, drawn);
  }
  const byId = new Map(status.nodes.map((n) => [n.nodeId, n]));
  let t0 = Math.min(ms(status.startTime) || Infinity, ms(status.createTime) || Infinity);
  for (const n of status.nodes) for (const a of n.attempts) t0 = Math.min(t0, ms(a.startTime) || Infinity);
  const now = Date.now();
  const ends = status.endTime ? ms(status.endTime) : now; // where unfinished bars end
  const t1 = Math.max(ms(status.endTime) || now, t0 + 1);
  const height = AXIS_H + graph.nodes.length * ROW_H + 6;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  drawn.axis.replaceChildren();
  if (!Number.isFinite(t0)) return;
  const plot = width - LABEL_W - 20;
  const x = (t) => LABEL_W + ((t - t0) / (t1 - t0)) * plot;
  const scale = `${t0} ${t1} ${plot}`;
  const rescaled = scale !== drawn.scale;
  drawn.scale = scale;
  const step = tickStep(t1 - t0);
  for (let d = 0; d <= t1 - t0; d += step) {
    el("line", { x1: x(t0 + d), x2: x(t0 + d), y1: AXIS_H - 4, y2: height, class: "tick" }, drawn.axis);
    if (x(t0 + d) < width - 50) {
      el("text", { x: x(t0 + d) + 2, y: 12, class: "tick-label" }, drawn.axis).textContent = `+${fmt(d)}`;
    }
  }
  const fresh = document.createDocumentFragment(); // rows drawn for the first time
  graph.nodes.forEach((n, row) => {
    const st = byId.get(n.id);
    const attempts = [...(st?.attempts ?? [])].sort((a, b) => a.iteration - b.iteration || a.attempt - b.attempt);
    // What the row shows apart from the scale; an unfinished bar or a wait also shows `ends`.
    const open = attempts.some((a) => ms(a.startTime) && !ms(a.endTime)) || stateName(st?.state ?? 0) === "waiting";
    const sig = JSON.stringify([
      st?.state, st?.reused, open ? ends : 0, !status.endTime,
      attempts.map((a) => [a.iteration, a.attempt, a.state, ms(a.startTime), ms(a.endTime), a.error?.errorClass, a.error?.message]),
    ]);
    const had = drawn.rows.get(n.id);
    if (had?.sig === sig) {
      if (rescaled) rescale(had.spans, x);
      return;
    }
    const { g, spans } = drawRow(n, AXIS_H + row * ROW_H, st, attempts, x, ends, !status.endTime);
    if (had) had.g.replaceWith(g);
    else fresh.appendChild(g);
    drawn.rows.set(n.id, { g, spans, sig });
  });
  svg.appendChild(fresh);
  if (refocus && !svg.contains(document.activeElement)) svg.querySelector(refocus)?.focus();
}
