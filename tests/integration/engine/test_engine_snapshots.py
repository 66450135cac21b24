"""Snapshots on request, against the real broker with real workers (decision 0070).

A snapshot is requested the way the operator requests one (``operator/snapshots.py``: the
snapshot's topic is created on the source cluster); a running worker writes every partition
at its next checkpoint boundary; the topic, read back and judged by the operator's own
function (``operator/restoring.py``: ``snapshot_status``), is Ready with the fingerprint and
each partition's offset. Restored into a NEW pipeline (another name, consumer group,
checkpoint directory and sink, ``startFrom: latest``), it gives the old pipeline's results:
the windows that were open at the snapshot come out whole, equal to a reference computed
here from the produced records and to what the old pipeline itself emits for them. Both
state backends: the checkpoint volume and the Kafka changelog (``checkpoint.changelog``),
each with both deliveries (exactly-once honours ``restoreFrom`` too: decision 0111); a
restart afterwards resumes from its own checkpoints, not from the snapshot again.
"""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamherd.operator.kafkaadmin import KafkaAdmin
from streamherd.operator.lagprobe import ClusterConfig
from streamherd.operator.restoring import snapshot_status
from streamherd.operator.snapshots import KAFKA_TIMEOUT, ensure_topic
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.config import WorkerConfig
from streamherd.workers.snapshotting import read_snapshot, snapshot_topic
from streamherd.workers.statebackends import open_state_backend
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    BASE_TS,
    Worker,
    assert_matches,
    latest_by_key,
    wait_until,
)
from tests.integration.engine.test_engine_lifecycle import (
    PARTITIONS,
    STEP_MS,
    caught_up,
    flush,
    produce_timed,
    reference,
    setup,
    stop_cleanly,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

WINDOW_MS = 10_000


def committed(cfg: dict[str, Any], topic: str) -> dict[int, Checkpoint]:
    """Each partition's committed checkpoint, read through the pipeline's own state backend
    (its volume files, or its changelog read to the end read_committed)."""
    backend = open_state_backend(
        WorkerConfig.model_validate(cfg), transactional_id=f"test-reader-{uuid.uuid4().hex[:8]}"
    )
    try:
        found = {p: backend.load(topic, p) for p in range(PARTITIONS)}
    finally:
        backend.close()
    return {p: c for p, c in found.items() if c is not None}


@pytest.mark.parametrize(
    ("backend", "delivery"),
    [
        ("volume", "atLeastOnce"),
        ("changelog", "atLeastOnce"),
        ("volume", "exactlyOnce"),
        ("changelog", "exactlyOnce"),
    ],
)
def test_a_snapshot_on_request_restores_into_a_new_pipeline(
    kafka_broker: KafkaBroker, tmp_path: Path, backend: str, delivery: str
) -> None:
    source, sink, _checkpoints, cfg = setup(kafka_broker, tmp_path, "snap")
    # Exactly-once restores state and offset from the committed transaction's checkpoint
    # unless state.restoreFrom names a snapshot: then from the snapshot, both together,
    # the offset committed with the first transaction of the restored state (0111).
    cfg["delivery"] = delivery
    # A name of its own: every run's pipeline is `clicks` in `test`, and a snapshot topic
    # left by an earlier run on the same broker would be a request the worker sees at once.
    snap = f"before-upgrade-{uuid.uuid4().hex[:8]}"
    if backend == "changelog":
        cfg["checkpoint"]["changelog"] = {"topic": kafka_broker.unique_topic("snap-changelog")}
    group = cfg["source"]["kafka"]["consumerGroup"]
    namespace, pipeline = cfg["pipeline"]["namespace"], cfg["pipeline"]["name"]
    before = produce_timed(kafka_broker, source, 0, 3000)
    old = Worker.create(tmp_path, "old", cfg).start()
    try:
        wait_until("the old pipeline caught up", lambda: caught_up(kafka_broker, group, source),
                   120, [old])  # fmt: skip
        # The request, as the operator makes it: the snapshot's topic on the source cluster.
        topic = snapshot_topic(namespace, pipeline, snap)
        cluster = ClusterConfig.of(kafka_broker.bootstrap)
        with KafkaAdmin.connect(cluster, KAFKA_TIMEOUT) as admin:
            ensure_topic(admin, topic)
        expected = {(source, p) for p in range(PARTITIONS)}
        status: dict[str, Any] = {}

        def ready() -> bool:
            contents = read_snapshot(kafka_broker.client_config(), topic)
            if contents is None:
                return False
            status.update(snapshot_status(contents, expected, topic, kafka_broker.bootstrap))
            phase: str = status["phase"]
            return phase == "Ready"

        wait_until("the snapshot is Ready", ready, 60, [old])
        # The old pipeline goes on after the snapshot, with more records.
        after = produce_timed(kafka_broker, source, 3000, 1000)
        wait_until("the old pipeline read them", lambda: caught_up(kafka_broker, group, source),
                   120, [old])  # fmt: skip
        files = committed(cfg, source)
        assert len(files) == PARTITIONS
    finally:
        old_log = old.log_path.read_text()
        if old.alive():
            stop_cleanly(old)
        old.stop()
    assert "event=snapshot-partition-written" in old_log, old_log[-3000:]
    # Listed with the fingerprint of the state it holds, every partition at the offset of
    # the records before it (the worker was caught up: the end of each partition then).
    fingerprints = {c.fingerprint for c in files.values()}
    assert status["fingerprint"] in fingerprints and len(fingerprints) == 1
    offsets = {(p["topic"], p["partition"]): p["nextOffset"] for p in status["partitions"]}
    ends = {(source, p): 1 + max(s.offset for s in before if s.partition == p)
            for p in range(PARTITIONS)}  # fmt: skip
    assert offsets == ends
    assert status["partitionCount"] == PARTITIONS and status["sizeBytes"] > 0
    assert status["takenAt"].endswith("Z")

    # A NEW pipeline restores it: another name, group, checkpoint directory and sink; it
    # would start at the end (startFrom latest) if it did not take the snapshot's offsets.
    new_sink = kafka_broker.create_topic(
        kafka_broker.unique_topic("life-snap-new"), partitions=PARTITIONS
    )
    new_cfg = copy.deepcopy(cfg)
    new_cfg["pipeline"]["name"] = "clicks-restored"
    new_cfg["source"]["kafka"]["consumerGroup"] = f"g-new-{source}"
    new_cfg["source"]["kafka"]["startFrom"] = "latest"
    new_cfg["checkpoint"]["directory"] = str(tmp_path / "new-checkpoints")
    new_cfg["sink"]["kafka"]["topic"] = new_sink
    if backend == "changelog":
        new_cfg["checkpoint"]["changelog"] = {"topic": kafka_broker.unique_topic("snap-new-cl")}
    new_cfg["state"] = {"restoreFrom": snap}
    new_group = new_cfg["source"]["kafka"]["consumerGroup"]
    new = Worker.create(tmp_path, "new", new_cfg).start()
    try:
        wait_until("the new pipeline caught up",
                   lambda: caught_up(kafka_broker, new_group, source), 120, [new])  # fmt: skip
        flush(kafka_broker, source, BASE_TS + 5000 * STEP_MS)
        wait_until("the flush closed every window",
                   lambda: caught_up(kafka_broker, new_group, source), 60, [new])  # fmt: skip
        stop_cleanly(new)
    finally:
        new.stop()
    assert "event=restoring-snapshot" in new.log_path.read_text()
    # What the new pipeline emits: per partition, the windows still open at the snapshot
    # (their earlier records from the snapshot's state) and every later one, whole.
    expected_rows: dict[str, dict[str, Any]] = {}
    for p in range(PARTITIONS):
        mine = [s for s in before if s.partition == p]
        open_from = max(s.rec["ts"] for s in mine) // WINDOW_MS * WINDOW_MS
        records = [s for s in mine + after if s.partition == p and s.rec["ts"] >= open_from]
        expected_rows |= reference(records, WINDOW_MS)
    got = latest_by_key(kafka_broker.consume_all(new_sink))
    assert_matches(got, expected_rows)
    # The old results: the old pipeline's own rows for those windows are the same.
    old_rows = latest_by_key(kafka_broker.consume_all(sink))
    closed_by_old = {k: v for k, v in got.items() if k in old_rows}
    assert closed_by_old, "the old pipeline closed none of the restored windows"
    assert all(old_rows[k] == v for k, v in closed_by_old.items())
    # Restarting the new pipeline resumes from its own checkpoints, not the snapshot again.
    restored = committed(new_cfg, source)
    assert len(restored) == PARTITIONS
    assert all(c.restored_from == snap for c in restored.values())
    # The group's committed offsets are the restored checkpoints' (state and offsets
    # coherent: with exactly-once both came from the same transaction).
    offsets_now = kafka_broker.committed(new_group, source)
    assert offsets_now == {p: c.next_offset for p, c in restored.items()}
    rows_before = len(kafka_broker.consume_all(new_sink))
    again = Worker.create(tmp_path, "again", new_cfg).start()
    try:
        wait_until(
            "the restarted pipeline restored its own checkpoints",
            lambda: again.log_path.read_text().count("event=partition-restored") >= PARTITIONS,
            120,
            [again],
        )
        stop_cleanly(again)
    finally:
        again.stop()
    assert "event=restoring-snapshot" not in again.log_path.read_text()
    # Nothing re-read from the snapshot's offsets: no row emitted again, offsets unmoved.
    assert len(kafka_broker.consume_all(new_sink)) == rows_before
    assert kafka_broker.committed(new_group, source) == offsets_now
    if backend == "changelog":  # nothing went through a volume
        for folder in (Path(cfg["checkpoint"]["directory"]), tmp_path / "new-checkpoints"):
            assert not folder.exists() or not any(p.is_file() for p in folder.rglob("*"))
