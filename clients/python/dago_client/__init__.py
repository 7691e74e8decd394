"""dago's Python client: async and sync clients on the generated gRPC stubs.

>>> from dago_client import DagoClient, load_request, to_dict
>>> with DagoClient() as dago:                      # DAGO_TARGET, default localhost:50051
...     run = dago.submit(load_request("examples/diamond.json"))
...     for event in dago.watch(run.graph_id):      # resumes after a dropped stream
...         print(event.seq, event.WhichOneof("payload"))
...     print(to_dict(dago.result(run.graph_id).output))   # Struct -> plain dict

Messages are the generated ones (``dago.v1.*_pb2``); errors are :class:`DagoError`
subclasses carrying the google.rpc details (``err.field_violations``).
"""

from dago_client._common import (
    TERMINAL_EVENTS,
    TERMINAL_STATES,
    RunFilters,
    node_state_name,
    parse_group_by,
    parse_state,
    state_name,
    to_dict,
)
from dago_client.aio import AsyncDagoClient
from dago_client.config import ClientConfig
from dago_client.errors import (
    AbortedError,
    AlreadyExistsError,
    DagoError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from dago_client.graphfile import GraphFileError, load_request, parse_document, parse_inputs
from dago_client.sync import DagoClient

__all__ = [
    "TERMINAL_EVENTS",
    "TERMINAL_STATES",
    "AbortedError",
    "AlreadyExistsError",
    "AsyncDagoClient",
    "ClientConfig",
    "DagoClient",
    "DagoError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GraphFileError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RunFilters",
    "UnauthenticatedError",
    "UnavailableError",
    "load_request",
    "node_state_name",
    "parse_document",
    "parse_group_by",
    "parse_inputs",
    "parse_state",
    "state_name",
    "to_dict",
]
