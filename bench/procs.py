"""Child processes of the benchmark: a private Redis, dago, Envoy, Celery, the fake model.

Every process is started here and recorded in a ``Procs``; ``Procs.stop_all`` ends
them (SIGTERM, then SIGKILL) and runs from ``finally`` and on SIGTERM/SIGINT, and
each child also gets SIGKILL if the benchmark itself dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections (fail fast if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited ({proc.returncode}); see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s; see {log}")


class Procs:
    """Every child process the benchmark started, by name."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.live: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as ``name``; its output goes to ``<workdir>/<name>.log``."""
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                preexec_fn=_die_with_parent,  # only prctl: safe in the forked child
            )
        self.live[name] = proc
        return proc

    def log(self, name: str) -> Path:
        """The log file of ``name``."""
        return self.dir / f"{name}.log"

    def stop(self, *names: str, timeout: float = 10) -> None:
        """SIGTERM the named children (all when none named), wait, SIGKILL stragglers."""
        chosen = list(names) or list(self.live)
        procs = [(n, self.live.pop(n)) for n in chosen if n in self.live]
        for _, p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self) -> None:
        """Stop every child, the newest first (Redis last)."""
        for name in reversed(list(self.live)):
            self.stop(name, timeout=5)


def start_redis(procs: Procs) -> tuple[str, int]:
    """A private redis-server on a free 127.0.0.1 port, persistence off."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("bench: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    data = procs.dir / "redis"
    data.mkdir(exist_ok=True)
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    argv += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    argv += ["--maxclients", "10000", "--slowlog-log-slower-than", "1000"]
    proc = procs.start("redis", argv)
    wait_port(port, proc, procs.log("redis"))
    return f"redis://127.0.0.1:{port}/0", port


def pythonpath() -> str:
    """service, gen/python, clients/python, tests/support and bench: what the children import."""
    parts = ("service", "gen/python", "clients/python", "tests/support", "bench")
    return os.pathsep.join(str(ROOT / p) for p in parts)


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Celery's prefork pool)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d.name))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
