"""``dago dev``: the embedded default for a laptop.

Starts a private redis-server (unless DAGO_REDIS_URL is set), the API and the
workers as child processes, then Envoy, prints where everything is, and supervises
them until Ctrl-C. No Docker, no API key.

Supervision: a child that exits (a crash, a kill) is restarted after a backoff of 1, 2,
4, 8 s (the first: DAGO_DEV_RESTART_DELAY_S), saying so; its fifth exit within 60 s stops
everything. A restarted worker keeps its name (``dev-worker-<n>``), so it takes back the
work it held at once instead of after the lease (``Worker._take_back``).

Stopping: every child runs in a session of its own, so a terminal's Ctrl-C (SIGINT to
the foreground process group) reaches this supervisor alone, which stops them in order:
Envoy (no new requests), then the API and the workers (SIGTERM: the workers finish and
apply the nodes they run, for up to DAGO_DRAIN_TIMEOUT_S), then Redis last, which
everything before it needs to the end. Had Redis got the SIGINT with them, the draining
workers could not record their results and their nodes would run again after the next
start plus the lease. A second Ctrl-C stops at once (running nodes then run again later).
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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dago.config import Settings, env_name, read_file
from dago.devtools import edge

RUN_DIR = Path(".run")
SETPRIV = shutil.which("setpriv")
"""util-linux's setpriv, where there is one: children get SIGTERM when dago dev dies without
stopping them (SIGKILL), instead of running on in their own sessions, holding the ports."""
OFFLINE_TOKENS_PER_S = 40
"""The offline provider's pace under ``dago dev`` (unless DAGO_OFFLINE_TOKENS_PER_S is set):
about a real model's, so the streamed text and the running nodes can be seen."""


@dataclasses.dataclass
class Restarts:
    """When a child that exited is started again: after 1, 2, 4... s (at most ``max_delay_s``),
    unless this is its ``limit``-th exit within ``window_s``, which stops everything."""

    limit: int = 5
    window_s: float = 60.0
    first_delay_s: float = 1.0
    max_delay_s: float = 30.0
    exits: list[float] = dataclasses.field(default_factory=list)

    def exited(self, now: float) -> float | None:
        """Record an exit at ``now``; returns the delay before the restart, or None to stop."""
        self.exits = [t for t in self.exits if now - t < self.window_s] + [now]
        if len(self.exits) >= self.limit:
            return None
        return min(self.first_delay_s * 2.0 ** (len(self.exits) - 1), self.max_delay_s)

    @property
    def recent(self) -> int:
        """Exits within the window, as of the last one."""
        return len(self.exits)


@dataclasses.dataclass
class Child:
    """A supervised child process and how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    log: Path | None = None
    """Its output goes to this file (Redis, Envoy), else to dago dev's own output."""
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float | None = None
    restarts: Restarts = dataclasses.field(default_factory=Restarts)

    def start(self) -> subprocess.Popen[bytes]:
        """Start (again) in a session of its own: see the module doc, "Stopping"."""
        out: IO[bytes] | None = self.log.open("ab") if self.log else None
        try:
            self.proc = subprocess.Popen(
                [SETPRIV, "--pdeathsig", "TERM", *self.argv] if SETPRIV else self.argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()  # the child has its own copy
        self.restart_at = None
        return self.proc

    @property
    def running(self) -> bool:
        """True while its process has not exited."""
        return self.proc is not None and self.proc.poll() is None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _say(message: str) -> None:
    print(f"dago dev: {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis() -> tuple[Child, str]:
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
    argv = [
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
    ]
    child = Child("redis", argv, log=data / "redis.log")
    proc = child.start()
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return child, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit(f"dago dev: redis-server did not start; see {data / 'redis.log'}")


def _wait_serving(port: int, stop: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub: Any = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline and not stop():
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


def _start_envoy(settings: Settings) -> tuple[Child | None, edge.EdgeConfig]:
    """Envoy in front of the API (REST, SSE, gRPC-Web on DAGO_EDGE_PORT), or None with the
    reason printed: dago dev goes on without it."""
    cfg = edge.from_env(settings)
    if cfg.listen_port == 0:
        return None, cfg
    if _port_busy(cfg.listen_host, cfg.listen_port):
        _say(
            f"port {cfg.listen_port} is busy, so Envoy (REST, SSE, gRPC-Web) is NOT "
            f"started; the gRPC API still runs. Free the port or choose another one, e.g. "
            f"DAGO_EDGE_PORT=8081 make run"
        )
        return None, cfg
    try:
        exe = edge.command(RUN_DIR / "envoy.yaml")
    except FileNotFoundError as e:
        _say(f"{e}; Envoy not started")
        return None, cfg
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "envoy.yaml").write_text(edge.render(cfg))
    log_path = RUN_DIR / "envoy.log"
    child = Child("envoy", exe, log=log_path)
    proc = child.start()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            _say(
                f"Envoy exited with code {proc.returncode}; REST is not available.\n"
                + "\n".join(tail)
            )
            return None, cfg
        try:
            with socket.create_connection(("127.0.0.1", cfg.listen_port), timeout=0.2):
                return child, cfg
        except OSError:
            time.sleep(0.05)
    proc.kill()
    _say(f"Envoy did not start listening; see {log_path}")
    return None, cfg


class Supervisor:
    """Restarts children that exit and stops them all in order (see the module doc)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.children: list[Child] = []
        self.stopping = False
        self._hurry = False

    def install_signals(self) -> None:
        """Ctrl-C, SIGTERM and a closed terminal (SIGHUP) stop everything in order; a
        second one stops at once."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, *_: object) -> None:
        if self.stopping:
            self._hurry = True
            return
        self.stopping = True

    def add(self, child: Child) -> None:
        """Supervise ``child`` (started already, or started here)."""
        if child.proc is None:
            child.start()
        child.restarts = Restarts(first_delay_s=self._settings.dev_restart_delay_s)
        self.children.append(child)

    def supervise(self) -> int:
        """Restart children that exit until a signal or too many exits; then stop them all.
        Returns the exit code: 0 after a signal, 1 after too many exits."""
        code = 0
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        child.start()
                        assert child.proc is not None
                        _say(f"{child.name} restarted (pid {child.proc.pid})")
                elif not child.running and not self._exited(child, now):
                    code = 1
                    self.stopping = True
                    break
            time.sleep(0.1)
        self.stop()
        return code

    def _exited(self, child: Child, now: float) -> bool:
        """Schedule the restart of a child that exited, saying so; False when it exited
        too often (everything stops)."""
        assert child.proc is not None
        rc = child.proc.returncode
        how = f"exited with code {rc}" + (f" ({_signal_name(-rc)})" if rc < 0 else "")
        delay = child.restarts.exited(now)
        r = child.restarts
        if delay is None:
            where = f"; its output: {child.log}" if child.log else " (its output is above)"
            _say(
                f"{child.name} {how}: {r.limit} exits in {r.window_s:g} s, so it is not "
                f"restarted again; stopping everything{where}. Fix the cause and start again."
            )
            return False
        _say(
            f"{child.name} {how}; restarting in {delay:g} s "
            f"(crash {r.recent} of {r.limit} in {r.window_s:g} s)"
        )
        child.restart_at = now + delay
        return True

    def stop(self) -> None:
        """Stop in order: Envoy, then the API and the workers (drained), then Redis."""
        drain = self._settings.drain_timeout_s
        edge_ = [c for c in self.children if c.name == "envoy"]
        redis = [c for c in self.children if c.name == "redis"]
        rest = [c for c in self.children if c not in edge_ and c not in redis]
        steps = [
            *(["Envoy"] if edge_ else []),
            f"the API and the workers (they finish the nodes they run, for up to {drain:g} s)",
            *(["Redis"] if redis else []),
        ]
        _say(f"stopping: {', then '.join(steps)}. Ctrl-C again to stop at once.")
        self._stop(edge_, 10)
        self._stop(rest, drain + 5)
        self._hurry = False  # Redis is quick to stop, and stopping it unclean loses writes
        self._stop(redis, 10)
        # Said last, so the terminal shows the stop finished (not a hang after "stopping").
        kept = f"; Redis keeps its data in {RUN_DIR / 'redis'} for the next start" if redis else ""
        _say(f"stopped{kept}.")

    def _stop(self, children: Sequence[Child], timeout: float) -> None:
        """SIGTERM ``children``, wait up to ``timeout`` s (less after a second Ctrl-C) and
        SIGKILL what is left, saying so."""
        live = [c for c in children if c.running]
        for c in live:
            assert c.proc is not None
            c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(c.running for c in live) and time.monotonic() < deadline and not self._hurry:
            time.sleep(0.05)
        for c in live:
            if c.running:
                assert c.proc is not None
                if not self._hurry:
                    _say(f"{c.name} did not stop within {timeout:g} s; killing it")
                c.proc.kill()
                c.proc.wait()


def run_dev(settings: Settings) -> int:
    """Run everything until Ctrl-C; returns the exit code."""
    env = dict(os.environ)
    sup = Supervisor(settings)
    # Installed first: a Ctrl-C while things start stops what has started, in order.
    sup.install_signals()
    if not env.get(env_name("redis_url")):
        redis, url = _start_redis()
        sup.add(redis)
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
    if settings.postgres_url and not env.get(env_name("migrate_at_start")):
        # A laptop's history database gets its schema without a `dago migrate` first.
        env[env_name("migrate_at_start")] = "true"
    cmd = [sys.executable, "-m", "dago"]
    sup.add(Child("api", [*cmd, "serve"], env))
    for n in range(settings.workers):
        # The same name across restarts: a restarted worker takes back its work at once.
        wenv = {**env, env_name("worker_id"): f"dev-worker-{n + 1}"}
        if settings.worker_metrics_port:  # one metrics port per worker on this machine
            wenv[env_name("worker_metrics_port")] = str(settings.worker_metrics_port + n)
        sup.add(Child(f"worker-{n + 1}", [*cmd, "worker"], wenv))
    if _wait_serving(settings.grpc_port, stop=lambda: sup.stopping):
        envoy, cfg = _start_envoy(settings)
        if envoy is not None:
            sup.add(envoy)
        if not sup.stopping:
            _banner(
                dataclasses.replace(settings, auth=env[env_name("auth")]),
                url,
                cfg if envoy is not None else None,
            )
    return sup.supervise()


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
  console    {base}/console/   (operators: runs, definitions, approvals, workers)
  API page   {base}/docs/   (OpenAPI: {base}/api/v1/openapi.json)
  health     {base}/health    metrics {base}/metrics

REST (see README, "REST and SSE through Envoy"):
  ID=$(curl -s -XPOST {base}/api/v1/graphs -d @examples/diamond.json \\
       | python3 -c 'import json,sys; print(json.load(sys.stdin)["graph_id"])')
  curl -s {base}/api/v1/graphs/$ID/status
  curl -sN -H 'accept: text/event-stream' {base}/api/v1/graphs/$ID/events
  curl -s {base}/api/v1/graphs/$ID/result
  curl -s {base}/api/v1/workers
  curl -s {base}/api/v1/dead-letters
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
  .venv/bin/dagoctl submit examples/research.json --watch   # docs/clients.md
  .venv/bin/grpcurl -plaintext localhost:{port} list
  ID=$(.venv/bin/dagoctl submit examples/diamond.json)   # the run's id
  .venv/bin/grpcurl -plaintext -d "{{\\"graph_id\\":\\"$ID\\"}}" localhost:{port} \\
      dago.v1.OrchestratorService/WatchGraph
""",
        flush=True,
    )
    print(rest + "\nCtrl-C stops everything.\n", flush=True)
