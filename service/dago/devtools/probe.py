"""``dago health``: a health probe for containers (Docker HEALTHCHECK, exec probes).

``dago health`` (or ``dago health api``) calls the standard ``grpc.health.v1.Health/Check``
of a ``dago serve`` (default: this container's, ``127.0.0.1:$DAGO_GRPC_PORT``) and exits 0
only when it answers SERVING: the API reports SERVING while Redis answers and a worker is
alive; ``--service liveness`` asks only whether the process serves.
``dago health worker`` checks a worker process through its metrics HTTP port
(``$DAGO_WORKER_METRICS_PORT``): a worker has no gRPC server, and the port answering shows that
the process is up. The slim image has no curl, hence a probe of dago's own.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

from dago.config import Settings

OK = 0
UNHEALTHY = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``health`` subcommand on the ``dago`` command line."""
    p = sub.add_parser(
        "health",
        help="probe a dago process: exit 0 when healthy, 1 otherwise (container healthchecks)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "role",
        nargs="?",
        choices=("api", "worker"),
        default="api",
        help="api: gRPC health Check (default); worker: the metrics port answers",
    )
    p.add_argument(
        "--target",
        default="",
        help="api: host:port to check (default 127.0.0.1:$DAGO_GRPC_PORT); "
        "worker: base URL (default http://127.0.0.1:$DAGO_WORKER_METRICS_PORT)",
    )
    p.add_argument(
        "--service",
        default="",
        help="api: the service name to ask about (default: the server as a whole)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument(
        "--tls-ca",
        type=Path,
        default=None,
        help="api: speak TLS, trusting this CA (PEM) file (e.g. when DAGO_TLS_CERT_FILE is set)",
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        default=None,
        help="api: client certificate (PEM) for mutual TLS, with --tls-key",
    )
    p.add_argument("--tls-key", type=Path, default=None, help="api: key of --tls-cert (PEM)")
    p.add_argument(
        "--tls-server-name",
        default="",
        help="api: the name to expect in the server certificate (default: from --target)",
    )


def check_api(
    target: str,
    *,
    service: str = "",
    timeout: float = 3.0,
    tls_ca: Path | None = None,
    tls_server_name: str = "",
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> tuple[bool, str]:
    """Health Check ``target``: (serving, what it answered)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if tls_ca is None:
        channel = grpc.insecure_channel(target)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=tls_ca.read_bytes(),
            private_key=tls_key.read_bytes() if tls_key else None,
            certificate_chain=tls_cert.read_bytes() if tls_cert else None,
        )
        options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    with channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stub's methods are untyped
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            call = cast(grpc.Call, e)  # the errors of a sync stub's calls are Calls too
            return False, f"{call.code().name}: {call.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, name


def check_worker(base_url: str, *, timeout: float = 3.0) -> tuple[bool, str]:
    """GET ``<base_url>/metrics`` of a worker: (answered 200, what happened)."""
    url = base_url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"{url}: {e}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``dago health`` with parsed ``args``; returns the exit status."""
    if args.role == "worker":
        port = settings.worker_metrics_port
        if not args.target and not port:
            print("dago health worker: the metrics port is 0; give --target", file=sys.stderr)
            return UNHEALTHY
        base = args.target or f"http://127.0.0.1:{port}"
        ok, what = check_worker(base, timeout=args.timeout)
    else:
        target = args.target or f"127.0.0.1:{settings.grpc_port}"
        ok, what = check_api(
            target,
            service=args.service,
            timeout=args.timeout,
            tls_ca=args.tls_ca,
            tls_server_name=args.tls_server_name,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    print(f"dago health {args.role}: {what}", file=sys.stdout if ok else sys.stderr)
    return OK if ok else UNHEALTHY
