"""Settings: parsing, validation errors that name the variable, redaction, the documented table."""

from __future__ import annotations

import pytest

from dago.config import (
    ConfigError,
    Settings,
    describe,
    env_name,
    load,
    parse_mcp_servers,
    redact_url,
)
from harness import ROOT


def test_defaults_without_environment() -> None:
    s = load({})
    assert s == Settings()
    assert (s.grpc_port, s.metrics_port) == (50051, 9090)
    assert not s.cluster


def test_values_are_parsed_and_cluster_urls_recognised() -> None:
    s = load(
        {"DAGO_SHARDS": "16", "DAGO_REDIS_URL": "redis+cluster://h:7000", "DAGO_LOG_LEVEL": "debug"}
    )
    assert s.shards == 16 and s.cluster and s.log_level == "debug"


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("DAGO_SHARDS", "0", "between 1 and 1024"),
        ("DAGO_GRPC_PORT", "abc", "not a valid int"),
        ("DAGO_GRPC_PORT", "70000", "TCP port"),
        ("DAGO_REDIS_URL", "http://x", "must start with"),
        ("DAGO_LEASE_MS", "10", "at least 500"),
        ("DAGO_LOG_LEVEL", "LOUD", "one of"),
    ],
)
def test_invalid_values_name_the_variable(var: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({var: value})
    assert var in str(err.value) and words in str(err.value)


def test_mcp_servers_parse_without_anything_above_config() -> None:
    servers = parse_mcp_servers(
        '{"files": {"command": ["python", "-m", "srv"], "env": {"ROOT": "/d"}},'
        ' "web": {"url": "https://mcp.example/mcp", "headers": {"authorization": "Bearer t"}}}'
    )
    assert servers["files"].command == ("python", "-m", "srv") and servers["files"].env == {
        "ROOT": "/d"
    }
    assert servers["web"].url == "https://mcp.example/mcp" and not servers["web"].command
    assert parse_mcp_servers(" ") == {}


def test_passwords_are_redacted() -> None:
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    rows = describe(load({"DAGO_REDIS_URL": "redis://user:s3cret@h:1/0"}))
    assert not any("s3cret" in value for _, value, _ in rows)


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs/configuration.md").read_text()
    for name in Settings.__dataclass_fields__:
        assert f"`{env_name(name)}`" in doc, f"{env_name(name)} missing from docs/configuration.md"


def test_the_anthropic_key_is_read_from_its_usual_variable_and_never_shown() -> None:
    s = load({"ANTHROPIC_API_KEY": "sk-ant-secret-1"})
    assert s.anthropic_api_key == "sk-ant-secret-1"
    assert "sk-ant-secret-1" not in repr(s)
    rows = dict((var, value) for var, value, _ in describe(s))
    assert rows["DAGO_ANTHROPIC_API_KEY"] == "***"
    assert load({"DAGO_ANTHROPIC_API_KEY": "a", "ANTHROPIC_API_KEY": "b"}).anthropic_api_key == "a"


@pytest.mark.parametrize(
    ("var", "value", "words"),
    [
        ("DAGO_PRICES", "{not json", "JSON"),
        ("DAGO_PRICES", '{"m": {"input": -1}}', "non-negative"),
        ("DAGO_PRICES", "/nonexistent/prices.json", "path of a JSON file"),
        ("DAGO_HTTP_ALLOW", "10.0.0.0/33", "CIDR"),
        ("DAGO_LLM_PROVIDER", "gemini", "anthropic, openai or offline"),
        ("DAGO_OPENAI_BASE_URL", "localhost:11434", "http:// or https:// URL"),
        ("DAGO_MCP_SERVERS", "[1]", "JSON object"),
        ("DAGO_MCP_SERVERS", '{"kb": {"command": ["x"], "url": "http://h"}}', "exactly one"),
        ("DAGO_MCP_SERVERS", '{"k b": {"url": "http://h"}}', "server name"),
    ],
)
def test_llm_and_http_settings_are_checked(var: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({var: value})
    assert var in str(err.value) and words in str(err.value)
