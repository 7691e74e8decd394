"""The ``dago`` command line: ``config`` (secrets redacted), configuration errors, and
``dago dev`` (its own redis-server, API and workers; stops cleanly on Ctrl-C)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import fields
from pathlib import Path

import pytest

from dago.config import Settings, env_name
from dago.v1 import execution_pb2
from harness import ROOT, Client, alive, children, dago_env, eventually, free_port, port_open

# Every test runs the dago command.
pytestmark = pytest.mark.process

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def dago(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m dago <args>`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "dago", *args],
        env=dago_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# --- dago config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@127.0.0.1:1/0",
        "redis://default:s3cret@127.0.0.1:1/0",
        "rediss+cluster://admin:s3cret@127.0.0.1:1",
        # redis-py takes any query argument as a connection keyword, password included.
        "redis://127.0.0.1:1/0?password=s3cret",
    ],
)
def test_config_prints_every_setting_with_the_password_redacted(url: str) -> None:
    p = dago("config", DAGO_REDIS_URL=url, DAGO_SHARDS="7")
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "s3cret" not in out, out
    assert "***" in out, out
    printed = {line.split()[0] for line in p.stdout.splitlines() if line.startswith("DAGO_")}
    assert printed == {env_name(f.name) for f in fields(Settings)}, out
    assert any(line.split() == ["DAGO_SHARDS", "7"] for line in p.stdout.splitlines()), out


# --- dago models ----------------------------------------------------------------------------


def test_models_prints_the_catalogue_with_the_prices_this_server_charges() -> None:
    p = dago("models", DAGO_PRICES='{"claude-opus-5-5": {"input": 3, "output": 11}}')
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "checked 2026-12-07" in out and "default: claude-sonnet-5-5" in out
    assert "claude-sonnet-5-5  Claude Sonnet 5.5 (latest)  [default]" in out
    assert "prompt over 100,000 tokens: 0.5 / 2.5 / 0.625 / 1 / 0.05" in out
    assert "forced tool use: refused" in out
    # DAGO_PRICES overrides the catalogue's row (its 5m write, unset, is 0; 1h 1.6x that).
    opus = out.split("claude-opus-5-5 ")[1].split("\n\n")[0]
    assert "price: 3 / 11 / 0 / 0 / 0" in opus


def test_config_without_secrets_prints_the_url_unchanged() -> None:
    p = dago("config", DAGO_REDIS_URL="redis://127.0.0.1:7777/3")
    assert p.returncode == 0, p.stderr
    assert "redis://127.0.0.1:7777/3" in p.stdout
    assert "***" not in p.stdout


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DAGO_SHARDS", "0"),
        ("DAGO_GRPC_PORT", "abc"),
        ("DAGO_LEASE_MS", "100"),
        ("DAGO_REDIS_URL", "http://127.0.0.1:6379"),
        ("DAGO_LOG_LEVEL", "LOUD"),
    ],
)
def test_invalid_setting_exits_2_naming_the_variable(var: str, value: str) -> None:
    p = dago("config", **{var: value})
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert var in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("command", ["serve", "worker", "dev"])
def test_every_command_checks_settings_before_starting(command: str) -> None:
    p = dago(command, DAGO_SHARDS="0")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "DAGO_SHARDS" in p.stderr, p.stderr


# --- dago dev -------------------------------------------------------------------------------


def start_dev(log: Path, grpc_port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    """Start ``python -m dago dev`` in its own session (so its group can be signalled)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dago", "dev"],
            env=dago_env(DAGO_GRPC_PORT=str(grpc_port), DAGO_METRICS_PORT=str(metrics_port)),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def grpcurl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``grpcurl -plaintext -max-time 20 <args>``."""
    return subprocess.run(
        [GRPCURL, "-plaintext", "-max-time", "20", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("to", ["process", "group"])
@pytest.mark.redis
@pytest.mark.edge
async def test_dev_runs_everything_and_stops_cleanly_on_sigint(to: str) -> None:
    """``to``: SIGINT to the dev process alone, or to its whole group (a terminal's Ctrl-C)."""
    grpc_port, metrics_port = free_port(), free_port()
    log = Path(tempfile.mkdtemp(prefix="dago-test-dev-")) / "dev.log"
    dev = start_dev(log, grpc_port, metrics_port)
    client = Client(f"127.0.0.1:{grpc_port}")
    kids: dict[int, str] = {}

    def output() -> str:
        return log.read_text(errors="replace")

    try:

        async def banner() -> bool:
            return "dago is running" in output() or dev.poll() is not None

        await eventually(banner, 30, 0.05)
        assert dev.poll() is None, output()
        await port_open(grpc_port)
        kids = children(dev.pid)
        assert sum("redis-server" in c for c in kids.values()) == 1, kids
        assert sum("dago serve" in c for c in kids.values()) == 1, kids
        assert sum("dago worker" in c for c in kids.values()) >= 1, kids

        listed = grpcurl(f"127.0.0.1:{grpc_port}", "list")
        assert "dago.v1.OrchestratorService" in listed.stdout, (listed, output())
        submitted = grpcurl(
            "-d",
            "@",
            f"127.0.0.1:{grpc_port}",
            "dago.v1.OrchestratorService/SubmitGraph",
            stdin=(ROOT / "examples/diamond.json").read_text(),
        )
        assert submitted.returncode == 0, (submitted, output())
        gid = json.loads(submitted.stdout)["graph_id"]
        st = await client.wait(gid, timeout=20)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, output()
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with await asyncio.to_thread(urllib.request.urlopen, url, timeout=5) as resp:
            assert resp.status == 200

        if to == "group":
            os.killpg(dev.pid, signal.SIGINT)
        else:
            dev.send_signal(signal.SIGINT)
        t0 = time.monotonic()

        async def exited() -> bool:
            return dev.poll() is not None

        await eventually(exited, 30, 0.05)
        assert dev.returncode == 0, (dev.returncode, output())
        assert time.monotonic() - t0 < 10, output()
        left = {pid: cmd for pid, cmd in kids.items() if alive(pid)}
        assert not left, f"children left running: {left}\n{output()}"
        assert "Traceback" not in output(), output()
    finally:
        await client.close()
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        for pid in kids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
