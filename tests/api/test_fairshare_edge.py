"""A namespace over its quota (DAGO_NAMESPACES_FILE) is refused with HTTP 429 over REST
through Envoy, the QuotaFailure in the body (the gRPC side: tests/engine/test_fairshare.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import running_edge
from redisfixture import RedisServer

pytestmark = [pytest.mark.edge, pytest.mark.process, pytest.mark.slow]


async def test_a_namespace_over_its_active_runs_gets_429_over_rest(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "namespaces.yaml"
    path.write_text("namespaces:\n  default: {max_active_runs: 1}\n")
    async with running_edge(redis_single.url, key_prefix, DAGO_NAMESPACES_FILE=str(path)) as e:
        slow = {"id": "s", "tool": {"name": "sleep"}, "inputs": {"seconds": 30}}
        body = {"graph": {"nodes": [slow]}, "priority": 5}
        r = await e.http.post("/api/v1/graphs", json=body)
        assert r.status_code == 200, r.text
        gid = r.json()["graph_id"]
        r = await e.http.get(f"/api/v1/graphs/{gid}/status")
        assert r.json()["status"]["priority"] == 5, r.text
        r = await e.http.post("/api/v1/graphs", json=body)
        assert r.status_code == 429, r.text
        refused = r.json()
        assert refused["code"] == 8, refused  # RESOURCE_EXHAUSTED
        (qf,) = [
            d
            for d in refused["details"]
            if d["@type"] == "type.googleapis.com/google.rpc.QuotaFailure"
        ]
        assert qf["violations"][0]["subject"] == "namespace:default"
        assert "max_active_runs" in qf["violations"][0]["description"]
        r = await e.http.post(f"/api/v1/graphs/{gid}/cancel", json={})
        assert r.status_code == 200, r.text
