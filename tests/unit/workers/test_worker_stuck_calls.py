"""A librdkafka call that ignores its own timeout (send_offsets_to_transaction after the only
broker restarted: librdkafka issue 5456) must not hold the worker for good:
``kafkaclients.bounded_call`` gives it a bound and raises StuckCallError past it, and the
worker exits with STUCK_EXIT_CODE (a crash, which exactly-once survives) instead of hanging
where even SIGTERM is not handled. tests/integration/engine/test_engine_broker_crashes.py
meets the real hang on the broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streamherd.workers import kafkaclients
from streamherd.workers.kafkaclients import (
    ABORT_ATTEMPTS,
    StuckCallError,
    TransactionalProducer,
    abort_retrying,
    bounded_call,
)


def test_a_call_that_returns_in_time_gives_its_value() -> None:
    assert bounded_call(lambda: 7, 5.0, "x") == 7


def test_a_call_that_fails_in_time_raises_its_own_error() -> None:
    def fails() -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out"))

    with pytest.raises(KafkaException):
        bounded_call(fails, 5.0, "x")


def test_a_call_that_does_not_return_is_stuck_and_named() -> None:
    release = threading.Event()
    try:
        with pytest.raises(StuckCallError, match="send_offsets_to_transaction did not return"):
            bounded_call(lambda: release.wait(60), 0.2, "send_offsets_to_transaction")
    finally:
        release.set()  # the stuck call's thread ends with the test


class _NeverReturns(Producer):
    """A producer whose transactional calls wait until released: the librdkafka hang."""

    release = threading.Event()

    def init_transactions(self, timeout: float = -1) -> None:
        self.release.wait(60)

    def commit_transaction(self, timeout: float = -1) -> None:
        self.release.wait(60)

    def abort_transaction(self, timeout: float = -1) -> None:
        self.release.wait(60)

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group_metadata: Any, timeout: float = -1
    ) -> None:
        self.release.wait(60)


class _Hanging(TransactionalProducer, _NeverReturns):
    """TransactionalProducer's bound around the hang (its super() is _NeverReturns)."""


CALLS: dict[str, Callable[[TransactionalProducer], None]] = {
    "init_transactions": lambda p: p.init_transactions(0.1),
    "commit_transaction": lambda p: p.commit_transaction(0.1),
    "abort_transaction": lambda p: p.abort_transaction(0.1),
    "send_offsets_to_transaction": lambda p: p.send_offsets_to_transaction([], None, 0.1),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_transactional_call_of_the_producer_is_bounded(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not only the call seen hanging: init, commit and abort wait on the same coordinator.
    monkeypatch.setattr(kafkaclients, "STUCK_GRACE_SECONDS", 0.2)
    monkeypatch.setattr(_NeverReturns, "release", threading.Event())
    producer = _Hanging({"bootstrap.servers": "127.0.0.1:1", "transactional.id": "t"})
    started = time.monotonic()
    try:
        with pytest.raises(StuckCallError, match=f"{name} did not return within"):
            CALLS[name](producer)
    finally:
        _NeverReturns.release.set()
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_transactional_call_without_a_finite_timeout_is_refused(name: str) -> None:
    producer = TransactionalProducer({"bootstrap.servers": "127.0.0.1:1", "transactional.id": "t"})
    call = getattr(producer, name)
    args: tuple[Any, ...] = ([], None) if name == "send_offsets_to_transaction" else ()
    with pytest.raises(ValueError, match="needs a finite timeout"):
        call(*args)


def test_a_real_call_that_keeps_its_timeout_raises_librdkafkas_error() -> None:
    # No broker: librdkafka times out on its own, and its error passes through the bound.
    producer = TransactionalProducer(
        {"bootstrap.servers": "127.0.0.1:1", "transactional.id": "t", "log_level": 0}
    )
    with pytest.raises(KafkaException) as raised:
        producer.init_transactions(0.3)
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT


class Aborts:
    """A producer whose abort_transaction answers from a script (None: done)."""

    def __init__(self, *answers: KafkaError | None) -> None:
        self.answers, self.calls = list(answers), 0

    def abort_transaction(self, timeout: float) -> None:
        self.calls += 1
        answer = self.answers.pop(0)
        if answer is not None:
            raise KafkaException(answer)


TIMED_OUT = KafkaError(KafkaError._TIMED_OUT, "retry call to resume", retriable=True)


def test_an_abort_whose_time_ran_out_is_called_again_then_given_up() -> None:
    """librdkafka's abort that timed out is resumed by calling it again; a CI run of the
    broker-freeze test failed the worker on the first such timeout. Retried up to
    ABORT_ATTEMPTS times with a heartbeat between; then, or at once for an error that is not
    retriable, raised (the engine then replaces its clients: decision 0194)."""
    beats: list[int] = []
    producer = Aborts(TIMED_OUT, TIMED_OUT, None)
    abort_retrying(producer, 30, ABORT_ATTEMPTS, lambda: beats.append(1))
    assert producer.calls == 3 and beats == [1, 1]
    producer = Aborts(*[TIMED_OUT] * ABORT_ATTEMPTS)
    with pytest.raises(KafkaException):
        abort_retrying(producer, 30, ABORT_ATTEMPTS, lambda: None)
    assert producer.calls == ABORT_ATTEMPTS
    for final in (
        KafkaError(KafkaError._STATE, "not in a transaction"),
        KafkaError(KafkaError._FENCED, "fenced", fatal=True, retriable=True),
    ):
        producer = Aborts(final, None)
        with pytest.raises(KafkaException):
            abort_retrying(producer, 30, ABORT_ATTEMPTS, lambda: None)
        assert producer.calls == 1
