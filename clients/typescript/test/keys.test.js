// graph(), list() and the apiKey option through a real Envoy in front of a dago that requires
// API keys (DAGO_AUTH=keys; started by tests/clients/test_typescript.py):
//   DAGO_KEYED_EDGE_URL=http://127.0.0.1:8081 DAGO_KEYED_API_KEY=dago_... \
//   DAGO_KEYED_NAMESPACE=team-ts DAGO_KEYED_OPERATOR_KEY=dago_... \
//   DAGO_KEYED_OPERATOR_NAMESPACE=ops-ts node --test test/
import assert from "node:assert/strict";
import { test } from "node:test";
import { fromJson } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { createDagoClient } from "../src/dago.js";
import { GraphState } from "../gen/dago/v1/execution_pb.js";
import { SubmitGraphRequestSchema } from "../gen/dago/v1/orchestrator_pb.js";

const KEYED_URL = process.env.DAGO_KEYED_EDGE_URL;
const KEY = process.env.DAGO_KEYED_API_KEY;
const NAMESPACE = process.env.DAGO_KEYED_NAMESPACE;
// A key of a namespace of the server's DAGO_OPERATOR_NAMESPACES.
const OPERATOR_KEY = process.env.DAGO_KEYED_OPERATOR_KEY;
const OPERATOR_NAMESPACE = process.env.DAGO_KEYED_OPERATOR_NAMESPACE;
assert.ok(
  KEYED_URL && KEY && NAMESPACE && OPERATOR_KEY && OPERATOR_NAMESPACE,
  "set DAGO_KEYED_EDGE_URL, DAGO_KEYED_API_KEY, DAGO_KEYED_NAMESPACE, DAGO_KEYED_OPERATOR_KEY " +
    "and DAGO_KEYED_OPERATOR_NAMESPACE (a dago with DAGO_AUTH=keys)",
);
const TIMEOUT = { timeout: 20_000 };

/** The code of the error a call must fail with. */
async function failure(promise) {
  const err = await promise.then(
    () => assert.fail("the call succeeded; an error was expected"),
    (e) => e,
  );
  return ConnectError.from(err).code;
}

/** A fetch that records the authorization header of every request it sends on. */
function recordingFetch() {
  const seen = [];
  const f = async (input, init) => {
    seen.push(new Headers(init?.headers).get("authorization"));
    return await fetch(input, init);
  };
  f.seen = seen;
  return f;
}

const greeting = (who) =>
  fromJson(SubmitGraphRequestSchema, {
    graph: {
      name: `ts-keys-${who}`,
      nodes: [{ id: "hello", tool: { name: "echo" }, inputs: { who: "{{ inputs.who }}" } }],
    },
    inputs: { who },
  });

test("apiKey sends a bearer token; graph() and list() page through the key's runs", TIMEOUT, async () => {
  // Without a key, or with an unknown one, every call is refused.
  const anonymous = createDagoClient(KEYED_URL);
  assert.equal(await failure(anonymous.list()), Code.Unauthenticated);
  const stranger = createDagoClient(KEYED_URL, { apiKey: "dago_not-a-key" });
  assert.equal(await failure(stranger.list({ pageSize: 1 })), Code.Unauthenticated);

  const fetch = recordingFetch();
  const dago = createDagoClient(KEYED_URL, { apiKey: KEY, fetch });
  const ids = [];
  for (const who of ["ann", "bob", "cy"]) {
    const sub = await dago.submit(greeting(who));
    assert.equal(sub.namespace, NAMESPACE);
    ids.push(sub.graphId);
    // One at a time, so that their creation times (the list's order) differ.
    for await (const ev of dago.watch(sub.graphId)) {
      if (ev.payload.case === "graphFailed") assert.fail(`run ${sub.graphId} failed`);
    }
  }

  // graph(): the run as submitted, inputs included.
  const got = await dago.graph(ids[1]);
  assert.equal(got.graph.name, "ts-keys-bob");
  assert.deepEqual(got.graph.nodes.map((n) => n.id), ["hello"]);
  assert.equal(got.graph.nodes[0].kind.case, "tool");
  assert.equal(got.graph.nodes[0].kind.value.name, "echo");
  assert.deepEqual(got.inputs, { who: "bob" });
  assert.equal(await failure(anonymous.graph(ids[1])), Code.Unauthenticated);
  assert.equal(await failure(dago.graph("no-such-run")), Code.NotFound);

  // list(): newest first, two pages of this namespace's runs, and the state filter.
  const first = await dago.list({ pageSize: 2 });
  assert.equal(first.graphs.length, 2);
  assert.ok(first.nextPageToken, "a token for the second page");
  const second = await dago.list({ pageSize: 2, pageToken: first.nextPageToken });
  assert.equal(second.nextPageToken, "");
  const listed = [...first.graphs, ...second.graphs];
  assert.deepEqual(listed.map((g) => g.graphId), [...ids].reverse());
  assert.deepEqual(listed.map((g) => g.name), ["ts-keys-cy", "ts-keys-bob", "ts-keys-ann"]);
  assert.ok(listed.every((g) => g.state === GraphState.COMPLETED && g.namespace === NAMESPACE));
  const completed = await dago.list({ state: GraphState.COMPLETED });
  assert.equal(completed.graphs.length, 3);
  const failed = await dago.list({ state: GraphState.FAILED });
  assert.equal(failed.graphs.length, 0);

  // Every request of the keyed client carried the key, and only it.
  assert.ok(fetch.seen.length >= 9, `${fetch.seen.length} requests recorded`);
  assert.ok(fetch.seen.every((h) => h === `Bearer ${KEY}`), JSON.stringify(fetch.seen));
});

test("an operator's key lists any namespace or every one; a tenant's only its own", TIMEOUT, async () => {
  const ops = createDagoClient(KEYED_URL, { apiKey: OPERATOR_KEY });
  const tenant = createDagoClient(KEYED_URL, { apiKey: KEY });
  const own = await ops.submit(greeting("ops"));
  assert.equal(own.namespace, OPERATOR_NAMESPACE);
  // limits() says who is an operator (the console shows its namespace filter to them only).
  assert.equal((await ops.limits()).operator, true);
  assert.equal((await tenant.limits()).operator, false);

  const theirs = (await tenant.list({})).graphs.map((g) => g.graphId);
  const named = await ops.list({ namespace: NAMESPACE });
  assert.deepEqual(named.graphs.map((g) => g.graphId), theirs);
  assert.ok(named.graphs.every((g) => g.namespace === NAMESPACE));
  const every = await ops.list({ pageSize: 1000 });
  const spaces = new Set(every.graphs.map((g) => g.namespace));
  assert.ok(spaces.has(OPERATOR_NAMESPACE), [...spaces].join());
  assert.ok(every.graphs.some((g) => g.graphId === own.graphId));

  // A tenant naming its own namespace is fine; another's is PERMISSION_DENIED.
  assert.deepEqual((await tenant.list({ namespace: NAMESPACE })).graphs.map((g) => g.graphId), theirs);
  assert.equal(await failure(tenant.list({ namespace: OPERATOR_NAMESPACE })), Code.PermissionDenied);
});
