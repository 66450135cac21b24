"""Offsets for times when the broker cannot answer at once (engine ``_replay_offsets``,
``_offset_for_time``, ``_retry_seeks``), against real brokers.

The real condition: the source topic's partitions are led by a second broker that is down
when the worker is assigned them. The group coordinator (the first broker) answers, so the
worker joins and gets the partitions, but nobody can answer the offsets-for-times lookup of
its ``startFrom`` time. The worker must not guess: it holds the partitions (not ready,
saying why, nothing read), asks again on its loop, and once the leader is back it seeks to
the right offset. Proof: it reads exactly the records at or after the time, and its results
equal a reference computed here from the produced records.

The second broker joins the session's KRaft cluster (same cluster id, same controller) for
this test only; the topics placed on it are this test's, and it is fenced again before the
test ends, so later tests only ever see the first broker.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from tests.infra.kafka import TEST_SETTINGS, KafkaBroker, _java, _log4j2_config
from tests.infra.processes import free_port, run_hack_script, spawn, stop_group, wait_for
from tests.integration.engine.enginekit import (
    BASE_TS,
    Worker,
    assert_matches,
    latest_by_key,
    pipeline_config,
    wait_until,
)
from tests.integration.engine.test_engine_lifecycle import (
    PARTITIONS,
    STEP_MS,
    caught_up,
    flush,
    produce_timed,
    records_in,
    reference,
    stop_cleanly,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

SECOND = 2  # the second broker's node id


class SecondBroker:
    """A broker-only node (id 2) of the fixture broker's KRaft cluster, started and stopped
    on demand with the same data directory (a restart, as in a rolling restart)."""

    def __init__(self, first: KafkaBroker, workdir: Path) -> None:
        assert first.log_dir is not None
        props = dict(
            line.split("=", 1)
            for line in (first.log_dir / "server.properties").read_text().splitlines()
            if "=" in line
        )
        meta = (first.log_dir / "data" / "meta.properties").read_text()
        found = re.search(r"^cluster\.id=(.+)$", meta, re.M)
        assert found is not None, meta
        self.cluster_id = found.group(1).strip()
        self.first = first
        self.workdir = workdir
        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        mine = {
            "process.roles": "broker",
            "node.id": str(SECOND),
            "controller.quorum.voters": props["controller.quorum.voters"],
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://{self.bootstrap}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(workdir / "data"),
            **TEST_SETTINGS,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        self.props = workdir / "server.properties"
        self.props.write_text("".join(f"{k}={v}\n" for k, v in mine.items()))
        self.log = workdir / "server.log"
        log4j = workdir / "log4j2.properties"
        _log4j2_config(log4j, self.log)
        self.jvm = [_java(), f"-Dlog4j2.configurationFile={log4j}", "-cp",
                    f"{run_hack_script('fetch-kafka.sh')}/*"]  # fmt: skip
        self.env = {**os.environ, "KAFKA_HEAP_OPTS": ""}
        _, proc = spawn("kafka-format-2", [*self.jvm, "-Xmx256m", "kafka.tools.StorageTool",
                        "format", "-t", self.cluster_id, "-c", str(self.props)],
                        workdir / "format.log", env=self.env)  # fmt: skip
        assert proc.wait(timeout=120) == 0, (workdir / "format.log").read_text()
        self.pid: int | None = None

    def live(self) -> bool:
        brokers = AdminClient(self.first.client_config()).list_topics(timeout=5).brokers
        return SECOND in brokers

    def start(self) -> None:
        _, proc = spawn("kafka-2", [*self.jvm, "-Xms256m", "-Xmx256m", "-XX:+UseG1GC",
                        "-XX:TieredStopAtLevel=1", "kafka.Kafka", str(self.props)],
                        self.workdir / "stdout.log", env=self.env)  # fmt: skip
        self.pid = proc.pid
        wait_for(f"broker {SECOND} registered ({self.log})", self.live, 90, interval=0.5)

    def stop(self) -> None:
        if self.pid is not None:
            stop_group(self.pid, grace=30)
            self.pid = None
        # Fenced (gone from the metadata): no later topic is ever placed on it.
        wait_for(f"broker {SECOND} fenced", lambda: not self.live(), 60, interval=0.5)


@contextmanager
def second_broker(first: KafkaBroker, workdir: Path) -> Iterator[SecondBroker]:
    broker = SecondBroker(first, workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_a_start_time_asked_while_the_leader_is_down_is_asked_again(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    if kafka_broker.log_dir is None:
        pytest.fail("needs the session's own broker (STREAMHERD_TEST_KAFKA names a foreign one)")
    admin = kafka_broker.admin()
    source = kafka_broker.unique_topic("lookup")
    sink = kafka_broker.unique_topic("lookup-out")
    with second_broker(kafka_broker, tmp_path / "broker-2") as second:
        # The source on the second broker only; the sink and the group on the first.
        for topic, where in ((source, SECOND), (sink, 1)):
            placed = NewTopic(topic, num_partitions=PARTITIONS,
                              replica_assignment=[[where]] * PARTITIONS,
                              config={"retention.ms": "-1"})  # fmt: skip
            futures = admin.create_topics([placed])
            futures[topic].result(30)
        wait_for("the source led by broker 2", lambda: all(
            p.leader == SECOND for p in admin.list_topics(source, timeout=5)
            .topics[source].partitions.values()), 30, interval=0.3)  # fmt: skip
        sent = produce_timed(kafka_broker, source, 0, 3000)
        second.stop()  # the source's partitions have no leader now
        leaders = {p.leader for p in admin.list_topics(source, timeout=5)
                   .topics[source].partitions.values()}  # fmt: skip
        assert leaders == {-1}, leaders

        start = BASE_TS + 1100 * STEP_MS - 3  # not on a record
        cfg = pipeline_config(kafka_broker, source=source, sink=sink, dlq=None,
                              group=f"g-{source}", checkpoints=tmp_path / "ckpt",
                              lateness="0s")  # fmt: skip
        cfg["source"]["kafka"]["startFromTimeMs"] = start
        start -= start % 10_000  # the start of the window holding it: read whole
        group = cfg["source"]["kafka"]["consumerGroup"]
        worker = Worker.create(tmp_path, "lookup", cfg).start()
        try:
            # Assigned, but the time cannot be turned into an offset: held, saying why.
            wait_until(
                "the partitions held for their start time",
                lambda: "no offset for replay time" in worker.get("/readyz")[1],
                90,
                [worker],
            )
            status, body = worker.get("/readyz")
            assert status == 503, body
            asked_at = time.time()
            # It keeps asking, and reads nothing meanwhile.
            wait_until("the held worker's loop runs on",
                       lambda: time.time() > asked_at + 3 and worker.alive(), 30,
                       [worker])  # fmt: skip
            assert records_in(worker) == 0
            second.start()  # the leader is back: the next ask is answered
            wait_until("caught up from the start time",
                       lambda: caught_up(kafka_broker, group, source), 120, [worker])  # fmt: skip
            assert records_in(worker) == sum(1 for s in sent if s.rec["ts"] >= start)
            flush(kafka_broker, source, BASE_TS + 5000 * STEP_MS)
            wait_until("the flush read", lambda: caught_up(kafka_broker, group, source), 60,
                       [worker])  # fmt: skip
            stop_cleanly(worker)
        finally:
            worker.stop()
        log = worker.log_path.read_text()
        # One assignment: the seek came from asking again, not from a second assignment.
        assert log.count("event=assigned") == 1, log[-3000:]
        assert "event=seek-to-time" in log
        got = latest_by_key(kafka_broker.consume_all(sink))
        admin.delete_topics([source, sink])
    assert_matches(got, reference([s for s in sent if s.rec["ts"] >= start], 10_000))
