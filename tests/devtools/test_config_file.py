"""Settings from DAGO_CONFIG_FILE (YAML or TOML) under the environment, validated with
errors that name the file and the setting; `dago config` redacts secrets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dago.config import ConfigError, load
from harness import ROOT


def test_yaml_file_values_are_used_and_the_environment_overrides_them(tmp_path: Path) -> None:
    path = tmp_path / "dago.yaml"
    path.write_text("shards: 16\nDAGO_LOG_PROMPTS: yes\nworker_id: 42\nattempt_timeout_s: 2\n")
    s = load({"DAGO_CONFIG_FILE": str(path)})
    assert (s.shards, s.log_prompts, s.worker_id, s.attempt_timeout_s) == (16, True, "42", 2.0)
    s = load({"DAGO_CONFIG_FILE": str(path), "DAGO_SHARDS": "4", "DAGO_LOG_PROMPTS": "off"})
    assert (s.shards, s.log_prompts) == (4, False)


def test_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "dago.toml"
    path.write_text('redis_url = "redis://h:1/0"\nworker_ttl_ms = 3000\nlog_format = "console"\n')
    s = load({"DAGO_CONFIG_FILE": str(path)})
    assert (s.redis_url, s.worker_ttl_ms, s.log_format) == ("redis://h:1/0", 3000, "console")


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("a.yaml", "shardz: 3\n", "'shardz' is not a dago setting"),
        ("a.yaml", "shards: many\n", "shards='many' is not a valid int"),
        ("a.yaml", "shards: 0\n", "DAGO_SHARDS must be between 1 and 1024"),
        ("a.yaml", "log_prompts: maybe\n", "log_prompts='maybe' is not a valid bool"),
        ("a.yaml", "- a list\n", "must hold a mapping"),
        ("a.toml", "shards = [\n", "cannot be read"),
        ("a.json", "{}", "must end in .yaml, .yml or .toml"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, name: str, text: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load({"DAGO_CONFIG_FILE": str(path)})
    assert words in str(err.value)


def test_a_missing_file_and_bad_booleans_in_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"DAGO_CONFIG_FILE='/nonexistent\.yaml' cannot be read"):
        load({"DAGO_CONFIG_FILE": "/nonexistent.yaml"})
    with pytest.raises(ConfigError, match="DAGO_LOG_PROMPTS='sure' is not a valid bool"):
        load({"DAGO_LOG_PROMPTS": "sure"})
    with pytest.raises(ConfigError, match="DAGO_LOG_FORMAT must be json or console"):
        load({"DAGO_LOG_FORMAT": "xml"})


@pytest.mark.process
def test_dago_config_prints_the_effective_values_with_secrets_redacted(tmp_path: Path) -> None:
    path = tmp_path / "dago.yaml"
    path.write_text(
        "redis_url: redis://:hunter2@db:6379/0\nanthropic_api_key: sk-ant-file-secret\nshards: 12\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGO_", "ANTHROPIC_"))}
    env["DAGO_CONFIG_FILE"] = str(path)
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("service", "gen/python"))
    out = subprocess.run(
        [sys.executable, "-m", "dago", "config"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {}
    for line in out.splitlines():
        if line.startswith("DAGO_"):
            var, _, value = line.partition(" ")
            rows[var] = value.strip()
    assert rows["DAGO_SHARDS"] == "12"
    assert rows["DAGO_REDIS_URL"] == "redis://:***@db:6379/0"
    assert rows["DAGO_ANTHROPIC_API_KEY"] == "***"
    assert rows["DAGO_CONFIG_FILE"] == str(path)
    assert "hunter2" not in out and "sk-ant-file-secret" not in out
