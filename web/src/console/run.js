// #/runs/<id>[/nodes/<node>]: a run's story. The graph (GetGraph) with its nodes' states
// (GetGraphStatus BASIC) and the taken / untaken edges (router decisions, loops, skips from
// WatchGraph); the timeline of attempts; a node's panel (ListNodeAttempts: inputs, outputs,
// errors, usage; streamed text and tool calls from the events); cancel; fork (fork.js),
// "forked from" and reused nodes marked.
import { GraphStatusView } from "../../../clients/typescript/gen/dago/v1/orchestrator_pb.js";
import { draw, edgeStates, nodeElement, setEdgeStates, setNodeState, stateName } from "../graph.js";
import { waitOfEvent } from "../decide.js";
import { drawGantt } from "./gantt.js";
import { jsonView, valueJson } from "./json.js";
import { forkDialog } from "./fork.js";
import { limitsDialog } from "./limits.js";
import { mapBar } from "./mapitems.js";
import { nodePanel, renderTools } from "./panel.js";
import { TERMINAL, badge, dago, duration, errorClassName, graphStateName, h, ms, showError, when } from "./util.js";

const LIFECYCLE = /^(graph|node|budget|child)/;
// The share of a map's items that have ended (the larger one wins: a status reply may be
// older than the last map_progress event).
const ended = (p) => (p ? p.completed + p.failed + p.cancelled : -1);

const fmt = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(4));

/** The run's token and cost limits with what its running model calls hold of them. */
function limitText(st) {
  const l = st.limits;
  const parts = [];
  if (l && Number(l.maxTokens)) parts.push(`max tokens ${l.maxTokens}`);
  if (l?.maxCostUsd) parts.push(`max cost $${l.maxCostUsd}`);
  const r = st.reserved;
  if (r && (Number(r.inputTokens) || r.costUsd)) parts.push(`reserved ${r.inputTokens} tokens / $${r.costUsd.toFixed(4)}`);
  return parts.join(" · ");
}

export function runPage(root, graphId, firstNode) {
  const abort = new AbortController();
  const alive = () => !abort.signal.aborted;
  const run = { graph: null, lay: null, status: null, decisions: new Map(), loops: new Set(),
    texts: new Map(), maps: new Map(), mapBars: new Map(), panelBar: null, turnEnded: new Set(), tools: new Map(), waits: new Map(), signalled: new Map(), failedNode: "", cancelReason: "", selected: "", shown: "" };

  h("a", { href: "#/runs", class: "back" }, root, "← runs");
  const head = h("section", { class: "run-head", "aria-label": "run" }, root);
  const title = h("h2", {}, head);
  const facts = h("p", { id: "run-facts", class: "facts" }, head);
  const definedBy = h("p", { id: "run-definition", class: "facts", hidden: "" }, head);
  const forkedFrom = h("p", { id: "forked-from", class: "facts", hidden: "" }, head);
  const parentOf = h("p", { id: "run-parent", class: "facts", hidden: "" }, head);
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
  const fork = forkDialog(actions, head, graphId, {
    nodes: () => run.graph?.nodes.map((n) => n.id) ?? [],
    selected: () => run.selected,
  });
  const limits = limitsDialog(actions, head, graphId, () => refresh());
  h("a", { href: `../ui/#${encodeURIComponent(graphId)}`, class: "live-link" }, actions, "open in the live view");
  // What the run's budgets, rate limits and child runs did (from its events).
  const story = h("ol", { id: "run-story", "aria-label": "budget, throttle and child run events", hidden: "" }, head);
  // One progress bar per map node, made with the graph (before any count): no jump later.
  const maps = h("section", { id: "map-bars", "aria-label": "map progress", hidden: "" }, root);
  const body = h("div", { class: "run-body" }, root);
  const graphPane = h("div", { class: "graph-pane", role: "group", "aria-label": "graph" }, body);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.id = "graph";
  svg.setAttribute("aria-label", "the run's graph: nodes coloured by state, taken edges green, untaken dashed");
  graphPane.appendChild(svg);
  const panel = h("aside", { id: "node-panel", "aria-label": "node", "aria-live": "polite" }, body);
  h("p", { class: "hint" }, panel, "Select a node (click or Enter) to see its attempts, inputs and output.");
  const timeline = h("section", { class: "timeline", "aria-label": "timeline" }, root);
  h("h3", {}, timeline, "Timeline");
  const gantt = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  gantt.id = "gantt";
  gantt.setAttribute("role", "group");
  gantt.setAttribute("aria-label", "timeline: one bar per node attempt, from its start to its end (Enter opens its node)");
  timeline.appendChild(gantt);
  const events = h("details", { class: "events" }, root);
  const eventsTitle = h("summary", {}, events, "events");
  const eventLog = h("pre", { id: "event-log" }, events);
  let logged = 0;

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
      st.priority ? `priority ${st.priority}` : "",
      limitText(st),
    ].filter(Boolean).join(" · ");
    limits.update(st, state);
    // A child run (a subgraph node's): its parent run and node, linked.
    parentOf.hidden = !st.parentGraphId;
    if (st.parentGraphId && !parentOf.firstChild) {
      parentOf.appendChild(document.createTextNode("child of "));
      h("a", { href: `#/runs/${encodeURIComponent(st.parentGraphId)}/nodes/${encodeURIComponent(st.parentNodeId)}`, "data-parent": st.parentGraphId }, parentOf, st.parentGraphId);
      parentOf.appendChild(document.createTextNode(` (node ${st.parentNodeId}${st.depth > 1 ? `, depth ${st.depth}` : ""})`));
    }
    // The definition version the run ran, linked to it on the Definitions page.
    const def = st.definition;
    definedBy.hidden = !def?.name;
    if (def?.name && !definedBy.firstChild) {
      const ref = `${def.name}@${def.version}`;
      definedBy.appendChild(document.createTextNode("definition "));
      h("a", { href: `#/definitions/${encodeURIComponent(def.name)}/versions/${def.version}`, "data-definition": ref }, definedBy, ref);
    }
    cancel.disabled = TERMINAL.has(state);
    fork.setEnabled(TERMINAL.has(state));
    forkedFrom.hidden = !st.forkedFrom;
    if (st.forkedFrom && !forkedFrom.firstChild) {
      forkedFrom.appendChild(document.createTextNode("forked from "));
      h("a", { href: `#/runs/${encodeURIComponent(st.forkedFrom)}`, "data-forked-from": st.forkedFrom }, forkedFrom, st.forkedFrom);
    }
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
      if (n.reused) meta += " · reused";
      // A large map's count as a share: the box keeps its width.
      if (n.map) meta += n.map.total >= 1000 ? ` · ${Math.floor((100 * n.map.completed) / n.map.total)}%` : ` · ${n.map.completed}/${n.map.total}`;
      if (ms(n.throttledUntil) > Date.now()) meta += " · throttled";
      if (n.map && ended(n.map) >= ended(run.maps.get(n.nodeId))) showMap(n.nodeId, n.map);
      setNodeState(svg, n.nodeId, s, meta);
      const g = nodeElement(svg, n.nodeId);
      if (g && g.hasAttribute("data-reused") !== Boolean(n.reused)) {
        g.classList.toggle("reused", Boolean(n.reused));
        g.toggleAttribute("data-reused", Boolean(n.reused));
      }
    }
    setEdgeStates(svg, edgeStates(run.graph, run.lay, states, run.decisions, run.loops));
  }

  // The timeline's width, kept by a ResizeObserver: reading clientWidth on each redraw would
  // force a layout of the whole page (a 500-node graph included) right after its updates.
  let timelineWidth = 0;
  const resized = new ResizeObserver(([entry]) => {
    const w = Math.round(entry.contentRect.width);
    if (w === timelineWidth) return;
    timelineWidth = w;
    if (run.status) paint();
  });
  resized.observe(timeline);
  const renderGantt = () => drawGantt(gantt, run.graph, run.status, Math.max(600, (timelineWidth || timeline.clientWidth) - 8), select);

  // Rendering waits for the next animation frame and happens once per frame however many
  // status replies and ticks arrived since: a large run's updates never stack up in a frame.
  let frame = 0;
  let statesDirty = false; // false: only the timeline's clock moved (the 1 s tick)
  function paint(states = true) {
    statesDirty ||= states;
    frame ||= requestAnimationFrame(() => {
      frame = 0;
      const all = statesDirty;
      statesDirty = false;
      if (!alive() || !run.status) return;
      performance.mark("graph-update-start");
      if (all) {
        renderHead();
        renderGraphStates();
      }
      renderGantt();
      performance.measure(all ? "graph-update" : "gantt-tick", "graph-update-start");
    });
  }

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
        // Not awaited; leaving the page aborts it, which is no error.
        if (TERMINAL.has(graphStateName(status.state)) && !run.result) showResult().catch((err) => alive() && showError(err));
        paint();
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
    nodeElement(svg, nodeId)?.classList.add("selected");
    renderPanel();
  }

  function showMap(nodeId, progress) {
    run.maps.set(nodeId, progress);
    run.mapBars.get(nodeId)?.(progress);
    if (run.selected === nodeId) run.panelBar?.(progress);
  }

  function renderPanel() {
    const nodeId = run.selected;
    const node = run.graph.nodes.find((n) => n.id === nodeId);
    if (!node) return;
    nodePanel(panel, {
      graphId,
      node,
      status: run.status?.nodes.find((n) => n.nodeId === nodeId),
      decision: run.decisions.get(nodeId),
      text: run.texts.get(nodeId) ?? "",
      tools: run.tools.get(nodeId) ?? [],
      wait: run.waits.get(nodeId),
      signalled: run.signalled.get(nodeId),
      signal: abort.signal,
      current: () => run.selected === nodeId && alive(),
      onMapBar: (update) => (run.panelBar = update),
    });
  }

  // The event log (model text deltas left out), the last 1000 lines.
  function logEvent(ev) {
    if (ev.payload.case === "llmDelta") return;
    logged += 1;
    eventsTitle.textContent = `events (${logged})`;
    const t = new Date(ms(ev.time)).toISOString().slice(11, 23);
    const at = ev.attempt > 1 ? ` attempt ${ev.attempt}` : "";
    eventLog.appendChild(document.createTextNode(`${ev.seq} ${t} ${ev.payload.case}${ev.nodeId ? ` ${ev.nodeId}` : ""}${at}\n`));
    if (eventLog.childNodes.length > 1000) eventLog.firstChild.remove();
  }

  /** A line of the run's story (budget, throttle and child run events). */
  function tell(ev, text, kind = "") {
    story.hidden = false;
    const li = h("li", { "data-story": ev.payload.case, ...(kind ? { class: kind } : {}) }, story);
    h("time", {}, li, new Date(ms(ev.time)).toISOString().slice(11, 19));
    li.appendChild(document.createTextNode(` ${text}`));
    return li;
  }

  function onEvent(ev) {
    logEvent(ev);
    const p = ev.payload;
    const id = ev.nodeId;
    switch (p.case) {
      case "routerDecision":
        run.decisions.set(id, p.value.targets);
        break;
      case "loopIteration":
        if (!p.value.exhausted) run.loops.add(`${p.value.fromNodeId}->${id}`);
        break;
      case "nodeWaiting":
        // A wait (again, in a loop's next iteration): its widget replaces the decision before.
        run.waits.set(id, waitOfEvent(ev));
        run.signalled.delete(id);
        if (run.selected === id) renderPanel();
        break;
      case "signalReceived":
        run.signalled.set(id, { ...p.value });
        if (run.selected === id) renderPanel();
        break;
      case "graphFailed":
        run.failedNode = p.value.failedNodeId;
        break;
      case "graphCancelled":
        run.cancelReason = p.value.reason;
        break;
      case "mapProgress":
        if (ended(p.value) >= ended(run.maps.get(id))) showMap(id, p.value);
        return;
      case "budgetWarning":
        tell(ev, `budget warning: ${p.value.limit} at ${fmt(p.value.used)} of ${fmt(p.value.max)}`);
        break;
      case "budgetExhausted":
        tell(ev, `run paused at node ${id}: ${p.value.limit}: ${p.value.message}`, "paused");
        break;
      case "graphResumed":
        tell(ev, `run resumed (${p.value.nodeIds.join(", ")})`);
        break;
      case "nodeThrottled":
        tell(ev, `node ${id} throttled: ${p.value.reason} of ${p.value.provider}/${p.value.model}, queued again in ${Number(p.value.waitMs)} ms`);
        break;
      case "childStarted":
      case "childEnded": {
        const li = tell(ev, `node ${id} ${p.case === "childStarted" ? "started" : "ended"} child run `);
        h("a", { href: `#/runs/${encodeURIComponent(p.value.childGraphId)}` }, li, p.value.childGraphId);
        if (p.case === "childEnded") li.appendChild(document.createTextNode(`: ${graphStateName(p.value.state)}`));
        break;
      }
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
          renderTools(ol, list);
          ol.parentElement.hidden = false;
        }
        return;
      }
      default:
        break;
    }
    if (LIFECYCLE.test(p.case ?? "") || ["routerDecision", "loopIteration", "signalReceived"].includes(p.case)) soon();
  }

  (async () => {
    try {
      const { graph, inputs } = await dago().graph(graphId, { signal: abort.signal });
      run.graph = graph;
      jsonView(inputs, inputsBox, "inputs");
      // Measured (performance.measure) so a test or a profile can read what drawing costs.
      performance.mark("graph-draw-start");
      run.lay = draw(svg, graph, select);
      performance.measure("graph-draw", "graph-draw-start");
      for (const n of graph.nodes) {
        if (n.kind.case === "map") run.mapBars.set(n.id, mapBar(maps, n.id));
      }
      maps.hidden = !run.mapBars.size;
      await refresh();
      if (firstNode) select(firstNode);
      const ticker = setInterval(() => run.status && !TERMINAL.has(graphStateName(run.status.state)) && paint(false), 1000);
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
    cancelAnimationFrame(frame);
    resized.disconnect();
  };
}
