"""``dago dev``: the embedded default for a laptop.

Starts a private redis-server (unless DAGO_REDIS_URL is set), the API and the
workers as child processes, prints where everything is, and stops them all
on Ctrl-C. No Docker, no API key.
"""

from __future__ import annotations

import dataclasses
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

from dago.config import Settings, env_name, read_file
from dago.devtools import edge

RUN_DIR = Path(".run")
OFFLINE_TOKENS_PER_S = 40
"""The offline provider's pace under ``dago dev`` (unless DAGO_OFFLINE_TOKENS_PER_S is set):
about a real model's, so the streamed text and the running nodes can be seen."""


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


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _start_envoy(settings: Settings) -> tuple[subprocess.Popen[bytes] | None, edge.EdgeConfig]:
    """Envoy in front of the API (REST, SSE, gRPC-Web on DAGO_EDGE_PORT), or None with the
    reason printed: dago dev goes on without it."""
    cfg = edge.from_env(settings)
    if cfg.listen_port == 0:
        return None, cfg
    if _port_busy(cfg.listen_host, cfg.listen_port):
        print(
            f"dago dev: port {cfg.listen_port} is busy, so Envoy (REST, SSE, gRPC-Web) is NOT "
            f"started; the gRPC API still runs. Free the port or choose another one, e.g. "
            f"DAGO_EDGE_PORT=8081 make run",
            file=sys.stderr,
        )
        return None, cfg
    try:
        exe = edge.command(RUN_DIR / "envoy.yaml")
    except FileNotFoundError as e:
        print(f"dago dev: {e}; Envoy not started", file=sys.stderr)
        return None, cfg
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "envoy.yaml").write_text(edge.render(cfg))
    log_path = RUN_DIR / "envoy.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(exe, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            print(
                f"dago dev: Envoy exited with code {proc.returncode}; REST is not available.\n"
                + "\n".join(tail),
                file=sys.stderr,
            )
            return None, cfg
        try:
            with socket.create_connection(("127.0.0.1", cfg.listen_port), timeout=0.2):
                return proc, cfg
        except OSError:
            time.sleep(0.05)
    proc.kill()
    print(f"dago dev: Envoy did not start listening; see {log_path}", file=sys.stderr)
    return None, cfg


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
    # A laptop default needs no key; DAGO_AUTH=keys in the environment keeps authentication on.
    auth_off = env.get(env_name("auth"), "") in ("", "off")
    env[env_name("auth")] = "off" if auth_off else env[env_name("auth")]
    if auth_off and not env.get(env_name("grpc_host")):
        # Without authentication the API listens on this machine only, unless told otherwise.
        env[env_name("grpc_host")] = "127.0.0.1"
        settings = dataclasses.replace(settings, grpc_host="127.0.0.1")
    if auth_off:
        _warn_auth_off(settings)
    _pace_offline_answers(env)
    cmd = [sys.executable, "-m", "dago"]
    children.append(("api", subprocess.Popen([*cmd, "serve"], env=env)))
    for n in range(settings.workers):
        wenv = {**env, env_name("worker_id"): f"dev-worker-{n + 1}"}
        if settings.worker_metrics_port:  # one metrics port per worker on this machine
            wenv[env_name("worker_metrics_port")] = str(settings.worker_metrics_port + n)
        children.append((f"worker-{n + 1}", subprocess.Popen([*cmd, "worker"], env=wenv)))

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    if _wait_serving(settings.grpc_port):
        envoy, cfg = _start_envoy(settings)
        if envoy is not None:
            children.append(("envoy", envoy))
        _banner(
            dataclasses.replace(settings, auth=env[env_name("auth")]),
            url,
            cfg if envoy is not None else None,
        )
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


def _pace_offline_answers(env: dict[str, str]) -> None:
    """Give offline answers a model's pace unless the environment or the config file sets one
    (load() has read the file already, so it is valid)."""
    var = env_name("offline_tokens_per_s")
    path = env.get(env_name("config_file"), "").strip()
    if not env.get(var) and "offline_tokens_per_s" not in (read_file(path) if path else {}):
        env[var] = str(OFFLINE_TOKENS_PER_S)


def _warn_auth_off(settings: Settings) -> None:
    loopback = ("127.0.0.1", "localhost", "::1", "[::1]")
    open_binds = [
        f"{what} on {host}"
        for what, host in (("the gRPC API", settings.grpc_host), ("Envoy", settings.edge_host))
        if host not in loopback
    ]
    print(
        "\n"
        "!!! dago dev: AUTHENTICATION IS OFF (DAGO_AUTH=off) !!!\n"
        "!!! Anyone who can reach the API or the edge port can submit, read and cancel\n"
        "!!! graphs. Fine on a laptop; never expose it. For keys: DAGO_AUTH=keys with\n"
        "!!! DAGO_API_KEYS from `python -m dago keys new` (docs/security.md).\n"
        + (f"!!! Listening beyond this machine: {', '.join(open_binds)}.\n" if open_binds else ""),
        file=sys.stderr,
        flush=True,
    )


def _banner(settings: Settings, redis_url: str, cfg: edge.EdgeConfig | None) -> None:
    port = settings.grpc_port
    if cfg is not None:
        base = f"http://localhost:{cfg.listen_port}"
        rest = f"""
  REST + SSE {base}/api/v1/graphs   (Envoy: also gRPC-Web and gRPC on :{cfg.listen_port})
  live view  {base}/ui/   (submit an example or open a run: {base}/ui/#<id>)
  health     {base}/health    metrics {base}/metrics

REST (see README, "REST and SSE through Envoy"):
  curl -s -XPOST {base}/api/v1/graphs -H 'content-type: application/json' \\
      -d @examples/diamond.json
  curl -s {base}/api/v1/graphs/<id>/status
  curl -sN -H 'accept: text/event-stream' {base}/api/v1/graphs/<id>/events
  curl -s {base}/api/v1/graphs/<id>/result
  curl -s {base}/api/v1/workers        curl -s {base}/api/v1/dead-letters
"""
    else:
        rest = "\n  REST       off (Envoy not started; see above)\n"
    auth = (
        "\n  AUTHENTICATION IS OFF: anyone who reaches these ports can use the API"
        if settings.auth == "off"
        else "\n  authentication: API keys (send authorization: Bearer <key>)"
    )
    wp = settings.worker_metrics_port
    wm = f", metrics on :{wp}..{wp + settings.workers - 1}" if wp else ""
    print(
        f"""
dago is running (embedded default: no Docker, no API key){auth}
  gRPC API   127.0.0.1:{port}   (health + reflection: grpcurl needs no proto files)
  metrics    http://127.0.0.1:{settings.metrics_port}/metrics
  redis      {redis_url}
  workers    {settings.workers} process(es) x {settings.worker_slots} slots{wm}

Try:
  .venv/bin/dagoctl submit examples/research.json --watch   (docs/clients.md)
  grpcurl -plaintext localhost:{port} list
  grpcurl -plaintext -d @ localhost:{port} dago.v1.OrchestratorService/SubmitGraph \\
      < examples/diamond.json
  grpcurl -plaintext -d '{{"graph_id":"<id>"}}' localhost:{port} \\
      dago.v1.OrchestratorService/WatchGraph
""",
        flush=True,
    )
    print(rest + "\nCtrl-C stops everything.\n", flush=True)
