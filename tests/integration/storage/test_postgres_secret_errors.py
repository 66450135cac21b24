"""A PostgreSQL connection that fails never puts the Secret's values into the worker's log
or an error's text, against a real PostgreSQL server.

Every connection value comes from the pipeline's Secret, and libpq quotes the one it fails
on. A helper found the sink's `sink-write-failed` line quoting them: a Secret key mapped to
the wrong field (`keys: {user: uri}`) logged the whole DSN with its password; an unescaped
`@` in a URI's password logged most of it as the host; a wrong user name was logged as it
is. Each mix-up below is tried through the sink (its log) and through `connect`, which the
exactly-once sink and `streamherd recover` use too (the error's text, its repr, and no
chained error that holds the original text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from streamherd.workers.config import PostgresSinkConfig
from streamherd.workers.sinks_postgres import (
    ConnectError,
    PostgresSink,
    connect,
    conninfo_from_env,
)
from tests.integration.storage.pgserver import SUPERUSER, PostgresServer

pytestmark = [pytest.mark.integration]

FIELDS = {"hostEnv": "H", "portEnv": "P", "userEnv": "U", "passwordEnv": "W", "dbnameEnv": "D"}
WRONG_USER = "svc-analytics-7f3k"
AT_PASSWORD = "Zq7@mN2pQ7rT"  # an unescaped "@": libpq takes what follows it for the host

#: name -> (the config's env fields, the env from the server, the texts that must not show,
#: a text libpq's message still shows: the log stays useful)
Case = tuple[dict[str, str], Callable[[PostgresServer], dict[str, str]], list[str], str]


def _good(server: PostgresServer) -> dict[str, str]:
    return {"H": "127.0.0.1", "P": str(server.port), "U": SUPERUSER, "W": server.password,
            "D": "postgres"}  # fmt: skip


def _uri(server: PostgresServer) -> str:
    return f"postgresql://{SUPERUSER}:{server.password}@127.0.0.1:{server.port}/postgres"


CASES: dict[str, Case] = {
    "the user key holds the URI": (
        FIELDS, lambda s: {**_good(s), "U": _uri(s)}, [], "password authentication failed"
    ),
    "the dbname key holds the URI": (
        FIELDS, lambda s: {**_good(s), "D": _uri(s)}, [], "does not exist"
    ),
    "the port key holds the password": (
        FIELDS, lambda s: {**_good(s), "P": s.password}, [], "invalid integer value"
    ),
    "the host key holds the URI": (FIELDS, lambda s: {**_good(s), "H": _uri(s)}, [], "host"),
    "a wrong user": (
        FIELDS, lambda s: {**_good(s), "U": WRONG_USER}, [WRONG_USER],
        "password authentication failed",
    ),
    "an unescaped @ in a URI's password": (
        {"dsnEnv": "DSN"},
        lambda s: {"DSN": f"postgresql://{SUPERUSER}:{AT_PASSWORD}@127.0.0.1:{s.port}/postgres"},
        ["mN2pQ7rT", AT_PASSWORD],
        "host",
    ),
}  # fmt: skip


def secret_texts(server: PostgresServer, env: dict[str, str], extra: list[str]) -> list[str]:
    """What must not appear: the password, the URI, and the case's own values."""
    return [server.password, _uri(server), *extra, *(v for v in env.values() if "://" in v)]


def config(fields: dict[str, str]) -> PostgresSinkConfig:
    return PostgresSinkConfig.model_validate(
        {"table": "public.t", "columns": [{"name": "k"}], "keyColumns": ["k"], **fields}
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_failed_connection_shows_no_secret_value(
    postgres_server: PostgresServer, case: str
) -> None:
    fields, make_env, extra, useful = CASES[case]
    env = make_env(postgres_server)
    hidden = secret_texts(postgres_server, env, extra)
    with pytest.raises(ConnectError) as raised:
        connect(conninfo_from_env(config(fields), env), "ns/p")
    error = raised.value
    text = f"{error}\n{error!r}"
    assert not [h for h in hidden if h in text], text
    assert error.__cause__ is None and error.__context__ is None
    assert useful in str(error), str(error)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_sink_logs_a_failed_connection_without_secret_values(
    postgres_server: PostgresServer, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    fields, make_env, extra, useful = CASES[case]
    env = make_env(postgres_server)
    hidden = secret_texts(postgres_server, env, extra)
    caplog.set_level(logging.INFO, logger="streamherd")
    sink = PostgresSink(config(fields), "ns/p", None, env=env)
    try:
        deadline = time.monotonic() + 30
        while "sink-write-failed" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.1)
    finally:
        sink.close(drain=False)
    failed = next(line for line in caplog.text.splitlines() if "sink-write-failed" in line)
    assert useful in failed, failed
    assert not [h for h in hidden if h in caplog.text], caplog.text
