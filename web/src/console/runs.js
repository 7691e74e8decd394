// #/runs: one page of runs (ListGraphs, newest first), filtered by state on the server and by
// name on the page, paged with next_page_token, refreshed every 2 s while the tab is visible.
import { GraphState } from "../../../clients/typescript/gen/dago/v1/execution_pb.js";
import { badge, dago, duration, graphStateName, h, ms, poll, showError, when } from "./util.js";

const STATES = Object.entries(GraphState).filter(([k, v]) => typeof v === "number" && v > 0 && k);

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
  const name = lab("name contains", h("input", { id: "f-name", type: "search", spellcheck: "false" }));
  name.value = params.get("name") ?? "";
  const size = lab("per page", h("input", { id: "f-size", type: "number", min: "1", max: "1000" }));
  size.value = params.get("size") ?? "25";
  const live = h("span", { class: "live", "aria-live": "polite" }, form);

  const table = h("table", { class: "runs", "aria-label": "runs" }, root);
  const head = h("tr", {}, h("thead", {}, table));
  const cols = ["run", "name", "state", "created", "duration", "namespace"];
  for (const c of cols) h("th", { scope: "col", class: `c-${c}` }, head, c);
  const body = h("tbody", { id: "runs-body" }, table);
  const nav = h("nav", { class: "pager", "aria-label": "pages" }, root);
  const newer = h("button", { id: "newer", type: "button" }, nav, "← Newer");
  const where = h("span", { id: "page-no" }, nav);
  const older = h("button", { id: "older", type: "button" }, nav, "Older →");

  function remember() {
    const q = new URLSearchParams();
    if (state.value !== "0") q.set("state", graphStateName(Number(state.value)));
    if (name.value) q.set("name", name.value);
    if (size.value !== "25") q.set("size", size.value);
    const hash = `#/runs${q.size ? `?${q}` : ""}`;
    if (window.location.hash !== hash) history.replaceState(null, "", hash);
  }

  let issued = 0; // a response older than the last request (filters changed since) is dropped
  async function load() {
    const mine = ++issued;
    const resp = await dago().list({
      pageSize: Math.max(1, Math.min(1000, Number(size.value) || 25)),
      pageToken: tokens[tokens.length - 1],
      state: Number(state.value),
    });
    if (!alive || mine !== issued) return;
    showError("");
    last = resp;
    next = resp.nextPageToken;
    render();
    live.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  // The page last fetched, narrowed by the name filter (no new call while typing).
  let last = null;
  function render() {
    if (!last) return;
    const resp = last;
    const want = name.value.trim().toLowerCase();
    const rows = resp.graphs.filter((g) => !want || g.name.toLowerCase().includes(want));
    table.classList.toggle("no-ns", !resp.graphs.some((g) => g.namespace));
    body.replaceChildren();
    for (const g of rows) {
      const tr = h("tr", { "data-run": g.graphId }, body);
      h("a", { href: `#/runs/${encodeURIComponent(g.graphId)}` }, h("td", { class: "c-run" }, tr), g.graphId);
      h("td", { class: "c-name" }, tr, g.name);
      badge(graphStateName(g.state), h("td", { class: "c-state" }, tr));
      h("td", { class: "c-created" }, tr, when(g.createTime));
      h("td", { class: "c-duration" }, tr, duration(ms(g.createTime), ms(g.endTime)));
      h("td", { class: "c-namespace" }, tr, g.namespace);
    }
    if (!rows.length) h("td", { colspan: cols.length, class: "empty" }, h("tr", {}, body), "no runs");
    newer.disabled = tokens.length < 2;
    older.disabled = !next;
    where.textContent = `page ${tokens.length}`;
  }

  const reload = () => load().catch((err) => alive && showError(err));
  const restart = () => {
    tokens.length = 1;
    remember();
    reload();
  };
  state.addEventListener("change", restart);
  size.addEventListener("change", restart);
  name.addEventListener("input", () => {
    remember();
    render();
  });
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
  const stop = poll(load, 2000, () => alive);
  return () => {
    alive = false;
    stop();
  };
}
