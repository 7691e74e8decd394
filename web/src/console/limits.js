// "Raise limits…" on a run's page: new max_tokens / max_cost_usd for the run
// (UpdateGraphLimits); a run its budget paused resumes. The server's refusal (a limit below
// what the run has used and reserved, a bad value) is shown under the inputs, naming the field.
import { dago, errorText, h } from "./util.js";

/** The button in `actions`, its form in `parent`; update(status, state) follows the run. */
export function limitsDialog(actions, parent, graphId, after) {
  const open = h("button", { id: "raise-limits", type: "button", disabled: "" }, actions, "Raise limits…");
  const form = h("form", { id: "limits-form", class: "limits-form", "aria-label": "raise the run's limits", hidden: "" }, parent);
  const tokensLabel = h("label", {}, form, "max tokens ");
  const tokens = h("input", { id: "limit-tokens", type: "number", min: "0", step: "1" }, tokensLabel);
  const costLabel = h("label", {}, form, "max cost $ ");
  const cost = h("input", { id: "limit-cost", type: "number", min: "0", step: "any" }, costLabel);
  const apply = h("button", { id: "limits-apply", type: "submit" }, form, "Apply");
  const close = h("button", { type: "button" }, form, "Close");
  h("span", { class: "hint" }, form, "empty or 0 keeps a limit");
  const said = h("p", { id: "limits-status", class: "status-line", role: "status" }, form);
  let last = null;

  open.addEventListener("click", () => {
    form.hidden = false;
    const l = last?.limits;
    tokens.value = l && Number(l.maxTokens) ? String(l.maxTokens) : "";
    cost.value = l?.maxCostUsd ? String(l.maxCostUsd) : "";
    said.textContent = "";
    (cost.value ? cost : tokens).focus();
  });
  close.addEventListener("click", () => (form.hidden = true));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    said.classList.remove("err");
    let limits;
    try {
      // A token count is an int64: BigInt refuses a fraction, which the server would too.
      limits = { maxTokens: tokens.value ? BigInt(tokens.value) : 0n, maxCostUsd: cost.value ? Number(cost.value) : 0 };
    } catch {
      said.textContent = "limits.max_tokens: a whole number is needed";
      said.classList.add("err");
      return;
    }
    apply.disabled = true;
    try {
      const resp = await dago().updateLimits(graphId, limits);
      said.textContent = resp.resumed ? "limits raised: the run resumed" : "limits raised";
      await after();
    } catch (err) {
      said.textContent = errorText(err);
      said.classList.add("err");
    } finally {
      apply.disabled = false;
    }
  });

  return {
    update(status, state) {
      last = status;
      const done = ["completed", "failed", "cancelled"].includes(state);
      open.disabled = done;
      open.classList.toggle("attention", state === "paused");
      if (done) form.hidden = true;
    },
  };
}
