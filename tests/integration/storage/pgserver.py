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

The crash test (test_postgres_crashes.py) needs what a platform does to a database: ``crash()``
SIGKILLs the postmaster alone, as the out-of-memory killer does (``pg_ctl stop -m immediate``
is a signal the postmaster handles: it tells its backends to quit and removes its lock
file); its backends notice their parent's death and leave, and ``start_again()`` on the same
port and data runs PostgreSQL's crash recovery (prepared transactions survive it).
``freeze()``/``thaw()`` SIGSTOP/SIGCONT the postmaster and every backend (each backend is a
process group of its own, so the group of the postmaster is not enough): connections stay
open, the kernel still acknowledges what clients send and answers their keepalives, and
nothing ever answers a query. ``restart()`` is the orderly restart (fast shutdown, start).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
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


def _server_user() -> str | None:
    """``postgres`` when running as root (PostgreSQL refuses root), else None: this user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as error:
        raise InfraError("running as root and no `postgres` user exists to run the server") from (
            error
        )
    return "postgres"


def _as_server_user(argv: list[str]) -> list[str]:
    user = _server_user()
    return argv if user is None else ["runuser", "-u", user, "--", *argv]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a postmaster's backends and helpers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class PostgresServer:
    """One initdb'd cluster; ``dsn(dbname)`` for clients, ``stop``/``start`` for outages."""

    bin_dir: Path
    root: Path
    port: int
    password: str
    settings: dict[str, str] = field(default_factory=lambda: dict(SETTINGS))
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

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

    def start(self, timeout: float = 60) -> PostgresServer:
        """Start the postmaster as this process's child (not through pg_ctl, whose server is
        nobody's child: one killed by crash() would stay a zombie, alive to the lock-file
        check of the next start, wherever init does not reap it); ready once it answers."""
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "max_connections": "50",
            "shared_buffers": "32MB",
            "fsync": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for name, value in sorted(options.items()):
            argv += ["-c", f"{name}={value}"]
        # As root, the `postgres` user's ids are set in the child before the exec: no
        # runuser in between (its supervisor stops itself when its child is stopped, and
        # would stay stopped after thaw()).
        user = _server_user()
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise InfraError(
                    f"postgres exited ({code}) while starting; server log {self.log_file}:\n"
                    f"{tail(self.log_file)}"
                )
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
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None:
            self._proc.wait(30)
            self._proc = None

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def restart(self) -> None:
        """The orderly restart: a fast shutdown (clients disconnected, a checkpoint), start."""
        self.stop("fast")
        self.start()

    def postmaster_pid(self) -> int:
        """The running postmaster's process id (the first line of its lock file)."""
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    def crash(self, wait: float = 15.0) -> None:
        """SIGKILL the postmaster: no shutdown runs, its lock file and shared memory stay
        behind. Returns once it and its backends (which notice its death) are gone, so that
        start_again() finds the shared memory released, as a new container would."""
        pid = self.postmaster_pid()
        backends = _children(pid)
        os.kill(pid, signal.SIGKILL)
        self._reap()
        deadline = time.monotonic() + wait
        while _alive(pid) or any(_alive(b) for b in backends):
            if time.monotonic() > deadline:
                left = [b for b in backends if _alive(b)]
                raise InfraError(f"postmaster {pid} or its backends {left} outlived SIGKILL")
            time.sleep(0.05)

    def start_again(self) -> None:
        """Start the server crash() killed, on the same port and data: crash recovery runs
        (WAL replayed, prepared transactions restored) before it accepts connections."""
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the postmaster, then every backend (one it forked meanwhile too)."""
        pid = self.postmaster_pid()
        os.kill(pid, signal.SIGSTOP)  # first: no backend is forked after the scan below
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)

    def thaw(self) -> None:
        pid = self.postmaster_pid()
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGCONT)
        os.kill(pid, signal.SIGCONT)

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
