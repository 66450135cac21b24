"""run_pipeline replaces a Kafka client that failed fatally (decision 0194): the engine starts
again in-process, at once after progress, with growing waits when it makes none, and the
error is raised after FATAL_CLIENT_RESTARTS restarts in a row with no checkpoint committed.

The engine is scripted here (the policy is pure logic); the real path, a producer the broker
fenced under a running worker, is tests/integration/engine/test_engine_exactly_once.py."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from streamherd.workers import main
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import RunSummary
from streamherd.workers.kafkaclients import FatalClientError

CONFIG = WorkerConfig.model_validate(
    {
        "pipeline": {"name": "p"},
        "source": {"generator": {"count": 1}},
        "processor": {"steps": []},
        "sink": {"stdout": {}},
        "runtime": {"metricsPort": 0},
    }
)


@dataclass
class Counters:
    checkpoints: int = 0


class RecordingStop(threading.Event):
    """A stop flag whose waits return at once and are recorded; set after `stop_after`."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.stop_after = stop_after

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        if self.stop_after is not None and len(self.waits) >= self.stop_after:
            self.set()
        return self.is_set()


def scripted(script: Sequence[int | None]) -> tuple[type[Any], list[Any]]:
    """An Engine class whose n-th instance commits script[n] checkpoints and then fails
    fatally, or (None) finishes."""
    made: list[Any] = []

    class Engine:
        def __init__(self, config: WorkerConfig, **kwargs: Any) -> None:
            self.stop = kwargs["stop"]
            self.counters = Counters()
            self.step = script[len(made)]
            made.append(self)

        def run(self) -> RunSummary:
            if self.step is None:
                return self.summary("exhausted", finished=True)
            self.counters.checkpoints += self.step
            raise FatalClientError("fenced")

        def summary(self, reason: str, finished: bool) -> RunSummary:
            return RunSummary(0, 0, 0, 0, 0, 0, self.counters.checkpoints, 0.0, finished, reason)

    return Engine, made


def test_a_fatal_client_after_progress_starts_again_at_once_and_the_counts_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, made = scripted([3, 2, 1, None])
    monkeypatch.setattr(main, "Engine", engine)
    stop = RecordingStop()
    summary = main.run_pipeline(CONFIG, stop=stop)
    assert summary.reason == "exhausted" and len(made) == 4
    assert stop.waits == [0.0, 0.0, 0.0]
    assert summary.checkpoints == 6  # one summary for the whole run
    assert all(e.counters is made[0].counters for e in made)


def test_restarts_without_progress_wait_longer_and_end_in_the_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, made = scripted([1] + [0] * (main.FATAL_CLIENT_RESTARTS + 1))
    monkeypatch.setattr(main, "Engine", engine)
    stop = RecordingStop()
    with pytest.raises(FatalClientError):
        main.run_pipeline(CONFIG, stop=stop)
    # After progress: at once; then 1, 2, 4... s; the sixth failure in a row is raised.
    assert main.FATAL_CLIENT_RESTARTS == 5
    assert stop.waits == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(made) == 7


def test_progress_between_failures_starts_the_count_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Five failures without progress, one after a commit, five more: never raised.
    engine, made = scripted([0] * 5 + [1] + [0] * 5 + [None])
    monkeypatch.setattr(main, "Engine", engine)
    stop = RecordingStop()
    assert main.run_pipeline(CONFIG, stop=stop).reason == "exhausted"
    waits = [1.0, 2.0, 4.0, 8.0, 16.0]
    assert stop.waits == [*waits, 0.0, *waits]
    assert len(made) == 12


def test_a_stop_while_waiting_ends_the_run_as_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    engine, made = scripted([0, 0, 0])
    monkeypatch.setattr(main, "Engine", engine)
    stop = RecordingStop(stop_after=2)
    assert main.run_pipeline(CONFIG, stop=stop).reason == "stopped"
    assert len(made) == 2


def test_a_fatal_client_while_stopping_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop's own checkpoint failed: the worker says so rather than start again."""
    engine, made = scripted([1, None])
    monkeypatch.setattr(main, "Engine", engine)
    stop = RecordingStop()
    stop.set()
    with pytest.raises(FatalClientError):
        main.run_pipeline(CONFIG, stop=stop)
    assert len(made) == 1
