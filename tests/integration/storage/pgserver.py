"""A real, throwaway PostgreSQL server on loopback for the storage tests.

Uses the Debian server binaries that hack/find-postgres.sh locates (initdb, pg_ctl), a data
directory in a fresh temporary directory and a free 127.0.0.1 port; no Unix socket, so
nothing outside the directory is touched. PostgreSQL refuses to run as root: when the tests
run as root (CI does), every server command runs as the `postgres` OS user (runuser) and
the directory is handed to that user. Password authentication (scram-sha-256) over TCP, so
the sink's DSN is exercised as a user would write it. Prepared transactions are allowed
(``max_prepared_transactions``, 0 in a default server): exactly-once into PostgreSQL with
Kafka outputs commits in two phases (decision 0155); ``settings`` overrides server settings
(a test starts one with 0 to see the worker refuse it). ``stop()``/``start()`` keep the data
and the port: the outage test stops the server mid-run and brings it back.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.infra.processes import InfraError, free_port, run_hack_script, tail

SUPERUSER = "streamherd"
#: Server settings beyond the fixed ones: prepared transactions for two-phase commit.
SETTINGS: dict[str, str] = {"max_prepared_transactions": "20"}


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError as error:
        raise InfraError("running as root and no `postgres` user exists to run the server") from (
            error
        )
    return ["runuser", "-u", "postgres", "--", *argv]


@dataclass
class PostgresServer:
    """One initdb'd cluster; ``dsn(dbname)`` for clients, ``stop``/``start`` for outages."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    settings: dict[str, str] = field(default_factory=lambda: dict(SETTINGS))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={self.password} "
            f"dbname={dbname} connect_timeout=3"
        )

    def _run(self, *argv: str, timeout: float = 120) -> None:
        cmd = _as_server_user([str(self.bin_dir / argv[0]), *argv[1:]])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise InfraError(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr[-2000:]}\n"
                f"server log {self.log_file}:\n{tail(self.log_file)}"
            )

    def init(self) -> PostgresServer:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        self._run(
            "initdb",
            "-D", str(self.data_dir),
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        return self

    def start(self) -> PostgresServer:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c max_connections=50 -c shared_buffers=32MB -c fsync=off -c full_page_writes=off "
            + " ".join(f"-c {k}={v}" for k, v in sorted(self.settings.items()))
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file),
            "-o", options, "-w", "-t", "60",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.dsn(), autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect clients, clean shutdown; ``immediate``: like a crash."""
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def start_postgres(keep: bool = False, **settings: str) -> PostgresServer:
    """initdb + start on a free port in a new temporary directory; ``settings`` override
    :data:`SETTINGS`."""
    bin_dir = run_hack_script("find-postgres.sh")
    root = Path(tempfile.mkdtemp(prefix="streamherd-pg-"))
    if os.geteuid() == 0:
        # The server runs as `postgres`: it must own the directory (and reach it: /tmp is
        # world-traversable, mkdtemp's 0700 is relaxed for that user only by ownership).
        entry = pwd.getpwnam("postgres")
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(
        bin_dir, root, free_port(), secrets.token_hex(12), {**SETTINGS, **settings}
    )
    try:
        return server.init().start()
    except BaseException:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        raise


def stop_postgres(server: PostgresServer, keep: bool = False) -> None:
    if server.running():
        # The directory goes anyway; a leftover process dies with its data directory.
        with contextlib.suppress(InfraError):
            server.stop("immediate")
    if not keep:
        shutil.rmtree(server.root, ignore_errors=True)
