"""The RPC observer wraps each method's handler once, not on every call, and never serves a
wrapped handler of another method, or of a handler the rest of the chain no longer gives.

A real grpc.aio server with the observer first and, after it, an interceptor that (like
authentication) may hand out a new handler per call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from dago.api.auth import Authenticator, ServerGuard, hash_key, new_key
from dago.api.interceptors import RpcObserver
from dago.config import Settings
from dago.observe.metrics import Metrics, new_registry
from dago.observe.tracing import Tracing

SERVICE = "test.Echo"


async def _unary(request: bytes, context: Any) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    return b"a:" + request


async def _stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for k in range(int(request)):
        yield b"s:%d" % k


def _handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        },
    )


class PerCall(grpc.aio.ServerInterceptor):
    """Hands out a new handler on every call that sends ``per-call`` metadata (its answers
    say which call made it), as an interceptor that wraps per call does."""

    def __init__(self) -> None:
        self.made = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None or ("per-call", "1") not in (details.invocation_metadata or ()):
            return handler
        self.made += 1
        tag = b"call%d:" % self.made

        async def tagged(request: bytes, context: Any) -> bytes:
            return tag + request

        return grpc.unary_unary_rpc_method_handler(tagged)


def _count(metrics: Metrics, method: str, code: str) -> float:
    value = metrics.registry.get_sample_value(
        "dago_rpc_requests_total", {"method": method, "code": code}
    )
    return value or 0.0


@pytest.fixture
async def server() -> AsyncIterator[tuple[grpc.aio.Channel, Metrics]]:
    metrics = Metrics(new_registry())
    srv = grpc.aio.server(interceptors=[RpcObserver(metrics, Tracing("test", {})), PerCall()])
    srv.add_generic_rpc_handlers((_handlers(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, metrics
    finally:
        await channel.close()
        await srv.stop(None)


async def test_each_call_is_observed_under_its_own_method_and_code(
    server: tuple[grpc.aio.Channel, Metrics],
) -> None:
    channel, metrics = server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    stream = channel.unary_stream(f"/{SERVICE}/Stream")
    for k in range(3):
        assert await unary(b"x%d" % k) == b"a:x%d" % k
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(b"fail")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [m async for m in stream(b"2")] == [b"s:0", b"s:1"]
    assert [m async for m in stream(b"1")] == [b"s:0"]
    assert _count(metrics, f"{SERVICE}/Unary", "OK") == 3
    assert _count(metrics, f"{SERVICE}/Unary", "FAILED_PRECONDITION") == 1
    assert _count(metrics, f"{SERVICE}/Stream", "OK") == 2
    duration = metrics.registry.get_sample_value(
        "dago_rpc_duration_seconds_count", {"method": f"{SERVICE}/Unary"}
    )
    assert duration == 4


async def test_a_handler_given_per_call_is_the_one_that_runs(
    server: tuple[grpc.aio.Channel, Metrics],
) -> None:
    """A cached wrapper of an earlier call's handler would answer with that call's tag."""
    channel, metrics = server
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    per_call = (("per-call", "1"),)
    assert await unary(b"x", metadata=per_call) == b"call1:x"
    assert await unary(b"y", metadata=per_call) == b"call2:y"
    assert await unary(b"z") == b"a:z"  # the registered handler again
    assert await unary(b"w", metadata=per_call) == b"call3:w"
    assert _count(metrics, f"{SERVICE}/Unary", "OK") == 4


async def test_the_wrapped_handler_is_made_once_per_method_and_handler() -> None:
    observer = RpcObserver(Metrics(new_registry()), Tracing("test", {}))
    registered = _handlers()

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    async def registry(details: grpc.HandlerCallDetails) -> Any:
        return registered.service(details)

    unary, stream = Details(f"/{SERVICE}/Unary"), Details(f"/{SERVICE}/Stream")
    first = await observer.intercept_service(registry, unary)
    assert await observer.intercept_service(registry, unary) is first
    other = await observer.intercept_service(registry, stream)
    assert other is not first and other.unary_stream is not None
    assert await observer.intercept_service(registry, stream) is other
    assert await observer.intercept_service(registry, Details(f"/{SERVICE}/Nope")) is None

    fresh = grpc.unary_unary_rpc_method_handler(_unary)

    async def another(details: grpc.HandlerCallDetails) -> Any:
        return fresh

    replaced = await observer.intercept_service(another, unary)
    assert replaced is not first and replaced.unary_unary is not None


KEY_A, KEY_B = new_key(), new_key()


async def test_the_guard_wraps_once_and_still_authenticates_every_call() -> None:
    """Authentication behind the observer: each method is wrapped once by both, yet every
    call is authenticated from its own metadata and runs in its own namespace (a wrapper
    that kept the first caller's namespace would answer team-a to team-b)."""
    keys = f"{hash_key(KEY_A)}:team-a,{hash_key(KEY_B)}:team-b"
    auth = Authenticator(Settings(auth="keys", api_keys=keys))

    async def whoami(request: bytes, context: Any) -> bytes:
        return auth.current().encode()

    handlers = grpc.method_handlers_generic_handler(
        SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(whoami)}
    )
    metrics = Metrics(new_registry())
    observer, guard = RpcObserver(metrics, Tracing("test", {})), ServerGuard(auth)
    srv = grpc.aio.server(interceptors=[observer, guard])
    srv.add_generic_rpc_handlers((handlers,))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            who = channel.unary_unary(f"/{SERVICE}/Who")

            def bearer(key: str) -> tuple[tuple[str, str], ...]:
                return (("authorization", f"Bearer {key}"),)

            assert await who(b"", metadata=bearer(KEY_A)) == b"team-a"
            assert await who(b"", metadata=bearer(KEY_B)) == b"team-b"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await who(b"")
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await who(b"", metadata=bearer("dago_not-a-key"))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await who(b"", metadata=bearer(KEY_A)) == b"team-a"
    finally:
        await srv.stop(None)
    method = f"{SERVICE}/Who"
    assert _count(metrics, method, "OK") == 3
    assert _count(metrics, method, "UNAUTHENTICATED") == 2

    class Details(grpc.HandlerCallDetails):
        def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
            self.method = f"/{SERVICE}/Who"
            self.invocation_metadata = metadata

    async def registry(details: grpc.HandlerCallDetails) -> Any:
        return handlers.service(details)

    async def guarded(details: grpc.HandlerCallDetails) -> Any:
        return await guard.intercept_service(registry, details)

    # Calls with different keys get the same guarded handler, and so the same observed one.
    a = await guard.intercept_service(registry, Details((("authorization", f"Bearer {KEY_A}"),)))
    b = await guard.intercept_service(registry, Details((("authorization", f"Bearer {KEY_B}"),)))
    assert a is b
    first = await observer.intercept_service(guarded, Details(()))
    assert await observer.intercept_service(guarded, Details(())) is first
