// Shared bits of the console: the client (with the API key typed in the header), elements,
// times and state names. Server text is only ever set with textContent.
import { GraphState } from "../../../clients/typescript/gen/dago/v1/execution_pb.js";
import { ErrorClass } from "../../../clients/typescript/gen/dago/v1/graph_pb.js";
import { BadRequestSchema } from "../../../clients/typescript/gen/google/rpc/error_details_pb.js";
import { el } from "../graph.js";

import { $, dago } from "../client.js";

export { $, dago };

/** An HTML element with attributes and text, appended to parent. */
export function h(name, attrs = {}, parent = null, text = null) {
  const e = el(name, attrs, parent, null);
  if (text !== null) e.textContent = String(text);
  return e;
}

export const graphStateName = (s) => (GraphState[s] ?? "UNSPECIFIED").toLowerCase();
export const errorClassName = (c) => (ErrorClass[c] ?? "UNSPECIFIED").toLowerCase();
export const TERMINAL = new Set(["completed", "failed", "cancelled"]);
export const ms = (t) => (t ? Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6) : 0);

export function when(t) {
  const v = ms(t);
  return v ? new Date(v).toISOString().replace("T", " ").slice(0, 19) : "";
}

export function duration(a, b) {
  if (!a) return "";
  const d = (b || Date.now()) - a;
  if (d < 1000) return `${d} ms`;
  if (d < 120_000) return `${(d / 1000).toFixed(1)} s`;
  return `${Math.floor(d / 60_000)} min ${Math.round((d % 60_000) / 1000)} s`;
}

/** A state badge: <span class="badge state-x" data-state="x">x</span>. */
export function badge(state, parent, attrs = {}) {
  return h("span", { class: `badge state-${state}`, "data-state": state, ...attrs }, parent, state);
}

/** Shows an error (or clears it with ""): the message of a Connect error, as text. */
export function showError(err) {
  const msg = err ? String(err?.message ?? err) : "";
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

/** Runs fn every `period` ms while the tab is visible and `alive()` holds. */
export function poll(fn, period, alive) {
  let timer = null;
  const tick = async () => {
    if (!alive()) return;
    if (document.visibilityState === "visible") {
      try {
        await fn();
      } catch (err) {
        if (alive()) showError(err);
      }
    }
    if (alive()) timer = setTimeout(tick, period);
  };
  timer = setTimeout(tick, period);
  return () => clearTimeout(timer);
}

/** A Timestamp of a datetime-local input's value (the browser's time zone); undefined if "". */
export function timestampOf(local) {
  const v = local ? new Date(local).getTime() : NaN;
  if (Number.isNaN(v)) return undefined;
  return { seconds: BigInt(Math.floor(v / 1000)), nanos: (((v % 1000) + 1000) % 1000) * 1e6 };
}

/** A datetime-local input's value for a time in ms (the browser's time zone). */
export function localInput(v) {
  const d = new Date(v - new Date(v).getTimezoneOffset() * 60_000);
  return d.toISOString().slice(0, 16);
}

export const tokens = (u) => `${Number(u?.inputTokens ?? 0)} in / ${Number(u?.outputTokens ?? 0)} out`;
export const dollars = (u) => `$${(u?.costUsd ?? 0).toFixed(4)}`;

// Connect error codes the pages treat apart.
export const INVALID_ARGUMENT = 3;
export const FAILED_PRECONDITION = 9;

/** Parses an optional JSON object field; throws a message naming the field. */
export function objectOf(text, name) {
  if (!text.trim()) return undefined;
  let v;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new Error(`${name}: not JSON: ${err.message}`);
  }
  if (v === null || typeof v !== "object" || Array.isArray(v)) throw new Error(`${name}: a JSON object is needed`);
  return v;
}

/** A server error as text: the field violations of INVALID_ARGUMENT, else its message. */
export function errorText(err) {
  const violations = typeof err?.findDetails === "function"
    ? err.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations)
    : [];
  if (violations.length) return violations.map((v) => `${v.field}: ${v.description}`).join("\n");
  return String(err?.rawMessage ?? err?.message ?? err);
}
