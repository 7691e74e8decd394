"""The Go client (clients/go), generated from proto/dago by buf with Debian's protoc-gen-go and
protoc-gen-go-grpc and built offline against Debian's grpc-go (clients/go/build.sh: GOPATH mode
on /usr/share/gocode), run against real stacks: it submits a graph, watches it to the terminal
event and reads the result, on the API's port and through Envoy; it sends the API key as
`authorization: Bearer` metadata to an API that requires keys; and it decodes the
google.rpc.BadRequest of a rejected graph.

A machine without the Go toolchain fails here (never skips), naming the packages to install
(.ci/run installs them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from genclients import RUN_TIMEOUT_S, ExampleClientTests, client_env
from harness import ROOT

# go (vet, build) and the client it builds run as processes.
pytestmark = pytest.mark.process

BUILD = ROOT / "clients" / "go" / "build.sh"
PACKAGES = (
    "golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev "
    "golang-github-golang-protobuf-1-5-dev"
)
# Go's build cache, kept between sessions: a warm build takes 1-2 s, a cold one 10-25 s.
GOCACHE = Path(os.environ.get("DAGO_TEST_GOCACHE", "/tmp/dago-test-gocache"))
BUILD_TIMEOUT_S = 300


@dataclass(frozen=True)
class GoExample:
    binary: Path

    def argv_env(
        self, target: str, request: Path, api_key: str | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """The binary's command line; its environment has no DAGO_ setting but the key."""
        timeout = f"{RUN_TIMEOUT_S - 5}s"
        argv = [str(self.binary), "-target", target, "-timeout", timeout, str(request)]
        return argv, client_env(api_key)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> GoExample:
    """clients/go/build.sh into a temporary folder: the dago-example binary."""
    missing = [t for t in ("go", "protoc-gen-go", "protoc-gen-go-grpc") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: install {PACKAGES} (see .ci/run)")
    out = tmp_path_factory.mktemp("go")
    started = time.monotonic()
    p = subprocess.run(
        ["bash", str(BUILD), str(out)],
        env={**os.environ, "GOCACHE": str(GOCACHE)},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert p.returncode == 0, f"{BUILD} exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    print(f"clients/go/build.sh: {time.monotonic() - started:.1f}s (GOCACHE={GOCACHE})")
    binary = out / "bin" / "dago-example"
    assert binary.is_file(), p.stdout + p.stderr
    return GoExample(binary)


class TestGoClient(ExampleClientTests):
    """The tests of genclients.ExampleClientTests, on the Go example."""
