"""Fixtures for the storage tests: a real PostgreSQL server and a fresh database per test.

`postgres_server` is one throwaway server (tests/integration/storage/pgserver.py) for the
whole session; `postgres_dsn` creates a new database in it for each test, so tests never
see each other's tables. The outage test stops and restarts the session server itself and
leaves it running.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from tests.infra.processes import InfraError
from tests.integration.storage.pgserver import PostgresServer, start_postgres, stop_postgres


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    keep = os.environ.get("STREAMHERD_KEEP_INFRA_DIRS", "") not in ("", "0")
    try:
        server = start_postgres(keep=keep)
    except InfraError as error:
        pytest.fail(f"PostgreSQL could not start: {error}", pytrace=False)
    try:
        yield server
    finally:
        stop_postgres(server, keep=keep or request.session.testsfailed > 0)


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A DSN (with password) for a database created for this test."""
    if not postgres_server.running():
        postgres_server.start()
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")
