// A node's panel on a run's page: its state, route, streamed model text and tool calls (from
// the run's events), then its attempts (ListNodeAttempts, 50 a page): state, duration,
// worker, tokens and cost, error class and message, input and output in a JSON viewer.
import { decisionText, decisionWidget } from "../decide.js";
import { kindOf, stateName } from "../graph.js";
import { jsonView, valueJson } from "./json.js";
import { mapItems } from "./mapitems.js";
import { badge, dago, duration, errorClassName, h, ms, when } from "./util.js";

const PAGE = 50;

/** Tool calls as list items: name(arguments) → result (or error). */
export function renderTools(ol, calls) {
  ol.replaceChildren();
  for (const t of calls) {
    const li = h("li", {}, ol, `${t.tool}(${JSON.stringify(t.args ?? null)})`);
    if (t.error) h("span", { class: "attempt-error" }, li, ` → error: ${t.error}`);
    else if (t.done) h("span", {}, li, ` → ${JSON.stringify(t.result ?? null)}`);
  }
}

function renderAttempt(a, parent, open, map) {
  const state = stateName(a.state);
  const d = h("details", { class: "attempt", "data-attempt": String(a.attempt), ...(open ? { open: "" } : {}) }, parent);
  const s = h("summary", {}, d, `attempt ${a.attempt}${a.iteration > 1 ? ` · iteration ${a.iteration}` : ""} `);
  badge(state, s);
  const facts = [duration(ms(a.startTime), ms(a.endTime)), a.workerId ? `worker ${a.workerId}` : ""];
  if (a.usage && (a.usage.inputTokens || a.usage.outputTokens || a.usage.costUsd)) {
    facts.push(`tokens ${a.usage.inputTokens} in / ${a.usage.outputTokens} out`, `$${a.usage.costUsd.toFixed(4)}`);
  }
  h("p", { class: "facts" }, d, facts.filter(Boolean).join(" · "));
  if (a.error?.message) {
    const retry = a.error.retryable ? " (retryable)" : "";
    h("p", { class: "attempt-error" }, d, `${errorClassName(a.error.errorClass)}: ${a.error.message}${retry}`);
  }
  h("h5", {}, d, "input");
  jsonView(valueJson(a.input), d, "input");
  h("h5", {}, d, "output");
  const output = valueJson(a.output);
  if (!map || output === undefined) {
    jsonView(output, d, "output").setAttribute("data-output", String(a.attempt));
    return;
  }
  // A map's output holds every item's: drawn only when asked for (10,000 items would be a
  // hundred thousand elements); the Items list above pages them.
  const fold = h("details", { class: "lazy-output" }, d);
  h("summary", {}, fold, `${output?.items?.length ?? 0} items' outputs (open to draw them)`);
  fold.addEventListener("toggle", () => {
    if (fold.open && !fold.querySelector(".json")) jsonView(output, fold, "output").setAttribute("data-output", String(a.attempt));
  });
}

/** Draws the panel of `node` into `panel`; `current()` is false once another node is shown. */
export async function nodePanel(panel, { graphId, node, status, decision, text, tools, signal, current, wait, signalled, onMapBar }) {
  const box = h("div", { "data-panel": node.id });
  const hd = h("h3", {}, box, `${node.id} · ${kindOf(node)} `);
  badge(stateName(status?.state ?? 0), hd, { id: "node-state" });
  if (status?.reused) {
    h("span", { class: "badge reused", "data-reused": "", title: "output reused from the run this one was forked from; not executed" }, hd, "reused");
    h("p", { class: "hint" }, box, "Reused from the run this one was forked from: not executed here (no attempts, no cost).");
  }
  if (node.description) h("p", { class: "hint" }, box, node.description);
  if (status?.route) h("p", { class: "route" }, box, `route ${status.route}${decision ? ` → ${decision.join(", ")}` : ""}`);
  // A model rate limit holds the node back (QUEUED, no slot) until then.
  if (ms(status?.throttledUntil) > Date.now()) {
    h("p", { class: "throttled", "data-throttled": node.id }, box, `throttled until ${when(status.throttledUntil)} (a model rate limit)`);
  }
  // A subgraph node: its child run, linked (the child's page links back).
  if (node.kind.case === "subgraph") {
    const p = h("p", { class: "child", "data-child-of": node.id }, box, "child run ");
    if (status?.childGraphId) {
      h("a", { href: `#/runs/${encodeURIComponent(status.childGraphId)}`, "data-child": status.childGraphId }, p, status.childGraphId);
    } else {
      p.appendChild(document.createTextNode("not started yet"));
    }
  }
  // A wait node: the decision widget while it waits (from its node_waiting event), then
  // the decision (signal_received).
  if (node.kind.case === "wait") {
    const waits = h("section", { class: "waits", "data-waits": node.id }, box);
    h("h4", {}, waits, "Decision");
    const waiting = stateName(status?.state ?? 0) === "waiting";
    if (wait && (waiting || signalled)) {
      const w = decisionWidget(waits, wait, {
        label: `node ${node.id}`,
        showDisplay: (v, parent) => jsonView(v, parent, "display"),
      });
      if (signalled) w.decided(signalled);
    } else if (signalled) {
      h("p", { class: "decided" }, waits, decisionText(signalled));
    } else {
      h("p", { class: "hint" }, waits, waiting ? "waiting (loading its prompt…)" : "not waiting");
    }
  }
  if (node.kind.case === "map") {
    onMapBar?.(mapItems(box, { graphId, nodeId: node.id, progress: status?.map, signal, current }));
  }
  const stream = h("section", { class: "stream" }, box);
  h("h4", {}, stream, "Streamed text");
  h("pre", { "data-stream": node.id }, stream, text);
  stream.hidden = !text;
  const calls = h("section", { class: "tools" }, box);
  h("h4", {}, calls, "Tool calls");
  renderTools(h("ol", { "data-tools": node.id }, calls), tools);
  calls.hidden = !tools.length;
  h("h4", {}, box, "Attempts");
  const list = h("div", { class: "attempts", "data-attempts": node.id }, box, "loading…");
  panel.replaceChildren(box);
  let token = "";
  let first = true;
  const more = h("button", { type: "button", class: "more", hidden: "" }, box, "More attempts");
  const page = async () => {
    const resp = await dago().attempts(graphId, node.id, { pageSize: PAGE, pageToken: token }, { signal });
    if (!current()) return;
    if (first) list.replaceChildren();
    if (first && !resp.attempts.length) h("p", { class: "hint" }, list, status?.reused ? "none: reused" : "no attempt yet");
    first = false;
    token = resp.nextPageToken;
    resp.attempts.forEach((a, i) => {
      const last = !token && i === resp.attempts.length - 1;
      renderAttempt(a, list, last || Boolean(a.error?.message), node.kind.case === "map");
    });
    more.hidden = !token;
  };
  more.addEventListener("click", () => page().catch((err) => (list.textContent = String(err?.message ?? err))));
  try {
    await page();
  } catch (err) {
    if (current()) list.textContent = String(err?.message ?? err);
  }
}
