"""TLS: the gRPC API with a server certificate, optionally requiring client certificates,
and Redis reached over TLS with a password, all configured by settings and URL only.

Certificates are made for each test run with the ``openssl`` command line (a throwaway CA,
a server certificate for localhost/127.0.0.1, client certificates from that CA and from
another one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dago.v1 import execution_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from harness import (
    ROOT,
    InProcessStack,
    MakeStack,
    echo,
    free_port,
    port_open,
    request,
    stack_settings,
)
from redisfixture import RedisServer

# Every test uses certificates made by openssl (the pki fixture).
pytestmark = pytest.mark.process


@dataclass(frozen=True)
class Pki:
    """Paths of a throwaway CA, a server certificate and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, ca: str, name: str, ext: str) -> None:
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        cwd=d,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "ca", "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _leaf(d, "ca", "client", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n")
    return Pki(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "stranger.pem",
        d / "stranger.key",
    )


def tls_channel(
    port: int, pki: Pki, cert: Path | None = None, key: Path | None = None
) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


async def submit_and_finish(channel: grpc.aio.Channel) -> execution_pb2.GraphState.ValueType:
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    gid = (await stub.SubmitGraph(request([echo("a", x=1)]), timeout=10)).graph_id
    while True:
        st = await stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=gid))
        if st.status.state >= execution_pb2.GRAPH_STATE_COMPLETED:
            return st.status.state


async def refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    stub = health_pb2_grpc.HealthStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return err.value.code()


@pytest.fixture
async def tls_stack(pki: Pki, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(tls_cert_file=str(pki.server_cert), tls_key_file=str(pki.server_key))


async def test_the_api_serves_tls_only(tls_stack: InProcessStack, pki: Pki) -> None:
    channel = tls_channel(tls_stack.port, pki)
    try:
        assert await submit_and_finish(channel) == execution_pb2.GRAPH_STATE_COMPLETED
    finally:
        await channel.close()
    # A plaintext client cannot talk to it.
    assert await refused(tls_stack.client.channel) == grpc.StatusCode.UNAVAILABLE


async def test_client_certificates_are_required_when_a_client_ca_is_set(
    redis_single: RedisServer, key_prefix: str, pki: Pki
) -> None:
    settings = stack_settings(
        redis_single.url,
        key_prefix,
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_client_ca_file=str(pki.ca),
    )
    async with InProcessStack(settings) as stack:
        good = tls_channel(stack.port, pki, pki.client_cert, pki.client_key)
        anonymous = tls_channel(stack.port, pki)
        stranger = tls_channel(stack.port, pki, pki.stranger_cert, pki.stranger_key)
        try:
            assert await submit_and_finish(good) == execution_pb2.GRAPH_STATE_COMPLETED
            assert await refused(anonymous) == grpc.StatusCode.UNAVAILABLE
            assert await refused(stranger) == grpc.StatusCode.UNAVAILABLE
        finally:
            for ch in (good, anonymous, stranger):
                await ch.close()


def serve_exit(**env: str) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python")),
        "DAGO_AUTH": "off",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "dago", "serve"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_half_a_tls_configuration_stops_serve(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "x.pem"
    not_pem.write_text("hello")
    cases = [
        ({"DAGO_TLS_CERT_FILE": str(pki.server_cert)}, "DAGO_TLS_KEY_FILE"),
        ({"DAGO_TLS_CLIENT_CA_FILE": str(pki.ca)}, "DAGO_TLS_CERT_FILE"),
        (
            {"DAGO_TLS_CERT_FILE": "/nonexistent.pem", "DAGO_TLS_KEY_FILE": str(pki.server_key)},
            "cannot read",
        ),
        (
            {"DAGO_TLS_CERT_FILE": str(not_pem), "DAGO_TLS_KEY_FILE": str(pki.server_key)},
            "not a PEM file",
        ),
    ]
    for env, words in cases:
        p = serve_exit(**env)
        assert p.returncode == 2, (env, p.stderr)
        assert words in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert "BEGIN" not in p.stderr  # no key material in messages


PASSWORD = "s3cret-redis-password"


@pytest.fixture
def tls_redis(pki: Pki, tmp_path: Path) -> Iterator[int]:
    """A redis-server speaking TLS only, with a password; yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port", "0",
            "--tls-port", str(port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(pki.server_cert),
            "--tls-key-file", str(pki.server_key),
            "--tls-ca-cert-file", str(pki.ca),
            "--tls-auth-clients", "no",
            "--requirepass", PASSWORD,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.redis
async def test_redis_over_tls_with_a_password_through_the_url(
    pki: Pki, key_prefix: str, tls_redis: int
) -> None:
    """rediss:// with the password in the URL and the CA as ?ssl_ca_certs=: nothing else."""
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, ConnectionError, ResponseError

    port = tls_redis
    await port_open(port)
    url = f"rediss://:{PASSWORD}@localhost:{port}/0?ssl_ca_certs={pki.ca}"
    async with InProcessStack(stack_settings(url, key_prefix)) as stack:
        _, st = await stack.client.run(request([echo("a", x=1)]))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
    # Without the password, or without TLS, Redis refuses.
    no_pw = aioredis.Redis.from_url(f"rediss://localhost:{port}/0?ssl_ca_certs={pki.ca}")
    with pytest.raises((AuthenticationError, ResponseError)):
        await no_pw.get("x")
    await no_pw.aclose()
    plain = aioredis.Redis.from_url(f"redis://:{PASSWORD}@localhost:{port}/0")
    with pytest.raises(ConnectionError):
        await plain.get("x")
    await plain.aclose()
