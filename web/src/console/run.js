// #/runs/<id>[/nodes/<node>]: a run's story. The graph (GetGraph) with its nodes' states
// (GetGraphStatus BASIC) and the taken / untaken edges (router decisions, loops, skips from
// WatchGraph); the timeline of attempts; a node's panel (ListNodeAttempts: inputs, outputs,
// errors, usage; streamed text and tool calls from the events); cancel.
import { GraphStatusView } from "../../../clients/typescript/gen/dago/v1/orchestrator_pb.js";
import { draw, edgeStates, kindOf, setEdgeStates, setNodeState, stateName } from "../graph.js";
import { drawGantt } from "./gantt.js";
import { jsonView, valueJson } from "./json.js";
import { TERMINAL, badge, dago, duration, errorClassName, graphStateName, h, ms, showError, when } from "./util.js";

const LIFECYCLE = /^(graph|node)/;

export function runPage(root, graphId, firstNode) {
  const abort = new AbortController();
  const alive = () => !abort.signal.aborted;
  const run = { graph: null, lay: null, status: null, decisions: new Map(), loops: new Set(),
    texts: new Map(), turnEnded: new Set(), tools: new Map(), failedNode: "", cancelReason: "", selected: "", shown: "" };

  h("a", { href: "#/runs", class: "back" }, root, "← runs");
  const head = h("section", { class: "run-head", "aria-label": "run" }, root);
  const title = h("h2", {}, head);
  const facts = h("p", { id: "run-facts", class: "facts" }, head);
  const errorBox = h("p", { id: "run-error", role: "alert", hidden: "" }, head);
  const io = h("details", { class: "io" }, head);
  h("summary", {}, io, "inputs and result");
  const ioGrid = h("div", { class: "io-grid" }, io);
  const inputsBox = h("section", { "aria-label": "inputs" }, ioGrid);
  h("h4", {}, inputsBox, "inputs");
  const resultBox = h("section", { id: "run-result", "aria-label": "result" }, ioGrid);
  h("h4", {}, resultBox, "result");
  h("p", { class: "hint" }, resultBox, "when the run has finished");
  const actions = h("div", { class: "actions" }, head);
  const cancel = h("button", { id: "cancel", type: "button", disabled: "" }, actions, "Cancel run…");
  const confirmBox = h("span", { class: "confirm", hidden: "" }, actions);
  const reasonLabel = h("label", {}, confirmBox, "reason ");
  const reason = h("input", { id: "cancel-reason", value: "cancelled from the console" }, reasonLabel);
  const confirm = h("button", { id: "cancel-confirm", type: "button", class: "danger" }, confirmBox, "Confirm cancel");
  const keep = h("button", { type: "button" }, confirmBox, "Keep running");
  const body = h("div", { class: "run-body" }, root);
  const graphPane = h("div", { class: "graph-pane", role: "group", "aria-label": "graph" }, body);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.id = "graph";
  graphPane.appendChild(svg);
  const panel = h("aside", { id: "node-panel", "aria-label": "node", "aria-live": "polite" }, body);
  h("p", { class: "hint" }, panel, "Select a node (click or Enter) to see its attempts, inputs and output.");
  const timeline = h("section", { class: "timeline", "aria-label": "timeline" }, root);
  h("h3", {}, timeline, "Timeline");
  const gantt = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  gantt.id = "gantt";
  timeline.appendChild(gantt);

  cancel.addEventListener("click", () => {
    confirmBox.hidden = false;
    reason.focus();
  });
  keep.addEventListener("click", () => (confirmBox.hidden = true));
  confirm.addEventListener("click", async () => {
    confirm.disabled = true;
    try {
      await dago().cancel(graphId, reason.value);
      confirmBox.hidden = true;
      await refresh();
    } catch (err) {
      showError(err);
    } finally {
      confirm.disabled = false;
    }
  });

  function renderHead() {
    const st = run.status;
    const state = graphStateName(st.state);
    title.replaceChildren();
    h("span", {}, title, `run ${graphId}${st.name ? ` · ${st.name}` : ""} `);
    badge(state, title, { id: "run-state" });
    const u = st.usage;
    facts.textContent = [
      `created ${when(st.createTime)}`,
      `duration ${duration(ms(st.startTime) || ms(st.createTime), ms(st.endTime))}`,
      `${st.steps} steps`,
      u ? `tokens ${u.inputTokens} in / ${u.outputTokens} out · $${u.costUsd.toFixed(4)}` : "",
      st.namespace ? `namespace ${st.namespace}` : "",
    ].filter(Boolean).join(" · ");
    cancel.disabled = TERMINAL.has(state);
    if (TERMINAL.has(state)) confirmBox.hidden = true;
    errorBox.replaceChildren();
    errorBox.hidden = !(st.error?.message || state === "cancelled");
    if (state === "cancelled") {
      errorBox.textContent = `Cancelled${run.cancelReason ? `: ${run.cancelReason}` : ""}`;
    } else if (st.error?.message) {
      const node = run.failedNode || st.nodes.find((n) => stateName(n.state) === "failed")?.nodeId;
      errorBox.appendChild(document.createTextNode("Failed"));
      if (node) {
        errorBox.appendChild(document.createTextNode(" at node "));
        h("a", { href: `#/runs/${encodeURIComponent(graphId)}/nodes/${encodeURIComponent(node)}`, "data-failed-node": node }, errorBox, node);
      }
      errorBox.appendChild(document.createTextNode(`: ${errorClassName(st.error.errorClass)}: ${st.error.message}`));
    }
  }

  async function showResult() {
    run.result = true;
    const res = await dago().result(graphId, { signal: abort.signal });
    resultBox.replaceChildren();
    h("h4", {}, resultBox, "result");
    jsonView(res.output, resultBox, "result");
  }

  function renderGraphStates() {
    const states = new Map();
    for (const n of run.status.nodes) {
      const s = stateName(n.state);
      states.set(n.nodeId, s);
      const last = n.attempts.at(-1);
      let meta = s;
      if (n.attempt > 1) meta += ` · attempt ${n.attempt}`;
      if (last && ms(last.startTime) && ms(last.endTime)) meta += ` · ${duration(ms(last.startTime), ms(last.endTime))}`;
      if (n.route) meta += ` · ${n.route}`;
      setNodeState(svg, n.nodeId, s, meta);
    }
    setEdgeStates(svg, edgeStates(run.graph, run.lay, states, run.decisions, run.loops));
  }

  const renderGantt = () => drawGantt(gantt, run.graph, run.status, Math.max(600, timeline.clientWidth - 8), select);

  let fetching = null;
  let again = false;
  async function refresh() {
    if (fetching) {
      again = true;
      return fetching;
    }
    fetching = (async () => {
      do {
        again = false;
        const { status } = await dago().status(graphId, { signal: abort.signal }, GraphStatusView.BASIC);
        if (!alive()) return;
        const before = run.status?.nodes.find((n) => n.nodeId === run.selected);
        run.status = status;
        renderHead();
        if (TERMINAL.has(graphStateName(status.state)) && !run.result) showResult();
        renderGraphStates();
        renderGantt();
        const after = status.nodes.find((n) => n.nodeId === run.selected);
        if (run.selected && (!before || before.state !== after?.state || before.attempts.length !== after?.attempts.length)) {
          renderPanel();
        }
      } while (again && alive());
    })().finally(() => (fetching = null));
    return fetching;
  }

  let timer = null;
  const soon = () => (timer ??= setTimeout(() => {
    timer = null;
    refresh().catch((err) => alive() && showError(err));
  }, 400));

  function select(nodeId) {
    run.selected = nodeId;
    const hash = `#/runs/${encodeURIComponent(graphId)}/nodes/${encodeURIComponent(nodeId)}`;
    if (window.location.hash !== hash) history.replaceState(null, "", hash);
    for (const g of svg.querySelectorAll(".node.selected")) g.classList.remove("selected");
    svg.querySelector(`[data-node="${CSS.escape(nodeId)}"]`)?.classList.add("selected");
    renderPanel();
  }

  async function renderPanel() {
    const nodeId = run.selected;
    const node = run.graph.nodes.find((n) => n.id === nodeId);
    if (!node) return;
    const status = run.status?.nodes.find((n) => n.nodeId === nodeId);
    const box = h("div", { "data-panel": nodeId });
    const hd = h("h3", {}, box, `${nodeId} · ${kindOf(node)} `);
    badge(stateName(status?.state ?? 0), hd, { id: "node-state" });
    if (node.description) h("p", { class: "hint" }, box, node.description);
    const decision = run.decisions.get(nodeId);
    if (status?.route) h("p", { class: "route" }, box, `route ${status.route}${decision ? ` → ${decision.join(", ")}` : ""}`);
    const stream = h("section", { class: "stream" }, box);
    h("h4", {}, stream, "Streamed text");
    h("pre", { "data-stream": nodeId }, stream, run.texts.get(nodeId) ?? "");
    stream.hidden = !run.texts.get(nodeId);
    const tools = h("section", { class: "tools" }, box);
    h("h4", {}, tools, "Tool calls");
    renderTools(nodeId, h("ol", { "data-tools": nodeId }, tools));
    tools.hidden = !(run.tools.get(nodeId)?.length);
    h("h4", {}, box, "Attempts");
    const list = h("div", { class: "attempts", "data-attempts": nodeId }, box, "loading…");
    panel.replaceChildren(box);
    try {
      const { attempts, nextPageToken } = await dago().attempts(graphId, nodeId, { pageSize: 50 }, { signal: abort.signal });
      if (run.selected !== nodeId || !alive()) return;
      list.replaceChildren();
      if (!attempts.length) h("p", { class: "hint" }, list, "no attempt yet");
      attempts.forEach((a, i) => renderAttempt(a, list, i === attempts.length - 1));
      if (nextPageToken) h("p", { class: "hint" }, list, "more attempts: the first 50 are shown");
    } catch (err) {
      if (alive()) list.textContent = String(err?.message ?? err);
    }
  }

  function renderAttempt(a, parent, last) {
    const state = stateName(a.state);
    const open = last || Boolean(a.error?.message);
    const d = h("details", { class: "attempt", "data-attempt": String(a.attempt), ...(open ? { open: "" } : {}) }, parent);
    const s = h("summary", {}, d, `attempt ${a.attempt}${a.iteration > 1 ? ` · iteration ${a.iteration}` : ""} `);
    badge(state, s);
    const facts = [duration(ms(a.startTime), ms(a.endTime)), a.workerId ? `worker ${a.workerId}` : ""];
    if (a.usage && (a.usage.inputTokens || a.usage.outputTokens || a.usage.costUsd)) {
      facts.push(`tokens ${a.usage.inputTokens} in / ${a.usage.outputTokens} out`, `$${a.usage.costUsd.toFixed(4)}`);
    }
    h("p", { class: "facts" }, d, facts.filter(Boolean).join(" · "));
    if (a.error?.message) {
      h("p", { class: "attempt-error" }, d, `${errorClassName(a.error.errorClass)}: ${a.error.message}${a.error.retryable ? " (retryable)" : ""}`);
    }
    h("h5", {}, d, "input");
    jsonView(valueJson(a.input), d, "input");
    h("h5", {}, d, "output");
    jsonView(valueJson(a.output), d, "output").setAttribute("data-output", String(a.attempt));
  }

  function renderTools(nodeId, ol) {
    ol.replaceChildren();
    for (const t of run.tools.get(nodeId) ?? []) {
      const li = h("li", {}, ol, `${t.tool}(${JSON.stringify(t.args ?? null)})`);
      if (t.error) h("span", { class: "attempt-error" }, li, ` → error: ${t.error}`);
      else if (t.done) h("span", {}, li, ` → ${JSON.stringify(t.result ?? null)}`);
    }
  }

  function onEvent(ev) {
    const p = ev.payload;
    const id = ev.nodeId;
    switch (p.case) {
      case "routerDecision":
        run.decisions.set(id, p.value.targets);
        break;
      case "loopIteration":
        if (!p.value.exhausted) run.loops.add(`${p.value.fromNodeId}->${id}`);
        break;
      case "graphFailed":
        run.failedNode = p.value.failedNodeId;
        break;
      case "graphCancelled":
        run.cancelReason = p.value.reason;
        break;
      case "llmDelta": {
        // A model turn after tool calls starts on a new line.
        const before = run.texts.get(id) ?? "";
        const sep = run.turnEnded.delete(id) && before && !before.endsWith("\n") ? "\n" : "";
        run.texts.set(id, before + sep + p.value.text);
        const pre = panel.querySelector(`[data-stream="${CSS.escape(id)}"]`);
        if (pre) {
          pre.textContent = run.texts.get(id);
          pre.parentElement.hidden = false;
        }
        return;
      }
      case "toolCall":
      case "toolResult": {
        run.turnEnded.add(id);
        const list = run.tools.get(id) ?? run.tools.set(id, []).get(id);
        if (p.case === "toolCall") list.push({ callId: p.value.callId, tool: p.value.tool, args: valueJson(p.value.arguments) });
        else {
          const call = list.find((c) => c.callId === p.value.callId) ?? list[list.push({ tool: p.value.tool }) - 1];
          Object.assign(call, { done: true, result: valueJson(p.value.result), error: p.value.error });
        }
        const ol = panel.querySelector(`[data-tools="${CSS.escape(id)}"]`);
        if (ol) {
          renderTools(id, ol);
          ol.parentElement.hidden = false;
        }
        return;
      }
      default:
        break;
    }
    if (LIFECYCLE.test(p.case ?? "") || p.case === "routerDecision" || p.case === "loopIteration") soon();
  }

  (async () => {
    try {
      const { graph, inputs } = await dago().graph(graphId, { signal: abort.signal });
      run.graph = graph;
      jsonView(inputs, inputsBox, "inputs");
      run.lay = draw(svg, graph, select);
      await refresh();
      if (firstNode) select(firstNode);
      const ticker = setInterval(() => run.status && !TERMINAL.has(graphStateName(run.status.state)) && renderGantt(), 1000);
      try {
        for await (const ev of dago().watch(graphId, { signal: abort.signal })) onEvent(ev);
      } finally {
        clearInterval(ticker);
      }
      if (alive()) await refresh();
    } catch (err) {
      if (alive()) showError(err);
    }
  })();

  return () => {
    abort.abort();
    clearTimeout(timer);
  };
}
