"""`make bench` at tiny sizes: it runs dago and Celery end to end, stops what it started,
and writes the report, the chart and the raw results. (Figures are not asserted: timing
goals belong to the benchmark itself, bench/REPORT.md.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The benchmark starts its own Redis, dago and Celery processes (~17 s).
pytestmark = [pytest.mark.redis, pytest.mark.process, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runs_at_tiny_sizes_and_writes_the_report(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python")),
        "BENCH_SCALE": "0.02",
        "BENCH_SCALING_WORKERS": "2",  # the running workers: no restart
        "BENCH_CONCURRENCY": "10",
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--out", str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
        for p in sorted((tmp_path / "run").glob("*.log"))
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{logs}"

    report = (tmp_path / "REPORT.md").read_text()
    assert "## Figures" in report
    for row in ("1. sustained node executions", "2. chain of 200", "3. fan-out/fan-in"):
        assert row in report
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = json.loads((tmp_path / "results.json").read_text())
    assert res["w1_dago"]["nodes_per_s"] > 0
    assert res["w1_celery"]["nodes_per_s"] > 0
    assert res["w4_dago_grpc"]["n"] == 20
    assert res["w4_dago_rest"]["n"] == 20
    assert res["w4_dago_run"]["n"] == res["w4_dago_rest_run"]["n"] == 20
    assert res["w6_dago"]["ms_per_node"] > 50  # the model's own 50 ms is in there
    assert res["lua"]["instructions_per_node"] > 10_000  # counted under callgrind
    assert "Redis instructions per node" in report

    # Every process it started is gone (Redis and Envoy name the run directory).
    pids = [int(line.split()[0]) for line in _ps() if str(tmp_path) in line]
    assert pids == [], pids


def _ps() -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[1:]
