// The operators' console (/console/): hash routes #/runs, #/runs/<id>[/nodes/<node>],
// #/approvals, #/definitions[/<name>[/versions/<v>]], #/usage and #/ops, each a page module that draws into <main> and returns its stop
// function. Bundled by esbuild (`make web`) with the TypeScript client into
// web/dist/console.js; every call is gRPC-Web through Envoy, same origin.
import { approvalsPage } from "./approvals.js";
import { definitionsPage } from "./definitions.js";
import { opsPage } from "./ops.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";
import { usagePage } from "./usage.js";
import { $, showError } from "./util.js";

let stop = null;

function route() {
  stop?.();
  showError("");
  const main = $("main");
  main.replaceChildren();
  const [path, query = ""] = window.location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("header nav a")) {
    a.toggleAttribute("aria-current", a.dataset.page === (parts[0] ?? "runs"));
  }
  if (parts[0] === "approvals") {
    document.title = "dago console · approvals";
    stop = approvalsPage(main, new URLSearchParams(query));
  } else if (parts[0] === "definitions") {
    document.title = `dago console · ${parts[1] ? `definition ${parts[1]}` : "definitions"}`;
    stop = definitionsPage(main, parts[1] ?? "", parts[2] === "versions" ? parts[3] ?? "" : "");
  } else if (parts[0] === "ops") {
    document.title = "dago console · operations";
    stop = opsPage(main);
  } else if (parts[0] === "usage") {
    document.title = "dago console · usage";
    stop = usagePage(main, new URLSearchParams(query));
  } else if (parts[0] === "runs" && parts[1]) {
    document.title = `dago console · run ${parts[1]}`;
    stop = runPage(main, parts[1], parts[2] === "nodes" ? parts[3] : "");
  } else {
    document.title = "dago console · runs";
    stop = runsPage(main, new URLSearchParams(query));
  }
}

$("api-key").value = sessionStorage.getItem("dago.apiKey") ?? "";
$("api-key").addEventListener("change", route);
window.addEventListener("hashchange", route);
route();
