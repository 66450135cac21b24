"""An exactly-once abort before a replay's first commit replays again, on the real broker.

Under ``spec.upgrade.onStateChange: replay`` a partition whose checkpoint is of another state
fingerprint discards it and starts from empty state at the first record at or after the
replay time (workers/engine.py: ``_discard`` sets the replay time, ``_replay_offsets`` turns
it into an offset). Until the replay's first transaction commits, the partition's committed
checkpoint and offset are still the discarded spec's. When that transaction aborts,
``_abort_and_rewind`` rebuilds every partition from its committed checkpoint: the policy
discards it again, and the partition must go back to the replay time again, as on assign.
Before 5b49067 it went back to the discarded checkpoint's offset: the replay became a reset,
and the records between the replay time and that offset were never computed under the new
spec (their windows missing, the one across that offset short).

The engine runs in this process against the real broker, with its real transactions and
state backends (tests/integration/engine/test_engine_abort_rewind.py's ``Scripted``: steps
called from the engine's loop thread, between batches). The replay's first commit is the
engine's own (``_commit_transaction``), and the broker refuses it: its offsets go to the
transaction with the group metadata of the generation before the group's current one, as a
worker the group has left behind sends them (KIP-447: ILLEGAL_GENERATION, the transaction
must abort). The engine takes its own failure path from there (``_commit_to_kafka``: the
transaction aborted, the partitions rewound). The one thing the test decides is when that
happens, after the replay read every record and before anything of it committed: a commit
racing a rebalance cannot be scheduled from outside.

Both state backends. With the changelog one the rewind keeps the discarded checkpoint as a
snapshot again (the first copy went with the aborted transaction), and it writes it with the
next transaction: before, none was open then, the copy failed, and the partitions were held
until the worker restarted (nothing replayed; a helper found it writing this test).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from streamherd.workers.engine import Engine
from streamherd.workers.kafkaclients import GROUP_METADATA_TAG, group_generation
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import BASE_TS, pipeline_config
from tests.integration.engine.test_engine_abort_rewind import (
    Scripted,
    commit_every_tick,
    emitted_and_committed,
)
from tests.integration.engine.test_engine_lifecycle import (
    KEEP,
    PARTITIONS,
    STEP_MS,
    caught_up,
    flush,
    produce_timed,
    reference,
    with_new_state,
)
from tests.integration.engine.test_engine_repartition import by_key, check

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


def of_the_generation_before(metadata: object) -> bytes:
    """``metadata`` (librdkafka 2.x's form, workers/kafkaclients.py) naming the group's
    generation before the one it names: the same group and member, left behind."""
    generation = group_generation(metadata)
    assert isinstance(metadata, bytes) and generation is not None and generation >= 1, metadata
    at = len(GROUP_METADATA_TAG)
    before = (generation - 1).to_bytes(4, sys.byteorder, signed=True)
    return metadata[:at] + before + metadata[at + 4 :]


@pytest.mark.parametrize("backend", ["volume", "changelog"])
def test_an_abort_before_the_replays_first_commit_replays_from_the_time_again(
    kafka_broker: KafkaBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    broker = kafka_broker
    monkeypatch.setenv("STREAMHERD_WORKER_ID", "abort-replay")
    src = broker.create_topic(broker.unique_topic("abort-replay"), PARTITIONS, config=KEEP)
    old_sink = broker.create_topic(broker.unique_topic("abort-replay-old"), PARTITIONS)
    new_sink = broker.create_topic(broker.unique_topic("abort-replay-new"), PARTITIONS)
    group = f"g-{src}"
    old = pipeline_config(broker, source=src, sink=old_sink, dlq=None, group=group,
                          checkpoints=tmp_path / "checkpoints", lateness="0s")  # fmt: skip
    old["delivery"] = "exactlyOnce"
    if backend == "changelog":
        old["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}

    # The old spec (10 s windows) reads and commits every record: its checkpoints.
    sent = produce_timed(broker, src, 0, 3000)
    with Scripted(old, []) as run:
        run.wait("the old spec committed every record", lambda: caught_up(broker, group, src))
    checkpointed = broker.committed(group, src)
    assert checkpointed == broker.end_offsets(src)

    # More records, then the new spec (5 s windows: another state fingerprint) replays from
    # a time half-way through what the old spec checkpointed (not on a record, not on a
    # window boundary). No commit by the clock: the test decides when the first one is.
    sent += produce_timed(broker, src, 3000, 1000)
    replay_from = BASE_TS + 1500 * STEP_MS + 3
    new = with_new_state(old, new_sink, onFingerprintMismatch="replay",
                         replayFromMs=replay_from, specGeneration=2)  # fmt: skip
    new["checkpoint"]["intervalSeconds"] = 120
    aligned = replay_from - replay_from % 5_000  # from the start of the window holding it
    later = [s for s in sent if s.rec["ts"] >= aligned]
    replay_offsets = {
        p: min(s.offset for s in later if s.partition == p) for p in range(PARTITIONS)
    }
    assert all(replay_offsets[p] < checkpointed[p] for p in range(PARTITIONS))
    seen: dict[str, Any] = {}

    def refuse_the_first_commit(engine: Engine) -> bool:
        """Once the replay read every record from its time: its first commit, refused."""
        if engine.counters.records_in < len(later):
            return False
        source = engine.source
        assert source is not None
        seen["committed before"] = engine.counters.checkpoints
        seen["emitted before"] = engine.counters.windows_emitted  # into the open transaction
        stale = of_the_generation_before(source.group_metadata())
        with mock.patch.object(source, "group_metadata", return_value=stale):
            seen["committed"] = engine._commit_transaction("the test: the replay's first", 30)
        seen["rewound to"] = {p: st.next_offset for (_t, p), st in engine.partitions.items()}
        return True

    with Scripted(new, [refuse_the_first_commit, commit_every_tick]) as run:
        run.wait("the replay read every record, then its first commit refused",
                 lambda: run.done == 1)  # fmt: skip
        assert seen["committed before"] == 0, "the replay committed before the test's commit"
        assert seen["emitted before"] > 0, "the aborted transaction held no window"
        assert seen["committed"] is False, "the broker took the stale generation's offsets"
        flush(broker, src, sent[-1].rec["ts"])
        emitted_and_committed(run, sent[-1].rec["ts"] + 86_400_000)

    # The new spec's windows over exactly the records from the replay time, each once.
    got, written = by_key(broker.consume_all(new_sink, timeout=60))
    check(got, reference(later, 5_000))
    twice = {k: n for k, n in written.items() if n > 1}
    assert not twice, f"{len(twice)} windows committed more than once: {list(twice)[:3]}"
    # Where the rewind sent the partitions: back to the replay time, not to the checkpoints.
    assert seen["rewound to"] == replay_offsets, (seen, checkpointed)
    # One replay, counted once per partition though the abort discarded each one again.
    discarded = run.engine.metrics.registry.get_sample_value(
        "streamherd_state_discarded_total", {"pipeline": "abort-rewind", "reason": "replay"}
    )
    assert discarded == PARTITIONS
