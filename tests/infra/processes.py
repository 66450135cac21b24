"""Helpers shared by the control-plane and Kafka launchers: free ports, child processes,
what a launcher started (`Launched`) and the developer CLI of both (`make cluster-up`,
`make kafka-up`: `run_dev_cli`). Also used by the operator process of the tests
(tests/infra/operator_process.py).

Every child gets its own process group (so a tear-down kills the whole tree) and writes its
output to a log file in the launcher's throwaway directory, whose path ends up in any error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final, Literal, TypeVar

from tests.infra.paths import HACK_DIR, REPO_ROOT

T = TypeVar("T")


class InfraError(RuntimeError):
    """The test infrastructure could not be built or started; the message says why and where."""


def cache_dir() -> Path:
    """The version-keyed artifact cache, shared with the hack/ scripts."""
    return Path(os.environ.get("STREAMHERD_CACHE", Path.home() / ".cache" / "streamherd"))


def run_dir() -> Path:
    """Where `make cluster-up` / `make kafka-up` keep their long-lived state (gitignored)."""
    return Path(os.environ.get("STREAMHERD_RUN_DIR", REPO_ROOT / ".tmp" / "run"))


#: Where :func:`free_port` picks: below the kernel's ephemeral range (32768-60999 here) and
#: Kubernetes' NodePort range (30000-32767), so that no client connection's source port and
#: no NodePort can take a port between its pick and the server's bind.
PICKED_PORTS: Final = range(20000, 30000)
_ports = random.SystemRandom()


def _own_ports() -> range:
    """This test process's share of PICKED_PORTS: a slice per pytest-xdist worker, so that
    two workers never pick the same port between one's pick and its server's bind (two
    full CI runs of session 26 lost a worker's metrics port that way)."""
    name, count = (
        os.environ.get("PYTEST_XDIST_WORKER", ""),
        os.environ.get("PYTEST_XDIST_WORKER_COUNT", ""),
    )
    if not (name.startswith("gw") and name[2:].isdigit() and count.isdigit()):
        return PICKED_PORTS
    index, total = int(name[2:]), max(int(count), 1)
    size = len(PICKED_PORTS) // total
    if index >= total or size < 100:
        return PICKED_PORTS
    start = PICKED_PORTS.start + index * size
    return range(start, start + size)


#: Ports this process handed out: never handed out again (a server given one may not have
#: bound it yet).
_handed: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now, picked at random outside
    the ephemeral range. Port 0 would hand out an ephemeral port, which any outgoing
    connection on the machine may take as its source port before the server that was
    given it binds it: a CI run lost a worker to "Address already in use" that way (its
    metrics port, taken in the second between the pick and the worker's bind). Each test
    process picks in its own slice of the range, and never the same port twice."""
    ports = _own_ports()
    for _ in range(200):
        port = _ports.choice(ports)
        if port in _handed and len(_handed) < len(ports) // 2:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed.add(port)
            return port
    raise InfraError(f"no free port in {PICKED_PORTS} after 200 tries")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run_hack_script(name: str, env: Mapping[str, str] | None = None) -> Path:
    """Run an idempotent hack/ script that prints a cached directory, and return that directory.

    The scripts are instant when their artifacts are cached; cold, they build or download.
    """
    script = HACK_DIR / name
    proc = subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise InfraError(
            f"{script} failed with exit code {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    out = proc.stdout.strip().splitlines()
    if not out:
        raise InfraError(f"{script} printed no directory")
    return Path(out[-1])


def _tied_to_parent(argv: Sequence[str]) -> list[str]:
    """argv wrapped so the kernel SIGKILLs it when the test process dies, even by SIGKILL.

    setpriv (util-linux) sets PR_SET_PDEATHSIG, which survives its exec of argv: no
    preexec_fn, which is unsafe once librdkafka's threads run in the test process.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return list(argv)  # still stopped by the fixtures' tear-down, just not on a crash
    return [setpriv, "--pdeathsig", "KILL", "--", *argv]


@dataclass(frozen=True)
class Child:
    """A started child process and the log file that holds its output."""

    name: str
    pid: int
    log: Path


def spawn(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    tie_to_parent: bool = True,
) -> tuple[Child, subprocess.Popen[bytes]]:
    """Start argv in a new session (its own process group), output appended to log.

    tie_to_parent=False is for `make ...-up`: the process must outlive the command.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            _tied_to_parent(argv) if tie_to_parent else list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    return Child(name=name, pid=proc.pid, log=log), proc


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by us) still answers kill(0): look at its state.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL it if it is still there after grace."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:
        # Not a group leader we started: only ever signal our own groups.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not alive(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def wait_for(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    *,
    children: Sequence[tuple[Child, subprocess.Popen[bytes]]] = (),
    interval: float = 0.2,
) -> None:
    """Poll check() until it is true; fail fast, with log tails, if a child exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        for child, proc in children:
            if proc.poll() is not None:
                raise InfraError(
                    f"{child.name} exited with code {proc.returncode} while waiting for {what}; "
                    f"log {child.log}:\n{tail(child.log)}"
                )
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {c.name}: {c.log}\n{tail(c.log, 20)}" for c, _ in children)
            raise InfraError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")
        time.sleep(interval)


class WaitTimeout(AssertionError):
    """A test's wait_until ran out: the test fails (not the infrastructure)."""


def wait_until(
    what: str,
    probe: Callable[[], T | Literal[False] | None],
    timeout: float = 120.0,
    interval: float = 0.5,
) -> T:
    """Poll `probe` until it returns something truthy, and return that; raise WaitTimeout
    naming `what` and the last value if it never does. For the tests' own waits (the
    operator harnesses); wait_for is the infrastructure's."""
    deadline = time.monotonic() + timeout
    last: T | Literal[False] | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass(kw_only=True)
class Launched:
    """Processes a launcher started and their throwaway directory. stop() stops them, the
    last started first, and removes the directory unless keep_dir (a failed session keeps
    it for its logs)."""

    workdir: Path
    pids: list[int]
    keep_dir: bool = False
    grace: ClassVar[float] = 10.0  # seconds from SIGTERM to SIGKILL, per process

    def stop(self) -> None:
        for pid in reversed(self.pids):
            stop_group(pid, grace=self.grace)
        if not self.keep_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass(frozen=True)
class DevService:
    """One service of the developer CLI (`python -m tests.infra.<module> up|env|down`).

    Its state lives in run_dir()/<state_dir>/ (the service's working directory too):
    state.json holds the pids and `key`: the value that `export <env_var>=...` hands to the
    tests, which then reuse the service instead of starting their own.
    """

    what: str  # "Kafka broker": for the messages
    make: str  # "kafka": the make targets are <make>-up / -env / -down
    state_dir: str
    env_var: str
    key: str  # the state's field for the exported value
    logs: str  # where the logs are, relative to the state directory
    start: Callable[[Path], tuple[Launched, str]]  # workdir -> (processes, exported value)
    answers: Callable[[str], bool] = lambda _value: True  # is the running one still usable
    env_hint: str = ""  # one more line for `env`, with {value}


def _dev_state(service: DevService) -> Path:
    return run_dir() / service.state_dir / "state.json"


def _dev_read(state: Path, key: str) -> tuple[list[int], str]:
    info = json.loads(state.read_text())
    # The Kafka state of an earlier version held one "pid": a broker started then still stops.
    pids = info.get("pids") or [info["pid"]]
    return [int(p) for p in pids], str(info[key])


def _dev_up(service: DevService) -> int:
    state = _dev_state(service)
    if state.exists():
        pids, value = _dev_read(state, service.key)
        if all(alive(p) for p in pids) and service.answers(value):
            print(f"export {service.env_var}={value}")
            return 0
        _dev_down(service)
    workdir = state.parent
    shutil.rmtree(workdir, ignore_errors=True)
    launched, value = service.start(workdir)
    state.write_text(json.dumps({"pids": launched.pids, service.key: value}))
    print(
        f"# {service.what} running (logs: {workdir / service.logs}); "
        f"stop: make {service.make}-down",
        file=sys.stderr,
    )
    print(f"export {service.env_var}={value}")
    return 0


def _dev_env(service: DevService) -> int:
    state = _dev_state(service)
    if not state.exists():
        print(f"no {service.what}: run `make {service.make}-up`", file=sys.stderr)
        return 1
    _pids, value = _dev_read(state, service.key)
    print(f"export {service.env_var}={value}")
    if service.env_hint:
        print(service.env_hint.format(value=value))
    return 0


def _dev_down(service: DevService) -> int:
    state = _dev_state(service)
    if state.exists():
        pids, _value = _dev_read(state, service.key)
        for pid in reversed(pids):
            stop_group(pid, grace=15.0)
    shutil.rmtree(state.parent, ignore_errors=True)
    return 0


def run_dev_cli(
    service: DevService, prog: str, description: str | None, argv: list[str] | None
) -> int:
    """`up` (start, or reuse the one running), `env` (print its export), `down`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "env"])
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)
    commands = {"up": _dev_up, "down": _dev_down, "env": _dev_env}
    try:
        return commands[args.command](service)
    except InfraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
