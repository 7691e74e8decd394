"""The ``http`` node kind: one HTTP request, with private addresses refused.

The URL, headers and body are templates (rendered over the scope and
``input``). The host is resolved first and every address it resolves to is
checked; the request then goes to that checked address (the ``Host`` header
and TLS server name keep the original name), so a DNS answer that changes
between the check and the connection cannot reach anything else. Addresses
that are not globally routable (loopback, private, link-local — which includes
the 169.254.169.254 metadata service —, CGNAT, multicast, reserved, unspecified)
are refused unless the operator allows the host name or a network containing
the address in ``DAGO_HTTP_ALLOW``. Redirects are not followed: a 3xx is the
node's result (``headers.location`` says where).

Result: ``{status, headers, body}``; ``body`` is parsed when the response is
JSON, else text. 5xx, 429 (with ``retry-after`` honoured), timeouts and
connection errors are retryable; other 4xx are not. A body over the size cap
(``max_response_bytes``, default ``DAGO_HTTP_MAX_RESPONSE_BYTES``) fails the
node without reading further.

``SafeHttp`` makes the requests with these checks; the built-in ``http`` tool
(``dago.nodes.toolbox``) uses the same one. Checked at submit: ``method`` is one of
GET, POST, PUT, PATCH, DELETE, HEAD (empty: GET); ``url`` is given and, unless it is
a template, an absolute http(s) URL; header names are valid; ``max_response_bytes``
is not negative; the templates compile.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import re
import socket
from typing import Any

import httpx
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from dago.engine.cel import EvalError
from dago.engine.fields import clip
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.outcome import NodeFailure, invalid
from dago.llm.base import retry_after
from dago.nodes.base import NodeContext, NodeHandler, NodeKind, NodeResult
from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing
from dago.v1 import graph_pb2

log = logging.getLogger("dago.http")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Net = ipaddress.IPv4Network | ipaddress.IPv6Network

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")
"""An HTTP header name (RFC 9110 token), always ``fullmatch``ed: ``match`` with ``$`` took
``"x-a\\n"``."""


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The checks at submit of the module doc; the url, headers and body templates."""
    spec = node.http
    if spec.method and spec.method.upper() not in METHODS:
        ctx.add("http.method", f"must be one of {', '.join(METHODS)} (empty: GET)")
    if not spec.url:
        ctx.add("http.url", "an http node needs a url")
    elif "{{" not in spec.url and not re.match(r"^https?://[^/\s]+", spec.url):
        ctx.add("http.url", "must be an absolute http:// or https:// URL")
    if spec.max_response_bytes < 0:
        ctx.add("http.max_response_bytes", "must not be negative (0: the server default)")
    fields = {"http.url": spec.url, "http.body": spec.body}
    for name, value in spec.headers.items():
        if not HEADER_NAME.fullmatch(name):
            ctx.add(f"http.headers[{clip(name, 64)}]", "is not a valid HTTP header name")
        fields[f"http.headers[{name}]"] = value
    return KindParts(templates=ctx.templates(fields))


class SafeHttp:
    """HTTP requests with the checks of the module doc (one per worker process)."""

    def __init__(
        self,
        allow: str,
        max_response_bytes: int,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._metrics = metrics or Metrics(CollectorRegistry())
        self._tracing = tracing or Tracing("dago-worker", {})
        self._hosts: set[str] = set()
        self._nets: list[Net] = []
        for item in filter(None, (x.strip() for x in allow.split(","))):
            try:
                self._nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self._hosts.add(item.lower().rstrip("."))
        self.max_bytes = max_response_bytes
        """The largest response body (``DAGO_HTTP_MAX_RESPONSE_BYTES``)."""

    def allowed(self, host: str, ip: IP) -> bool:
        """Whether a request to ``host`` may connect to ``ip``."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if host.lower().rstrip(".") in self._hosts or any(ip in n for n in self._nets):
            return True
        # IPv6 forms that carry an IPv4 address (NAT64, 6to4, IPv4-compatible) are judged by
        # it too: 64:ff9b::a9fe:a9fe reaches 169.254.169.254 through a NAT64 gateway.
        return all(a.is_global and not a.is_multicast for a in (ip, *_embedded_ipv4(ip)))

    async def resolve(self, host: str, port: int) -> IP:
        """The address to connect to; raises NodeFailure when it is refused or unknown."""
        try:
            literal: IP | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            ips = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as e:
                transient = e.errno == socket.EAI_AGAIN
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_TRANSIENT if transient else graph_pb2.ERROR_CLASS_INVALID,
                    f"cannot resolve host {host!r}: {e.strerror}",
                    transient,
                ) from None
            found = (ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos)
            ips = list(dict.fromkeys(found))
        for ip in ips:
            if not self.allowed(host, ip):
                # The address is not told (a tenant would map the private network's names to
                # addresses with it); the operator's log has it.
                log.info("http request to %s refused: it resolves to %s", clip(host), ip)
                raise invalid(
                    f"refused: {clip(host)} is not a public address or resolves to one that "
                    "is not (HTTP nodes may not reach loopback, private, link-local or "
                    "metadata addresses unless the operator allows them in DAGO_HTTP_ALLOW)"
                )
        return ips[0]

    async def fetch(
        self,
        method: str,
        url_text: str,
        headers: dict[str, str],
        body: Any,
        timeout_s: float,
        cap: int | None = None,
    ) -> dict[str, Any]:
        """One request with the checks of the module doc: ``{status, headers, body}``, or
        NodeFailure (refused address, bad URL, error status, timeout, too large)."""
        try:
            url = httpx.URL(url_text)
        except httpx.InvalidURL as e:
            raise invalid(f"http.url: {url_text!r} is not a URL ({e})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise invalid(f"http.url: {url_text!r} is not an absolute http(s) URL")
        port = url.port or (443 if url.scheme == "https" else 80)
        ip = await self.resolve(url.host, port)
        headers = dict(headers)
        headers["Host"] = url.netloc.decode("ascii")
        content: bytes | None = None
        if isinstance(body, dict | list | int | float | bool):
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json")
        elif body:
            content = str(body).encode()
        target = url.copy_with(host=str(ip))
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        cap = min(cap or self.max_bytes, self.max_bytes)
        method = method.upper()
        # The span names the host and path only: a query string may hold credentials.
        attrs = {
            "http.request.method": method,
            "server.address": url.host,
            "server.port": port,
            "url.scheme": url.scheme,
            "url.path": url.path,
        }
        with self._tracing.span(f"HTTP {method}", attrs, SpanKind.CLIENT) as span:
            if span is not None:
                headers["traceparent"] = self._tracing.traceparent()
            try:
                async with (
                    httpx.AsyncClient(
                        follow_redirects=False, timeout=timeout_s, trust_env=False
                    ) as client,
                    client.stream(
                        method, target, headers=headers, content=content, extensions=extensions
                    ) as resp,
                ):
                    raw = await _read_capped(resp, cap)
            except httpx.TimeoutException:
                self._metrics.http_request(None)
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_TIMEOUT, f"{method} {url_text}: timed out", True
                ) from None
            except httpx.TransportError as e:
                self._metrics.http_request(None)
                raise NodeFailure(
                    graph_pb2.ERROR_CLASS_TRANSIENT,
                    f"{method} {url_text}: {type(e).__name__}: {e}",
                    True,
                ) from None
            self._metrics.http_request(resp.status_code)
            if span is not None:
                span.set_attribute("http.response.status_code", resp.status_code)
            return _result(method, url_text, resp, raw)


class HttpHandler(NodeHandler):
    """Runs ``http`` nodes."""

    def __init__(self, http: SafeHttp) -> None:
        self._http = http

    async def run(self, ctx: NodeContext) -> NodeResult:
        """Make the request; see the module doc for the result and the error classes."""
        spec = ctx.node.proto.http
        data = {**ctx.scope, "input": ctx.input}

        def render(key: str, raw: str) -> Any:
            t = ctx.node.templates.get(key)
            if t is None:
                return raw
            try:
                return t.render(data)
            except EvalError as e:
                raise invalid(str(e)) from None

        url_text = str(render("http.url", spec.url))
        headers = {
            name: str(render(f"http.headers[{name}]", v)) for name, v in spec.headers.items()
        }
        body = render("http.body", spec.body)
        cap = min(spec.max_response_bytes or self._http.max_bytes, self._http.max_bytes)
        return NodeResult(
            await self._http.fetch(
                spec.method or "GET", url_text, headers, body, ctx.node.attempt_timeout, cap
            )
        )


KIND = NodeKind("http", check, lambda deps: HttpHandler(deps.http))


_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(ip: IP) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address stands for (NAT64, 6to4, IPv4-compatible)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    out = []
    if any(ip in n for n in _NAT64) or ip in _IPV4_COMPATIBLE:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    return out


async def _read_capped(resp: httpx.Response, cap: int) -> bytes:
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise _too_large(cap)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(cap: int) -> NodeFailure:
    return NodeFailure(
        graph_pb2.ERROR_CLASS_PERMANENT,
        f"the response is larger than {cap} bytes (http.max_response_bytes)",
        False,
    )


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{text} is out of range")
    return value


def _result(method: str, url: str, resp: httpx.Response, raw: bytes) -> dict[str, Any]:
    text = raw.decode(resp.encoding or "utf-8", errors="replace")
    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    body: Any = text
    if ctype == "application/json" or ctype.endswith("+json"):
        try:
            # NaN and Infinity are not JSON (Python's parser takes them, and reads 1e999 as
            # Infinity): such a body is text, as any other body that is not JSON, so what the
            # node records stays JSON.
            body = json.loads(text, parse_constant=_not_json, parse_float=_finite) if text else None
        except ValueError:
            body = text
    status = resp.status_code
    where = f"{method} {url}: HTTP {status}"
    snippet = text[:200]
    if status == 429:
        after = retry_after(resp.headers)
        raise NodeFailure(graph_pb2.ERROR_CLASS_RATE_LIMITED, f"{where}: {snippet}", True, after)
    if status >= 500:
        raise NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, f"{where}: {snippet}", True)
    if status >= 400:
        raise NodeFailure(graph_pb2.ERROR_CLASS_PERMANENT, f"{where}: {snippet}", False)
    headers: dict[str, str] = {}
    for k, v in resp.headers.multi_items():
        k = k.lower()
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    return {"status": status, "headers": headers, "body": body}
