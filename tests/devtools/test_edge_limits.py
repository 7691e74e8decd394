"""The edge's limits as rendered (dago.devtools.edge): the DAGO_EDGE_* settings reach the
Envoy configuration of ``dago dev``, and every limit is where Envoy reads it. Pure Python:
what Envoy does with them is tested in tests/reliability/test_hostile_edge.py."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import yaml

from dago.config import ConfigError, load
from dago.devtools import edge


class _Loader(yaml.SafeLoader):
    """Accepts an anchor defined again (each block of the template is dumped on its own, so
    anchor names repeat in the render; YAML 1.2 and Envoy allow it)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if not self.check_event(yaml.AliasEvent) and event.anchor is not None:
            self.anchors.pop(event.anchor, None)
        return super().compose_node(parent, index)


def rendered(cfg: edge.EdgeConfig) -> dict[str, Any]:
    out: dict[str, Any] = yaml.load(edge.render(cfg), Loader=_Loader)
    return out


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    out: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return out


def test_settings_reach_the_edge_of_dago_dev(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    settings = load(
        {
            "DAGO_EDGE_MAX_CONNECTIONS": "1234",
            "DAGO_EDGE_HEADERS_TIMEOUT_S": "4",
            "DAGO_EDGE_IDLE_TIMEOUT_S": "45",
            "DAGO_EDGE_WATCH_IDLE_TIMEOUT_S": "20",
            "DAGO_EDGE_BUFFER_BYTES": "65536",
            "DAGO_EDGE_MAX_HEAP_BYTES": str(2 << 30),
            "DAGO_EDGE_CLIENT_RPS": "50",
            "DAGO_EDGE_TRUSTED_HOPS": "1",
        }
    )
    config = rendered(edge.from_env(settings))
    om = config["overload_manager"]
    monitors = {m["name"]: m["typed_config"] for m in om["resource_monitors"]}
    conns = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert conns["max_active_downstream_connections"] == 1234
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 2 << 30
    actions = {a["name"] for a in om["actions"]}
    assert {
        "envoy.overload_actions.reduce_timeouts",
        "envoy.overload_actions.stop_accepting_requests",
        "envoy.overload_actions.reset_high_memory_stream",
    } <= actions
    assert [p["name"] for p in om["loadshed_points"]] == [
        "envoy.load_shed_points.tcp_listener_accept"
    ]

    listener = config["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 65536
    assert listener["listener_filters_timeout"] == "4s"
    assert listener["continue_on_listener_filters_timeout"] is False
    assert listener["socket_options"][0]["int_value"] == 16 * 1024  # TCP_NOTSENT_LOWAT
    h = hcm(config)
    assert h["request_headers_timeout"] == "4s"
    assert h["common_http_protocol_options"]["idle_timeout"] == "45s"
    assert h["common_http_protocol_options"]["max_connection_duration"] == "3600s"
    assert h["http2_protocol_options"]["max_concurrent_streams"] == 1000
    assert h["use_remote_address"] is True and h["xff_num_trusted_hops"] == 1
    watch_routes = [
        r for r in h["route_config"]["virtual_hosts"][0]["routes"] if "events" in str(r["match"])
    ]
    grpc_watch = [
        r
        for r in h["route_config"]["virtual_hosts"][0]["routes"]
        if r["match"].get("path") == "/dago.v1.OrchestratorService/WatchGraph"
    ]
    assert len(watch_routes) == 3 and len(grpc_watch) == 1
    assert {r["route"]["idle_timeout"] for r in watch_routes + grpc_watch} == {"20s"}
    limit = next(f for f in h["http_filters"] if f["name"] == "envoy.filters.http.local_ratelimit")
    typed = limit["typed_config"]
    assert typed["rate_limits"] == [{"actions": [{"remote_address": {}}]}]
    assert typed["descriptors"][0]["entries"] == [{"key": "remote_address", "value": ""}]
    assert typed["descriptors"][0]["token_bucket"]["tokens_per_fill"] == 50

    api = next(c for c in config["static_resources"]["clusters"] if c["name"] == "dago")
    assert api["per_connection_buffer_limit_bytes"] == 65536
    options = api["typed_extension_protocol_options"]
    h2 = next(iter(options.values()))["explicit_http_config"]["http2_protocol_options"]
    assert h2["initial_stream_window_size"] == 65536 and h2["max_concurrent_streams"] == 100
    assert api["circuit_breakers"]["thresholds"][0]["max_requests"] >= 100_000


def test_defaults_and_what_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # Heartbeats every 20 s: the watch idle timeout stays above three of them.
    monkeypatch.setattr(sys, "platform", "darwin")
    cfg = edge.from_env(load({"DAGO_HEARTBEAT_MS": "20000"}))
    assert cfg.watch_idle_timeout_s == 60
    assert cfg.max_connections == 10_000 and cfg.buffer_bytes == 32 * 1024
    config = rendered(cfg)
    listener = config["static_resources"]["listeners"][0]
    assert "socket_options" not in listener  # a Linux option: not elsewhere
    names = [f["name"] for f in hcm(config)["http_filters"]]
    assert "envoy.filters.http.local_ratelimit" not in names  # DAGO_EDGE_CLIENT_RPS=0
    # Fractions of a second stay fractions.
    half = rendered(edge.EdgeConfig(first_byte_timeout_s=0.5, idle_timeout_s=90))
    assert half["static_resources"]["listeners"][0]["listener_filters_timeout"] == "0.5s"
    assert hcm(half)["common_http_protocol_options"]["idle_timeout"] == "90s"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DAGO_EDGE_MAX_CONNECTIONS", "0"),
        ("DAGO_EDGE_BUFFER_BYTES", "1024"),
        ("DAGO_EDGE_MAX_HEAP_BYTES", "1000"),
        ("DAGO_EDGE_CLIENT_RPS", "-1"),
        ("DAGO_EDGE_HEADERS_TIMEOUT_S", "0"),
        ("DAGO_WATCH_MAX_LAG_S", "0"),
    ],
)
def test_unusable_limits_are_refused(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=var):
        load({var: value})
