// The "Fork…" dialog of a finished run's page (ForkGraph): run again from chosen nodes (or
// the failed ones) with optional node and inputs patches (JSON, checked before sending).
// "Preview" asks for the plan (dry_run): nodes reused / to run, cost saved and estimated;
// "Fork" is enabled only once the preview of the form as it is now has been shown, and
// sends one request_id per dialog (a retry is the same fork), then opens the new run.
import { dago, errorText, h, objectOf } from "./util.js";

const usd = (v) => `$${Number(v ?? 0).toFixed(4)}`;

/**
 * Adds the Fork… button to `actions` and its dialog to `parent`. `nodes()` is the run's node
 * ids, `selected()` the node whose panel is open; returns { setEnabled(bool) }.
 */
export function forkDialog(actions, parent, graphId, { nodes, selected }) {
  const open = h("button", { id: "fork", type: "button", disabled: "", "aria-haspopup": "dialog" }, actions, "Fork…");
  const dlg = h("dialog", { id: "fork-dialog", "aria-labelledby": "fork-title" }, parent);
  const form = h("form", { method: "dialog" }, dlg);
  h("h3", { id: "fork-title" }, form, `Fork run ${graphId}`);
  const mode = h("fieldset", {}, form);
  h("legend", {}, mode, "Run again");
  const fromLabel = h("label", {}, mode);
  const fromRadio = h("input", { type: "radio", name: "fork-mode", value: "from", id: "fork-mode-from", checked: "" }, fromLabel);
  fromLabel.appendChild(document.createTextNode(" from these nodes (and what is downstream):"));
  const boxes = h("div", { id: "fork-nodes", class: "fork-nodes", role: "group", "aria-label": "nodes to run again" }, mode);
  const failedLabel = h("label", {}, mode);
  const failedRadio = h("input", { type: "radio", name: "fork-mode", value: "failed", id: "fork-mode-failed" }, failedLabel);
  failedLabel.appendChild(document.createTextNode(" failed only (failed, cancelled or skipped nodes)"));
  const patchLabel = h("label", { for: "fork-node-patches" }, form, 'Node patches (JSON, optional: {"<node id>": {partial node}})');
  const nodePatches = h("textarea", { id: "fork-node-patches", rows: "4", cols: "60", spellcheck: "false" }, form);
  h("label", { for: "fork-inputs-patch" }, form, "Inputs patch (JSON merge patch, optional)");
  const inputsPatch = h("textarea", { id: "fork-inputs-patch", rows: "3", cols: "60", spellcheck: "false" }, form);
  patchLabel.style.display = "block";
  const err = h("p", { id: "fork-error", class: "fork-error", role: "alert", hidden: "" }, form);
  const plan = h("section", { id: "fork-plan", "aria-label": "plan", "aria-live": "polite", hidden: "" }, form);
  const buttons = h("div", { class: "actions" }, form);
  const preview = h("button", { id: "fork-preview", type: "button" }, buttons, "Preview");
  const go = h("button", { id: "fork-go", type: "button", disabled: "" }, buttons, "Fork");
  const close = h("button", { id: "fork-close", type: "button" }, buttons, "Close");

  let requestId = "";
  let previewed = null; // the request the shown preview is of (JSON text)

  const showErr = (text) => {
    err.textContent = text;
    err.hidden = !text;
  };

  function request() {
    const req = {};
    if (failedRadio.checked) req.failedOnly = true;
    else {
      req.fromNodes = [...boxes.querySelectorAll("input:checked")].map((b) => b.value);
      if (!req.fromNodes.length) throw new Error("choose at least one node, or failed only");
    }
    const np = objectOf(nodePatches.value, "node patches");
    if (np) req.nodePatches = np;
    const ip = objectOf(inputsPatch.value, "inputs patch");
    if (ip) req.inputsPatch = ip;
    return req;
  }

  // Any change of the form hides the preview: Fork needs a preview of what it sends.
  form.addEventListener("input", () => {
    previewed = null;
    go.disabled = true;
    plan.hidden = true;
  });

  open.addEventListener("click", () => {
    boxes.replaceChildren();
    const sel = selected();
    for (const id of nodes()) {
      const l = h("label", { class: "fork-node" }, boxes);
      h("input", { type: "checkbox", value: id, "data-fork-node": id, ...(id === sel ? { checked: "" } : {}) }, l);
      l.appendChild(document.createTextNode(` ${id} `));
    }
    if (!requestId) requestId = `console-${crypto.randomUUID()}`;
    previewed = null;
    go.disabled = true;
    plan.hidden = true;
    showErr("");
    dlg.showModal();
    (failedRadio.checked ? failedRadio : fromRadio).focus();
  });
  close.addEventListener("click", () => dlg.close());

  preview.addEventListener("click", async () => {
    showErr("");
    let req;
    try {
      req = request();
    } catch (e) {
      showErr(e.message);
      return;
    }
    preview.disabled = true;
    try {
      const r = await dago().fork(graphId, { ...req, dryRun: true });
      plan.replaceChildren();
      h("h4", {}, plan, "Plan");
      const dl = h("dl", {}, plan);
      const row = (k, v, key) => {
        h("dt", {}, dl, k);
        h("dd", { "data-plan": key }, dl, v);
      };
      row("reused", r.reusedNodes.join(", ") || "none", "reused");
      row("run again", r.runNodes.join(", ") || "none", "run");
      row("cost saved", usd(r.costSavedUsd), "saved");
      row("estimated cost", usd(r.costEstimateUsd), "estimate");
      // failed_only: a map node runs again its failed items only, its completed ones reused.
      for (const m of r.mapItems ?? []) row(`map ${m.nodeId}`, `${m.itemsReused} items reused, ${m.itemsToRun} to run`, `map-${m.nodeId}`);
      plan.hidden = false;
      previewed = JSON.stringify(req);
      go.disabled = false;
    } catch (e) {
      showErr(errorText(e));
    } finally {
      preview.disabled = false;
    }
  });

  go.addEventListener("click", async () => {
    showErr("");
    let req;
    try {
      req = request();
    } catch (e) {
      showErr(e.message);
      return;
    }
    if (JSON.stringify(req) !== previewed) {
      go.disabled = true;
      showErr("preview first");
      return;
    }
    go.disabled = true;
    try {
      const r = await dago().fork(graphId, { ...req, requestId });
      dlg.close();
      window.location.hash = `#/runs/${encodeURIComponent(r.graphId)}`;
    } catch (e) {
      showErr(errorText(e));
      go.disabled = false;
    }
  });

  return { setEnabled: (on) => (open.disabled = !on) };
}
