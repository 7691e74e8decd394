// gRPC-Web through a real Envoy in front of a real dago (started by tests/clients/test_typescript.py):
//   DAGO_EDGE_URL=http://127.0.0.1:8080 [DAGO_GRPC_URL=http://127.0.0.1:50051] node --test test/
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { test } from "node:test";
import { fromJson, toJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { createDagoClient } from "../src/dago.js";
import { GraphState, NodeState } from "../gen/dago/v1/execution_pb.js";
import { GraphStatusView, SubmitGraphRequestSchema } from "../gen/dago/v1/orchestrator_pb.js";
import { BadRequestSchema, ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";

const EDGE_URL = process.env.DAGO_EDGE_URL;
const GRPC_URL = process.env.DAGO_GRPC_URL;
assert.ok(EDGE_URL, "set DAGO_EDGE_URL to Envoy's address, e.g. http://127.0.0.1:8080");
const TIMEOUT = { timeout: 20_000 };

/** A SubmitGraphRequest from its JSON form (as in examples/ and the REST API). */
const request = (json) => fromJson(SubmitGraphRequestSchema, json);

const diamond = JSON.parse(
  await readFile(new URL("../../../examples/diamond.json", import.meta.url), "utf8"),
);

async function collect(iterable) {
  const out = [];
  for await (const ev of iterable) out.push(ev);
  return out;
}

function assertContiguous(events) {
  const seqs = events.map((ev) => Number(ev.seq));
  assert.deepEqual(
    seqs,
    seqs.map((_, i) => i + 1),
    `events in seq order from 1 without gaps: ${seqs}`,
  );
}

/** A fetch whose first WatchGraph response body fails after `limit` bytes: a dropped stream. */
function droppingFetch(limit) {
  let dropped = 0;
  const f = async (input, init) => {
    const res = await fetch(input, init);
    const url = typeof input === "string" ? input : input.url;
    if (!url.endsWith("/WatchGraph") || dropped > 0 || !res.body) return res;
    dropped += 1;
    let passed = 0;
    const cut = new TransformStream({
      transform(chunk, controller) {
        const room = limit - passed;
        if (chunk.byteLength <= room) {
          passed += chunk.byteLength;
          controller.enqueue(chunk);
          return;
        }
        if (room > 0) controller.enqueue(chunk.subarray(0, room));
        passed = limit;
        controller.error(new TypeError("connection reset by the test"));
      },
    });
    return new Response(res.body.pipeThrough(cut), {
      status: res.status,
      statusText: res.statusText,
      headers: res.headers,
    });
  };
  f.dropped = () => dropped;
  return f;
}

test("submit examples/diamond.json and watch it to graph_completed", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL, { transport: "grpc-web" });
  const sub = await dago.submit(request(diamond));
  assert.ok(sub.graphId);
  assert.equal(sub.created, true);

  const events = await collect(dago.watch(sub.graphId));
  assertContiguous(events);
  assert.equal(events[0].payload.case, "graphSubmitted");
  assert.equal(events.at(-1).payload.case, "graphCompleted");
  assert.ok(events.every((ev) => ev.graphId === sub.graphId));
  const completed = events.filter((ev) => ev.payload.case === "nodeCompleted");
  assert.deepEqual(new Set(completed.map((ev) => ev.nodeId)), new Set(["start", "left", "right", "join"]));

  const result = await dago.result(sub.graphId);
  assert.equal(result.state, GraphState.COMPLETED);
  assert.deepEqual(result.output, { join: { sides: ["left", "right"], summary: "graphs: joined" } });

  // Resuming after a seq replays only what follows it.
  const tail = await collect(dago.watch(sub.graphId, { afterSeq: events.at(-3).seq }));
  assert.deepEqual(tail.map((ev) => ev.seq), events.slice(-2).map((ev) => ev.seq));
});

test("run: submit and watch in one call; the same request_id streams the same run", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const req = request({ ...diamond, requestId: `ts-run-${Date.now()}` });
  const events = await collect(dago.run(req));
  assertContiguous(events);
  assert.equal(events[0].payload.case, "graphSubmitted");
  assert.equal(events.at(-1).payload.case, "graphCompleted");
  const graphId = events[0].graphId;
  assert.ok(events.every((ev) => ev.graphId === graphId));
  assert.deepEqual(await collect(dago.watch(graphId)), events);
  const again = await collect(dago.run(req));
  assert.deepEqual(again, events);
  const err = await collect(dago.run(request({ graph: { name: "x", nodes: [] } }))).then(
    () => assert.fail("an empty graph was accepted"),
    (e) => e,
  );
  assert.equal(ConnectError.from(err).code, Code.InvalidArgument);
});

test("a dropped watch resumes from the last seq: every event once, in order", TIMEOUT, async () => {
  const plain = createDagoClient(EDGE_URL);
  const sub = await plain.submit(request(diamond));
  const expected = await collect(plain.watch(sub.graphId));

  // Cut the first stream in the middle of the replay (a few events in), then resume.
  const fetch = droppingFetch(300);
  const resumes = [];
  const dago = createDagoClient(EDGE_URL, { fetch, retryDelayMs: 10 });
  const events = await collect(dago.watch(sub.graphId, { onResume: (r) => resumes.push(r) }));
  assert.equal(fetch.dropped(), 1);
  assert.equal(resumes.length, 1, "resumed once");
  assert.ok(resumes[0].afterSeq > 0n, `resumed after a seq: ${resumes[0].afterSeq}`);
  assertContiguous(events);
  assert.deepEqual(events.map((ev) => ev.seq), expected.map((ev) => ev.seq));
  assert.equal(events.at(-1).payload.case, "graphCompleted");
});

test("cancel a running graph: CANCELLED, the watch ends with graph_cancelled", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const sub = await dago.submit(
    request({
      graph: {
        name: "ts-cancel",
        nodes: [{ id: "nap", tool: { name: "sleep" }, inputs: { seconds: 30 } }],
        limits: { maxCostUsd: 1 },
      },
    }),
  );
  const events = [];
  let started;
  const running = new Promise((resolve) => (started = resolve));
  const watching = (async () => {
    for await (const ev of dago.watch(sub.graphId)) {
      events.push(ev);
      if (ev.payload.case === "nodeStarted") started();
    }
  })();
  await Promise.race([running, watching]); // the sleep node runs (or the watch failed)

  const raised = await dago.updateLimits(sub.graphId, { maxCostUsd: 2.5, maxTokens: 900 });
  assert.equal(raised.status.limits.maxCostUsd, 2.5);
  assert.equal(raised.status.limits.maxTokens, 900n);
  assert.equal(raised.resumed, false);
  const res = await dago.cancel(sub.graphId, "typescript edge test");
  assert.equal(res.state, GraphState.CANCELLED);
  await watching;
  assertContiguous(events);
  assert.equal(events.at(-1).payload.case, "graphCancelled");
  const status = await dago.status(sub.graphId);
  assert.equal(status.status.state, GraphState.CANCELLED);
});

test("fork a completed run from a node: the plan, then the run reusing the rest", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL, { transport: "grpc-web" });
  const sub = await dago.submit(request(diamond));
  await collect(dago.watch(sub.graphId));
  const plan = await dago.fork(sub.graphId, { fromNodes: ["join"], dryRun: true });
  assert.equal(plan.graphId, "");
  assert.deepEqual(plan.runNodes, ["join"]);
  const forked = await dago.fork(sub.graphId, { fromNodes: ["join"], inputsPatch: { extra: 1 } });
  const events = await collect(dago.watch(forked.graphId));
  assert.equal(events.at(-1).payload.case, "graphCompleted");
  const reused = events.filter((ev) => ev.payload.case === "nodeReused");
  assert.deepEqual(new Set(reused.map((ev) => ev.nodeId)), new Set(plan.reusedNodes));
  assert.ok(reused.every((ev) => ev.payload.value.sourceGraphId === sub.graphId));
  const { status } = await dago.status(forked.graphId);
  assert.equal(status.forkedFrom, sub.graphId);
});

test("status views, a node's attempts, the workers and the dead letters", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const sub = await dago.submit(request(diamond));
  await collect(dago.watch(sub.graphId));
  const basic = await dago.status(sub.graphId, undefined, GraphStatusView.BASIC);
  const full = await dago.status(sub.graphId);
  const join = (st) => st.status.nodes.find((n) => n.nodeId === "join");
  assert.equal(join(basic).output, undefined); // BASIC leaves outputs out
  assert.ok(join(full).output);
  const { attempts, nextPageToken } = await dago.attempts(sub.graphId, "join", { pageSize: 10 });
  assert.equal(nextPageToken, "");
  assert.equal(attempts.length, 1);
  assert.equal(attempts[0].state, NodeState.COMPLETED);
  assert.ok(attempts[0].input && attempts[0].output);
  const { workers } = await dago.workers();
  assert.ok(workers.length >= 1 && workers.every((w) => w.slots >= 1), `${workers.length} workers`);
  // No DAGO_RATE_LIMITS on this stack: GetLimits lists no model.
  const { models } = await dago.limits();
  assert.deepEqual(models, []);
  const { deadLetters } = await dago.deadLetters({ pageSize: 5, graphId: sub.graphId });
  assert.deepEqual(deadLetters, []);
  // One call at a time: a second promise made up front rejects unhandled while the first is
  // awaited (which fails the test whenever it answers first).
  for (const call of [() => dago.requeueDeadLetter("0-1-0"), () => dago.dropDeadLetter("0-1-0")]) {
    const err = await call().then(() => assert.fail("an unknown dead letter was found"), (e) => e);
    assert.equal(ConnectError.from(err).code, Code.NotFound);
  }
});

test("list filters by name; usage needs the run history (FailedPrecondition here)", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const name = `ts-filter-${crypto.randomUUID()}`;
  const sub = await dago.submit(request({ ...diamond, graph: { ...diamond.graph, name } }));
  const page = await dago.list({ name, pageSize: 10 });
  assert.deepEqual(page.graphs.map((g) => g.graphId), [sub.graphId]);
  const err = await dago.usage({ groupBy: 1 }).then(
    () => assert.fail("usage answered without a history database"),
    (e) => ConnectError.from(e),
  );
  assert.equal(err.code, Code.FailedPrecondition);
  assert.match(err.rawMessage, /DAGO_POSTGRES_URL/);
});

test("an invalid graph is InvalidArgument with google.rpc.BadRequest details", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const bad = request({
    graph: {
      name: "ts-invalid",
      nodes: [{ id: "a", tool: { name: "echo" } }],
      edges: [{ from: "a", to: "ghost" }],
    },
  });
  const err = await dago.submit(bad).then(
    () => assert.fail("an invalid graph was accepted"),
    (e) => e,
  );
  assert.ok(err instanceof ConnectError, String(err));
  assert.equal(err.code, Code.InvalidArgument, err.message);
  const [details] = err.findDetails(BadRequestSchema);
  assert.ok(details, `a BadRequest detail in ${err.details.length} details`);
  const violation = details.fieldViolations[0];
  assert.equal(violation.field, "graph.edges[0].to");
  assert.match(violation.description, /ghost/);
});

test("a map node: its items paged and filtered by state with items(), map_progress watched", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const req = request({
    graph: {
      name: `ts-map-${crypto.randomUUID()}`,
      nodes: [
        {
          id: "each",
          map: {
            items: "[1, 2, 3, 4, 5]",
            maxConcurrency: 2,
            node: { id: "body", tool: { name: "echo" }, inputs: { double: "{{ item * 2 }}", at: "{{ index }}" } },
          },
        },
      ],
    },
  });
  const events = await collect(dago.run(req));
  assert.equal(events.at(-1).payload.case, "graphCompleted");
  assert.ok(events.every((ev) => ev.instance === 0), "no item events unless asked");
  const progress = events.filter((ev) => ev.payload.case === "mapProgress").map((ev) => ev.payload.value);
  assert.equal(progress.at(-1).completed, 5);
  const graphId = events[0].graphId;
  const first = await dago.items(graphId, "each", { pageSize: 2 });
  assert.deepEqual(first.items.map((i) => i.index), [0, 1]);
  assert.deepEqual(toJson(ValueSchema, first.items[1].output), { double: 4, at: 1 });
  assert.equal(first.progress.total, 5);
  const next = await dago.items(graphId, "each", { pageSize: 10, pageToken: first.nextPageToken });
  assert.deepEqual(next.items.map((i) => i.index), [2, 3, 4]);
  const failed = await dago.items(graphId, "each", { state: NodeState.FAILED });
  assert.deepEqual(failed.items, []);
});

test("signal a waiting node: waits() lists it, a bad payload is refused, approve routes", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const name = `ts-wait-${crypto.randomUUID()}`;
  const sub = await dago.submit(
    request({
      graph: {
        name,
        nodes: [
          { id: "draft", tool: { name: "echo" }, inputs: { text: "hello" } },
          {
            id: "review",
            wait: {
              prompt: "Publish {{ nodes.draft.output.text }}?",
              display: { draft: "{{ nodes.draft.output.text }}" },
              payloadSchema: JSON.stringify({
                type: "object",
                properties: { note: { type: "string" } },
                required: ["note"],
              }),
            },
          },
          { id: "publish", tool: { name: "echo" }, inputs: { note: "{{ nodes.review.output.payload.note }}" } },
          { id: "drop", tool: { name: "echo" } },
        ],
        edges: [
          { from: "draft", to: "review" },
          { from: "review", to: "publish", condition: 'nodes.review.output.decision == "approve"' },
          { from: "review", to: "drop", condition: 'nodes.review.output.decision == "reject"' },
        ],
      },
    }),
  );
  // The inbox lists it once it waits.
  let wait;
  for (let i = 0; i < 100 && !wait; i++) {
    const { waits } = await dago.waits({ pageSize: 1000 });
    wait = waits.find((w) => w.graphId === sub.graphId);
    if (!wait) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(wait, "the wait is listed");
  assert.equal(wait.graphName, name);
  assert.equal(wait.nodeId, "review");
  assert.equal(wait.prompt, "Publish hello?");
  assert.deepEqual(wait.display, { draft: "hello" });
  assert.deepEqual(wait.decisions, ["approve", "reject"]);
  assert.match(wait.payloadSchema, /"note"/);

  const refused = await dago
    .signal(sub.graphId, "review", "approve", { payload: { other: 1 } })
    .then(() => assert.fail("a payload without note was accepted"), (e) => ConnectError.from(e));
  assert.equal(refused.code, Code.InvalidArgument);
  const [bad] = refused.findDetails(BadRequestSchema);
  assert.equal(bad.fieldViolations[0].field, "payload");

  const signalId = `ts-${crypto.randomUUID()}`;
  const opts = { payload: { note: "ship it" }, signalId, comment: "from node", iteration: wait.iteration };
  const res = await dago.signal(sub.graphId, "review", "approve", opts);
  assert.equal(res.decision, "approve");
  assert.equal(res.signalId, signalId);
  assert.equal(res.iteration, wait.iteration);
  // The same signal_id again: the same answer; another decision: Aborted with the winner.
  assert.equal((await dago.signal(sub.graphId, "review", "approve", opts)).signalId, signalId);
  const lost = await dago
    .signal(sub.graphId, "review", "reject", { payload: { note: "no" }, iteration: wait.iteration })
    .then(() => assert.fail("a second decision won"), (e) => ConnectError.from(e));
  assert.ok([Code.Aborted, Code.FailedPrecondition].includes(lost.code), lost.message);
  if (lost.code === Code.Aborted) {
    assert.equal(lost.findDetails(ErrorInfoSchema)[0].metadata.decision, "approve");
  }

  const events = await collect(dago.watch(sub.graphId));
  const received = events.find((ev) => ev.payload.case === "signalReceived");
  assert.equal(received.payload.value.decision, "approve");
  assert.equal(received.payload.value.comment, "from node");
  assert.ok(events.some((ev) => ev.payload.case === "nodeWaiting"));
  const result = await dago.result(sub.graphId);
  assert.equal(result.state, GraphState.COMPLETED);
  assert.deepEqual(result.output, { publish: { note: "ship it" } });
});

test("native gRPC (connect-node) to the API port", { ...TIMEOUT, skip: !GRPC_URL && "DAGO_GRPC_URL not set" }, async () => {
  const dago = createDagoClient(GRPC_URL, { transport: "grpc" });
  const sub = await dago.submit(request(diamond));
  const events = await collect(dago.watch(sub.graphId));
  assertContiguous(events);
  assert.equal(events.at(-1).payload.case, "graphCompleted");
  const err = await dago.submit({ graph: { name: "x", nodes: [] } }).then(
    () => assert.fail("an empty graph was accepted"),
    (e) => e,
  );
  assert.equal(ConnectError.from(err).code, Code.InvalidArgument);
  assert.ok(ConnectError.from(err).findDetails(BadRequestSchema).length > 0);
});

test("stored definitions: publish, label, read, run by reference, deprecate", TIMEOUT, async () => {
  const dago = createDagoClient(EDGE_URL);
  const name = `ts-${crypto.randomUUID().slice(0, 8)}`;
  const { graph } = request(diamond);
  const first = await dago.publishDefinition(name, graph, "from typescript");
  assert.equal(first.created, true);
  assert.equal(first.definition.version, 1);
  assert.equal((await dago.publishDefinition(name, graph)).created, false);
  assert.deepEqual((await dago.labelDefinition(name, "prod", 1)).labels, ["prod"]);
  assert.equal((await dago.definition(`${name}@prod`)).description, "from typescript");
  const listed = await dago.definitionVersions(name);
  assert.deepEqual(listed.versions.map((v) => v.version), [1]);
  const sub = await dago.submit({ definition: `${name}@prod`, inputs: request(diamond).inputs });
  const events = await collect(dago.watch(sub.graphId));
  assert.equal(events.at(-1).payload.case, "graphCompleted");
  const status = (await dago.status(sub.graphId)).status;
  assert.equal(status.definition.name, name);
  assert.equal(status.definition.version, 1);
  assert.equal((await dago.deprecateDefinition(name, "prod")).deprecated, true);
  const err = await dago.submit({ definition: `${name}@1` }).then(
    () => assert.fail("a deprecated version ran"),
    (e) => ConnectError.from(e),
  );
  assert.equal(err.code, Code.FailedPrecondition);
});
