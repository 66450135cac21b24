"""State in a Kafka changelog topic (workers/changelog.py), proven on the real broker.

No checkpoint directory is shared: every worker gets its own empty directory, a new one at
every restart, and none may write anything there. Input keyed by user, windows per page (a
repartitioned pipeline, 4 partitions), 3 worker processes:

- exactly-once, 12 SIGKILLs at random moments, then every worker killed and restarted with
  fresh directories: the read_committed output holds every (page, window) exactly once with
  the reference value computed here, and no duplicate;
- at-least-once, SIGKILLs: the state is still exact (the changelog's own transactions keep
  state and offset together), so every window's value is the reference's;
- the lifecycle rules: a foreign fingerprint held, then reset with a snapshot kept in the
  changelog;
- the backend alone: a restore reads the changelog to its end, tombstones included, and waits
  for a transaction a dead writer left open rather than miss a checkpoint committed after it.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from streamherd.workers.changelog import ChangelogBackend
from streamherd.workers.checkpointing import Checkpoint, CheckpointRefused
from streamherd.workers.config import ChangelogConfig, KafkaSourceConfig
from streamherd.workers.fingerprint import snapshot_name
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, wait_until
from tests.integration.engine.test_engine_exactly_once import verify
from tests.integration.engine.test_engine_lifecycle import PARTITIONS as LIFE_PARTITIONS
from tests.integration.engine.test_engine_lifecycle import (
    assert_held,
    caught_up,
    gauge,
    produce_timed,
    records_in,
    setup,
    stop_cleanly,
    with_new_state,
)
from tests.integration.engine.test_engine_repartition import (
    PARTITIONS,
    check,
    flush,
    page_clicks,
    page_reference,
    repartitioned_config,
    sink_windows,
    topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

NAMES = ("a", "b", "c")


def changelog_config(
    broker: KafkaBroker, tmp: Path, delivery: str
) -> tuple[dict[str, Any], str, str, str]:
    src, sink, dlq = topics(broker)
    config = repartitioned_config(broker, src, sink, dlq, tmp / "unused")
    config["delivery"] = delivery
    config["checkpoint"]["intervalSeconds"] = 0.5
    config["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
    return config, src, sink, dlq


class Fresh:
    """Workers that each start, every time, with a new empty checkpoint directory."""

    def __init__(self, tmp: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.config = config
        self.starts = 0
        self.dirs: list[Path] = []  # every directory any worker was ever given
        self.workers = {name: self._make(name) for name in NAMES}

    def _make(self, name: str) -> Worker:
        self.starts += 1
        directory = self.tmp / f"ck-{name}-{self.starts}"
        directory.mkdir()
        self.dirs.append(directory)
        config = {
            **self.config,
            "checkpoint": {**self.config["checkpoint"], "directory": str(directory)},
            "runtime": {**self.config["runtime"], "metricsPort": 0},
        }
        w = Worker.create(self.tmp, f"{name}-{self.starts}", config)
        w.env = {"STREAMHERD_WORKER_ID": name}  # a restart fences its predecessor
        return w

    def restart(self, name: str, rng: random.Random) -> None:
        """SIGKILL at a random moment once the worker holds partitions (so inside its
        processing, checkpoints and transactions), then the same worker identity with a new
        empty directory (a pod whose volume went away: nothing may come from the old one)."""
        victim = self.workers[name]
        wait_until("the victim to hold partitions", lambda: holds(victim), 90, [victim])
        time.sleep(rng.uniform(0.05, 1.5))  # a random moment: the test
        victim.kill()
        self.workers[name] = self._make(name).start()

    def all(self) -> list[Worker]:
        return list(self.workers.values())

    def assert_restored_from_changelog(self, broker: KafkaBroker, src: str) -> None:
        """Every source and repartition partition has its checkpoint record there."""
        heads = {
            tuple(orjson.loads(r.key)[:2])
            for r in broker.consume_all(f"{src}.changelog", timeout=60)
            if r.key is not None and r.value is not None and orjson.loads(r.key)[2] == "c"
        }
        wanted = {(t, p) for t in (src, f"{src}.repartition") for p in range(PARTITIONS)}
        assert wanted <= heads, sorted(wanted - heads)

    def assert_no_files(self) -> None:
        written = [p for d in self.dirs for p in d.rglob("*")]
        assert written == [], f"the changelog backend wrote files: {written[:5]}"


def holds(w: Worker) -> bool:
    owned = [v for k, v in w.metrics().items() if k.startswith("streamherd_assigned_partitions")]
    return bool(owned) and owned[0] > 0


def test_exactly_once_with_changelog_state_across_sigkills_and_a_full_restart(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    config, src, sink, dlq = changelog_config(kafka_broker, tmp_path, "exactlyOnce")
    records = list(page_clicks(0, 36_000))
    fresh = Fresh(tmp_path, config)
    rng = random.Random(60)
    bad = 0
    # One producer for every chunk and bad record: a new one per call cost ~0.5 s of set-up.
    producer = kafka_broker.producer()
    try:
        for w in fresh.all():
            w.start()
        kills = 0
        half = len(records) * 2 // 3
        for i in range(0, half, 1_500):
            kafka_broker.produce(src, records[i : i + 1_500], producer=producer)
            kafka_broker.produce(src, [("bad", b"not json %d" % i)], producer=producer)
            bad += 1
            if kills < 12:
                fresh.restart(rng.choice(NAMES), rng)
                kills += 1
        assert kills == 12
        # Every worker at once: the state lives only in the changelog now.
        for w in fresh.all():
            w.kill()
        for name in NAMES:
            fresh.workers[name] = fresh._make(name).start()
        kafka_broker.produce(src, records[half:], producer=producer)
        flush(kafka_broker, src, records[-1][1]["ts"])
        verify(kafka_broker, sink, dlq, page_reference(records), bad, fresh.all())
        restores = [
            v
            for w in fresh.all()
            for k, v in w.metrics().items()
            if k.startswith("streamherd_state_restore_seconds_count")
        ]
        assert restores and min(restores) >= 1, restores
        fresh.assert_restored_from_changelog(kafka_broker, src)
        fresh.assert_no_files()
    finally:
        for w in fresh.all():
            w.stop()


def test_at_least_once_changelog_state_stays_exact_across_sigkills(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    config, src, sink, dlq = changelog_config(kafka_broker, tmp_path, "atLeastOnce")
    records = list(page_clicks(0, 30_000))
    fresh = Fresh(tmp_path, config)
    rng = random.Random(61)
    producer = kafka_broker.producer()  # one for every chunk: ~0.5 s of set-up each
    try:
        for w in fresh.all():
            w.start()
        kills = 0
        for i in range(0, len(records), 2_000):
            kafka_broker.produce(src, records[i : i + 2_000], producer=producer)
            if kills < 10:
                fresh.restart(rng.choice(NAMES), rng)
                kills += 1
        flush(kafka_broker, src, records[-1][1]["ts"])
        expected = page_reference(records)
        # At-least-once output: a window may be written again after a crash, but always
        # with its exact value (the state never counted a record twice).
        got, _counts = sink_windows(
            kafka_broker, sink, expected, "every (page, window) in the sink", 180, fresh.all()
        )
        check(got, expected)
        for rec in kafka_broker.consume_all(sink, timeout=30):
            assert rec.key is not None
            key = rec.key.decode()
            if key in expected:
                row = rec.json()
                assert (row["clicks"], row["bytes"]) == (
                    expected[key]["clicks"],
                    expected[key]["bytes"],
                ), (key, row)
        assert kafka_broker.consume_all(dlq) == []
        fresh.assert_restored_from_changelog(kafka_broker, src)
        fresh.assert_no_files()
    finally:
        for w in fresh.all():
            w.stop()


def backend(broker: KafkaBroker, src: str, topic: str, worker: str) -> ChangelogBackend:
    source = KafkaSourceConfig.model_validate(
        {"bootstrapServers": broker.bootstrap, "topics": [src], "consumerGroup": f"g-{src}"}
    )
    return ChangelogBackend(
        source, ChangelogConfig(topic=topic), transactional_id=f"test.{topic}.{worker}"
    )


def test_a_long_restore_reports_its_progress(kafka_broker: KafkaBroker) -> None:
    """A restore runs inside the rebalance, where the loop does not beat: the engine's
    heartbeat (its liveness) is the backend's ``progress``, called for each batch of
    records read, so a large state read for minutes is not taken for a stuck loop."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), 1)
    topic = f"{src}.changelog"
    writer = backend(kafka_broker, src, topic, "w")
    saved = Checkpoint(src, 0, 100, windows_state(30_000, 0, 1), group="g", generation="g1")
    try:
        writer.prepare([(src, 0)])
        writer.save([saved])
    finally:
        writer.close()
    source = KafkaSourceConfig.model_validate(
        {"bootstrapServers": kafka_broker.bootstrap, "topics": [src], "consumerGroup": "g"}
    )
    beats: list[int] = []
    reader = ChangelogBackend(
        source,
        ChangelogConfig(topic=topic),
        transactional_id=f"test.{topic}.r",
        progress=lambda: beats.append(1),
    )
    try:
        reader.prepare([(src, 0)])
        assert reader.load(src, 0) == saved
        # 30,000 window records and a head, read 10,000 at most per batch.
        assert reader.last_restore.records > 30_000
        assert len(beats) >= 4
    finally:
        reader.close()


def windows_state(n: int, start: int, value: int) -> dict[str, Any]:
    return {
        "v": 2,
        "maxEventMs": start,
        "windows": [[f"k{i}", start, [value + i, None]] for i in range(n)],
    }


def group_member(broker: KafkaBroker, group: str, topic: str) -> Consumer:
    """A member of `group` subscribed to `topic`, left behind 6 s after it stops polling."""
    consumer = Consumer(
        broker.client_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "max.poll.interval.ms": 6000,
            }
        )
    )
    consumer.subscribe([topic])
    return consumer


def assert_partition_0_holds(
    broker: KafkaBroker, src: str, topic: str, expected: Checkpoint, why: str
) -> None:
    """The changelog `topic`'s checkpoint of `src`[0], as a fresh reader loads it."""
    reader = backend(broker, src, topic, "r")
    try:
        reader.prepare([(src, 0)])
        assert reader.load(src, 0) == expected, why
    finally:
        reader.close()


def owns(consumer: Consumer, partitions: int) -> bool:
    consumer.poll(0.2)
    return len(consumer.assignment()) == partitions


def test_the_broker_refuses_changelog_state_from_a_member_the_group_left_behind(
    kafka_broker: KafkaBroker,
) -> None:
    """At-least-once: a checkpoint's offsets commit in the changelog's transaction with its
    state, fenced by the group's generation (KIP-447). A member the group has left behind
    (here: it stopped polling past max.poll.interval.ms; in life frozen, or cut off from the
    broker alone) can commit neither: CheckpointRefused, and the changelog and the group's
    offsets hold the last checkpoint of its time as a member. Before, its stale state
    landed over the new owner's (a kill-schedule probe: mixed windows 1 run in 3)."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), 2)
    topic = f"{src}.changelog"
    group = f"g-{src}"

    def member() -> Consumer:
        return group_member(kafka_broker, group, src)

    a, b = member(), None
    left = backend(kafka_broker, src, topic, "a")
    try:
        wait_until("a to own both partitions", lambda: owns(a, 2), 60)
        left.prepare([(src, 0)])
        mine = Checkpoint(src, 0, 100, windows_state(5, 0, 1), group=group)
        left.save([mine], group=a.consumer_group_metadata())
        assert kafka_broker.committed(group, src)[0] == 100
        b = member()  # a polls no more: the group leaves it behind and gives b both
        wait_until("b to own both partitions", lambda: owns(b, 2), 90)
        stale = Checkpoint(src, 0, 50, windows_state(5, 0, 99), group=group)
        with pytest.raises(CheckpointRefused):
            left.save([stale], group=a.consumer_group_metadata())
        assert_partition_0_holds(kafka_broker, src, topic, mine, "the left-behind state landed")
        assert kafka_broker.committed(group, src)[0] == 100
    finally:
        left.close()
        a.close()
        if b is not None:
            b.close()


def test_offsets_without_a_generation_are_never_sent_though_the_broker_would_take_them(
    kafka_broker: KafkaBroker,
) -> None:
    """The broker checks a transactional offset commit against the group only when it
    names a generation: metadata with generation -1 and no member id, librdkafka's before a
    consumer joined and after it lost its generation and member id, commits whatever it
    names while another member owns the partitions (shown first, with a bare producer).
    The changelog sends no offsets with such metadata: its checkpoint is refused like a
    left-behind member's, and the owner's state and offsets stay. Before, that stale state
    and its offsets landed."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), 2)
    topic = f"{src}.changelog"
    group = f"g-{src}"
    owner = group_member(kafka_broker, group, src)
    unjoined = Consumer(kafka_broker.client_config(**{"group.id": group}))
    bare = Producer(kafka_broker.client_config(**{"transactional.id": f"bare-{src}"}))
    left = backend(kafka_broker, src, topic, "left")
    try:
        wait_until("the owner to own both partitions", lambda: owns(owner, 2), 60)
        no_generation = unjoined.consumer_group_metadata()
        bare.init_transactions(30)
        bare.begin_transaction()
        bare.send_offsets_to_transaction([TopicPartition(src, 1, 7)], no_generation, 30)
        bare.commit_transaction(30)
        assert kafka_broker.committed(group, src)[1] == 7, "the broker fenced it after all"
        owned = Checkpoint(src, 0, 100, windows_state(5, 0, 1), group=group)
        left.prepare([(src, 0)])
        left.save([owned], group=owner.consumer_group_metadata())
        assert kafka_broker.committed(group, src)[0] == 100
        stale = Checkpoint(src, 0, 50, windows_state(5, 0, 99), group=group)
        with pytest.raises(CheckpointRefused):
            left.save([stale], group=unjoined.consumer_group_metadata())
        assert kafka_broker.committed(group, src)[0] == 100, "offsets committed unfenced"
        assert_partition_0_holds(kafka_broker, src, topic, owned, "state written unfenced")
    finally:
        left.close()
        unjoined.close()
        owner.close()


def test_a_changelog_write_the_broker_cannot_take_fails_instead_of_being_skipped(
    kafka_broker: KafkaBroker,
) -> None:
    """Only the group's refusal of a member it has left behind skips an at-least-once
    checkpoint (CheckpointRefused, logged, tried again next interval). Any other failure of
    the changelog's transaction raises, so the worker fails where it can be seen instead of
    running on with no checkpoint and no commit. Here the changelog topic refuses a record
    above its max.message.bytes; in life it is an authorization, or a broker long gone.
    Nothing of the failed checkpoint lands, and the restarted worker writes the next one."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), 1)
    topic = kafka_broker.create_topic(
        f"{src}.changelog", 1, config={"cleanup.policy": "compact", "max.message.bytes": "2048"}
    )
    group = f"g-{src}"
    a = group_member(kafka_broker, group, src)
    writer = backend(kafka_broker, src, topic, "w")
    try:
        wait_until("a to own the partition", lambda: owns(a, 1), 60)
        writer.prepare([(src, 0)])
        first = Checkpoint(src, 0, 100, windows_state(5, 0, 1), group=group)
        writer.save([first], group=a.consumer_group_metadata())
        assert kafka_broker.committed(group, src)[0] == 100
        key = secrets.token_urlsafe(12_000)  # random: no compression brings it under the limit
        oversized = {"v": 2, "maxEventMs": 0, "windows": [[key, 0, [1, None]]]}
        with pytest.raises(KafkaException) as raised:
            writer.save(
                [Checkpoint(src, 0, 200, oversized, group=group)], group=a.consumer_group_metadata()
            )
        assert raised.value.args[0].code() != KafkaError.ILLEGAL_GENERATION
        assert kafka_broker.committed(group, src)[0] == 100
        # The worker fails; restarted (the same transactional id), it writes the next one.
        writer.close()
        writer = backend(kafka_broker, src, topic, "w")
        writer.prepare([(src, 0)])
        assert writer.load(src, 0) == first, "the failed checkpoint landed"
        third = Checkpoint(src, 0, 300, windows_state(5, 0, 3), group=group)
        writer.save([third], group=a.consumer_group_metadata())
        assert kafka_broker.committed(group, src)[0] == 300
        reader = backend(kafka_broker, src, topic, "r")
        try:
            reader.prepare([(src, 0)])
            assert reader.load(src, 0) == third
        finally:
            reader.close()
    finally:
        writer.close()
        a.close()


def test_restore_reads_to_the_end_through_tombstones_and_open_transactions(
    kafka_broker: KafkaBroker,
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("src"), 4)
    topic = f"{src}.changelog"
    writer = backend(kafka_broker, src, topic, "w")
    try:
        first = Checkpoint(src, 2, 100, windows_state(50, 0, 1), group="g", generation="g1")
        writer.prepare([(src, 2)])
        assert writer.load(src, 2) is None
        writer.save([first])
        # Fewer windows: the closed ones become tombstones.
        second = Checkpoint(src, 2, 200, windows_state(20, 10_000, 7), group="g", generation="g2")
        writer.save([second])
        reader = backend(kafka_broker, src, topic, "r")
        try:
            reader.prepare([(src, 2)])
            assert reader.load(src, 2) == second
            assert reader.load(src, 1) is None  # another partition of the same topic
        finally:
            reader.close()
        # A writer dies inside a transaction on the changelog partition; a checkpoint is
        # committed after it. The restore must wait for the open one to end (here: the
        # zombie's successor aborts it) and then see the later checkpoint, not stop at the
        # last stable offset before it.
        zombie = Producer(
            {
                **kafka_broker.client_config(),
                "transactional.id": f"test.{topic}.zombie",
                "transaction.timeout.ms": 120_000,
            }
        )
        zombie.init_transactions(30)
        zombie.begin_transaction()
        zombie.produce(topic, key=b'["x", 2, "c"]', value=b"{}", partition=2)
        zombie.flush(30)
        third = Checkpoint(src, 2, 300, windows_state(5, 20_000, 9), group="g", generation="g3")
        writer.save([third])
        late = backend(kafka_broker, src, topic, "late")
        try:
            successor = Producer(
                {**kafka_broker.client_config(), "transactional.id": f"test.{topic}.zombie"}
            )
            fencing = threading.Event()

            def abort_soon() -> None:
                # The test itself: prepare() must wait these 3 s, until the open transaction is
                # decided; nothing can be waited on instead, the waiting is what is checked.
                time.sleep(3)
                fencing.set()
                successor.init_transactions(30)  # fences the zombie: its transaction aborts

            thread = threading.Thread(target=abort_soon, daemon=True)
            thread.start()
            late.prepare([(src, 2)])
            # It could only return once the open transaction was being decided, and then it
            # holds the checkpoint committed after it.
            assert fencing.is_set()
            assert late.load(src, 2) == third
            thread.join(60)
        finally:
            late.close()
    finally:
        writer.close()


def test_fingerprint_refuse_then_reset_with_the_changelog_backend(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """The lifecycle rules (docs/lifecycle.md) through the changelog: a foreign state is
    held (not ready, nothing read, the changelog and the group's offsets untouched), then a
    reset discards it after keeping it as a snapshot in the changelog itself."""
    source, _sink, _unused, cfg = setup(kafka_broker, tmp_path, "cl")
    topic = f"{source}.changelog"
    cfg["checkpoint"]["changelog"] = {"topic": topic}
    group = cfg["source"]["kafka"]["consumerGroup"]
    dirs = iter(range(100))

    def start(name: str, config: dict[str, Any]) -> Worker:
        directory = tmp_path / f"ck-{name}-{next(dirs)}"  # never shared, never reused
        config = {**config, "checkpoint": {**config["checkpoint"], "directory": str(directory)}}
        w = Worker.create(tmp_path, name, config)
        w.env = {"STREAMHERD_WORKER_ID": name}
        return w.start()

    def checkpoints(reader: str) -> dict[int, Checkpoint | None]:
        b = backend(kafka_broker, source, topic, reader)
        try:
            b.prepare([(source, p) for p in range(LIFE_PARTITIONS)])
            return {p: b.load(source, p) for p in range(LIFE_PARTITIONS)}
        finally:
            b.close()

    produce_timed(kafka_broker, source, 0, 4000)
    first = start("old", cfg)
    try:
        wait_until("the old spec caught up", lambda: caught_up(kafka_broker, group, source), 120,
                   [first])  # fmt: skip
        stop_cleanly(first)
    finally:
        first.stop()
    before = checkpoints("r1")
    committed = kafka_broker.committed(group, source)
    assert all(c is not None and c.state and c.state["windows"] for c in before.values())
    some = next(iter(before.values()))
    assert some is not None
    old_fp = some.fingerprint

    held = start("refused", with_new_state(cfg, _sink))
    try:
        assert_held(held, LIFE_PARTITIONS, "window.size: 10000 -> 5000")
        assert records_in(held) == 0
        stop_cleanly(held)
    finally:
        held.stop()
    assert checkpoints("r2") == before
    assert kafka_broker.committed(group, source) == committed

    reset = start(
        "reset", with_new_state(cfg, _sink, onFingerprintMismatch="reset", specGeneration=3)
    )
    try:
        wait_until(
            "every partition's state discarded",
            lambda: (
                gauge(reset, "streamherd_state_discarded_total", reason="reset") == LIFE_PARTITIONS
            ),
            60,
            [reset],
        )
        stop_cleanly(reset)
    finally:
        reset.stop()
    after = checkpoints("r3")
    some = next(iter(after.values()))
    assert some is not None
    new_fp = some.fingerprint
    assert new_fp != old_fp and all(c is not None and c.fingerprint == new_fp
                                    for c in after.values())  # fmt: skip
    assert all(c is not None and c.spec_generation == 3 for c in after.values())
    b = backend(kafka_broker, source, topic, "r4")
    try:
        name = snapshot_name(old_fp or "legacy", new_fp or "")
        for p in range(LIFE_PARTITIONS):
            assert b.load_snapshot(name, source, p) == before[p]
    finally:
        b.close()
    # A worker of the previous spec, whose config resets too (the policy stays in the spec:
    # a rolling update can hand it a partition back), leaves the later spec's state alone.
    old_again = {**cfg, "state": {"onFingerprintMismatch": "reset", "specGeneration": 2}}
    stale = start("stale", old_again)
    try:
        assert_held(stale, LIFE_PARTITIONS, "generation 3")
        assert records_in(stale) == 0
        assert not gauge(stale, "streamherd_state_discarded_total", reason="reset")
        stop_cleanly(stale)
    finally:
        stale.stop()
    assert checkpoints("r5") == after


def metric_sum(w: Worker, name: str) -> float:
    return sum(v for k, v in w.metrics().items() if k.split("{")[0] == name)


def records_read(w: Worker) -> float:
    """Records read from the source and from the repartition topic: a worker may be
    assigned only repartition partitions (its open transaction then holds results and
    changelog records)."""
    return metric_sum(w, "streamherd_records_in_total") + metric_sum(
        w, "streamherd_repartition_records_in_total"
    )


def kill_before_first_commit(broker: KafkaBroker, group: str, src: str, w: Worker) -> None:
    """As soon as the worker has read records: the first time (the worker alone, 20 s
    checkpoint interval) before the consumer group holds any committed offset, later right
    after a restarted worker's assignment (before or at its first commit)."""
    wait_until("records read", lambda: records_read(w) > 0, 120, [w])
    w.kill()


def kill_right_after_restore(broker: KafkaBroker, group: str, src: str, w: Worker) -> None:
    """As soon as the worker has restored its partitions from the changelog (on assign),
    before it commits anything built on them."""
    wait_until("a restore", lambda: "event=changelog-restored" in w.log_path.read_text(),
               120, [w])  # fmt: skip
    w.kill()


def kill_mid_transaction(broker: KafkaBroker, group: str, src: str, w: Worker) -> None:
    """When the worker was seen reading records with no commit since it read them: its open
    transaction holds their outputs (re-keyed records, results)."""
    wait_until("partitions held", lambda: holds(w), 120, [w])
    seen = [metric_sum(w, "streamherd_offset_commits_total"), records_read(w)]

    def reading_inside_a_transaction() -> bool:
        commits = metric_sum(w, "streamherd_offset_commits_total")
        read = records_read(w)
        if commits == seen[0] and read > seen[1]:
            return True
        seen[:] = [commits, read]
        return False

    wait_until("records read inside an open transaction", reading_inside_a_transaction,
               120, [w])  # fmt: skip
    w.kill()


KILL_POINTS: dict[str, Callable[[KafkaBroker, str, str, Worker], None]] = {
    "before-first-commit": kill_before_first_commit,
    "right-after-restore": kill_right_after_restore,
    "mid-transaction": kill_mid_transaction,
}


def trickle(broker: KafkaBroker, src: str, chunk: list[Any], stop: threading.Event) -> None:
    """Produce ``chunk`` in small slices over some 15 s (longer than a rebalance after a
    kill), so that records keep arriving around the next kill; faster once it happened.
    One producer for every slice (a new one per slice cost ~0.5 s of set-up each: the 15 s
    took 40, and the rest of a chunk 25 s more after the kill)."""
    producer = broker.producer()
    for i in range(0, len(chunk), 60):
        broker.produce(src, chunk[i : i + 60], producer=producer)
        stop.wait(0.3)


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_exactly_once_with_changelog_state_at_each_kill_point(
    kafka_broker: KafkaBroker, tmp_path: Path, point: str
) -> None:
    """The invariant at each kill point, three kills each: the read_committed output holds
    every (page, window) exactly once with the reference value, and every bad record is
    dead-lettered once. The victim is always the same worker identity, restarted with a
    new empty directory, so each kill meets the state its predecessor left in Kafka."""
    config, src, sink, dlq = changelog_config(kafka_broker, tmp_path, "exactlyOnce")
    # Room between commits for the kill points; before the first commit: the first one.
    config["checkpoint"]["intervalSeconds"] = 20.0 if point == "before-first-commit" else 2.0
    group = config["source"]["kafka"]["consumerGroup"]
    records = list(page_clicks(0, 12_000))
    fresh = Fresh(tmp_path, config)
    kill = KILL_POINTS[point]
    bad = 0
    # Before the first commit: one worker alone, as a rebalance commits on revoke.
    first = ["a"] if point == "before-first-commit" else list(NAMES)
    try:
        for name in first:
            fresh.workers[name].start()
        for i in range(4):
            chunk = records[i * 3_000 : (i + 1) * 3_000]
            done = threading.Event()
            producing = threading.Thread(target=trickle, args=(kafka_broker, src, chunk, done))
            producing.start()
            try:
                if i == 0 and point == "before-first-commit":
                    wait_until(
                        "records read",
                        lambda: metric_sum(fresh.workers["a"], "streamherd_records_in_total") > 0,
                        120,
                        fresh.all(),
                    )
                    committed = kafka_broker.committed(group, src)
                    assert all(o < 0 for o in committed.values()), committed
                if i < 3:
                    kill(kafka_broker, group, src, fresh.workers["a"])
                    fresh.workers["a"] = fresh._make("a").start()
                    for name in set(NAMES) - set(first):
                        fresh.workers[name].start()
                    first = list(NAMES)
            finally:
                done.set()
                producing.join(120)
            kafka_broker.produce(src, [("bad", b"not json %d" % i)])
            bad += 1
        flush(kafka_broker, src, records[-1][1]["ts"])
        verify(kafka_broker, sink, dlq, page_reference(records), bad, fresh.all())
        fresh.assert_no_files()
    finally:
        for w in fresh.all():
            w.stop()
