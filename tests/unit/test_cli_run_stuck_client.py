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
import textwrap
import time
from pathlib import Path

import pytest

from streamherd.operator import local
from streamherd.workers.kafkaclients import StuckCallError
from streamherd.workers.main import STUCK_EXIT_CODE
from tests.infra.paths import EXAMPLES_DIR

#: The CLI's entry point, with the engine's source factory wrapped: the source's second poll
#: makes a call that never returns through ``bounded_call`` (its bound cut to 0.2 s), as
#: send_offsets_to_transaction did. The stuck client's destructor is modelled by an exit
#: handler that waits for that call: librdkafka's destroy joins the thread still in it, so
#: an interpreter exit never ends.
SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading
    from streamherd import cli
    from streamherd.workers import engine
    from streamherd.workers.kafkaclients import bounded_call

    stuck = threading.Event()  # never set: the call never returns
    atexit.register(stuck.wait)  # the stuck client's destructor

    class StuckSource:
        def __init__(self, inner):
            self.inner, self.polls = inner, 0
        def __getattr__(self, name):
            return getattr(self.inner, name)
        @property
        def exhausted(self):
            return False
        def poll(self, max_records, timeout):
            self.polls += 1
            if self.polls == 2:
                bounded_call(stuck.wait, 0.2, "send_offsets_to_transaction")
            return self.inner.poll(max_records, timeout)

    real = engine.open_source
    engine.open_source = lambda *a, **k: StuckSource(real(*a, **k))
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def test_a_stuck_client_ends_the_run_at_once_with_the_workers_code(tmp_path: Path) -> None:
    script = tmp_path / "run_stuck.py"
    script.write_text(SCRIPT)
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

    def stuck(*_args: object, **_kwargs: object) -> None:
        raise StuckCallError("send_offsets_to_transaction did not return within 30 s")

    def leave() -> None:
        raise _Left

    monkeypatch.setattr(local, "run_pipeline", stuck)
    monkeypatch.setattr(local, "exit_stuck", leave)
    args = argparse.Namespace(
        file=str(EXAMPLES_DIR / "01-clicks-local.yaml"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        metrics_port=0,
        bootstrap_servers=None,
        quiet=True,
        max_seconds=None,
    )
    with pytest.raises(_Left):
        local.run_local(args, out=_GonePipe(), err=_GonePipe())


def test_a_stuck_fencing_call_ends_recover_at_once_with_the_workers_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`streamherd recover` fences writers with init_transactions, bounded since every
    transactional call is (decision 0186): a stuck one was reported as any failure (exit 1)
    and left through the interpreter's exit, which waits on the stuck client. It leaves as
    `run` and the worker do: one line, then exit_stuck."""

    def stuck(*_args: object, **_kwargs: object) -> None:
        raise StuckCallError("init_transactions did not return within 60 s")

    def leave() -> None:
        raise _Left

    monkeypatch.setattr(local, "recover_stopped", stuck)
    monkeypatch.setattr(local, "exit_stuck", leave)
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
