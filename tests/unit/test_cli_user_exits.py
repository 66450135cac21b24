"""`streamherd run` and `streamherd worker` as real processes (the generator source, no Kafka):
a user function that raises SystemExit, KeyboardInterrupt, GeneratorExit or a BaseException of
its own has its records dead-lettered and the run goes on to its end; a real SIGINT or SIGTERM
that lands while user code runs stops the run gracefully (exit 0, a last checkpoint) and
dead-letters nothing (decision 0187)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamherd.operator.builders.worker_config import build_worker_config, worker_config_json
from streamherd.operator.local import localize
from streamherd.operator.settings import OperatorSettings
from streamherd.workers.config import GeneratorSourceConfig
from streamherd.workers.generating import ClickGenerator
from tests.infra.paths import REPO_ROOT
from tests.unit.operator.operator_testkit import example_doc, pipeline_from

#: How long a run of the tests' few hundred clicks, or a graceful stop, may take at most.
DEADLINE = 60


def manifest(function: str, mode: str = "record", **generator: Any) -> dict[str, Any]:
    """examples/01-clicks-local.yaml with the user function ``function`` (of
    tests/unit/workers/userfuncs.py, in ``mode``) and these generator settings
    (``count=None``: endless)."""
    doc = example_doc("01-clicks-local")
    source = doc["spec"]["source"]["generator"]
    source.update(generator)
    if source.get("count") is None:
        source.pop("count", None)
    doc["spec"]["processor"]["function"] = {
        "callable": f"tests.unit.workers.userfuncs:{function}",
        "mode": mode,
    }
    return doc


def start(command: str, doc: dict[str, Any], tmp_path: Path) -> subprocess.Popen[bytes]:
    """``streamherd run FILE`` or ``streamherd worker --config FILE`` (the WorkerConfig the
    operator renders for ``doc``, localized as `run` localizes it), stdout (the sink) and
    stderr (progress, logs) to files in ``tmp_path``."""
    checkpoints = tmp_path / "ck"
    if command == "run":
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(doc))
        argv = ["run", str(path), "--checkpoint-dir", str(checkpoints)]
    else:
        rendered = build_worker_config(pipeline_from(doc), OperatorSettings())
        config = localize(
            rendered, checkpoint_dir=str(checkpoints), metrics_port=0, bootstrap_servers=None
        )
        path = tmp_path / "worker.json"
        path.write_text(worker_config_json(config))
        argv = ["worker", "--config", str(path)]
    with (tmp_path / "out").open("wb") as out, (tmp_path / "err").open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "streamherd", *argv],
            stdout=out,
            stderr=err,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        )


def finish(proc: subprocess.Popen[bytes], tmp_path: Path) -> tuple[int, str]:
    """The process's exit code and its stderr, killed if it has not ended in time."""
    try:
        code = proc.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        err = (tmp_path / "err").read_text()
        raise AssertionError(f"still running after {DEADLINE} s: {err}") from None
    return code, (tmp_path / "err").read_text()


def ended(command: str, err: str) -> tuple[str, int, int]:
    """How the run ended, records read and dead-lettered: `run`'s last line, the worker's
    ``event=stopped`` log line."""
    if command == "run":
        done = re.search(r"done \((\w+)\): .* in (\d+) .* dead-lettered (\d+) ", err)
    else:
        done = re.search(r"event=stopped reason=(\w+) records_in=(\d+) .*dead_lettered=(\d+)", err)
    assert done is not None, err
    return done[1], int(done[2]), int(done[3])


def leavers(count: int) -> int:
    """Clicks of the first ``count`` the example's filter keeps and whose ``bytes``
    ``userfuncs.leave_clicks`` raises on (a multiple of 7)."""
    settings = example_doc("01-clicks-local")["spec"]["source"]["generator"]
    generator = ClickGenerator(GeneratorSourceConfig.model_validate({**settings, "count": count}))
    clicks = [m.record() for m in generator.poll(count)]
    assert len(clicks) == count
    return sum(c["page"] != "/healthz" and c["bytes"] % 7 == 0 for c in clicks)


@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_user_functions_base_exceptions_are_dead_lettered_and_the_run_goes_on(
    command: str, tmp_path: Path
) -> None:
    """Clicks whose function raised SystemExit(0), SystemExit(3), SystemExit("text"),
    KeyboardInterrupt, GeneratorExit or a BaseException of the user's (one whose
    ``__str__`` raises too) ended the process with the function's exit code or a traceback
    at the first of them. Each is dead-lettered; the run reads every click and ends as a
    finished run does (exit 0)."""
    count = 600
    proc = start(command, manifest("leave_clicks", count=count), tmp_path)
    code, err = finish(proc, tmp_path)
    assert code == 0, err
    assert ended(command, err) == ("exhausted", count, leavers(count))
    assert leavers(count) > 20  # every kind of LEAVES, several times


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["run", "worker"])
def test_a_real_signal_inside_user_code_stops_the_run_gracefully(
    command: str, sig: signal.Signals, tmp_path: Path
) -> None:
    """The user function takes a millisecond a click (a fifth of a second a batch at most: the
    batch in hand ends soon, however far a loaded machine let it fall behind the generator's
    rate), so the signal lands inside it. SIGINT and SIGTERM stop the run as they always did
    (the worker) or now do (`streamherd run` died of SIGTERM without a checkpoint): the batch
    in hand finished, a last checkpoint written, exit 0. Neither is taken for the function's
    own KeyboardInterrupt: nothing is dead-lettered."""
    proc = start(command, manifest("dawdle_batch", "batch", count=None, rate=2000), tmp_path)
    try:
        deadline = time.monotonic() + DEADLINE
        # Windows on stdout: clicks have been going through the user function for a while.
        while not (tmp_path / "out").read_bytes() and proc.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        stopping = time.monotonic()
        code, err = finish(proc, tmp_path)
        took = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert code == 0, err
    reason, read, dead = ended(command, err)
    assert (reason, dead) == ("stopped", 0), err
    assert read > 0
    assert took < 10, f"took {took:.1f} s to stop"
    assert list((tmp_path / "ck").rglob("*")), "no checkpoint written"
    if command == "worker":
        assert f"event=stopping signal={sig.name}" in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_ends_the_run_at_once(sig: signal.Signals, tmp_path: Path) -> None:
    """The first Ctrl-C (or SIGTERM) asks for a graceful stop, which finishes the batch in
    hand: here a user function that takes a minute a record. A user who asks again wants
    out now; the second signal was ignored as the first was, and only SIGKILL ended the
    run. It ends at once, as a crash (the last checkpoint keeps it safe), with the shell's
    code of a process ended by that signal and one line that says so."""
    proc = start("run", manifest("linger", count=None, rate=10), tmp_path)
    try:
        deadline = time.monotonic() + DEADLINE
        while b"lingering" not in (tmp_path / "err").read_bytes() and proc.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "err").read_text()
            time.sleep(0.05)
        proc.send_signal(sig)
        time.sleep(0.5)
        assert proc.poll() is None, "the first signal must wait for the batch in hand"
        proc.send_signal(sig)
        stopping = time.monotonic()
        try:
            code = proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError("the second signal did not end the run") from None
        took = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    err = (tmp_path / "err").read_text()
    assert code == 128 + sig, err
    assert took < 5, f"took {took:.1f} s"
    assert f"stopped again ({sig.name}): leaving at once" in err.splitlines()[-1], err
