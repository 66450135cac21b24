"""`streamherd run` with a Kafka client whose call ignores its timeout (librdkafka issue 5456,
decision 0186): it leaves at once with the worker's code 4 and one clear line, as the worker
does (workers/main.py ``exit_stuck``), not through the interpreter's exit, which waits on
the stuck client. Run through the CLI's entry point in a subprocess, so the real exit is
what is observed, with a bound."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamherd.operator import local
from streamherd.workers.kafkaclients import StuckCallError
from streamherd.workers.main import STUCK_EXIT_CODE
from tests.infra.paths import EXAMPLES_DIR
from tests.unit.test_cli_run_database import args as run_args
from tests.unit.test_cli_run_database import failing

#: The CLI's entry point with a source whose call never returns (see the script's docstring).
SCRIPT = Path(__file__).with_name("stuck_client_run.py")


def test_a_stuck_client_ends_the_run_at_once_with_the_workers_code(tmp_path: Path) -> None:
    script = SCRIPT
    manifest = EXAMPLES_DIR / "01-clicks-local.yaml"
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, str(script), "run", str(manifest), "--quiet",
             "--checkpoint-dir", str(tmp_path / "checkpoints")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(
            f"streamherd run did not exit within 60 s; stderr:\n{hung.stderr!r}"
        ) from None
    assert time.monotonic() - started < 60
    assert done.returncode == STUCK_EXIT_CODE, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: a Kafka client is stuck: send_offsets_to_transaction"), (
        done.stderr
    )
    assert f"(code {STUCK_EXIT_CODE})" in lines[-1] and str(tmp_path / "checkpoints") in lines[-1]
    assert "Traceback" not in done.stderr, done.stderr


class _GonePipe(io.StringIO):
    """A stream whose reader went away (``streamherd run ... | head``): flushing raises."""

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


class _Left(BaseException):
    """Where exit_stuck would have ended the process."""


def test_a_stuck_client_ends_the_run_even_when_its_output_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The output's reader went away (a closed pipe): flushing it before leaving raised
    BrokenPipeError, which left run_local instead of exit_stuck, through the interpreter's
    exit that waits on the stuck client. Nothing may stand between the stuck call and the
    exit at once: the run still reaches exit_stuck."""

    stuck = StuckCallError("send_offsets_to_transaction did not return within 30 s")
    monkeypatch.setattr(local, "run_pipeline", failing(stuck))
    monkeypatch.setattr(local, "exit_stuck", failing(_Left()))
    with pytest.raises(_Left):
        local.run_local(run_args(tmp_path), out=_GonePipe(), err=_GonePipe())


def test_a_stuck_fencing_call_ends_recover_at_once_with_the_workers_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`streamherd recover` fences writers with init_transactions, bounded since every
    transactional call is (decision 0186): a stuck one was reported as any failure (exit 1)
    and left through the interpreter's exit, which waits on the stuck client. It leaves as
    `run` and the worker do: one line, then exit_stuck."""

    stuck = StuckCallError("init_transactions did not return within 60 s")
    monkeypatch.setattr(local, "recover_stopped", failing(stuck))
    monkeypatch.setattr(local, "exit_stuck", failing(_Left()))
    args = argparse.Namespace(
        worker_config=None,
        file=str(EXAMPLES_DIR / "01-clicks-local.yaml"),
        namespace="default",
        bootstrap_servers=None,
    )
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(_Left):
        local.recover_local(args, out=io.StringIO())
    assert err.getvalue().startswith("error: a Kafka client is stuck: init_transactions"), (
        err.getvalue()
    )
