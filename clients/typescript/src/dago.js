// A thin typed client for dago's OrchestratorService: gRPC-Web (through Envoy; browsers and
// Node) or native gRPC (Node, HTTP/2). Types are in dago.d.ts; the messages are the
// protoc-gen-es code in ../gen (`make gen`).
import { fromJson } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ForkGraphRequestSchema, OrchestratorService } from "../gen/dago/v1/orchestrator_pb.js";
import { DefinitionService } from "../gen/dago/v1/definitions_pb.js";

/** The payload kinds that end a run's event stream. */
export const TERMINAL_EVENTS = Object.freeze(["graphCompleted", "graphFailed", "graphCancelled"]);

/** Codes after which a watch is resumed (a dropped connection, a proxy timeout, a restart). */
export const RESUMABLE_CODES = Object.freeze([
  Code.Unavailable,
  Code.Unknown,
  Code.Internal,
  Code.DeadlineExceeded,
  Code.Aborted,
]);

// Sends the API key as `authorization: Bearer <key>` (what dago's auth expects) on every call.
function bearer(apiKey) {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${apiKey}`);
    return await next(req);
  };
}

async function makeTransport(baseUrl, kind, options) {
  const interceptors = [...(options.interceptors ?? [])];
  if (options.apiKey) interceptors.push(bearer(options.apiKey));
  if (kind === "grpc-web") {
    // Binary protobuf: Envoy forwards grpc-web+json as grpc+json, which the server cannot read.
    return createGrpcWebTransport({
      baseUrl,
      useBinaryFormat: true,
      fetch: options.fetch,
      interceptors,
    });
  }
  if (kind === "grpc") {
    // Node only (HTTP/2); loaded on first use so that browser bundles do not need it.
    const { createGrpcTransport } = await import("@connectrpc/connect-node");
    return createGrpcTransport({ baseUrl, httpVersion: "2", interceptors });
  }
  throw new TypeError(`transport must be "grpc-web" or "grpc", not ${JSON.stringify(kind)}`);
}

/** A google.protobuf.Value message of a plain JSON value (what a signal's payload is). */
function toValue(json) {
  return fromJson(ValueSchema, json);
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      "abort",
      () => {
        clearTimeout(timer);
        reject(signal.reason);
      },
      { once: true },
    );
  });
}

/**
 * The events of the streams `open(afterSeq, signal)` opens, in seq order and each once,
 * ending after the terminal event; a dropped stream is reopened after the last seq received.
 */
async function* follow(open, afterSeq, { signal, onResume, maxRetries, retryDelayMs }) {
  let lastSeq = afterSeq;
  let failures = 0;
  for (;;) {
    try {
      for await (const res of open(lastSeq, signal)) {
        const ev = res.event;
        if (!ev || ev.payload.case === "heartbeat") continue;
        if (ev.seq <= lastSeq) continue; // already delivered before a resume
        lastSeq = ev.seq;
        failures = 0;
        yield ev;
        if (TERMINAL_EVENTS.includes(ev.payload.case)) return;
      }
      // The stream ended before the terminal event (e.g. a server shutting down): resume.
      throw new ConnectError("watch stream ended before the run finished", Code.Unavailable);
    } catch (err) {
      const e = ConnectError.from(err);
      if (signal?.aborted || !RESUMABLE_CODES.includes(e.code) || failures >= maxRetries) {
        throw e;
      }
      failures += 1;
      onResume?.({ afterSeq: lastSeq, attempt: failures, error: e });
      await sleep(Math.min(retryDelayMs * 2 ** (failures - 1), 2000), signal);
    }
  }
}

/**
 * @param {string} baseUrl e.g. "http://127.0.0.1:8080" (Envoy) or the API's address for "grpc"
 * @param {import("./dago.d.ts").DagoClientOptions} [options]
 * @returns {import("./dago.d.ts").DagoClient}
 */
export function createDagoClient(baseUrl, options = {}) {
  const kind = options.transport ?? "grpc-web";
  const maxRetries = options.maxRetries ?? 5;
  const retryDelayMs = options.retryDelayMs ?? 100;
  let transportPromise;
  const transport = () => {
    transportPromise ??= makeTransport(baseUrl, kind, options);
    return transportPromise;
  };
  let clientPromise;
  const client = () => {
    clientPromise ??= transport().then((t) => createClient(OrchestratorService, t));
    return clientPromise;
  };
  // Stored definitions (DefinitionService: docs/definitions.md), on the same transport.
  let definitionsPromise;
  const definitions = () => {
    definitionsPromise ??= transport().then((t) => createClient(DefinitionService, t));
    return definitionsPromise;
  };

  return {
    async submit(request, callOptions) {
      return (await client()).submitGraph(request, callOptions);
    },

    async graph(graphId, callOptions) {
      return (await client()).getGraph({ graphId }, callOptions);
    },

    async list(request = {}, callOptions) {
      return (await client()).listGraphs(request, callOptions);
    },

    async usage(request = {}, callOptions) {
      return (await client()).getUsageSummary(request, callOptions);
    },

    async status(graphId, callOptions, view = 0) {
      return (await client()).getGraphStatus({ graphId, view }, callOptions);
    },

    async attempts(graphId, nodeId, request = {}, callOptions) {
      return (await client()).listNodeAttempts({ ...request, graphId, nodeId }, callOptions);
    },

    async workers(callOptions) {
      return (await client()).listWorkers({}, callOptions);
    },

    async limits(callOptions) {
      return (await client()).getLimits({}, callOptions);
    },

    async deadLetters(request = {}, callOptions) {
      return (await client()).listDeadLetters(request, callOptions);
    },

    async requeueDeadLetter(deadLetterId, callOptions) {
      return (await client()).requeueDeadLetter({ deadLetterId }, callOptions);
    },

    async dropDeadLetter(deadLetterId, callOptions) {
      return (await client()).dropDeadLetter({ deadLetterId }, callOptions);
    },

    async signal(graphId, nodeId, decision, signalOptions = {}, callOptions) {
      const { payload, signalId, comment, iteration, toolCallId } = signalOptions;
      return (await client()).signalGraph(
        {
          graphId,
          nodeId,
          decision,
          // A plain JSON value (the payload's google.protobuf.Value); undefined: none sent.
          ...(payload === undefined ? {} : { payload: toValue(payload) }),
          signalId: signalId ?? "",
          comment: comment ?? "",
          iteration: iteration ?? 0,
          toolCallId: toolCallId ?? "",
        },
        callOptions,
      );
    },

    async publishDefinition(name, graph, description = "", callOptions) {
      return (await definitions()).publishDefinition({ name, graph, description }, callOptions);
    },

    async definition(name, version = "latest", callOptions) {
      const at = name.indexOf("@");
      const [n, v] = at < 0 ? [name, String(version)] : [name.slice(0, at), name.slice(at + 1)];
      return (await (await definitions()).getDefinition({ name: n, version: v }, callOptions))
        .definition;
    },

    async definitions(request = {}, callOptions) {
      return (await definitions()).listDefinitions(request, callOptions);
    },

    async definitionVersions(name, request = {}, callOptions) {
      return (await definitions()).listDefinitionVersions({ ...request, name }, callOptions);
    },

    async labelDefinition(name, label, version, callOptions) {
      return (await (await definitions()).setDefinitionLabel({ name, label, version }, callOptions))
        .definition;
    },

    async unlabelDefinition(name, label, callOptions) {
      return (await (await definitions()).deleteDefinitionLabel({ name, label }, callOptions)).version;
    },

    async deprecateDefinition(name, version, callOptions) {
      const req = { name, version: String(version) };
      return (await (await definitions()).deprecateDefinitionVersion(req, callOptions)).definition;
    },

    async waits(request = {}, callOptions) {
      return (await client()).listWaits(request, callOptions);
    },

    async items(graphId, nodeId, request = {}, callOptions) {
      return (await client()).listMapItems({ ...request, graphId, nodeId }, callOptions);
    },

    async result(graphId, callOptions) {
      return (await client()).getGraphResult({ graphId }, callOptions);
    },

    async fork(graphId, forkOptions = {}, callOptions) {
      const { fromNodes, failedOnly, nodePatches, inputsPatch, dryRun, requestId } = forkOptions;
      // Node patches and the inputs patch are plain JSON (partial nodes, a merge patch). A
      // request_id is generated unless given (or a dry run), so a retry is the same fork.
      const req = fromJson(ForkGraphRequestSchema, {
        graphId,
        fromNodes: fromNodes ?? [],
        failedOnly: failedOnly ?? false,
        nodePatches: nodePatches ?? {},
        ...(inputsPatch === undefined ? {} : { inputsPatch }),
        dryRun: dryRun ?? false,
        requestId: requestId ?? (dryRun ? "" : `ts-${crypto.randomUUID()}`),
      });
      return (await client()).forkGraph(req, callOptions);
    },

    async cancel(graphId, reason = "", callOptions) {
      return (await client()).cancelGraph({ graphId, reason }, callOptions);
    },

    async updateLimits(graphId, { maxTokens = 0, maxCostUsd = 0 } = {}, callOptions) {
      const limits = { maxTokens: BigInt(maxTokens), maxCostUsd };
      return (await client()).updateGraphLimits({ graphId, limits }, callOptions);
    },

    async *watch(graphId, watchOptions = {}) {
      const c = await client();
      const open = (afterSeq, signal) => c.watchGraph({ graphId, afterSeq }, { signal });
      yield* follow(open, BigInt(watchOptions.afterSeq ?? 0), {
        ...watchOptions,
        maxRetries,
        retryDelayMs,
      });
    },

    async *run(request, runOptions = {}) {
      const c = await client();
      // A request_id makes the call safe to repeat: a resume before the first event (no
      // graph_id yet) sends the same RunGraph again and gets the same run.
      const req = { ...request, requestId: request.requestId || `ts-${crypto.randomUUID()}` };
      let graphId = "";
      const open = (afterSeq, signal) =>
        graphId
          ? c.watchGraph({ graphId, afterSeq }, { signal })
          : c.runGraph(req, { signal });
      for await (const ev of follow(open, 0n, { ...runOptions, maxRetries, retryDelayMs })) {
        graphId ||= ev.graphId;
        yield ev;
      }
    },
  };
}
