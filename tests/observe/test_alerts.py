"""The Grafana dashboard and the Prometheus alerting rules shipped in deploy/.

- Every metric named by a query of the dashboard or an alert's expression is documented in
  docs/metrics.md (or is the ``_bucket``/``_sum``/``_count`` series of a documented
  histogram).
- ``promtool check rules`` accepts the rules, and ``promtool test rules`` runs the unit
  tests of tests/observe/dago-rules.test.yml, which fire every alert (and keep it silent
  below its threshold or before its ``for``).
- A real Prometheus scraping a running stack (API and worker processes) evaluates every
  rule and every dashboard query without error, and fires ``DagoNoWorkers`` once the only
  worker is stopped.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness import ROOT, RunningStack, eventually, free_port, port_open, start_api_quickly
from redisfixture import RedisServer

RULES = ROOT / "deploy" / "prometheus" / "dago-rules.yml"
RULE_TESTS = Path(__file__).parent / "dago-rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "dago.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")

# --------------------------------------------------------------------------- PromQL names

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# An identifier not inside a number (1e3) or a duration (5m), and what follows it.
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\(?)")
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: its identifiers once strings, label
    matchers, ranges, Grafana variables and grouping clauses are taken out, less function
    names (followed by a parenthesis) and keywords."""
    for pattern in (_STRINGS, _MATCHERS, _RANGES, _VARIABLES, _GROUPING):
        expr = pattern.sub(" ", expr)
    return {
        name for name, call in _IDENT.findall(expr) if not call and name.lower() not in _KEYWORDS
    }


def documented_metrics() -> set[str]:
    """Every series name docs/metrics.md documents (its tables' first column), with the
    ``_bucket``, ``_sum`` and ``_count`` series of its histograms."""
    names: set[str] = set()
    for m in re.finditer(r"^\| `([a-z_:]+)` \| (\w+) \|", METRICS_DOC.read_text(), re.MULTILINE):
        names.add(m.group(1))
        if m.group(2) == "histogram":
            names.update(m.group(1) + suffix for suffix in HISTOGRAM_SERIES)
    return names


def rules() -> list[dict[str, Any]]:
    """The rules of the shipped file, all groups together."""
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard (rows' nested panels included)."""
    found: list[dict[str, Any]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[str]:
    """The PromQL of every target of every panel."""
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, kind) (rate(dago_node_duration_seconds_bucket"
        '{kind=~"llm|http", x="a b(c)"}[$__rate_interval]))) * 1e3 > bool on (job) '
        "group_left (shard) max without (instance) (dago_queue_depth offset 5m)"
    )
    assert metric_names(expr) == {"dago_node_duration_seconds_bucket", "dago_queue_depth"}
    assert metric_names("max(dago_workers_alive) < 1") == {"dago_workers_alive"}
    assert "dago_graph_duration_seconds_bucket" in documented_metrics()
    assert "dago_queue_depth_bucket" not in documented_metrics()


def test_every_metric_of_the_dashboard_and_the_rules_is_documented() -> None:
    known = documented_metrics()
    exprs = dashboard_queries() + [r["expr"] for r in rules()]
    used = {name: expr for expr in exprs for name in metric_names(expr)}
    assert used, "no metric found in the dashboard or the rules"
    unknown = {name: expr for name, expr in used.items() if name not in known}
    assert not unknown, f"not in docs/metrics.md: {unknown}"


def test_dashboard_shows_what_the_operator_needs() -> None:
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    queries = " ".join(dashboard_queries())
    # Runs and nodes by state, throughput, latency percentiles, queue depth and lag per
    # shard, dead letters, LLM tokens and cost by model, watchers, worker slots.
    for needed in (
        "dago_graphs_active", "dago_graphs_finished_total", "dago_node_executions_total",
        "histogram_quantile(0.99", "by (shard) (dago_queue_depth)",
        "by (shard) (dago_queue_lag_seconds)", "dago_dead_letters",
        "by (model, type) (rate(dago_llm_tokens_total", "by (model) (rate(dago_llm_cost_usd_total",
        "dago_rpc_streams_open", "dago_worker_slots_busy", "dago_workers_alive",
    ):  # fmt: skip
        assert needed in queries, needed
    # Every query uses the dashboard's datasource variable, so it works in any Grafana.
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= (
        variables[0].items()
    )
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    alerts = {r["alert"] for r in rules()}
    assert alerts == {
        "DagoNoWorkers", "DagoWorkWaiting", "DagoDeadLetters", "DagoGraphFailureRate",
        "DagoRPCErrorRate", "DagoRedisUnreachable", "DagoLLMCostRate", "DagoArchiveFailing",
    }  # fmt: skip
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    assert fired == alerts and silent == alerts
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# --------------------------------------------------------------------------- promtool


@pytest.mark.process
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@pytest.mark.process
def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = subprocess.run(
        ["promtool", "test", "rules", str(RULE_TESTS)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# --------------------------------------------------------------------------- real Prometheus


def _rules_with_short_for(path: Path, alert: str, hold: str) -> None:
    """The shipped rules, with ``alert``'s ``for`` shortened to ``hold`` (its expression and
    everything else as shipped), written to ``path``."""
    doc = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert]
    rule["for"] = hold
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _start_prometheus(config: Path, data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def running_prometheus() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list the test appends its Prometheus to; whatever is in it is killed at teardown."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.mark.process
@pytest.mark.slow  # ~14 s: a stack, a Prometheus, the alert's 2 s `for`
async def test_real_prometheus_fires_no_workers_when_the_workers_stop(
    redis_single: RedisServer,
    key_prefix: str,
    tmp_path: Path,
    running_prometheus: list[subprocess.Popen[bytes]],
) -> None:
    api_port, worker_port, prom_port = free_port(), free_port(), free_port()
    env = {
        "DAGO_METRICS_PORT": str(api_port),
        "DAGO_WORKER_HEARTBEAT_MS": "200",
        "DAGO_WORKER_TTL_MS": "1000",
    }
    rules_file = tmp_path / "rules.yml"
    _rules_with_short_for(rules_file, "DagoNoWorkers", "2s")
    config = tmp_path / "prometheus.yml"
    jobs = {"dago-api": api_port, "dago-worker": worker_port}
    scrape = [
        {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
        for job, port in jobs.items()
    ]
    settings = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config.write_text(
        yaml.safe_dump(
            {"global": settings, "rule_files": [str(rules_file)], "scrape_configs": scrape}
        )
    )
    log = tmp_path / "prometheus.log"
    base = f"http://127.0.0.1:{prom_port}/api/v1"

    async with (
        RunningStack(redis_single.url, key_prefix, **env) as stack,
        httpx.AsyncClient(timeout=5) as http,
    ):
        stack.start("w1", "worker", DAGO_WORKER_METRICS_PORT=str(worker_port))
        await start_api_quickly(stack)
        running_prometheus.append(_start_prometheus(config, tmp_path / "data", prom_port, log))
        try:
            await port_open(prom_port, 30)

            # The port opens before the server is ready: it answers 503 in plain text
            # until it has loaded its storage and rules.
            async def ready() -> bool:
                r = await http.get(f"http://127.0.0.1:{prom_port}/-/ready")
                return r.status_code == 200

            await eventually(ready, 30, 0.1)

            async def query(expr: str) -> list[dict[str, Any]]:
                r = await http.get(f"{base}/query", params={"query": expr})
                body = r.json()
                assert body["status"] == "success", (expr, body)
                return list(body["data"]["result"])

            async def one_worker_seen() -> bool:
                got = await query("max(dago_workers_alive)")
                return bool(got) and float(got[0]["value"][1]) == 1

            await eventually(one_worker_seen, 30, 0.2)

            async def alert_states() -> dict[str, str]:
                body = (await http.get(f"{base}/alerts")).json()
                return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}

            # Prometheus loaded every rule and evaluates each without error.
            async def rules_healthy() -> bool:
                groups = (await http.get(f"{base}/rules")).json()["data"]["groups"]
                health = {r["name"]: r["health"] for g in groups for r in g["rules"]}
                assert set(health) == {r["alert"] for r in rules()}
                assert "err" not in health.values(), groups
                return set(health.values()) == {"ok"}

            await eventually(rules_healthy, 10, 0.2)
            # Evaluated with a worker alive: not pending, not firing.
            assert "DagoNoWorkers" not in await alert_states()
            # Every dashboard query is valid PromQL for this Prometheus.
            for expr in dashboard_queries():
                await query(expr.replace("$__rate_interval", "1m"))

            stack.signal("w1", signal.SIGTERM)

            async def firing() -> bool:
                return (await alert_states()).get("DagoNoWorkers") == "firing"

            await eventually(firing, 30, 0.2)  # it deregisters on SIGTERM; scrapes 1 s, `for` 2 s
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprometheus log:\n{log.read_text()[-3000:]}") from exc
