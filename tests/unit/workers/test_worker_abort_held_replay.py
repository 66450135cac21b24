"""An exactly-once abort keeps a partition held for its ``startFromTimeMs`` offset held, and
asks for that offset again (helper-119's review).

A partition with nothing to resume from (no checkpoint, nothing committed) starts at
``startFromTimeMs``: the broker's offset for that time. When the broker does not give it,
the partition is held (paused) and asked again (``_retry_seeks``). An abort rebuilds every
owned partition from its commit, and the time start was looked at on assignment only: the
held partition was rebuilt unheld, with no start, never sought and never resumed: read by
no worker until the next restart, and reported as not held. The exactly-once schedules'
model (tests/unit/workers/test_worker_exactly_once_schedules.py) runs it: its consumer
answers offsets for times, the first ones failing; the end checks every record of a
partition the last worker owns is visible once."""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

from confluent_kafka import TopicPartition

import tests.unit.workers.test_worker_exactly_once_schedules as eos
from streamherd.workers.config import WorkerConfig
from streamherd.workers.engine import Engine
from tests.unit.workers.test_worker_exactly_once_schedules import Event, check_end, run
from tests.unit.workers.test_worker_input_lost import BASE_TS, TOPIC

FAILED_LOOKUPS = 10


class TimedConsumer(eos.GroupConsumer):
    """Answers offsets for times (a record's time is BASE_TS + its offset); for p0 the first
    FAILED_LOOKUPS answers give nothing (as a broker with no leader for it answers)."""

    lookups = 0

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        found = []
        for tp in partitions:
            if tp.partition == 0:
                TimedConsumer.lookups += 1
                if TimedConsumer.lookups <= FAILED_LOOKUPS:
                    continue
            at = [o for o in self.logs[tp.partition] if BASE_TS + o >= tp.offset]
            found.append(TopicPartition(tp.topic, tp.partition, at[0] if at else -1))
        return found


def timed(*args: Any, **kwargs: Any) -> WorkerConfig:
    """The schedules' configuration, starting at the time of offset 0."""
    doc = eos_config(*args, **kwargs).model_dump(by_alias=True, exclude_none=True)
    doc["source"]["kafka"]["startFromTimeMs"] = BASE_TS
    return WorkerConfig.model_validate(doc)


eos_config = eos.config


def test_a_partition_held_for_its_start_time_stays_held_through_an_abort() -> None:
    """p0 and p1 assigned, p0 held (its offset for the start time not given). Inside
    poll 2 p1 is revoked, its transaction fails and is aborted: p0, rebuilt, must still be
    held (so that it is asked again, then sought and resumed), never left paused unheld;
    and once the broker answers it is read from its start time."""
    TimedConsumer.lookups = 0
    after_aborts: list[tuple[str | None, bool]] = []
    rewind = Engine._abort_and_rewind

    def judged(engine: Engine, source: Any, why: str, **how: Any) -> None:
        rewind(engine, source, why, **how)
        st = engine.partitions.get((TOPIC, 0))
        if st is not None:
            after_aborts.append((st.held, 0 in source.paused))

    schedule = {
        "gaps": [[0] * 6, [0] * 6],
        "initial": [0, 1],
        "events": [Event(2, "revoke", 1, "after")],
        "later_events": [],
        "faults": {("send_offsets", 1): "abortable"},
        "chunk": 2,
        "start_from": "earliest",
        "lookup_failures": 0,
        "batch_size": 4,
        "serve": [False],
        "produce": {},
        "checkpoints": set(),
    }
    with (
        patch.object(eos, "GroupConsumer", TimedConsumer),
        patch.object(eos, "config", timed),
        patch.object(Engine, "_abort_and_rewind", judged),
    ):
        outcome = run(schedule)
    assert after_aborts, "no abort while p0 was owned"
    for held, paused in after_aborts:
        assert held is not None or not paused, "p0 left paused and not held after an abort"
    assert TimedConsumer.lookups > FAILED_LOOKUPS  # asked again until the broker answered
    with patch.object(eos, "event", lambda _: None):  # Hypothesis's, outside a test of its
        check_end(outcome)
