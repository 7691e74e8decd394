"""The OpenAPI document of the REST API (gen/openapi.json, dago.devtools.openapi): up to date
with the proto, a valid OpenAPI 3 document (openapi-spec-validator), one path per
``google.api.http`` route of the service, served by Envoy on /api/v1/openapi.json, and true
of the live edge: schemathesis sends requests made from it to a real Envoy in front of a
real API and worker and checks that none gets a 5xx and every response conforms to it. The
API page /docs/ (Swagger UI from npm, served by Envoy) renders every route in a real
headless Chromium, loading nothing from another host."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from google.api import annotations_pb2
from openapi_spec_validator import validate
from playwright.async_api import Browser, async_playwright
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dago.devtools import edge as envoy_edge
from dago.devtools import openapi
from dago.v1 import definitions_pb2, orchestrator_pb2
from harness import ROOT, Edge, echo, eventually

CHROMIUM = Path("/usr/bin/chromium")


def _document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(envoy_edge.OPENAPI.read_text())
    return loaded


def test_committed_document_is_up_to_date() -> None:
    assert envoy_edge.OPENAPI.read_text() == openapi.render()


def test_document_is_valid_openapi() -> None:
    validate(_document())  # raises on the first error


def test_every_http_route_of_the_service_is_a_path() -> None:
    paths = _document()["paths"]
    services = [
        orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
        definitions_pb2.DESCRIPTOR.services_by_name["DefinitionService"],
    ]
    methods = [m for service in services for m in service.methods]
    routes = []
    for method in methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        for r in [rule, *rule.additional_bindings]:
            verb = r.WhichOneof("pattern")
            routes.append((verb, getattr(r, verb), method))
    assert len(routes) == len(methods) >= 13 + 6
    for verb, template, method in routes:
        op = paths[template][verb]
        assert op["operationId"] == method.name
        assert ("requestBody" in op) == bool(
            method.GetOptions().Extensions[annotations_pb2.http].body
        )
        ok = op["responses"]["200"]["content"]
        if method.server_streaming:
            assert set(ok) == {"text/event-stream", "application/x-ndjson", "application/json"}
        else:
            assert set(ok) == {"application/json"}
        assert op["responses"]["404"] == {"$ref": "#/components/responses/Error404"}
    assert sum(len(ops) for ops in paths.values()) == len(routes)


def test_proto_json_mapping() -> None:
    doc = _document()
    schemas = doc["components"]["schemas"]
    # int64 as a string, Timestamp as a string, Struct as any object, enums by name.
    state = schemas["GraphStatus"]["properties"]["state"]
    assert state["allOf"] == [{"$ref": "#/components/schemas/GraphState"}]
    assert schemas["GraphState"]["type"] == "string"
    assert "GRAPH_STATE_COMPLETED" in schemas["GraphState"]["enum"]
    assert schemas["GraphStatus"]["properties"]["create_time"]["format"] == "date-time"
    assert schemas["Usage"]["properties"]["input_tokens"]["type"] == "string"
    details = schemas["google.rpc.Status"]["properties"]["details"]["items"]["anyOf"]
    assert details[-1]["required"] == ["@type"]  # any detail, and these by name:
    assert {d["allOf"][1]["properties"]["@type"]["enum"][0] for d in details[:-1]} >= {
        "type.googleapis.com/google.rpc.BadRequest",
        "type.googleapis.com/google.rpc.PreconditionFailure",
        "type.googleapis.com/google.rpc.ErrorInfo",
    }
    bad = schemas["google.rpc.BadRequest"]["properties"]
    assert "field_violations" in bad  # snake_case, as the edge prints it
    run = doc["paths"]["/api/v1/graphs:run"]["post"]
    body = run["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False  # the API refuses unknown fields
    events = doc["paths"]["/api/v1/graphs/{graph_id}/events"]["get"]
    names = {p["name"]: p["in"] for p in events["parameters"]}
    assert names["graph_id"] == "path" and names["after_seq"] == "query"


def test_timestamps_are_query_parameters_under_their_json_names() -> None:
    paths = _document()["paths"]

    def params(path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in paths[path]["get"]["parameters"]}

    usage = params("/api/v1/usage")
    # GetUsageSummaryRequest.start_time/end_time have json_name from/to: the REST names.
    assert set(usage) == {"from", "to", "group_by"}
    assert usage["from"]["schema"] == {"type": "string", "format": "date-time"}
    listing = params("/api/v1/graphs")
    assert {"created_after", "created_before", "name", "metadata", "min_cost_usd"} <= set(listing)
    assert listing["metadata"]["explode"] is True  # ?metadata=a=1&metadata=b=2


async def test_envoy_serves_the_document(edge_stack: Edge) -> None:
    r = await edge_stack.http.get("/api/v1/openapi.json")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.content == envoy_edge.OPENAPI.read_bytes()


def _fuzz(base: str, ids: dict[str, str]) -> None:
    """Requests made from the document, valid ones and invalid ones, to the edge at ``base``:
    with random path parameters, then with ``ids`` (a real, finished run and its node)."""
    schema = schemathesis.openapi.from_dict(_document())
    checks = [
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
        content_type_conformance,
    ]
    for result in schema.get_all_operations():
        operation = result.ok()
        known = {
            p.name: ids[p.name]
            for p in operation.path_parameters
            if p.name in ids  # graph_id, node_id
        }
        for mode in GenerationMode:
            for path_parameters in ({}, known) if known else ({},):
                # 4 examples for each operation, mode and set of path parameters: the 69 of
                # them that can be made are all sent (264 requests). With 8 (520 requests)
                # the test took 36 s against 22 s, nearly all of it generating the cases.
                @hypothesis.settings(
                    max_examples=4,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                )
                @hypothesis.given(
                    case=operation.as_strategy(mode, path_parameters=path_parameters or None)
                )
                def check(case: schemathesis.Case) -> None:
                    case.call_and_validate(base_url=base, checks=checks, timeout=15)

                try:
                    check()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing of it can be made invalid (only a path segment, which any
                    # string is): there is no negative case to send.
                    assert mode is GenerationMode.NEGATIVE, operation.label


@pytest.mark.slow  # ~20 s: every operation of the schema, positive and negative cases
async def test_schemathesis_against_the_live_edge(edge_stack: Edge) -> None:
    body = {"graph": {"name": "openapi", "nodes": [echo("a", x=1)]}}
    r = await edge_stack.http.post("/api/v1/graphs", json=body)
    assert r.status_code == 200, r.text
    graph_id = r.json()["graph_id"]

    async def finished() -> bool:
        r = await edge_stack.http.get(f"/api/v1/graphs/{graph_id}/status")
        return bool(r.json()["status"]["state"] == "GRAPH_STATE_COMPLETED")

    await eventually(finished)
    await asyncio.to_thread(_fuzz, edge_stack.base, {"graph_id": graph_id, "node_id": "a"})
    # The stack is still healthy after the fuzzing.
    r = await edge_stack.http.get("/health")
    assert r.status_code == 200, edge_stack.logs()


async def test_envoy_serves_the_api_page(edge_stack: Edge) -> None:
    r = await edge_stack.http.get("/docs")
    assert r.status_code in (301, 302) and r.headers["location"].endswith("/docs/")
    page = await edge_stack.http.get("/docs/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text.replace("<!--", "").split("-->")[-1]  # no CDN
    bundle = await edge_stack.http.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    dist = ROOT / "web" / "node_modules" / "swagger-ui-dist" / "swagger-ui-bundle.js"
    assert bundle.content == dist.read_bytes()
    init = await edge_stack.http.get("/docs/init.js")
    assert '"/api/v1/openapi.json"' in init.text


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, driven by Playwright."""
    async with async_playwright() as pw:
        b = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            await b.close()


async def test_the_api_page_renders_every_route(edge_stack: Edge, browser: Browser) -> None:
    page = await browser.new_page()
    hosts: set[str] = set()
    errors: list[str] = []
    page.on("request", lambda req: hosts.add(req.url.split("/")[2]))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{edge_stack.base}/docs/")
        operations = sum(len(ops) for ops in _document()["paths"].values())
        blocks = page.locator(".opblock")
        await blocks.nth(operations - 1).wait_for(timeout=20_000)
        assert await blocks.count() == operations
        shown = await page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/api/v1/graphs:run" in p.replace("\u200b", "") for p in shown), shown
    finally:
        await page.close()
    assert hosts == {f"127.0.0.1:{edge_stack.port}"}, hosts
    assert not errors, errors


@pytest.mark.parametrize("path", ["/api/v1/openapi.json"])
def test_the_edge_config_names_the_document(path: str) -> None:
    text = envoy_edge.render(envoy_edge.DEFAULTS)
    assert f"path: {path}" in text and "filename: gen/openapi.json" in text
