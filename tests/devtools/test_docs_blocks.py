"""Every code block of README.md and docs/*.md runs, against a real stack (API + worker +
Envoy: the ``edge_stack`` fixture), or says in the Markdown why it does not.

How a fenced block is treated, by its language tag and the line before it:

- ``<!-- not-run: <reason> -->`` on the line before the fence: not run (installs, ``make run``,
  Docker, kubectl, helm, other toolchains, fragments of a graph). The reason is required.
- ``text`` / ``console``: output or a listing, shown only.
- ``bash`` / ``sh``: run with ``bash -euo pipefail``. The shell blocks of one document run in
  order in one shell, as a reader types them in one terminal (``ID=...`` in one block is used
  by the next). Any failing command fails the test with the block's line.
- ``python``: run as a script (``python -c``); a block whose first line is ``# <path>`` names a
  module of the repository it shows how to write: it is run too (its imports must exist).
- ``json`` / ``yaml``: a ``SubmitGraphRequest`` (a ``graph`` key) is submitted and must
  complete; a graph file (a ``nodes`` key) is validated by the server. A first line
  ``# <name>.yaml`` also saves it under that name for the document's next blocks.
- ``js``: a block whose first line is ``// Saved as <path>...`` is saved there (under a
  private name, removed after) and run with ``node``.
- Anything else fails :func:`test_every_block_is_run_or_marked`: mark it, or make it run.

What the reader's machine has and the test substitutes (the convention of the docs):
``localhost:8080`` is the stack's Envoy and ``localhost:50051`` its API (both on free
ports here, replaced in the text of every block); ``DAGO_TARGET`` points at the API;
``.venv/bin/dagoctl`` and ``dagoctl`` are this checkout's client; ``grpcurl`` comes from
``.venv/bin``. Nothing else is filled in: a runnable block has no ``<id>``-style placeholder
(:func:`test_runnable_blocks_paste_as_they_are`), since a reader who pastes one gets a shell
redirect; the block takes the value from a command before it (``ID=$(...)``).
Blocks run in a scratch folder holding ``examples/`` (a link), so the files they write
stay out of the tree.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from dago.v1 import execution_pb2, orchestrator_pb2
from dago_client import AsyncDagoClient, parse_document
from harness import ROOT, Edge

pytestmark = pytest.mark.process  # bash, python, node, dagoctl, curl and grpcurl as processes

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
SHOWN = {"text", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
SAVED_AS = re.compile(r"^//\s*Saved as (?P<path>[\w./-]+\.m?js)\b")
FILE_NAME = re.compile(r"^#\s*(?P<name>[\w.-]+\.(?:ya?ml|json))\s*$")
TIMEOUT_S = 90


@dataclasses.dataclass
class Block:
    """One fenced code block of a Markdown file."""

    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    not_run: str  # the reason of a <!-- not-run: ... --> marker, or ""

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def kind(self) -> str:
        """How the test treats it: skip, shown, shell, python, request, graph, node, or
        ``unknown: <why>``."""
        if self.not_run:
            return "skip"
        if self.lang in SHOWN:
            return "shown"
        if self.lang in SHELL:
            return "shell"
        if self.lang == "python":
            return "python"
        if self.lang == "js":
            return (
                "node" if SAVED_AS.match(self.text) else "unknown: a js block not saved as a file"
            )
        if self.lang in ("json", "yaml"):
            try:
                doc = yaml.safe_load(self.text)  # JSON is YAML
            except yaml.YAMLError as e:
                return f"unknown: does not parse ({e})"
            if isinstance(doc, dict) and "graph" in doc:
                return "request"
            if isinstance(doc, dict) and "nodes" in doc:
                return "graph"
            return "unknown: neither a request nor a graph (mark a fragment not-run)"
        return f"unknown: language {self.lang or '(none)'!r}"


def blocks(doc: Path) -> list[Block]:
    """The fenced blocks of ``doc``, in order."""
    lines = doc.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent = len(m["indent"])
        j = i + 1
        while j < len(lines) and not re.match(r"^\s*```\s*$", lines[j]):
            j += 1
        body = "\n".join(line[indent:] for line in lines[i + 1 : j]) + "\n"
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = NOT_RUN.match(prev)
        out.append(Block(doc, i + 1, m["lang"], body, marker["reason"] if marker else ""))
        i = j + 1
    return out


def test_every_block_is_run_or_marked() -> None:
    unknown = [
        f"{b.where}: {b.kind()}"
        for doc in DOCS
        for b in blocks(doc)
        if b.kind().startswith("unknown")
    ]
    assert not unknown, "blocks neither run nor marked <!-- not-run: reason -->:\n" + "\n".join(
        unknown
    )


PLACEHOLDER = re.compile(r"<[a-z_][a-z_-]*>")  # <id>, <next_page_token>, <graph-id>...


def test_runnable_blocks_paste_as_they_are() -> None:
    """A newcomer pastes a block as it is: a ``<placeholder>`` in its code (comments may
    name one) is a redirect from a missing file in a shell, and a syntax error elsewhere."""
    found = []
    for doc in DOCS:
        for b in blocks(doc):
            kind = b.kind()
            if kind not in ("shell", "python", "node"):
                continue
            comment = "//" if kind == "node" else "#"
            for n, line in enumerate(b.text.splitlines(), start=1):
                code = line.split(comment, 1)[0]
                if PLACEHOLDER.search(code):
                    found.append(f"{b.where} (+{n}): {line.strip()}")
    assert not found, "placeholders in runnable blocks (take the value from a command):\n" + (
        "\n".join(found)
    )


class Reader:
    """A reader of one document at a terminal: a scratch folder, the substitutions, the
    environment."""

    def __init__(self, edge: Edge, tmp: Path) -> None:
        self.edge = edge
        self.cwd = tmp
        (tmp / "examples").symlink_to(ROOT / "examples")
        bin_dir = tmp / ".docs-bin"
        bin_dir.mkdir()
        dagoctl = bin_dir / "dagoctl"
        dagoctl.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dago_client "$@"\n')
        dagoctl.chmod(0o755)
        base = {k: v for k, v in os.environ.items() if not k.startswith("DAGO_")}
        self.env = {
            **base,
            "PATH": os.pathsep.join([str(bin_dir), str(ROOT / ".venv" / "bin"), base["PATH"]]),
            "PYTHONPATH": os.pathsep.join(
                str(ROOT / p) for p in ("service", "gen/python", "clients/python")
            ),
            "DAGO_TARGET": f"127.0.0.1:{edge.stack.port}",
            "NO_COLOR": "1",
        }

    def substitute(self, text: str) -> str:
        text = text.replace("localhost:8080", f"127.0.0.1:{self.edge.port}")
        text = text.replace("localhost:50051", f"127.0.0.1:{self.edge.stack.port}")
        return text.replace(".venv/bin/dagoctl", "dagoctl")

    async def run(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.cwd,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"{argv[:2]} took more than {TIMEOUT_S} s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def _failure(block: Block, what: str, code: int, out: str, err: str) -> str:
    return (
        f"{block.where}: {what} exited {code}\n--- stdout (end)\n{out[-2500:]}\n"
        f"--- stderr (end)\n{err[-2500:]}"
    )


async def _python(reader: Reader, block: Block) -> None:
    code, out, err = await reader.run(sys.executable, "-c", reader.substitute(block.text))
    assert code == 0, _failure(block, "the python block", code, out, err)


async def _node(reader: Reader, block: Block) -> None:
    m = SAVED_AS.match(block.text)
    assert m
    target = ROOT / m["path"]
    private = target.with_name(f".docs-test-{secrets.token_hex(3)}-{target.name}")
    private.write_text(reader.substitute(block.text))
    try:
        code, out, err = await reader.run("node", str(private))
    finally:
        private.unlink()
    assert code == 0, _failure(block, "the js block", code, out, err)


async def _request(reader: Reader, block: Block, dago: AsyncDagoClient) -> None:
    body = yaml.safe_load(block.text)
    req = json_format.ParseDict(body, orchestrator_pb2.SubmitGraphRequest())
    req.request_id = f"docs-{secrets.token_hex(4)}"  # the block's own id may be used already
    run = await dago.submit(req)
    status = await dago.wait(run.graph_id)
    assert status.state == execution_pb2.GRAPH_STATE_COMPLETED, f"{block.where}: {status}"


async def _graph(reader: Reader, block: Block, dago: AsyncDagoClient) -> None:
    await dago.validate(parse_document(yaml.safe_load(block.text)))


async def _shell(reader: Reader, shell: list[Block]) -> None:
    """The document's shell blocks in one shell, in order; on failure, the block's line."""
    parts = [
        "set -euo pipefail",
        "trap 'echo \"docs test: failed in the block at line $DOCS_BLOCK\" >&2' ERR",
    ]
    for b in shell:
        parts += [f"DOCS_BLOCK={b.line}", reader.substitute(b.text)]
    code, out, err = await reader.run("bash", stdin="\n".join(parts) + "\n")
    m = re.search(r"failed in the block at line (\d+)", err)
    failed = next((b for b in shell if m and b.line == int(m[1])), shell[0])
    assert code == 0, _failure(failed, "the shell blocks", code, out, err)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
async def test_the_blocks_of(doc: Path, edge_stack: Edge, tmp_path: Path) -> None:
    found = blocks(doc)
    runnable = [b for b in found if b.kind() not in ("skip", "shown")]
    if not runnable:
        return
    async with AsyncDagoClient(f"127.0.0.1:{edge_stack.stack.port}") as dago:
        reader = Reader(edge_stack, tmp_path)
        shell: list[Block] = []
        for b in runnable:
            kind = b.kind()
            name = FILE_NAME.match(b.text.splitlines()[0]) if b.lang in ("json", "yaml") else None
            if name:
                (tmp_path / name["name"]).write_text(b.text)
            if kind == "shell":
                shell.append(b)
            elif kind == "python":
                await _python(reader, b)
            elif kind == "node":
                await _node(reader, b)
            elif kind == "request":
                await _request(reader, b, dago)
            elif kind == "graph":
                await _graph(reader, b, dago)
            else:
                raise AssertionError(f"{b.where}: {kind}")
        if shell:
            await _shell(reader, shell)
