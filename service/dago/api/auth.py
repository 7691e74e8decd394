"""Who may call the API, in which namespace, and over which transport.

Authentication is by API key: a client sends ``authorization: Bearer <key>`` as gRPC
metadata (Envoy forwards the HTTP ``Authorization`` header of REST and gRPC-Web requests as
that metadata). The server knows keys only by their SHA-256 (hex), each bound to one
namespace (``DAGO_API_KEYS``, ``DAGO_API_KEYS_FILE``); a presented key is hashed and compared
with every known hash in constant time. Health and reflection stay open: probes and load
balancers need health, and reflection only describes the public API (grpcurl ``list`` and
``describe`` work without a key; calls do not).

:class:`ServerGuard` is the server interceptor that enforces this. It also parses request
bytes itself, so a malformed message gets INVALID_ARGUMENT instead of gRPC's generic
INTERNAL, and it records the caller's namespace for the servicer (``Authenticator.current``).
With ``DAGO_AUTH=off`` every call acts in the namespace ``default``.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import inspect
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from dago.api import errors
from dago.config import DEFAULT_NAMESPACE as DEFAULT_NAMESPACE  # re-exported for the API
from dago.config import NAMESPACE_NAME, ConfigError, Settings

log = logging.getLogger("dago.auth")

NAMESPACE = NAMESPACE_NAME
"""Namespace names (``dago.config.NAMESPACE_NAME``; always ``fullmatch``)."""

_HASH = re.compile(r"[0-9a-f]{64}")
KEY_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
"""Names of API keys (always ``fullmatch``)."""

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
"""Method prefixes callable without a key."""

KEY_PREFIX = "dago_"
"""Prefix of keys made by ``dago keys new`` (recognisable in secret scanners)."""

_HOW = (
    "send the header `authorization: Bearer <API key>` (gRPC metadata, or the HTTP "
    "Authorization header through the edge); the operator issues keys with `dago keys new`"
)


def hash_key(key: str) -> str:
    """The SHA-256 (lower-case hex) of a key, as configured on the server."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


DEFAULT_ACTOR = "anonymous"
"""Who calls when authentication is off (recorded as the actor of signals)."""


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    namespace: str
    name: str = ""
    """The key's name (the actor recorded for its signals): the optional third part of the
    entry, else ``key-<first 8 hex digits of its hash>``."""


def parse_keys(text: str, separator: str, source: str) -> list[_Entry]:
    """Entries of ``DAGO_API_KEYS`` (``separator`` ``:``, items split on commas) or of a keys
    file (``separator`` whitespace, one per line); raises ConfigError naming ``source``."""
    out: list[_Entry] = []
    items = text.split(",") if separator == ":" else text.splitlines()
    for n, raw in enumerate(items, 1):
        item = raw.split("#", 1)[0].strip() if separator != ":" else raw.strip()
        if not item:
            continue
        parts = item.split(":", 1) if separator == ":" else item.split(None, 1)
        where = f"{source} item {n}" if separator == ":" else f"{source} line {n}"
        if len(parts) != 2:
            raise ConfigError(
                f"{where}: expected `<sha256 hex> {separator.strip() or ' '}<namespace>` "
                "(`dago keys new` prints one)"
            )
        digest, namespace = parts[0].strip().lower(), parts[1].strip()
        # An optional name after the namespace: `<hash>:<namespace>:<name>` or
        # `<hash> <namespace> <name>`.
        rest = namespace.split(":", 1) if separator == ":" else namespace.split(None, 1)
        namespace = rest[0].strip()
        name = rest[1].strip() if len(rest) > 1 else ""
        if name and not KEY_NAME.fullmatch(name):
            raise ConfigError(f"{where}: the key's name must be 1-64 letters, digits, _ . @ or -")
        if not _HASH.fullmatch(digest):
            # Never echo the value: an operator may have pasted a key instead of its hash.
            raise ConfigError(
                f"{where}: the first part must be the 64-character SHA-256 hex of a key, not "
                "the key itself (`dago keys hash` computes it)"
            )
        if not NAMESPACE.fullmatch(namespace):
            raise ConfigError(
                f"{where}: namespace {namespace!r} must be 1-63 letters, digits, _ . or -, "
                "starting with a letter or digit"
            )
        out.append(_Entry(bytes.fromhex(digest), namespace, name or f"key-{digest[:8]}"))
    return out


class KeyRing:
    """The configured key hashes; the keys file is re-read when it changes (checked at most
    once a second), so a rotated Kubernetes Secret takes effect without a restart."""

    def __init__(self, inline: str, path: str) -> None:
        self._inline = parse_keys(inline, ":", "DAGO_API_KEYS") if inline else []
        self._path = Path(path) if path else None
        self._file: list[_Entry] = []
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        if self._path is not None:
            self._reload(strict=True)

    def _reload(self, strict: bool) -> None:
        assert self._path is not None
        try:
            st = self._path.stat()
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return
            entries = parse_keys(
                self._path.read_text(encoding="utf-8"), " ", f"DAGO_API_KEYS_FILE {self._path}"
            )
        except (OSError, ConfigError) as e:
            if strict:
                if isinstance(e, ConfigError):
                    raise
                raise ConfigError(f"DAGO_API_KEYS_FILE {self._path}: cannot read it ({e})") from e
            # Keep serving with the keys we had: a half-written file must not lock everyone out.
            log.warning("keeping the previous API keys: %s", e)
            return
        self._file, self._stamp = entries, stamp
        log.info("loaded %d API key(s) from %s", len(entries), self._path)

    def __len__(self) -> int:
        return len(self._inline) + len(self._file)

    def lookup(self, key: str) -> str | None:
        """The namespace of ``key``, or None (see ``entry``)."""
        entry = self.entry(key)
        return entry.namespace if entry is not None else None

    def entry(self, key: str) -> _Entry | None:
        """The entry of ``key``, or None. Every configured hash is compared in constant
        time, so the answer's timing says nothing about which hashes exist."""
        if self._path is not None:
            now = time.monotonic()
            if now - self._checked >= 1.0:
                self._checked = now
                self._reload(strict=False)
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: _Entry | None = None
        for entry in (*self._inline, *self._file):
            if hmac.compare_digest(digest, entry.digest) and found is None:
                found = entry
        return found


class Authenticator:
    """Turns call metadata into a namespace, or an UNAUTHENTICATED error."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth != "off"
        self._keys = KeyRing(settings.api_keys, settings.api_keys_file) if self.enabled else None
        if self._keys is not None and len(self._keys) == 0:
            raise ConfigError(
                "DAGO_AUTH=keys but no API keys are configured: set DAGO_API_KEYS or "
                "DAGO_API_KEYS_FILE (`dago keys new --namespace <ns>` makes one), or set "
                "DAGO_AUTH=off to run without authentication"
            )
        # Per-RPC: each call runs in its own task, so the value never leaks between calls.
        self._current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
            "dago_namespace", default=None
        )
        self._actor: contextvars.ContextVar[str] = contextvars.ContextVar(
            "dago_actor", default=DEFAULT_ACTOR
        )

    def identify(self, metadata: Sequence[tuple[str, Any]] | None) -> tuple[str, str]:
        """The caller's namespace and name (its key's); raises ApiError(UNAUTHENTICATED)."""
        if self._keys is None:
            return DEFAULT_NAMESPACE, DEFAULT_ACTOR
        values = [v for k, v in metadata or () if k.lower() == "authorization"]
        if not values:
            raise errors.unauthenticated("API_KEY_MISSING", f"no API key: {_HOW}")
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, key = str(value).strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise errors.unauthenticated(
                "API_KEY_MALFORMED", f"the authorization value is not `Bearer <key>`: {_HOW}"
            )
        entry = self._keys.entry(key.strip())
        if entry is None:
            raise errors.unauthenticated(
                "API_KEY_INVALID", "the API key is not valid (unknown, revoked or mistyped)"
            )
        return entry.namespace, entry.name

    def current(self) -> str:
        """The namespace of the RPC being served (set by :class:`ServerGuard`)."""
        ns = self._current.get()
        if ns is None:
            if self.enabled:
                # Fail closed: a servicer reached without the guard must not act at all.
                raise RuntimeError("no authenticated namespace: ServerGuard is not installed")
            return DEFAULT_NAMESPACE
        return ns

    def actor(self) -> str:
        """Who makes the RPC being served: its API key's name (``DEFAULT_ACTOR`` without
        authentication)."""
        return self._actor.get()

    def _enter(self, namespace: str, actor: str = DEFAULT_ACTOR) -> contextvars.Token[str | None]:
        self._actor.set(actor)
        return self._current.set(namespace)

    def _leave(self, token: contextvars.Token[str | None]) -> None:
        self._current.reset(token)


Handler = Any


class ServerGuard(grpc.aio.ServerInterceptor):
    """Authenticates every call but health and reflection, records its namespace, and turns
    undecodable request bytes into INVALID_ARGUMENT.

    Each call is authenticated from its own metadata inside the wrapped handler, so the
    wrapped handler of a method is made once and reused (as the RPC observer before this
    guard caches it: a handler made per call would defeat that cache)."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}
        """By method: the handler the continuation last gave, and its guarded form."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wrap the method's handler (unary-unary and unary-stream are all dago serves)."""
        handler = await continuation(handler_call_details)
        method = str(handler_call_details.method)
        if handler is None or method.startswith(OPEN_SERVICES):
            return handler
        if handler.request_streaming:
            return self._streaming(method, handler, handler_call_details.invocation_metadata)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._guarded(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _authenticate(
        self, method: str, metadata: Any
    ) -> tuple[tuple[str, str] | None, errors.ApiError | None]:
        """The caller's (namespace, actor), or why it is refused (logged)."""
        try:
            return self._auth.identify(metadata), None
        except errors.ApiError as e:
            log.info("refused %s: %s", method, e.message)
            return None, e

    def _streaming(self, method: str, handler: Handler, metadata: Any) -> Handler:
        # dago has no client-streaming RPCs; should one appear, it is refused without a
        # key, and with one it fails closed (Authenticator.current() has no namespace).
        _, failure = self._authenticate(method, metadata)
        if failure is None:
            return handler
        refusal = failure

        async def refuse(_: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort_with_status(refusal.status())

        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return make(refuse, response_serializer=handler.response_serializer)

    def _guarded(self, method: str, handler: Handler) -> Handler:
        """``handler`` authenticating each call (its namespace current while it runs) and
        decoding its request bytes itself."""
        decode = handler.request_deserializer
        auth = self._auth
        name = method.rsplit("/", 1)[-1]
        authenticate = self._authenticate

        async def parse(
            raw: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> tuple[Any, str, str]:
            identity, failure = authenticate(method, context.invocation_metadata())
            if failure is not None:
                await context.abort_with_status(failure.status())
            assert identity is not None
            namespace, actor = identity
            if decode is None or not isinstance(raw, bytes):
                return raw, namespace, actor
            try:
                return decode(raw), namespace, actor
            except (DecodeError, RecursionError, ValueError, UnicodeDecodeError) as e:
                err = errors.invalid_field(
                    "request", f"is not a valid {name} request message ({_short(e)})"
                )
                await context.abort_with_status(err.status())
                raise  # not reached: abort_with_status raises

        if handler.response_streaming:
            inner_stream = handler.unary_stream
            if not inspect.isasyncgenfunction(inner_stream):
                # A handler that writes with ``context.write`` (as grpc's health Watch does)
                # returns a coroutine, not an async iterator: await it.
                async def writes(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
                    request, namespace, actor = await parse(raw, context)
                    auth._enter(namespace, actor)  # the RPC's own task: no reset needed
                    await inner_stream(request, context)

                return grpc.unary_stream_rpc_method_handler(
                    writes, response_serializer=handler.response_serializer
                )

            async def stream(
                raw: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                request, namespace, actor = await parse(raw, context)
                auth._enter(namespace, actor)  # the RPC's own task: no reset needed
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, response_serializer=handler.response_serializer
            )

        inner = handler.unary_unary

        async def unary(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request, namespace, actor = await parse(raw, context)
            token = auth._enter(namespace, actor)
            try:
                return await inner(request, context)
            finally:
                auth._leave(token)

        return grpc.unary_unary_rpc_method_handler(
            unary, response_serializer=handler.response_serializer
        )


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 120 else text[:119] + "…"


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials of the gRPC server from DAGO_TLS_*, or None for plaintext.

    With DAGO_TLS_CLIENT_CA_FILE, clients must present a certificate signed by that CA.
    Raises ConfigError naming the variable when a file is missing or only half is set.
    """
    cert, key, ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if not cert and not key:
        if ca:
            raise ConfigError(
                "DAGO_TLS_CLIENT_CA_FILE needs DAGO_TLS_CERT_FILE and DAGO_TLS_KEY_FILE"
            )
        return None
    if not (cert and key):
        raise ConfigError("set both DAGO_TLS_CERT_FILE and DAGO_TLS_KEY_FILE (or neither)")

    def read(var: str, path: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(f"{var} {path}: cannot read it ({e.strerror})") from None
        if b"-----BEGIN" not in data:
            raise ConfigError(f"{var} {path}: not a PEM file")
        return data

    chain = read("DAGO_TLS_CERT_FILE", cert)
    private = read("DAGO_TLS_KEY_FILE", key)
    roots = read("DAGO_TLS_CLIENT_CA_FILE", ca) if ca else None
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def check(settings: Settings) -> None:
    """Everything ``dago serve`` needs from the security settings, checked before it starts
    (raises ConfigError)."""
    Authenticator(settings)
    server_credentials(settings)


def keys_command(argv: Sequence[str]) -> int:
    """``dago keys new --namespace NS`` | ``dago keys hash`` (key on stdin)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="dago keys", description="Make and hash API keys.")
    sub = parser.add_subparsers(dest="action", required=True)
    new = sub.add_parser("new", help="print a fresh key and the lines that configure it")
    new.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE)
    sub.add_parser("hash", help="print the SHA-256 of a key read from stdin")
    args = parser.parse_args(list(argv))
    if args.action == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("dago keys hash: give the key on stdin", file=sys.stderr)
            return 2
        print(hash_key(key))
        return 0
    if not NAMESPACE.fullmatch(args.namespace):
        print(
            "dago keys new: the namespace must be 1-63 letters, digits, _ . or -", file=sys.stderr
        )
        return 2
    key = new_key()
    digest = hash_key(key)
    print(
        f"API key (give it to the client; it is not stored anywhere):\n  {key}\n\n"
        f"Server configuration (the hash only):\n"
        f"  DAGO_API_KEYS={digest}:{args.namespace}\n"
        f"  or this line in DAGO_API_KEYS_FILE:\n  {digest} {args.namespace}\n\n"
        f"Clients send:  authorization: Bearer {key[: len(KEY_PREFIX) + 4]}…"
    )
    if os.environ.get("DAGO_AUTH", "keys") == "off":
        print("\nnote: DAGO_AUTH=off in this environment; the server ignores keys", file=sys.stderr)
    return 0
