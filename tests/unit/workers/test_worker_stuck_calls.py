"""A librdkafka call that ignores its own timeout (send_offsets_to_transaction after the only
broker restarted: librdkafka issue 5456) must not hold the worker for good:
``kafkaclients.bounded_call`` gives it a bound and raises StuckCallError past it, and the
worker exits with STUCK_EXIT_CODE (a crash, which exactly-once survives) instead of hanging
where even SIGTERM is not handled. tests/integration/engine/test_engine_broker_crashes.py
meets the real hang on the broker."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from streamherd.workers.kafkaclients import StuckCallError, bounded_call


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
