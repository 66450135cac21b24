"""Snapshot records (workers/snapshotting.py): a checkpoint document survives the trip
through Kafka records bit for bit, whatever its size and however the records interleave, and
the operator's judgement of a snapshot topic (operator/restoring.py) is right."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.operator.restoring import listed_snapshots, snapshot_status
from streamherd.workers import snapshotting
from streamherd.workers.checkpointing import Checkpoint, encode
from streamherd.workers.fingerprint import is_volume_snapshot
from streamherd.workers.snapshotting import (
    CHUNK_BYTES,
    PART_HEADER,
    WRITE_HEADER,
    Record,
    assemble,
    find_snapshot_topic,
    parse_topic,
    records,
    snapshot_topic,
)

names = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?", fullmatch=True)


def checkpoint(
    topic: str = "clicks",
    partition: int = 0,
    offset: int = 7,
    blob: str = "x",
    fp: str = "8afc0ca062a1395a",
    at: float = 1.0,
) -> Checkpoint:
    state = {"windows": [["k", 0, [blob]]]}
    return Checkpoint(topic, partition, offset, state, pipeline="ns/a", written_at=at,
                      fingerprint=fp, state_shape={"v": 1})  # fmt: skip


Message = tuple[bytes, bytes, dict[str, bytes]]


def as_messages(recs: list[Record]) -> list[Message]:
    return [(k, v, {h: x for h, x in hs.items() if isinstance(x, bytes)}) for k, v, hs in recs]


@given(names, names, names)
def test_a_topic_name_splits_back(namespace: str, pipeline: str, name: str) -> None:
    topic = snapshot_topic(namespace, pipeline, name)
    assert parse_topic(topic) == (namespace, pipeline, name)
    assert find_snapshot_topic(["other", topic], namespace, name) == topic
    assert find_snapshot_topic([topic], namespace + "x", name) is None


def test_volume_snapshot_names_are_told_apart() -> None:
    assert is_volume_snapshot("03493d0fb87a463c-to-17ff44cdce63e371")
    assert not is_volume_snapshot("before-upgrade")
    assert parse_topic("clicks") is None and parse_topic("streamherd-snapshot_a_b") is None


@settings(max_examples=25, deadline=None)
@given(size=st.integers(0, 3 * CHUNK_BYTES), seed=st.integers(0, 2**16))
def test_a_checkpoint_survives_any_size_and_interleaving(size: int, seed: int) -> None:
    one = checkpoint(partition=0, blob="a" * size)
    two = checkpoint(partition=1, blob="b" * (size // 3))
    first, second = records(one), records(two)
    assert all(len(v) <= CHUNK_BYTES for _, v, _ in first + second)
    # Interleave the two writes' pieces in some order that keeps each write's own order.
    merged, a, b = [], list(first), list(second)
    bits = seed
    while a or b:
        take_a = bool(a) and (not b or bits & 1)
        merged.append(a.pop(0) if take_a else b.pop(0))
        bits >>= 1
    got = assemble(as_messages(merged))
    assert got.problems == []
    assert got.checkpoints[("clicks", 0)] == one and got.checkpoints[("clicks", 1)] == two
    assert got.sizes[("clicks", 0)] == len(encode(one))


def test_the_last_complete_write_of_a_partition_wins() -> None:
    old, new = checkpoint(offset=5), checkpoint(offset=9)
    torn = records(checkpoint(offset=11, blob="z" * (CHUNK_BYTES + 10)))[:1]  # one piece of 2
    got = assemble(as_messages(records(old) + records(new) + torn))
    assert got.checkpoints[("clicks", 0)].next_offset == 9


def test_foreign_and_corrupted_records_are_named_not_trusted() -> None:
    good = records(checkpoint(partition=0))
    key, value, headers = records(checkpoint(partition=1))[0]
    corrupted: Record = (key, value[:-3] + b"!!\n", headers)
    foreign: Record = (b"x", b"y", {})
    moved: Record = (b"clicks/5", good[0][1], {PART_HEADER: b"0/1", WRITE_HEADER: b"w"})
    got = assemble(as_messages([*good, corrupted, foreign, moved]))
    assert set(got.checkpoints) == {("clicks", 0)}
    assert len(got.problems) == 3, got.problems


def test_status_is_taking_until_every_partition_is_in() -> None:
    contents = assemble(as_messages(records(checkpoint(partition=0))))
    status = snapshot_status(contents, [("clicks", 0), ("clicks", 1)], "t", "k:9092")
    assert status["phase"] == "Taking" and "clicks[1]" in status["message"]
    assert "fingerprint" not in status


def test_status_ready_lists_fingerprint_offsets_size_and_time() -> None:
    cps = [checkpoint(partition=p, offset=10 + p, at=1_767_225_600 + p) for p in range(2)]
    contents = assemble(as_messages([r for c in cps for r in records(c)]))
    status = snapshot_status(contents, [("clicks", 0), ("clicks", 1)], "t", "k:9092")
    assert status["phase"] == "Ready" and status["fingerprint"] == "8afc0ca062a1395a"
    assert [(p["partition"], p["nextOffset"]) for p in status["partitions"]] == [(0, 10), (1, 11)]
    assert status["sizeBytes"] == sum(len(encode(c)) for c in cps) == contents.size_bytes
    assert status["takenAt"] == "2026-01-01T00:00:01Z"
    assert status["partitionCount"] == 2 and status["bootstrapServers"] == "k:9092"


def test_status_fails_when_partitions_disagree_on_the_fingerprint() -> None:
    cps = [checkpoint(partition=0), checkpoint(partition=1, fp="17ff44cdce63e371")]
    contents = assemble(as_messages([r for c in cps for r in records(c)]))
    status = snapshot_status(contents, [("clicks", 0), ("clicks", 1)], "t", "k:9092")
    assert status["phase"] == "Failed" and "17ff44cdce63e371" in status["message"]


def test_the_pipeline_lists_a_ready_snapshot_once_and_forgets_it_on_delete() -> None:
    ready = {"fingerprint": "f", "topic": "t", "takenAt": "2026", "partitionCount": 2,
             "sizeBytes": 9}  # fmt: skip
    kept = [{"name": "a-to-b", "fingerprint": "a"}]
    listed = listed_snapshots(kept, "snap", ready)
    assert listed is not None and listed[0] == kept[0]
    assert listed[1]["name"] == "snap" and listed[1]["partitions"] == 2
    assert listed_snapshots(listed, "snap", ready) is None  # no write when nothing changes
    assert listed_snapshots(listed, "snap", None) == kept


def test_a_snapshot_topic_whose_leader_is_not_elected_yet_is_not_read_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A topic made a moment ago answers NOT_LEADER_FOR_PARTITION for its offsets: that is
    "not there yet" (None, asked again), where it raised and failed the reconcile (a CI
    run); an error that is no passing state still raises."""

    class Meta:
        error = None
        partitions = {0: object()}

    class Listed:
        topics = {"snap": Meta()}

    def consumer_raising(code: int) -> type:
        class FakeConsumer:
            def __init__(self, _config: object) -> None:
                pass

            def list_topics(self, _topic: str, timeout: float) -> Listed:
                return Listed()

            def get_watermark_offsets(self, *_args: object, **_kwargs: object) -> tuple[int, int]:
                raise KafkaException(KafkaError(code))

            def close(self) -> None:
                pass

        return FakeConsumer

    monkeypatch.setattr(
        snapshotting, "Consumer", consumer_raising(KafkaError.NOT_LEADER_FOR_PARTITION)
    )
    assert snapshotting.read_snapshot({}, "snap") is None
    monkeypatch.setattr(
        snapshotting, "Consumer", consumer_raising(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    )
    with pytest.raises(KafkaException):
        snapshotting.read_snapshot({}, "snap")
