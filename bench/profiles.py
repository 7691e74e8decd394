"""Where the time goes: py-spy samples of dago's processes, Redis command statistics and
the Redis slow log, summarised for the report."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import redis

PY_SPY = Path(sys.executable).parent / "py-spy"


class Spy:
    """``py-spy record`` attached to one process until :meth:`stop` (raw collapsed stacks)."""

    def __init__(self, name: str, pid: int, workdir: Path) -> None:
        self.name = name
        self.path = workdir / f"profile-{name}.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        if not PY_SPY.exists():
            return
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", "200", "--format", "raw"]
        argv += ["-o", str(self.path), "--nonblocking"]
        log = (workdir / f"py-spy-{name}.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        """Stop sampling; py-spy writes its file on SIGINT."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def summary(self, top: int = 18) -> dict[str, Any]:
        """Samples, and the functions with the most samples: on the stack (inclusive) and on
        top of it (self), each as a share of the samples."""
        if not self.path.exists():
            return {"samples": 0, "inclusive": [], "self": []}
        incl: Counter[str] = Counter()
        own: Counter[str] = Counter()
        total = 0
        for line in self.path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_short(f) for f in stack.split(";")]
            own[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
        share = max(total, 1)

        def rows(c: Counter[str]) -> list[tuple[str, float]]:
            return [(f, 100 * n / share) for f, n in c.most_common(top)]

        return {"samples": total, "inclusive": rows(incl), "self": rows(own)}


_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """``fn (path/to/mod.py:12)`` -> ``fn (mod.py)`` (lines differ per call site)."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    parts = path.split("/")
    where = "/".join(parts[-2:]) if "site-packages" in path or "dago" in path else parts[-1]
    return f"{m.group('fn')} ({where})"


def top_commands(
    stats: dict[str, dict[str, float]], per: int, top: int = 8
) -> list[dict[str, Any]]:
    """The Redis commands that used the most time, with calls and µs per node execution."""
    rows = []
    for name, s in stats.items():
        rows.append(
            {
                "command": name.removeprefix("cmdstat_"),
                "calls": int(s.get("calls", 0)),
                "usec": int(s.get("usec", 0)),
                "usec_per_call": float(s.get("usec_per_call", 0)),
                "calls_per_node": int(s.get("calls", 0)) / max(per, 1),
                "usec_per_node": int(s.get("usec", 0)) / max(per, 1),
            }
        )
    rows.sort(key=lambda r: -r["usec"])
    return rows[:top]


def slowlog(r: redis.Redis[bytes], n: int = 5) -> list[dict[str, Any]]:
    """The slowest entries of the Redis slow log (threshold 1 ms), then reset it."""
    entries = r.slowlog_get(n)
    r.slowlog_reset()
    out = []
    for e in entries:
        cmd = e.get("command", b"")
        text = cmd.decode(errors="replace") if isinstance(cmd, bytes) else str(cmd)
        out.append({"us": int(e.get("duration", 0)), "command": text[:80]})
    return out
