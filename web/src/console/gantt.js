// The timeline of a run: one row per node, one bar per attempt (start → end, or now while it
// runs; coloured by state like the graph), a dotted line for the wait between attempts. With
// onSelect, each bar is a keyboard stop (tabindex, aria-label naming node, attempt, state and
// duration) that opens its node's panel on click, Enter or Space.
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

/** Draws the timeline of `status` (GraphStatus) for the nodes of `graph` into svg. */
export function drawGantt(svg, graph, status, width, onSelect) {
  graphStyles();
  if (onSelect) delegate(svg, onSelect);
  // The bar with the keyboard focus keeps it across redraws (once a second while a run runs).
  const focused = svg.contains(document.activeElement) ? document.activeElement.dataset : null;
  const refocus = focused ? `.bar[data-node="${CSS.escape(focused.node ?? "")}"][data-attempt="${focused.attempt}"][data-iteration="${focused.iteration}"]` : "";
  // Drawn detached, then swapped in at once: one style and layout pass for the whole timeline.
  const out = document.createDocumentFragment();
  svg.replaceChildren();
  const byId = new Map(status.nodes.map((n) => [n.nodeId, n]));
  const starts = status.nodes.flatMap((n) => n.attempts.map((a) => ms(a.startTime)).filter(Boolean));
  const t0 = Math.min(ms(status.startTime) || Infinity, ms(status.createTime) || Infinity, ...starts);
  const now = Date.now();
  const t1 = Math.max(ms(status.endTime) || now, t0 + 1);
  const height = AXIS_H + graph.nodes.length * ROW_H + 6;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!Number.isFinite(t0)) return;
  const plot = width - LABEL_W - 20;
  const x = (t) => LABEL_W + ((t - t0) / (t1 - t0)) * plot;
  const step = tickStep(t1 - t0);
  for (let d = 0; d <= t1 - t0; d += step) {
    el("line", { x1: x(t0 + d), x2: x(t0 + d), y1: AXIS_H - 4, y2: height, class: "tick" }, out);
    if (x(t0 + d) < width - 50) {
      el("text", { x: x(t0 + d) + 2, y: 12, class: "tick-label" }, out).textContent = `+${fmt(d)}`;
    }
  }
  graph.nodes.forEach((n, row) => {
    const y = AXIS_H + row * ROW_H;
    const g = el("g", { class: "gantt-row", "data-row": n.id }, out);
    el("text", { x: 4, y: y + 16, class: "row-label" }, g).textContent = n.id;
    const attempts = [...(byId.get(n.id)?.attempts ?? [])].sort(
      (a, b) => a.iteration - b.iteration || a.attempt - b.attempt,
    );
    if (!attempts.length) {
      const st = byId.get(n.id);
      const state = stateName(st?.state ?? 0);
      const note = el("text", { x: LABEL_W + 4, y: y + 16, class: `row-note${st?.reused ? " reused" : ""}` }, g);
      note.textContent = st?.reused ? `${state} · reused (not executed)` : state;
      if (st?.reused) note.setAttribute("data-reused", "");
    }
    let prev = null;
    for (const a of attempts) {
      const s = ms(a.startTime);
      if (!s) continue;
      const e = ms(a.endTime) || (status.endTime ? ms(status.endTime) : now);
      const prevEnd = prev ? ms(prev.endTime) : 0;
      if (prevEnd && s > prevEnd) {
        const decision = stateName(prev.state) === "waiting";
        const what = a.iteration !== prev.iteration ? `iteration ${a.iteration}` : `attempt ${a.attempt}`;
        const w = el("line", { x1: x(prevEnd), x2: x(s), y1: y + 12, y2: y + 12, class: decision ? "wait decision" : "wait" }, g);
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
      el("rect", { x: x(s), y: y + 4, width: Math.max(3, x(e) - x(s)), height: ROW_H - 8 }, bar);
      const err = a.error?.message ? ` · ${errorClassName(a.error.errorClass)}: ${a.error.message}` : "";
      const what = `${n.id} attempt ${a.attempt}${a.iteration > 1 ? ` iteration ${a.iteration}` : ""}: ${state}, ${duration(s, e)}${err}`;
      el("title", {}, bar).textContent = what;
      if (onSelect) {
        // Keyboard: each bar is a tab stop; Enter (or Space) opens the node's panel.
        bar.setAttribute("tabindex", "0");
        bar.setAttribute("role", "button");
        bar.setAttribute("aria-label", `node ${what}`);
      }
    }
    // A wait node waiting now: a dotted line from its last attempt to now.
    const last = prev ? ms(prev.endTime) : 0;
    if (last && stateName(byId.get(n.id)?.state ?? 0) === "waiting" && !status.endTime) {
      const w = el("line", { x1: x(last), x2: x(Math.max(now, last)), y1: y + 12, y2: y + 12, class: "wait decision", "data-waiting": n.id }, g);
      el("title", {}, w).textContent = `waiting for a decision for ${fmt(Math.max(0, now - last))}`;
    }
  });
  svg.appendChild(out);
  if (refocus) svg.querySelector(refocus)?.focus();
}
