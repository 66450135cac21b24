"""An exactly-once abort before a partition's first commit goes back to where the partition
started when that start was no checkpoint, on the real broker.

A partition with no checkpoint starts at the group's committed offset (a stateless run's, or
one whose checkpoint was lost or is of another state epoch: empty state there), or, with
nothing committed either, at ``startFromTimeMs``'s offset. An abort
(``Engine._abort_and_rewind``) rebuilds every owned partition from its commit, and the
consumer keeps its position through it: each must be sought back. Rebuilt from the group's
offset, the partition is sought there. Rebuilt from nothing, one that had started at its
time's offset was not sought at all (it had no ``read_from``: its first record was read
with a next offset already set), so the records of the aborted transaction were never read
again: every window from the start time to where the worker had read was lost (helper-123;
the exactly-once schedules' model, tests/unit/workers/test_worker_exactly_once_schedules.py,
found the same with its ``start_time``). It now starts at that time again, as on assign.

The engine runs in this process (test_engine_abort_replay.py's way): the first commit is
the engine's own, refused by the broker (its offsets sent with the group metadata of the
generation before, as a worker the group left behind sends them), after every record from
the start was read and before anything committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from confluent_kafka import Consumer, TopicPartition

from streamherd.workers.engine import Engine
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import BASE_TS, pipeline_config
from tests.integration.engine.test_engine_abort_replay import of_the_generation_before
from tests.integration.engine.test_engine_abort_rewind import (
    Scripted,
    commit_every_tick,
    emitted_and_committed,
)
from tests.integration.engine.test_engine_lifecycle import (
    KEEP,
    PARTITIONS,
    STEP_MS,
    flush,
    produce_timed,
    reference,
)
from tests.integration.engine.test_engine_repartition import by_key, check

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

WINDOW_MS = 10_000  # pipeline_config's window


def commit_as_another(broker: KafkaBroker, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit ``offsets`` for the (empty) group as a consumer that never joins it, with no
    checkpoint of them anywhere."""
    consumer = Consumer(broker.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        answer = consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
        errors = [tp.error for tp in answer or [] if tp.error is not None]
        assert not errors, errors
    finally:
        consumer.close()


@pytest.mark.parametrize("backend", ["volume", "changelog"])
@pytest.mark.parametrize("start", ["group-offset", "time"])
def test_an_abort_before_the_first_commit_goes_back_to_a_start_that_is_no_checkpoint(
    kafka_broker: KafkaBroker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start: str,
    backend: str,
) -> None:
    broker = kafka_broker
    monkeypatch.setenv("STREAMHERD_WORKER_ID", f"abort-start-{start}-{backend}")
    src = broker.create_topic(broker.unique_topic("abort-start"), PARTITIONS, config=KEEP)
    sink = broker.create_topic(broker.unique_topic("abort-start-out"), PARTITIONS)
    group = f"g-{src}"
    cfg = pipeline_config(broker, source=src, sink=sink, dlq=None, group=group,
                          checkpoints=tmp_path / "checkpoints", lateness="0s")  # fmt: skip
    cfg["delivery"] = "exactlyOnce"
    cfg["checkpoint"]["intervalSeconds"] = 120  # no commit by the clock: the test decides
    if backend == "changelog":
        cfg["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
    sent = produce_timed(broker, src, 0, 3000)
    if start == "time":
        # Not on a record, not on a window boundary: from the start of the window holding it.
        at = BASE_TS + 1500 * STEP_MS + 3
        cfg["source"]["kafka"]["startFromTimeMs"] = at
        later = [s for s in sent if s.rec["ts"] >= at - at % WINDOW_MS]
    else:
        # Half-way through each partition, not on a window boundary: the window across it
        # is computed from there (empty state at the offset).
        middle = {
            p: sorted(s.offset for s in sent if s.partition == p)[1500 // PARTITIONS - 7]
            for p in range(PARTITIONS)
        }
        commit_as_another(broker, group, src, middle)
        later = [s for s in sent if s.offset >= middle[s.partition]]
    starts = {p: min(s.offset for s in later if s.partition == p) for p in range(PARTITIONS)}
    seen: dict[str, Any] = {}

    def refuse_the_first_commit(engine: Engine) -> bool:
        """Once every record from the start was read: its first commit, refused."""
        if engine.counters.records_in < len(later):
            return False
        source = engine.source
        assert source is not None
        seen["committed before"] = engine.counters.checkpoints
        seen["emitted before"] = engine.counters.windows_emitted  # into the open transaction
        sought: dict[int, int] = {}
        seek = source.seek

        def noted(tp: TopicPartition) -> None:
            sought[tp.partition] = tp.offset
            seek(tp)

        stale = of_the_generation_before(source.group_metadata())
        with (
            mock.patch.object(source, "group_metadata", return_value=stale),
            mock.patch.object(source, "seek", noted),
        ):
            seen["committed"] = engine._commit_transaction("the test: the first", 30)
        seen["sought"] = sought
        return True

    with Scripted(cfg, [refuse_the_first_commit, commit_every_tick]) as run:
        run.wait("every record read, then the first commit refused", lambda: run.done == 1)
        assert seen["committed before"] == 0, "a commit came before the test's"
        assert seen["emitted before"] > 0, "the aborted transaction held no window"
        assert seen["committed"] is False, "the broker took the stale generation's offsets"
        flush(broker, src, sent[-1].rec["ts"])
        emitted_and_committed(run, sent[-1].rec["ts"] + 86_400_000)

    # The windows over exactly the records from the start, each once.
    got, written = by_key(broker.consume_all(sink, timeout=60))
    check(got, reference(later, WINDOW_MS))
    twice = {k: n for k, n in written.items() if n > 1}
    assert not twice, f"{len(twice)} windows committed more than once: {list(twice)[:3]}"
    # Where the abort sent the partitions: back to where they started.
    assert seen["sought"] == starts, (seen["sought"], starts)
