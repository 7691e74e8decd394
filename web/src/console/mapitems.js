// A map node on a run's page: its progress bar (counts by state, from GetGraphStatus's
// NodeStatus.map and the map_progress events) and, in its node panel, its items one page at
// a time (ListMapItems, 50 a page, filtered by state on the server): a 10,000-item map is
// never fetched whole.
import { NodeState } from "../../../clients/typescript/gen/dago/v1/execution_pb.js";
import { stateName } from "../graph.js";
import { valueJson } from "./json.js";
import { badge, dago, dollars, duration, errorClassName, h, ms, tokens } from "./util.js";

const PAGE = 50;
// The bar's segments, left to right; queued items are the bar's empty rest.
const SEGMENTS = ["completed", "failed", "cancelled", "running"];
const COUNTS = [...SEGMENTS, "queued", "total"];
// The states an item may be in (ListMapItemsRequest.state).
const FILTERS = ["completed", "failed", "cancelled", "running", "retrying", "queued", "pending"];

/**
 * A map's progress bar in `parent`: its segments and counts keep their size and place, so an
 * update (a few a second while the map runs) changes widths and digits only, never the layout.
 * Returns update(progress) taking a MapProgress.
 */
export function mapBar(parent, nodeId) {
  const box = h("div", { class: "map-progress", "data-map": nodeId }, parent);
  h("span", { class: "map-name" }, box, nodeId);
  const bar = h("div", { class: "map-bar", role: "img", "aria-label": `map ${nodeId}: no items yet` }, box);
  const segs = Object.fromEntries(SEGMENTS.map((s) => [s, h("span", { class: `seg seg-${s}` }, bar)]));
  const counts = h("span", { class: "map-counts" }, box);
  const nums = {};
  for (const c of COUNTS) {
    const span = h("span", { class: `count count-${c}` }, counts);
    nums[c] = h("b", { "data-count": c }, span, "0");
    span.appendChild(document.createTextNode(` ${c}`));
  }
  return (p) => {
    if (!p) return;
    const total = Math.max(1, p.total);
    for (const s of SEGMENTS) segs[s].style.width = `${(100 * p[s]) / total}%`;
    for (const c of COUNTS) {
      const v = String(p[c]);
      if (nums[c].textContent !== v) nums[c].textContent = v;
    }
    bar.setAttribute("aria-label", `map ${nodeId}: ${p.completed} of ${p.total} completed, ${p.failed} failed, ${p.running} running`);
  };
}

function itemRow(it, body) {
  const tr = h("tr", { "data-item": String(it.index) }, body);
  h("td", { class: "num" }, tr, it.index);
  badge(stateName(it.state), h("td", {}, tr));
  h("td", { class: "num" }, tr, it.attempt);
  h("td", {}, tr, duration(ms(it.startTime), ms(it.endTime)));
  h("td", { class: "num" }, tr, it.usage ? `${tokens(it.usage)} · ${dollars(it.usage)}` : "");
  const out = h("td", { class: "item-out" }, tr);
  if (it.error?.message) {
    h("span", { class: "attempt-error" }, out, `${errorClassName(it.error.errorClass)}: ${it.error.message}`);
  } else if (it.output) {
    const text = JSON.stringify(valueJson(it.output));
    // Long outputs are cut in the row; the whole text is its title.
    h("code", { title: text.length > 160 ? text : "" }, out, text.length > 160 ? `${text.slice(0, 160)}…` : text);
  }
}

/** The items section of map node `nodeId`'s panel; `current()` is false once it is gone. */
export function mapItems(box, { graphId, nodeId, progress, signal, current }) {
  const sec = h("section", { class: "map-items", "data-items": nodeId }, box);
  h("h4", {}, sec, "Items");
  const update = mapBar(sec, nodeId);
  update(progress);
  const form = h("div", { class: "filters" }, sec);
  const lab = h("label", {}, form, "state ");
  const filter = h("select", { "data-item-filter": nodeId }, lab);
  h("option", { value: "0" }, filter, "any");
  for (const s of FILTERS) h("option", { value: String(NodeState[s.toUpperCase()]) }, filter, s);
  const refresh = h("button", { type: "button" }, form, "Refresh");
  const table = h("table", { class: "items", "aria-label": `items of ${nodeId}` }, sec);
  const head = h("tr", {}, h("thead", {}, table));
  for (const c of ["#", "state", "attempt", "duration", "usage", "output / error"]) h("th", { scope: "col" }, head, c);
  const body = h("tbody", {}, table);
  const nav = h("nav", { class: "pager", "aria-label": `item pages of ${nodeId}` }, sec);
  const prev = h("button", { type: "button", "data-items-prev": "" }, nav, "← Previous");
  const where = h("span", { "data-items-page": "" }, nav);
  const next = h("button", { type: "button", "data-items-next": "" }, nav, "Next →");
  const status = h("p", { class: "status-line", role: "status" }, sec);
  const tokensSeen = [""]; // the page_token of each page seen; the last is the current page's
  let nextToken = "";
  let issued = 0; // a reply older than the last request (filter or page changed) is dropped
  let loaded = 0; // when the last request was sent (ms)

  async function load() {
    const mine = ++issued;
    loaded = Date.now();
    status.textContent = "loading…";
    status.classList.remove("err");
    try {
      const resp = await dago().items(graphId, nodeId, { pageSize: PAGE, pageToken: tokensSeen.at(-1), state: Number(filter.value) }, { signal });
      if (!current() || mine !== issued) return;
      update(resp.progress);
      nextToken = resp.nextPageToken;
      body.replaceChildren();
      for (const it of resp.items) itemRow(it, body);
      if (!resp.items.length) h("td", { colspan: "6", class: "empty" }, h("tr", {}, body), "no items");
      prev.disabled = tokensSeen.length < 2;
      next.disabled = !nextToken;
      where.textContent = `page ${tokensSeen.length}`;
      status.textContent = "";
    } catch (err) {
      if (!current() || mine !== issued) return;
      status.textContent = String(err?.rawMessage ?? err?.message ?? err);
      status.classList.add("err");
    }
  }
  filter.addEventListener("change", () => {
    tokensSeen.length = 1;
    load();
  });
  refresh.addEventListener("click", load);
  next.addEventListener("click", () => {
    if (!nextToken) return;
    tokensSeen.push(nextToken);
    load();
  });
  prev.addEventListener("click", () => {
    if (tokensSeen.length > 1) tokensSeen.pop();
    load();
  });
  load();
  // Counts streaming in (map_progress) redraw the bar at once and the page of items at most
  // every 2 s: the same page, so rows change in place.
  return (p) => {
    update(p);
    if (Date.now() - loaded > 2000) load();
  };
}
