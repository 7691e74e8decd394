// The decision widget of a waiting wait node, shared by the live view (/ui/) and the console
// (/console/: the approvals inbox and a run's node panel): the prompt, the display, a payload
// editor (JSON, checked before sending) when the node has a payload_schema, a comment, one
// <button> per decision and a status line (aria-live). A click sends SignalGraph with a fresh
// signal_id; the server's refusals are shown as text: INVALID_ARGUMENT's field violations by
// field, ABORTED's winning decision, FAILED_PRECONDITION's message. Server text is only ever
// set with textContent.
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "../../clients/typescript/gen/google/rpc/error_details_pb.js";
import { dago } from "./client.js";
import { el } from "./graph.js";

const h = (name, attrs, parent, text) => {
  const e = el(name, attrs ?? {}, parent ?? null, null);
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
};

let styled = false;
function styles() {
  if (styled) return;
  styled = true;
  const s = document.createElement("style");
  s.textContent = `
.decide { border: 1px solid #ce93d8; background: #faf5fb; padding: .4rem .6rem; margin: .3rem 0; }
.decide-prompt { font-weight: 600; margin: .1rem 0 .3rem; white-space: pre-wrap; overflow-wrap: anywhere; }
.decide-display { margin: 0 0 .3rem; }
.decide-display pre { white-space: pre-wrap; margin: 0; font-size: 12px; max-height: 12rem; overflow: auto;
  background: #f5f5f5; padding: .2rem .4rem; }
.decide label { display: block; font-size: .85rem; margin-top: .3rem; }
.decide textarea { width: 100%; box-sizing: border-box; font: 12px/1.35 ui-monospace, monospace; min-height: 4.5rem; }
.decide textarea[aria-invalid="true"] { border-color: #c62828; outline-color: #c62828; }
.decide input.decide-comment { width: 100%; box-sizing: border-box; }
.decide-schema summary { cursor: pointer; font-size: .8rem; color: #555; }
.decide-schema pre { font-size: 11px; margin: 0; white-space: pre-wrap; }
.decide-buttons { display: flex; gap: .5rem; flex-wrap: wrap; margin-top: .4rem; }
.decide-buttons button { font-size: .9rem; padding: .2rem .8rem; cursor: pointer; }
.decide-buttons button[aria-pressed="true"] { font-weight: bold; outline: 2px solid #6a1b9a; }
.decide-error { color: #c62828; font-weight: bold; margin: .2rem 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.decide-error:empty { display: none; }
.decide-status { min-height: 1.4em; margin: .3rem 0 0; font-size: .9rem; }
.decide-status[data-outcome="decided"] { color: #1b5e20; font-weight: 600; }
.decide-status[data-outcome="refused"] { color: #c62828; }
.decide-meta { color: #666; font-size: .8rem; margin: 0; }
`;
  document.head.appendChild(s);
}

/** The default display: indented JSON in a <pre>. */
function preJson(value, parent) {
  h("pre", {}, parent, JSON.stringify(value, null, 2));
}

/** A one-line description of a signal_received (or a SignalGraph answer). */
export function decisionText(d) {
  const by = d.timedOut ? "by its timeout" : d.actor ? `by ${d.actor}` : "";
  return `decided: ${d.decision}${by ? ` ${by}` : ""}${d.comment ? ` · “${d.comment}”` : ""}`;
}

/**
 * Draws the widget of one waiting node into `parent`.
 * wait: {graphId, nodeId, iteration, prompt, display (plain JSON object), decisions,
 *        payloadSchema (JSON text, "" for none), deadline (ms, 0 for none)}
 * options: {showDisplay(value, parent) (default: <pre> JSON), onSent(response),
 *           label (what the buttons' accessible names say the node is)}
 * Returns {root, decided(d), close(why)}: decided() shows a decision (a signal_received) and
 * disables the buttons; close() disables them with a reason (the run ended undecided).
 */
export function decisionWidget(parent, wait, options = {}) {
  styles();
  const { graphId, nodeId } = wait;
  const decisions = wait.decisions?.length ? wait.decisions : ["approve", "reject"];
  const uid = `decide-${Math.random().toString(36).slice(2, 10)}`;
  const label = options.label ?? `node ${nodeId}`;
  const root = h("section", {
    class: "decide", "data-decide": nodeId, "data-graph": graphId, "aria-label": `decision for ${label}`,
  }, parent);
  h("p", { class: "decide-prompt", id: `${uid}-prompt` }, root, wait.prompt || "(no prompt)");
  const display = wait.display && Object.keys(wait.display).length ? wait.display : null;
  if (display) (options.showDisplay ?? preJson)(display, h("div", { class: "decide-display", "aria-label": "display" }, root));
  const facts = [];
  if (wait.iteration > 1) facts.push(`iteration ${wait.iteration}`);
  if (wait.deadline) facts.push(`decided by its timeout at ${new Date(wait.deadline).toISOString().replace("T", " ").slice(0, 19)}`);
  if (facts.length) h("p", { class: "decide-meta" }, root, facts.join(" · "));

  let editor = null;
  const fieldError = h("p", { class: "decide-error", id: `${uid}-error`, role: "alert" }, null);
  if (wait.payloadSchema) {
    h("label", { for: `${uid}-payload` }, root, "payload (JSON; left empty, none is sent)");
    editor = h("textarea", {
      id: `${uid}-payload`, class: "decide-payload", spellcheck: "false", rows: "4",
      placeholder: "{ ... }", "aria-describedby": `${uid}-error ${uid}-schema`,
    }, root);
    editor.addEventListener("input", () => {
      editor.removeAttribute("aria-invalid");
      fieldError.textContent = "";
    });
    const schema = h("details", { class: "decide-schema", id: `${uid}-schema` }, root);
    h("summary", {}, schema, "payload schema");
    let pretty = wait.payloadSchema;
    try {
      pretty = JSON.stringify(JSON.parse(wait.payloadSchema), null, 2);
    } catch {
      // shown as sent
    }
    h("pre", {}, schema, pretty);
  }
  root.appendChild(fieldError);
  h("label", { for: `${uid}-comment` }, root, "comment (optional)");
  const comment = h("input", { id: `${uid}-comment`, class: "decide-comment", type: "text", autocomplete: "off" }, root);
  const buttons = h("div", { class: "decide-buttons", role: "group", "aria-label": `decisions for ${label}` }, root);
  const status = h("p", { class: "decide-status", role: "status", "aria-live": "polite" }, root);
  let done = false;

  const setBusy = (busy) => {
    for (const b of buttons.querySelectorAll("button")) b.disabled = busy || done;
  };

  function decided(d) {
    done = true;
    for (const b of buttons.querySelectorAll("button")) {
      b.disabled = true;
      b.setAttribute("aria-pressed", String(b.dataset.decision === d.decision));
    }
    if (editor) editor.readOnly = true;
    comment.readOnly = true;
    fieldError.textContent = "";
    status.dataset.outcome = "decided";
    status.textContent = decisionText(d);
    root.dataset.decided = d.decision;
  }

  /** The node no longer waits without a decision (its run ended): the buttons go off. */
  function close(why) {
    if (done) return;
    done = true;
    setBusy(true);
    if (editor) editor.readOnly = true;
    comment.readOnly = true;
    status.dataset.outcome = "closed";
    status.textContent = why;
  }

  async function send(decision) {
    fieldError.textContent = "";
    editor?.removeAttribute("aria-invalid");
    let payload;
    if (editor) {
      const text = editor.value.trim();
      if (text) {
        try {
          payload = JSON.parse(text);
        } catch (err) {
          editor.setAttribute("aria-invalid", "true");
          fieldError.textContent = `payload: not valid JSON (${err.message})`;
          editor.focus();
          return;
        }
      }
    }
    setBusy(true);
    status.dataset.outcome = "sending";
    status.textContent = `sending ${decision}…`;
    try {
      const res = await dago().signal(graphId, nodeId, decision, {
        payload,
        signalId: `ui-${crypto.randomUUID()}`,
        comment: comment.value.trim(),
        iteration: wait.iteration ?? 0,
        // An agent's tool call approval (display {tool, arguments, id}): decide that call,
        // never the next one if it was decided meanwhile (ignored for wait nodes).
        toolCallId: agentCallId(wait.display),
      });
      decided({ decision: res.decision, actor: res.actor, comment: comment.value.trim() });
      options.onSent?.(res);
    } catch (err) {
      refused(ConnectError.from(err));
      setBusy(false);
    }
  }

  function refused(e) {
    status.dataset.outcome = "refused";
    if (e.code === Code.InvalidArgument) {
      const violations = e.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations);
      const lines = violations.length ? violations.map((v) => `${v.field}: ${v.description}`) : [e.rawMessage];
      fieldError.textContent = lines.join("\n");
      if (editor && violations.some((v) => v.field.startsWith("payload"))) {
        editor.setAttribute("aria-invalid", "true");
        editor.focus();
      }
      status.textContent = "refused: see the error above";
    } else if (e.code === Code.Aborted) {
      const info = e.findDetails(ErrorInfoSchema).find((i) => i.reason === "SIGNAL_CONFLICT");
      if (info) {
        decided({
          decision: info.metadata.decision,
          actor: info.metadata.actor,
          timedOut: info.metadata.timed_out === "true",
        });
        status.textContent = `already ${decisionText({ ...info.metadata, timedOut: info.metadata.timed_out === "true" })}`;
      } else {
        status.textContent = e.rawMessage;
      }
    } else {
      status.textContent = `refused: ${e.rawMessage}`;
    }
  }

  for (const d of decisions) {
    const b = h("button", {
      type: "button", "data-decision": d, "aria-label": `${d} (${label})`,
      "aria-describedby": `${uid}-prompt`,
    }, buttons, d);
    b.addEventListener("click", () => send(d));
  }
  return { root, decided, close };
}

/** The widget's wait from a node_waiting event's payload (NodeWaiting) and the event. */
export function waitOfEvent(ev) {
  const p = ev.payload.value;
  const dl = p.deadline ? Number(p.deadline.seconds) * 1000 + Math.floor(p.deadline.nanos / 1e6) : 0;
  return {
    graphId: ev.graphId,
    nodeId: ev.nodeId,
    iteration: ev.iteration,
    prompt: p.prompt,
    display: p.display,
    decisions: p.decisions,
    payloadSchema: p.payloadSchema,
    deadline: dl,
  };
}

/** The tool call id of an agent's approval wait (its display is {tool, arguments, id}). */
function agentCallId(display) {
  const d = display ?? {};
  return typeof d.id === "string" && typeof d.tool === "string" && "arguments" in d ? d.id : "";
}
