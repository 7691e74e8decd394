"""What the tests of the generated example clients (clients/go, clients/ruby) share: the request
they run, a stack that requires an API key, and the checks of their output. Each example prints
one JSON object a line: ``{"submitted": ...}``, ``{"event": ...}`` per event (no heartbeats),
``{"result": ...}``, with the proto's field names; a gRPC error goes to stderr as
``<Call>: <Code>: <message>`` and then each google.rpc detail as JSON on a line of its own,
indented by two spaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dago.api.auth import hash_key, new_key
from dago_client import AsyncDagoClient
from harness import ProcessStack, child_logs, start_api_quickly

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
TERMINAL = ("graph_completed", "graph_failed", "graph_cancelled")
_EVENT_FIELDS = {"seq", "graph_id", "time", "node_id", "attempt", "iteration", "trace_id"}


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
