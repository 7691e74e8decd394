"""Where and how the client connects: target, TLS and API key, from arguments or environment.

Environment variables (arguments win):

- ``DAGO_TARGET``: ``host:port`` of the API or of Envoy (default ``localhost:50051``);
  ``https://host:port`` turns TLS on, ``http://`` is accepted and ignored.
- ``DAGO_API_KEY``: sent as ``authorization: Bearer <key>`` metadata on every call.
- ``DAGO_TLS``: ``1``/``true`` to use TLS with the system roots.
- ``DAGO_TLS_CA``: a PEM file of roots to trust (turns TLS on).
- ``DAGO_TLS_CERT`` / ``DAGO_TLS_KEY``: a client certificate and key (mutual TLS).
- ``DAGO_TLS_SERVER_NAME``: the name to verify the server certificate against.
- ``DAGO_TIMEOUT``: seconds a unary call may take, retries included (default 30).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT_S = 30.0
_TRUE = {"1", "true", "yes", "on"}


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Connection settings of a dago client."""

    target: str = DEFAULT_TARGET
    api_key: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls_server_name: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    # Idempotent calls answered UNAVAILABLE are retried up to this many attempts in all.
    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> ClientConfig:
        """Settings from ``env`` (default ``os.environ``); non-None ``overrides`` win."""
        e = os.environ if env is None else env
        target = e.get("DAGO_TARGET", "") or DEFAULT_TARGET
        base = cls(
            target=target,
            api_key=e.get("DAGO_API_KEY", ""),
            tls=e.get("DAGO_TLS", "").strip().lower() in _TRUE,
            tls_ca=e.get("DAGO_TLS_CA", ""),
            tls_cert=e.get("DAGO_TLS_CERT", ""),
            tls_key=e.get("DAGO_TLS_KEY", ""),
            tls_server_name=e.get("DAGO_TLS_SERVER_NAME", ""),
            timeout_s=float(e.get("DAGO_TIMEOUT", "") or DEFAULT_TIMEOUT_S),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(base, **given)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        """The ``host:port`` to dial (any URL scheme removed)."""
        for scheme in ("https://", "http://", "grpc://", "grpcs://"):
            if self.target.startswith(scheme):
                return self.target[len(scheme) :].rstrip("/")
        return self.target

    @property
    def uses_tls(self) -> bool:
        """Whether the channel is a TLS one."""
        return (
            self.tls
            or bool(self.tls_ca or self.tls_cert)
            or self.target.startswith(("https://", "grpcs://"))
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call (the API key as a bearer token)."""
        if self.api_key:
            return (("authorization", f"Bearer {self.api_key}"),)
        return ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        if not self.uses_tls:
            return None

        def read(path: str) -> bytes | None:
            return Path(path).expanduser().read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca),
            private_key=read(self.tls_key),
            certificate_chain=read(self.tls_cert),
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        """gRPC channel options (server name override, message sizes)."""
        opts: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.primary_user_agent", "dago-client-python/0.1"),
        ]
        if self.tls_server_name:
            opts.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return opts
