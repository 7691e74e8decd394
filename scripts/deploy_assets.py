#!/usr/bin/env python3
"""Render the Envoy configurations of the deployments with dago's own renderer.

The compose stack and the Helm chart run the official Envoy image with a configuration
rendered from ``envoy/envoy.yaml.in`` by :mod:`dago.devtools.edge` (the same code as ``dago dev``),
so they never drift from it by hand:

- ``deploy/envoy/envoy.yaml``: upstream ``api:50051`` (the compose service), descriptor
  ``/etc/envoy/dago.binpb`` (mounted from ``gen/dago.binpb``), CORS for localhost.
- ``helm/dago/files/envoy.yaml`` and ``helm/dago/files/dago.binpb`` (the chart's Envoy
  ConfigMap): the upstream host and the CORS origins are placeholders the chart fills in
  (``__DAGO_API_HOST__``: the API's headless Service, so Envoy balances gRPC over every
  API pod; ``__DAGO_CORS_ORIGINS__``: the origin alternatives of the CORS regex;
  ``__DAGO_METRICS_PORT__``: the API's metrics port, behind Envoy's ``/metrics``), and so
  are the edge's limits (``__DAGO_EDGE_*__``, from ``envoy.limits``: rendered with sentinel
  values, each replaced where it must appear, as many times as it must).

It also copies the monitoring assets into the chart, whose one source is ``deploy/``: the
alerting rules ``deploy/prometheus/dago-rules.yml`` (``helm/dago/files/dago-rules.yml``,
the PrometheusRule of ``prometheusRule.enabled``) and the Grafana dashboard
``deploy/grafana/dashboards/dago.json`` (``helm/dago/files/dago-dashboard.json``, the
ConfigMap of ``grafanaDashboard.enabled``).

``make helm-assets`` writes them; ``--check`` (tests/devtools/test_deploy.py) fails when the
committed files differ from what the renderer makes now.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "service"))

from dago.devtools import edge  # noqa: E402 - after the path set-up above

API_HOST_PLACEHOLDER = "__DAGO_API_HOST__"
CORS_PLACEHOLDER = "__DAGO_CORS_ORIGINS__"
METRICS_PORT_PLACEHOLDER = "__DAGO_METRICS_PORT__"
CONTAINER_DESCRIPTOR = "/etc/envoy/dago.binpb"
# The monitoring assets of deploy/ the chart ships a copy of.
RULES = "deploy/prometheus/dago-rules.yml"
DASHBOARD = "deploy/grafana/dashboards/dago.json"
# The OpenAPI document Envoy serves on /api/v1/openapi.json (gen/openapi.json).
CONTAINER_OPENAPI = "/etc/envoy/openapi.json"


# The edge's limits in the chart: (EdgeConfig field, sentinel, rendered text -> placeholder,
# occurrences). The chart always has the per-client rate limit (clientRps 0: a limit no
# client reaches).
_LIMITS: tuple[tuple[str, int, tuple[tuple[str, str, int], ...]], ...] = (
    ("max_connections", 987601, (("987601", "__DAGO_EDGE_MAX_CONNECTIONS__", 1),)),
    ("max_heap_bytes", 987602, (("987602", "__DAGO_EDGE_MAX_HEAP_BYTES__", 1),)),
    ("headers_timeout_s", 987603, (("987603s", "__DAGO_EDGE_HEADERS_TIMEOUT__", 2),)),
    ("first_byte_timeout_s", 987603, ()),
    ("idle_timeout_s", 987604, (("987604s", "__DAGO_EDGE_IDLE_TIMEOUT__", 1),)),
    ("watch_idle_timeout_s", 987605, (("987605s", "__DAGO_EDGE_WATCH_IDLE_TIMEOUT__", 8),)),
    ("buffer_bytes", 987606, (("987606", "__DAGO_EDGE_BUFFER_BYTES__", 2),)),
    (
        "client_rps",
        987607,
        (("1975214", "__DAGO_EDGE_CLIENT_BURST__", 1), ("987607", "__DAGO_EDGE_CLIENT_RPS__", 1)),
    ),
    ("trusted_hops", 987608, (("987608", "__DAGO_EDGE_TRUSTED_HOPS__", 1),)),
)


def _chart_limits(text: str) -> str:
    """The chart's render with the sentinels of _LIMITS replaced by their placeholders."""
    for _, _, swaps in _LIMITS:
        for sentinel, placeholder, count in swaps:
            found = len(re.findall(rf"(?<![0-9]){sentinel}(?![0-9])", text))
            if found != count:
                raise SystemExit(
                    f"expected {count} x {sentinel} in the chart's render, not {found}"
                )
            text = re.sub(rf"(?<![0-9]){sentinel}(?![0-9])", placeholder, text)
    return text


def assets() -> dict[Path, bytes]:
    """Every generated file (path relative to the repository) and its content."""
    chart = edge.EdgeConfig(
        listen_host="0.0.0.0",
        listen_port=8080,
        dago_host=API_HOST_PLACEHOLDER,
        dago_port=50051,
        metrics_port=9090,
        descriptor=CONTAINER_DESCRIPTOR,
        openapi=CONTAINER_OPENAPI,
        cors_origins=(CORS_PLACEHOLDER,),
        **{field: sentinel for field, sentinel, _ in _LIMITS},
    )
    compose = edge.EdgeConfig(
        listen_host="0.0.0.0",
        listen_port=8080,
        dago_host="api",
        dago_port=50051,
        metrics_port=9090,
        descriptor=CONTAINER_DESCRIPTOR,
        openapi=CONTAINER_OPENAPI,
    )
    chart_text = edge.render(chart)
    metrics_at = f"port_value: {chart.metrics_port} }}"
    if chart_text.count(metrics_at) != 1:
        raise SystemExit(f"expected one `{metrics_at}` (the metrics cluster) in the render")
    chart_text = chart_text.replace(metrics_at, f"port_value: {METRICS_PORT_PLACEHOLDER} }}")
    chart_text = _chart_limits(chart_text)
    header = "# GENERATED by `make helm-assets` (scripts/deploy_assets.py) from {}: do not edit.\n"
    return {
        Path("helm/dago/files/envoy.yaml"): (
            header.format("envoy/envoy.yaml.in") + chart_text
        ).encode(),
        Path("helm/dago/files/dago.binpb"): (ROOT / "gen" / "dago.binpb").read_bytes(),
        Path("helm/dago/files/dago-rules.yml"): (
            f"# GENERATED by `make helm-assets` (scripts/deploy_assets.py): a copy of {RULES}.\n"
            "# Edit that file, not this one.\n"
        ).encode()
        + (ROOT / RULES).read_bytes(),
        Path("helm/dago/files/dago-dashboard.json"): (ROOT / DASHBOARD).read_bytes(),
        Path("helm/dago/files/openapi.json"): (ROOT / "gen" / "openapi.json").read_bytes(),
        Path("deploy/envoy/envoy.yaml"): (
            header.format("envoy/envoy.yaml.in") + edge.render(compose)
        ).encode(),
    }


def main(argv: list[str] | None = None) -> int:
    """Write the assets, or with ``--check`` report the stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    args = parser.parse_args(argv)
    stale = []
    for rel, content in assets().items():
        path = ROOT / rel
        current = path.read_bytes() if path.exists() else None
        if current == content:
            continue
        stale.append(str(rel))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
            print(f"wrote {rel}")
    if args.check and stale:
        print(
            f"out of date: {', '.join(stale)}; run `make helm-assets` and commit them",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
