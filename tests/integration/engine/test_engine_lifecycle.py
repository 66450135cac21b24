"""The engine's side of a pipeline's lifecycle, against the real broker with real workers.

1. A worker given a spec whose state fingerprint differs from its checkpoints' refuses them
   (not ready with the reason, a metric, alive, nothing consumed, checkpoint files and
   committed offsets untouched); with the replay policy it starts from empty state at a
   time, and its results are the new spec's reference over exactly the records from then.
2. An offset reset made with Kafka's own tool (kafka-consumer-groups --reset-offsets) is
   honoured: that partition starts from empty state at the new offset, the others resume.
3. startFrom a time: a new group starts at the first record at or after it; a restart
   resumes from the checkpoint, not from the time again.

Records carry their event time as their Kafka timestamp too, so "from a time" has one
meaning. The references are computed without the engine, from the produced records.
"""

from __future__ import annotations

import copy
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer

# confluent_kafka.admin.NewPartitions, whose type stub does not re-export it.
from confluent_kafka.cimpl import NewPartitions

from streamherd.workers.checkpointing import decode
from tests.infra.kafka import KafkaBroker, start_kafka
from tests.infra.kafkatools import consumer_groups
from tests.integration.engine.enginekit import (
    BASE_TS,
    Worker,
    assert_matches,
    iso,
    latest_by_key,
    pipeline_config,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 2
KEEP = {"retention.ms": "-1"}
STEP_MS = 10  # event time between consecutive records: 4000 records span 40 s


class Sent:
    """A produced record: where it landed and what it holds."""

    def __init__(self, partition: int, offset: int, user: str, rec: dict[str, Any]) -> None:
        self.partition, self.offset, self.user, self.rec = partition, offset, user, rec


def produce_timed(broker: KafkaBroker, topic: str, start: int, count: int) -> list[Sent]:
    """Clicks whose Kafka timestamp is their event time `ts`; user u always to partition
    u % 2 (a key's records in one partition). Returns them with their offsets."""
    producer = Producer(broker.client_config(**{"enable.idempotence": True, "linger.ms": 5}))
    sent: list[Sent] = []
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))
            return
        rec = orjson.loads(msg.value() or b"{}")
        sent.append(Sent(msg.partition() or 0, msg.offset() or 0, rec["user"], rec))

    for i in range(start, start + count):
        u = (i * 7919) % 60
        user, ts = f"user-{u}", BASE_TS + i * STEP_MS
        rec = {"id": i, "user": user, "bytes": (i * 31) % 997, "ts": ts}
        producer.produce(
            topic,
            key=user.encode(),
            value=orjson.dumps(rec),
            partition=u % PARTITIONS,
            timestamp=ts,
            on_delivery=delivered,
        )
        producer.poll(0)
    assert producer.flush(60) == 0 and not errors, errors
    return sorted(sent, key=lambda s: (s.partition, s.offset))


def flush(broker: KafkaBroker, topic: str, after_ts: int) -> None:
    """One far-future record per partition: its watermark closes every earlier window."""
    producer = broker.producer()  # one for every partition: its set-up costs ~0.5 s
    for p in range(PARTITIONS):
        rec = {"id": -1, "user": "zz-flush", "bytes": 0, "ts": after_ts + 86_400_000}
        broker.produce(topic, [("zz-flush", rec)], partition=p, producer=producer)


def reference(sent: list[Sent], window_ms: int) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"clicks": 0, "bytes": 0})
    for s in sent:
        start = s.rec["ts"] - s.rec["ts"] % window_ms
        row = out[f"{s.user}|{iso(start)}"]
        row["clicks"] += 1
        row["bytes"] += s.rec["bytes"]
    return dict(out)


def checkpoint_files(directory: Path, topic: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((directory / topic).glob("*.ckpt"))}


def caught_up(broker: KafkaBroker, group: str, topic: str) -> bool:
    """The group has committed every record of the topic (False while the group's
    coordinator is still moving, which a fresh broker reports as NOT_COORDINATOR)."""
    try:
        return broker.committed(group, topic) == broker.end_offsets(topic)
    except KafkaException:
        return False


def stop_cleanly(worker: Worker) -> None:
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log_tail()


def gauge(worker: Worker, name: str, **labels: str) -> float | None:
    """A sample of `name` whose labels include `labels`; None when there is none."""
    for key, value in worker.metrics().items():
        if key.split("{")[0] == name and all(f'{k}="{v}"' in key for k, v in labels.items()):
            return value
    return None


def records_in(worker: Worker) -> float:
    return sum(
        v for k, v in worker.metrics().items() if k.startswith("streamherd_records_in_total")
    )


def assert_held(worker: Worker, partitions: int, why: str) -> None:
    """Every partition below `partitions` held (refused), and /readyz unready naming
    `why`."""
    wait_until(
        "every partition held",
        lambda: all(gauge(worker, "streamherd_state_restore_refused", partition=str(p)) == 1
                    for p in range(partitions)),
        60, [worker],
    )  # fmt: skip
    status, body = worker.get("/readyz")
    assert status == 503 and why in body, body


def setup(broker: KafkaBroker, tmp_path: Path, tag: str) -> tuple[str, str, Path, dict[str, Any]]:
    # Kept forever: the records' timestamps are in 2026-01 (event time), and the broker
    # deletes by record timestamp, so the default retention would delete them at once.
    source = broker.create_topic(
        broker.unique_topic(f"life-{tag}"), partitions=PARTITIONS, config=KEEP
    )
    sink = broker.create_topic(broker.unique_topic(f"life-{tag}-out"), partitions=PARTITIONS)
    checkpoints = tmp_path / "checkpoints"
    cfg = pipeline_config(
        broker,
        source=source,
        sink=sink,
        dlq=None,
        group=f"g-{source}",
        checkpoints=checkpoints,
        lateness="0s",
    )
    return source, sink, checkpoints, cfg


def with_sink(cfg: dict[str, Any], sink: str) -> dict[str, Any]:
    new = copy.deepcopy(cfg)
    new["sink"]["kafka"]["topic"] = sink
    return new


def with_new_state(cfg: dict[str, Any], sink: str, **state: Any) -> dict[str, Any]:
    """The same pipeline with 5 s windows and its aggregates in the other order, writing to
    `sink`; `state` is WorkerConfig.state (the policy)."""
    new = copy.deepcopy(cfg)
    window = new["processor"]["steps"][-1]["window"]
    window["size"] = "5s"
    window["aggregates"].reverse()
    new["sink"]["kafka"]["topic"] = sink
    if state:
        new["state"] = state
    return new


def test_a_foreign_state_is_refused_then_replayed_from_a_time(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    source, _sink, checkpoints, cfg = setup(kafka_broker, tmp_path, "fp")
    group = cfg["source"]["kafka"]["consumerGroup"]
    sent = produce_timed(kafka_broker, source, 0, 4000)
    first = Worker.create(tmp_path, "old", cfg).start()
    try:
        wait_until("the old spec caught up", lambda: caught_up(kafka_broker, group, source), 120,
                   [first])  # fmt: skip
        stop_cleanly(first)
    finally:
        first.stop()
    files = checkpoint_files(checkpoints, source)
    committed = kafka_broker.committed(group, source)
    assert len(files) == PARTITIONS and all(decode(d).state for d in files.values())

    # Refuse (the default): held, alive, not ready, saying why; nothing consumed or written.
    refused_sink = kafka_broker.create_topic(kafka_broker.unique_topic("life-fp-refused"))
    held = Worker.create(tmp_path, "refused", with_new_state(cfg, refused_sink)).start()
    try:
        assert_held(held, PARTITIONS, "held")
        assert_held(held, PARTITIONS, "window.size: 10000 -> 5000")
        while_held = produce_timed(kafka_broker, source, 4000, 500)
        produced_at = time.time()
        # The loop keeps running well past the new records' arrival, and still reads none.
        wait_until(
            "the held worker's loop runs on",
            lambda: (gauge(held, "streamherd_heartbeat_timestamp_seconds") or 0) > produced_at + 3,
            60,
            [held],
        )
        assert records_in(held) == 0
        assert held.alive()
        assert "event=state-restore-refused" in held.log_path.read_text()
        stop_cleanly(held)
    finally:
        held.stop()
    assert checkpoint_files(checkpoints, source) == files  # byte for byte
    assert kafka_broker.committed(group, source) == committed
    assert kafka_broker.consume_all(refused_sink) == []

    # Replay from a time: empty state at the first record at or after the start of the
    # window holding it (that window is computed whole), per partition.
    replay_sink = kafka_broker.create_topic(
        kafka_broker.unique_topic("life-fp-replay"), partitions=PARTITIONS
    )
    replay_from = BASE_TS + 1500 * STEP_MS + 3  # not on a record, not on a window boundary
    replayed = Worker.create(
        tmp_path,
        "replay",
        with_new_state(cfg, replay_sink, onFingerprintMismatch="replay", replayFromMs=replay_from),
    ).start()
    try:
        wait_until("the replay caught up", lambda: caught_up(kafka_broker, group, source), 120,
                   [replayed])  # fmt: skip
        flush(kafka_broker, source, BASE_TS + 5000 * STEP_MS)
        wait_until("the flush closed every window",
                   lambda: caught_up(kafka_broker, group, source), 60, [replayed])  # fmt: skip
        discarded = gauge(replayed, "streamherd_state_discarded_total", reason="replay")
        assert discarded == PARTITIONS
        stop_cleanly(replayed)
    finally:
        replayed.stop()
    aligned = replay_from - replay_from % 5000  # the new spec's window holding it
    later = [s for s in sent + while_held if s.rec["ts"] >= aligned]
    got = latest_by_key(kafka_broker.consume_all(replay_sink))
    for row in got.values():
        assert list(row)[3:] == ["bytes", "clicks"]  # the new spec's order
    assert_matches(got, reference(later, 5000))
    for data in checkpoint_files(checkpoints, source).values():
        assert decode(data).fingerprint != decode(next(iter(files.values()))).fingerprint


def test_an_offset_reset_by_kafkas_tool_is_honoured(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    source, _sink, checkpoints, cfg = setup(kafka_broker, tmp_path, "reset")
    group = cfg["source"]["kafka"]["consumerGroup"]
    sent = produce_timed(kafka_broker, source, 0, 4000)
    first = Worker.create(tmp_path, "first", cfg).start()
    try:
        wait_until("caught up", lambda: caught_up(kafka_broker, group, source), 120, [first])
        stop_cleanly(first)
    finally:
        first.stop()
    # What an operator of Kafka does: the group is empty (the pipeline is stopped), and its
    # offset of partition 0 is moved back with kafka-consumer-groups.
    reset_to = 500
    out = consumer_groups(
        kafka_broker.bootstrap,
        "--group", group, "--topic", f"{source}:0", "--reset-offsets",
        "--to-offset", str(reset_to), "--execute",
    )  # fmt: skip
    assert str(reset_to) in out, out
    assert kafka_broker.committed(group, source)[0] == reset_to

    second_sink = kafka_broker.create_topic(
        kafka_broker.unique_topic("life-reset-out2"), partitions=PARTITIONS
    )
    second = Worker.create(tmp_path, "second", with_sink(cfg, second_sink)).start()
    try:
        wait_until("caught up again", lambda: caught_up(kafka_broker, group, source), 120,
                   [second])  # fmt: skip
        flush(kafka_broker, source, BASE_TS + 5000 * STEP_MS)
        wait_until("the flush read", lambda: caught_up(kafka_broker, group, source), 60, [second])
        assert gauge(second, "streamherd_state_discarded_total", reason="offset-reset") == 1
        stop_cleanly(second)
    finally:
        second.stop()
    log = second.log_path.read_text()
    assert "event=offset-reset-detected" in log and "partition=0" in log
    # Partition 0: empty state from the reset offset on (its windows recomputed from there,
    # the one straddling it partial). Partition 1: resumed, so only its windows still open
    # when the first worker stopped are emitted, whole.
    p0 = [s for s in sent if s.partition == 0 and s.offset >= reset_to]
    p1 = [s for s in sent if s.partition == 1]
    p1_open = max(s.rec["ts"] for s in p1) // 10_000 * 10_000
    expected = reference(p0, 10_000) | reference([s for s in p1 if s.rec["ts"] >= p1_open], 10_000)
    assert_matches(latest_by_key(kafka_broker.consume_all(second_sink)), expected)
    assert decode(checkpoint_files(checkpoints, source)["0.ckpt"]).group == group


def test_start_from_a_time_then_resume_from_the_checkpoint(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    source, sink, _checkpoints, cfg = setup(kafka_broker, tmp_path, "time")
    group = cfg["source"]["kafka"]["consumerGroup"]
    sent = produce_timed(kafka_broker, source, 0, 3000)
    # The start of the 10 s window holding the time: that window is read whole.
    start = BASE_TS + 1200 * STEP_MS - 4
    cfg["source"]["kafka"]["startFromTimeMs"] = start
    start -= start % 10_000
    worker = Worker.create(tmp_path, "timed", cfg).start()
    try:
        wait_until("caught up", lambda: caught_up(kafka_broker, group, source), 120, [worker])
        assert records_in(worker) == sum(1 for s in sent if s.rec["ts"] >= start)
        stop_cleanly(worker)
    finally:
        worker.stop()
    more = produce_timed(kafka_broker, source, 3000, 600)
    again = Worker.create(tmp_path, "again", cfg).start()
    try:
        wait_until("caught up again", lambda: caught_up(kafka_broker, group, source), 120,
                   [again])  # fmt: skip
        assert records_in(again) == len(more)  # from the checkpoint, not the time again
        flush(kafka_broker, source, BASE_TS + 5000 * STEP_MS)
        wait_until("the flush read", lambda: caught_up(kafka_broker, group, source), 60, [again])
        stop_cleanly(again)
    finally:
        again.stop()
    expected = reference([s for s in sent + more if s.rec["ts"] >= start], 10_000)
    assert_matches(latest_by_key(kafka_broker.consume_all(sink)), expected)


def cluster_id(broker: KafkaBroker) -> str:
    """Kafka's cluster id, as a worker reads it (one metadata request)."""
    found: object = broker.admin().list_topics(timeout=10).cluster_id
    assert isinstance(found, str) and found
    return found


def test_a_checkpoint_of_another_cluster_is_never_restored(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """bootstrapServers edited to another cluster that has a topic of the same name (or a
    cluster rebuilt under the same address): the checkpoints' offsets point into another
    log. Restored, they skipped records of this one, or folded its records into the other
    cluster's open windows, with no error. Checkpoints carry Kafka's cluster id: a
    checkpoint of another cluster is held (refuse), or the partition starts anew on this
    cluster (reset), its checkpoint kept as a snapshot."""
    source, _sink, checkpoints, cfg = setup(kafka_broker, tmp_path, "cl")
    group = cfg["source"]["kafka"]["consumerGroup"]
    produce_timed(kafka_broker, source, 0, 3000)
    first = Worker.create(tmp_path, "on-a", cfg).start()
    try:
        wait_until("caught up on cluster A", lambda: caught_up(kafka_broker, group, source), 120,
                   [first])  # fmt: skip
        stop_cleanly(first)
    finally:
        first.stop()
    files = checkpoint_files(checkpoints, source)
    a_id = cluster_id(kafka_broker)
    assert {decode(d).cluster for d in files.values()} == {a_id}

    other = start_kafka()
    try:
        b = other.broker
        assert cluster_id(b) != a_id
        b.create_topic(source, partitions=PARTITIONS, config=KEEP)  # the same name
        on_b = produce_timed(b, source, 10_000, 1200)
        moved = copy.deepcopy(cfg)
        moved["source"]["kafka"]["bootstrapServers"] = b.bootstrap
        out_b = b.create_topic(b.unique_topic("life-cl-out"), partitions=PARTITIONS)
        moved["sink"] = {"kafka": {"topic": out_b, "bootstrapServers": b.bootstrap}}

        held = Worker.create(tmp_path, "on-b-refused", moved).start()
        try:
            assert_held(held, PARTITIONS, f"of Kafka cluster {a_id}")
            assert records_in(held) == 0
            stop_cleanly(held)
        finally:
            held.stop()
        assert checkpoint_files(checkpoints, source) == files  # byte for byte

        moved["state"] = {"onFingerprintMismatch": "reset"}
        reset = Worker.create(tmp_path, "on-b-reset", moved).start()
        try:
            wait_until("caught up on cluster B", lambda: caught_up(b, group, source), 120,
                       [reset])  # fmt: skip
            flush(b, source, BASE_TS + 20_000 * STEP_MS)
            wait_until("the flush closed every window", lambda: caught_up(b, group, source), 60,
                       [reset])  # fmt: skip
            assert gauge(reset, "streamherd_state_discarded_total", reason="reset") == PARTITIONS
            stop_cleanly(reset)
        finally:
            reset.stop()
        # Exactly cluster B's records: none of A's windows, none of B's skipped.
        assert_matches(latest_by_key(b.consume_all(out_b)), reference(on_b, 10_000))
        assert {decode(d).cluster for d in checkpoint_files(checkpoints, source).values()} == {
            cluster_id(b)
        }
    finally:
        other.stop()


def test_a_topic_created_again_is_never_restored_from_the_old_one(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The source topic deleted and created again under the same name while the pipeline
    was stopped: the checkpoints' offsets point into the old topic's log. Restored, they
    skipped the new topic's first records (librdkafka reset the out-of-range position and
    the engine dropped what lay below the checkpoint), silently. Checkpoints carry Kafka's
    topic id: one of the old topic is held (refuse), or the partition starts anew (reset)."""
    source, _sink, checkpoints, cfg = setup(kafka_broker, tmp_path, "again")
    group = cfg["source"]["kafka"]["consumerGroup"]
    produce_timed(kafka_broker, source, 0, 3000)
    first = Worker.create(tmp_path, "old-topic", cfg).start()
    try:
        wait_until("caught up", lambda: caught_up(kafka_broker, group, source), 120, [first])
        stop_cleanly(first)
    finally:
        first.stop()
    files = checkpoint_files(checkpoints, source)
    old = {(decode(d).topic_id, decode(d).partitions) for d in files.values()}
    assert len(old) == 1 and next(iter(old))[0] is not None and next(iter(old))[1] == PARTITIONS

    kafka_broker.delete_topic(source)
    kafka_broker.create_topic(source, partitions=PARTITIONS, config=KEEP)
    again = produce_timed(kafka_broker, source, 10_000, 1200)
    held = Worker.create(tmp_path, "new-topic-refused", cfg).start()
    try:
        assert_held(held, PARTITIONS, "deleted and created again")
        assert records_in(held) == 0
        stop_cleanly(held)
    finally:
        held.stop()
    assert checkpoint_files(checkpoints, source) == files  # byte for byte

    out = kafka_broker.create_topic(kafka_broker.unique_topic("life-again-out"), PARTITIONS)
    reset = copy.deepcopy(with_sink(cfg, out))
    reset["state"] = {"onFingerprintMismatch": "reset"}
    worker = Worker.create(tmp_path, "new-topic-reset", reset).start()
    try:
        wait_until("caught up", lambda: caught_up(kafka_broker, group, source), 120, [worker])
        flush(kafka_broker, source, BASE_TS + 20_000 * STEP_MS)
        wait_until("flushed", lambda: caught_up(kafka_broker, group, source), 60, [worker])
        stop_cleanly(worker)
    finally:
        worker.stop()
    # Exactly the new topic's records: none skipped, none of the old topic's windows.
    assert_matches(latest_by_key(kafka_broker.consume_all(out)), reference(again, 10_000))


def test_a_keyed_window_restarts_when_its_topic_gains_partitions_and_is_held(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Partitions added to the source of a window without a repartition (its keying is the
    topic's): a producer now sends most keys to other partitions, and each open window of
    such a key would end as two partial results. The running worker sees the new count at
    the rebalance, stops to restart (exit 1, its checkpoints recording the count its state
    was built with), and the restart holds the partitions (refuse) and says why."""
    source, _sink, _checkpoints, cfg = setup(kafka_broker, tmp_path, "grow")
    group = cfg["source"]["kafka"]["consumerGroup"]
    produce_timed(kafka_broker, source, 0, 2000)
    worker = Worker.create(tmp_path, "before", cfg).start()
    try:
        wait_until("caught up", lambda: caught_up(kafka_broker, group, source), 120, [worker])
        admin = kafka_broker.admin()  # kept: its futures die with it
        futures = admin.create_partitions([NewPartitions(source, PARTITIONS + 1)])
        for future in futures.values():
            future.result(30)
        assert worker.wait(120) == 1, worker.log_tail()
    finally:
        worker.stop()
    assert "event=partition-count-changed" in worker.log_path.read_text()
    held = Worker.create(tmp_path, "after", cfg).start()
    try:
        assert_held(held, PARTITIONS, f"has {PARTITIONS + 1} partitions")
        stop_cleanly(held)
    finally:
        held.stop()
