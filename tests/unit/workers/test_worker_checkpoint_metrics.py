"""``streamherd_checkpoints_total`` and ``streamherd_offset_commits_total`` count checkpoints
written and offsets committed, not checkpoint intervals: an interval that finds nothing new
to write writes no checkpoint and commits no offset, in either delivery mode (they counted
every interval, so an idle worker's counters climbed as a busy one's). Such an interval
still renews ``streamherd_checkpoint_age_seconds``: everything read is durable."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any, Literal
from unittest.mock import patch

from confluent_kafka import TopicPartition

from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from streamherd.workers.metrics import EngineMetrics
from tests.unit.workers.test_worker_unkeyed import BASE_TS, TOPIC, MemorySource, message

Delivery = Literal["atLeastOnce", "exactlyOnce"]
CLICKS = [message(0, i, b"a", {"user": "a", "ts": BASE_TS + 1000 * i}) for i in range(5)]


def config(directory: Path, delivery: Delivery) -> WorkerConfig:
    return WorkerConfig.model_validate(
        {
            "pipeline": {"name": "ck"},
            "delivery": delivery,
            "source": {
                "kafka": {
                    "bootstrapServers": "127.0.0.1:9",  # never dialled: the source is given
                    "topics": [TOPIC],
                    "consumerGroup": "ck",
                }
            },
            "processor": {"steps": [{"filter": "ts > 0"}]},
            # Exactly-once needs a transactional sink: Kafka, through the producer below.
            "sink": {"kafka": {"bootstrapServers": "127.0.0.1:9", "topic": "out"}},
            "checkpoint": {"directory": str(directory), "intervalSeconds": 3600},
            "runtime": {"metricsPort": 0},
        }
    )


class CommittingSource(MemorySource):
    """The group confirms every commit at once."""

    def commit(self, offsets: list[TopicPartition], *, asynchronous: bool) -> list[TopicPartition]:
        return list(offsets)


class Producer:
    """The Kafka producer (exactly-once: the transactional one), as far as these tests use
    it: it takes results, delivers at once, and begins transactions."""

    def __init__(self, *_: Any, **__: Any) -> None:
        self.produced = 0

    def produce(self, *_: Any, **__: Any) -> None:
        self.produced += 1

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def begin_transaction(self) -> None:
        pass


def engine(directory: Path, delivery: Delivery) -> tuple[Engine, CommittingSource]:
    stop = threading.Event()
    source = CommittingSource(stop, CLICKS[:3], 1)
    with (
        patch("streamherd.workers.sinks.TransactionalProducer", Producer),
        patch("streamherd.workers.sinks.Producer", Producer),
        patch("streamherd.workers.sinks.topic_limits", lambda *_: {}),  # no broker to ask
    ):
        made = Engine(
            config(directory, delivery),
            stop=stop,
            out=io.StringIO(),
            metrics=EngineMetrics("ck"),
            source=source,
        )
    made._list_topics = lambda timeout=10.0: []  # type: ignore[method-assign]
    made.source = source
    source.open(made._on_assign, made._on_revoke, made._on_lost)
    return made, source


def read(made: Engine, source: Any) -> None:
    while source.pending:
        made._process(source.poll(100, 0))


def interval(made: Engine) -> None:
    """The loop's checkpoint interval (a Kafka transaction commits as the broker would)."""
    with patch.object(made, "_commit_to_kafka", lambda *_: True):
        assert made._checkpoint(list(made.partitions.values()), sync=False, reason="interval")


def counts(made: Engine) -> tuple[float, float, float]:
    sample = made.metrics.registry.get_sample_value
    labels = {"pipeline": "ck"}
    return (
        sample("streamherd_checkpoints_total", labels) or 0,
        sample("streamherd_offset_commits_total", labels) or 0,
        sample("streamherd_checkpoint_duration_seconds_count", labels) or 0,
    )


def test_at_least_once_counts_checkpoints_written_not_intervals(tmp_path: Path) -> None:
    made, source = engine(tmp_path, "atLeastOnce")
    read(made, source)
    interval(made)
    assert counts(made) == (1, 1, 1)
    assert made.counters.checkpoints == 1
    for _ in range(3):  # nothing new: no checkpoint, no commit
        before = made.metrics._last_checkpoint
        interval(made)
        assert made.metrics._last_checkpoint > before  # the age starts again all the same
    assert counts(made) == (1, 1, 1)
    source.pending = CLICKS[3:]
    read(made, source)
    interval(made)
    assert counts(made) == (2, 2, 2)
    assert made.counters.checkpoints == 2


def test_exactly_once_counts_transactions_with_offsets_not_intervals(tmp_path: Path) -> None:
    made, source = engine(tmp_path, "exactlyOnce")
    assert made.exactly_once and made.kafka_transaction
    read(made, source)
    interval(made)
    assert counts(made) == (1, 1, 1)
    for _ in range(3):  # a transaction with nothing in it: no checkpoint, no offset
        before = made.metrics._last_checkpoint
        interval(made)
        assert made.metrics._last_checkpoint > before
    assert counts(made) == (1, 1, 1)
    assert made.counters.checkpoints == 1
    source.pending = CLICKS[3:]
    read(made, source)
    interval(made)
    assert counts(made) == (2, 2, 2)
