"""Offsets are never sent to a transaction unfenced (workers/kafkaclients.py).

The broker checks a transactional offset commit against the group's generation only when
the commit names one: generation -1 with no member id commits whatever partitions it names,
whoever holds them now (tests/integration/engine/test_engine_fencing.py shows it on the
broker). librdkafka's metadata says -1 before a consumer joined and after a SyncGroup's
ILLEGAL_GENERATION; the member id is empty after UNKNOWN_MEMBER_ID. So the generation is
read from the metadata, and -1 is refused as the broker refuses a stale generation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streamherd.workers import kafkaclients
from streamherd.workers.kafkaclients import (
    GROUP_METADATA_TAG,
    group_generation,
    send_offsets_fenced,
)

INT32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
# Group and member ids as librdkafka writes them: UTF-8 text, NUL-ended (no surrogates).
NAMES = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)


def librdkafka_metadata(**config: Any) -> bytes:
    """A real consumer's group metadata before it joined (no broker: nothing is sent)."""
    consumer = Consumer({"group.id": "g", **config})
    try:
        metadata = consumer.consumer_group_metadata()
    finally:
        consumer.close()
    assert isinstance(metadata, bytes), "librdkafka's metadata is no longer its bytes"
    return metadata


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[list[TopicPartition], object, float]] = []

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], group: object, timeout: float
    ) -> None:
        self.sent.append((offsets, group, timeout))


def metadata(generation: int, group: str = "g", member: str = "m") -> bytes:
    """The form librdkafka 2.x writes: tag, native int32 generation, NUL-ended strings."""
    return (
        GROUP_METADATA_TAG
        + generation.to_bytes(4, sys.byteorder, signed=True)
        + group.encode()
        + b"\x00"
        + member.encode()
        + b"\x00\x01"
    )


@pytest.mark.parametrize("config", [{}, {"group.instance.id": "worker-0"}])
def test_the_installed_librdkafka_says_minus_one_before_a_consumer_joined(
    config: dict[str, str],
) -> None:
    """Pins the form to the installed library: a librdkafka that writes another form fails
    here, before workers rely on reading it."""
    assert group_generation(librdkafka_metadata(**config)) == -1


@given(INT32, NAMES, NAMES)
def test_the_generation_is_read_whatever_the_names(
    generation: int, group: str, member: str
) -> None:
    assert group_generation(metadata(generation, group, member)) == generation


@pytest.mark.parametrize(
    "other", [b"", b"CGMDv2:", b"CGMDv2:\xff\xff", b"CGMDv3:\x01\x00\x00\x00g\x00", "text", None]
)
def test_a_form_it_does_not_know_says_nothing(other: object) -> None:
    assert group_generation(other) is None


@given(INT32)
def test_offsets_go_to_the_transaction_only_with_a_generation(generation: int) -> None:
    producer = RecordingProducer()
    offsets = [TopicPartition("t", 0, 10)]
    group = metadata(generation)
    if generation >= 0:
        send_offsets_fenced(producer, offsets, group, 5.0)  # type: ignore[arg-type]
        assert producer.sent == [(offsets, group, 5.0)]
        return
    with pytest.raises(KafkaException) as raised:
        send_offsets_fenced(producer, offsets, group, 5.0)  # type: ignore[arg-type]
    error = raised.value.args[0]
    assert error.code() == KafkaError.ILLEGAL_GENERATION
    assert error.txn_requires_abort() and not error.fatal() and not error.retriable()
    assert producer.sent == []


def test_metadata_in_a_form_it_does_not_know_is_sent_as_before() -> None:
    """Nothing is known of it: the broker's own checks are all there is."""
    producer = RecordingProducer()
    send_offsets_fenced(producer, [], "opaque", 1.0)  # type: ignore[arg-type]
    assert producer.sent == [([], "opaque", 1.0)]


def test_every_transaction_of_the_engine_sends_its_offsets_through_the_fence() -> None:
    """The engine's exactly-once commit, its two-phase commit and the changelog's
    at-least-once checkpoint all send offsets; none may call the producer directly."""
    workers = Path(kafkaclients.__file__).parent
    direct = [
        f"{path.name}:{number}"
        for path in sorted(workers.glob("*.py"))
        if path.name != "kafkaclients.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ".send_offsets_to_transaction(" in line
    ]
    assert direct == []
    assert "send_offsets_fenced(" in (workers / "engine.py").read_text()
    assert "send_offsets_fenced," in (workers / "changelog.py").read_text()
