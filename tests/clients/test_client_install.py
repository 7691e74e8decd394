"""``pip install -e .`` (what ``make setup`` and ``make setup-run`` run) makes the client, the
generated stubs and the service importable by a script of the user's own, outside the
repository, with no PYTHONPATH, and installs the ``dagoctl`` and ``dago`` commands; a real
stack answers that script and the installed ``dagoctl``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import ROOT, InProcessStack, MakeStack

pytestmark = pytest.mark.process  # pip, the user's script and dagoctl run as processes

USER_SCRIPT = """\
import sys
from dago_client import DagoClient, load_request, to_dict
from dago.v1 import execution_pb2

with DagoClient(sys.argv[1]) as dago:
    run = dago.submit(load_request(sys.argv[2]))
    status = dago.wait(run.graph_id)
    print(execution_pb2.GraphState.Name(status.state), to_dict(dago.result(run.graph_id).output))
"""


def _env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no DAGO_ settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DAGO_"))}


@pytest.fixture(scope="module")
def editable_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtualenv with this checkout installed in development mode (``pip install -e``,
    as the Makefile does). Its dependencies are this checkout's .venv (a .pth), so the
    install is offline; dago itself comes only from the editable install."""
    venv = tmp_path_factory.mktemp("editable") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next((Path(sys.executable).parent.parent / "lib").glob("python3*/site-packages"))
    (site / "dago-deps.pth").write_text(f"{deps}\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-e",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield venv


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack()


async def test_a_users_script_runs_with_the_venvs_python_alone(
    editable_venv: Path, stack: InProcessStack, tmp_path: Path
) -> None:
    script = tmp_path / "my_script.py"  # outside the repository: nothing found by cwd
    script.write_text(USER_SCRIPT)
    proc = await _run(
        editable_venv / "bin" / "python",
        str(script),
        f"127.0.0.1:{stack.port}",
        str(ROOT / "examples" / "loop.json"),
        cwd=tmp_path,
    )
    assert proc == (0, "GRAPH_STATE_COMPLETED {'done': {'polls': 3}}\n", ""), proc
    # The modules are this checkout's files (an edit shows at once), not copies.
    code, out, err = await _run(
        editable_venv / "bin" / "python",
        "-c",
        "import dago_client, dago.v1.graph_pb2, dago.app; "
        "print(dago_client.__file__, dago.v1.graph_pb2.__file__, dago.app.__file__)",
        cwd=tmp_path,
    )
    assert code == 0, err
    assert out.split() == [
        str(ROOT / "clients/python/dago_client/__init__.py"),
        str(ROOT / "gen/python/dago/v1/graph_pb2.py"),
        str(ROOT / "service/dago/app.py"),
    ]


async def test_the_installed_commands(
    editable_venv: Path, stack: InProcessStack, tmp_path: Path
) -> None:
    code, out, err = await _run(
        editable_venv / "bin" / "dagoctl",
        "--target",
        f"127.0.0.1:{stack.port}",
        "submit",
        str(ROOT / "examples" / "diamond.json"),
        "--wait",
        "-o",
        "json",
        cwd=tmp_path,
    )
    assert code == 0, err
    assert '"graph_id"' in out
    code, out, err = await _run(editable_venv / "bin" / "dago", "--help", cwd=tmp_path)
    assert code == 0 and "serve" in out, err


async def _run(*argv: object, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        cwd=cwd,
        env=_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
