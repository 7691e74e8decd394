import type { CallOptions, ConnectError, Interceptor } from "@connectrpc/connect";
import type { JsonValue, MessageInitShape } from "@bufbuild/protobuf";
import type { Event } from "../gen/dago/v1/execution_pb.js";
import type {
  CancelGraphResponse,
  ForkGraphResponse,
  GetGraphResponse,
  ListGraphsRequestSchema,
  ListGraphsResponse,
  GetGraphResultResponse,
  GetGraphStatusResponse,
  GraphStatusView,
  ListDeadLettersRequestSchema,
  ListDeadLettersResponse,
  ListNodeAttemptsRequestSchema,
  ListNodeAttemptsResponse,
  ListWorkersResponse,
  GetLimitsResponse,
  DropDeadLetterResponse,
  RequeueDeadLetterResponse,
  GetUsageSummaryRequestSchema,
  GetUsageSummaryResponse,
  ListMapItemsRequestSchema,
  ListMapItemsResponse,
  ListWaitsRequestSchema,
  ListWaitsResponse,
  SignalGraphResponse,
  SubmitGraphRequestSchema,
  SubmitGraphResponse,
  UpdateGraphLimitsResponse,
} from "../gen/dago/v1/orchestrator_pb.js";
import type {
  DefinitionVersion,
  ListDefinitionsRequestSchema,
  ListDefinitionsResponse,
  ListDefinitionVersionsRequestSchema,
  ListDefinitionVersionsResponse,
  PublishDefinitionResponse,
} from "../gen/dago/v1/definitions_pb.js";
import type { GraphSchema } from "../gen/dago/v1/graph_pb.js";

export declare const TERMINAL_EVENTS: readonly ["graphCompleted", "graphFailed", "graphCancelled"];
export declare const RESUMABLE_CODES: readonly number[];

export interface DagoClientOptions {
  /** "grpc-web" (default; through Envoy, browsers and Node) or "grpc" (Node, HTTP/2). */
  transport?: "grpc-web" | "grpc";
  /** Sent as `authorization: Bearer <apiKey>` with every call (servers with DAGO_AUTH=keys). */
  apiKey?: string;
  /** More Connect interceptors, run before the API key one. */
  interceptors?: Interceptor[];
  /** The fetch used by the grpc-web transport (default: globalThis.fetch). */
  fetch?: typeof globalThis.fetch;
  /** How many times in a row a dropped watch is resumed (default 5). */
  maxRetries?: number;
  /** First delay before a resume, doubled each time up to 2 s (default 100 ms). */
  retryDelayMs?: number;
}

export interface WatchOptions {
  /** Start after this seq (default 0: from the first event). */
  afterSeq?: bigint | number;
  /** Stops the watch; the iterator then throws. */
  signal?: AbortSignal;
  /** Called before each resume. */
  onResume?: (info: { afterSeq: bigint; attempt: number; error: ConnectError }) => void;
}

export interface ForkOptions {
  /** The nodes to run again, with everything downstream of them. */
  fromNodes?: string[];
  /** Instead of fromNodes: run again what failed, was cancelled or skipped by a failure. */
  failedOnly?: boolean;
  /** Node id -> a partial node (proto JSON), merged into that node. */
  nodePatches?: Record<string, JsonValue>;
  /** A JSON merge patch (RFC 7386) over the run's inputs. */
  inputsPatch?: Record<string, JsonValue>;
  /** Return the plan only; create no run. */
  dryRun?: boolean;
  /** Idempotency key (default: a new one, except for a dry run). */
  requestId?: string;
}

export interface SignalOptions {
  /** Data sent with the decision (plain JSON), checked against the node's payload_schema. */
  payload?: JsonValue;
  /**
   * Makes the signal idempotent: a retry with the same id returns the first response
   * (default: the server generates one, so a retry may conflict with its own first try).
   */
  signalId?: string;
  /** Free text for people, recorded in signal_received. */
  comment?: string;
  /** The iteration the signal is meant for (default 0: the node's current one). */
  iteration?: number;
  /**
   * For an agent waiting for the approval of a tool call: the call the decision is for
   * (the wait display's `id`; default: the one the node waits on now).
   */
  toolCallId?: string;
}

export interface DagoClient {
  submit(
    request: MessageInitShape<typeof SubmitGraphRequestSchema>,
    options?: CallOptions,
  ): Promise<SubmitGraphResponse>;
  /** The graph and inputs of a run, as submitted. */
  graph(graphId: string, options?: CallOptions): Promise<GetGraphResponse>;
  /**
   * One page of runs, newest first (pageSize, pageToken, state; filters createdAfter,
   * createdBefore, name, metadata ["key=value"], minCostUsd, namespace). With the run history
   * on, archived runs are in the same pages. namespace: an operator's key (see limits():
   * GetLimitsResponse.operator) may name any namespace and lists every one without it; a
   * tenant's key may name only its own (another: PermissionDenied).
   */
  list(
    request?: MessageInitShape<typeof ListGraphsRequestSchema>,
    options?: CallOptions,
  ): Promise<ListGraphsResponse>;
  /** A run's state (view: GraphStatusView, default FULL; BASIC leaves out inputs and outputs). */
  status(
    graphId: string,
    options?: CallOptions,
    view?: GraphStatusView,
  ): Promise<GetGraphStatusResponse>;
  /** One page of a node's attempts, with their inputs and outputs (pageSize, pageToken). */
  attempts(
    graphId: string,
    nodeId: string,
    request?: Omit<MessageInitShape<typeof ListNodeAttemptsRequestSchema>, "graphId" | "nodeId">,
    options?: CallOptions,
  ): Promise<ListNodeAttemptsResponse>;
  /** The worker processes alive now. */
  workers(options?: CallOptions): Promise<ListWorkersResponse>;
  /** The model rate limits shared by every worker, with their buckets' levels now. */
  limits(options?: CallOptions): Promise<GetLimitsResponse>;
  /** One page of dead letters, newest first (pageSize, pageToken, graphId). */
  deadLetters(
    request?: MessageInitShape<typeof ListDeadLettersRequestSchema>,
    options?: CallOptions,
  ): Promise<ListDeadLettersResponse>;
  /** Runs a dead-lettered node attempt again (not retried: a second call finds it gone). */
  requeueDeadLetter(deadLetterId: string, options?: CallOptions): Promise<RequeueDeadLetterResponse>;
  /** Removes a dead letter; a node still waiting for it fails (not retried). */
  dropDeadLetter(deadLetterId: string, options?: CallOptions): Promise<DropDeadLetterResponse>;
  /**
   * Tokens, cost, runs and failed runs of archived runs created in [startTime, endTime),
   * grouped by groupBy (UsageGroupBy); FailedPrecondition without the run history.
   */
  usage(
    request?: MessageInitShape<typeof GetUsageSummaryRequestSchema>,
    options?: CallOptions,
  ): Promise<GetUsageSummaryResponse>;
  status(graphId: string, options?: CallOptions): Promise<GetGraphStatusResponse>;
  /**
   * Sends `decision` to the waiting wait node `nodeId` (SignalGraph). InvalidArgument with
   * google.rpc.BadRequest field violations (decision, payload) for a decision the node does
   * not allow or a payload its schema refuses; FailedPrecondition when the node is not
   * waiting or the run has ended; Aborted (ErrorInfo SIGNAL_CONFLICT, the winner in its
   * metadata) when another decision won. Not retried.
   */
  signal(
    graphId: string,
    nodeId: string,
    decision: string,
    signal?: SignalOptions,
    options?: CallOptions,
  ): Promise<SignalGraphResponse>;
  /**
   * Publishes `graph` as the next version of definition `name` (validated as a submit); the
   * same graph as the latest answers that version with `created` false (docs/definitions.md).
   */
  publishDefinition(
    name: string,
    graph: MessageInitShape<typeof GraphSchema>,
    description?: string,
    options?: CallOptions,
  ): Promise<PublishDefinitionResponse>;
  /** One version: `name@7`, `name@prod`, or `name` with `version` (a number, a label, "latest"). */
  definition(
    name: string,
    version?: string | number,
    options?: CallOptions,
  ): Promise<DefinitionVersion>;
  /** One page of the namespace's definitions, by name (pageSize, pageToken). */
  definitions(
    request?: MessageInitShape<typeof ListDefinitionsRequestSchema>,
    options?: CallOptions,
  ): Promise<ListDefinitionsResponse>;
  /** One page of a definition's versions, newest first, without their graphs. */
  definitionVersions(
    name: string,
    request?: Omit<MessageInitShape<typeof ListDefinitionVersionsRequestSchema>, "name">,
    options?: CallOptions,
  ): Promise<ListDefinitionVersionsResponse>;
  /** Points `label` at `version` of `name` (creates or moves it). */
  labelDefinition(
    name: string,
    label: string,
    version: number,
    options?: CallOptions,
  ): Promise<DefinitionVersion>;
  /** Removes `label` of `name`; resolves to the version it pointed at (NOT_FOUND if absent). */
  unlabelDefinition(name: string, label: string, options?: CallOptions): Promise<number>;
  /** Deprecates a version (a number, a label or "latest"): new runs need allowDeprecated. */
  deprecateDefinition(
    name: string,
    version: string | number,
    options?: CallOptions,
  ): Promise<DefinitionVersion>;
  /** One page of the wait nodes waiting now in the caller's namespace, oldest first (ListWaits). */
  waits(
    request?: MessageInitShape<typeof ListWaitsRequestSchema>,
    options?: CallOptions,
  ): Promise<ListWaitsResponse>;
  /**
   * One page of a map node's items by index, with the map's counts (ListMapItems);
   * request.state keeps the items in one NodeState, request.pageToken pages on.
   */
  items(
    graphId: string,
    nodeId: string,
    request?: Omit<MessageInitShape<typeof ListMapItemsRequestSchema>, "graphId" | "nodeId">,
    options?: CallOptions,
  ): Promise<ListMapItemsResponse>;
  result(graphId: string, options?: CallOptions): Promise<GetGraphResultResponse>;
  cancel(graphId: string, reason?: string, options?: CallOptions): Promise<CancelGraphResponse>;
  /**
   * Raise a run's budget (UpdateGraphLimits): maxTokens and/or maxCostUsd (0 or absent keeps a
   * limit); a run its budget paused resumes (the response's resumed). See docs/limits.md.
   */
  updateLimits(
    graphId: string,
    limits: { maxTokens?: number | bigint; maxCostUsd?: number },
    options?: CallOptions,
  ): Promise<UpdateGraphLimitsResponse>;
  /**
   * A new run of a finished run (ForkGraph) reusing the recorded outputs of the nodes not
   * downstream of fromNodes (or of the failed ones, failedOnly); nodePatches (node id ->
   * partial node, JSON) and inputsPatch (a JSON merge patch) change what runs again;
   * dryRun returns the plan only. See docs/fork.md.
   */
  fork(graphId: string, fork?: ForkOptions, options?: CallOptions): Promise<ForkGraphResponse>;
  /**
   * A run's events in seq order (heartbeats skipped), ending after the terminal event.
   * A dropped stream is resumed from the last seq received, so no event is lost or repeated.
   */
  watch(graphId: string, options?: WatchOptions): AsyncGenerator<Event, void, undefined>;
  /**
   * Submits and streams in one call (RunGraph): the new run's events from its first
   * (graph_submitted, which carries the graph_id), ending after the terminal event. A
   * request_id is generated when none is given, so a resume never starts a second run; a
   * dropped stream is resumed with WatchGraph once the graph_id is known.
   */
  run(
    request: MessageInitShape<typeof SubmitGraphRequestSchema>,
    options?: Omit<WatchOptions, "afterSeq">,
  ): AsyncGenerator<Event, void, undefined>;
}

export declare function createDagoClient(baseUrl: string, options?: DagoClientOptions): DagoClient;
