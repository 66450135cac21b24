"""The ``__consumer_offsets`` record decoder and group placement of operator/offsetstopic.py.

Records are built by hand, field by field, for every key and value version the format has,
plus two records exactly as the Kafka 4.3.1 test broker wrote them (a plain commit with the
topic id tag, a transactional one without). The reader itself runs against the real broker
in tests/integration/test_lagprobe.py.
"""

from __future__ import annotations

import struct

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator.lagprobe import permanent_failure
from streamherd.operator.offsetstopic import (
    OffsetCommitKey,
    OffsetCommitValue,
    RecordFormatError,
    decode_key,
    decode_value,
    java_string_hash,
    offsets_partition_for,
)


def i16(n: int) -> bytes:
    return struct.pack(">h", n)


def i32(n: int) -> bytes:
    return struct.pack(">i", n)


def i64(n: int) -> bytes:
    return struct.pack(">q", n)


def string(s: str) -> bytes:
    raw = s.encode()
    return i16(len(raw)) + raw


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def compact(s: str) -> bytes:
    raw = s.encode()
    return uvarint(len(raw) + 1) + raw


@pytest.mark.parametrize("version", [0, 1])
def test_offset_commit_keys(version: int) -> None:
    data = i16(version) + string("ns.pipe-é") + string("clicks") + i32(7)
    assert decode_key(data) == OffsetCommitKey("ns.pipe-é", "clicks", 7)


@pytest.mark.parametrize("version", [2, 3, 4, 5, 8, 11, 17])
def test_other_record_types_are_not_offset_commits(version: int) -> None:
    # 2: a classic group's metadata; 3 and up: KIP-848, share and streams group records.
    assert decode_key(i16(version) + string("g")) is None


def test_value_v0_and_v2() -> None:
    body = i64(42) + string("meta") + i64(1_700_000_000_000)
    assert decode_value(i16(0) + body) == OffsetCommitValue(0, 42, None, "meta", 1_700_000_000_000)
    assert decode_value(i16(2) + body) == OffsetCommitValue(2, 42, None, "meta", 1_700_000_000_000)


def test_value_v1_has_an_expire_timestamp() -> None:
    data = i16(1) + i64(9) + string("") + i64(1000) + i64(2000)
    assert decode_value(data) == OffsetCommitValue(1, 9, None, "", 1000, 2000)


def test_value_v3_has_a_leader_epoch() -> None:
    data = i16(3) + i64(10**12) + i32(5) + string("m") + i64(77)
    assert decode_value(data) == OffsetCommitValue(3, 10**12, 5, "m", 77)


def test_value_v4_flexible_with_tags() -> None:
    topic_id = bytes(range(16))
    unknown = b"\x01\x02\x03"
    tags = uvarint(2) + uvarint(0) + uvarint(16) + topic_id + uvarint(9) + uvarint(3) + unknown
    data = i16(4) + i64(300) + i32(-1) + compact("x" * 200) + i64(123) + tags
    assert decode_value(data) == OffsetCommitValue(4, 300, -1, "x" * 200, 123, topic_id=topic_id)


def test_value_of_a_future_version_still_gives_the_offset() -> None:
    assert decode_value(i16(9) + i64(77) + b"anything") == OffsetCommitValue(9, 77)


def test_records_written_by_kafka_4_3() -> None:
    # Captured from the test broker: a plain commit (v4, topic id tag) and a transactional
    # one (v4, no tagged field).
    key = bytes.fromhex("00010007672d70726f746f001070726f746f2d3137393537343932383400000000")
    plain = bytes.fromhex(
        "00040000000000000005ffffffff01000001a21aff91d0010010e9e5ced5484d4d1986c9219410d9550f"
    )
    txn = bytes.fromhex("00040000000000000007ffffffff01000001a21affc77600")
    assert decode_key(key) == OffsetCommitKey("g-proto", "proto-1795749284", 0)
    value = decode_value(plain)
    assert (value.version, value.offset, value.leader_epoch, value.metadata) == (4, 5, -1, "")
    assert value.topic_id == bytes.fromhex("e9e5ced5484d4d1986c9219410d9550f")
    assert value.commit_timestamp is not None and value.commit_timestamp > 1_700_000_000_000
    assert decode_value(txn).offset == 7 and decode_value(txn).topic_id is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        i16(1),
        i16(1) + string("g") + string("t"),  # partition missing
        i16(1) + i16(-1),  # null group
    ],
)
def test_truncated_or_null_keys_are_format_errors(data: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode_key(data)


@pytest.mark.parametrize(
    "data",
    [
        i16(3) + i64(1) + i32(0),  # metadata and timestamp missing
        i16(4) + i64(1) + i32(0) + uvarint(0),  # null compact string
        i16(4) + i64(1) + i32(0) + compact("") + i64(1) + uvarint(1) + uvarint(0) + uvarint(16),
        i16(-1) + i64(1),
    ],
)
def test_bad_values_are_format_errors(data: bytes) -> None:
    with pytest.raises(RecordFormatError):
        decode_value(data)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("a", 97),
        ("hello", 99162322),
        ("polygenelubricants", -(2**31)),  # the classic Integer.MIN_VALUE string
        ("é", 233),
        ("😀", 1772899),  # a surrogate pair: two UTF-16 code units
    ],
)
def test_java_string_hash(text: str, expected: int) -> None:
    # The expected values were printed by Java 17's String.hashCode on this machine.
    assert java_string_hash(text) == expected


def test_group_placement_follows_kafka() -> None:
    # Utils.abs(Integer.MIN_VALUE) is 0 in Kafka, not MIN_VALUE.
    assert offsets_partition_for("polygenelubricants", 50) == 0
    assert offsets_partition_for("hello", 50) == 99162322 % 50
    assert offsets_partition_for("anything", 1) == 0


@given(st.text(max_size=40), st.integers(1, 200))
def test_group_placement_is_in_range(group: str, partitions: int) -> None:
    assert 0 <= offsets_partition_for(group, partitions) < partitions


@pytest.mark.parametrize(
    ("code", "permanent"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, True),
        (KafkaError.SASL_AUTHENTICATION_FAILED, True),
        (KafkaError._TIMED_OUT, False),
        (KafkaError._TRANSPORT, False),
        (KafkaError.NOT_LEADER_FOR_PARTITION, False),
    ],
)
def test_which_failures_stop_reading_the_offsets_topic(code: int, permanent: bool) -> None:
    # The broker's authorization errors cannot be provoked on the test broker (it runs
    # without an authorizer), so the decision is checked on real librdkafka error objects.
    assert permanent_failure(KafkaException(KafkaError(code))) is permanent
    assert permanent_failure(TimeoutError()) is False
