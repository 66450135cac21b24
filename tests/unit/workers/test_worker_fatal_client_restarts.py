"""run_pipeline replaces a Kafka client that failed fatally (decision 0194): the engine starts
again in-process, the first time at once, the next ones within FATAL_CLIENT_WINDOW_SECONDS
after 1, 2, 4, 8 s; one more than FATAL_CLIENT_RESTARTS in that window is raised, whatever
the engines committed in between (two processes with one transactional id would fence each
other after every checkpoint: a review's finding).

The engine is scripted here (the policy is pure logic); the real path, a producer the broker
fenced under a running worker, is tests/integration/engine/test_engine_exactly_once.py."""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Final

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers import main
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import RunSummary
from streamherd.workers.kafkaclients import FatalClientError
from streamherd.workers.repartitioning import TopicNotReadyError
from streamherd.workers.sources import KafkaSource

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
    """A stop flag whose waits move a fake clock instead of sleeping, recorded; set after
    `stop_after` waits."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.waits: list[float] = []
        self.stop_after = stop_after
        self.now = 1000.0

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout or 0.0)
        self.now += timeout or 0.0
        if self.stop_after is not None and len(self.waits) >= self.stop_after:
            self.set()
        return self.is_set()


@pytest.fixture
def stop(monkeypatch: pytest.MonkeyPatch) -> RecordingStop:
    flag = RecordingStop()
    monkeypatch.setattr(main, "monotonic", lambda: flag.now)
    return flag


#: A replacement engine that cannot start: the broker does not answer init_transactions.
NO_START: Final = "no-start"
#: An engine that started and then lost the broker (a transient error, not a fatal one).
LOST_LATER: Final = "lost-later"
#: A replacement whose repartition or changelog topic showed no leader in time.
TOPICS_NOT_READY: Final = "topics-not-ready"
#: An engine that started and then met an error no wait cures (its rights taken away).
REFUSED_LATER: Final = "refused-later"


def failure(step: str) -> Exception:
    """What an engine that fails with ``step`` raises."""
    if step == TOPICS_NOT_READY:
        return TopicNotReadyError("repartition topic t.repartition is not ready: missing")
    if step == REFUSED_LATER:
        return KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "no broker"))


def scripted(script: Sequence[int | str | None]) -> tuple[type[Any], list[Any]]:
    """An Engine class whose n-th instance commits script[n] checkpoints and then fails
    fatally, or (None) finishes, or raises a transient error before it began (NO_START,
    TOPICS_NOT_READY) or after (LOST_LATER), or one no wait cures after (REFUSED_LATER)."""
    made: list[Any] = []

    class Engine:
        def __init__(self, config: WorkerConfig, **kwargs: Any) -> None:
            self.stop = kwargs["stop"]
            self.counters = Counters()
            self.discarded = 0
            self.began = False
            self.outputs = SimpleNamespace(discard=self.discard)
            self.step = script[len(made)]
            made.append(self)

        def run(self) -> RunSummary:
            if self.step is None:
                return self.summary("exhausted", finished=True)
            if isinstance(self.step, str):
                self.began = self.step in (LOST_LATER, REFUSED_LATER)
                raise failure(self.step)
            self.counters.checkpoints += self.step
            raise FatalClientError("fenced")

        def discard(self) -> None:
            self.discarded += 1

        def summary(self, reason: str, finished: bool) -> RunSummary:
            return RunSummary(0, 0, 0, 0, 0, 0, self.counters.checkpoints, 0.0, finished, reason)

    return Engine, made


def test_restarts_wait_longer_and_the_sixth_in_the_window_is_raised(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop
) -> None:
    engine, made = scripted([1] * 10)  # each commits a checkpoint: no matter
    monkeypatch.setattr(main, "Engine", engine)
    with pytest.raises(FatalClientError):
        main.run_pipeline(CONFIG, stop=stop)
    assert main.FATAL_CLIENT_RESTARTS == 5
    assert stop.waits == [0.0, 1.0, 2.0, 4.0, 8.0]
    assert len(made) == 6
    assert all(e.counters is made[0].counters for e in made)  # one summary for the run
    # What a replaced engine wrote and did not deliver is dropped, never sent after the next.
    assert [e.discarded for e in made] == [1, 1, 1, 1, 1, 0]


def test_restarts_further_apart_than_the_window_go_on(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop
) -> None:
    engine, made = scripted([0] * 12 + [None])
    monkeypatch.setattr(main, "Engine", engine)
    original = engine.run

    def run_for_a_while(self: Any) -> RunSummary:
        stop.now += main.FATAL_CLIENT_WINDOW_SECONDS / 2  # each engine runs 150 s
        summary: RunSummary = original(self)
        return summary

    monkeypatch.setattr(engine, "run", run_for_a_while)
    summary = main.run_pipeline(CONFIG, stop=stop)
    assert summary.reason == "exhausted" and len(made) == 13
    # Never more than two restarts in one window: the first at once, then each 1 s after
    # the one before it, for as long as the failures stay that far apart.
    assert stop.waits == [0.0] + [1.0] * 11


def test_a_stop_while_waiting_ends_the_run_as_stopped(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop
) -> None:
    engine, made = scripted([0, 0, 0])
    monkeypatch.setattr(main, "Engine", engine)
    stop.stop_after = 2
    seen: list[RunSummary] = []
    summary = main.run_pipeline(CONFIG, stop=stop, progress=seen.append)
    assert summary.reason == "stopped" and seen == [summary]
    assert len(made) == 2


def test_a_fatal_client_while_stopping_is_raised(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop
) -> None:
    """The stop's own checkpoint failed: the worker says so rather than start again."""
    engine, made = scripted([1, None])
    monkeypatch.setattr(main, "Engine", engine)
    stop.set()
    with pytest.raises(FatalClientError):
        main.run_pipeline(CONFIG, stop=stop)
    assert len(made) == 1


@pytest.mark.parametrize(
    ("step", "raised"),
    [(NO_START, KafkaException), (TOPICS_NOT_READY, TopicNotReadyError)],
    ids=["init-transactions-unanswered", "topics-without-leaders"],
)
def test_a_replacement_that_cannot_start_yet_is_tried_again_in_the_bound(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop, step: str, raised: type[Exception]
) -> None:
    """The outage that fenced an engine may outlast its replacement's start (review 84):
    the broker does not answer init_transactions yet, or is still electing the repartition
    or changelog topic's leaders (that failed the worker: a RuntimeError). That start is
    tried again, waiting longer, within the same bound; past it, the error is raised. A
    worker's first engine that never began (no broker there at all) fails at once, as a
    pod start would."""
    engine, made = scripted([1, step, step, None])
    monkeypatch.setattr(main, "Engine", engine)
    assert main.run_pipeline(CONFIG, stop=stop).reason == "exhausted"
    assert stop.waits == [0.0, 1.0, 2.0] and len(made) == 4
    engine, made = scripted([1, *[step] * 5])
    monkeypatch.setattr(main, "Engine", engine)
    with pytest.raises(raised):
        main.run_pipeline(CONFIG, stop=stop)
    assert len(made) == 1 + main.FATAL_CLIENT_RESTARTS
    engine, made = scripted([step])
    monkeypatch.setattr(main, "Engine", engine)
    with pytest.raises(raised):
        main.run_pipeline(CONFIG, stop=stop)
    assert len(made) == 1


def test_an_engine_that_ran_and_met_a_transient_error_is_started_again(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop
) -> None:
    """An engine that ran and met a transient Kafka error it did not retry itself (a CI
    run: an assignment's committed-offsets lookup timed out after the broker came back) is
    started again under the bound."""
    engine, made = scripted([LOST_LATER, LOST_LATER, None])
    monkeypatch.setattr(main, "Engine", engine)
    assert main.run_pipeline(CONFIG, stop=stop).reason == "exhausted"
    assert len(made) == 3


def test_an_error_no_wait_cures_fails_the_worker_even_after_restarts(
    monkeypatch: pytest.MonkeyPatch, stop: RecordingStop
) -> None:
    """Rights taken away (TOPIC_AUTHORIZATION_FAILED) are not the broker being away: the
    worker fails and says so, however many restarts came before."""
    engine, made = scripted([1, REFUSED_LATER, None])
    monkeypatch.setattr(main, "Engine", engine)
    with pytest.raises(KafkaException) as raised:
        main.run_pipeline(CONFIG, stop=stop)
    assert raised.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert len(made) == 2


Outcome = tuple[str, float]  # what an engine does, and for how long it ran first
outcomes = st.lists(
    st.one_of(
        st.tuples(st.just("fatal"), st.sampled_from([0.0, 1.0, 30.0, 150.0, 299.0, 301.0, 900.0])),
        st.tuples(st.sampled_from([NO_START, TOPICS_NOT_READY]), st.just(0.0)),
        st.tuples(st.just(LOST_LATER), st.just(5.0)),
    ),
    max_size=14,
).map(lambda drawn: [*drawn, ("finish", 1.0)])


@settings(max_examples=300)
@given(script=outcomes)
def test_any_run_of_failures_restarts_within_the_bound_and_ends_as_its_model_says(
    script: list[Outcome],
) -> None:
    """Any sequence of engines failing fatally after any run time, replacements that cannot
    start, engines losing the broker (all three restarted under one bound), then one that
    finishes: the waits, the number of
    engines and how the run ends are the model's (below); and whatever happens, no window of
    FATAL_CLIENT_WINDOW_SECONDS holds more than FATAL_CLIENT_RESTARTS restarts, and no wait
    exceeds 8 s."""
    with pytest.MonkeyPatch.context() as patch:
        stop = RecordingStop()
        patch.setattr(main, "monotonic", lambda: stop.now)
        patch.setattr(gc, "collect", lambda: 0)  # the fake engines hold no clients
        made: list[Any] = []
        restarted_at: list[float] = []  # when each restart was decided

        class Engine:
            def __init__(self, config: WorkerConfig, **kwargs: Any) -> None:
                self.counters = Counters()
                self.began = False
                self.outputs = SimpleNamespace(discard=lambda: restarted_at.append(stop.now))
                self.what, self.runs_for = script[len(made)]
                made.append(self)

            def run(self) -> RunSummary:
                stop.now += self.runs_for
                if self.what == "finish":
                    return self.summary("exhausted", finished=True)
                if self.what == "fatal":
                    raise FatalClientError("fenced")
                self.began = self.what == LOST_LATER
                raise failure(self.what)

            def summary(self, reason: str, finished: bool) -> RunSummary:
                return RunSummary(0, 0, 0, 0, 0, 0, 0, 0.0, finished, reason)

        patch.setattr(main, "Engine", Engine)
        # The model.
        now, window, waits, ends = 1000.0, list[float](), list[float](), "exhausted"
        engines = 0
        for what, runs_for in script:
            engines += 1
            now += runs_for
            if what == "finish":
                break
            if what in (NO_START, TOPICS_NOT_READY) and not waits:  # a first that never began
                ends = "raised"
                break
            window = [t for t in window if now - t < main.FATAL_CLIENT_WINDOW_SECONDS]
            if len(window) >= main.FATAL_CLIENT_RESTARTS:
                ends = "raised"
                break
            delay = 2.0 ** (len(window) - 1) if window else 0.0
            window.append(now)
            waits.append(delay)
            now += delay
        try:
            summary = main.run_pipeline(CONFIG, stop=stop)
            got = summary.reason
        except (FatalClientError, KafkaException, TopicNotReadyError):
            got = "raised"
        assert (got, stop.waits, len(made)) == (ends, waits, engines)
        # The invariants, whatever the model says.
        for t in restarted_at:
            near = [u for u in restarted_at if t <= u < t + main.FATAL_CLIENT_WINDOW_SECONDS]
            assert len(near) <= main.FATAL_CLIENT_RESTARTS
        assert all(w <= 8.0 for w in stop.waits)


class BareErrorConsumer:
    """consume() raises the KafkaError object itself, as confluent-kafka did in a CI run
    (set the way its C code sets it: no exception instance, which `except Exception` misses)."""

    def consume(self, max_records: int, timeout: float) -> list[Any]:
        raise_bare(KafkaError(KafkaError._TIMED_OUT, "committed offsets timed out"))
        return []  # never reached: the call above raised

    def close(self) -> None:  # runs the revoke callback, which can fail the same way
        raise_bare(KafkaError(KafkaError._TRANSPORT, "broker down"))


def raise_bare(error: KafkaError) -> None:
    raise_object = ctypes.pythonapi.PyErr_SetObject
    raise_object.argtypes = [ctypes.py_object, ctypes.py_object]
    raise_object.restype = None
    raise_object(KafkaError, error)


def test_a_bare_kafka_error_from_the_consumer_is_raised_as_the_exception_it_is() -> None:
    """The worker died past its own error handling on it (no `event=failed`, a traceback at
    the top); now it is a KafkaException, transient, which starts the engine again. From
    consume() (seen in CI) and close() (which runs callbacks too)."""
    source = object.__new__(KafkaSource)
    source._consumer = BareErrorConsumer()  # type: ignore[assignment]
    with pytest.raises(KafkaException) as raised:
        source.poll(10, 0.1)
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT
    with pytest.raises(KafkaException) as raised:
        source.close()
    assert raised.value.args[0].code() == KafkaError._TRANSPORT
