"""Settings, read from ``DAGO_*`` environment variables and validated at start.

Every setting is declared once in ``SETTINGS`` with its type, default and
documentation; ``dago config`` prints the effective values (secrets redacted)
and ``docs/configuration.md`` lists the same table.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml


class ConfigError(ValueError):
    """A setting has a value dago cannot use; the message names the variable."""


NAMESPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
"""Namespace names (always ``fullmatch``: ``match`` with ``$`` lets a trailing newline
through): they become part of Redis keys and timer entries, so no ``:``, ``|`` or braces."""

DEFAULT_NAMESPACE = "default"
"""The namespace of every call when authentication is off (and of a run stored without
one)."""

LLM_PROVIDERS = ("anthropic", "openai", "offline")
"""The LLM providers dago has: what ``DAGO_LLM_PROVIDER`` and a node's ``provider`` may name."""


@dataclass(frozen=True)
class Settings:
    """The effective configuration of one dago process."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "dago"
    shards: int = 8
    grpc_host: str = "[::]"
    grpc_port: int = 50051
    metrics_port: int = 9090
    worker_slots: int = 64
    worker_batch: int = 64
    worker_id: str = ""
    lease_ms: int = 30_000
    max_deliveries: int = 5
    retention_s: int = 7 * 24 * 3600
    sweep_interval_ms: int = 100
    heartbeat_ms: int = 5_000
    watch_max_lag_s: float = 60.0
    default_deadline_s: int = 24 * 3600
    attempt_timeout_s: float = 300.0
    max_nodes: int = 1000
    max_edges: int = 5000
    max_graph_bytes: int = 1024 * 1024
    max_expression_tokens: int = 512
    compile_budget_s: float = 2.0
    max_message_bytes: int = 4 * 1024 * 1024
    tool_modules: str = ""
    drain_timeout_s: float = 30.0
    log_level: str = "INFO"
    workers: int = 1
    dev_restart_delay_s: float = 1.0
    edge_host: str = "127.0.0.1"
    edge_port: int = 8080
    edge_cors_origins: str = ""
    edge_max_connections: int = 10_000
    edge_headers_timeout_s: float = 10.0
    edge_idle_timeout_s: float = 60.0
    edge_watch_idle_timeout_s: float = 30.0
    edge_buffer_bytes: int = 32 * 1024
    edge_max_heap_bytes: int = 1 << 30
    edge_client_rps: int = 0
    edge_trusted_hops: int = 0
    llm_provider: str = ""
    llm_model: str = ""
    llm_max_tokens: int = 1024
    budget_floor_tokens: int = 64
    offline_tokens_per_s: float = 0.0
    anthropic_api_key: str = field(default="", repr=False)
    anthropic_base_url: str = ""
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = "https://api.openai.com/v1"
    openai_structured_output: str = "json_schema"
    prices: str = ""
    price_multiplier: float = 1.0
    allow_unknown_models: bool = False
    unknown_model_price: str = ""
    llm_cache_ttl: str = "5m"
    http_allow: str = ""
    http_max_response_bytes: int = 10 * 1024 * 1024
    mcp_servers: str = field(default="", repr=False)
    agent_max_turns: int = 10
    tool_timeout_s: float = 60.0
    config_file: str = ""
    log_format: str = "json"
    log_prompts: bool = False
    worker_metrics_port: int = 9091
    worker_heartbeat_ms: int = 2000
    worker_ttl_ms: int = 10_000
    auth: str = "keys"
    api_keys: str = field(default="", repr=False)
    api_keys_file: str = ""
    operator_namespaces: str = ""
    max_active_graphs: int = 0
    max_definitions: int = 1000
    max_definition_versions: int = 1000
    max_inputs_bytes: int = 1024 * 1024
    max_events_per_graph: int = 100_000
    max_run_bytes: int = 64 * 1024 * 1024
    max_graph_depth: int = 5
    max_node_bytes: int = 1024 * 1024
    max_value_bytes: int = 1024 * 1024
    max_event_bytes: int = 256 * 1024
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    postgres_url: str = field(default="", repr=False)
    postgres_pool_size: int = 4
    archive_batch: int = 50
    migrate_at_start: bool = False
    namespaces_file: str = ""
    rate_limits: str = ""

    @property
    def cluster(self) -> bool:
        """True when ``redis_url`` asks for Redis Cluster (``redis+cluster://``)."""
        return self.redis_url.startswith("redis+cluster://") or self.redis_url.startswith(
            "rediss+cluster://"
        )

    def effective_worker_id(self) -> str:
        """The worker id: the configured one, or ``<host>-<pid>``."""
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class _Spec:
    doc: str
    check: Callable[[Any], str | None] = lambda v: None
    secret: bool = False


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _port(v: Any) -> str | None:
    return None if 0 <= v <= 65535 else "must be a TCP port (0-65535; 0 disables)"


def _redis_url(v: Any) -> str | None:
    scheme = urlsplit(v).scheme
    ok = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")
    return None if scheme in ok else f"must start with one of {', '.join(s + '://' for s in ok)}"


def _provider(v: Any) -> str | None:
    if v == "" or v in LLM_PROVIDERS:
        return None
    names = ", ".join(LLM_PROVIDERS[:-1]) + f" or {LLM_PROVIDERS[-1]}"
    return f"must be {names} (empty: automatic)"


def _mcp_servers(v: Any) -> str | None:
    try:
        parse_mcp_servers(v)
    except ValueError as e:
        return str(e)
    return None


def _prices(v: Any) -> str | None:
    if not v:
        return None
    try:
        text = v if v.lstrip().startswith("{") else Path(v).read_text(encoding="utf-8")
        table = json.loads(text)
    except (OSError, ValueError) as e:
        return f"must be a JSON object or the path of a JSON file ({e})"
    if not isinstance(table, dict):
        return "must be a JSON object: model -> {input, output, cache_write, cache_read}"
    for model, row in table.items():
        rows = [row, row.get("long_prompt") or {}] if isinstance(row, dict) else [row]
        if not all(
            isinstance(r, dict)
            and all(
                isinstance(r.get(k, 0), int | float) and r.get(k, 0) >= 0
                for k in ("input", "output", "cache_write", "cache_write_1h", "cache_read")
            )
            for r in rows
        ):
            return f"{model!r}: give non-negative USD per million tokens as numbers"
    return None


@dataclass(frozen=True)
class ModelRateLimit:
    """One model's limits of ``DAGO_RATE_LIMITS`` (per minute; 0: that measure unlimited)."""

    requests_per_minute: float = 0.0
    input_tokens_per_minute: float = 0.0
    output_tokens_per_minute: float = 0.0
    burst_seconds: float = 1.0
    """How much of a minute's allowance may be spent at once (the bucket holds this many
    seconds of it; at least two requests, and any single call fits a full bucket)."""


_RATE_FIELDS = ("requests_per_minute", "input_tokens_per_minute", "output_tokens_per_minute")


def parse_rate_limits(text: str) -> dict[str, ModelRateLimit]:
    """The limits of a ``DAGO_RATE_LIMITS`` value (JSON or a JSON file's path) by
    ``provider/model``; raises ValueError saying what is wrong."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"must be a JSON object or the path of a JSON file ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError('must be a JSON object of "provider/model" to limits')
    out: dict[str, ModelRateLimit] = {}
    for key, spec in raw.items():
        provider, _, model = str(key).partition("/")
        if provider not in LLM_PROVIDERS or not model or "{" in model or "}" in model:
            raise ValueError(
                f'{key!r}: name "provider/model" (or "provider/*") with a provider of '
                f"{', '.join(LLM_PROVIDERS)}"
            )
        if not isinstance(spec, dict) or set(spec) - {*_RATE_FIELDS, "burst_seconds"}:
            raise ValueError(f"{key!r}: an object of {', '.join(_RATE_FIELDS)}, burst_seconds")
        values = {k: spec.get(k, 0) for k in _RATE_FIELDS}
        values["burst_seconds"] = spec.get("burst_seconds", 1.0)
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ValueError(f"{key!r}: {k} must be a non-negative number")
        if values["burst_seconds"] <= 0:
            raise ValueError(f"{key!r}: burst_seconds must be positive")
        out[str(key)] = ModelRateLimit(**{k: float(v) for k, v in values.items()})
    return out


def find_rate_limit(
    limits: Mapping[str, ModelRateLimit], provider: str, model: str
) -> ModelRateLimit | None:
    """The limit of ``provider``'s ``model``: its own entry, else the provider's ``*`` entry
    (each model still has a bucket of its own), else None (not limited)."""
    return limits.get(f"{provider}/{model}") or limits.get(f"{provider}/*")


def _rate_limits_problem(v: str) -> str | None:
    try:
        parse_rate_limits(v)
    except ValueError as e:
        return str(e)
    return None


def _allow(v: Any) -> str | None:
    for item in filter(None, (x.strip() for x in v.split(","))):
        if "/" in item:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                return f"{item!r} is not a CIDR (e.g. 10.0.0.0/8)"
    return None


@dataclass(frozen=True)
class NamespaceShare:
    """One namespace's share of the service (DAGO_NAMESPACES_FILE): 0 means no cap."""

    weight: float = 1.0
    """Its share of the slots against other namespaces with work waiting."""
    max_running_nodes: int = 0
    """Work items of the namespace running at once; more wait in their queue."""
    max_active_runs: int = 0
    """Runs submitted or running at once; more submissions get RESOURCE_EXHAUSTED."""
    daily_cost_usd: float = 0.0
    """What its runs may cost per UTC day; past it new runs get RESOURCE_EXHAUSTED."""


@dataclass(frozen=True)
class NamespaceShares:
    """Every namespace's share: those named, and the default for the others."""

    named: dict[str, NamespaceShare] = field(default_factory=dict)
    default: NamespaceShare = NamespaceShare()

    def of(self, namespace: str) -> NamespaceShare:
        """The share of ``namespace``."""
        return self.named.get(namespace or "default", self.default)


_SHARE_FIELDS = {
    "weight": float,
    "max_running_nodes": int,
    "max_active_runs": int,
    "daily_cost_usd": float,
}


def _share(raw: Any, where: str) -> NamespaceShare:
    if raw is None:
        return NamespaceShare()
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be a mapping of {', '.join(_SHARE_FIELDS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kind = _SHARE_FIELDS.get(str(key))
        if kind is None:
            raise ValueError(f"{where}.{key}: unknown (use {', '.join(_SHARE_FIELDS)})")
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or (kind is int and not isinstance(value, int)) or value < 0:
            raise ValueError(f"{where}.{key}: must be a non-negative {kind.__name__}")
        values[str(key)] = kind(value)
    if values.get("weight", 1.0) <= 0:
        raise ValueError(f"{where}.weight: must be greater than 0")
    return NamespaceShare(**values)


def parse_namespaces(text: str, source: str = "DAGO_NAMESPACES_FILE") -> NamespaceShares:
    """The shares a namespaces file holds (YAML, or JSON, which YAML reads); raises
    ValueError naming the field that is wrong."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{source}: cannot be read: {e}") from None
    if not isinstance(data, dict) or not set(data) <= {"namespaces", "default"}:
        raise ValueError(f"{source}: must be a mapping with namespaces and default")
    named = data.get("namespaces") or {}
    if not isinstance(named, dict):
        raise ValueError(f"{source}: namespaces must map namespace names to shares")
    out: dict[str, NamespaceShare] = {}
    for name, raw in named.items():
        if not NAMESPACE_NAME.fullmatch(str(name)):
            raise ValueError(f"{source}: namespaces.{name}: not a namespace name")
        out[str(name)] = _share(raw, f"{source}: namespaces.{name}")
    return NamespaceShares(out, _share(data.get("default"), f"{source}: default"))


def load_namespaces(path: str) -> NamespaceShares:
    """The shares of the file DAGO_NAMESPACES_FILE names (empty: every namespace alike)."""
    if not path:
        return NamespaceShares()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"DAGO_NAMESPACES_FILE={path!r} cannot be read: {e}") from None
    try:
        return parse_namespaces(text, f"DAGO_NAMESPACES_FILE={path!r}")
    except ValueError as e:
        raise ConfigError(str(e)) from None


class NamespacesFile:
    """DAGO_NAMESPACES_FILE as it is now, for the daily cost budgets (the API checks them at
    submit, the workers at each model call): read again when the file changed, so raising a
    namespace's ``daily_cost_usd`` needs no restart (a Kubernetes ConfigMap's edit reaches
    the mounted file by itself). A change that cannot be read or is invalid keeps the last
    good shares and is logged once. The weights and caps are not re-read: they are written
    to Redis as a process starts."""

    def __init__(self, path: str, shares: NamespaceShares) -> None:
        self._path = path
        self._shares = shares
        self._seen: tuple[int, int, int] | None = None
        if path:
            self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)  # follows the ConfigMap's symlinks to the file itself
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> NamespaceShares:
        """The shares, read again if the file changed since it was last read."""
        if not self._path:
            return self._shares
        stamp = self._stamp()
        if stamp is None or stamp == self._seen:
            return self._shares
        self._seen = stamp
        try:
            self._shares = load_namespaces(self._path)
        except ConfigError as e:
            logging.getLogger("dago.config").warning("keeping the namespaces as they were: %s", e)
        return self._shares


def _namespaces_problem(v: Any) -> str | None:
    try:
        load_namespaces(v)
    except ConfigError as e:
        return str(e)
    return None


def _log_format(v: Any) -> str | None:
    return None if v in ("json", "console") else "must be json or console"


def _level(v: Any) -> str | None:
    ok = ("DEBUG", "INFO", "WARNING", "ERROR")
    return None if v.upper() in ok else f"must be one of {', '.join(ok)}"


MCP_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""MCP server names, always ``fullmatch``ed (``match`` with ``$`` takes a trailing newline)."""


@dataclass(frozen=True)
class McpServerConfig:
    """How to reach one MCP server of ``DAGO_MCP_SERVERS`` (``dago.nodes.mcp`` connects)."""

    name: str
    command: tuple[str, ...] = ()
    """A stdio server: the program and its arguments."""
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    url: str = ""
    """A streamable HTTP server."""
    headers: dict[str, str] = field(default_factory=dict)


def parse_mcp_servers(text: str) -> dict[str, McpServerConfig]:
    """The servers of a ``DAGO_MCP_SERVERS`` value; raises ValueError saying what is wrong."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ValueError(f"must be a JSON object ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object of server name to {command} or {url}")
    out: dict[str, McpServerConfig] = {}
    for name, spec in raw.items():
        if not MCP_SERVER_NAME.fullmatch(name):
            raise ValueError(f"server name {name!r}: use 1-32 letters, digits, _ or -")
        if not isinstance(spec, dict):
            raise ValueError(f"server {name!r}: must be an object with command or url")
        command, url = spec.get("command"), spec.get("url")
        if (command is None) == (url is None):
            raise ValueError(f"server {name!r}: give exactly one of command (stdio) or url")
        env, headers = spec.get("env", {}), spec.get("headers", {})
        for what, mapping in (("env", env), ("headers", headers)):
            if not isinstance(mapping, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
            ):
                raise ValueError(f"server {name!r}: {what} must map strings to strings")
        if command is not None:
            if (
                not isinstance(command, list)
                or not command
                or not all(isinstance(c, str) and c for c in command)
            ):
                raise ValueError(f"server {name!r}: command must be a non-empty list of strings")
            out[name] = McpServerConfig(
                name, tuple(command), dict(env), str(spec.get("cwd", "")), "", {}
            )
        else:
            if not isinstance(url, str) or not re.match(r"^https?://", url):
                raise ValueError(f"server {name!r}: url must be an http:// or https:// URL")
            out[name] = McpServerConfig(name, (), {}, "", url, dict(headers))
    return out


SETTINGS: dict[str, _Spec] = {
    "redis_url": _Spec(
        "Redis to use; redis+cluster://host:port for Redis Cluster, rediss:// for TLS, "
        "credentials in the URL.",
        _redis_url,
        secret=True,
    ),
    "key_prefix": _Spec("Prefix of every Redis key (several deployments can share a Redis)."),
    "shards": _Spec(
        "Number of work shards; graphs are spread over them (one hash slot each). Must stay "
        "the same for the life of the data.",
        lambda v: None if 1 <= v <= 1024 else "must be between 1 and 1024",
    ),
    "grpc_host": _Spec("Address the gRPC server binds."),
    "grpc_port": _Spec("Port of the gRPC API.", _port),
    "metrics_port": _Spec("Port of the Prometheus /metrics endpoint (0: off).", _port),
    "worker_slots": _Spec("Node attempts one worker process runs at once.", _positive),
    "worker_batch": _Spec("Work items read per Redis call.", _positive),
    "worker_id": _Spec("Worker id (default: <host>-<pid>)."),
    "lease_ms": _Spec(
        "How long a work item may go without its worker renewing it before another worker "
        "takes it over.",
        lambda v: None if v >= 500 else "must be at least 500",
    ),
    "max_deliveries": _Spec("Deliveries of one work item before it is dead-lettered.", _positive),
    "retention_s": _Spec(
        "How long finished graphs are kept in Redis, in seconds (with DAGO_POSTGRES_URL: "
        "counted from when the run was archived; PostgreSQL keeps it after that).",
        _positive,
    ),
    "postgres_url": _Spec(
        "PostgreSQL for long-term run history (postgresql://user:pass@host:5432/db); empty: "
        "no history, finished runs live only in Redis for retention_s. See docs/history.md.",
        lambda v: (
            None
            if v == "" or urlsplit(v).scheme in ("postgres", "postgresql")
            else "must start with postgresql:// (or be empty)"
        ),
        secret=True,
    ),
    "postgres_pool_size": _Spec("Connections each process keeps to PostgreSQL.", _positive),
    "namespaces_file": _Spec(
        "YAML or JSON file of the namespaces' fair shares: `{namespaces: {<name>: {weight, "
        "max_running_nodes, max_active_runs, daily_cost_usd}}, default: {...}}` (docs/limits.md, "
        "Fair shares); empty: weight 1 and no caps for every namespace. The daily budgets are "
        "read again when the file changes; the weights and caps at start.",
        lambda v: _namespaces_problem(v),
    ),
    "archive_batch": _Spec("Finished runs archived to PostgreSQL per round.", _positive),
    "migrate_at_start": _Spec(
        "Apply PostgreSQL schema migrations when an API process starts, before it archives "
        "(else: `dago migrate`)."
    ),
    "sweep_interval_ms": _Spec(
        "How often timers (retries, timeouts, deadlines) are swept.", _positive
    ),
    "heartbeat_ms": _Spec("Heartbeat interval of idle WatchGraph streams.", _positive),
    "watch_max_lag_s": _Spec(
        "Seconds a WatchGraph stream may fall further behind its graph's events than it was "
        "when it started (its client reads too slowly) before it is ended with "
        "ABORTED (reason WATCH_TOO_SLOW, naming the last event sent); the client "
        "watches again from there.",
        _positive,
    ),
    "default_deadline_s": _Spec(
        "Deadline of graphs that set none, in seconds (0: none).",
        lambda v: None if v >= 0 else "must not be negative",
    ),
    "attempt_timeout_s": _Spec("Timeout of a node attempt when the graph sets none.", _positive),
    "max_nodes": _Spec("Largest number of nodes in one graph.", _positive),
    "max_edges": _Spec("Largest number of edges in one graph.", _positive),
    "max_graph_bytes": _Spec(
        "Largest graph definition (serialized protobuf bytes), refused before it is checked.",
        _positive,
    ),
    "max_expression_tokens": _Spec(
        "Largest CEL expression (one condition, route or {{ placeholder }}), in tokens: what "
        "bounds the time one compile holds a thread.",
        _positive,
    ),
    "compile_budget_s": _Spec(
        "CPU seconds checking one graph may take (API and workers); a graph that needs more is "
        "refused.",
        _positive,
    ),
    "max_message_bytes": _Spec("Largest gRPC message accepted or sent.", _positive),
    "tool_modules": _Spec(
        "Comma-separated Python modules whose dago_tools() function returns operator tools."
    ),
    "drain_timeout_s": _Spec(
        "On SIGTERM, how long a worker waits for running attempts before exiting.",
        lambda v: None if v >= 0 else "must not be negative",
    ),
    "log_level": _Spec("DEBUG, INFO, WARNING or ERROR.", _level),
    "workers": _Spec("Worker processes started by `dago dev`.", _positive),
    "dev_restart_delay_s": _Spec(
        "Seconds `dago dev` waits before restarting a child that exited, doubled for each "
        "further exit within a minute (at most 30 s); the tests shorten it.",
        _positive,
    ),
    "edge_host": _Spec("Address Envoy (REST, SSE, gRPC-Web, gRPC) listens on in `dago dev`."),
    "edge_port": _Spec("Port of Envoy in `dago dev` (0: do not start Envoy).", _port),
    "edge_cors_origins": _Spec(
        "Comma-separated browser origins allowed by CORS; * inside an origin matches any "
        "characters but / (empty: http://localhost:* and http://127.0.0.1:*)."
    ),
    "edge_max_connections": _Spec(
        "Client connections Envoy holds at once, all clients together; more are closed as "
        "they arrive (`dago dev`; the chart: envoy.limits).",
        _positive,
    ),
    "edge_headers_timeout_s": _Spec(
        "Seconds a new connection may take to send its first bytes, and a request to "
        "complete its headers, before Envoy closes it.",
        _positive,
    ),
    "edge_idle_timeout_s": _Spec(
        "Seconds a client connection with no request in flight stays open.", _positive
    ),
    "edge_watch_idle_timeout_s": _Spec(
        "Seconds a watch stream (SSE, NDJSON, gRPC, gRPC-Web) may make no progress (its "
        "client reads nothing) before Envoy resets it; at least three heartbeats.",
        _positive,
    ),
    "edge_buffer_bytes": _Spec(
        "Bytes Envoy buffers per client connection and stream before it stops reading from "
        "the other side.",
        lambda v: None if v >= 16 * 1024 else "must be at least 16384",
    ),
    "edge_max_heap_bytes": _Spec(
        "Envoy heap size its overload actions measure against (shorter idle timeouts from "
        "80%, refusing new connections from 95%, 503 from 98%).",
        lambda v: None if v >= 64 << 20 else "must be at least 67108864",
    ),
    "edge_client_rps": _Spec(
        "Requests per second one client address may make through Envoy, with bursts of "
        "twice that (0: no limit); over it: 429 / RESOURCE_EXHAUSTED.",
        lambda v: None if v >= 0 else "must not be negative",
    ),
    "edge_trusted_hops": _Spec(
        "Proxies in front of Envoy whose x-forwarded-for entries are trusted to name the "
        "client (0: the client is the connection's peer).",
        lambda v: None if v >= 0 else "must not be negative",
    ),
    "llm_provider": _Spec(
        "LLM provider of nodes that name none: anthropic, openai or offline. Empty: anthropic "
        "when an Anthropic API key is set, else openai when an OpenAI API key is set, else "
        "offline (a deterministic local stand-in, labelled offline).",
        _provider,
    ),
    "llm_model": _Spec("Model of nodes that name none (empty: the provider's default)."),
    "llm_max_tokens": _Spec(
        "max_tokens of LLM nodes that set none.",
        lambda v: None if 1 <= v <= 1_000_000 else "must be between 1 and 1000000",
    ),
    "budget_floor_tokens": _Spec(
        "The fewest output tokens a model call of a run with a token or cost budget is made "
        "with: when the budget left fits fewer, the run's limit is hit (docs/limits.md).",
        _positive,
    ),
    "offline_tokens_per_s": _Spec(
        "Pace of the offline provider's answers, in words (its tokens) per second, so "
        "watchers see the text stream in and the node running as with a real model (0: "
        "answer at once; `dago dev` uses 40 unless this is set).",
        lambda v: None if v >= 0 else "must not be negative",
    ),
    "anthropic_api_key": _Spec(
        "Anthropic API key; when unset, ANTHROPIC_API_KEY is read. Never logged.", secret=True
    ),
    "anthropic_base_url": _Spec(
        "Base URL of the Anthropic API (empty: the SDK's default; tests point it at a fake)."
    ),
    "openai_api_key": _Spec(
        "API key of the openai provider; when unset, OPENAI_API_KEY is read. Local servers "
        "(Ollama, vLLM, LM Studio) accept any value. Never logged.",
        secret=True,
    ),
    "openai_base_url": _Spec(
        "Base URL of the OpenAI-compatible chat completions API of the openai provider, e.g. "
        "http://localhost:11434/v1 for Ollama or http://localhost:8000/v1 for vLLM.",
        lambda v: (
            None
            if urlsplit(v).scheme in ("http", "https") and urlsplit(v).netloc
            else "must be an http:// or https:// URL"
        ),
    ),
    "openai_structured_output": _Spec(
        "How the openai provider asks for structured output (nodes with output_schema): "
        "json_schema (response_format json_schema: OpenAI, Gemini, vLLM, Ollama), "
        "json_object (JSON mode, the schema in the system prompt: servers without json_schema) "
        "or prompt (the schema in the system prompt only: servers without response_format). "
        "The answer is checked against the schema and repaired once either way.",
        lambda v: (
            None
            if v in ("json_schema", "json_object", "prompt")
            else "must be json_schema, json_object or prompt"
        ),
    ),
    "prices": _Spec(
        "LLM prices overriding the built-in table: JSON (or the path of a JSON file) mapping a "
        "model (or model prefix) to USD per million input/output/cache_write (5-minute)/"
        "cache_write_1h/cache_read tokens, with an optional long_prompt row {threshold, ...} for "
        "prompts over threshold tokens.",
        _prices,
    ),
    "price_multiplier": _Spec(
        "Multiplier applied to every LLM price (deployment options that carry one, such as a "
        "regional or data-residency endpoint; 1: list prices).",
        lambda v: None if v > 0 else "must be positive",
    ),
    "allow_unknown_models": _Spec(
        "Accept Claude models the built-in catalogue does not know (`dago models` lists it); "
        "they are priced by DAGO_UNKNOWN_MODEL_PRICE and their settings are not checked at submit."
    ),
    "unknown_model_price": _Spec(
        "The price of models allowed by DAGO_ALLOW_UNKNOWN_MODELS that DAGO_PRICES does not "
        'name: one row of DAGO_PRICES, e.g. `{"input": 3, "output": 15}`.',
        lambda v: _prices(f'{{"unknown": {v}}}') if v else None,
    ),
    "rate_limits": _Spec(
        "Model rate limits shared by every worker (docs/limits.md): JSON (or the path of a JSON "
        'file) mapping "provider/model" (or "provider/*": each model of the provider without '
        "an entry of its own) to {requests_per_minute, input_tokens_per_minute, "
        "output_tokens_per_minute, burst_seconds}; 0 or absent: no limit on that measure.",
        _rate_limits_problem,
    ),
    "llm_cache_ttl": _Spec(
        "Prompt cache lifetime of Claude calls whose node and graph set none: 5m, 1h, or off "
        "(no cache_control is sent).",
        lambda v: None if v in ("5m", "1h", "off") else "must be 5m, 1h or off",
    ),
    "http_allow": _Spec(
        "Hosts and CIDRs HTTP nodes may reach although private, loopback or link-local "
        "(comma-separated, e.g. `internal.example,10.1.0.0/16`).",
        _allow,
    ),
    "http_max_response_bytes": _Spec(
        "Largest HTTP node response body, unless the node sets a smaller one.", _positive
    ),
    "config_file": _Spec(
        "A YAML (.yaml, .yml) or TOML (.toml) file of settings by name (e.g. `shards: 16` or "
        "`DAGO_SHARDS: 16`); DAGO_* environment variables override it. Read from the "
        "environment only."
    ),
    "log_format": _Spec(
        "json (one JSON object per line, the default) or console (readable; `make run`).",
        _log_format,
    ),
    "log_prompts": _Spec(
        "Log LLM prompts and replies at DEBUG (true/false). Off by default: they may hold "
        "personal data."
    ),
    "worker_metrics_port": _Spec(
        "Port of a worker process's Prometheus /metrics endpoint (0: off); `dago dev` gives "
        "worker n this port + n - 1. A busy port is logged and skipped.",
        _port,
    ),
    "worker_heartbeat_ms": _Spec(
        "How often a worker records its heartbeat (id, host, slots, in flight) in Redis.",
        lambda v: None if v >= 100 else "must be at least 100",
    ),
    "worker_ttl_ms": _Spec(
        "A worker without a heartbeat for this long counts as gone (ListWorkers, health).",
        lambda v: None if v >= 200 else "must be at least 200",
    ),
    "mcp_servers": _Spec(
        "MCP servers whose tools agents and tool nodes may use, as `<server>/<tool>`: JSON "
        '`{"<server>": {"command": ["prog", "arg"], "env": {...}, "cwd": "..."}}` (stdio) or '
        '`{"<server>": {"url": "https://.../mcp", "headers": {...}}}` (streamable HTTP). '
        "Never logged (env and headers may hold credentials).",
        _mcp_servers,
        secret=True,
    ),
    "agent_max_turns": _Spec(
        "Model turns of an agent node that sets no max_turns.",
        lambda v: None if 1 <= v <= 1000 else "must be between 1 and 1000",
    ),
    "tool_timeout_s": _Spec(
        "Timeout of one tool call of an agent that sets no tool_timeout (an expired call "
        "goes back to the model as an error), and of the http tool's request.",
        _positive,
    ),
    "auth": _Spec(
        "`keys`: every API call but health and reflection needs `authorization: Bearer <key>` "
        "(see docs/security.md); `off`: no authentication, every call acts in namespace "
        "`default` (`dago dev` turns it off unless DAGO_AUTH is set).",
        lambda v: None if v in ("keys", "off") else "must be keys or off",
    ),
    "api_keys": _Spec(
        "API keys as `<sha256 hex of the key>:<namespace>[:<name>]`, comma-separated "
        "(`dago keys new` prints one); the name is the actor of its signals.",
        secret=True,
    ),
    "api_keys_file": _Spec(
        "File of API keys, one `<sha256 hex of the key> <namespace> [<name>]` per line (`#` "
        "comments); re-read when it changes (a mounted Kubernetes Secret)."
    ),
    "operator_namespaces": _Spec(
        "Namespaces whose keys are operators', comma-separated: they list any namespace's runs "
        "or every namespace's (ListGraphsRequest.namespace), sum every namespace's usage and "
        "see the details of ListWorkers (host, pid, worker id, metrics port, attempts in "
        "flight); other namespaces list their own runs only and see each live worker's slots, "
        "node kinds and times only. With DAGO_AUTH=off every call sees everything.",
        lambda v: next(
            (
                f"{n.strip()!r} is not a namespace name"
                for n in v.split(",")
                if n.strip() and not NAMESPACE_NAME.fullmatch(n.strip())
            ),
            None,
        ),
    ),
    "max_active_graphs": _Spec(
        "Graphs one namespace may have submitted or running at once (0: no limit); more "
        "submissions get RESOURCE_EXHAUSTED.",
        lambda v: None if v >= 0 else "must not be negative",
    ),
    "max_definitions": _Spec(
        "Definition names one namespace may hold; publishing a new name past it gets "
        "RESOURCE_EXHAUSTED.",
        _positive,
    ),
    "max_definition_versions": _Spec(
        "Versions one definition may hold; publishing one more gets RESOURCE_EXHAUSTED.",
        _positive,
    ),
    "max_inputs_bytes": _Spec(
        "Largest `inputs` of one submission, as compact JSON bytes.", _positive
    ),
    "max_events_per_graph": _Spec(
        "Events one graph may record; a graph that would record more fails.", _positive
    ),
    "max_run_bytes": _Spec(
        "Bytes one run may store in Redis (definition, inputs, outputs, attempt records, "
        "events); a node whose output would pass it fails (ERROR_CLASS_LIMIT), and so its run.",
        _positive,
    ),
    "max_graph_depth": _Spec(
        "How deeply runs may nest (a subgraph node's child run is one level deeper than its "
        "parent): refused at submit when the nesting is static, failed at run time otherwise.",
        _positive,
    ),
    "max_node_bytes": _Spec(
        "Largest rendered input or output of one node attempt, as JSON bytes; past it the "
        "attempt fails (ERROR_CLASS_LIMIT).",
        _positive,
    ),
    "max_value_bytes": _Spec(
        "Largest value one CEL expression or {{ placeholder }} may produce; past it the "
        "evaluation fails.",
        _positive,
    ),
    "max_event_bytes": _Spec(
        "Largest event a node attempt may record (a tool call's result, say); past it the "
        "attempt fails (ERROR_CLASS_LIMIT).",
        _positive,
    ),
    "tls_cert_file": _Spec(
        "PEM certificate chain of the gRPC server; with DAGO_TLS_KEY_FILE the API serves TLS only."
    ),
    "tls_key_file": _Spec("PEM private key of DAGO_TLS_CERT_FILE."),
    "tls_client_ca_file": _Spec(
        "PEM CA bundle; when set, clients must present a certificate it signed (mutual TLS)."
    ),
}


def env_name(name: str) -> str:
    """The environment variable of a setting."""
    return "DAGO_" + name.upper()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _convert(kind: type, raw: Any) -> Any:
    """``raw`` (text from the environment, or a value from a file) as ``kind``."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ValueError(raw)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(raw)
    if kind is int and isinstance(raw, float):
        raise ValueError(raw)
    return kind(raw.strip() if isinstance(raw, str) else raw)


def read_file(path: str) -> dict[str, Any]:
    """Settings from a YAML or TOML file, by setting name; errors name the file and key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"DAGO_CONFIG_FILE={path!r} must end in .yaml, .yml or .toml")
    except (OSError, ValueError, yaml.YAMLError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"DAGO_CONFIG_FILE={path!r} cannot be read: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"DAGO_CONFIG_FILE={path!r} must hold a mapping of settings")
    names = {f.name for f in fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).lower().removeprefix("dago_")
        if name not in names or name == "config_file":
            raise ConfigError(f"{path}: {key!r} is not a dago setting (see `dago config`)")
        out[name] = value
    return out


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default: the process environment), over the values
    of the file ``DAGO_CONFIG_FILE`` names, if any."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = env.get(env_name("config_file"), "").strip()
    from_file = read_file(path) if path else {}
    for f in fields(Settings):
        var = env_name(f.name)
        kind = type(getattr(Settings(), f.name))
        raw = env.get(var)
        if raw is None or raw == "":
            if f.name not in from_file:
                continue
            raw, var = from_file[f.name], f"{path}: {f.name}"
        try:
            values[f.name] = _convert(kind, raw)
        except ValueError:
            raise ConfigError(
                f"{var}={raw!r} is not a valid {kind.__name__}: {SETTINGS[f.name].doc}"
            ) from None
    if "anthropic_api_key" not in values and env.get("ANTHROPIC_API_KEY"):
        values["anthropic_api_key"] = env["ANTHROPIC_API_KEY"].strip()
    if "openai_api_key" not in values and env.get("OPENAI_API_KEY"):
        values["openai_api_key"] = env["OPENAI_API_KEY"].strip()
    settings = Settings(**values)
    for name, spec in SETTINGS.items():
        problem = spec.check(getattr(settings, name))
        if problem:
            raise ConfigError(f"{env_name(name)} {problem} (got {getattr(settings, name)!r})")
    if settings.allow_unknown_models and not settings.unknown_model_price:
        # An allowed model without a price would cost $0 on every report: say what it costs.
        raise ConfigError(
            f"{env_name('allow_unknown_models')} needs {env_name('unknown_model_price')}: "
            "the price of the models it lets in (USD per million tokens, e.g. "
            '{"input": 3, "output": 15})'
        )
    return settings


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(variable, effective value with secrets redacted, doc) for every setting."""
    rows = []
    for name, spec in SETTINGS.items():
        value = str(getattr(settings, name))
        if spec.secret:
            value = redact_url(value) if "://" in value else ("***" if value else "")
        rows.append((env_name(name), value, spec.doc))
    return rows


def redact_url(url: str) -> str:
    """The URL with any password (user info or ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if parts.query:
        query = [
            (k, "***" if k.lower() == "password" else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return parts.geturl()
