"""What the tests of the generated example clients (clients/go, clients/ruby) share: the request
they run, a stack that requires an API key, and the checks of their output. Each example prints
one JSON object a line: ``{"submitted": ...}``, ``{"event": ...}`` per event (no heartbeats),
``{"result": ...}``, with the proto's field names; a gRPC error goes to stderr as
``<Call>: <Code>: <message>`` and then each google.rpc detail as JSON on a line of its own,
indented by two spaces.

The tests themselves are :class:`ExampleClientTests`, which each test file subclasses, giving
the fixture ``example`` (its client's build and command line: an :class:`Example`); the
fixtures they share (the request files, the keyed stack) are in tests/clients/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from dago.api.auth import hash_key, new_key
from dago_client import AsyncDagoClient
from harness import Edge, ProcessStack, RunningStack, child_logs, start_api_quickly
from redisfixture import RedisServer

TOPIC = "gophers"
# An echo node, then an LLM node on the offline provider (its text streams as llm_delta).
REQUEST: dict[str, Any] = {
    "graph": {
        "name": "generated-client",
        "nodes": [
            {"id": "start", "tool": {"name": "echo"}, "inputs": {"topic": "{{ inputs.topic }}"}},
            {
                "id": "write",
                "llm": {
                    "provider": "offline",
                    "prompt": "Write one line about {{ nodes.start.output.topic }}.",
                    "max_tokens": 60,
                },
            },
        ],
        "edges": [{"from": "start", "to": "write"}],
        "output": {
            "topic": "nodes.start.output.topic",
            "text": "nodes.write.output.text",
            "provider": "nodes.write.output.provider",
        },
    },
    "inputs": {"topic": TOPIC},
}
# A graph the server rejects with a google.rpc.BadRequest (an edge to no node).
BAD_REQUEST: dict[str, Any] = {
    "graph": {
        "nodes": [{"id": "a", "tool": {"name": "echo"}}],
        "edges": [{"from": "a", "to": "ghost"}],
    }
}
# A run of ~3 s (a sleep between two echoes): long enough to kill the API in the middle.
SLOW_REQUEST: dict[str, Any] = {
    "graph": {
        "name": "generated-client-slow",
        "nodes": [
            {"id": "start", "tool": {"name": "echo"}, "inputs": {"topic": TOPIC}},
            {"id": "nap", "tool": {"name": "sleep"}, "inputs": {"seconds": 3}},
            {"id": "end", "tool": {"name": "echo"}, "inputs": {"done": True}},
        ],
        "edges": [{"from": "start", "to": "nap"}, {"from": "nap", "to": "end"}],
    }
}
# How long one run of an example may take (each example is given 5 s less as its own deadline).
RUN_TIMEOUT_S = 60
TERMINAL = ("graph_completed", "graph_failed", "graph_cancelled")
_EVENT_FIELDS = {
    "seq",
    "graph_id",
    "time",
    "node_id",
    "attempt",
    "iteration",
    "instance",
    "trace_id",
}


@contextlib.asynccontextmanager
async def keyed_stack(redis_url: str, name: str) -> AsyncIterator[tuple[ProcessStack, str]]:
    """API (DAGO_AUTH=keys, one key of namespace ``name``) + worker: (the stack, the key)."""
    key = new_key()
    stack = ProcessStack(
        redis_url,
        f"t{name.replace('-', '')}{secrets.token_hex(3)}",
        DAGO_AUTH="keys",
        DAGO_API_KEYS=f"{hash_key(key)}:{name}",
    )
    try:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        yield stack, key
    finally:
        await stack.close()


def write_requests(folder: Path) -> dict[str, Path]:
    """REQUEST, BAD_REQUEST and SLOW_REQUEST as files in ``folder``:
    {"good": ..., "bad": ..., "slow": ...}."""
    bodies = {"good": REQUEST, "bad": BAD_REQUEST, "slow": SLOW_REQUEST}
    out = {n: folder / f"{n}.json" for n in bodies}
    for n, body in bodies.items():
        out[n].write_text(json.dumps(body))
    return out


def client_env(api_key: str | None = None) -> dict[str, str]:
    """An example's environment: this one's without any DAGO_ setting, but the key if given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
    if api_key is not None:
        env["DAGO_API_KEY"] = api_key
    return env


def run_example(argv: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run an example to its end (at most RUN_TIMEOUT_S), capturing its output."""
    return subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False
    )


def payload(event: dict[str, Any]) -> str:
    """The name of an Event's payload field."""
    kinds = [k for k in event if k not in _EVENT_FIELDS]
    assert len(kinds) == 1, event
    return kinds[0]


def check_run(p: subprocess.CompletedProcess[str], why: str) -> str:
    """Assert that the example ran REQUEST to completion and printed every event once, in
    order, and the result; the run's id. ``why``: more to show on failure (servers' logs)."""
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{why}"
    out = [json.loads(line) for line in p.stdout.splitlines()]
    assert [next(iter(o)) for o in (out[0], out[-1])] == ["submitted", "result"], p.stdout
    gid = out[0]["submitted"]["graph_id"]
    assert gid and out[0]["submitted"]["created"] is True, p.stdout

    assert all(next(iter(o)) == "event" for o in out[1:-1]), p.stdout
    events = [o["event"] for o in out[1:-1]]
    kinds = [payload(e) for e in events]
    assert kinds[0] == "graph_submitted" and kinds[-1] == "graph_completed", kinds
    assert not set(kinds[:-1]) & set(TERMINAL), kinds
    assert "heartbeat" not in kinds, kinds
    # Each event once, in order (int64 seqs are JSON strings in the proto's JSON form).
    assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1)), kinds
    assert {e["graph_id"] for e in events} == {gid}
    completed = [e["node_id"] for e in events if payload(e) == "node_completed"]
    assert completed == ["start", "write"], kinds
    streamed = "".join(e["llm_delta"].get("text", "") for e in events if payload(e) == "llm_delta")

    result = out[-1]["result"]
    assert result["graph_id"] == gid
    assert result["state"] == "GRAPH_STATE_COMPLETED", result
    output = result["output"]
    assert output["topic"] == TOPIC and output["provider"] == "offline", output
    # The model's text arrived as llm_delta events and is the result's text.
    assert streamed and output["text"] == streamed, (streamed, output)
    return str(gid)


def check_unauthenticated(p: subprocess.CompletedProcess[str]) -> None:
    """The example, given no key by a server that requires one: exit 1, nothing submitted."""
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"
    assert "SubmitGraph: Unauthenticated" in p.stderr, p.stderr
    assert p.stdout == "", p.stdout


def check_rejected(p: subprocess.CompletedProcess[str]) -> None:
    """The example on BAD_REQUEST: exit 1, and the BadRequest's field violation decoded."""
    assert p.returncode == 1, f"{p.stdout}\n{p.stderr}"
    assert "SubmitGraph: InvalidArgument" in p.stderr, p.stderr
    details = [json.loads(line) for line in p.stderr.splitlines() if line.startswith("  {")]
    violations = [v for d in details for v in d.get("field_violations", [])]
    assert any(
        v["field"] == "graph.edges[0].to" and "ghost" in v["description"] for v in violations
    ), p.stderr


async def run_across_api_restart(
    argv: Sequence[str], env: dict[str, str], stack: ProcessStack, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run an example on SLOW_REQUEST against ``stack``'s API; once it printed the start of
    node ``nap``, SIGKILL the API and start it again on the same port. Then assert that the
    example resumed the watch and printed the stored events exactly once each, in order."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[str] = []

    async def until_nap_started() -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            lines.append(line)
            ev = json.loads(line).get("event", {})
            if ev.get("node_id") == "nap" and "node_started" in ev:
                return
        raise AssertionError("the example ended before node nap started")

    try:
        await asyncio.wait_for(until_nap_started(), timeout)
        stack.signal("api", signal.SIGKILL)
        await start_api_quickly(stack)
        rest, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"{''.join(lines)}{out.decode()}\n{err.decode()}\n{child_logs(stack)}"
        ) from None
    assert proc.returncode is not None
    p = subprocess.CompletedProcess(
        list(argv), proc.returncode, "".join(lines) + rest.decode(), err.decode()
    )
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{child_logs(stack)}"
    assert "resuming after seq" in p.stderr, p.stderr
    out = [json.loads(line) for line in p.stdout.splitlines()]
    gid = out[0]["submitted"]["graph_id"]
    printed = [(int(o["event"]["seq"]), payload(o["event"])) for o in out[1:-1]]
    assert out[-1]["result"]["state"] == "GRAPH_STATE_COMPLETED", p.stdout
    async with AsyncDagoClient(f"127.0.0.1:{stack.port}") as dago:
        stored = [
            (e.seq, str(e.WhichOneof("payload")))
            async for e in dago.list_events(gid)
            if e.WhichOneof("payload") != "heartbeat"
        ]
    assert printed == stored, (printed, stored)
    assert stored[-1][1] == "graph_completed", stored
    return p


class Example(Protocol):
    """A generated example client, built and ready to run."""

    def argv_env(
        self, target: str, request: Path, api_key: str | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """Its command line on ``request`` against ``target`` (host:port), with its
        deadline RUN_TIMEOUT_S - 5 s, and its environment (:func:`client_env`)."""
        ...


def run_client(
    example: Example, target: str, request: Path, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv, env = example.argv_env(target, request, api_key)
    return run_example(argv, env)


class ExampleClientTests:
    """The tests of a generated example client, against real stacks. A test module subclasses
    it (``class TestGoClient(ExampleClientTests)``) and defines the fixture ``example``."""

    def test_on_the_api_port(
        self, example: Example, requests: dict[str, Path], edge_stack: Edge
    ) -> None:
        target = f"127.0.0.1:{edge_stack.stack.port}"
        check_run(run_client(example, target, requests["good"]), edge_stack.logs())

    def test_through_envoy(
        self, example: Example, requests: dict[str, Path], edge_stack: Edge
    ) -> None:
        # Envoy alone listens there: native gRPC (HTTP/2) shares its port with gRPC-Web and
        # REST, and heartbeats keep the watch open across its 1 s stream idle timeout.
        target = f"127.0.0.1:{edge_stack.port}"
        check_run(run_client(example, target, requests["good"]), edge_stack.logs())

    def test_sends_the_api_key(
        self, example: Example, requests: dict[str, Path], keyed: tuple[ProcessStack, str]
    ) -> None:
        stack, key = keyed
        target = f"127.0.0.1:{stack.port}"
        check_run(run_client(example, target, requests["good"], api_key=key), child_logs(stack))
        check_unauthenticated(run_client(example, target, requests["good"]))

    def test_prints_the_field_violations(
        self, example: Example, requests: dict[str, Path], edge_stack: Edge
    ) -> None:
        target = f"127.0.0.1:{edge_stack.stack.port}"
        check_rejected(run_client(example, target, requests["bad"]))

    async def test_resumes_the_watch_when_the_api_restarts(
        self,
        example: Example,
        requests: dict[str, Path],
        redis_single: RedisServer,
        key_prefix: str,
    ) -> None:
        async with RunningStack(redis_single.url, key_prefix) as stack:
            stack.start("w1", "worker")
            await start_api_quickly(stack)
            argv, env = example.argv_env(f"127.0.0.1:{stack.port}", requests["slow"])
            await run_across_api_restart(argv, env, stack)
