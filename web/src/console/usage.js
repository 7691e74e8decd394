// #/usage: tokens and cost of the archived runs of a range (GetUsageSummary), grouped by day,
// model, namespace or graph name, with a totals line; range and grouping kept in the hash
// query. A server without run history (no DAGO_POSTGRES_URL) answers FAILED_PRECONDITION,
// a range ending before it starts INVALID_ARGUMENT: the message is shown instead of the table.
import { UsageGroupBy } from "../../../clients/typescript/gen/dago/v1/orchestrator_pb.js";
import { FAILED_PRECONDITION, INVALID_ARGUMENT, dago, dollars, h, localInput, showError, timestampOf } from "./util.js";

const GROUPS = { day: "day", model: "model", namespace: "namespace", graph_name: "graph name" };
const WEEK = 7 * 86_400_000;

export function usagePage(root, params) {
  let alive = true;
  const form = h("form", { class: "filters", "aria-label": "usage range and grouping" }, root);
  form.addEventListener("submit", (e) => e.preventDefault());
  const lab = (text, input) => {
    h("label", {}, form, `${text} `).appendChild(input);
    return input;
  };
  const from = lab("from", h("input", { id: "u-from", type: "datetime-local" }));
  const to = lab("to", h("input", { id: "u-to", type: "datetime-local" }));
  const now = Date.now();
  from.value = params.get("from") ?? localInput(now - WEEK);
  to.value = params.get("to") ?? "";
  const group = lab("group by", h("select", { id: "u-group" }));
  for (const [v, label] of Object.entries(GROUPS)) h("option", { value: v }, group, label);
  group.value = GROUPS[params.get("group")] ? params.get("group") : "day";
  h("span", { class: "hint" }, form, "(to: empty means now)");

  const status = h("p", { id: "usage-status", role: "status", hidden: "" }, root);
  const table = h("table", { id: "usage", "aria-label": "usage" }, root);
  const head = h("tr", {}, h("thead", {}, table));
  const cols = [GROUPS[group.value], "runs", "failed", "input tokens", "output tokens", "cost"];
  const cells = cols.map((c, i) => h("th", { scope: "col", ...(i ? { class: "num" } : {}) }, head, c));
  const body = h("tbody", { id: "usage-body" }, table);
  const foot = h("tfoot", {}, table);

  const row = (parent, r, key, attrs = {}) => {
    const tr = h("tr", attrs, parent);
    h(parent === foot ? "th" : "td", parent === foot ? { scope: "row" } : {}, tr, key);
    for (const v of [r.runs, r.failedRuns, r.usage?.inputTokens ?? 0, r.usage?.outputTokens ?? 0]) {
      h("td", { class: "num" }, tr, Number(v));
    }
    h("td", { class: "num" }, tr, dollars(r.usage));
    return tr;
  };

  let issued = 0;
  async function load() {
    const mine = ++issued;
    const q = new URLSearchParams({ from: from.value, group: group.value });
    if (to.value) q.set("to", to.value);
    history.replaceState(null, "", `#/usage?${q}`);
    const resp = await dago().usage({
      startTime: timestampOf(from.value),
      endTime: timestampOf(to.value),
      groupBy: UsageGroupBy[group.value.toUpperCase()],
    });
    if (!alive || mine !== issued) return;
    showError("");
    status.hidden = true;
    table.hidden = false;
    cells[0].textContent = GROUPS[group.value];
    body.replaceChildren();
    for (const r of resp.rows) row(body, r, r.key || "(none)", { "data-key": r.key });
    if (!resp.rows.length) h("td", { colspan: cols.length, class: "empty" }, h("tr", {}, body), "no runs");
    foot.replaceChildren();
    row(foot, resp.total ?? { runs: 0, failedRuns: 0 }, "total", { id: "usage-total" });
  }

  const reload = () =>
    load().catch((err) => {
      if (!alive) return;
      if (err?.code !== FAILED_PRECONDITION && err?.code !== INVALID_ARGUMENT) return showError(err);
      const bad = err.code === INVALID_ARGUMENT ? "bad range: " : "";
      status.textContent = `${bad}${err.rawMessage ?? err.message}`;
      status.hidden = false;
      table.hidden = true;
    });
  for (const input of [from, to, group]) input.addEventListener("change", reload);
  reload();
  return () => {
    alive = false;
  };
}
