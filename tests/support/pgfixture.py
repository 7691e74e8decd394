"""PostgreSQL for tests: a database of their own on a running server, dropped after.

The server is ``DAGO_TEST_POSTGRES`` (an admin URL; default: the machine's server on
127.0.0.1:5432 as ``postgres``, trust auth). Tests that must stop PostgreSQL start a private
server instead (they never stop the shared one)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

ADMIN_URL = os.environ.get("DAGO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name`` instead."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@contextmanager
def fresh_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """Create an empty database, yield its URL, drop it (closing what is still connected)."""
    name = f"dago_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {admin_url} ({e}); start it, or point "
            "DAGO_TEST_POSTGRES at an admin URL of a server the tests may create databases on"
        ) from e
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield database_url(admin_url, name)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


PG_BIN = Path(os.environ.get("DAGO_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivatePostgres:
    """A PostgreSQL server of one test's own (initdb in a temporary folder, trust auth),
    which the test may stop and start again. Run as the ``postgres`` user when the tests
    run as root (initdb refuses root, as CI runs)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run(
            [*as_user, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            log = (self.folder / "log").read_text() if (self.folder / "log").exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{log[-3000:]}")

    def init(self) -> None:
        """Make the cluster (once)."""
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.folder / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server now (open sessions are ended, as in an outage)."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        """Whether the server runs (its pid file is there)."""
        return (self.data / "postmaster.pid").exists()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
