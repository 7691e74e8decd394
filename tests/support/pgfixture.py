"""PostgreSQL for tests: a database of their own on a running server, dropped after.

The server is ``DAGO_TEST_POSTGRES`` (an admin URL; default: the machine's server on
127.0.0.1:5432 as ``postgres``, trust auth). Tests that must stop PostgreSQL start a private
server instead (they never stop the shared one)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
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
