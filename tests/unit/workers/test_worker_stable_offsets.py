"""An exactly-once assignment's lookup of the group's committed offsets (read stably) waits
while it times out, up to the transaction timeout + 30 s, and raises anything else at once.

A dead worker's open transaction holds its offsets pending until the broker aborts it at
its timeout; the real broker case is in tests/integration/engine/test_engine_exactly_once.py
(``test_offsets_a_dead_workers_transaction_holds_are_waited_for_without_a_restart``)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any
from unittest.mock import patch

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streamherd.workers import engine as engine_module
from streamherd.workers.engine import Engine

ASKED = [TopicPartition("t", 0)]


class Lookups:
    """A source whose ``committed`` raises ``errors`` in turn, then answers."""

    def __init__(self, errors: list[int]) -> None:
        self.errors, self.calls = list(errors), 0

    def committed(self, asked: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return [TopicPartition(tp.topic, tp.partition, 42) for tp in asked]


class Clock:
    """time.monotonic advanced by each lookup's 10 s timeout."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 10.0
        return self.now


def engine(stop: bool = False) -> Any:
    beats: list[int] = []
    event = threading.Event()
    if stop:
        event.set()
    return SimpleNamespace(_transaction_timeout_ms=60_000, stop=event,
                           _beat=lambda: beats.append(1), beats=beats)  # fmt: skip


def stable(fake: Any, source: Lookups) -> list[TopicPartition]:
    with patch.object(engine_module, "time", SimpleNamespace(monotonic=Clock().monotonic)):
        answer: list[TopicPartition] = Engine._stable_committed(fake, source, ASKED)  # type: ignore[arg-type]
    return answer


def test_timeouts_within_the_transaction_timeout_are_waited_for() -> None:
    fake, source = engine(), Lookups([KafkaError._TIMED_OUT] * 4)
    assert [tp.offset for tp in stable(fake, source)] == [42]
    assert source.calls == 5 and len(fake.beats) == 4  # each try is a heartbeat


def test_timeouts_past_the_transaction_timeout_raise() -> None:
    fake, source = engine(), Lookups([KafkaError._TIMED_OUT] * 20)
    with pytest.raises(KafkaException):
        stable(fake, source)
    assert 5 <= source.calls <= 10  # 60 + 30 s of 10 s tries


@pytest.mark.parametrize("code", [KafkaError._TRANSPORT, KafkaError.GROUP_AUTHORIZATION_FAILED])
def test_other_errors_raise_at_once(code: int) -> None:
    fake, source = engine(), Lookups([code])
    with pytest.raises(KafkaException):
        stable(fake, source)
    assert source.calls == 1


def test_a_stop_ends_the_wait() -> None:
    fake, source = engine(stop=True), Lookups([KafkaError._TIMED_OUT] * 3)
    with pytest.raises(KafkaException):
        stable(fake, source)
    assert source.calls == 1


def test_the_wait_stays_two_minutes_short_of_the_poll_interval() -> None:
    """A long transaction timeout (six checkpoint intervals, up to 15 minutes) must not keep
    the loop from its poll past max.poll.interval.ms: the consumer would leave the group."""
    fake, source = engine(), Lookups([KafkaError._TIMED_OUT] * 100)
    fake._transaction_timeout_ms = 900_000
    with pytest.raises(KafkaException):
        stable(fake, source)
    assert source.calls <= 18  # 180 s of 10 s tries: the restores follow in the callback


def test_the_worker_is_not_ready_while_it_waits() -> None:
    """Joined with none of its partitions set up yet, the worker said "no partitions
    assigned (standby)", ready, for the whole wait: a rollout counted it as serving."""
    fake = engine()
    fake.__dict__.update(
        healthy=lambda: (True, "ok"), _running=True, _joined=True, _awaiting_offsets=0,
        outputs=SimpleNamespace(health=lambda: (True, "ok")), partitions={},
        source=SimpleNamespace(group_offsets=True),
    )  # fmt: skip
    said: list[tuple[bool, str]] = []

    class Watched(Lookups):
        def committed(self, asked: list[TopicPartition], timeout: float) -> list[TopicPartition]:
            said.append(Engine.ready(fake))
            return super().committed(asked, timeout)

    assert [tp.offset for tp in stable(fake, Watched([KafkaError._TIMED_OUT] * 2))] == [42]
    assert said[0][0] is True  # before the first timeout: nothing waited for yet
    assert [ok for ok, _ in said[1:]] == [False, False]
    assert "wait for their committed offsets" in said[1][1]
    assert Engine.ready(fake) == (True, "in the consumer group, no partitions assigned (standby)")
    # An error ends the wait too: the worker restarts, and is no longer said to wait.
    with pytest.raises(KafkaException):
        stable(fake, Watched([KafkaError._TIMED_OUT, KafkaError._TRANSPORT]))
    assert fake._awaiting_offsets == 0


class PartitionErrors(Lookups):
    """A source whose answers carry ``errors`` on the partition in turn (the lookup itself
    succeeds), then answer cleanly: nothing committed. (librdkafka's TopicPartition.error is
    read-only: the answer's partitions are plain objects of its attributes.)"""

    def committed(self, asked: list[TopicPartition], timeout: float) -> list[Any]:
        self.calls += 1
        error = KafkaError(self.errors.pop(0)) if self.errors else None
        return [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=-1001,
                                metadata=None, error=error) for tp in asked]  # fmt: skip


def test_a_partitions_error_is_never_read_as_nothing_committed() -> None:
    """An answer whose partition carries an error read as "nothing committed" (offset
    -1001): exactly-once then discarded a pending checkpoint whose transaction had committed
    and read its records again, their outputs twice. Unstable offsets are waited for, as a
    timed-out lookup; any other error raises (the worker restarts and asks again)."""
    fake, source = engine(), PartitionErrors([KafkaError.UNSTABLE_OFFSET_COMMIT] * 2)
    assert [tp.offset for tp in stable(fake, source)] == [-1001]  # a clean "none" at last
    assert source.calls == 3 and len(fake.beats) == 2
    fake, source = engine(), PartitionErrors([KafkaError.GROUP_AUTHORIZATION_FAILED])
    with pytest.raises(KafkaException):
        stable(fake, source)
    assert source.calls == 1
    # A rewind (an abort) asks once, unstable or not: an error raises there too.
    fake, source = engine(), PartitionErrors([KafkaError.UNSTABLE_OFFSET_COMMIT])
    fake.sink_offsets = False
    with pytest.raises(KafkaException):
        Engine._committed_with_metadata(fake, source, ASKED)  # type: ignore[arg-type]
