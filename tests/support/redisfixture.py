"""Real Redis processes for tests: a single server and a 3-node cluster.

Every server listens on a free 127.0.0.1 port (never the system Redis on 6379)
and lives in its own directory under :data:`LOG_ROOT`, where ``redis.log`` is
kept. Processes are stopped at interpreter exit even if a test run breaks, and
die with the test process (``PR_SET_PDEATHSIG``) if it is killed outright.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
SETPRIV = shutil.which("setpriv")

CLUSTER_BUS_OFFSET = 10000
"""Redis Cluster listens for its node-to-node bus on ``port + 10000``."""

LOG_ROOT = Path(tempfile.mkdtemp(prefix="dago-test-redis-"))
"""Directory holding one sub-directory (data + ``redis.log``) per server."""

_LIVE: set[RedisServer] = set()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, cluster_bus: bool = False) -> int:
    """Return a free TCP port on 127.0.0.1 (and with ``port + 10000`` free if ``cluster_bus``)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if not cluster_bus:
            return port
        bus = port + CLUSTER_BUS_OFFSET
        if bus <= 65535 and _port_free(bus):
            return port
    raise RuntimeError("no free port found")


def to_redis_py_url(url: str) -> str:
    """Turn dago's ``redis+cluster://host:port`` into the ``redis://`` form redis-py wants."""
    return url.replace("redis+cluster://", "redis://", 1)


def _die_with_parent() -> None:
    """Child-side hook: get SIGKILL when the test process dies (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class RedisServer:
    """One ``redis-server`` process on a fixed port and directory, restartable.

    By default persistence is off (``--save "" --appendonly no``). Pass
    ``appendonly=True`` (and ``appendfsync="always"|"everysec"|"no"``) to test
    durability across :meth:`kill` / :meth:`start`.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
        cluster: bool = False,
        name: str = "redis",
    ) -> None:
        self.cluster = cluster
        self.port = free_port(cluster_bus=cluster)
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-{self.port}-", dir=LOG_ROOT))
        self.log_path = self.dir / "redis.log"
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--enable-debug-command", "local",
        ]  # fmt: skip
        if self.cluster:
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "5000",
            ]  # fmt: skip
        return argv + self.extra_args

    def start(self, timeout: float = 15.0) -> None:
        """Start (or restart) the server on the same port and dir; wait for PING.

        The first start moves to another free port if the chosen one was taken in the
        meantime (another process can bind it between free_port() and redis-server).
        """
        for _ in range(5):
            try:
                self._start(timeout)
                self._started_once = True
                return
            except RuntimeError:
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                if self._started_once or "Address already in use" not in log:
                    raise
                self.log_path.unlink()
                self.port = free_port(cluster_bus=self.cluster)
        raise RuntimeError(f"redis-server found no free port: {self.describe()}")

    def _start(self, timeout: float) -> None:
        if self.running:
            return
        # `setpriv --pdeathsig` (util-linux) rather than a preexec_fn where it exists: a
        # preexec_fn runs Python, and the at-fork handlers of imported libraries, in the
        # forked copy of this multi-threaded process (gRPC threads), which can crash it
        # (seen: a segfault in anthropic's at-fork handler while Redis restarted).
        argv = self._argv()
        self._proc = subprocess.Popen(
            [SETPRIV, "--pdeathsig", "KILL", *argv] if SETPRIV else argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=None if SETPRIV else _die_with_parent,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server on :{self.port} exited: {self.describe()}")
            if self.ping():
                return
            time.sleep(0.02)
        self.kill()
        raise TimeoutError(f"redis-server on :{self.port} did not answer PING: {self.describe()}")

    def ping(self) -> bool:
        """True if the server answers PING right now."""
        client = redis.Redis(
            port=self.port, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
        )
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            # ResponseError: LOADING while the dataset is read back from disk.
            return False
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM), then wait; SIGKILL if it does not exit in time."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a power loss would; data since the last fsync is lost."""
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def describe(self) -> str:
        """Where this server lives, plus the end of its log (for error messages)."""
        tail = ""
        with contextlib.suppress(OSError):
            tail = "".join(self.log_path.read_text(errors="replace").splitlines(True)[-15:])
        return f"port={self.port} dir={self.dir} log={self.log_path}\n{tail}"

    def __repr__(self) -> str:
        return f"RedisServer(port={self.port}, dir={str(self.dir)!r}, running={self.running})"


class RedisCluster:
    """Three master nodes (no replicas) covering all 16384 slots, on 127.0.0.1."""

    def __init__(self, *, size: int = 3, extra_args: Sequence[str] = ()) -> None:
        self.nodes = [
            RedisServer(cluster=True, name=f"cluster{i}", extra_args=extra_args)
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:P1``: how dago is told to use cluster mode."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    @property
    def ports(self) -> list[int]:
        """Ports of all nodes."""
        return [n.port for n in self.nodes]

    def start(self, timeout: float = 60.0) -> None:
        """Start the nodes, create the cluster, and wait until every node reports it ok."""
        for node in self.nodes:
            node.start()
        addrs = [f"127.0.0.1:{p}" for p in self.ports]
        cmd = [REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas", "0"]
        done = subprocess.run(
            [*cmd, "--cluster-yes"], capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 60.0) -> None:
        """Wait until ``cluster_state:ok`` with all slots assigned on every node."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self._info(n) for n in self.nodes]
            if all(
                i.get("cluster_state") == "ok"
                and i.get("cluster_slots_assigned") == "16384"
                and i.get("cluster_known_nodes") == str(len(self.nodes))
                for i in infos
            ):
                return
            if time.monotonic() > deadline:
                where = "\n".join(n.describe() for n in self.nodes)
                raise TimeoutError(f"cluster not ok after {timeout}s: {infos}\n{where}")
            time.sleep(0.1)

    @staticmethod
    def _info(node: RedisServer) -> dict[str, str]:
        client = redis.Redis(
            port=node.port, socket_timeout=2, decode_responses=True, retry=Retry(NoBackoff(), 0)
        )
        try:
            info = client.cluster("info")
            return {str(k): str(v) for k, v in info.items()}
        except redis.RedisError:
            return {}
        finally:
            client.close()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def __repr__(self) -> str:
        return f"RedisCluster(ports={self.ports})"


@dataclass(frozen=True)
class RedisTarget:
    """Which Redis a test talks to: ``url`` as dago takes it, and whether it is a cluster."""

    url: str
    cluster: bool
    name: str


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.kill()
