// #/ops: the workers alive now (ListWorkers: slots, in flight, kinds, heartbeat), the model
// rate limits (GetLimits) and the dead
// letters (ListDeadLetters, paged) with Requeue and Drop (a second click confirms a drop).
// Refreshed every 3 s while the tab is visible.
import { dago, h, ms, poll, showError, when } from "./util.js";

export function opsPage(root) {
  let alive = true;
  const tokens = [""];
  let next = "";
  const workers = h("section", { "aria-labelledby": "workers-h" }, root);
  h("h2", { id: "workers-h" }, workers, "Workers");
  const wt = h("table", { id: "workers", "aria-labelledby": "workers-h" }, workers);
  const wcols = ["worker", "host", "pid", "slots", "in flight", "kinds", "started", "last heartbeat"];
  const whead = h("tr", {}, h("thead", {}, wt));
  for (const c of wcols) h("th", { scope: "col" }, whead, c);
  const wbody = h("tbody", {}, wt);

  // The model rate limits every worker shares (GetLimits): configured per minute, and what
  // their buckets hold now; a provider's 429 pause.
  const rl = h("section", { "aria-labelledby": "rl-h" }, root);
  h("h2", { id: "rl-h" }, rl, "Model rate limits");
  // The caller's namespace: its fair share, caps and use of them (GetLimitsResponse.namespace).
  const share = h("p", { id: "namespace-usage", class: "facts" }, rl);
  const rt = h("table", { id: "rate-limits", "aria-labelledby": "rl-h" }, rl);
  const rcols = ["provider", "model", "requests / min", "input tokens / min", "output tokens / min", "burst s", "requests now", "input tokens now", "output tokens now", "paused until"];
  const rhead = h("tr", {}, h("thead", {}, rt));
  for (const c of rcols) h("th", { scope: "col", ...(c.includes("/") || c.includes(" now") || c === "burst s" ? { class: "num" } : {}) }, rhead, c);
  const rbody = h("tbody", {}, rt);

  const dead = h("section", { "aria-labelledby": "dl-h" }, root);
  h("h2", { id: "dl-h" }, dead, "Dead letters");
  const status = h("p", { id: "ops-status", role: "status" }, dead);
  const dt = h("table", { id: "dead-letters", "aria-labelledby": "dl-h" }, dead);
  const dcols = ["dead letter", "run", "node", "attempt", "deliveries", "error", "when", "waiting", "actions"];
  const dhead = h("tr", {}, h("thead", {}, dt));
  for (const c of dcols) h("th", { scope: "col" }, dhead, c);
  const dbody = h("tbody", {}, dt);
  const nav = h("nav", { class: "pager", "aria-label": "dead letter pages" }, dead);
  const newer = h("button", { type: "button", id: "dl-newer" }, nav, "← Newer");
  const older = h("button", { type: "button", id: "dl-older" }, nav, "Older →");

  async function loadWorkers() {
    const { workers: list } = await dago().workers();
    if (!alive) return;
    wbody.replaceChildren();
    for (const w of list) {
      const ago = Math.round((Date.now() - ms(w.lastHeartbeatTime)) / 1000);
      const tr = h("tr", { "data-worker": w.workerId, ...(ago > 5 ? { class: "stale" } : {}) }, wbody);
      h("td", {}, tr, w.workerId);
      h("td", {}, tr, w.host);
      h("td", {}, tr, w.pid);
      h("td", { class: "num", "data-slots": "" }, tr, w.slots);
      const cell = h("td", { class: "num" }, tr);
      h("meter", { min: "0", max: String(w.slots || 1), value: String(w.inFlight), "aria-label": "in flight" }, cell);
      h("span", { "data-in-flight": "" }, cell, ` ${w.inFlight}`);
      h("td", {}, tr, w.nodeKinds.join(", "));
      h("td", {}, tr, when(w.startTime));
      h("td", {}, tr, `${ago} s ago${ago > 5 ? " (no heartbeat lately)" : ""}`);
    }
    if (!list.length) h("td", { colspan: wcols.length, class: "empty" }, h("tr", {}, wbody), "no live worker");
  }

  async function loadLimits() {
    const { models, namespace: ns } = await dago().limits();
    if (!alive) return;
    const cap = (v) => (Number(v) ? String(v) : "no cap");
    share.textContent = ns ? [
      `namespace ${ns.namespace}`,
      `weight ${ns.weight}`,
      `running ${ns.runningNodes} of ${cap(ns.maxRunningNodes)} work items`,
      `${ns.queuedNodes} queued`,
      `active runs ${ns.activeRuns} of ${cap(ns.maxActiveRuns)}`,
      `spent today $${ns.spentTodayUsd.toFixed(4)}${ns.dailyCostUsd ? ` of $${ns.dailyCostUsd}` : ""}`,
    ].join(" · ") : "";
    rbody.replaceChildren();
    const n = (v) => (v ? String(Math.floor(v)) : "—");
    for (const m of models) {
      const tr = h("tr", { "data-limit": `${m.provider}/${m.model}` }, rbody);
      h("td", {}, tr, m.provider);
      h("td", {}, tr, m.model);
      for (const v of [m.requestsPerMinute, m.inputTokensPerMinute, m.outputTokensPerMinute]) h("td", { class: "num" }, tr, n(v));
      h("td", { class: "num" }, tr, m.burstSeconds);
      h("td", { class: "num", "data-available": "requests" }, tr, m.requestsPerMinute ? Math.floor(m.requestsAvailable) : "—");
      h("td", { class: "num" }, tr, m.inputTokensPerMinute ? Math.floor(m.inputTokensAvailable) : "—");
      h("td", { class: "num" }, tr, m.outputTokensPerMinute ? Math.floor(m.outputTokensAvailable) : "—");
      h("td", {}, tr, ms(m.pausedUntil) > Date.now() ? when(m.pausedUntil) : "");
    }
    if (!models.length) h("td", { colspan: rcols.length, class: "empty" }, h("tr", {}, rbody), "no model rate limit configured (DAGO_RATE_LIMITS)");
  }

  async function act(d, verb, button) {
    button.disabled = true;
    try {
      if (verb === "requeue") {
        const r = await dago().requeueDeadLetter(d.deadLetterId);
        status.textContent = `requeued ${d.deadLetterId}: run ${r.graphId} runs node ${d.nodeId} again`;
      } else {
        const r = await dago().dropDeadLetter(d.deadLetterId);
        status.textContent = `dropped ${d.deadLetterId}${r.failedNode ? `: node ${d.nodeId} failed` : ""}`;
      }
      showError("");
      await loadDead();
    } catch (err) {
      showError(err);
      button.disabled = false;
    }
  }

  let issued = 0; // a response older than the last request is dropped
  async function loadDead() {
    const mine = ++issued;
    const resp = await dago().deadLetters({ pageSize: 50, pageToken: tokens.at(-1) });
    if (!alive || mine !== issued) return;
    next = resp.nextPageToken;
    dbody.replaceChildren();
    for (const d of resp.deadLetters) {
      const tr = h("tr", { "data-dead-letter": d.deadLetterId }, dbody);
      h("td", {}, tr, d.deadLetterId);
      h("a", { href: `#/runs/${encodeURIComponent(d.graphId)}/nodes/${encodeURIComponent(d.nodeId)}` }, h("td", {}, tr), d.graphId);
      h("td", {}, tr, d.nodeId);
      h("td", { class: "num" }, tr, d.iteration > 1 ? `${d.attempt} (iteration ${d.iteration})` : d.attempt);
      h("td", { class: "num" }, tr, d.deliveries);
      h("td", { class: "err" }, tr, d.error?.message ?? "");
      h("td", {}, tr, when(d.createTime));
      h("td", {}, tr, d.current ? "yes" : "no");
      const cell = h("td", { class: "actions" }, tr);
      const rq = h("button", { type: "button", "data-action": "requeue", "aria-label": `requeue ${d.deadLetterId}` }, cell, "Requeue");
      rq.disabled = !d.current;
      rq.addEventListener("click", () => act(d, "requeue", rq));
      const drop = h("button", { type: "button", "data-action": "drop", class: "danger", "aria-label": `drop ${d.deadLetterId}` }, cell, "Drop");
      drop.addEventListener("click", () => {
        if (drop.dataset.armed) return act(d, "drop", drop);
        drop.dataset.armed = "1";
        drop.textContent = "Confirm drop";
      });
    }
    if (!resp.deadLetters.length) h("td", { colspan: dcols.length, class: "empty" }, h("tr", {}, dbody), "no dead letters");
    newer.disabled = tokens.length < 2;
    older.disabled = !next;
  }

  older.addEventListener("click", () => next && tokens.push(next) && loadDead().catch(showError));
  newer.addEventListener("click", () => {
    if (tokens.length > 1) tokens.pop();
    loadDead().catch(showError);
  });
  const load = async () => {
    await Promise.all([loadWorkers(), loadLimits(), loadDead()]);
    showError("");
  };
  load().catch((err) => alive && showError(err));
  // Not while a drop waits for its confirmation (a refresh would redraw its button).
  const stop = poll(async () => !dbody.querySelector("[data-armed]") && (await load()), 3000, () => alive);
  return () => {
    alive = false;
    stop();
  };
}
