"""The release packages as a user gets them (``make dist``: scripts/dist.py).

- ``dago-client``: a fresh virtualenv with only its wheel installed (its dependencies from
  PyPI) runs a script of the user's, outside the repository and with no PYTHONPATH, that
  submits a graph and watches it to the end against a running stack, and its ``dagoctl``
  does the same; no server module is importable there.
- the server ``dago``: its wheel holds service/dago alone and depends on that dago-client.
- ``@dago/client``: a fresh npm project that installs only the packed tarball (its
  dependencies from the registry) runs an ESM script that submits and watches a graph
  through Envoy to graph_completed, with the generated messages from the package.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import ROOT, Edge

# pip, npm, the user's scripts and dagoctl run as processes; edge_stack adds edge+process.
pytestmark = [pytest.mark.process, pytest.mark.slow]

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
INSTALL_TIMEOUT_S = 300
# Every module of the server: none may come with the client.
SERVER_MODULES = sorted(
    f"dago.{p.stem if p.is_file() else p.name}"
    for p in (ROOT / "service" / "dago").iterdir()
    if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")
)

USER_SCRIPT = """\
import sys
from dago_client import DagoClient, load_request, state_name, to_dict

with DagoClient(sys.argv[1]) as dago:
    events = list(dago.run(load_request(sys.argv[2])))  # submits, watches to the end
    kinds = [ev.WhichOneof("payload") for ev in events]
    graph_id = events[0].graph_id
    print(kinds[0], kinds[-1], state_name(dago.status(graph_id).state))
    print(to_dict(dago.result(graph_id).output))
"""

NPM_SCRIPT = """\
import { createDagoClient } from "@dago/client";
import { GraphState } from "@dago/client/gen/dago/v1/execution_pb";

const echo = (id, inputs) => ({ id, kind: { case: "tool", value: { name: "echo" } }, inputs });
const dago = createDagoClient(process.argv[2]);
const { graphId } = await dago.submit({
  graph: {
    name: "npm",
    nodes: [echo("a", { x: "{{ inputs.x }}" }), echo("b", { y: "{{ nodes.a.output.x }}" })],
    edges: [{ from: "a", to: "b" }],
  },
  inputs: { x: "packed" },
});
const kinds = [];
for await (const ev of dago.watch(graphId)) kinds.push(ev.payload.case);
const result = await dago.result(graphId);
console.log(JSON.stringify({
  first: kinds[0], last: kinds.at(-1), state: GraphState[result.state], output: result.output,
}));
"""


@dataclass(frozen=True)
class Dist:
    folder: Path

    def one(self, pattern: str) -> Path:
        (found,) = self.folder.glob(pattern)
        return found


def _env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no DAGO_ settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAGO_"))}


def _run(argv: list[str | Path], cwd: Path, timeout: float = INSTALL_TIMEOUT_S) -> str:
    done = subprocess.run(
        list(map(str, argv)), cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    """What ``make dist`` builds, into a temporary folder."""
    base = tmp_path_factory.mktemp("dist")
    _run(
        [
            sys.executable,
            ROOT / "scripts" / "dist.py",
            "--out",
            base / "dist",
            "--stage",
            base / "s",
        ],
        cwd=ROOT,
    )
    return Dist(base / "dist")


@pytest.fixture(scope="module")
def client_venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with the dago-client wheel alone installed (deps from PyPI)."""
    base = tmp_path_factory.mktemp("client")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=base)
    pip: list[str | Path] = [
        venv / "bin" / "python",
        "-m",
        "pip",
        "--disable-pip-version-check",
        "-q",
    ]
    _run([*pip, "install", dist.one("dago_client-*.whl")], cwd=base)
    yield venv


def test_dist_holds_every_artifact_with_its_checksum(dist: Dist) -> None:
    names = {p.name for p in dist.folder.iterdir()}
    assert names == {
        f"dago_client-{VERSION}-py3-none-any.whl",
        f"dago_client-{VERSION}.tar.gz",
        f"dago-{VERSION}-py3-none-any.whl",
        f"dago-{VERSION}.tar.gz",
        f"dago-client-{VERSION}.tgz",  # npm's name for @dago/client
        "SHA256SUMS",
    }
    sums: dict[str, str] = {}
    for line in (dist.folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    assert set(sums) == names - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256((dist.folder / name).read_bytes()).hexdigest() == digest, name
    package = json.loads((ROOT / "clients" / "typescript" / "package.json").read_text())
    assert package["version"] == VERSION, "package.json's version is pyproject.toml's"


def test_each_module_has_one_distribution(dist: Dist) -> None:
    client = set(zipfile.ZipFile(dist.one("dago_client-*.whl")).namelist())
    stubs = ROOT / "gen" / "python" / "dago" / "v1"
    code = ROOT / "clients" / "python" / "dago_client"
    assert {n for n in client if not n.startswith("dago_client-")} == {
        *(f"dago/v1/{p.name}" for p in stubs.iterdir() if p.suffix in (".py", ".pyi")),
        *(f"dago_client/{p.name}" for p in code.iterdir() if p.suffix == ".py"),
        "dago/v1/py.typed",
        "dago_client/py.typed",
    }
    server = zipfile.ZipFile(dist.one("dago-*-py3-none-any.whl"))
    names = set(server.namelist())
    service = ROOT / "service" / "dago"
    modules = {
        f"dago/{p.relative_to(service).as_posix()}"
        for p in service.rglob("*")
        if p.suffix in (".py", ".lua", ".sql") and "__pycache__" not in p.parts
    }
    assert {n for n in names if not n.startswith("dago-")} == modules
    meta = server.read(f"dago-{VERSION}.dist-info/METADATA").decode()
    assert f"Requires-Dist: dago-client=={VERSION}" in meta.splitlines()


async def test_a_script_with_the_client_wheel_alone(
    client_venv: Path, edge_stack: Edge, tmp_path: Path
) -> None:
    python = client_venv / "bin" / "python"
    installed = json.loads(_run([python, "-m", "pip", "list", "--format", "json"], cwd=tmp_path))
    names = {p["name"].lower() for p in installed}
    assert "dago-client" in names and "dago" not in names and "redis" not in names, names
    script = tmp_path / "my_script.py"  # outside the repository: nothing found by cwd
    script.write_text(USER_SCRIPT)
    target = f"127.0.0.1:{edge_stack.stack.port}"
    out = await _arun(python, script, target, ROOT / "examples" / "loop.json", cwd=tmp_path)
    assert out == "graph_submitted graph_completed completed\n{'done': {'polls': 3}}\n", out
    # The client's modules are the wheel's, and no server module comes with them.
    probe = (
        "import importlib.util, sys, dago_client, dago.v1.graph_pb2\n"
        "print(dago_client.__file__, dago.v1.graph_pb2.__file__)\n"
        "print(*[m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None])\n"
    )
    lines = (await _arun(python, "-c", probe, *SERVER_MODULES, cwd=tmp_path)).splitlines()
    site = str(next((client_venv / "lib").glob("python3*/site-packages")))
    assert all(f.startswith(site) for f in lines[0].split()), lines[0]
    assert lines[1:] == [""], f"server modules importable with the client alone: {lines[1]}"


async def test_dagoctl_of_the_client_wheel(
    client_venv: Path, edge_stack: Edge, tmp_path: Path
) -> None:
    out = await _arun(
        client_venv / "bin" / "dagoctl",
        "--target",
        f"127.0.0.1:{edge_stack.stack.port}",
        "submit",
        ROOT / "examples" / "diamond.json",
        "--watch",
        cwd=tmp_path,
    )
    assert "graph completed" in out and " COMPLETED" in out, out


async def test_a_fresh_npm_project_with_the_tarball_alone(
    dist: Dist, edge_stack: Edge, tmp_path: Path
) -> None:
    npm = shutil.which("npm")
    node = shutil.which("node")
    assert npm and node, "npm and node (Node.js 20+) must be on PATH"
    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "private": true, "type": "module"}\n')
    tarball = dist.one("dago-client-*.tgz")
    await asyncio.to_thread(
        _run, [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", tarball], project
    )
    deps = json.loads((project / "package.json").read_text())["dependencies"]
    assert list(deps) == ["@dago/client"], deps
    (project / "run.mjs").write_text(NPM_SCRIPT)
    out = json.loads(await _arun(node, "run.mjs", edge_stack.base, cwd=project))
    assert out == {
        "first": "graphSubmitted",
        "last": "graphCompleted",
        "state": "COMPLETED",
        "output": {"b": {"y": "packed"}},  # the leaf's output, its input passed on by a
    }, out


async def _arun(*argv: object, cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        cwd=cwd,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}\n{out.decode()}\n{err.decode()}"
    return out.decode()
