// #/definitions and #/definitions/<name>[/versions/<v>]: stored graph definitions
// (DefinitionService, docs/definitions.md). The list of names (latest version, labels,
// description); a definition's versions (digest, created, deprecated, labels) with a label
// form and a deprecate action per version; a version's graph (drawn as on a run's page) and
// JSON; a run form (name@version or name@label, inputs as JSON) that opens the new run; and a
// publish form taking a .json graph from a file input or dropped on it, which shows the
// server's refusal naming the field, or created=false when the graph is the latest's.
import { fromJson, toJson } from "@bufbuild/protobuf";
import { GraphSchema } from "../../../clients/typescript/gen/dago/v1/graph_pb.js";
import { draw } from "../graph.js";
import { badge, dago, errorText, h, objectOf, showError, when } from "./util.js";

const PAGE = 50;

/** Makes a table row act as a button: click, Enter or Space calls `open`. */
function rowOpens(tr, label, open) {
  tr.setAttribute("tabindex", "0");
  tr.setAttribute("aria-label", label);
  tr.addEventListener("click", (ev) => {
    if (!ev.target.closest("a, button, input, select")) open();
  });
  tr.addEventListener("keydown", (ev) => {
    if (ev.target !== tr || (ev.key !== "Enter" && ev.key !== " ")) return;
    ev.preventDefault();
    open();
  });
}

/** A status line whose room is kept when empty (no layout jump when it fills). */
function statusLine(parent, attrs) {
  const p = h("p", { class: "status-line", ...attrs }, parent);
  p.set = (text, data = {}) => {
    p.textContent = text;
    for (const [k, v] of Object.entries(data)) p.setAttribute(`data-${k}`, v);
  };
  return p;
}

/** The graph in a file's text: a Graph, or the `graph` of a SubmitGraphRequest file. */
function graphOfFile(text, fileName) {
  let body;
  try {
    body = JSON.parse(text);
  } catch (err) {
    throw new Error(`${fileName}: not JSON: ${err.message}`);
  }
  if (body && typeof body === "object" && !Array.isArray(body) && body.graph && !body.nodes) body = body.graph;
  try {
    return fromJson(GraphSchema, body);
  } catch (err) {
    throw new Error(`${fileName}: not a graph: ${err.message}`);
  }
}

/**
 * The publish form: a name (default `name`, else the graph's own), a description and a .json
 * file (chosen or dropped on the form). `published(definition)` is called after a publish.
 */
function publishForm(root, name, published) {
  const form = h("form", { id: "publish", class: "def-form", "aria-labelledby": "publish-title" }, root);
  form.addEventListener("submit", (e) => e.preventDefault());
  h("h3", { id: "publish-title" }, form, name ? `Publish a new version of ${name}` : "Publish a definition");
  const row = h("div", { class: "filters" }, form);
  const nameLabel = h("label", {}, row, "name ");
  const nameInput = h("input", { id: "pub-name", spellcheck: "false", placeholder: "the graph's name", autocomplete: "off" }, nameLabel);
  nameInput.value = name;
  const descLabel = h("label", {}, row, "description ");
  const desc = h("input", { id: "pub-desc", size: "40" }, descLabel);
  const drop = h("div", { id: "pub-drop", class: "drop" }, form);
  const fileLabel = h("label", { for: "pub-file" }, drop, "graph file (.json; or drop it here) ");
  const file = h("input", { id: "pub-file", type: "file", accept: ".json,application/json" }, fileLabel);
  // The chosen or dropped file's name, announced to screen readers (the input shows it).
  const chosenName = h("span", { id: "pub-file-name", class: "sr-only", "aria-live": "polite" }, drop, "");
  const go = h("button", { id: "pub-go", type: "submit", disabled: "" }, form, "Publish");
  const result = statusLine(form, { id: "pub-result", role: "status", "aria-live": "polite" });
  const error = statusLine(form, { id: "pub-error", class: "status-line err", role: "alert" });
  let chosen = null;

  const choose = (f) => {
    chosen = f ?? null;
    chosenName.textContent = chosen ? chosen.name : "";
    go.disabled = !chosen;
    result.set("");
    error.set("");
  };
  file.addEventListener("change", () => choose(file.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    const f = [...(ev.dataTransfer?.files ?? [])][0];
    if (!f) return;
    // The file input shows the dropped file too (not one chosen before it).
    try {
      file.files = ev.dataTransfer.files;
    } catch {
      file.value = "";
    }
    choose(f);
  });

  form.addEventListener("submit", async () => {
    if (!chosen) return;
    result.set("");
    error.set("");
    let graph;
    try {
      graph = graphOfFile(await chosen.text(), chosen.name);
    } catch (err) {
      error.set(err.message);
      return;
    }
    const target = nameInput.value.trim() || graph.name;
    if (!target) {
      error.set("name: give a name (the graph has none)");
      nameInput.focus();
      return;
    }
    go.disabled = true;
    try {
      const r = await dago().publishDefinition(target, graph, desc.value.trim());
      const d = r.definition;
      result.set(
        r.created
          ? `created ${d.name}@${d.version}`
          : `unchanged (created=false): identical to the latest, ${d.name}@${d.version}`,
        { created: String(r.created), version: String(d.version) },
      );
      published(d);
    } catch (err) {
      error.set(`refused: ${errorText(err)}`);
    } finally {
      go.disabled = !chosen;
    }
  });
}

/** #/definitions: one page of names, and the publish form. */
function listPage(root, alive) {
  h("h2", {}, root, "Definitions");
  const table = h("table", { id: "definitions", "aria-label": "definitions" }, root);
  const head = h("tr", {}, h("thead", {}, table));
  for (const c of ["name", "latest", "labels", "description", "updated"]) h("th", { scope: "col" }, head, c);
  const body = h("tbody", { id: "definitions-body" }, table);
  const nav = h("nav", { class: "pager", "aria-label": "pages" }, root);
  const prev = h("button", { id: "defs-prev", type: "button", disabled: "" }, nav, "← Previous");
  const where = h("span", { id: "defs-page" }, nav);
  const next = h("button", { id: "defs-next", type: "button", disabled: "" }, nav, "Next →");
  const tokens = [""];
  let nextToken = "";

  async function load() {
    const r = await dago().definitions({ pageSize: PAGE, pageToken: tokens.at(-1) });
    if (!alive()) return;
    nextToken = r.nextPageToken;
    body.replaceChildren();
    for (const d of r.definitions) {
      const href = `#/definitions/${encodeURIComponent(d.name)}`;
      const tr = h("tr", { "data-definition": d.name }, body);
      rowOpens(tr, `definition ${d.name}`, () => (window.location.hash = href));
      h("a", { href }, h("td", {}, tr), d.name);
      h("td", { class: "num" }, tr, d.latestVersion);
      const labels = Object.entries(d.labels).sort(([a], [b]) => a.localeCompare(b));
      h("td", { class: "labels" }, tr, labels.map(([l, v]) => `${l} → ${v}`).join(", "));
      h("td", {}, tr, d.description);
      h("td", {}, tr, when(d.updateTime));
    }
    if (!r.definitions.length) h("td", { colspan: 5, class: "empty" }, h("tr", {}, body), "no definitions yet: publish one below");
    prev.disabled = tokens.length < 2;
    next.disabled = !nextToken;
    where.textContent = `page ${tokens.length}`;
  }
  const reload = () => load().catch((err) => alive() && showError(err));
  next.addEventListener("click", () => nextToken && (tokens.push(nextToken), reload()));
  prev.addEventListener("click", () => tokens.length > 1 && (tokens.pop(), reload()));
  publishForm(root, "", () => reload());
  reload();
}

/** #/definitions/<name>[/versions/<v>]: versions, label, deprecate, a version's view and run form. */
function definitionPage(root, name, shownVersion, alive) {
  h("a", { href: "#/definitions", class: "back" }, root, "← definitions");
  h("h2", { id: "def-name" }, root, `Definition ${name}`);
  const about = h("p", { id: "def-about", class: "facts" }, root);
  const table = h("table", { id: "versions", "aria-label": "versions" }, root);
  const head = h("tr", {}, h("thead", {}, table));
  for (const c of ["version", "digest", "created", "state", "labels", "description", ""]) h("th", { scope: "col" }, head, c);
  const body = h("tbody", { id: "versions-body" }, table);
  const more = h("button", { id: "versions-more", type: "button", hidden: "" }, root, "More versions");

  const label = h("form", { id: "label-form", class: "def-form filters", "aria-label": "set a label" }, root);
  label.addEventListener("submit", (e) => e.preventDefault());
  const labelName = h("input", { id: "label-name", spellcheck: "false", placeholder: "prod", required: "" }, h("label", {}, label, "label "));
  const labelVersion = h("select", { id: "label-version" }, h("label", {}, label, "→ version "));
  h("button", { id: "label-go", type: "submit" }, label, "Set label");
  const labelStatus = statusLine(label, { id: "label-status", role: "status" });

  const view = h("section", { id: "version-view", "aria-label": "version", class: "def-view" }, root);
  const runForm = h("form", { id: "run-form", class: "def-form", "aria-labelledby": "run-title" }, root);
  runForm.addEventListener("submit", (e) => e.preventDefault());
  h("h3", { id: "run-title" }, runForm, "Run a version");
  const refRow = h("div", { class: "filters" }, runForm);
  const ref = h("input", { id: "run-ref", spellcheck: "false", size: "30" }, h("label", {}, refRow, "definition (name@version or name@label) "));
  ref.value = `${name}@${shownVersion || "latest"}`;
  const allowLabel = h("label", {}, refRow);
  const allow = h("input", { id: "run-allow-deprecated", type: "checkbox" }, allowLabel);
  allowLabel.appendChild(document.createTextNode(" allow a deprecated version"));
  h("label", { for: "run-inputs", class: "block" }, runForm, "inputs (a JSON object, optional)");
  const inputs = h("textarea", { id: "run-inputs", rows: "4", cols: "60", spellcheck: "false", "aria-describedby": "run-error" }, runForm);
  const runGo = h("button", { id: "run-go", type: "submit" }, runForm, "Run");
  const runError = statusLine(runForm, { id: "run-error", class: "status-line err", role: "alert" });

  publishForm(root, name, (d) => {
    if (d.name === name) reload();
    else window.location.hash = `#/definitions/${encodeURIComponent(d.name)}`;
  });

  let versions = [];
  let pageToken = "";

  function renderVersions() {
    body.replaceChildren();
    const chosen = labelVersion.value;
    labelVersion.replaceChildren();
    for (const v of versions) {
      const tr = h("tr", { "data-version": v.version }, body);
      if (String(v.version) === String(shownVersion)) tr.setAttribute("aria-current", "true");
      const href = `#/definitions/${encodeURIComponent(name)}/versions/${v.version}`;
      rowOpens(tr, `version ${v.version}`, () => (window.location.hash = href));
      h("a", { href }, h("td", { class: "num" }, tr), v.version);
      h("td", { class: "digest", title: v.digest }, tr, v.digest.slice(0, 12));
      h("td", {}, tr, when(v.createTime));
      const st = h("td", {}, tr);
      if (v.deprecated) badge("deprecated", st, { "data-deprecated": "" });
      h("td", { class: "labels" }, tr, [...v.labels].sort().join(", "));
      h("td", {}, tr, v.description);
      const act = h("td", {}, tr);
      const dep = h("button", { type: "button", class: "danger", "data-deprecate": v.version }, act, "Deprecate…");
      dep.disabled = v.deprecated;
      dep.addEventListener("click", () => deprecate(dep, v.version));
      h("option", { value: String(v.version) }, labelVersion, String(v.version));
    }
    labelVersion.value = chosen || String(shownVersion || versions[0]?.version || "");
    more.hidden = !pageToken;
  }

  // Deprecating cannot be undone from here: the first click asks, the second one does it.
  async function deprecate(button, version) {
    if (!button.hasAttribute("data-confirm")) {
      button.setAttribute("data-confirm", "");
      button.textContent = `Confirm: deprecate ${version}`;
      return;
    }
    button.disabled = true;
    try {
      await dago().deprecateDefinition(name, version);
      await reload();
    } catch (err) {
      showError(errorText(err));
      button.disabled = false;
    }
  }

  async function load(append) {
    const r = await dago().definitionVersions(name, { pageSize: PAGE, pageToken: append ? pageToken : "" });
    if (!alive()) return;
    versions = append ? [...versions, ...r.versions] : r.versions;
    pageToken = r.nextPageToken;
    if (!append && versions[0]) about.textContent = versions[0].description || "";
    renderVersions();
  }
  const reload = () => load(false).catch((err) => alive() && showError(errorText(err)));
  more.addEventListener("click", () => load(true).catch((err) => alive() && showError(errorText(err))));

  label.addEventListener("submit", async () => {
    labelStatus.set("");
    try {
      const d = await dago().labelDefinition(name, labelName.value.trim(), Number(labelVersion.value));
      labelStatus.set(`${labelName.value.trim()} → ${d.version}`);
      await reload();
    } catch (err) {
      labelStatus.set(`refused: ${errorText(err)}`);
    }
  });

  async function showVersion() {
    view.replaceChildren();
    if (!shownVersion) {
      h("p", { class: "hint" }, view, "Open a version (click, Enter or Space on its row) to see its graph and JSON.");
      return;
    }
    const d = await dago().definition(name, shownVersion);
    if (!alive()) return;
    h("h3", { id: "version-title", "data-version": d.version }, view, `${d.name}@${d.version}${d.deprecated ? " (deprecated)" : ""}`);
    const pane = h("div", { class: "graph-pane", role: "group", "aria-label": "the version's graph" }, view);
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.id = "def-graph";
    svg.setAttribute("aria-label", `the graph of ${d.name}@${d.version}`);
    pane.appendChild(svg);
    draw(svg, d.graph);
    // A definition has no run: no node state to tell.
    for (const meta of svg.querySelectorAll(".node .meta")) meta.textContent = "";
    const json = h("details", { class: "io" }, view);
    h("summary", {}, json, "JSON");
    h("pre", { id: "def-json", class: "json" }, json, JSON.stringify(toJson(GraphSchema, d.graph), null, 2));
  }

  inputs.addEventListener("input", () => {
    try {
      objectOf(inputs.value, "inputs");
      inputs.removeAttribute("aria-invalid");
      runError.set("");
    } catch (err) {
      inputs.setAttribute("aria-invalid", "true");
      runError.set(err.message);
    }
  });
  runForm.addEventListener("submit", async () => {
    runError.set("");
    let values;
    try {
      values = objectOf(inputs.value, "inputs");
    } catch (err) {
      runError.set(err.message);
      inputs.focus();
      return;
    }
    runGo.disabled = true;
    try {
      const r = await dago().submit({ definition: ref.value.trim(), inputs: values, allowDeprecated: allow.checked });
      window.location.hash = `#/runs/${encodeURIComponent(r.graphId)}`;
    } catch (err) {
      runError.set(`refused: ${errorText(err)}`);
    } finally {
      runGo.disabled = false;
    }
  });

  reload();
  showVersion().catch((err) => alive() && showError(errorText(err)));
}

/** The Definitions page: the list, or one definition (`name`) and optionally a version. */
export function definitionsPage(root, name, version) {
  let on = true;
  const alive = () => on;
  if (name) definitionPage(root, name, version, alive);
  else listPage(root, alive);
  return () => (on = false);
}
