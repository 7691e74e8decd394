// #/runs: one page of runs (ListGraphs, newest first) with their cost, tokens and steps,
// filtered on the server (state, exact name, created after / before, metadata key=value
// pairs, min cost, the stored definition it ran, the parent run of child runs, and for an
// operator the namespace; kept in the hash query), paged with next_page_token, refreshed
// every 2 s while the tab is visible. A filter the server refuses is shown as its message
// (the field). An operator (GetLimitsResponse.operator: authentication off, or a key of
// DAGO_OPERATOR_NAMESPACES) sees every namespace's runs, a namespace column and filter; a
// tenant sees its own namespace's runs and neither.
import { GraphState } from "../../../clients/typescript/gen/dago/v1/execution_pb.js";
import { badge, dago, dollars, duration, graphStateName, h, ms, poll, showError, when } from "./util.js";
import { INVALID_ARGUMENT, timestampOf, tokens as tokenText } from "./util.js";

const STATES = Object.entries(GraphState).filter(([k, v]) => typeof v === "number" && v > 0 && k);

/** Every definition name of the namespace (ListDefinitions, all pages), sorted. */
async function definitionNames() {
  const names = [];
  let pageToken = "";
  do {
    const r = await dago().definitions({ pageSize: 500, pageToken });
    names.push(...r.definitions.map((d) => d.name));
    pageToken = r.nextPageToken;
  } while (pageToken);
  return names.sort();
}

export function runsPage(root, params) {
  let alive = true;
  const tokens = [""]; // the page_token of each page seen; the last is the current page's
  let next = "";
  const form = h("form", { class: "filters", role: "search", "aria-label": "filter runs" }, root);
  form.addEventListener("submit", (e) => e.preventDefault());
  const lab = (text, input) => {
    const l = h("label", {}, form, `${text} `);
    l.appendChild(input);
    return input;
  };
  const state = lab("state", h("select", { id: "f-state" }));
  h("option", { value: "0" }, state, "any");
  for (const [name, v] of STATES) h("option", { value: String(v) }, state, graphStateName(v));
  state.value = String(GraphState[`GRAPH_STATE_${(params.get("state") ?? "").toUpperCase()}`] ?? 0);
  const text = (id, label, type, key, extra = {}) => {
    const input = lab(label, h("input", { id, type, spellcheck: "false", ...extra }));
    input.value = params.get(key) ?? "";
    return [key, input];
  };
  const fields = [
    text("f-name", "name", "search", "name"),
    text("f-after", "created after", "datetime-local", "after"),
    text("f-before", "created before", "datetime-local", "before"),
    text("f-meta", "metadata key=value", "search", "meta", { placeholder: "team=search tier=1" }),
    text("f-cost", "min cost $", "number", "cost", { min: "0", step: "any" }),
    text("f-parent", "child runs of", "search", "parent", { placeholder: "run id" }),
  ];
  const f = Object.fromEntries(fields); // key -> its input
  // The stored definitions (ListDefinitions) to filter by: runs submitted from one of them.
  const definition = lab("definition", h("select", { id: "f-definition" }));
  h("option", { value: "" }, definition, "any");
  if (params.get("definition")) h("option", { value: params.get("definition") }, definition, params.get("definition"));
  definition.value = params.get("definition") ?? "";
  definitionNames().then((names) => {
    if (!alive) return;
    for (const name of names) {
      if (name !== params.get("definition")) h("option", { value: name }, definition, name);
    }
  }, (err) => alive && showError(err));
  // The namespace filter, shown once GetLimits says the caller is an operator: empty lists
  // every namespace; the suggestions are the namespaces its listings have shown.
  const ns = lab("namespace", h("input", { id: "f-namespace", type: "search", list: "namespaces", spellcheck: "false", placeholder: "every namespace" }));
  ns.parentElement.hidden = true;
  ns.value = params.get("ns") ?? "";
  const seen = new Set();
  const suggestions = h("datalist", { id: "namespaces" }, form);
  let operator = false;
  const who = dago().limits().then(
    (r) => {
      operator = r.operator;
      ns.parentElement.hidden = !operator;
    },
    () => {}, // not known (e.g. no key yet): a tenant's view; the listing shows the error
  );
  const size = lab("per page", h("input", { id: "f-size", type: "number", min: "1", max: "1000" }));
  size.value = params.get("size") ?? "25";
  const live = h("span", { class: "live", "aria-live": "polite" }, form);
  const bad = h("p", { id: "filter-error", class: "err", role: "status", hidden: "" }, root);

  const table = h("table", { class: "runs", "aria-label": "runs" }, root);
  const head = h("tr", {}, h("thead", {}, table));
  const cols = ["run", "name", "state", "created", "duration", "steps", "tokens", "cost", "parent", "namespace"];
  const numeric = new Set(["steps", "tokens", "cost"]);
  for (const c of cols) h("th", { scope: "col", class: `c-${c}${numeric.has(c) ? " num" : ""}` }, head, c);
  const body = h("tbody", { id: "runs-body" }, table);
  const nav = h("nav", { class: "pager", "aria-label": "pages" }, root);
  const newer = h("button", { id: "newer", type: "button" }, nav, "← Newer");
  const where = h("span", { id: "page-no" }, nav);
  const older = h("button", { id: "older", type: "button" }, nav, "Older →");

  function remember() {
    const q = new URLSearchParams();
    if (state.value !== "0") q.set("state", graphStateName(Number(state.value)));
    for (const [key, input] of fields) if (input.value) q.set(key, input.value);
    if (definition.value) q.set("definition", definition.value);
    if (operator && ns.value.trim()) q.set("ns", ns.value.trim());
    if (size.value !== "25") q.set("size", size.value);
    const hash = `#/runs${q.size ? `?${q}` : ""}`;
    if (window.location.hash !== hash) history.replaceState(null, "", hash);
  }

  let issued = 0; // a response older than the last request (filters changed since) is dropped
  async function load() {
    const mine = ++issued;
    await who;
    const resp = await dago().list({
      pageSize: Math.max(1, Math.min(1000, Number(size.value) || 25)),
      pageToken: tokens[tokens.length - 1],
      state: Number(state.value),
      name: f.name.value.trim(),
      createdAfter: timestampOf(f.after.value),
      createdBefore: timestampOf(f.before.value),
      metadata: f.meta.value.split(/[\s,]+/).filter(Boolean),
      minCostUsd: Number(f.cost.value) || 0,
      definition: definition.value,
      parentGraphId: f.parent.value.trim(),
      namespace: operator ? ns.value.trim() : "",
    });
    if (!alive || mine !== issued) return;
    showError("");
    bad.hidden = true;
    last = resp;
    next = resp.nextPageToken;
    render();
    live.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  let last = null;
  function render() {
    const resp = last;
    const rows = resp.graphs;
    table.classList.toggle("no-ns", !operator);
    for (const g of rows) {
      if (operator && !seen.has(g.namespace)) {
        seen.add(g.namespace);
        h("option", { value: g.namespace }, suggestions);
      }
    }
    table.classList.toggle("no-parent", !resp.graphs.some((g) => g.parentGraphId));
    body.replaceChildren();
    for (const g of rows) {
      const tr = h("tr", { "data-run": g.graphId }, body);
      h("a", { href: `#/runs/${encodeURIComponent(g.graphId)}` }, h("td", { class: "c-run" }, tr), g.graphId);
      h("td", { class: "c-name" }, tr, g.name);
      badge(graphStateName(g.state), h("td", { class: "c-state" }, tr));
      h("td", { class: "c-created" }, tr, when(g.createTime));
      h("td", { class: "c-duration" }, tr, duration(ms(g.createTime), ms(g.endTime)));
      h("td", { class: "c-steps num" }, tr, g.steps);
      h("td", { class: "c-tokens num" }, tr, tokenText(g.usage));
      h("td", { class: "c-cost num" }, tr, dollars(g.usage));
      // A child run (a subgraph node's): its parent run, linked to the node that started it.
      const parent = h("td", { class: "c-parent" }, tr);
      if (g.parentGraphId) {
        const href = `#/runs/${encodeURIComponent(g.parentGraphId)}/nodes/${encodeURIComponent(g.parentNodeId)}`;
        h("a", { href, "data-parent": g.parentGraphId }, parent, `${g.parentGraphId} · ${g.parentNodeId}`);
      }
      h("td", { class: "c-namespace" }, tr, g.namespace);
    }
    if (!rows.length) h("td", { colspan: cols.length, class: "empty" }, h("tr", {}, body), "no runs");
    newer.disabled = tokens.length < 2;
    older.disabled = !next;
    where.textContent = `page ${tokens.length}`;
  }

  // A filter the server refuses: its message (naming the field) by the filters, no rows.
  const failed = (err) => {
    if (!alive) return;
    if (err?.code !== INVALID_ARGUMENT) return showError(err);
    bad.textContent = `bad filter: ${err.rawMessage ?? err.message}`;
    bad.hidden = false;
    body.replaceChildren();
  };
  const reload = () => load().catch(failed);
  const restart = () => {
    tokens.length = 1;
    remember();
    reload();
  };
  state.addEventListener("change", restart);
  definition.addEventListener("change", restart);
  size.addEventListener("change", restart);
  ns.addEventListener("change", restart);
  for (const [, input] of fields) input.addEventListener("change", restart);
  older.addEventListener("click", () => {
    if (!next) return;
    tokens.push(next);
    reload();
  });
  newer.addEventListener("click", () => {
    if (tokens.length > 1) tokens.pop();
    reload();
  });
  reload();
  const stop = poll(() => load().catch(failed), 2000, () => alive);
  return () => {
    alive = false;
    stop();
  };
}
