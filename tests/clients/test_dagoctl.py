"""``dagoctl`` (python -m dago_client, and .venv/bin/dagoctl from make setup) against a real
stack: every command, its output and its exit code; human YAML graph files; the live view
on a terminal (a pty) and as plain lines; Mermaid and DOT (parsed by pydot) of files and of
runs with their node states as colours."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydot
import pytest

from dago.api.auth import hash_key, new_key
from dago_client import AsyncDagoClient
from dago_client.cli import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_PRECONDITION,
    EXIT_UNAVAILABLE,
)
from dago_client.render import STATE_COLOURS
from harness import (
    ROOT,
    InProcessStack,
    MakeStack,
    RunningStack,
    eventually,
    free_port,
    stack_settings,
    start_api_quickly,
)
from obshelpers import TOOLS, marker
from redisfixture import RedisServer

pytestmark = [
    pytest.mark.process,  # every test runs dagoctl (python -m dago_client) as a process
    # pydot 4 still calls pyparsing's old camelCase names.
    pytest.mark.filterwarnings("ignore:'\\w+' deprecated:DeprecationWarning:pydot.dot_parser"),
]

PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in ("gen/python", "clients/python"))
EXAMPLES = ROOT / "examples"

HUMAN_YAML = """\
# A graph as a person writes it: nodes by id, `tool: echo`, edges as strings.
name: greet
nodes:
  hello:
    tool: echo
    inputs: {greeting: "hello {{ inputs.who }}", times: "{{ inputs.times }}"}
  shout:
    tool: echo
    inputs: {loud: "{{ nodes.hello.output.greeting + '!' }}"}
    attempt_timeout: 10
edges:
  - hello -> shout
inputs: {who: nobody, times: 1}
"""


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack()


class Ctl:
    """Runs dagoctl as a child process against one stack (without blocking its event loop)."""

    def __init__(self, target: str) -> None:
        self.target = target
        base = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
        self.env = {**base, "PYTHONPATH": PYTHONPATH, "DAGO_TARGET": target, "NO_COLOR": "1"}

    async def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dago_client",
            *args,
            env=self.env,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()


def ctl_for(stack: InProcessStack) -> Ctl:
    return Ctl(f"127.0.0.1:{stack.port}")


async def test_submit_and_watch_an_example_in_plain_lines(stack: InProcessStack) -> None:
    ctl = ctl_for(stack)
    code, out, err = await ctl("submit", str(EXAMPLES / "research.json"), "--watch")
    assert code == 0, err
    gid = out.splitlines()[0].strip()
    assert re.fullmatch(r"[\w-]+", gid), out
    for want in (
        f"graph {gid} submitted",
        "strengths: started, attempt 1",
        "risks: completed in",
        "summary | [offline]",  # the streamed model text, line by line
        "summary: usage ",
        "graph completed",
        f"run {gid} COMPLETED",
        "3 completed",
        "input +",
    ):
        assert want in out, f"{want!r} not in:\n{out}"
    # The same run's status and result.
    code, out, _ = await ctl("status", gid)
    assert code == 0
    assert "state    COMPLETED" in out
    assert re.search(r"(?m)^summary\s+completed\s+1\s+\d+ms", out), out
    code, out, _ = await ctl("result", gid)
    assert code == 0
    assert "[offline]" in json.loads(out)["summary"]
    code, out, _ = await ctl("-o", "json", "result", gid)
    assert json.loads(out)["state"] == "GRAPH_STATE_COMPLETED"


async def test_submit_with_a_priority(stack: InProcessStack) -> None:
    ctl = ctl_for(stack)
    code, out, err = await ctl("submit", str(EXAMPLES / "research.json"), "--priority", "4")
    assert code == 0, err
    assert (await stack.client.status(out.strip())).priority == 4
    code, _, err = await ctl("submit", str(EXAMPLES / "research.json"), "--priority", "9")
    assert code != 0 and "--priority" in err, err


async def test_a_human_yaml_file_with_inputs(stack: InProcessStack, tmp_path: Path) -> None:
    ctl = ctl_for(stack)
    path = tmp_path / "greet.yaml"
    path.write_text(HUMAN_YAML)
    code, out, err = await ctl("validate", str(path))
    assert code == 0, err
    assert out.strip() == "valid: greet (2 nodes, 1 edge)"
    code, out, err = await ctl(
        "submit", str(path), "-i", "who=world", "--input", "times=3", "--wait"
    )
    assert code == 0, err
    gid = out.strip()
    code, out, _ = await ctl("result", gid)
    assert json.loads(out) == {"shout": {"loud": "hello world!"}}
    code, out, _ = await ctl("-o", "json", "status", gid)
    status = json.loads(out)
    hello = next(n for n in status["nodes"] if n["node_id"] == "hello")
    assert hello["output"] == {"greeting": "hello world", "times": 3}
    # From stdin too.
    code, out, err = await ctl("submit", "-", "--wait", stdin=HUMAN_YAML)
    assert code == 0, err


async def test_invalid_input_exits_5_with_the_field_violations(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ctl = ctl_for(stack)
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: {tool: echo}\nedges: ['a -> b']\n")
    code, out, err = await ctl("validate", str(bad))
    assert code == EXIT_INVALID and out == ""
    assert "INVALID_ARGUMENT" in err and "graph.edges[0].to:" in err, err
    code, _, err = await ctl("submit", str(bad))
    assert code == EXIT_INVALID and "graph.edges[0].to:" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    code, _, err = await ctl("validate", str(broken))
    assert code == EXIT_INVALID and "not valid JSON" in err
    code, _, err = await ctl("submit", str(tmp_path / "missing.yaml"))
    assert code == EXIT_INVALID and "missing.yaml" in err
    # A bare file name that is not there (a typo, another folder) is a missing file, not a
    # definition or a run that does not exist.
    for command in ("submit", "render"):
        code, _, err = await ctl(command, "missing.yaml")
        assert code == EXIT_INVALID and "missing.yaml: No such file" in err, (command, err)
    code, _, err = await ctl("validate", str(EXAMPLES / "diamond.json"), "-i", "novalue")
    assert code == EXIT_INVALID and "expected key=value" in err
    odd = tmp_path / "odd.yaml"
    odd.write_text("nodes: [{id: a, tool: echo, colour: red}]\n")
    code, _, err = await ctl("validate", str(odd))
    assert code == EXIT_INVALID and "colour" in err


async def test_schema_typos_name_the_path_the_node_and_the_nearest_name(
    stack: InProcessStack, tmp_path: Path
) -> None:
    # Not protobuf's raw ParseError (camelCase names, an index, no suggestion, the first
    # problem only): every problem, each with its path, the node's id and the nearest name.
    ctl = ctl_for(stack)
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "nodes:\n"
        "  a: {tool: echo}\n"
        "  b: {tol: {name: echo}, join: ANY, retry: {maxAtempts: 2}}\n"
        "edges: ['a -> b']\n"
    )
    code, out, err = await ctl("validate", str(typo))
    assert code == EXIT_INVALID and out == "", err
    assert 'graph.nodes[1].tol: unknown field "tol" in node "b"; did you mean "tool"?' in err
    assert "(valid: id, name, description, inputs, output, retry, attempt_timeout, join," in err
    assert (
        'graph.nodes[1].join: unknown value "ANY" for join in node "b"; did you mean '
        '"JOIN_MODE_ANY"? (valid: JOIN_MODE_ALL, JOIN_MODE_ANY)' in err
    ), err
    assert 'graph.nodes[1].retry.maxAtempts: unknown field "maxAtempts" in node "b"' in err
    assert 'did you mean "max_attempts"?' in err
    assert "Available Fields" not in err and "maxIterations" not in err, err

    # What only protobuf's parser checks (a duration's format) still names the field.
    late = tmp_path / "late.yaml"
    late.write_text("nodes:\n  a: {tool: echo, attempt_timeout: soon}\n")
    code, _, err = await ctl("validate", str(late))
    assert code == EXIT_INVALID and "graph.nodes[0].attempt_timeout: " in err, err


async def test_cancel_result_and_exit_codes_by_state(stack: InProcessStack, tmp_path: Path) -> None:
    ctl = ctl_for(stack)
    slow = tmp_path / "slow.yaml"
    slow.write_text("nodes: {nap: {tool: sleep, inputs: {seconds: 30}}}\n")
    code, out, _ = await ctl("submit", str(slow))
    assert code == 0
    gid = out.strip()
    code, _, err = await ctl("result", gid)
    assert code == EXIT_PRECONDITION and "FAILED_PRECONDITION" in err
    code, out, _ = await ctl("cancel", gid, "--reason", "enough")
    assert code == 0 and out.strip() == f"{gid} cancelled"
    code, out, err = await ctl("result", gid)
    assert code == EXIT_CANCELLED and "cancelled: " in err
    code, out, _ = await ctl("watch", gid)
    assert code == EXIT_CANCELLED
    assert "graph cancelled (enough)" in out and f"run {gid} CANCELLED" in out

    failing = tmp_path / "fail.yaml"
    failing.write_text("nodes: {boom: {tool: fail}}\n")
    code, out, _ = await ctl("submit", str(failing), "--wait")
    assert code == EXIT_FAILED
    code, out, _ = await ctl("watch", out.strip(), "--plain")
    assert code == EXIT_FAILED and "boom: FAILED" in out and "graph FAILED" in out

    code, out, _ = await ctl("submit", str(EXAMPLES / "diamond.json"), "--wait")
    done = out.strip()
    code, _, err = await ctl("cancel", done)
    assert code == EXIT_PRECONDITION and "FAILED_PRECONDITION" in err
    code, _, err = await ctl("status", "no-such-run")
    assert code == EXIT_NOT_FOUND and "NOT_FOUND" in err
    code, _, err = await ctl("watch", "no-such-run")
    assert code == EXIT_NOT_FOUND


async def test_list_pages_and_filters(stack: InProcessStack) -> None:
    ctl = ctl_for(stack)
    ids = []
    for _ in range(5):
        code, out, _ = await ctl("submit", str(EXAMPLES / "diamond.json"), "--wait")
        assert code == 0
        ids.append(out.strip())
    code, out, _ = await ctl("list", "--status", "completed", "--limit", "0", "--page-size", "2")
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split()[:3] == ["GRAPH", "ID", "STATE"]
    assert [r.split()[0] for r in rows[1:]] == list(reversed(ids))
    assert all(" completed " in r and r.endswith("diamond") for r in rows[1:])
    code, out, _ = await ctl("-o", "json", "list", "--limit", "3", "--page-size", "2")
    assert [g["graph_id"] for g in json.loads(out)] == list(reversed(ids))[:3]
    code, out, _ = await ctl("list", "--status", "failed")
    assert code == 0 and len(out.splitlines()) == 1
    code, _, err = await ctl("list", "--status", "sleepy")
    assert code == 2 and "unknown state" in err


async def test_json_output_before_or_after_the_command(stack: InProcessStack) -> None:
    ctl = ctl_for(stack)
    code, out, err = await ctl("submit", str(EXAMPLES / "diamond.json"), "--wait", "-o", "json")
    assert code == 0, err
    gid = json.loads(out)["graph_id"]
    for command in (["status", gid], ["result", gid], ["list", "--limit", "1"], ["workers"]):
        code, before, err = await ctl("-o", "json", *command)
        assert code == 0, err
        code, after, err = await ctl(*command, "-o", "json")
        assert code == 0, err
        code, long_form, err = await ctl(*command, "--output=json")
        assert code == 0, err
        if command[0] == "workers":  # heartbeat times move between calls: compare the ids
            before, after, long_form = (
                json.dumps([w["worker_id"] for w in json.loads(x)])
                for x in (before, after, long_form)
            )
        assert json.loads(after) == json.loads(before) == json.loads(long_form), command
    code, out, _ = await ctl("status", gid, "-o", "json")
    assert json.loads(out)["state"] == "GRAPH_STATE_COMPLETED"
    code, out, _ = await ctl("list", "-o", "json", "--limit", "1")
    assert [g["graph_id"] for g in json.loads(out)] == [gid]
    for command in (["dead-letters", "-o", "json"], ["dead-letters", "list", "-o", "json"]):
        code, out, err = await ctl(*command)
        assert code == 0 and json.loads(out) == [], err
    # Text stays the default when -o is given nowhere, and a bad value is a usage error.
    code, out, _ = await ctl("status", gid)
    assert code == 0 and not out.lstrip().startswith("{")
    code, _, err = await ctl("status", gid, "-o", "yaml")
    assert code == 2 and "invalid choice" in err


async def test_render_mermaid_and_dot_of_files_and_runs(stack: InProcessStack) -> None:
    ctl = ctl_for(stack)
    for example in sorted(EXAMPLES.glob("*.json")):
        graph = json.loads(example.read_text())["graph"]
        ids = {n["id"] for n in graph["nodes"]}
        code, out, err = await ctl("render", str(example), "--format", "mermaid")
        assert code == 0, err
        check_mermaid(out, ids, len(graph.get("edges", [])))
        code, out, err = await ctl("render", str(example), "-f", "dot")
        assert code == 0, err
        nodes, edges = parse_dot(out)
        assert set(nodes) == ids and len(edges) == len(graph.get("edges", []))

    code, out, _ = await ctl("submit", str(EXAMPLES / "triage.json"), "--wait")
    gid = out.strip()
    code, out, _ = await ctl("render", gid, "-f", "dot")
    nodes, _ = parse_dot(out)
    code, status, _ = await ctl("-o", "json", "status", gid)
    states = {
        n["node_id"]: n["state"].removeprefix("NODE_STATE_").lower()
        for n in json.loads(status)["nodes"]
    }
    assert set(states.values()) == {"completed", "skipped"}, states
    for node_id, state in states.items():
        assert nodes[node_id]["fillcolor"] == f'"{STATE_COLOURS[state][0]}"', (node_id, out)
    code, out, _ = await ctl("render", gid)
    check_mermaid(out, set(states), 4)
    for node_id, state in states.items():
        assert f"    class n_{node_id} {state}" in out.splitlines()


async def test_live_view_on_a_terminal(stack: InProcessStack) -> None:
    """On a tty the view redraws a table in place (ANSI), then prints the summary."""
    target = f"127.0.0.1:{stack.port}"

    def run() -> tuple[int, str]:
        master, slave = pty.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
        env.update(PYTHONPATH=PYTHONPATH, DAGO_TARGET=target, COLUMNS="120", LINES="40")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dago_client", "submit", str(EXAMPLES / "triage.json"), "-w"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            cwd=ROOT,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        return proc.wait(30), b"".join(chunks).decode(errors="replace")

    code, screen = await asyncio.to_thread(run)
    assert code == 0, screen
    assert "\x1b[" in screen  # redrawn in place, states coloured
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen)
    assert re.search(r"NODE\s+KIND\s+STATE\s+ATT\s+DURATION\s+TOKENS\s+COST", plain), plain
    # The router's decision is in its row's note.
    assert re.search(r"triage\s+router:hybrid\s+completed.*route billing", plain), plain
    assert "── model output ──" in plain and "billing_reply: [offline]" in plain
    assert re.search(r"run \S+ COMPLETED in [\d.]+s: 2 completed, 3 skipped", plain), plain


async def test_unreachable_server_exits_7() -> None:
    ctl = Ctl(f"127.0.0.1:{free_port()}")
    code, _, err = await ctl("--timeout", "1", "status", "x")
    assert code == EXIT_UNAVAILABLE
    assert "UNAVAILABLE" in err and "make run" in err


async def test_the_installed_dagoctl_command(stack: InProcessStack) -> None:
    exe = ROOT / ".venv" / "bin" / "dagoctl"
    assert exe.exists(), "make setup installs .venv/bin/dagoctl (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["DAGO_TARGET"] = f"127.0.0.1:{stack.port}"
    proc = await asyncio.create_subprocess_exec(
        str(exe),
        "submit",
        str(EXAMPLES / "loop.json"),
        "--wait",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    gid = out.decode().strip()

    async def listed() -> bool:
        code, text, _ = await ctl_for(stack)("list")
        return code == 0 and gid in text

    await eventually(listed, 10)


async def test_workers_table_while_a_worker_runs(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    settings = stack_settings(redis_single.url, key_prefix, worker_heartbeat_ms=100)
    async with InProcessStack(settings) as s:
        ctl = ctl_for(s)
        slow = tmp_path / "slow.yaml"
        slow.write_text("nodes: {nap: {tool: sleep, inputs: {seconds: 30}}}\n")
        code, out, _ = await ctl("submit", str(slow))
        assert code == 0
        gid = out.strip()
        rows: list[list[str]] = []

        async def in_flight() -> bool:
            code, out, err = await ctl("workers")
            assert code == 0, err
            rows[:] = [line.split() for line in out.splitlines()]
            return len(rows) == 2 and rows[1][3] == "1"

        await eventually(in_flight, 20, 0.1)
        assert rows[0] == ["WORKER", "ID", "HOST", "SLOTS", "IN", "FLIGHT", "HEARTBEAT", "KINDS"]
        wid, host, slots, _, age, ago, kinds = rows[1]
        assert (wid, host, slots, ago) == ("w0", socket.gethostname(), "64", "ago")
        assert re.fullmatch(r"\d+\.\ds", age) and float(age[:-1]) < 5, age
        assert {"tool", "llm", "http", "router"} <= set(kinds.split(",")), kinds
        code, out, _ = await ctl("-o", "json", "workers")
        (w,) = json.loads(out)
        assert (w["worker_id"], w["slots"], w["pid"]) == ("w0", 64, os.getpid())
        assert w["last_heartbeat_time"].endswith("Z")
        code, _, _ = await ctl("cancel", gid)
        assert code == 0


POISON_YAML = """\
name: poison
nodes:
  p: {{tool: die, inputs: {{marker: "{marker}"}}}}
  after: {{tool: echo, inputs: {{x: "{{{{ nodes.p.output }}}}"}}}}
edges: [p -> after]
"""


async def test_dead_letters_listed_requeued_and_dropped(
    redis_single: RedisServer, key_prefix: str, tmp_path: Path
) -> None:
    env = {"DAGO_MAX_DELIVERIES": "1", "DAGO_TOOL_MODULES": TOOLS, "DAGO_AUTH": "off"}
    async with RunningStack(redis_single.url, key_prefix, **env) as stack:
        for name in ("w1", "w2", "w3"):  # at most two die (first deliveries only)
            stack.start(name, "worker")
        await start_api_quickly(stack)
        ctl = Ctl(f"127.0.0.1:{stack.port}")
        gids: dict[str, str] = {}
        marks: dict[str, Path] = {}
        for name in ("a", "b"):
            marks[name] = marker(tmp_path, name)
            graph = tmp_path / f"{name}.yaml"
            graph.write_text(POISON_YAML.format(marker=marks[name]))
            code, out, err = await ctl("submit", str(graph))
            assert code == 0, err
            gids[name] = out.strip()
        letters: dict[str, dict[str, Any]] = {}
        newest_first: list[str] = []  # dead letter ids in the order listed

        async def both_dead() -> bool:
            code, out, err = await ctl("-o", "json", "dead-letters")
            assert code == 0, err
            listed = json.loads(out)
            letters.clear()
            letters.update({d["graph_id"]: d for d in listed})
            newest_first[:] = [d["dead_letter_id"] for d in listed]
            return set(letters) == set(gids.values())

        await eventually(both_dead, 30, 0.2)
        a, b = letters[gids["a"]], letters[gids["b"]]
        assert (a["node_id"], a["attempt"], a["deliveries"], a["current"]) == ("p", 1, 2, True)
        assert a["error"]["error_class"] == "ERROR_CLASS_DEAD_LETTER"

        # The table, newest first, and the --graph filter (before or after `list`).
        code, out, _ = await ctl("dead-letters")
        rows = out.splitlines()
        assert rows[0].split()[:5] == ["DEAD", "LETTER", "ID", "GRAPH", "ID"]
        assert [r.split()[0] for r in rows[1:]] == newest_first
        assert {tuple(r.split()[:2]) for r in rows[1:]} == {
            (b["dead_letter_id"], gids["b"]),
            (a["dead_letter_id"], gids["a"]),
        }
        for row in rows[1:]:
            _, _, node, att, deliv, _, _, waiting, *error = row.split()
            assert (node, att, deliv, waiting) == ("p", "1", "2", "yes"), row
            assert "2 times" in " ".join(error), row
        for args in (("--graph", gids["a"]), ("--graph", gids["a"], "list")):
            code, out, _ = await ctl("dead-letters", *args)
            assert [r.split()[0] for r in out.splitlines()[1:]] == [a["dead_letter_id"]]
        code, out, _ = await ctl("-o", "json", "dead-letters", "list", "--limit", "1")
        assert [d["dead_letter_id"] for d in json.loads(out)] == newest_first[:1]
        # The run waits (its node DEAD_LETTERED), and the async client pages over both.
        code, out, _ = await ctl("status", gids["a"])
        assert "state    RUNNING" in out and re.search(r"(?m)^p\s+dead_lettered\s", out), out
        async with AsyncDagoClient(f"127.0.0.1:{stack.port}") as dago:
            paged = [d.dead_letter_id async for d in dago.dead_letters(page_size=1)]
        assert paged == newest_first

        # Requeue A once its poison is cured: the run completes; a second requeue is 404.
        marks["a"].unlink()
        code, out, err = await ctl("dead-letters", "requeue", a["dead_letter_id"])
        assert code == 0, err
        assert out.strip() == f"requeued {a['dead_letter_id']}: run {gids['a']} goes on"
        code, out, err = await ctl("watch", gids["a"], "--plain")
        assert code == 0, err
        for want in (
            "p: DEAD-LETTERED after 2 deliveries",
            f"p: requeued from dead letter {a['dead_letter_id']}",
            "after: completed in",
            f"run {gids['a']} COMPLETED",
        ):
            assert want in out, f"{want!r} not in:\n{out}"
        code, _, err = await ctl("dead-letters", "requeue", a["dead_letter_id"])
        assert code == EXIT_NOT_FOUND and "NOT_FOUND" in err

        # Drop B: its node and its run fail.
        code, out, err = await ctl("-o", "json", "dead-letters", "drop", b["dead_letter_id"])
        assert code == 0, err
        assert json.loads(out) == {"failed_node": True}
        code, out, err = await ctl("result", gids["b"])
        assert code == EXIT_FAILED and "dropped" in err, err
        code, out, _ = await ctl("dead-letters")
        assert code == 0 and len(out.splitlines()) == 1, out
        code, _, err = await ctl("dead-letters", "drop", b["dead_letter_id"])
        assert code == EXIT_NOT_FOUND


# --- structure checks -------------------------------------------------------------------------

NODE_LINE = re.compile(r'^    n_(\w+)(\["[^"\n]*"\]|\{"[^"\n]*"\})$')
EDGE_LINE = re.compile(r'^    n_(\w+) -->(\|"[^"|\n]*"\|)? n_(\w+)$')
CLASSDEF = re.compile(
    r"^    classDef \w+ fill:#[0-9a-f]{6},stroke:#[0-9a-f]{6},color:#000"
    r"(,stroke-dasharray:\d+ \d+)?$"
)
CLASS = re.compile(r"^    class n_(\w+) (\w+)$")


def check_mermaid(text: str, ids: set[str], edges: int) -> None:
    """A flowchart whose every line is a node, edge or class statement over known nodes."""
    lines = text.rstrip("\n").split("\n")
    assert lines[0] == "flowchart TD", text
    declared: set[str] = set()
    seen_edges = 0
    for line in lines[1:]:
        if m := NODE_LINE.match(line):
            declared.add(m.group(1))
        elif m := EDGE_LINE.match(line):
            assert {m.group(1), m.group(3)} <= declared, line
            seen_edges += 1
        elif m := CLASS.match(line):
            assert m.group(1) in declared and m.group(2) in STATE_COLOURS, line
        else:
            assert CLASSDEF.match(line), f"not Mermaid flowchart syntax: {line!r}"
    assert declared == ids and seen_edges == edges, text


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """Nodes (with attributes) and edges of a DOT digraph, parsed by pydot."""
    graphs = pydot.graph_from_dot_data(text)
    assert graphs and len(graphs) == 1, text
    g = graphs[0]
    assert g.get_type() == "digraph"
    nodes = {
        n.get_name().strip('"'): n.get_attributes()
        for n in g.get_nodes()
        if n.get_name() not in ("node", "edge", "graph")
    }
    edges = [(e.get_source().strip('"'), e.get_destination().strip('"')) for e in g.get_edges()]
    assert all(a in nodes and b in nodes for a, b in edges), text
    return nodes, edges


async def test_list_by_name_metadata_and_time(stack: InProcessStack, tmp_path: Path) -> None:
    ctl = ctl_for(stack)
    ids = {}
    for team in ("search", "ads"):
        doc = json.loads((EXAMPLES / "diamond.json").read_text())
        doc["graph"]["name"] = f"team-{team}"
        doc["graph"]["metadata"] = {"team": team, "tier": 1}
        (tmp_path / f"{team}.json").write_text(json.dumps(doc))
        code, out, _ = await ctl("submit", str(tmp_path / f"{team}.json"), "--wait")
        assert code == 0
        ids[team] = out.strip()
    code, out, _ = await ctl("-o", "json", "list", "--name", "team-ads")
    assert [g["graph_id"] for g in json.loads(out)] == [ids["ads"]]
    code, out, _ = await ctl("-o", "json", "list", "--meta", "team=search", "--meta", "tier=1")
    assert [g["graph_id"] for g in json.loads(out)] == [ids["search"]]
    code, out, _ = await ctl("list", "--until", "2000-01-01", "--since", "1999-01-01")
    assert code == 0 and len(out.splitlines()) == 1  # the header alone
    code, out, _ = await ctl("list", "--since", "2000-01-01T00:00:00Z", "--name", "team-search")
    rows = out.splitlines()
    assert rows[0].split()[-3:] == ["COST", "USD", "NAME"] and len(rows) == 2
    assert rows[1].split()[-2:] == ["0.0000", "team-search"]
    code, _, err = await ctl("list", "--meta", "team")
    assert code == 2 and "KEY=VALUE" in err
    # Usage summaries are computed over the history database, which this stack has not.
    code, _, err = await ctl("usage", "--group-by", "day")
    assert code == 8 and "DAGO_POSTGRES_URL" in err
    code, _, err = await ctl("usage", "--group-by", "week")
    assert code == 2 and "unknown grouping" in err


async def test_waits_and_signal(stack: InProcessStack) -> None:
    ctl = ctl_for(stack)
    code, out, err = await ctl("submit", str(EXAMPLES / "approval.json"))
    assert code == 0, err
    gid = out.splitlines()[0].strip()

    async def listed() -> bool:
        code, out, _ = await ctl("-o", "json", "waits")
        return code == 0 and [w["graph_id"] for w in json.loads(out)] == [gid]

    await eventually(listed, 20, 0.2)
    code, out, _ = await ctl("waits")
    assert code == 0 and gid in out and "approve|reject|edit" in out, out
    code, _, err = await ctl("signal", gid, "review", "maybe")
    assert code == EXIT_INVALID and "decision" in err, err
    code, _, err = await ctl("signal", gid, "review", "edit", "--payload", "{not json")
    assert code == 2 and "--payload" in err, err
    code, out, err = await ctl(
        "signal", gid, "review", "approve", "--comment", "ship it", "--signal-id", "c1"
    )
    assert code == 0 and f"approve recorded for review (iteration 1) of {gid}" in out, err
    code, _, err = await ctl("signal", gid, "review", "reject")
    # Refused, naming the winner: ABORTED while the run goes on, FAILED_PRECONDITION once it
    # ended (publishing is quick); both exit 8.
    assert code == EXIT_PRECONDITION and "'approve' by" in err, err
    code, out, err = await ctl("watch", gid)
    assert code == 0, err
    assert "review: waiting for a decision (approve, reject, edit)" in out, out
    assert "review: decision 'approve' by anonymous: \"ship it\"" in out, out


async def test_submit_wait_says_what_a_waiting_run_needs(
    stack: InProcessStack, tmp_path: Path
) -> None:
    """``submit --wait`` is silent, but not about a run that waits for someone: a wait
    node's decision and a budget pause are said on stderr with the command that moves the
    run on, so a newcomer does not take it for a hung command."""
    ctl = ctl_for(stack)
    async with AsyncDagoClient(f"127.0.0.1:{stack.port}") as dago:
        waiting = asyncio.create_task(ctl("submit", str(EXAMPLES / "approval.json"), "--wait"))

        async def one_wait() -> bool:
            return bool([w async for w in dago.waits()])

        await eventually(one_wait, 20, 0.05)
        (w,) = [w async for w in dago.waits()]
        await dago.signal(w.graph_id, "review", "approve")
        code, out, err = await waiting
        assert code == 0 and out.strip() == w.graph_id, err
        assert "review: waiting for a decision (approve, reject, edit)" in err, err
        assert f"(dagoctl signal {w.graph_id} review <decision>)" in err, err

        budget = tmp_path / "budget.yaml"
        budget.write_text(
            "nodes: {ask: {llm: {prompt: 'a haiku about queues'}}}\n"
            "limits: {max_tokens: 50, on_exceed: LIMIT_ACTION_PAUSE}\n"
        )
        paused = asyncio.create_task(ctl("submit", str(budget), "--wait"))

        async def one_paused() -> bool:
            return len([g async for g in dago.list_graphs(state="paused")]) == 1

        await eventually(one_paused, 20, 0.05)
        (run,) = [g async for g in dago.list_graphs(state="paused")]
        code, out, _ = await ctl("status", run.graph_id)
        assert code == 0 and "state    PAUSED" in out, out
        assert "paused   a model call did not fit in the run's limits (max_tokens 50)" in out
        await dago.update_limits(run.graph_id, max_tokens=100_000)
        code, _, err = await paused
    assert code == 0, err
    assert "ask: run paused" in err, err
    assert f"(raise the limit to resume: dagoctl limits {run.graph_id} --max-tokens N)" in err


async def test_status_of_a_fork_names_its_source_and_the_reused_nodes(
    stack: InProcessStack,
) -> None:
    ctl = ctl_for(stack)
    code, out, err = await ctl("submit", str(EXAMPLES / "diamond.json"), "--wait")
    assert code == 0, err
    gid = out.strip()
    code, out, err = await ctl("fork", gid, "--from", "join")
    assert code == 0, err
    new = out.strip()
    code, _, err = await ctl("watch", new)
    assert code == 0, err
    code, out, _ = await ctl("status", new)
    assert code == 0 and f"forked   from {gid} (3 node(s) reused)" in out, out
    rows = {ln.split()[0]: ln for ln in out.splitlines()[out.splitlines().index("") + 2 :]}
    for node in ("start", "left", "right"):
        assert rows[node].endswith(f"reused from {gid}"), out
    assert "reused" not in rows["join"], out


async def test_definitions_publish_label_show_deprecate_and_submit_by_name(
    stack: InProcessStack, tmp_path: Path
) -> None:
    ctl = ctl_for(stack)
    path = tmp_path / "hello.yaml"
    path.write_text(HUMAN_YAML)
    code, out, err = await ctl(
        "def", "publish", str(path), "--name", "hello", "--description", "v1"
    )
    assert code == 0 and out.startswith("published hello@1"), err
    code, out, _ = await ctl("def", "publish", str(path), "--name", "hello")
    assert code == 0 and out.startswith("unchanged (same as the latest): hello@1"), out
    path.write_text(HUMAN_YAML.replace("attempt_timeout: 10", "attempt_timeout: 11"))
    code, out, _ = await ctl("def", "publish", str(path), "--name", "hello")
    assert out.startswith("published hello@2"), out
    code, out, err = await ctl("def", "label", "hello", "prod", "1")
    assert code == 0 and "prod -> hello@1" in out, err
    code, out, _ = await ctl("def", "show", "hello@prod")
    assert "definition  hello@1" in out and "labels      prod" in out, out
    code, out, _ = await ctl("-o", "json", "def", "list")
    assert [(d["name"], d["latest_version"]) for d in json.loads(out)] == [("hello", 2)]
    code, out, err = await ctl("submit", "hello@prod", "--wait", "-i", "who=ctl", "-i", "times=2")
    assert code == 0, err
    gid = out.strip()
    code, out, _ = await ctl("-o", "json", "status", gid)
    assert json.loads(out)["definition"]["version"] == 1
    code, out, _ = await ctl("status", gid)
    assert "from     hello@1 (digest " in out, out
    code, out, _ = await ctl("-o", "json", "list", "--definition", "hello@1")
    assert [g["graph_id"] for g in json.loads(out)] == [gid]
    code, out, err = await ctl(
        "submit", "hello", "--watch", "--plain", "-i", "who=w", "-i", "times=1"
    )
    assert code == 0 and "graph completed" in out, (out, err)
    code, out, _ = await ctl("def", "deprecate", "hello", "prod")
    assert code == 0 and "deprecated hello@1" in out, out
    code, _, err = await ctl("submit", "hello@1")
    assert code == 8 and "deprecated" in err, err
    code, _, err = await ctl("def", "show", "hello@9")
    assert code == 6, err
    code, out, _ = await ctl("def", "versions", "hello")
    assert "deprecated" in out.splitlines()[-1] and "prod" in out.splitlines()[-1], out
    code, out, err = await ctl("def", "unlabel", "hello", "prod")
    assert code == 0 and out.strip() == "removed prod (was hello@1)", (out, err)
    code, _, err = await ctl("def", "unlabel", "hello", "prod")
    assert code == 6 and "hello@prod" in err, err


@pytest.mark.slow
async def test_status_links_parents_and_children_and_list_filters_by_parent(
    stack: InProcessStack,
) -> None:
    ctl = ctl_for(stack)
    code, out, err = await ctl("submit", str(EXAMPLES / "subgraph.json"), "--watch")
    assert code == 0, err
    gid = out.splitlines()[0].strip()
    # The live view (plain lines) says which child run the node started, and how it ended.
    started = re.search(r"(?m)^summarize: started child run (\S+) \(dagoctl watch \1\)$", out)
    assert started is not None, out
    assert f"summarize: child run {started.group(1)} completed" in out, out
    code, out, _ = await ctl("list", "--parent", gid)
    assert code == 0
    rows = out.splitlines()[1:]
    assert len(rows) == 1 and "summarizer" in rows[0], out
    child = rows[0].split()[0]
    assert child == started.group(1)
    code, out, _ = await ctl("status", gid)
    assert code == 0 and f"children summarize -> {child}" in out, out
    st = await stack.client.status(child)
    assert (st.parent_graph_id, st.parent_node_id) == (gid, "summarize")


async def test_items_and_map_progress_in_status(stack: InProcessStack, tmp_path: Path) -> None:
    ctl = ctl_for(stack)
    graph = tmp_path / "map.yaml"
    graph.write_text(
        "nodes:\n"
        "  each:\n"
        "    map:\n"
        "      items: '[1, 2, 3]'\n"
        "      node: {tool: echo, inputs: {double: '{{ item * 2 }}'}}\n"
    )
    code, out, err = await ctl("submit", str(graph))
    assert code == 0, err
    gid = out.splitlines()[0].strip()
    await stack.client.wait(gid)
    code, out, err = await ctl("status", gid)
    assert code == 0, err
    bar = "[" + "#" * 30 + "] 3/3  completed 3  failed 0  running 0  queued 0  cancelled 0"
    assert bar in out, out
    code, out, err = await ctl("items", gid, "each")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["INDEX", "STATE", "ATT", "OUTPUT/ERROR"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [str(i), "completed", "1"] for i in range(3)
    ], out
    assert '{"double": 6}' in lines[3], out
    code, out, err = await ctl("-o", "json", "items", gid, "each", "--state", "failed")
    assert code == 0 and json.loads(out) == [], (out, err)
    code, out, err = await ctl("watch", gid)
    assert code == 0, err
    assert "each: items [##########] 3/3  completed 3" in out, out


async def test_limits_table_and_json(make_stack: MakeStack) -> None:
    rl = '{"anthropic/*": {"requests_per_minute": 60, "output_tokens_per_minute": 6000}}'
    ctl = ctl_for(await make_stack(rate_limits=rl))
    code, out, err = await ctl("limits")
    assert code == 0, err
    header, row = (line.split() for line in out.splitlines())
    assert header == ["MODEL", "REQUESTS", "INPUT", "TOKENS", "OUTPUT", "TOKENS", "PAUSED"]
    assert row == ["anthropic/*", "2/60/min", "-", "100/6000/min"]  # at least two requests
    code, out, _ = await ctl("-o", "json", "limits")
    (m,) = json.loads(out)
    assert (m["provider"], m["model"], m["requests_per_minute"]) == ("anthropic", "*", 60)


async def test_limits_raises_a_runs_budget(stack: InProcessStack, tmp_path: Path) -> None:
    ctl = ctl_for(stack)
    slow = tmp_path / "slow.yaml"
    slow.write_text(
        "nodes: {nap: {tool: sleep, inputs: {seconds: 30}}}\nlimits: {max_cost_usd: 1}\n"
    )
    code, out, _ = await ctl("submit", str(slow))
    assert code == 0
    gid = out.strip()
    code, out, _ = await ctl("limits", gid, "--max-cost", "2.5", "--max-tokens", "5000")
    assert code == 0, out
    assert out.strip().endswith("max_tokens 5000, max_cost_usd 2.5"), out
    code, _, err = await ctl("limits", gid, "--max-tokens", "-3")
    assert code == EXIT_INVALID and "limits.max_tokens" in err
    await ctl("cancel", gid)
    code, _, err = await ctl("limits", gid, "--max-cost", "3")
    assert code == EXIT_PRECONDITION and "FAILED_PRECONDITION" in err


async def test_list_by_namespace_with_an_operators_key(make_stack: MakeStack) -> None:
    keys = {ns: new_key() for ns in ("team-a", "team-b", "ops")}
    stack = await make_stack(
        auth="keys",
        api_keys=",".join(f"{hash_key(k)}:{ns}" for ns, k in keys.items()),
        operator_namespaces="ops",
    )
    as_ns = {ns: Ctl(f"127.0.0.1:{stack.port}") for ns in keys}
    for ns, ctl in as_ns.items():
        ctl.env["DAGO_API_KEY"] = keys[ns]
    for ns in ("team-a", "team-b", "team-a"):
        code, _, err = await as_ns[ns]("submit", "-", stdin=HUMAN_YAML)
        assert code == 0, err
    # Every namespace: a NAMESPACE column; one namespace: only its runs.
    code, out, _ = await as_ns["ops"]("list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[-2:] == ["NAMESPACE", "NAME"], out
    assert sorted(ln.split()[-2] for ln in lines[1:]) == ["team-a", "team-a", "team-b"], out
    code, out, _ = await as_ns["ops"]("-o", "json", "list", "--namespace", "team-b")
    assert code == 0 and [g["namespace"] for g in json.loads(out)] == ["team-b"], out
    # A tenant: its own runs, no NAMESPACE column; another namespace is refused.
    code, out, _ = await as_ns["team-a"]("list")
    assert code == 0 and "NAMESPACE" not in out and len(out.splitlines()) == 3, out
    code, _, err = await as_ns["team-a"]("list", "--namespace", "team-b")
    assert code != 0 and "namespace" in err, err
