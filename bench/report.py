"""REPORT.md and chart.png from a run's results (see run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = d
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def _ratio(faster: Any, slower: Any) -> str:
    if not faster or not slower:
        return "—"
    return f"{faster / slower:.1f}×"  # noqa: RUF001


# (label, results path for dago, for Celery, unit, higher is better, target check, target text)
ROWS: list[tuple[str, tuple[str, ...], tuple[str, ...] | None, str, bool, Any, str]] = [
    (
        "1. sustained node executions",
        ("w1_dago", "nodes_per_s"),
        ("w1_celery", "nodes_per_s"),
        "nodes/s",
        True,
        lambda v, r: v >= 15_000 and (r is None or v / r >= 25),
        "≥ 15,000/s and ≥ 25× Celery",  # noqa: RUF001
    ),
    (
        "2. chain of 200, per step",
        ("w2_dago", "ms_per_step"),
        ("w2_celery", "ms_per_step"),
        "ms",
        False,
        lambda v, r: v <= 0.5,
        "≤ 0.5 ms",
    ),
    (
        "3. fan-out/fan-in 1→100→1",
        ("w3_dago", "ms"),
        ("w3_celery", "ms"),
        "ms",
        False,
        lambda v, r: v <= 15.0,
        "≤ 15 ms",
    ),
    (
        "9. map 1→10,000→1 (echo body, max_concurrency 200; Celery: a chord of ≤ 2,000)",
        ("w9_dago", "items_per_s"),
        ("w9_celery", "items_per_s"),
        "items/s",
        True,
        None,
        "",
    ),
    (
        "4. one node, submit→terminal event, gRPC p50",
        ("w4_dago_grpc", "p50_ms"),
        ("w4_celery", "p50_ms"),
        "ms",
        False,
        lambda v, r: v <= 2.0 and (r is None or v <= r),
        "≤ 2 ms, never slower than Celery",
    ),
    (
        "4. … gRPC p99",
        ("w4_dago_grpc", "p99_ms"),
        ("w4_celery", "p99_ms"),
        "ms",
        False,
        lambda v, r: v <= 5.0 and (r is None or v <= r),
        "≤ 5 ms, never slower than Celery",
    ),
    (
        "4. … REST through Envoy p50",
        ("w4_dago_rest", "p50_ms"),
        None,
        "ms",
        False,
        None,
        "",
    ),
    ("4. … REST through Envoy p99", ("w4_dago_rest", "p99_ms"), None, "ms", False, None, ""),
    (
        "4. … RunGraph (one call), gRPC p50",
        ("w4_dago_run", "p50_ms"),
        ("w4_celery", "p50_ms"),
        "ms",
        False,
        lambda v, r: v <= 2.0 and (r is None or v <= r),
        "≤ 2 ms, never slower than Celery",
    ),
    (
        "4. … RunGraph (one call), gRPC p99",
        ("w4_dago_run", "p99_ms"),
        ("w4_celery", "p99_ms"),
        "ms",
        False,
        lambda v, r: v <= 5.0 and (r is None or v <= r),
        "≤ 5 ms, never slower than Celery",
    ),
    ("4. … RunGraph, REST (SSE) p50", ("w4_dago_rest_run", "p50_ms"), None, "ms", False, None, ""),
    ("4. … RunGraph, REST (SSE) p99", ("w4_dago_rest_run", "p99_ms"), None, "ms", False, None, ""),
    (
        "5. WatchGraph events to 1 watcher",
        ("w5_dago", "one_watcher_events_per_s"),
        None,
        "events/s",
        True,
        lambda v, r: v >= 20_000,
        "≥ 20,000/s",
    ),
    (
        "5. … to 1 watcher in batch mode (WatchGraphRequest.batch)",
        ("w5_dago", "one_watcher_batch_events_per_s"),
        None,
        "events/s",
        True,
        lambda v, r: v >= 20_000,
        "≥ 20,000/s",
    ),
    (
        "5. … to many watchers (replay, total)",
        ("w5_dago", "many_watchers_events_per_s"),
        None,
        "events/s",
        True,
        None,
        "",
    ),
    (
        "5. … to many watchers (live graph, total)",
        ("w5_dago", "live_watchers_events_per_s"),
        None,
        "events/s",
        True,
        None,
        "",
    ),
    (
        "6. LLM node, time beyond the model's 50 ms",
        ("w6_dago", "overhead_ms_per_node"),
        None,
        "ms",
        False,
        lambda v, r: v <= 2.0,
        "≤ 2 ms",
    ),
    (
        "6. … the same model call alone (provider + official SDK, no graph)",
        ("w6_dago", "bare_sdk_call_ms"),
        None,
        "ms",
        False,
        None,
        "",
    ),
    (
        "6. … dago's graph around it (node time - call alone)",
        ("w6_dago", "dago_overhead_ms_per_node"),
        None,
        "ms",
        False,
        lambda v, r: v <= 2.0,
        "≤ 2 ms",
    ),
    (
        "Redis CPU per node execution (workload 1)",
        ("w1_dago", "redis_us_per_node"),
        ("w1_celery", "redis_us_per_node"),
        "µs",
        False,
        lambda v, r: v <= 25.0,
        "≤ 25 µs",
    ),
    (
        "Redis instructions per node (`bench/luacost.py` under callgrind, 1→48→1)",
        ("lua", "instructions_per_node"),
        None,
        "instructions",
        False,
        lambda v, r: v <= 80_000,
        "≤ 80,000",
    ),
    (
        "CPU of the processes per node execution (dago: API + workers; Celery: workers)",
        ("w1_dago", "proc_cpu_us_per_node"),
        ("w1_celery", "proc_cpu_us_per_node"),
        "µs",
        False,
        None,
        "",
    ),
]


def write(out: Path, res: dict[str, Any], baseline: dict[str, Any] | None = None) -> None:
    """Write ``out/REPORT.md`` and ``out/chart.png``."""
    chart(out / "chart.png", res)
    (out / "REPORT.md").write_text(markdown(res, baseline))


def markdown(res: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """The report's text."""
    m = res.get("machine", {})
    lines = [
        "# dago vs Celery: benchmark report",
        "",
        "Written by `make bench` (`bench/run.py`); do not edit by hand — the analysis at the "
        "end comes from `bench/ANALYSIS.md`.",
        "",
        f"- run: {res.get('started')}, {_f(res.get('duration_s'), 0)} s, "
        f"BENCH_SCALE={res.get('scale')}",
        f"- machine: {m.get('cpus')} CPUs ({m.get('cpu')}), Python {m.get('python')}, "
        f"Redis {res.get('redis_version')}, kernel {m.get('kernel')}; client, dago, Celery "
        "and Redis all on this one box",
        f"- dago: 1 API process (`python -m dago serve`) + {res.get('workers')} worker "
        "processes (`python -m dago worker`, default settings: 64 slots, batches of 64, "
        "8 shards), one private Redis (no persistence)",
        f"- Celery: {res.get('workers')} worker processes (`celery worker --pool solo`), "
        "Redis broker and result backend on the same private Redis, JSON, prefetch 16",
        "- ratio: how many times faster dago is (throughput: dago/Celery; latency: Celery/dago)",
        "",
        "## Figures",
        "",
    ]
    head = "| workload | dago | Celery | ratio | target | met |"
    sep = "|---|---:|---:|---:|---|---|"
    if baseline:
        head = "| workload | dago before | dago | Celery | ratio | target | met |"
        sep = "|---|---:|---:|---:|---:|---|---|"
    lines += [head, sep]
    for label, dpath, cpath, unit, higher, check, target in ROWS:
        v = _get(res, *dpath)
        c = _get(res, *cpath) if cpath else None
        ratio = _ratio(v, c) if higher else _ratio(c, v)
        met = "—"
        if check is not None and v is not None:
            met = "yes" if check(v, c) else "**no**"
        cells = [label, f"{_f(v, 2)} {unit}" if v is not None else "—"]
        if baseline:
            b = _get(baseline, *dpath)
            cells.insert(1, f"{_f(b, 2)} {unit}" if b is not None else "—")
        cells += [f"{_f(c, 2)} {unit}" if c is not None else "n/a", ratio, target, met]
        lines.append("| " + " | ".join(cells) + " |")
    load = res.get("load_average") or {}
    if load:
        peak = max(max(v) for v in load.values())
        lines += [
            "",
            f"Load average (1 min) around the phases: {min(min(v) for v in load.values()):.1f}"
            f" to {peak:.1f} on {m.get('cpus')} CPUs. Above ~3 other work shared the cores "
            "(results.json has it per phase): wall-clock latencies then measure CPU "
            "starvation as much as dago or Celery, while CPU per node execution stays "
            "comparable between runs.",
        ]
    if res.get("errors"):
        lines += ["", "**Workloads that failed in this run:**", ""]
        lines += [f"- {e}" for e in res["errors"]]
    lines += ["", *_latency(res), *_memory(res), *_scaling(res), *_redis(res), *_profiles(res)]
    analysis = HERE / "ANALYSIS.md"
    if analysis.exists():
        lines += ["", analysis.read_text().strip(), ""]
    return "\n".join(lines) + "\n"


def _latency(res: dict[str, Any]) -> list[str]:
    out = ["## One node end to end (workload 4), ms", ""]
    out += ["| path | n | p50 | p99 | mean | max |", "|---|---:|---:|---:|---:|---:|"]
    for label, key in (
        ("dago, gRPC submit + WatchGraph", "w4_dago_grpc"),
        ("dago, REST through Envoy (POST + SSE)", "w4_dago_rest"),
        ("dago, gRPC RunGraph (one call, batch mode)", "w4_dago_run"),
        ("dago, REST RunGraph through Envoy (one POST, SSE)", "w4_dago_rest_run"),
        ("Celery, delay() + get()", "w4_celery"),
    ):
        s = res.get(key)
        if s:
            out.append(
                f"| {label} | {s['n']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                f"{s['mean_ms']:.2f} | {s['max_ms']:.2f} |"
            )
    return [*out, ""]


def _memory(res: dict[str, Any]) -> list[str]:
    out = ["## Memory (workload 7)", ""]
    d, c = res.get("w7_dago"), res.get("w7_celery")
    if d:
        out.append(
            f"dago, {d['graphs']} one-node graphs (a 0.5 s sleep each) submitted at once, "
            f"done in {d['seconds']:.1f} s; Redis memory grew {d['redis_used_mb_delta']:.1f} MB."
        )
        out += ["", "| process | RSS before, MB | peak RSS, MB |", "|---|---:|---:|"]
        for n, v in d["rss_peak_mb"].items():
            out.append(f"| {n} | {d['rss_before_mb'][n]:.1f} | {v:.1f} |")
    if c:
        out += [
            "",
            f"Celery, {c['tasks']} tasks (a 10 ms sleep each: a solo worker runs one at a "
            f"time) submitted at once, done in {c['seconds']:.1f} s.",
            "",
            "| process | RSS before, MB | peak RSS, MB |",
            "|---|---:|---:|",
        ]
        for n, v in c["rss_peak_mb"].items():
            out.append(f"| {n} | {c['rss_before_mb'][n]:.1f} | {v:.1f} |")
    return [*out, ""]


def _scaling(res: dict[str, Any]) -> list[str]:
    d, c = res.get("w8_dago") or [], res.get("w8_celery") or []
    if not d:
        return []
    out = [
        "## Scaling (workload 8)",
        "",
        "Figure 1 shape: C concurrent graphs of 1→8→1; figure 3: C concurrent 1→100→1. "
        "Node executions per second, whole batch (submit of the first to end of the last). "
        "Cells over the node budget of this scale are skipped (—).",
        "",
        "| fig | graphs | workers | nodes | dago nodes/s | Celery nodes/s | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    cel = {(r["fig"], r["graphs"], r["workers"]): r for r in c}
    for r in d:
        k = (r["fig"], r["graphs"], r["workers"])
        cr = cel.get(k, {})
        dv, cv = r.get("nodes_per_s"), cr.get("nodes_per_s")
        out.append(
            f"| {r['fig']} | {r['graphs']} | {r['workers']} | {r['nodes']:,} | {_f(dv, 0)} | "
            f"{_f(cv, 0)} | {_ratio(dv, cv)} |"
        )
    return [*out, ""]


def _redis(res: dict[str, Any]) -> list[str]:
    out = ["## Redis during workload 1 (INFO commandstats, per node execution)", ""]
    for who, key in (("dago", "w1_dago"), ("Celery", "w1_celery")):
        rows = _get(res, key, "commandstats")
        if not rows:
            continue
        out += [f"{who}:", "", "| command | calls/node | µs/call | µs/node |"]
        out.append("|---|---:|---:|---:|")
        for r in rows:
            out.append(
                f"| {r['command']} | {r['calls_per_node']:.2f} | {r['usec_per_call']:.1f} | "
                f"{r['usec_per_node']:.2f} |"
            )
        out.append("")
    slow = _get(res, "w1_dago", "slowlog")
    if slow:
        out += ["Slowest commands (SLOWLOG, ≥ 1 ms):", ""]
        out += [f"- {e['us']} µs: `{e['command']}`" for e in slow]
        out.append("")
    return out


def _profiles(res: dict[str, Any]) -> list[str]:
    profs = res.get("profiles") or {}
    if not profs:
        return []
    out = ["## Profiles during workload 1 (py-spy, CPU samples only)", ""]
    for name, p in profs.items():
        if not p.get("samples"):
            continue
        out += [
            f"### {name}: {p['samples']} samples",
            "",
            "| on CPU (self) | % | on the stack (inclusive) | % |",
            "|---|---:|---|---:|",
        ]
        for (sf, sv), (inf, iv) in zip(p["self"], p["inclusive"], strict=False):
            out.append(f"| `{sf}` | {sv:.1f} | `{inf}` | {iv:.1f} |")
        out.append("")
    return out


def chart(path: Path, res: dict[str, Any]) -> None:
    """A PNG with the headline figures and the scaling curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    bars = [
        (
            "1. node executions/s\n(higher is better)",
            ("w1_dago", "nodes_per_s"),
            ("w1_celery", "nodes_per_s"),
        ),
        ("2. chain step, ms", ("w2_dago", "ms_per_step"), ("w2_celery", "ms_per_step")),
        ("3. 1→100→1, ms", ("w3_dago", "ms"), ("w3_celery", "ms")),
        ("4. one node p50 / p99, ms", ("w4_dago_grpc", "p50_ms"), ("w4_celery", "p50_ms")),
    ]
    for ax, (title, dp, cp) in zip(axes.flat, bars, strict=False):
        dv, cv = _get(res, *dp) or 0, _get(res, *cp) or 0
        labels, vals, colors = ["dago", "Celery"], [dv, cv], ["#2b7bba", "#c44e52"]
        if dp[0] == "w4_dago_grpc":
            labels = ["dago p50", "dago p99", "Celery p50", "Celery p99"]
            vals = [
                dv,
                _get(res, "w4_dago_grpc", "p99_ms") or 0,
                cv,
                _get(res, "w4_celery", "p99_ms") or 0,
            ]
            colors = ["#2b7bba", "#2b7bba", "#c44e52", "#c44e52"]
        ax.bar(labels, vals, color=colors)
        for i, v in enumerate(vals):
            ax.annotate(f"{v:,.1f}", (i, v), ha="center", va="bottom", fontsize=9)
        ax.set_title(title)
    ax = axes.flat[4]
    for who, key, style in (("dago", "w8_dago", "-o"), ("Celery", "w8_celery", "--s")):
        rows = [r for r in res.get(key) or [] if r["fig"] == "w1" and "nodes_per_s" in r]
        for w in sorted({r["workers"] for r in rows}):
            pts = sorted((r["graphs"], r["nodes_per_s"]) for r in rows if r["workers"] == w)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{who}, {w} workers")
    ax.set_xscale("log")
    ax.set_title("8. scaling: 1→8→1 graphs at once\nnode executions/s")
    ax.set_xlabel("concurrent graphs")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes.flat[5]
    names = ["1 watcher", f"{_get(res, 'w5_dago', 'watchers') or 0} watchers\n(replay, total)"]
    vals = [
        _get(res, "w5_dago", "one_watcher_events_per_s") or 0,
        _get(res, "w5_dago", "many_watchers_events_per_s") or 0,
    ]
    ax.bar(names, vals, color="#2b7bba")
    for i, v in enumerate(vals):
        ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=9)
    llm = _get(res, "w6_dago", "overhead_ms_per_node")
    ax.set_title(
        "5. WatchGraph events/s (dago)\n6. LLM node overhead: "
        + (f"{llm:.1f} ms beyond the model's 50 ms" if llm is not None else "—"),
        fontsize=10,
    )
    fig.suptitle(f"dago vs Celery — {res.get('started')}, BENCH_SCALE={res.get('scale')}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    """``python bench/report.py [DIR]``: write REPORT.md and chart.png again from DIR's
    results.json (default: bench/), e.g. after editing ANALYSIS.md, without a new run."""
    import json
    import sys

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    res = json.loads((out / "results.json").read_text())
    base = HERE / "baseline.json"
    write(out, res, json.loads(base.read_text()) if base.exists() else None)


if __name__ == "__main__":
    main()
