"""A keyed window's topic whose partition count could not be asked at an assignment.

The engine asks each assignment for its topics' partition counts: a keyed window trusts
its topic's keying, refuses keyless records unless the topic has one partition, and
judges a checkpoint built with another count (its keys moved). When that describe timed
out, the partition went on with the count its checkpoint recorded until the next
assignment: a topic grown from one partition to three was taken for one, so keyless
records were folded and the moved keys never judged (a helper's finding, session 25). The
count is asked again until known, and a changed one restarts the worker as at an
assignment.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from streamherd.workers.engine import Engine
from streamherd.workers.metrics import EngineMetrics
from streamherd.workers.statebackends import VolumeBackend
from tests.unit.workers.test_worker_unkeyed import (
    BASE_TS,
    TOPIC,
    MemorySource,
    message,
    worker_config,
)


class Flaky(MemorySource):
    """The memory topic, whose description times out while ``failing``."""

    failing = False

    def describe_logs(self, topics: Sequence[str]) -> Mapping[str, tuple[str | None, int]]:
        if self.failing:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "describe timed out"))
        return super().describe_logs(topics)


def life(directory: Path, messages: list[Any], partitions: int, failing: bool) -> Engine:
    stop = threading.Event()
    source = Flaky(stop, messages, partitions)
    source.failing = failing
    engine = Engine(
        worker_config("auto"),
        stop=stop,
        out=io.StringIO(),
        metrics=EngineMetrics("count"),
        source=source,
        state=VolumeBackend(str(directory)),
    )
    engine._list_topics = lambda timeout=10.0: []  # type: ignore[method-assign]
    engine.source = source
    source.open(engine._on_assign, engine._on_revoke, engine._on_lost)
    while source.pending:
        engine._process(source.poll(100, 0))
    return engine


def restart_reason(engine: Engine) -> str | None:
    return engine.restart_reason


def click(ms: int) -> dict[str, Any]:
    return {"user": "a", "bytes": 1, "ts": BASE_TS + ms}


def test_a_count_not_known_at_the_assignment_is_asked_again(tmp_path: Path) -> None:
    first = life(tmp_path, [message(0, 0, b"a", click(0))], partitions=1, failing=False)
    first._checkpoint(list(first.partitions.values()), sync=True, reason="test")
    assert first.partitions[(TOPIC, 0)].log_partitions == 1
    # The topic grew to three partitions; the next assignment's describe times out.
    grown = [message(0, 0, b"a", click(0)), message(0, 1, b"a", click(100))]
    second = life(tmp_path, grown, partitions=3, failing=True)
    assert restart_reason(second) is None
    # A retry that fails too forgets none of the counts known (a review's finding).
    second._logs["other"] = (None, 5)
    second._refresh_lag(force=True)
    assert second._logs["other"] == (None, 5) and restart_reason(second) is None
    second._logs_retry_at = 0.0  # the retry's 30 s, passed
    source: Any = second.source
    source.failing = False
    second._refresh_lag(force=True)  # the loop's periodic work: asks again
    said = restart_reason(second)
    assert said is not None, "a grown topic went on as one partition"
    assert "now has 3 partitions (1 when" in said
    assert second.stop.is_set()
    # Asked at most every LOGS_RETRY_SECONDS while it keeps failing.
    third = life(tmp_path / "other", grown, partitions=3, failing=True)
    third._refresh_lag(force=True)
    asked: list[Sequence[str]] = []

    def describe(topics: Sequence[str]) -> Mapping[str, tuple[str | None, int]]:
        asked.append(topics)
        return {}

    third_source: Any = third.source
    third_source.describe_logs = describe
    third._refresh_lag(force=True)
    assert asked == []
