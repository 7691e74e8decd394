"""Deployment artefacts, checked without a container engine or a cluster.

- The Dockerfile: hadolint, its shape (slim base, non-root user, no compilers in the
  final stage), and its commands run for real: the wheel the builder stage makes is
  installed into a fresh virtualenv, and the ENTRYPOINT/CMD and HEALTHCHECK commands start
  ``serve`` and ``worker`` from it and pass their health checks and a graph.
- The Helm chart: ``helm lint --strict`` and ``helm template`` for every values file in
  helm/dago/ci/, the rendered manifests parsed and checked (probes, security contexts,
  resources, selectors, ports, Secret handling, HPA/PDB, Ingress TLS), the Envoy
  configuration of its ConfigMap validated by ``envoy --mode validate``.
- The compose file (schema and content, its Envoy configuration validated), the
  workflows (GitHub's schema; the make targets and files they use exist), and the
  generated assets (Envoy configs, the copies of the alerting rules and the dashboard, chart
  README table) being up to date; the optional PrometheusRule and dashboard ConfigMap.

Helm comes from scripts/install_helm.py (the pinned npm package, cached in .tools/).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml

from dago.api.server import LIVENESS
from dago.config import Settings, parse_namespaces
from dago.devtools import edge
from dago.store.keys import WORK_GROUP, ShardKeys
from harness import Client, RunningStack, echo, eventually, free_port, request
from harness import edge as graph_edge
from redisfixture import RedisServer

# All but two tests run helm, hadolint, envoy, pip or the dago command.
pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dago"
VALUES_FILES = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
KEDA_CRDS = Path(__file__).resolve().parent / "data" / "keda"
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent
NAMESPACE = "dago-test"
RELEASE = "rel"


class EnvoyLoader(yaml.SafeLoader):
    """PyYAML loader that accepts a redefined anchor (YAML 1.2 allows it, and Envoy's parser
    reads it): dago.devtools.edge dumps each block of the template on its own, so anchor names
    repeat in the rendered configuration."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Forget an anchor about to be defined again, then compose as usual."""
        event = self.peek_event()
        if not self.check_event(yaml.AliasEvent) and event.anchor is not None:
            self.anchors.pop(event.anchor, None)
        return super().compose_node(parent, index)


def load_envoy(text: str) -> Any:
    """Parse an Envoy configuration."""
    return yaml.load(text, Loader=EnvoyLoader)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), capturing text output."""
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300, **kw)


# --------------------------------------------------------------------------- helm


@pytest.fixture(scope="module")
def helm() -> str:
    """The pinned helm binary (installed into .tools/ on first use)."""
    done = run([sys.executable, str(ROOT / "scripts" / "install_helm.py"), "--quiet"])
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip().splitlines()[-1]
    version = run([path, "version", "--short"])
    assert version.returncode == 0 and version.stdout.startswith("v4."), version
    return path


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    """values file -> the manifests ``helm template`` renders with it."""
    return {name: template(helm, values=name) for name in VALUES_FILES}


def template(
    helm: str, *sets: str, values: str | None = None, namespace: str | None = NAMESPACE
) -> list[dict[str, Any]]:
    """The manifests ``helm template`` renders with ``--set`` of each of ``sets`` (and
    ``-f ci/<values>``, ``-n <namespace>`` when given); fails the test if helm fails."""
    cmd = [helm, "template", RELEASE, str(CHART)]
    if namespace is not None:
        cmd += ["-n", namespace]
    if values is not None:
        cmd += ["-f", str(CHART / "ci" / values)]
    for s in sets:
        cmd += ["--set", s]
    done = run(cmd)
    assert done.returncode == 0, f"{' '.join(cmd[1:])}:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The manifests of one kind."""
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The manifest of ``kind`` named ``name``."""
    found = [d for d in kinds(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {[d['metadata']['name'] for d in kinds(docs, kind)]}"
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deployments and StatefulSets."""
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """A matchLabels selector selects these labels."""
    return all(labels.get(k) == v for k, v in selector.items())


def test_values_files_cover_the_required_setups() -> None:
    assert VALUES_FILES == [
        "default-values.yaml",
        "external-redis-values.yaml",
        "ha-values.yaml",
        "history-values.yaml",
        "ingress-tls-values.yaml",
        "keda-values.yaml",
    ]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_helm_lint_strict(helm: str, values: str) -> None:
    done = run([helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / values)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", VALUES_FILES)
def test_api_and_worker_deployments_are_hardened(
    rendered: dict[str, list[dict[str, Any]]], values: str
) -> None:
    docs = rendered[values]
    api = one(docs, "Deployment", f"{RELEASE}-dago-api")
    worker = one(docs, "Deployment", f"{RELEASE}-dago-worker")
    for dep, role in ((api, "serve"), (worker, "worker")):
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [role]
        assert container["image"] == "dago:0.1.0"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert probe in container, f"{role}: no {probe}"
        assert container["resources"]["requests"]["cpu"]
        assert container["resources"]["requests"]["memory"]
        assert container["resources"]["limits"]["memory"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        # A read-only root filesystem needs a writable /tmp.
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert pod["automountServiceAccountToken"] is False
    api_c = api["spec"]["template"]["spec"]["containers"][0]
    grpc_port = next(p["containerPort"] for p in api_c["ports"] if p["name"] == "grpc")
    # Native gRPC probes: readiness on the server's status, liveness and startup on the
    # health service that stays SERVING while Redis or the workers are down.
    assert api_c["readinessProbe"]["grpc"] == {"port": grpc_port}
    for probe in ("livenessProbe", "startupProbe"):
        assert api_c[probe]["grpc"] == {"port": grpc_port, "service": LIVENESS}
    worker_c = worker["spec"]["template"]["spec"]["containers"][0]
    assert worker_c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    worker_env = {e["name"]: e for e in worker_c["env"]}
    metrics_port = next(p["containerPort"] for p in worker_c["ports"] if p["name"] == "metrics")
    assert worker_env["DAGO_WORKER_METRICS_PORT"]["value"] == str(metrics_port)
    # The pod outlives the worker's drain on SIGTERM.
    drain = float(worker_env["DAGO_DRAIN_TIMEOUT_S"]["value"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


@pytest.mark.parametrize("values", VALUES_FILES)
def test_every_container_runs_restricted(
    rendered: dict[str, list[dict[str, Any]]], values: str
) -> None:
    for w in workloads(rendered[values]):
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert (sc["allowPrivilegeEscalation"], sc["readOnlyRootFilesystem"]) == (False, True)
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"], c["name"]
            assert "readinessProbe" in c and "livenessProbe" in c, c["name"]


@pytest.mark.parametrize("values", VALUES_FILES)
def test_selectors_match_pod_labels_and_services_target_ports(
    rendered: dict[str, list[dict[str, Any]]], values: str
) -> None:
    docs = rendered[values]
    pods = []
    for w in workloads(docs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert matches(w["spec"]["selector"]["matchLabels"], labels), w["metadata"]["name"]
        ports = {
            p["name"]: p["containerPort"]
            for c in w["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        pods.append((labels, ports, w))
    # Workload selectors never overlap: each Deployment owns only its pods.
    for labels, _, w in pods:
        owners = [o for _, _, o in pods if matches(o["spec"]["selector"]["matchLabels"], labels)]
        assert owners == [w]
    for svc in kinds(docs, "Service"):
        selected = [(lab, p) for lab, p, _ in pods if matches(svc["spec"]["selector"], lab)]
        assert selected, f"Service {svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            for _, container_ports in selected:
                if isinstance(target, str):
                    assert target in container_ports, (svc["metadata"]["name"], target)
                else:
                    assert target in container_ports.values(), (svc["metadata"]["name"], target)
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in kinds(docs, kind):
            sel = (
                d["spec"]["selector"] if kind == "PodDisruptionBudget" else d["spec"]["podSelector"]
            )["matchLabels"]
            assert any(matches(sel, lab) for lab, _, _ in pods), f"{kind} {d['metadata']['name']}"
    for hpa in kinds(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        dep = one(docs, ref["kind"], ref["name"])
        assert "replicas" not in dep["spec"], "the HPA owns the replica count"


def _validate_envoy(config: str, descriptor: bytes, tmp_path: Path) -> None:
    """``envoy --mode validate`` on ``config`` with its descriptor and OpenAPI document
    (/etc/envoy -> tmp)."""
    assert "/etc/envoy/dago.binpb" in config
    assert "filename: /etc/envoy/openapi.json" in config
    (tmp_path / "dago.binpb").write_bytes(descriptor)
    (tmp_path / "openapi.json").write_bytes((ROOT / "gen" / "openapi.json").read_bytes())
    path = tmp_path / "envoy.yaml"
    path.write_text(config.replace("/etc/envoy/", f"{tmp_path}/"))
    done = edge.validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


@pytest.mark.parametrize("values", ["default-values.yaml", "ingress-tls-values.yaml"])
@pytest.mark.edge
def test_envoy_configmap_validates_and_points_at_the_api(
    rendered: dict[str, list[dict[str, Any]]], values: str, tmp_path: Path
) -> None:
    docs = rendered[values]
    cm = one(docs, "ConfigMap", f"{RELEASE}-dago-envoy")
    config = cm["data"]["envoy.yaml"]
    descriptor = base64.b64decode(cm["binaryData"]["dago.binpb"])
    assert descriptor == (ROOT / "gen" / "dago.binpb").read_bytes()
    document = base64.b64decode(cm["binaryData"]["openapi.json"])
    assert document == (ROOT / "gen" / "openapi.json").read_bytes()
    assert "__DAGO_" not in config, "a placeholder was left unfilled"
    _validate_envoy(config, descriptor, tmp_path)

    parsed = load_envoy(config)
    clusters = {c["name"]: c for c in parsed["static_resources"]["clusters"]}
    api = one(docs, "Deployment", f"{RELEASE}-dago-api")
    api_ports = {
        p["name"]: p["containerPort"]
        for p in api["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    headless = one(docs, "Service", f"{RELEASE}-dago-api-headless")
    assert headless["spec"]["clusterIP"] == "None"
    for cluster, port in (("dago", "grpc"), ("dago_metrics", "metrics")):
        addr = clusters[cluster]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        sock = addr["endpoint"]["address"]["socket_address"]
        assert sock["address"] == f"{RELEASE}-dago-api-headless.{NAMESPACE}.svc"
        assert sock["port_value"] == api_ports[port]
        assert clusters[cluster]["type"] == "STRICT_DNS"
    # The Envoy Deployment mounts this ConfigMap where the config says, and listens on http.
    dep = one(docs, "Deployment", f"{RELEASE}-dago-envoy")
    pod = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/etc/envoy")
    assert vols[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]
    listener = parsed["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert pod["containers"][0]["ports"][0]["containerPort"] == listener["port_value"]

    # The CORS regex the chart builds accepts exactly what dago.devtools.edge's would.
    origins = yaml.safe_load((CHART / "values.yaml").read_text())["envoy"]["corsOrigins"]
    if values == "ingress-tls-values.yaml":
        origins = yaml.safe_load((CHART / "ci" / values).read_text())["envoy"]["corsOrigins"]
    chart_regex = re.search(r"safe_regex: \{ regex: '(.*)' \}", config)
    assert chart_regex is not None
    ours = re.compile(chart_regex.group(1).replace("''", "'"))
    theirs = re.compile(edge.origin_regex(origins))
    samples = [
        "http://localhost",
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "https://app.example.com",
        "https://web.example.com",
        "https://a/b.example.com",
        "https://evil.com",
        "http://localhost.evil.com",
        "https://app.example.com.evil",
    ]
    assert any(theirs.fullmatch(s) for s in samples)
    for s in samples:
        assert bool(ours.fullmatch(s)) == bool(theirs.fullmatch(s)), s


def _secret_values(docs: list[dict[str, Any]], values_file: Path) -> set[str]:
    found = set()
    for s in kinds(docs, "Secret"):
        for v in (s.get("data") or {}).values():
            found.add(base64.b64decode(v).decode())
    given = yaml.safe_load(values_file.read_text()) or {}
    for key in ("anthropicApiKey", "openaiApiKey"):
        if given.get("secrets", {}).get(key):
            found.add(given["secrets"][key])
    return {v.strip() for v in found if v.strip()}


@pytest.mark.edge
def test_edge_limits_come_from_the_values(helm: str, tmp_path: Path) -> None:
    """envoy.limits reaches every place of the Envoy configuration that holds a limit, and
    the result still validates; clientRps 0 leaves a rate no client reaches."""
    limits = {
        "maxConnections": 1234,
        "maxHeapBytes": 3 << 30,
        "headersTimeoutSeconds": 7,
        "idleTimeoutSeconds": 45,
        "watchIdleTimeoutSeconds": 20,
        "bufferBytes": 65536,
        "clientRps": 50,
        "trustedHops": 1,
    }
    configs = {}
    for rps in (50, 0):
        sets = [f"envoy.limits.{k}={v if k != 'clientRps' else rps}" for k, v in limits.items()]
        done = run(
            [helm, "template", RELEASE, str(CHART), "-n", NAMESPACE]
            + [arg for s in sets for arg in ("--set", s)]
        )
        assert done.returncode == 0, done.stderr
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        cm = one(docs, "ConfigMap", f"{RELEASE}-dago-envoy")
        configs[rps] = cm["data"]["envoy.yaml"]
    config = configs[50]
    assert "__DAGO_" not in config
    _validate_envoy(config, (ROOT / "gen" / "dago.binpb").read_bytes(), tmp_path)
    parsed = load_envoy(config)
    monitors = {
        m["name"]: m["typed_config"] for m in parsed["overload_manager"]["resource_monitors"]
    }
    conns = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert conns["max_active_downstream_connections"] == 1234
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 3 << 30
    listener = parsed["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 65536
    assert listener["listener_filters_timeout"] == "7s"
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["request_headers_timeout"] == "7s"
    assert hcm["common_http_protocol_options"]["idle_timeout"] == "45s"
    assert hcm["xff_num_trusted_hops"] == 1
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    idle = [r["route"].get("idle_timeout") for r in routes if "route" in r]
    assert idle.count("20s") == 8, idle  # the watch and RunGraph streams (REST and gRPC)
    limit = next(
        f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.local_ratelimit"
    )
    bucket = limit["typed_config"]["descriptors"][0]["token_bucket"]
    assert (bucket["tokens_per_fill"], bucket["max_tokens"]) == (50, 100)
    unlimited = load_envoy(configs[0])["static_resources"]["listeners"][0]
    hcm = unlimited["filter_chains"][0]["filters"][0]["typed_config"]
    limit = next(
        f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.local_ratelimit"
    )
    assert limit["typed_config"]["descriptors"][0]["token_bucket"]["tokens_per_fill"] >= 10**9


@pytest.mark.parametrize("values", VALUES_FILES)
def test_no_secret_value_is_rendered_in_plain_text(
    rendered: dict[str, list[dict[str, Any]]], values: str
) -> None:
    docs = rendered[values]
    secrets = _secret_values(docs, CHART / "ci" / values)
    if values == "ingress-tls-values.yaml":
        assert "sk-ant-test-not-a-real-key" in secrets
    plain = []
    for cm in kinds(docs, "ConfigMap"):
        plain.extend(cm.get("data", {}).values())
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            plain.extend(e["value"] for e in c.get("env", []) if "value" in e)
            plain.extend(c.get("args", []) + c.get("command", []))
        plain.extend(w["spec"]["template"]["metadata"].get("annotations", {}).values())
    for text in plain:
        for secret in secrets:
            for line in secret.splitlines():
                assert line not in text, "a secret value is rendered in plain text"
    for w in workloads(docs):
        for c in w["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"] in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
                    assert "secretKeyRef" in e["valueFrom"]


def test_default_install_generates_an_api_key(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["default-values.yaml"]
    secret = one(docs, "Secret", f"{RELEASE}-dago")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    key = data["api-key"]
    assert key.startswith("dago_") and len(key) > 40
    assert data["api-keys"] == f"{hashlib.sha256(key.encode()).hexdigest()} default\n"
    # The keys file is mounted where DAGO_API_KEYS_FILE says.
    for name in ("api", "worker"):
        pod = one(docs, "Deployment", f"{RELEASE}-dago-{name}")["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["DAGO_AUTH"] == "keys"
        keys_file = Path(env["DAGO_API_KEYS_FILE"])
        mount = next(
            m
            for m in pod["containers"][0]["volumeMounts"]
            if m["mountPath"] == str(keys_file.parent)
        )
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert vol["secret"]["secretName"] == secret["metadata"]["name"]
        assert vol["secret"]["items"] == [{"key": "api-keys", "path": keys_file.name}]


def test_hpa_and_pdb_only_with_the_ha_values(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for values, docs in rendered.items():
        hpas = {d["metadata"]["name"] for d in kinds(docs, "HorizontalPodAutoscaler")}
        pdbs = {d["metadata"]["name"] for d in kinds(docs, "PodDisruptionBudget")}
        if values == "ha-values.yaml":
            want = {f"{RELEASE}-dago-{c}" for c in ("api", "worker", "envoy")}
            assert hpas == want and pdbs == want
        else:
            assert not hpas and not pdbs, values
    docs = rendered["ha-values.yaml"]
    worker_hpa = one(docs, "HorizontalPodAutoscaler", f"{RELEASE}-dago-worker")
    assert worker_hpa["spec"]["minReplicas"] == 3 and worker_hpa["spec"]["maxReplicas"] == 40
    assert worker_hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    assert one(docs, "PodDisruptionBudget", f"{RELEASE}-dago-worker")["spec"] == {
        "maxUnavailable": 1,
        "selector": {
            "matchLabels": {
                "app.kubernetes.io/name": "dago",
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": "worker",
            }
        },
    }
    assert kinds(docs, "ServiceMonitor") and kinds(docs, "NetworkPolicy")
    spread = one(docs, "Deployment", f"{RELEASE}-dago-api")["spec"]["template"]["spec"][
        "topologySpreadConstraints"
    ][0]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"


def crd_validator(name: str) -> jsonschema.protocols.Validator:
    """A validator of the served version of a vendored KEDA CRD (tests/devtools/data/keda),
    strict like the API server's field validation: unknown fields are errors (the CRD's
    schema lists every field; JSON Schema alone would let a misspelt one through)."""
    crd = yaml.safe_load((KEDA_CRDS / name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["served"] and v["storage"]]
    assert version["name"] == "v1alpha1"

    def strict(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: strict(v) for k, v in node.items()}
            if "properties" in out and "additionalProperties" not in out:
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    schema = strict(version["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def assert_valid(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> None:
    """``doc`` satisfies the schema (every error listed otherwise)."""
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors


# Trigger metadata the redis-streams scalers read (KEDA pkg/scalers/redis_streams_scaler.go
# and redis_scaler.go: redisStreamsMetadata, redisConnectionInfo).
REDIS_STREAMS_METADATA = {
    "address",
    "addresses",
    "stream",
    "consumerGroup",
    "lagCount",
    "activationLagCount",
    "databaseIndex",
    "enableTLS",
    "username",
}


def test_keda_scales_the_workers_on_every_shard_stream(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["keda-values.yaml"]
    worker = f"{RELEASE}-dago-worker"
    so = one(docs, "ScaledObject", worker)
    assert_valid(crd_validator("keda.sh_scaledobjects.yaml"), so)
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker}
    assert "replicas" not in one(docs, "Deployment", worker)["spec"], "KEDA's HPA owns it"
    assert not kinds(docs, "HorizontalPodAutoscaler"), "KEDA makes the only HPA"
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 30)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    # One trigger per shard of config.DAGO_SHARDS, on the streams and the consumer group
    # the workers read (dago.store.keys), in the bundled Redis.
    streams = [ShardKeys("prod", s).work for s in range(4)]
    assert [t["metadata"]["stream"] for t in spec["triggers"]] == streams
    for t in spec["triggers"]:
        assert t["type"] == "redis-streams" and "authenticationRef" not in t
        meta = t["metadata"]
        assert set(meta) <= REDIS_STREAMS_METADATA, set(meta) - REDIS_STREAMS_METADATA
        assert meta["consumerGroup"] == WORK_GROUP
        assert meta["lagCount"] == "280"
        assert meta["address"] == f"{RELEASE}-dago-redis.{NAMESPACE}.svc:6379"
        assert meta["databaseIndex"] == "0"
    worker_env = one(docs, "Deployment", worker)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in worker_env["env"]}
    assert env["DAGO_SHARDS"] == "4" and env["DAGO_KEY_PREFIX"] == "prod"
    # The bundled Redis lets the KEDA operator's namespace in.
    policy = one(docs, "NetworkPolicy", f"{RELEASE}-dago-redis")
    peers = policy["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in peers
    # Without keda, nothing of it.
    for values in ("default-values.yaml", "ha-values.yaml"):
        assert not kinds(rendered[values], "ScaledObject")
        assert not kinds(rendered[values], "TriggerAuthentication")


def test_keda_reads_an_external_redis_cluster_with_a_password(helm: str) -> None:
    docs = template(
        helm,
        "keda.enabled=true",
        "keda.redis.address=r1:6379\\,r2:6379",
        "keda.redis.cluster=true",
        "keda.redis.enableTLS=true",
        "keda.redis.passwordSecret.name=redis-auth",
        values="external-redis-values.yaml",
    )
    worker = f"{RELEASE}-dago-worker"
    so = one(docs, "ScaledObject", worker)
    auth = one(docs, "TriggerAuthentication", worker)
    assert_valid(crd_validator("keda.sh_scaledobjects.yaml"), so)
    assert_valid(crd_validator("keda.sh_triggerauthentications.yaml"), auth)
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "password", "name": "redis-auth", "key": "redis-password"}
    ]
    triggers = so["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [
        ShardKeys("dago", s).work for s in range(16)
    ]
    for t in triggers:
        assert t["type"] == "redis-cluster-streams"
        assert t["authenticationRef"] == {"name": worker}
        meta = t["metadata"]
        assert set(meta) <= REDIS_STREAMS_METADATA
        assert meta["addresses"] == "r1:6379,r2:6379" and "databaseIndex" not in meta
        assert meta["enableTLS"] == "true" and meta["consumerGroup"] == WORK_GROUP


def test_ingress_with_tls_routes_to_envoy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["ingress-tls-values.yaml"]
    (ing,) = kinds(docs, "Ingress")
    assert ing["spec"]["tls"] == [{"secretName": "dago-tls", "hosts": ["dago.example.com"]}]
    assert ing["spec"]["ingressClassName"] == "nginx"
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    svc = one(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "envoy"
    for values, other in rendered.items():
        if values != "ingress-tls-values.yaml":
            assert not kinds(other, "Ingress")


def test_existing_secret_replaces_the_generated_one(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["external-redis-values.yaml"]
    assert not kinds(docs, "Secret")
    assert not kinds(docs, "StatefulSet"), "no bundled Redis with an external one"
    for name in ("api", "worker"):
        pod = one(docs, "Deployment", f"{RELEASE}-dago-{name}")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        ref = env["DAGO_REDIS_URL"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "dago-prod-secrets", "key": "redis-url"}
        assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "dago-prod-secrets"
        assert env["DAGO_SHARDS"]["value"] == "16"
        refs = {
            e["valueFrom"]["secretKeyRef"]["name"]
            for e in env.values()
            if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
        }
        assert refs == {"dago-prod-secrets"}
        secret_vols = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
        assert secret_vols == ["dago-prod-secrets"]
    # The default values bundle Redis (AOF on) and point dago at it.
    default = rendered["default-values.yaml"]
    redis = one(default, "StatefulSet", f"{RELEASE}-dago-redis")
    cmd = redis["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--appendfsync") + 1] == "everysec"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    api = one(default, "Deployment", f"{RELEASE}-dago-api")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in api["containers"][0]["env"]}
    svc = one(default, "Service", f"{RELEASE}-dago-redis")
    assert env["DAGO_REDIS_URL"]["value"] == f"redis://{svc['metadata']['name']}:6379/0"


def test_the_namespaces_file_comes_from_a_configmap(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    # ha-values sets `namespaces`: the file dago reads, mounted as a directory (an edit
    # reaches it; a subPath mount would not), its path in DAGO_NAMESPACES_FILE.
    docs = rendered["ha-values.yaml"]
    cm = one(docs, "ConfigMap", f"{RELEASE}-dago-namespaces")
    shares = parse_namespaces(cm["data"]["namespaces.yaml"])
    assert shares.of("team-a").daily_cost_usd == 20 and shares.of("other").daily_cost_usd == 5
    for component in ("api", "worker"):
        pod = one(docs, "Deployment", f"{RELEASE}-dago-{component}")["spec"]["template"]
        assert "checksum/namespaces" in pod["metadata"]["annotations"]
        (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == "namespaces"]
        assert vol["configMap"]["name"] == cm["metadata"]["name"]
        c = pod["spec"]["containers"][0]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "namespaces"]
        assert "subPath" not in mount and mount["readOnly"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["DAGO_NAMESPACES_FILE"] == f"{mount['mountPath']}/namespaces.yaml"
    # Without the value: no ConfigMap, no variable (every namespace alike).
    for values in ("default-values.yaml", "keda-values.yaml"):
        assert not [
            d for d in kinds(rendered[values], "ConfigMap") if "namespaces" in d["metadata"]["name"]
        ]
        for d in workloads(rendered[values]):
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert "DAGO_NAMESPACES_FILE" not in {e["name"] for e in c.get("env", [])}


def test_chart_rejects_contradictory_values(helm: str) -> None:
    cases = [
        (["--set", "redis.external.enabled=true"], "redis.external.url"),
        (["--set", "api.tls.enabled=true", "--set", "api.tls.secretName=t"], "envoy.enabled"),
        (
            ["--set", "keda.enabled=true", "--set", "worker.autoscaling.enabled=true"],
            "keda.enabled and worker.autoscaling.enabled are exclusive",
        ),
        (["--set", "keda.enabled=true", "--set", "keda.minReplicaCount=0"], "at least 1"),
        (
            ["--set", "keda.enabled=true", "-f", str(CHART / "ci" / "external-redis-values.yaml")],
            "keda.redis.address",
        ),
        (["--set", "namespaces.teams.a.weight=2"], "namespaces.teams: unknown"),
    ]
    for args, message in cases:
        done = run([helm, "template", RELEASE, str(CHART), *args])
        assert done.returncode != 0 and message in done.stderr, done.stderr
    # TLS without Envoy: the probes speak TLS through `dago health` (kubelet's gRPC probes
    # are plaintext), presenting the server's certificate with mutual TLS.
    docs = template(
        helm,
        "api.tls.enabled=true",
        "api.tls.secretName=t",
        "api.tls.clientAuth=true",
        "envoy.enabled=false",
        namespace=None,
    )
    assert not kinds(docs, "ConfigMap")
    c = one(docs, "Deployment", f"{RELEASE}-dago-api")["spec"]["template"]["spec"]["containers"][0]
    cmd = c["livenessProbe"]["exec"]["command"]
    assert cmd[:4] == ["python", "-m", "dago", "health"]
    assert {"--tls-ca", "--tls-cert", "--tls-key"} <= set(cmd)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["DAGO_TLS_CLIENT_CA_FILE"] == "/etc/dago/tls/ca.crt"


def test_monitoring_resources_ship_deploy_s_rules_and_dashboard(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """prometheusRule and grafanaDashboard are off by default; on (ha-values.yaml), the
    PrometheusRule holds deploy/prometheus/dago-rules.yml and the ConfigMap the dashboard of
    deploy/grafana/dashboards, as they are (one source, copied by deploy_assets.py)."""
    for values, docs in rendered.items():
        has = {(d["kind"], d["metadata"]["name"]) for d in docs}
        on = values == "ha-values.yaml"
        assert (("PrometheusRule", f"{RELEASE}-dago") in has) == on, values
        assert (("ConfigMap", f"{RELEASE}-dago-dashboard") in has) == on, values
    docs = rendered["ha-values.yaml"]
    rule = one(docs, "PrometheusRule", f"{RELEASE}-dago")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "dago-rules.yml").read_text())
    assert rule["spec"] == shipped
    dashboard = one(docs, "ConfigMap", f"{RELEASE}-dago-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "dago"}
    (text,) = dashboard["data"].values()
    assert json.loads(text) == json.loads(
        (ROOT / "deploy" / "grafana" / "dashboards" / "dago.json").read_text()
    )


def test_chart_values_are_all_documented() -> None:
    done = run([sys.executable, str(ROOT / "scripts" / "chart_docs.py"), "--check"])
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    assert "`worker.autoscaling.enabled`" in readme and "`secrets.existingSecret`" in readme


def test_deploy_assets_are_rendered_from_the_envoy_template() -> None:
    done = run([sys.executable, str(ROOT / "scripts" / "deploy_assets.py"), "--check"])
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- compose


@pytest.mark.edge
def test_compose_stack(tmp_path: Path) -> None:
    done = run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {
        "redis", "api", "worker", "envoy", "prometheus", "grafana", "postgres"
    }  # fmt: skip
    # Prometheus and Grafana only with `--profile monitoring`, PostgreSQL with `history`.
    profiled = {n: svc["profiles"] for n, svc in services.items() if "profiles" in svc}
    assert profiled == {
        "prometheus": ["monitoring"], "grafana": ["monitoring"], "postgres": ["history"]
    }  # fmt: skip
    assert services["api"]["depends_on"]["postgres"]["required"] is False
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert redis_cmd[redis_cmd.index("--appendfsync") + 1] == "${REDIS_APPENDFSYNC:-everysec}"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for name in ("redis", "api", "worker"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert services["api"]["healthcheck"]["test"][1:] == ["python", "-m", "dago", "health"]
    assert services["worker"]["healthcheck"]["test"][-2:] == ["health", "worker"]
    assert services["api"]["command"] == ["serve"]
    assert services["worker"]["command"] == ["worker"]
    # Scalable with --scale: no fixed container name or host port.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["ANTHROPIC_API_KEY"] == "${ANTHROPIC_API_KEY:-}"
        assert env["DAGO_REDIS_URL"].endswith("redis://redis:6379/0}")
        assert env["DAGO_POSTGRES_URL"] == "${DAGO_POSTGRES_URL:-}"
        assert services[name]["build"]["context"] == ".."
        assert (COMPOSE.parent / services[name]["build"]["context"] / "Dockerfile").exists()
    assert services["envoy"]["ports"] == ["${BIND_ADDRESS:-127.0.0.1}:${EDGE_PORT:-8080}:8080"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["envoy"]["volumes"])
    for src in mounts:
        assert (COMPOSE.parent / src).exists(), src
    config = (COMPOSE.parent / "envoy" / "envoy.yaml").read_text()
    assert mounts["./envoy/envoy.yaml"] == "/etc/envoy/envoy.yaml"
    assert mounts["../gen/dago.binpb"] == "/etc/envoy/dago.binpb"
    assert mounts["../gen/openapi.json"] == "/etc/envoy/openapi.json"
    parsed = load_envoy(config)
    hosts = {
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]["address"]
        for c in parsed["static_resources"]["clusters"]
    }
    assert hosts == {"api"}, "Envoy's upstream is the compose service"
    _validate_envoy(config, (ROOT / "gen" / "dago.binpb").read_bytes(), tmp_path)
    example = (COMPOSE.parent / ".env.example").read_text()
    assert "ANTHROPIC_API_KEY=" in example and "REDIS_APPENDFSYNC" in example


def _mounts(volumes: list[str]) -> dict[str, str]:
    """A compose service's volumes (``src:dst[:mode]``): source -> path in the container."""
    return {v.split(":")[0]: v.split(":")[1] for v in volumes}


@pytest.mark.process
def test_compose_monitoring_scrapes_the_stack_and_loads_the_rules(tmp_path: Path) -> None:
    """The monitoring profile: Prometheus scrapes the API and every worker on the ports the
    processes serve by default, loads deploy/prometheus/dago-rules.yml (promtool accepts
    the configuration), and Grafana is provisioned with it and with the dago dashboard."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    prom_mounts = _mounts(services["prometheus"]["volumes"])
    config_path = next(src for src, dst in prom_mounts.items() if dst.endswith("prometheus.yml"))
    config = yaml.safe_load((COMPOSE.parent / config_path).read_text())
    (rules_in_container,) = config["rule_files"]
    rules_src = next(src for src, dst in prom_mounts.items() if dst == rules_in_container)
    assert (
        COMPOSE.parent / rules_src
    ).resolve() == ROOT / "deploy" / "prometheus" / "dago-rules.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    settings = Settings()
    assert jobs["dago-api"]["static_configs"][0]["targets"] == [f"api:{settings.metrics_port}"]
    (sd,) = jobs["dago-worker"]["dns_sd_configs"]
    assert (sd["names"], sd["port"]) == (["worker"], settings.worker_metrics_port)
    # promtool checks the configuration with the rules where the container has them.
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus" / "dago-rules.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    done = run(["promtool", "check", "config", str(local)])
    assert done.returncode == 0, done.stdout + done.stderr
    # Grafana: the stack's Prometheus as data source, the dashboards folder provisioned.
    graf_mounts = _mounts(services["grafana"]["volumes"])
    assert graf_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = COMPOSE.parent / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert (source["type"], source["url"]) == ("prometheus", "http://prometheus:9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dago.yml").read_text())[
        "providers"
    ]
    assert graf_mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert (COMPOSE.parent / "grafana" / "dashboards" / "dago.json").exists()


# --------------------------------------------------------------------------- workflows


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-zA-Z][\w-]*):", text, re.MULTILINE))


def test_workflows_are_valid_and_use_what_exists() -> None:
    names = {p.name for p in WORKFLOWS}
    assert {"ci.yml", "release.yml", "docker.yml"} <= names
    done = run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    targets = _make_targets()
    for path in WORKFLOWS:
        flow = yaml.safe_load(path.read_text())
        for job in flow["jobs"].values():
            for step in job["steps"]:
                script = step.get("run", "")
                for target in re.findall(r"\bmake ([a-z][\w-]*)", script):
                    assert target in targets, f"{path.name}: make {target}"
                for ref in re.findall(r"(?:scripts|helm|\.ci)/[\w./-]+", script):
                    assert (ROOT / ref.rstrip(".")).exists(), f"{path.name}: {ref}"
                with_ = step.get("with", {})
                if "file" in with_:
                    assert (ROOT / with_["file"]).exists()
    docker = yaml.safe_load((ROOT / ".github/workflows/docker.yml").read_text())
    build = next(
        s
        for s in docker["jobs"]["image"]["steps"]
        if str(s.get("uses", "")).startswith("docker/build-push-action")
    )
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    login = next(
        s
        for s in docker["jobs"]["image"]["steps"]
        if str(s.get("uses", "")).startswith("docker/login-action")
    )
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    release = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    assert release[True]["push"]["tags"] == ["v*"]  # YAML 1.1 reads `on` as True
    jobs = release["jobs"]
    steps = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "make dist" in steps["build"] and "sha256sum" in steps["build"]
    assert "gh release create" in steps["release"]
    # PyPI by trusted publishing (an OIDC token, no secret), npm with NPM_TOKEN.
    assert jobs["pypi"]["permissions"] == {"id-token": "write"}
    assert any(
        str(s.get("uses", "")).startswith("pypa/gh-action-pypi-publish")
        for s in jobs["pypi"]["steps"]
    )
    assert "npm publish" in steps["npm"]
    assert "secrets.NPM_TOKEN" in json.dumps(jobs["npm"])
    assert set(jobs["release"]["needs"]) == {"build", "pypi", "npm"}
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    assert "redis" in ci["jobs"]["ci"]["services"]


# --------------------------------------------------------------------------- the image


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list)
    return [str(v) for v in value]


def test_hadolint_passes_on_every_dockerfile() -> None:
    skip = {".venv", "node_modules", ".git", ".tools", "build"}
    found = [
        p
        for p in ROOT.rglob("*Dockerfile*")
        if not skip & set(p.relative_to(ROOT).parts) and p.is_file()
    ]
    assert ROOT / "Dockerfile" in found
    for path in found:
        done = run([str(BIN / "hadolint"), str(path)])
        assert done.returncode == 0, f"{path}:\n{done.stdout}{done.stderr}"


def test_dockerfile_shape() -> None:
    steps = _dockerfile()
    args = {a.split("=")[0]: a.split("=", 1)[1] for i, a in steps if i == "ARG" and "=" in a}
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) == 2, "a builder and a runtime stage"
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    final = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    final_text = " ".join(a for _, a in final)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final_text, f"{tool} in the runtime stage"
    user = [a for i, a in final if i == "USER"]
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0"
    entry = _exec_form(next(a for i, a in final if i == "ENTRYPOINT"))
    assert entry == ["python", "-m", "dago"]
    # The module the ENTRYPOINT runs is the one the wheel ships (service/dago/__main__.py).
    assert (ROOT / "service" / "dago" / "__main__.py").exists()
    health = next(a for i, a in final if i == "HEALTHCHECK")
    assert _exec_form(health.split("CMD", 1)[1].strip())[:4] == ["python", "-m", "dago", "health"]
    # Everything COPY'd from the build context is let through by .dockerignore.
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") :] and "*" in ignore
    allowed = {p.lstrip("!").rstrip("/") for p in ignore if p.startswith("!")}
    for i, a in steps:
        if i == "COPY" and not a.startswith("--from"):
            for src in shlex.split(a)[:-1]:
                assert src.rstrip("/") in allowed, f".dockerignore drops {src}"
                assert (ROOT / src).exists(), src


# The wheel: the same build as the Dockerfile's builder stage, run without Docker.


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the dago wheel built from the image's build context."""
    base = tmp_path_factory.mktemp("image")
    context = base / "context"
    context.mkdir()
    # The build context of the Dockerfile: what its COPY lines take.
    for i, a in _dockerfile():
        if i == "COPY" and not a.startswith("--from"):
            for src in shlex.split(a)[:-1]:
                s = ROOT / src
                d = context / src
                if s.is_dir():
                    shutil.copytree(s, d, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    d.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(s, d)
    dist = base / "dist"
    done = run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(context),
        ]
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (whl,) = dist.glob("dago-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for root, pkg in (
        (ROOT / "service" / "dago", "dago"),
        (ROOT / "gen" / "python" / "dago" / "v1", "dago/v1"),
    ):
        for f in root.rglob("*"):
            if f.suffix in (".py", ".lua", ".sql") and "__pycache__" not in f.parts:
                rel = f"{pkg}/{f.relative_to(root).as_posix()}"
                if (ROOT / "service" / "dago" / "v1") not in f.parents:
                    assert rel in names, f"the wheel lacks {rel} (pyproject.toml packages)"
    venv = base / "venv"
    done = run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert done.returncode == 0, done.stderr
    # The dependencies: the pinned set of this checkout's .venv (the image installs the same
    # requirements.txt); dago itself comes only from the wheel.
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next((BIN.parent / "lib").glob("python3*/site-packages"))
    (site / "dago-deps.pth").write_text(f"{deps}\n")
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            str(whl),
        ]
    )
    assert done.returncode == 0, done.stderr
    yield venv


def _image_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGO_", "PYTHON"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def _start(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a child process logging to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_image_commands_start_serve_and_worker_from_the_wheel(
    wheel_venv: Path,
    redis_single: RedisServer,
    key_prefix: str,
    tmp_path: Path,
    postgres_url: str,
) -> None:
    steps = _dockerfile()
    final = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM") :]
    entry = _exec_form(next(a for i, a in final if i == "ENTRYPOINT"))
    cmd = _exec_form(next(a for i, a in final if i == "CMD"))
    health = _exec_form(next(a for i, a in final if i == "HEALTHCHECK").split("CMD", 1)[1])
    python = str(wheel_venv / "bin" / "python")

    def argv(words: list[str]) -> list[str]:
        assert words[0] == "python"
        return [python, *words[1:]]

    where = run(
        argv(["python", "-c", "import dago.api.server; print(dago.api.server.__file__)"]),
        cwd=tmp_path,
        env=_image_env(),
    )
    assert where.returncode == 0 and str(wheel_venv) in where.stdout, where
    # The history schema's files ship in the wheel: `dago migrate` applies them.
    migrated = run(
        argv([*entry, "migrate"]), cwd=tmp_path, env=_image_env(DAGO_POSTGRES_URL=postgres_url)
    )
    assert migrated.returncode == 0 and "applied 0001_runs" in migrated.stdout, migrated

    port, metrics, worker_metrics = free_port(), free_port(), free_port()
    env = _image_env(
        DAGO_REDIS_URL=redis_single.url,
        DAGO_KEY_PREFIX=key_prefix,
        DAGO_SHARDS="2",
        DAGO_GRPC_PORT=str(port),
        DAGO_METRICS_PORT=str(metrics),
        DAGO_WORKER_METRICS_PORT=str(worker_metrics),
        DAGO_AUTH="off",
        DAGO_GRPC_HOST="127.0.0.1",
    )
    procs = {
        "serve": _start(argv(entry + cmd), tmp_path, env, tmp_path / "serve.log"),
        "worker": _start(argv([*entry, "worker"]), tmp_path, env, tmp_path / "worker.log"),
    }
    client = Client(f"127.0.0.1:{port}")
    try:

        async def healthy(words: list[str]) -> bool:
            for name, p in procs.items():
                assert p.poll() is None, (tmp_path / f"{name}.log").read_text()
            return run(argv(words), cwd=tmp_path, env=env).returncode == 0

        # Not healthy before anything listens on the port it asks.
        assert (
            run(
                argv(health), cwd=tmp_path, env={**env, "DAGO_GRPC_PORT": str(free_port())}
            ).returncode
            == 1
        )
        await eventually(lambda: healthy(health), timeout=30, interval=0.2)
        await eventually(lambda: healthy([*entry, "health", "worker"]), timeout=30, interval=0.2)
        _, st = await client.run(
            request([echo("a", text="hi"), echo("b")], [graph_edge("a", "b")]), timeout=30
        )
        assert st.state == 3, st  # GRAPH_STATE_COMPLETED: the wheel's worker ran the nodes
    except (AssertionError, grpc.RpcError) as e:
        logs_text = "\n".join(
            f"--- {n}\n{(tmp_path / f'{n}.log').read_text()[-3000:]}" for n in procs
        )
        raise AssertionError(f"{e}\n{logs_text}") from e
    finally:
        await client.close()
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    # SIGTERM (what `docker stop` sends) ends both cleanly.
    assert procs["serve"].returncode == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert procs["worker"].returncode == 0, (tmp_path / "worker.log").read_text()[-2000:]


# --------------------------------------------------------------------------- TLS probes


def _certificates(where: Path, server_name: str) -> None:
    """A CA and a server certificate for ``server_name`` it signed (usable as a client
    certificate too, as the chart's mutual-TLS probe presents it), in PEM files."""

    def openssl(*args: str) -> None:
        done = run(["openssl", *args], cwd=where)
        assert done.returncode == 0, done.stderr

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=dago-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={server_name}")
    (where / "ext.cnf").write_text(
        f"subjectAltName=DNS:{server_name}\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )


async def test_chart_tls_probe_command_checks_a_mutual_tls_api(
    helm: str, redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    docs = template(
        helm,
        "api.tls.enabled=true",
        "api.tls.secretName=api-tls",
        "api.tls.clientAuth=true",
        "envoy.enabled=false",
    )
    c = one(docs, "Deployment", f"{RELEASE}-dago-api")["spec"]["template"]["spec"]["containers"][0]
    probe = c["readinessProbe"]["exec"]["command"]
    liveness = c["livenessProbe"]["exec"]["command"]
    assert liveness == [*probe, "--service", LIVENESS]
    tls_env = {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("DAGO_TLS_")}
    tls_dir = Path(tls_env["DAGO_TLS_CERT_FILE"]).parent
    server_name = probe[probe.index("--tls-server-name") + 1]
    _certificates(tmp_path, server_name)

    def local(words: list[str]) -> list[str]:
        return [w.replace(str(tls_dir), str(tmp_path)) for w in words]

    env = {k: local([v])[0] for k, v in tls_env.items()}
    async with RunningStack(redis_single.url, key_prefix, DAGO_AUTH="off", **env) as stack:
        stack.start("api", "serve")

        def probe_rc(words: list[str]) -> int:
            assert stack.procs["api"].poll() is None, stack.log("api")
            assert words[:3] == ["python", "-m", "dago"]
            return run([sys.executable, *words[1:]], env=stack.env).returncode

        async def passes(words: list[str]) -> bool:
            return probe_rc(local(words)) == 0

        # The chart's probes, as rendered: TLS with the CA, the Service name, a client cert.
        # Alive without any worker, but not ready until one is.
        await eventually(lambda: passes(liveness), timeout=30, interval=0.2)
        assert probe_rc(local(probe)) == 1, "ready with no worker alive"
        stack.start("worker", "worker")
        await eventually(lambda: passes(probe), timeout=30, interval=0.2)
        no_client_cert = local(probe[: probe.index("--tls-cert")])
        assert probe_rc(no_client_cert) == 1, "mutual TLS refuses a client without a cert"
        assert probe_rc(["python", "-m", "dago", "health"]) == 1, "plaintext is refused"
        wrong_name = local(probe)
        wrong_name[wrong_name.index("--tls-server-name") + 1] = "someone-else.example"
        assert probe_rc(wrong_name) == 1, "the server name is verified"


def test_readme_deployment_instructions_match_the_files() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    assert "docker compose -f deploy/docker-compose.yml up" in section
    assert "helm install dago helm/dago" in section
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in re.findall(r"--scale (\w+)=", section):
        assert name in services
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|helm|\.github)/[\w./-]*[\w/])", section))
    assert "deploy/docker-compose.yml" in paths
    assert "deploy/.env" in paths  # the user's copy of .env.example: never committed
    assert run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT).returncode == 0
    for path in paths - {"deploy/.env"}:
        assert (ROOT / path).exists(), path
    for target in re.findall(r"`make ([a-z][\w-]*)`", section):
        assert target in _make_targets(), target
    chart_readme = (CHART / "README.md").read_text()
    for path in re.findall(r"-f (helm/dago/ci/[\w.-]+)", readme + chart_readme):
        assert (ROOT / path).exists(), path


def test_network_policies_let_the_chart_talk_to_itself(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["ha-values.yaml"]
    pods = {
        w["metadata"]["name"].removeprefix(f"{RELEASE}-dago-"): w["spec"]["template"]["metadata"][
            "labels"
        ]
        for w in workloads(docs)
    }

    def allowed(target: str, port: str) -> set[str]:
        """Components whose pods may reach ``target``'s named ``port``."""
        (policy,) = [
            p
            for p in kinds(docs, "NetworkPolicy")
            if matches(p["spec"]["podSelector"]["matchLabels"], pods[target])
        ]
        out = set()
        for rule in policy["spec"]["ingress"]:
            if port not in {p["port"] for p in rule["ports"]}:
                continue
            for peer in rule.get("from", []):
                sel = peer.get("podSelector", {}).get("matchLabels")
                if sel is not None:
                    out |= {name for name, labels in pods.items() if matches(sel, labels)}
                else:
                    out.add("namespace:" + str(peer["namespaceSelector"]["matchLabels"]))
        return out

    assert allowed("api", "grpc") == {"envoy"}
    monitoring = "namespace:{'kubernetes.io/metadata.name': 'monitoring'}"
    assert allowed("api", "metrics") == {"envoy", monitoring}
    assert allowed("worker", "metrics") == {monitoring}
    assert allowed("redis", "redis") == {"api", "worker"}
    (envoy_rule,) = next(
        p for p in kinds(docs, "NetworkPolicy") if p["metadata"]["name"].endswith("-envoy")
    )["spec"]["ingress"]
    assert "from" not in envoy_rule, "anyone may reach Envoy unless envoyFrom says otherwise"


def test_auth_off_mounts_no_keys(helm: str) -> None:
    done = run([helm, "template", RELEASE, str(CHART), "--set", "auth.mode=off"])
    assert done.returncode == 0, done.stderr
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert set(one(docs, "Secret", f"{RELEASE}-dago").get("data") or {}) == set()
    for name in ("api", "worker"):
        pod = one(docs, "Deployment", f"{RELEASE}-dago-{name}")["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["DAGO_AUTH"] == "off" and "DAGO_API_KEYS_FILE" not in env
        assert [v["name"] for v in pod["volumes"]] == ["tmp"]


def test_run_history_reaches_the_api_alone_from_a_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for values, secret, key in (
        ("ha-values.yaml", f"{RELEASE}-dago", "postgres-url"),
        ("history-values.yaml", "dago-history", "url"),
    ):
        docs = rendered[values]
        api = one(docs, "Deployment", f"{RELEASE}-dago-api")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in api["containers"][0]["env"]}
        ref = env["DAGO_POSTGRES_URL"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (secret, key), values
        assert env["DAGO_MIGRATE_AT_START"]["value"] == "true"
        worker = one(docs, "Deployment", f"{RELEASE}-dago-worker")["spec"]["template"]["spec"]
        assert "DAGO_POSTGRES_URL" not in {e["name"] for e in worker["containers"][0]["env"]}
    chart_secret = one(rendered["ha-values.yaml"], "Secret", f"{RELEASE}-dago")
    url = base64.b64decode(chart_secret["data"]["postgres-url"]).decode()
    assert url.startswith("postgresql://dago:pg-password-not-real@")
    api = one(rendered["default-values.yaml"], "Deployment", f"{RELEASE}-dago-api")
    names = {e["name"] for e in api["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "DAGO_POSTGRES_URL" not in names
