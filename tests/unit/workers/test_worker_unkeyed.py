"""A window that trusts its topic's keying refuses the records a producer placed without a
key (processing.placed_by_key): a producer spreads keyless records over the partitions, so
folding them would split their key's window into a partial result per partition.

The invariant, over any keying of any batch, on both batch paths: every keyless record is
dead-lettered (``unkeyed``) and nothing else is; the windows are exactly the windows of the
keyed records, one result each; ``in = contributing + filtered + dead-lettered`` holds. A
repartitioned window re-keys every record itself, and ``repartition: never`` is the user's
own word that the placement holds: both fold keyless records like any other.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from confluent_kafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.processing import (
    Failure,
    SourceMessage,
    SyntheticMessage,
    UnkeyedRecordError,
    placed_by_key,
)
from streamherd.workers.windowing import iso_ms
from tests.unit.workers.test_worker_seams import DictBackend, ListSource

TOPIC = "memory"
PARTITIONS = 3
WINDOW_MS = 2000
BASE_TS = 1_767_225_600_000


def message(
    partition: int, offset: int, key: bytes | None, rec: dict[str, Any]
) -> SyntheticMessage:
    return SyntheticMessage(TOPIC, partition, offset, key, rec, rec["ts"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([None, b"", b"u1", b"u2"]), max_size=40))
def test_keyless_messages_and_only_they_are_refused_in_order(keys: list[bytes | None]) -> None:
    messages: list[SourceMessage] = [
        message(0, i, k, {"user": "u", "ts": BASE_TS}) for i, k in enumerate(keys)
    ]
    failures: list[Failure] = []
    kept = placed_by_key(messages, failures, "its topic's keying")
    # An empty key is no key to librdkafka's default partitioner (consistent_random): it
    # spreads such records too (a probe on the broker: 48/44/43/65 over 4 partitions).
    assert [m.offset() for m in kept] == [i for i, k in enumerate(keys) if k]
    assert [f.message.offset() for f in failures] == [i for i, k in enumerate(keys) if not k]
    assert all(f.reason == "unkeyed" for f in failures)
    assert all(isinstance(f.error, UnkeyedRecordError) for f in failures)
    if all(keys):
        assert kept is messages  # the common case builds nothing


class MemorySource(ListSource):
    """The seams test's source, over the messages given here, described like a Kafka
    topic (the engine asks a group's source for its topics' partition counts)."""

    group_offsets = True

    def __init__(
        self, stop: threading.Event, messages: list[SyntheticMessage], partitions: int
    ) -> None:
        super().__init__(stop)
        self.messages, self.partitions = messages, partitions

    def open(self, assigned: Any, revoked: Any, lost: Any) -> None:
        assigned([TopicPartition(TOPIC, p) for p in range(self.partitions)])

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, tuple[str | None, int]]:
        return {TOPIC: (None, self.partitions)}

    def group_metadata(self) -> Any:
        return None  # handed to the state backend, which fences nothing here

    def assign(self, start: list[TopicPartition]) -> None:
        resume = {tp.partition: max(tp.offset, 0) for tp in start}
        self.pending = [m for m in self.messages if m.offset() >= resume[m.partition()]]


def worker_config(repartition: str) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "unkeyed"},
            "source": {
                "kafka": {
                    "bootstrapServers": "127.0.0.1:9",  # never dialled: the source is given
                    "topics": [TOPIC],
                    "consumerGroup": "unkeyed",
                }
            },
            "processor": {
                "steps": [
                    {"filter": "bytes != 13"},
                    {
                        "window": {
                            "keyBy": "user",
                            "size": "2s",
                            "eventTime": {"field": "ts"},
                            "repartition": repartition,
                            "aggregates": [
                                {"name": "clicks", "function": "count"},
                                {"name": "bytes", "function": "sum", "expression": "bytes"},
                            ],
                        }
                    },
                ]
            },
            "sink": {"stdout": {}},
            "checkpoint": {"directory": "/nonexistent/never-written", "intervalSeconds": 3600},
            "runtime": {"metricsPort": 0, "batchSize": 7},
        }
    )


def run(
    messages: list[SyntheticMessage], *, repartition: str, fused: bool, partitions: int = PARTITIONS
) -> tuple[list[Row], Engine]:
    stop = threading.Event()
    out = io.StringIO()
    engine = Engine(
        worker_config(repartition),
        stop=stop,
        out=out,
        metrics=EngineMetrics("unkeyed"),
        fused=fused,
        source=MemorySource(stop, messages, partitions),
        state=DictBackend(),
    )
    # No broker behind the Kafka source's address: the snapshot taker's look for snapshot
    # topics would wait out its timeout on every run (none exist here).
    with patch.object(engine, "_list_topics", lambda timeout=10.0: []):
        assert engine.run().reason == "exhausted"
    rows = []
    for line in out.getvalue().splitlines():
        row = orjson.loads(line)
        if row["key"] != "zz":  # the flush's own windows
            rows.append(((row["key"], row["window_start"]), (row["clicks"], row["bytes"])))
    return rows, engine


Row = tuple[tuple[Any, str], tuple[int, int]]
Windows = dict[tuple[Any, str], tuple[int, int]]


def reference(records: Iterable[dict[str, Any]]) -> Windows:
    """Every window of ``records`` (all closed), as one unpartitioned pass counts it."""
    out: dict[tuple[Any, str], list[int]] = {}
    for rec in records:
        if rec["bytes"] == 13:
            continue
        row = out.setdefault((rec["user"], iso_ms(rec["ts"] - rec["ts"] % WINDOW_MS)), [0, 0])
        row[0] += 1
        row[1] += rec["bytes"]
    return {k: (v[0], v[1]) for k, v in out.items()}


def once_each(rows: list[Row]) -> Windows:
    out: Windows = {}
    for window, value in rows:
        assert window not in out, f"{window} emitted twice"
        out[window] = value
    return out


def totals(rows: list[Row]) -> Windows:
    out: Windows = {}
    for window, (clicks, total) in rows:
        before = out.get(window, (0, 0))
        out[window] = (before[0] + clicks, before[1] + total)
    return out


Spec = tuple[str | None, bool, int, int, int]

# A record: its user (None: a null window key), whether its producer gave it a key, the
# partition a keyless one landed in (a keyed one lands in its user's; an odd one has an empty
# key, an even one none), bytes, ms after BASE_TS.
RECORDS = st.lists(
    st.tuples(
        st.sampled_from([None, "a", "b", "c", "d"]),
        st.booleans(),
        st.integers(0, PARTITIONS - 1),
        st.integers(0, 20),
        st.integers(0, 9_000),
    ),
    min_size=1,
    max_size=60,
)
USERS = ["a", "b", "c", "d", None]


def produced(records: list[Spec], partitions: int = PARTITIONS) -> list[SyntheticMessage]:
    """Each partition's messages in offset order, event times ascending per partition, and a
    last record far ahead on every partition so that every earlier window closes."""
    offsets = [0] * partitions
    out: list[SyntheticMessage] = []
    for user, keyed, anywhere, value, ms in sorted(records, key=lambda r: r[4]):
        partition = (USERS.index(user) if keyed else anywhere) % partitions
        # A keyless record has no key or an empty one (librdkafka spreads both alike).
        key = orjson.dumps(user) if keyed else (None if anywhere % 2 == 0 else b"")
        out.append(message(partition, offsets[partition], key, record(user, value, ms)))
        offsets[partition] += 1
    for p in range(partitions):
        out.append(message(p, offsets[p], b"zz", record("zz", 0, 3_600_000)))
    return out


def record(user: str | None, value: int, ms: int) -> dict[str, Any]:
    return {"user": user, "bytes": value, "ts": BASE_TS + ms}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@settings(max_examples=60, deadline=None)
@given(records=RECORDS)
def test_a_trusted_window_folds_the_keyed_records_and_refuses_the_keyless(
    fused: bool, records: list[Spec]
) -> None:
    rows, engine = run(produced(records), repartition="auto", fused=fused)
    assert engine.fused is fused
    keyed = [record(u, v, ms) for u, k, _, v, ms in records if k]
    assert once_each(rows) == reference(keyed)
    counters = engine.counters
    keyless = sum(1 for _, k, _, _, _ in records if not k)
    assert counters.dead_lettered == keyless
    assert counters.records_in == counters.contributing + counters.filtered + keyless


@settings(max_examples=30, deadline=None)
@given(records=RECORDS)
def test_never_takes_the_placement_on_trust_keyless_records_included(
    records: list[Spec],
) -> None:
    rows, engine = run(produced(records), repartition="never", fused=True)
    assert engine.counters.dead_lettered == 0
    # Folded where they landed: a key found in several partitions gets a row from each
    # (what `never` accepts), so only each window's totals are the reference's.
    assert totals(rows) == reference(record(u, v, ms) for u, _, _, v, ms in records)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
@settings(max_examples=30, deadline=None)
@given(records=RECORDS)
def test_a_topic_of_one_partition_misplaces_no_record(fused: bool, records: list[Spec]) -> None:
    rows, engine = run(produced(records, 1), repartition="auto", fused=fused, partitions=1)
    assert engine.counters.dead_lettered == 0
    assert once_each(rows) == reference(record(u, v, ms) for u, _, _, v, ms in records)
