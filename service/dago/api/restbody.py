"""REST bodies checked as strictly as gRPC JSON clients are: no unknown field passes.

Envoy's gRPC-JSON transcoder (1.40) drops a JSON field the request message does not have
and forwards the rest: ``{"graph":{"nodes":[{"id":"a","retyr":{...}}]}}`` ran a node
without retries, while grpcurl and dagoctl refuse the same document. None of its options
rejects unknown body fields (``request_validation_options`` covers unknown methods, unknown
query parameters and path/body collisions only; docs/rest.md, "Unknown fields").

So on the REST routes with a body, Envoy (the ``rest_body`` Lua code of
``dago.devtools.edge``) forwards the body it received, as it was, in the binary metadata
:data:`HEADER` beside the transcoded message. :class:`RestBodyCheck` reads it back and
checks it against the RPC's request type with the rule every JSON document of dago goes
through (:mod:`dago_client.jsondoc`): any unknown field or enum value, at any depth, is
INVALID_ARGUMENT with a BadRequest naming each one (path, node id, nearest valid name),
before the RPC runs. The transcoded message stays what the RPC reads; the copy only decides
whether the request is refused, so a client sending the metadata itself can only have its
own call refused.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from dago.api.errors import invalid
from dago.engine.checker import Violation
from dago_client.jsondoc import problems

HEADER = "x-dago-rest-body-bin"
"""The REST request's body as Envoy received it (binary metadata: base64 on the wire)."""
INLINE_BYTES = 64 * 1024
"""Bodies up to this size are checked on the event loop (well under a millisecond); larger
ones in a thread: a 700 KB body of 2,000 nodes takes ~50 ms, which would stall every other
call of this process meanwhile."""


def body_violations(raw: bytes, request: Any) -> list[Violation]:
    """What in the JSON body ``raw`` the request's message type does not have (every
    ``body: "*"`` route: the body is the request message). Enum values in any case pass,
    as the transcoder reads them (``case_insensitive_enum_parsing``). A body that is not a
    JSON object was refused by the transcoder already: nothing to add."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    found = problems(doc, request.DESCRIPTOR, "", ignore_enum_case=True)
    return [Violation(p.field, p.description) for p in found]


class RestBodyCheck(grpc.aio.ServerInterceptor):
    """Refuses a REST call whose body has fields its request type does not (see the module).
    Calls without :data:`HEADER` (every gRPC and gRPC-Web call) are passed on unwrapped."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Wrap the handler (unary, or server-streaming as RunGraph) of a call that carries
        a REST body."""
        handler = await continuation(handler_call_details)
        metadata = handler_call_details.invocation_metadata or ()
        raw = next((v for k, v in metadata if k == HEADER), None)
        if handler is None or not isinstance(raw, bytes):
            return handler

        async def check(request: Any, context: Any) -> None:
            if len(raw) > INLINE_BYTES:
                violations = await asyncio.to_thread(body_violations, raw, request)
            else:
                violations = body_violations(raw, request)
            if violations:
                await context.abort_with_status(invalid(violations).status())

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def behavior(request: Any, context: Any) -> Any:
                await check(request, context)
                return await unary(request, context)

            return grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def streams(request: Any, context: Any) -> AsyncIterator[Any]:
                await check(request, context)
                async for item in stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                streams,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
