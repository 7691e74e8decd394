"""``dago dev``: the embedded default for a laptop.

Starts a private redis-server (unless DAGO_REDIS_URL is set), the API and the
workers as child processes, prints where everything is, and stops them all
on Ctrl-C. No Docker, no API key.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dago.config import Settings, env_name

RUN_DIR = Path(".run")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit(
            "dago dev: redis-server is not installed.\n"
            "  Debian/Ubuntu: sudo apt-get install -y redis-server\n"
            "  macOS:         brew install redis\n"
            "or point dago at a Redis you have: DAGO_REDIS_URL=redis://host:6379/0 make run"
        )
    port = _free_port()
    data = RUN_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
        ],
        stdout=open(data / "redis.log", "ab"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"dago dev: redis-server did not start; see {data / 'redis.log'}")


def _wait_serving(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def run_dev(settings: Settings) -> int:
    """Run everything until Ctrl-C; returns the exit code."""
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    if not env.get(env_name("redis_url")):
        redis, url = _start_redis()
        children.append(("redis", redis))
        env[env_name("redis_url")] = url
    else:
        url = env[env_name("redis_url")]
    cmd = [sys.executable, "-m", "dago"]
    children.append(("api", subprocess.Popen([*cmd, "serve"], env=env)))
    for n in range(settings.workers):
        wenv = {**env, env_name("worker_id"): f"dev-worker-{n + 1}"}
        children.append((f"worker-{n + 1}", subprocess.Popen([*cmd, "worker"], env=wenv)))

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if _wait_serving(settings.grpc_port):
        _banner(settings, url)
    code = 0
    while not stopping:
        for name, proc in children:
            if proc.poll() is not None:
                print(
                    f"dago dev: {name} exited with code {proc.returncode}; stopping",
                    file=sys.stderr,
                )
                stopping, code = True, 1
        time.sleep(0.2)
    for _, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for _, proc in reversed(children):
        try:
            proc.wait(timeout=settings.drain_timeout_s + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return code


def _banner(settings: Settings, redis_url: str) -> None:
    port = settings.grpc_port
    print(
        f"""
dago is running (embedded default: no Docker, no API key)
  gRPC API   127.0.0.1:{port}   (health + reflection: grpcurl needs no proto files)
  metrics    http://127.0.0.1:{settings.metrics_port}/metrics
  redis      {redis_url}
  workers    {settings.workers} process(es) x {settings.worker_slots} slots

Try:
  grpcurl -plaintext localhost:{port} list
  grpcurl -plaintext -d @ localhost:{port} dago.v1.OrchestratorService/SubmitGraph \\
      < examples/diamond.json
  grpcurl -plaintext -d '{{"graph_id":"<id>"}}' localhost:{port} \\
      dago.v1.OrchestratorService/WatchGraph

Ctrl-C stops everything.
""",
        flush=True,
    )
