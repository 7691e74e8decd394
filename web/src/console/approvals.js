// #/approvals: the approvals inbox. ListWaits (the waiting wait nodes of the caller's
// namespace, oldest first, 20 a page) with, for each, its run (a link to the run's page),
// node, prompt, display (JSON viewer), since and deadline, and the shared decision widget
// (web/src/decide.js: a button per decision, a payload form when the node has a schema).
// Polled every 2 s while the tab is visible; the cards are keyed by run, node and iteration,
// so a refresh only adds and removes cards and never redraws one being filled in.
import { decisionWidget } from "../decide.js";
import { jsonView } from "./json.js";
import { dago, duration, h, ms, poll, showError, when } from "./util.js";

const PAGE = 20;
const keyOf = (w) => `${w.graphId}|${w.nodeId}|${w.iteration}`;

export function approvalsPage(root, query) {
  let alive = true;
  const size = Math.min(Math.max(Number(query.get("size")) || PAGE, 1), 1000);
  const tokens = [""];
  let next = "";
  const cards = new Map(); // key -> {card, since, sent}
  const section = h("section", { "aria-labelledby": "approvals-h" }, root);
  h("h2", { id: "approvals-h" }, section, "Approvals");
  h("p", { class: "hint" }, section,
    "Wait nodes of your namespace waiting for a decision, oldest first. Refreshed every 2 s.");
  const status = h("p", { id: "approvals-status", role: "status", "aria-live": "polite" }, section);
  const list = h("ol", { id: "approvals", class: "approvals", "aria-labelledby": "approvals-h" }, section);
  const empty = h("p", { id: "approvals-empty", class: "hint", hidden: "" }, section, "Nothing waits for a decision.");
  const nav = h("nav", { class: "pager", "aria-label": "approval pages" }, section);
  const prev = h("button", { type: "button", id: "ap-prev" }, nav, "← Previous");
  const pageNo = h("span", { id: "ap-page-no" }, nav, "page 1");
  const nextButton = h("button", { type: "button", id: "ap-next" }, nav, "Next →");

  function card(w) {
    const li = h("li", { class: "wait-card", "data-wait": `${w.graphId}/${w.nodeId}`, "data-iteration": String(w.iteration) });
    const head = h("p", { class: "wait-head" }, li);
    const run = h("a", { href: `#/runs/${encodeURIComponent(w.graphId)}/nodes/${encodeURIComponent(w.nodeId)}`, class: "wait-run" }, head,
      w.graphName || w.graphId);
    run.setAttribute("aria-label", `run ${w.graphName ? `${w.graphName} ` : ""}${w.graphId}, node ${w.nodeId}`);
    h("span", { class: "c-run" }, head, w.graphName ? ` ${w.graphId}` : "");
    h("span", {}, head, ` · node `);
    h("strong", { class: "wait-node" }, head, w.nodeId);
    if (w.iteration > 1) h("span", {}, head, ` · iteration ${w.iteration}`);
    const since = ms(w.since);
    const facts = h("p", { class: "facts" }, li);
    h("span", { class: "wait-since" }, facts, `waiting since ${when(w.since)}`);
    const age = h("span", { class: "wait-age", "data-since": String(since) }, facts, ` (${duration(since)})`);
    if (w.deadline) h("span", { class: "wait-deadline" }, facts, ` · its timeout decides at ${when(w.deadline)}`);
    const sent = { done: false };
    decisionWidget(li, {
      graphId: w.graphId,
      nodeId: w.nodeId,
      iteration: w.iteration,
      prompt: w.prompt,
      display: w.display,
      decisions: w.decisions,
      payloadSchema: w.payloadSchema,
      deadline: 0, // shown above
    }, {
      label: `node ${w.nodeId} of run ${w.graphName || w.graphId}`,
      showDisplay: (v, parent) => jsonView(v, parent, "display"),
      onSent: (res) => {
        sent.done = true;
        status.textContent = `${res.decision} sent for node ${res.nodeId} of run ${res.graphId} (by ${res.actor || "anonymous"})`;
        load().catch((err) => alive && showError(err));
      },
    });
    return { li, age, sent };
  }

  let issued = 0; // a response older than the last request is dropped
  async function load() {
    const mine = ++issued;
    const resp = await dago().waits({ pageSize: size, pageToken: tokens.at(-1) });
    if (!alive || mine !== issued) return;
    next = resp.nextPageToken;
    const keep = new Set(resp.waits.map(keyOf));
    for (const [k, c] of cards) {
      if (!keep.has(k)) {
        c.li.remove();
        cards.delete(k);
      }
    }
    // In the server's order: existing cards stay where they are (moved only if out of order).
    let at = list.firstElementChild;
    for (const w of resp.waits) {
      const k = keyOf(w);
      let c = cards.get(k);
      if (!c) {
        c = card(w);
        cards.set(k, c);
      }
      if (c.li !== at) list.insertBefore(c.li, at);
      else at = at.nextElementSibling;
      c.age.textContent = ` (${duration(ms(w.since))})`;
    }
    empty.hidden = resp.waits.length > 0;
    prev.disabled = tokens.length < 2;
    nextButton.disabled = !next;
    pageNo.textContent = `page ${tokens.length}`;
    showError("");
  }

  nextButton.addEventListener("click", () => {
    if (!next) return;
    tokens.push(next);
    load().catch(showError);
  });
  prev.addEventListener("click", () => {
    if (tokens.length > 1) tokens.pop();
    load().catch(showError);
  });
  load().catch((err) => alive && showError(err));
  const stop = poll(load, 2000, () => alive);
  return () => {
    alive = false;
    stop();
  };
}
