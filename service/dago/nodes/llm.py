"""Model calls shared by the kinds that make them, and the ``llm`` node kind.

``ModelCaller`` (one per worker, in ``NodeDeps.model``) is how the ``llm``, ``router``
and ``agent`` kinds call a model: it renders an ``LlmNode``'s templates into a
request, resolves the provider and model, streams text deltas as coalesced events,
prices the usage and measures and traces the call. ``check_model`` is the submit-time
check of an ``LlmNode`` wherever it sits (``llm``, ``router.llm``, ``agent.llm``).

The ``llm`` node: render the prompt templates, call the provider, stream deltas; the
result is ``{text, model, provider}`` or, with an ``output_schema``, the object.

Streaming: text deltas are coalesced before they become ``llm_delta`` events, so
a watcher sees a smooth stream without one Redis write per token. A
``DeltaCoalescer`` buffers deltas and a single flusher task writes the buffer
as one event (one ``append.lua`` call) at most every ``interval`` (50 ms), or
at once when it holds ``max_chars`` (512) characters; the rest is flushed when
the call ends. Events keep the order of the text, and concatenated they equal
the output text. With a token stream of ~50 tokens/s this is ~20 writes/s per
running node instead of ~50, and far fewer for faster models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from typing import Any

from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from dago.config import LLM_PROVIDERS, Settings
from dago.engine.cel import EvalError, Template
from dago.engine.fields import clip
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.outcome import NodeFailure, Usage, invalid
from dago.engine.output_schema import schema_problem
from dago.llm import models
from dago.llm.base import ChatMessage, LlmRequest, LlmResponse, Provider
from dago.llm.prices import PriceTable
from dago.llm.providers import Providers
from dago.nodes.base import Emit, NodeContext, NodeHandler, NodeKind, NodeResult
from dago.nodes.budget import Budget, CallCost, Reservation, estimate_input_tokens
from dago.nodes.ratelimit import Limiter
from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing, fail
from dago.store.values import to_plain
from dago.v1 import graph_pb2

log = logging.getLogger("dago.llm")

MAX_TOKENS = 1_000_000


def check_model(
    spec: graph_pb2.LlmNode, ctx: CheckContext, prefix: str = "llm", router: bool = False
) -> dict[str, Template]:
    """Checks of an ``LlmNode`` at ``prefix`` in the node (``llm``, ``router.llm``,
    ``agent.llm``); its templates. A router's model needs no prompt and has no schema."""
    if spec.provider and spec.provider not in LLM_PROVIDERS:
        ctx.add(
            f"{prefix}.provider",
            f'unknown provider "{spec.provider}": use one of {", ".join(LLM_PROVIDERS)} '
            "(empty: the server default)",
        )
    if not spec.prompt and not spec.messages and not router:
        ctx.add(f"{prefix}.prompt", "an llm node needs a prompt or messages")
    if not 0 <= spec.max_tokens <= MAX_TOKENS:
        ctx.add(f"{prefix}.max_tokens", f"must be between 0 and {MAX_TOKENS} (0: server default)")
    if spec.HasField("temperature") and not 0 <= spec.temperature <= 2:
        ctx.add(f"{prefix}.temperature", "must be between 0 and 2")
    for i, stop in enumerate(spec.stop_sequences):
        if not stop.strip():
            ctx.add(f"{prefix}.stop_sequences[{i}]", "must not be empty or blank")
    if spec.HasField("output_schema") and router:
        ctx.add(
            f"{prefix}.output_schema", "a router's model answers with the route: leave it unset"
        )
    elif spec.HasField("output_schema"):
        problem = schema_problem(to_plain(spec.output_schema))
        if problem:
            ctx.add(f"{prefix}.output_schema", problem)
    check_settings(spec, ctx, prefix)
    fields = {f"{prefix}.system": spec.system, f"{prefix}.prompt": spec.prompt}
    for i, m in enumerate(spec.messages):
        if m.role not in ("user", "assistant"):
            ctx.add(f"{prefix}.messages[{i}].role", 'must be "user" or "assistant"')
        fields[f"{prefix}.messages[{i}].content"] = m.content
    return ctx.templates(fields)


def enum_value(enum: Any, value: int, prefix: str) -> str:
    """``low`` for EFFORT_LOW (``prefix`` ``EFFORT_``); empty for the UNSPECIFIED zero."""
    return "" if not value else str(enum.Name(value)).removeprefix(prefix).lower()


def check_settings(spec: graph_pb2.LlmNode, ctx: CheckContext, prefix: str) -> None:
    """The model's settings against what the model accepts (``dago.llm.models``): a request
    the API would refuse is refused here, naming the field, instead of failing at run time.

    Checked when the node's provider (or the server's default) is anthropic, or names none
    and the model is a Claude model. The model is the node's, else the server's default."""
    provider = spec.provider or ctx.options.llm_provider
    if provider not in ("anthropic", "") or (not provider and not models.is_claude(spec.model)):
        return
    name = spec.model or ctx.options.llm_model or models.DEFAULT_MODEL
    info = models.find(name)
    if info is None:
        if not ctx.options.allow_unknown_models:
            where = "" if spec.model else " (the server's default model, DAGO_LLM_MODEL)"
            ctx.add(
                f"{prefix}.model",
                f'unknown model "{clip(name)}"{where}: `dago models` lists the known ones; an '
                "operator may allow others (DAGO_ALLOW_UNKNOWN_MODELS with "
                "DAGO_UNKNOWN_MODEL_PRICE)",
            )
        return
    if spec.HasField("temperature") and not info.sampling:
        ctx.add(
            f"{prefix}.temperature",
            f"{info.id} does not accept sampling parameters (the API refuses temperature on "
            "it): leave temperature unset",
        )
    effort = enum_value(graph_pb2.Effort, spec.effort, "EFFORT_")
    if effort and effort not in info.efforts:
        accepted = ", ".join(info.efforts) if info.efforts else "none: it has no effort setting"
        ctx.add(f"{prefix}.effort", f'{info.id} does not accept effort "{effort}" ({accepted})')
    thinking = enum_value(graph_pb2.Thinking, spec.thinking, "THINKING_")
    if thinking and thinking not in info.thinking:
        accepted = ", ".join(t for t in info.thinking if t != "enabled") or "none"
        ctx.add(
            f"{prefix}.thinking", f'{info.id} does not accept thinking "{thinking}" ({accepted})'
        )
    if spec.max_tokens > info.max_output:
        ctx.add(f"{prefix}.max_tokens", f"{info.id} writes at most {info.max_output} tokens")


class DeltaCoalescer:
    """Turns many small text deltas into few ``llm_delta`` events (see the module doc)."""

    def __init__(self, emit: Emit, interval: float = 0.05, max_chars: int = 512) -> None:
        self._emit = emit
        self.interval = interval
        self.max_chars = max_chars
        self._buf: list[str] = []
        self._size = 0
        self._last = 0.0
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._flushing = False
        self.events = 0
        # Started by the first delta: a call without text (structured output) needs none.
        self._task: asyncio.Task[None] | None = None

    def add(self, text: str) -> None:
        """Buffer one delta (called synchronously by the provider)."""
        if not text:
            return
        self._buf.append(text)
        self._size += len(text)
        self._pending.set()
        if self._size >= self.max_chars:
            self._full.set()
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            wait = self._last + self.interval - time.monotonic()
            if wait > 0 and not self._closing and self._size < self.max_chars:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._full.wait()
            await self._flush()
            if self._closing and not self._buf:
                return

    async def _flush(self) -> None:
        self._pending.clear()
        if not self._buf:
            return
        text = "".join(self._buf)
        self._buf.clear()
        self._size = 0
        self._last = time.monotonic()
        self.events += 1
        self._flushing = True
        try:
            await self._emit([("llm_delta", json.dumps({"text": text}, ensure_ascii=False))])
        except Exception as e:  # deltas are progress, not state: a lost one must not fail the node
            log.warning("could not record an llm_delta event: %s", e)
        finally:
            self._flushing = False

    async def close(self) -> None:
        """Flush what is buffered, at once, and stop."""
        self._closing = True
        task = self._task
        if task is not None and not task.done():
            if self._flushing:
                # An event is being written: the flusher writes the rest right after it (in
                # order), without waiting out the interval.
                self._pending.set()
                self._full.set()
                await task
                return
            # The flusher is waiting (for deltas or out the interval), not writing: stop it
            # and write the rest from here, without a hop through its task. (Waiting out the
            # interval here cost every LLM node up to 50 ms after its model had answered.)
            task.cancel()
        await self._flush()

    def abort(self) -> None:
        """Stop without flushing (the attempt failed or was cancelled)."""
        if self._task is not None:
            self._task.cancel()


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _class_name(error_class: int) -> str:
    """``rate_limited`` for ERROR_CLASS_RATE_LIMITED (a bounded label value)."""
    try:
        return graph_pb2.ErrorClass.Name(error_class).removeprefix("ERROR_CLASS_").lower()  # type: ignore[arg-type]
    except ValueError:
        return "unknown"


class ModelCaller:
    """Calls models for the nodes of a worker (see the module doc)."""

    def __init__(
        self,
        providers: Providers,
        prices: PriceTable,
        default_max_tokens: int,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        log_prompts: bool = False,
        cache_ttl: str = "5m",
        limiter: Limiter | None = None,
        budget: Budget | None = None,
    ) -> None:
        self._cache_ttl = cache_ttl
        self._limiter = limiter
        self._budget = budget or Budget()
        self._providers = providers
        self._prices = prices
        self._max_tokens = default_max_tokens
        self._metrics = metrics or Metrics(CollectorRegistry())
        self._tracing = tracing or Tracing("dago-worker", {})
        self._log_prompts = log_prompts

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        metrics: Metrics,
        tracing: Tracing,
        limiter: Limiter | None = None,
        budget: Budget | None = None,
    ) -> ModelCaller:
        """The providers, prices and defaults of ``settings``; ``limiter``: the model rate
        limits (``dago.nodes.ratelimit``), if any; ``budget``: the worker's run budgets."""
        return cls(
            Providers(settings),
            PriceTable(settings.prices, settings.unknown_model_price, settings.price_multiplier),
            settings.llm_max_tokens,
            metrics=metrics,
            tracing=tracing,
            log_prompts=settings.log_prompts,
            cache_ttl=settings.llm_cache_ttl,
            limiter=limiter,
            budget=budget,
        )

    def request(
        self,
        ctx: NodeContext,
        model: str,
        spec: graph_pb2.LlmNode | None = None,
        prefix: str = "llm",
    ) -> LlmRequest:
        """The request of ``spec`` (default: the node's ``llm``) with its templates rendered
        over the scope and ``input``; ``prefix`` is where ``spec`` sits in the node."""
        spec = ctx.node.proto.llm if spec is None else spec
        data = {**ctx.scope, "input": ctx.input}
        templates = ctx.node.templates

        def render(key: str, raw: str) -> str:
            t = templates.get(key)
            if t is None:
                return raw
            try:
                return _text(t.render(data))
            except EvalError as e:
                raise invalid(str(e)) from None

        if spec.messages:
            messages = [
                ChatMessage(m.role, render(f"{prefix}.messages[{i}].content", m.content))
                for i, m in enumerate(spec.messages)
            ]
        else:
            messages = [ChatMessage("user", render(f"{prefix}.prompt", spec.prompt))]
        schema = to_plain(spec.output_schema) if spec.HasField("output_schema") else None
        ttl = spec.cache_ttl or ctx.node.llm_cache_ttl
        cache_ttl = enum_value(graph_pb2.CacheTtl, ttl, "CACHE_TTL_") if ttl else self._cache_ttl
        # Cached by default only where a prefix repeats: an agent's conversation (each turn
        # repeats the last), or a system prompt that is no template (the same in every run).
        # A node that sets a lifetime asks for caching whatever its prompt.
        static_system = bool(spec.system) and f"{prefix}.system" not in templates
        if not spec.cache_ttl and prefix != "agent.llm" and not static_system:
            cache_ttl = ""
        return LlmRequest(
            model=model,
            messages=messages,
            max_tokens=spec.max_tokens or self._max_tokens,
            system=render(f"{prefix}.system", spec.system),
            temperature=spec.temperature if spec.HasField("temperature") else None,
            stop=list(spec.stop_sequences),
            metadata=dict(spec.metadata),
            output_schema=schema,
            effort=enum_value(graph_pb2.Effort, spec.effort, "EFFORT_"),
            thinking=enum_value(graph_pb2.Thinking, spec.thinking, "THINKING_"),
            cache_ttl="" if cache_ttl == "off" else cache_ttl,
            cache_system=prefix != "agent.llm" and static_system,
        )

    async def call(
        self, ctx: NodeContext, spec: graph_pb2.LlmNode, request: LlmRequest, provider: Provider
    ) -> tuple[LlmResponse, Usage]:
        """Run ``request`` on ``provider``, streaming text deltas as coalesced events.

        The call is a span following the OpenTelemetry GenAI conventions and is measured
        (duration, time to first token, tokens, cost, errors by class). Its worst case is
        reserved against the run's budget first (which may lower its max_tokens,
        ``dago.nodes.budget``), then in its model's rate-limit bucket (``Throttled`` when it
        has no room, ``dago.nodes.ratelimit``); both are reconciled to its usage after it."""
        request, held = await self._reserve(ctx, request)
        usage: Usage | None = None
        try:
            resp, usage = await self._limited(ctx, request, provider)
        except NodeFailure as f:
            usage = f.usage
            raise
        finally:
            if held is not None:
                await asyncio.shield(self._budget.reconcile(ctx, held, usage))
        return resp, usage

    async def _reserve(
        self, ctx: NodeContext, request: LlmRequest
    ) -> tuple[LlmRequest, Reservation | None]:
        """``request`` with the max_tokens the run's budget grants, and what it holds."""
        tokens = estimate_input_tokens(request)
        price_in, price_out = self._prices.worst(request.model, tokens, request.cache_ttl)
        # A model is a metrics label only when the price table knows it (as in _measure).
        label = request.model if self._prices.price(request.model) is not None else "other"
        cost = CallCost(label, tokens, request.max_tokens, price_in, price_out)
        granted, held = await self._budget.reserve(ctx, cost)
        if granted != request.max_tokens:
            request = replace(request, max_tokens=granted)
        return request, held

    async def _limited(
        self, ctx: NodeContext, request: LlmRequest, provider: Provider
    ) -> tuple[LlmResponse, Usage]:
        """The call within its model's rate limit, if it has one: reserved first, settled to
        its usage after, and a provider's 429 pauses the model for every worker."""
        limiter = self._limiter
        if limiter is None:
            return await self._call(ctx, request, provider)
        held = await limiter.reserve(
            provider.name, request.model, estimate_input_tokens(request), request.max_tokens
        )
        if held is None:
            return await self._call(ctx, request, provider)
        used = Usage()
        try:
            resp, used = await self._call(ctx, request, provider)
            return resp, used
        except NodeFailure as f:
            used = f.usage or used
            if f.error_class == graph_pb2.ERROR_CLASS_RATE_LIMITED and f.retry_after:
                await limiter.pause(provider.name, request.model, f.retry_after)
            raise
        finally:
            inputs = used.input_tokens + used.cache_creation_input_tokens
            await asyncio.shield(
                limiter.settle(held, inputs + used.cache_read_input_tokens, used.output_tokens)
            )

    async def _call(
        self, ctx: NodeContext, request: LlmRequest, provider: Provider
    ) -> tuple[LlmResponse, Usage]:
        """The call itself (``call`` without the budget and the rate limits)."""
        deltas = DeltaCoalescer(ctx.emit)
        started = time.perf_counter()
        first: list[float] = []

        def on_text(text: str) -> None:
            if not first:
                first.append(time.perf_counter() - started)
            deltas.add(text)

        if self._log_prompts and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "llm request",
                extra={"system": request.system, "messages": [m.content for m in request.messages]},
            )
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.system": provider.name,
            "gen_ai.provider.name": provider.name,
            "gen_ai.request.model": request.model,
            "gen_ai.request.max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            attrs["gen_ai.request.temperature"] = request.temperature
        with self._tracing.span(f"chat {request.model}", attrs, SpanKind.CLIENT) as span:
            try:
                resp = await provider.complete(request, on_text)
            except NodeFailure as f:
                deltas.abort()
                # The tokens of a model that answered, but not usably, are paid for.
                usage = f.usage = self.price(f.usage) if f.usage is not None else None
                self._measure(provider.name, request.model, started, first, usage, f.error_class)
                fail(span, _class_name(f.error_class), f.message)
                raise
            except BaseException:
                deltas.abort()
                raise
            await deltas.close()
            usage = self.price(resp.usage)
            self._measure(provider.name, resp.model, started, first, usage, 0)
            if span is not None:
                span.set_attribute("gen_ai.response.model", resp.model)
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
                span.set_attribute(
                    "gen_ai.usage.cache_read.input_tokens", usage.cache_read_input_tokens
                )
                span.set_attribute(
                    "gen_ai.usage.cache_creation.input_tokens", usage.cache_creation_input_tokens
                )
                span.set_attribute("dago.llm.cost_usd", usage.cost_usd)
        if self._log_prompts and log.isEnabledFor(logging.DEBUG):
            log.debug("llm reply", extra={"reply": resp.text})
        return resp, usage

    def _measure(
        self,
        provider: str,
        model: str,
        started: float,
        first: list[float],
        usage: Usage | None,
        error_class: int,
    ) -> None:
        u = usage or Usage()
        # A model is a label only when the operator's price table knows it: a graph names any
        # model it likes, and /metrics must not show one tenant's model names to others.
        self._metrics.llm_call(
            provider,
            model if self._prices.price(model) is not None else "other",
            time.perf_counter() - started,
            first[0] if first else None,
            (
                u.input_tokens,
                u.output_tokens,
                u.cache_creation_input_tokens,
                u.cache_read_input_tokens,
            ),
            u.cost_usd,
            _class_name(error_class) if error_class else "",
        )

    @property
    def tracing(self) -> Tracing:
        """The tracer of this worker (the agent node's tool-call spans use it too)."""
        return self._tracing

    async def warm(self) -> None:
        """Import the default provider's SDK now, so a worker's first model call does not
        spend its attempt timeout on a seconds-long import (once: later calls return)."""
        await self._providers.load("")

    async def resolve(self, spec: graph_pb2.LlmNode) -> tuple[Provider, str]:
        """The provider and model ``spec`` uses (its SDK imported off the event loop)."""
        await self._providers.load(spec.provider)
        return self._providers.resolve(spec.provider, spec.model)

    def price(self, usage: Usage) -> Usage:
        """``usage`` with its cost by the price table (any cost it had is replaced)."""
        return replace(usage, cost_usd=self._prices.cost(usage))


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The node's ``llm`` model, prompt and templates (``check_model``)."""
    return KindParts(templates=check_model(node.llm, ctx))


class LlmHandler(NodeHandler):
    """Runs ``llm`` nodes."""

    def __init__(self, model: ModelCaller) -> None:
        self._model = model

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Call the model; the result is ``{text, model, provider}`` or the structured object."""
        spec = ctx.node.proto.llm
        provider, model = await self._model.resolve(spec)
        request = self._model.request(ctx, model)
        resp, usage = await self._model.call(ctx, spec, request, provider)
        if resp.object is not None:
            return NodeResult(resp.object, usage=usage)
        return NodeResult(
            {"text": resp.text, "model": resp.model, "provider": provider.name}, usage=usage
        )

    async def warm(self) -> None:
        """Import the default provider's SDK (``ModelCaller.warm``)."""
        await self._model.warm()


KIND = NodeKind("llm", check, lambda deps: LlmHandler(deps.model))
