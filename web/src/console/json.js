// A small JSON viewer: objects and arrays fold (<details>), leaves are coloured by type.
// Everything is set as text: outputs are untrusted.
import { toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { h } from "./util.js";

/** The plain JSON of a google.protobuf.Value message (undefined when unset). */
export const valueJson = (v) => (v ? toJson(ValueSchema, v) : undefined);

const BIG = 200;

function leaf(v, parent) {
  const type = v === null ? "null" : typeof v;
  return h("span", { class: `j-${type}` }, parent, type === "string" ? JSON.stringify(v) : String(v));
}

function node(v, parent, depth) {
  if (v === null || typeof v !== "object") return leaf(v, parent);
  const entries = Array.isArray(v) ? v.map((x, i) => [i, x]) : Object.entries(v);
  const open = Array.isArray(v) ? "[" : "{";
  if (!entries.length) return h("span", { class: "j-empty" }, parent, Array.isArray(v) ? "[]" : "{}");
  // A large collection (a map's 10,000 items) starts folded and is drawn when opened, BIG
  // entries at a time: drawing it whole would take seconds and a hundred thousand elements.
  const big = entries.length > BIG;
  const d = h("details", depth < 2 && !big ? { open: "" } : {}, parent);
  h("summary", {}, d, `${open} ${entries.length} ${Array.isArray(v) ? "items" : "keys"}`);
  const list = h("ul", {}, d);
  let drawn = 0;
  const more = () => {
    list.querySelector(":scope > li.j-more")?.remove();
    for (const [k, x] of entries.slice(drawn, drawn + BIG)) {
      const li = h("li", {}, list);
      h("span", { class: "j-key" }, li, Array.isArray(v) ? `${k}: ` : `${JSON.stringify(k)}: `);
      node(x, li, depth + 1);
    }
    drawn = Math.min(entries.length, drawn + BIG);
    if (drawn < entries.length) {
      const b = h("button", { type: "button" }, h("li", { class: "j-more" }, list), `${entries.length - drawn} more…`);
      b.addEventListener("click", more);
    }
  };
  if (!big) more();
  else d.addEventListener("toggle", () => d.open && !drawn && more());
  return d;
}

/** Renders `value` (plain JSON) into parent as a JSON viewer; "—" when undefined. */
export function jsonView(value, parent, label) {
  const box = h("div", { class: "json", "aria-label": label }, parent);
  if (value === undefined) h("span", { class: "j-none" }, box, "—");
  else node(value, box, 0);
  return box;
}
