"""The Ruby client (clients/ruby), generated from proto/dago by buf with protoc's Ruby generator
and Debian's grpc_ruby_plugin and run on Debian's ruby-grpc (clients/ruby/run.sh), against real
stacks: it submits a graph, watches it to the terminal event and reads the result, on the API's
port and through Envoy; it sends the API key as `authorization: Bearer` metadata to an API that
requires keys; and it decodes the google.rpc.BadRequest of a rejected graph.

A machine without Ruby's gRPC packages fails here (never skips), naming the packages to install
(.ci/run installs them)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from genclients import RUN_TIMEOUT_S, ExampleClientTests, client_env
from harness import ROOT

# ruby (and buf, through clients/ruby/run.sh) run as processes.
pytestmark = pytest.mark.process

RUN = ROOT / "clients" / "ruby" / "run.sh"
PACKAGES = "ruby-grpc ruby-grpc-tools ruby-googleapis-common-protos-types protobuf-compiler"


@dataclass(frozen=True)
class RubyExample:
    out: Path

    def argv_env(
        self, target: str, request: Path, api_key: str | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """clients/ruby/run.sh's command line (generate into ``out``, run the example on
        ``request``) and environment (no DAGO_ setting but the key)."""
        args = [str(self.out), "--target", target, "--timeout", str(RUN_TIMEOUT_S - 5)]
        return ["bash", str(RUN), *args, str(request)], client_env(api_key)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> RubyExample:
    """clients/ruby/run.sh, generating the Ruby code into a temporary folder."""
    missing = [t for t in ("ruby", "protoc", "grpc_ruby_plugin") if not shutil.which(t)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not on PATH: install {PACKAGES} (see .ci/run)")
    return RubyExample(tmp_path_factory.mktemp("ruby"))


class TestRubyClient(ExampleClientTests):
    """The tests of genclients.ExampleClientTests, on the Ruby example."""
