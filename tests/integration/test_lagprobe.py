"""The lag probe against a real Apache Kafka broker.

Covers the cases of the lag arithmetic that only a broker can show: normal lag, no committed
offset (earliest and latest), records deleted past the committed offset (DeleteRecords, the
broker operation retention performs), several groups measured in one call, and that the
figure is exactly what a consumer of the group then reads.

The probe reads committed offsets from ``__consumer_offsets`` (operator/offsetstopic.py);
the tests check that they came that way (``probe.counters``), that they equal the admin
API's per-group answers for 200 groups, that a commit acknowledged just before a poll is
seen, that deleted offsets read as "no commit", and that a partition of the offsets topic
holding an open transaction is measured with OffsetFetch instead, exactly. Also: OffsetFetch
on a broker that has just started (where librdkafka's admin client segfaulted), and one
probe shared by several threads and closed while they run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from streamherd.operator.lagprobe import (
    ClusterConfig,
    GroupLag,
    GroupSpec,
    LagProbe,
    LagProbeError,
)
from tests.infra.kafka import KafkaBroker
from tests.infra.paths import REPO_ROOT
from tests.infra.processes import free_port, run_hack_script

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.fixture
def probe(kafka_broker: KafkaBroker) -> Iterator[LagProbe]:
    # The offsets topic exists once some group has committed; on a fresh broker the probe
    # would (correctly) use OffsetFetch, and these tests are about the topic path.
    _commit(kafka_broker, _group(), _any_topic(kafka_broker), {0: 0})
    with LagProbe(ClusterConfig.of(kafka_broker.bootstrap), request_timeout=20.0) as p:
        yield p


def _any_topic(broker: KafkaBroker) -> str:
    return broker.create_topic(broker.unique_topic("seed"), partitions=1)


def _from_topic(probe: LagProbe, groups: int) -> None:
    """Every group so far was answered from __consumer_offsets, none by OffsetFetch."""
    assert probe.offsets_topic_disabled is None
    assert (probe.counters.from_topic, probe.counters.from_fetch) == (groups, 0)


def _group() -> str:
    return f"lagprobe-{uuid.uuid4().hex[:10]}"


def _fill(broker: KafkaBroker, topic: str, counts: list[int]) -> None:
    for partition, n in enumerate(counts):
        broker.produce(topic, (f"r{i}" for i in range(n)), partition=partition)


def _commit(broker: KafkaBroker, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for a group the way a worker does, without joining the group."""
    consumer = Consumer(broker.client_config(**{"group.id": group, "enable.auto.commit": False}))
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


def _delete_records(broker: KafkaBroker, topic: str, partition: int, before: int) -> None:
    admin = broker.admin()
    futures = admin.delete_records([TopicPartition(topic, partition, before)])
    for f in futures.values():
        f.result(30)


def _consume_as_group(
    broker: KafkaBroker, group: str, topic: str, start_from: str, partitions: int
) -> dict[int, int]:
    """Join the group like a worker would and count what it reads up to the end, per partition.

    Nothing is committed, so the probe can be compared before and after.
    """
    consumer = Consumer(
        broker.client_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": start_from,
                "session.timeout.ms": 6000,
            }
        )
    )
    counts = dict.fromkeys(range(partitions), 0)
    at_end: set[int] = set()
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"did not reach the end: {at_end}, {counts}"
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                part = msg.partition()
                assert part is not None
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(part)
                        continue
                    raise KafkaException(err)
                at_end.discard(part)
                counts[part] += 1
    finally:
        consumer.close()
    return counts


def test_normal_lag_per_partition(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("lag"), partitions=3)
    _fill(kafka_broker, topic, [100, 100, 50])
    group = _group()
    _commit(kafka_broker, group, topic, {0: 40, 1: 100, 2: 0})

    lag = probe.measure(GroupSpec(group, (topic,)))

    rows = {p.partition: p for p in lag.partitions}
    assert [(r.log_start, r.log_end, r.committed, r.lag) for r in rows.values()] == [
        (0, 100, 40, 60),
        (0, 100, 100, 0),
        (0, 50, 0, 50),
    ]
    assert lag.total == 110 and lag.partition_count == 3 and lag.missing_topics == ()
    _from_topic(probe, 1)
    assert {r.topic for r in lag.partitions} == {topic}
    assert _consume_as_group(kafka_broker, group, topic, "earliest", 3) == {0: 60, 1: 0, 2: 50}


@pytest.mark.parametrize(("start_from", "expected"), [("earliest", 150), ("latest", 0)])
def test_nothing_committed_follows_start_from(
    kafka_broker: KafkaBroker, probe: LagProbe, start_from: str, expected: int
) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("nocommit"), partitions=2)
    _fill(kafka_broker, topic, [100, 50])
    group = _group()

    lag = probe.measure(GroupSpec(group, (topic,), start_from))  # type: ignore[arg-type]

    assert all(p.committed is None for p in lag.partitions)
    assert lag.total == expected
    _from_topic(probe, 1)
    seen = _consume_as_group(kafka_broker, group, topic, start_from, 2)
    assert sum(seen.values()) == expected
    assert {p.partition: p.lag for p in lag.partitions} == seen


def test_a_topic_read_from_its_beginning_is_measured_so_under_latest(
    kafka_broker: KafkaBroker, probe: LagProbe
) -> None:
    """A re-keyed pipeline's repartition topic is read from its beginning whatever
    startFrom says (decision 0090): measured by startFrom latest, its waiting entries were
    no lag (helper-99's finding)."""
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=1)
    internal = kafka_broker.create_topic(kafka_broker.unique_topic("rp"), partitions=2)
    _fill(kafka_broker, source, [30])
    _fill(kafka_broker, internal, [100, 50])
    spec = GroupSpec(_group(), (source, internal), "latest", from_beginning=(internal,))

    lag = probe.measure(spec)

    assert sum(p.lag for p in lag.partitions if p.topic == source) == 0
    assert sum(p.lag for p in lag.partitions if p.topic == internal) == 150


def test_records_deleted_past_the_commit(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("deleted"), partitions=2)
    _fill(kafka_broker, topic, [100, 100])
    group = _group()
    _commit(kafka_broker, group, topic, {0: 10, 1: 80})
    # Retention's effect, exactly: the log start moves to 60 on both partitions; partition 0
    # loses records the group never read, partition 1 only records it already read.
    _delete_records(kafka_broker, topic, 0, 60)
    _delete_records(kafka_broker, topic, 1, 60)

    lag = probe.measure(GroupSpec(group, (topic,)))

    rows = {p.partition: p for p in lag.partitions}
    assert (rows[0].log_start, rows[0].committed, rows[0].lag) == (60, 10, 40)  # not 90
    assert (rows[1].log_start, rows[1].committed, rows[1].lag) == (60, 80, 20)
    _from_topic(probe, 1)
    # A consumer whose offset fell off the log resets (earliest) and reads what is retained.
    assert _consume_as_group(kafka_broker, group, topic, "earliest", 2) == {0: 40, 1: 20}


def test_many_groups_in_one_call(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    a = kafka_broker.create_topic(kafka_broker.unique_topic("many"), partitions=2)
    b = kafka_broker.create_topic(kafka_broker.unique_topic("many"), partitions=1)
    _fill(kafka_broker, a, [30, 30])
    _fill(kafka_broker, b, [7])
    groups = [_group() for _ in range(12)]
    for i, g in enumerate(groups):
        _commit(kafka_broker, g, a, {0: i, 1: 2 * i})
    missing = kafka_broker.unique_topic("absent")
    specs = [GroupSpec(g, (a, b)) for g in groups] + [GroupSpec(_group(), (missing,), "latest")]

    results = probe.measure_many(specs)

    assert set(results) == {s.group for s in specs}
    for i, g in enumerate(groups):
        r = results[g]
        assert not isinstance(r, Exception)
        assert r.partition_count == 3
        assert r.total == (30 - i) + (30 - 2 * i) + 7
    lonely = results[specs[-1].group]
    assert not isinstance(lonely, Exception)
    assert lonely.missing_topics == (missing,) and lonely.total == 0
    assert lonely.partition_count == 0
    _from_topic(probe, 12)  # the group of a missing topic has nothing to look up


def test_progress_shows_in_the_next_measurement(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("progress"), partitions=1)
    _fill(kafka_broker, topic, [200])
    group = _group()
    first = probe.measure(GroupSpec(group, (topic,)))
    _commit(kafka_broker, group, topic, {0: 150})
    _fill(kafka_broker, topic, [25])
    second = probe.measure(GroupSpec(group, (topic,)))
    assert (first.total, second.total) == (200, 75)
    assert (second.log_end_total, second.position_total) == (225, 150)
    assert second.measured_at >= first.measured_at
    _from_topic(probe, 2)


def test_unreachable_cluster_is_an_error_not_a_zero() -> None:
    dead = LagProbe(
        ClusterConfig.of(f"127.0.0.1:{free_port()}"),
        request_timeout=2.0,
        extra_config={"socket.connection.setup.timeout.ms": 1000},
    )
    with pytest.raises(LagProbeError, match="cannot read metadata"):
        dead.measure(GroupSpec("g", ("t",)))


# --------------------------------------------------------------------------- committed offsets
# from __consumer_offsets


def alter_offsets(broker: KafkaBroker, requests: dict[str, list[TopicPartition]]) -> None:
    """AlterConsumerGroupOffsets for many groups at once, each retried until every partition
    is committed: a group coordinator still loading (a fresh broker) answers with an error
    inside the result, which confluent-kafka's future does not raise."""
    admin = broker.admin()
    pending = dict(requests)
    deadline = time.monotonic() + 60
    while pending:
        futures = {}
        for g, tps in pending.items():
            request = ConsumerGroupTopicPartitions(g, tps)
            futures.update(admin.alter_consumer_group_offsets([request], request_timeout=30))
        failed = {}
        for g, f in futures.items():
            try:
                answer = f.result(60)
            except KafkaException:
                failed[g] = pending[g]
                continue
            if any(tp.error is not None for tp in answer.topic_partitions):
                failed[g] = pending[g]
        pending = failed
        assert time.monotonic() < deadline, f"commits still failing: {sorted(pending)[:5]}"
        if pending:
            time.sleep(0.2)


def _admin_committed(
    broker: KafkaBroker, groups: list[str], tps: list[tuple[str, int]]
) -> dict[str, dict[tuple[str, int], int | None]]:
    """Each group's committed offsets as the admin API (OffsetFetch) answers them."""
    admin = broker.admin()
    futures = {}
    for g in groups:
        request = ConsumerGroupTopicPartitions(g, [TopicPartition(t, p) for t, p in tps])
        futures.update(admin.list_consumer_group_offsets([request], request_timeout=30))
    out = {}
    for g, f in futures.items():
        answer = f.result(60)
        out[g] = {
            (tp.topic, tp.partition): (tp.offset if tp.offset >= 0 else None)
            for tp in answer.topic_partitions
        }
    return out


def _committed(lag: GroupLag | LagProbeError) -> dict[tuple[str, int], int | None]:
    assert isinstance(lag, GroupLag), lag
    return {(p.topic, p.partition): p.committed for p in lag.partitions}


def test_200_groups_equal_the_admin_api(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    a = kafka_broker.create_topic(kafka_broker.unique_topic("g200"), partitions=3)
    b = kafka_broker.create_topic(kafka_broker.unique_topic("g200"), partitions=2)
    _fill(kafka_broker, a, [50, 50, 50])
    _fill(kafka_broker, b, [40, 40])
    groups = [_group() for _ in range(200)]
    requests = {}
    for i, g in enumerate(groups):
        if i % 10 == 9:
            continue  # a group with no commit at all
        offsets = [TopicPartition(a, p, (i + 7 * p) % 51) for p in range(3)]
        if i % 3 == 0:
            offsets.append(TopicPartition(b, i % 2, i % 41))  # one partition of b only
        requests[g] = offsets
    alter_offsets(kafka_broker, requests)
    tps = [(a, 0), (a, 1), (a, 2), (b, 0), (b, 1)]

    results = probe.measure_many([GroupSpec(g, (a, b)) for g in groups])
    expected = _admin_committed(kafka_broker, groups, tps)

    assert {g: _committed(results[g]) for g in groups} == expected
    # Spot-check the inputs went where intended (the comparison alone would pass on zeros).
    assert expected[groups[3]] == {
        (a, 0): 3,
        (a, 1): 10,
        (a, 2): 17,
        (b, 0): None,
        (b, 1): 3,
    }
    assert all(v is None for v in expected[groups[9]].values())
    _from_topic(probe, 200)


def test_a_commit_just_before_the_poll_is_seen(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("fresh"), partitions=2)
    _fill(kafka_broker, topic, [100, 100])
    group = _group()
    consumer = Consumer(
        kafka_broker.client_config(**{"group.id": group, "enable.auto.commit": False})
    )
    seen = []
    try:
        probe.measure(GroupSpec(group, (topic,)))  # the reader is running and caught up
        for k in range(1, 21):
            # Synchronous: returns once the broker acknowledged the commit.
            consumer.commit(
                offsets=[TopicPartition(topic, 0, 5 * k), TopicPartition(topic, 1, k)],
                asynchronous=False,
            )
            seen.append(_committed(probe.measure(GroupSpec(group, (topic,)))))
    finally:
        consumer.close()
    assert seen == [{(topic, 0): 5 * k, (topic, 1): k} for k in range(1, 21)]
    _from_topic(probe, 21)


_DELETE_OFFSETS_JAVA = """
import java.util.*;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.TopicPartition;

public class DeleteOffsets {
    public static void main(String[] a) throws Exception {
        try (Admin admin = Admin.create(Map.of("bootstrap.servers", (Object) a[0]))) {
            admin.deleteConsumerGroupOffsets(
                a[1], Set.of(new TopicPartition(a[2], Integer.parseInt(a[3])))
            ).all().get();
        }
    }
}
"""


def _delete_group_offset(
    broker: KafkaBroker, group: str, topic: str, partition: int, workdir: Path
) -> None:
    """DeleteConsumerGroupOffsets, which confluent-kafka's Python admin client lacks: Kafka's
    own Java Admin client, from the broker's jars (a single-file Java program)."""
    source = workdir / "DeleteOffsets.java"
    source.write_text(_DELETE_OFFSETS_JAVA)
    libs = run_hack_script("fetch-kafka.sh")
    java = shutil.which("java")
    assert java is not None, "java runs the test broker, so it is installed"
    subprocess.run(
        [java, "-cp", f"{libs}/*", str(source), broker.bootstrap, group, topic, str(partition)],
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_deleted_offsets_read_as_no_commit(
    kafka_broker: KafkaBroker, probe: LagProbe, tmp_path: Path
) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("del"), partitions=2)
    _fill(kafka_broker, topic, [30, 30])
    group = _group()
    spec = GroupSpec(group, (topic,))
    _commit(kafka_broker, group, topic, {0: 10, 1: 20})
    assert _committed(probe.measure(spec)) == {(topic, 0): 10, (topic, 1): 20}
    admin = kafka_broker.admin()

    _delete_group_offset(kafka_broker, group, topic, 0, tmp_path)
    after_offset_delete = probe.measure(spec)
    for f in admin.delete_consumer_groups([group], request_timeout=30).values():
        f.result(60)
    after_group_delete = probe.measure(spec)

    assert _committed(after_offset_delete) == {(topic, 0): None, (topic, 1): 20}
    # The workers' checkpoints stand when the offsets are gone (docs/lifecycle.md): the lag
    # is measured from the offset last seen committed (Positions), not from startFrom.
    assert after_offset_delete.total == 20 + 10
    assert _committed(after_group_delete) == {(topic, 0): None, (topic, 1): None}
    assert after_group_delete.total == 20 + 10
    # A probe that never saw them (the operator restarted) goes by startFrom: earliest.
    with LagProbe(ClusterConfig.of(kafka_broker.bootstrap), request_timeout=20.0) as fresh:
        assert fresh.measure(spec).total == 30 + 30
    assert _admin_committed(kafka_broker, [group], [(topic, 0), (topic, 1)]) == {
        group: {(topic, 0): None, (topic, 1): None}
    }
    _from_topic(probe, 3)


def _wait_until_from_topic(probe: LagProbe, specs: list[GroupSpec]) -> dict[str, GroupLag]:
    """Measure until a call is answered wholly from the offsets topic (the transaction's
    markers are written asynchronously after the commit returns)."""
    deadline = time.monotonic() + 30
    while True:
        before = probe.counters.from_fetch
        results = probe.measure_many(specs)
        if probe.counters.from_fetch == before:
            out = {}
            for g, r in results.items():
                assert isinstance(r, GroupLag), r
                out[g] = r
            return out
        assert time.monotonic() < deadline, "the offsets topic stayed unstable"
        time.sleep(0.2)


def test_open_transaction_uses_offset_fetch_exactly(
    kafka_broker: KafkaBroker, probe: LagProbe
) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("txn"), partitions=1)
    _fill(kafka_broker, topic, [20])
    txn_group, plain_group = _group(), _group()
    specs = [GroupSpec(txn_group, (topic,)), GroupSpec(plain_group, (topic,))]
    probe.measure_many(specs)
    producer = Producer(kafka_broker.client_config(**{"transactional.id": _group()}))
    # The identity of the group whose offsets the transaction commits.
    meta_source = Consumer(kafka_broker.client_config(**{"group.id": txn_group}))
    try:
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.send_offsets_to_transaction(
            [TopicPartition(topic, 0, 7)], meta_source.consumer_group_metadata(), 30
        )
        # The test broker's offsets topic has one partition: this plain commit lands behind
        # the open transaction, where a read-committed reader cannot see it yet.
        _commit(kafka_broker, plain_group, topic, {0: 3})
        fetched_before = probe.counters.from_fetch
        during = probe.measure_many(specs)
        fetched_during = probe.counters.from_fetch - fetched_before

        producer.commit_transaction(30)
        after_commit = _wait_until_from_topic(probe, specs)

        producer.begin_transaction()
        producer.send_offsets_to_transaction(
            [TopicPartition(topic, 0, 15)], meta_source.consumer_group_metadata(), 30
        )
        producer.abort_transaction(30)
        after_abort = _wait_until_from_topic(probe, specs)
    finally:
        meta_source.close()
    assert fetched_during == 2  # both groups live in the partition with the open transaction
    # As OffsetFetch answers: the plain commit is seen, the pending one is not yet.
    assert _committed(during[plain_group]) == {(topic, 0): 3}
    assert _committed(during[txn_group]) == {(topic, 0): None}
    assert _committed(after_commit[txn_group]) == {(topic, 0): 7}
    assert _committed(after_commit[plain_group]) == {(topic, 0): 3}
    assert _committed(after_abort[txn_group]) == {(topic, 0): 7}  # the aborted 15 never counts
    assert _admin_committed(kafka_broker, [txn_group], [(topic, 0)]) == {txn_group: {(topic, 0): 7}}


def test_offset_fetch_path_gives_the_same_answers(
    kafka_broker: KafkaBroker, probe: LagProbe
) -> None:
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("same"), partitions=2)
    _fill(kafka_broker, topic, [40, 10])
    groups = [_group() for _ in range(6)]
    for i, g in enumerate(groups[:4]):
        _commit(kafka_broker, g, topic, {0: 10 * i, 1: i})
    specs = [
        GroupSpec(g, (topic,), "latest" if i % 2 else "earliest") for i, g in enumerate(groups)
    ]
    with LagProbe(
        ClusterConfig.of(kafka_broker.bootstrap), request_timeout=20.0, read_offsets_topic=False
    ) as old:
        by_fetch = old.measure_many(specs)
        assert (old.counters.from_topic, old.counters.from_fetch) == (0, 6)
        assert old.reader is None  # never started
    by_topic = probe.measure_many(specs)

    def rows(results: dict[str, GroupLag | LagProbeError]) -> dict[str, object]:
        out: dict[str, object] = {}
        for g, r in results.items():
            assert isinstance(r, GroupLag), r
            out[g] = [
                (p.partition, p.log_start, p.log_end, p.committed, p.lag) for p in r.partitions
            ]
        return out

    assert rows(by_topic) == rows(by_fetch)
    assert [r.total for r in by_topic.values() if isinstance(r, GroupLag)] == [
        50,
        39,
        28,  # (40 - 20) + (10 - 2)
        17,
        50,
        0,
    ]
    _from_topic(probe, 6)


def test_kip848_consumer_group_commits(kafka_broker: KafkaBroker, probe: LagProbe) -> None:
    """A group on the new consumer protocol (KIP-848) writes its own record types (key
    versions 3 and up) next to its offset commits: skipped, while its commits count."""
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("kip848"), partitions=2)
    _fill(kafka_broker, topic, [30, 20])
    group = _group()
    consumer = Consumer(
        kafka_broker.client_config(
            **{
                "group.id": group,
                "group.protocol": "consumer",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
    )
    probe.measure(GroupSpec(group, (topic,)))  # the reader has read everything before
    reader = probe.reader
    assert reader is not None
    skipped_before = reader.stats()["skipped"]
    read = 0
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while read < 25:
            assert time.monotonic() < deadline, f"read only {read} records"
            for msg in consumer.consume(num_messages=25 - read, timeout=0.5):
                assert msg.error() is None, msg.error()
                read += 1
        consumer.commit(asynchronous=False)
        lag = probe.measure(GroupSpec(group, (topic,)))
    finally:
        consumer.close()
    expected = _admin_committed(kafka_broker, [group], [(topic, 0), (topic, 1)])[group]
    assert _committed(lag) == expected
    assert sum(v or 0 for v in expected.values()) == 25  # what was read, committed
    assert lag.total == 50 - 25
    assert reader.stats()["skipped"] > skipped_before  # this group's KIP-848 records
    _from_topic(probe, 2)


# A fresh cluster: no __consumer_offsets yet, so the probe measures every group with
# OffsetFetch while the broker activates its group coordinator, creates the topic and loads
# its partitions, answering NOT_COORDINATOR / COORDINATOR_NOT_AVAILABLE meanwhile.
# librdkafka's admin client (ListConsumerGroupOffsets) turned that answer into a segfault in
# thread rdk:main (confluentinc/librdkafka#5040): the operator died 10 s after start in the
# N=1000 benchmark. The window is the broker's first moments, so the child process starts
# the broker itself and polls as soon as it answers; the old code died there in 1 run out
# of 5 (a timing window, not a certainty). A child process, so a crash shows as a
# signal in the return code instead of killing pytest; its broker dies with it.
_FRESH_CLUSTER_CHILD = r"""
import json, sys, time
from pathlib import Path
from confluent_kafka.admin import AdminClient, NewTopic
from streamherd.operator.lagprobe import ClusterConfig, GroupLag, GroupSpec, LagProbe
from tests.infra.kafka import start_kafka

fresh = start_kafka(Path(sys.argv[1]))
try:
    bootstrap = fresh.broker.bootstrap
    started = time.monotonic()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic("fresh", 2, 1)]).values():
        f.result(30)
    waves = []
    cluster = ClusterConfig.of(bootstrap)
    with LagProbe(cluster, request_timeout=10.0, read_offsets_topic=False) as probe:
        while time.monotonic() < started + 5 or len(waves) < 2:
            w = len(waves)
            out = probe.measure_many([GroupSpec(f"fresh-{w}-{i}", ("fresh",)) for i in range(100)])
            waves.append({
                "ok": sum(isinstance(r, GroupLag) for r in out.values()),
                "committed": sorted({
                    str(p.committed) for r in out.values() if isinstance(r, GroupLag)
                    for p in r.partitions
                }),
                "errors": sorted({
                    repr(r)[:200] for r in out.values() if not isinstance(r, GroupLag)
                }),
            })
        fetched = probe.counters.from_fetch
    print(json.dumps({"waves": waves, "from_fetch": fetched}))
finally:
    fresh.stop()
"""


def test_offset_fetch_while_a_fresh_cluster_starts(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _FRESH_CLUSTER_CHILD, str(tmp_path / "kafka")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert child.returncode == 0, f"child died ({child.returncode}): {child.stderr[-3000:]}"
    summary = json.loads(child.stdout.strip().splitlines()[-1])
    waves = summary["waves"]
    assert len(waves) >= 2
    assert summary["from_fetch"] == 100 * len(waves)  # every group by OffsetFetch
    # No group of this cluster ever committed: once the coordinator is up, every group is
    # measured, with nothing committed.
    assert waves[-1] == {"ok": 100, "committed": ["None"], "errors": []}, summary


def test_concurrent_calls_and_close_during_use(kafka_broker: KafkaBroker) -> None:
    """Several threads share one probe, as in the operator's executor, on both paths
    (offsets topic and OffsetFetch); closing it while they run ends their calls with
    LagProbeError, never anything else (nor a crash)."""
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("conc"), partitions=2)
    _fill(kafka_broker, topic, [30, 20])
    groups = [_group() for _ in range(12)]
    for i, g in enumerate(groups[:8]):
        _commit(kafka_broker, g, topic, {0: i, 1: 2 * i})
    expected = {g: 50 - 3 * i if i < 8 else 50 for i, g in enumerate(groups)}
    specs = [GroupSpec(g, (topic,)) for g in groups]
    cluster = ClusterConfig.of(kafka_broker.bootstrap)

    def hammer(probe: LagProbe, rounds: int, failures: list[BaseException]) -> list[dict[str, int]]:
        seen: list[dict[str, int]] = []
        for _ in range(rounds):
            try:
                out = probe.measure_many(specs)
            except LagProbeError as exc:
                failures.append(exc)
                break
            for r in out.values():
                if isinstance(r, LagProbeError):
                    failures.append(r)
            seen.append({g: r.total for g, r in out.items() if isinstance(r, GroupLag)})
        return seen

    for read_topic in (True, False):
        with LagProbe(cluster, request_timeout=20.0, read_offsets_topic=read_topic) as probe:
            failures: list[BaseException] = []
            with ThreadPoolExecutor(4) as pool:
                runs = [pool.submit(hammer, probe, 5, failures) for _ in range(4)]
                results = [r for run in runs for r in run.result(timeout=300)]
            assert failures == []
            assert results == [expected] * 20
            assert probe.counters.calls == 20
            if read_topic:
                assert probe.counters.from_fetch == 0  # all from the offsets topic
            else:
                assert probe.counters.from_topic == 0

    for read_topic in (True, False):
        probe = LagProbe(cluster, request_timeout=20.0, read_offsets_topic=read_topic)
        first = probe.measure_many(specs)[groups[0]]
        assert isinstance(first, GroupLag) and first.total == expected[groups[0]]
        failures = []
        with ThreadPoolExecutor(4) as pool:
            runs = [pool.submit(hammer, probe, 1000, failures) for _ in range(4)]
            time.sleep(0.5)
            probe.close()
            probe.close()  # idempotent
            results = [r for run in runs for r in run.result(timeout=120)]
        # Every call that completed before the close is exact; every thread then stopped
        # on a LagProbeError (its call, or a group of it, met the closed probe).
        assert all(r == expected for r in results if len(r) == len(groups))
        assert failures and all(isinstance(f, LagProbeError) for f in failures)
        with pytest.raises(LagProbeError, match="closed"):
            probe.measure_many(specs)
