"""A real single-node Apache Kafka broker (KRaft, broker+controller) for the tests.

Runs the broker from the Maven Central jars that hack/fetch-kafka.sh caches, on free
127.0.0.1 ports with a throwaway log dir, and gives tests small helpers over
confluent_kafka (create_topic, produce, consume_all, admin). Used by the `kafka_broker`
fixture in tests/infra/plugin.py and by `make kafka-up` / `make kafka-down`:

    python -m tests.infra.kafka up      # prints: export STREAMHERD_TEST_KAFKA=127.0.0.1:PORT
    python -m tests.infra.kafka env
    python -m tests.infra.kafka down
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

# The same class as confluent_kafka.admin.NewTopic, whose type stub does not re-export it.
from confluent_kafka.cimpl import NewTopic

from tests.infra.processes import (
    Child,
    DevService,
    InfraError,
    Launched,
    free_port,
    port_open,
    run_dev_cli,
    run_hack_script,
    spawn,
    stop_group,
    tail,
    wait_for,
)

ENV_REUSE = "STREAMHERD_TEST_KAFKA"
HEAP = "768m"

# Test-friendly broker settings on top of the KRaft single-node basics (docs/testing.md):
# - auto.create.topics.enable=false: tests and the engine create topics explicitly, so a
#   typo in a topic name fails loudly instead of silently creating an empty topic.
# - small retention check interval and segment roll so retention tests run in seconds
#   (retention moves a partition's log start at once; the segment's file goes a second
#   later: log.segment.delete.delay.ms). Not 0: at 0 the broker's file-deletion task
#   reschedules itself with no delay for ever, and its ten scheduler threads woke ~2,500
#   times a second, a third of an idle broker's CPU (measured 2026-12-06: 1.82 CPU-seconds
#   per 30 s at 0, 0.71 at 1000), on each of CI's four or five brokers.
# - metadata.max.idle.interval.ms=5000: the controller's no-op metadata record every 5 s,
#   not every 0.5 s (a single node: nothing to detect; 0.71 -> 0.46 CPU-seconds per 30 s).
# - group.initial.rebalance.delay.ms=0 so consumer groups start at once.
TEST_SETTINGS: Mapping[str, str] = {
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "log.retention.check.interval.ms": "1000",
    "log.segment.delete.delay.ms": "1000",
    "metadata.max.idle.interval.ms": "5000",
    "log.initial.task.delay.ms": "0",
    "delete.topic.enable": "true",
    "num.network.threads": "2",
    "num.io.threads": "4",
    "log.flush.interval.messages": "9223372036854775807",
}


@dataclass(frozen=True)
class Record:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp_ms: int | None = None

    def json(self) -> Any:
        """The value decoded as JSON."""
        if self.value is None:
            return None
        return orjson.loads(self.value)


def _encode(item: object) -> bytes | None:
    """bytes stay bytes, str is UTF-8, None is None, anything else is JSON (orjson)."""
    if item is None or isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode()
    return orjson.dumps(item)


@dataclass(frozen=True)
class KafkaBroker:
    """A reachable broker (started by us or reused) plus test helpers.

    log_dir is None when the broker was reused from STREAMHERD_TEST_KAFKA.
    """

    bootstrap: str
    log_dir: Path | None = None
    log_files: tuple[Path, ...] = field(default=())

    def client_config(self, **extra: Any) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, **extra}

    def admin(self) -> AdminClient:
        return AdminClient(self.client_config())

    def unique_topic(self, prefix: str = "t") -> str:
        """A topic name no other test uses (the broker is shared by the whole session)."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    def create_topic(
        self,
        name: str,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> str:
        """Create a topic and wait until every partition has a leader; returns the name."""
        admin = self.admin()
        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=-1, config=dict(config or {})
        )
        admin.create_topics([topic], operation_timeout=timeout)[name].result(timeout)

        def ready() -> bool:
            md = admin.list_topics(name, timeout=5).topics.get(name)
            return (
                md is not None
                and md.error is None
                and len(md.partitions) == partitions
                and all(p.leader >= 0 for p in md.partitions.values())
            )

        wait_for(f"topic {name} to have leaders", ready, timeout)
        return name

    def delete_topic(self, name: str, timeout: float = 30.0) -> None:
        admin = self.admin()  # kept until the answer: a dropped client fails it (_DESTROY)
        admin.delete_topics([name], operation_timeout=timeout)[name].result(timeout)

    def producer(self) -> Producer:
        """The idempotent, batching producer :meth:`produce` uses: its set-up (the producer
        id's round trip) costs about half a second, so a producer that paces many small
        calls keeps one and passes it."""
        return Producer(
            self.client_config(
                **{
                    "linger.ms": 5,
                    "batch.num.messages": 10000,
                    "batch.size": 1_000_000,
                    "queue.buffering.max.messages": 500_000,
                    "enable.idempotence": True,
                    "acks": "all",
                }
            )
        )

    def produce(
        self,
        topic: str,
        records: Iterable[object],
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | None = None,
        timeout: float = 60.0,
        producer: Producer | None = None,
    ) -> int:
        """Produce records fast (batched, idempotent) and wait for every delivery.

        Each record is a (key, value) tuple or a bare value (key None). Keys and values:
        bytes as is, str as UTF-8, None as null, anything else (dict, list, number) as JSON.
        Returns the count; raises if any delivery failed. ``producer``: one from
        :meth:`producer` to reuse (else a new one for this call).
        """
        if producer is None:  # not `or`: a producer with an empty queue is falsy (len 0)
            producer = self.producer()
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(str(err))

        hdrs = list(headers.items()) if headers else None
        count = 0
        for rec in records:
            key, value = rec if isinstance(rec, tuple) else (None, rec)
            kwargs: dict[str, Any] = {"key": _encode(key), "value": _encode(value)}
            if partition is not None:
                kwargs["partition"] = partition
            if hdrs:
                kwargs["headers"] = hdrs
            while True:
                try:
                    producer.produce(topic, on_delivery=on_delivery, **kwargs)
                    break
                except BufferError:
                    producer.poll(0.05)  # local queue full: let deliveries drain
            count += 1
            if count % 10000 == 0:
                producer.poll(0)
        left = producer.flush(timeout)
        if left:
            raise InfraError(f"{left} records to {topic} not delivered within {timeout}s")
        if errors:
            raise InfraError(f"{len(errors)} deliveries to {topic} failed, first: {errors[0]}")
        return count

    def consume_all(
        self,
        topic: str,
        timeout: float = 30.0,
        min_records: int = 0,
        isolation: str = "read_committed",
    ) -> list[Record]:
        """Read a topic from the beginning up to its current end, every partition.

        Without a consumer group commit: nothing is left behind. With min_records, keeps
        reading until at least that many arrived (for output that is still being written).
        Raises TimeoutError if the end (or min_records) is not reached within timeout.
        """
        consumer = Consumer(
            self.client_config(
                **{
                    "group.id": f"streamherd-test-reader-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    "isolation.level": isolation,
                }
            )
        )
        try:
            md = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if md is None or md.error is not None:
                raise InfraError(f"topic {topic} does not exist: {md.error if md else ''}")
            parts = sorted(md.partitions)
            consumer.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: beginning
            out: list[Record] = []
            at_end: set[int] = set()
            deadline = time.monotonic() + timeout
            while len(at_end) < len(parts) or len(out) < min_records:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"consume_all({topic}): {len(out)} records, partitions at end "
                        f"{sorted(at_end)} of {parts} after {timeout}s"
                    )
                for msg in consumer.consume(num_messages=10000, timeout=0.5):
                    part = msg.partition()
                    assert part is not None  # set on every consumed message or EOF event
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            at_end.add(part)
                            continue
                        raise KafkaException(err)
                    at_end.discard(part)
                    out.append(_record(topic, part, msg))
            return out
        finally:
            consumer.close()

    def watermarks(self, topic: str) -> dict[int, tuple[int, int]]:
        """{partition: (log-start offset, log-end offset)}: low and high watermarks."""
        consumer = Consumer(self.client_config(**{"group.id": "streamherd-test-offsets"}))
        try:
            md = consumer.list_topics(topic, timeout=10).topics[topic]
            out: dict[int, tuple[int, int]] = {}
            for p in sorted(md.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                out[p] = (low, high)
            return out
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        """The log-end offset (high watermark) of every partition."""
        return {p: high for p, (_low, high) in self.watermarks(topic).items()}

    def start_offsets(self, topic: str) -> dict[int, int]:
        """The log-start offset of every partition (moves when retention deletes segments)."""
        return {p: low for p, (low, _high) in self.watermarks(topic).items()}

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The committed offsets of a consumer group on a topic (-1001: none committed)."""
        consumer = Consumer(self.client_config(**{"group.id": group, "enable.auto.commit": False}))
        try:
            md = consumer.list_topics(topic, timeout=10).topics[topic]
            tps = [TopicPartition(topic, p) for p in sorted(md.partitions)]
            deadline = time.monotonic() + 30
            while True:
                try:
                    committed = consumer.committed(tps, timeout=10)
                except KafkaException as exc:
                    # A group's coordinator moves or is still loading on a fresh broker:
                    # asked again; anything else, or past the deadline, is raised.
                    code = exc.args[0].code()
                    if code not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
                    continue
                return {tp.partition: tp.offset for tp in committed}
        finally:
            consumer.close()


_COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
    }
)


def _record(topic: str, partition: int, msg: Message) -> Record:
    ts_type, ts = msg.timestamp()
    raw_headers = msg.headers() or []
    pairs = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    return Record(
        topic=topic,
        partition=partition,
        offset=msg.offset() or 0,
        key=_encode(msg.key()),
        value=_encode(msg.value()),
        headers=tuple((k, _encode(v)) for k, v in pairs),
        timestamp_ms=ts if ts_type else None,
    )


def answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """True when a broker at bootstrap serves metadata."""
    host, _, port = bootstrap.rpartition(":")
    if not port_open(host, int(port)):
        return False  # spares librdkafka's connection-refused noise while the JVM starts
    try:
        md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(md.brokers)


def _cluster_id() -> str:
    """A KRaft cluster id: 22 base64url characters. One starting with '-' reads as an option
    to the storage tool's argument parser, so draw again (1 in 64 would fail)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _log4j2_config(path: Path, log_file: Path) -> None:
    path.write_text(
        "status = warn\n"
        "appender.file.type = File\n"
        "appender.file.name = FILE\n"
        f"appender.file.fileName = {log_file}\n"
        "appender.file.layout.type = PatternLayout\n"
        "appender.file.layout.pattern = [%d] %p %m (%c)%n\n"
        "rootLogger.level = INFO\n"
        "rootLogger.appenderRef.file.ref = FILE\n"
        # The per-request and state-change chatter only drowns the interesting lines.
        "logger.request.name = kafka.request.logger\n"
        "logger.request.level = WARN\n"
        "logger.state.name = state.change.logger\n"
        "logger.state.level = WARN\n"
    )


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise InfraError(
            "java (17+) is required for the Kafka broker: apt-get install openjdk-17-jre-headless"
        )
    return java


@dataclass(kw_only=True)
class KafkaProcess(Launched):
    """A broker process we started (or a cluster: start_kafka's ``brokers``); stop() kills
    it and removes its directory.

    crash() and start_again() are for tests of a broker that goes away mid-stream: the
    process dies with SIGKILL (no controlled shutdown, its logs recovered at the next start)
    and comes back on the same ports with the same data; in a cluster, the broker named by
    its node id (every broker when none is named)."""

    broker: KafkaBroker
    launch: Callable[[], tuple[Child, subprocess.Popen[bytes]]] | None = None
    # A cluster's: each broker's launcher and address, by node id - 1.
    launches: list[Callable[[], tuple[Child, subprocess.Popen[bytes]]]] = field(
        default_factory=list
    )
    addresses: list[str] = field(default_factory=list)
    # A cluster's controller: stopped after the brokers, never crashed or frozen.
    controller_pids: list[int] = field(default_factory=list)
    grace: ClassVar[float] = 15.0  # the broker flushes its logs on SIGTERM

    def stop(self) -> None:
        self.thaw()  # a frozen broker would sit out SIGTERM's whole grace
        self.pids = [*self.controller_pids, *(p for p in self.pids if p > 0)]
        self.controller_pids = []
        super().stop()  # the last started stops first: the controller last

    def crash(self, node: int | None = None) -> None:
        """SIGKILL the broker (its process group: no shutdown hook runs) and reap it; in a
        cluster, broker ``node`` (every one when None)."""
        for index, pid in enumerate(self.pids):
            if pid <= 0 or (node is not None and index != node - 1):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.pids[index] = -1

    def freeze(self) -> None:
        """SIGSTOP the broker: its connections stay open and nothing answers (a long GC pause,
        a network partition), until thaw()."""
        for pid in self.pids:
            if pid > 0:
                os.killpg(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.pids:
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGCONT)

    def start_again(self, node: int | None = None, startup_timeout: float = 90.0) -> None:
        """Start the broker crash() killed (in a cluster, broker ``node``, or every one that
        is down), on the same ports and data; wait until ready. (Its ports came from bind(0),
        which Linux gives odd ports; connect() takes even ones first, so a client's outgoing
        connection hardly ever holds one meanwhile.)"""
        launches = self.launches or ([self.launch] if self.launch is not None else [])
        addresses = self.addresses or [self.broker.bootstrap]
        down = [i for i, pid in enumerate(self.pids) if pid <= 0]
        assert down, "crash() it first"
        for index in down:
            if node is not None and index != node - 1:
                continue
            child, proc = launches[index]()
            self.pids[index] = proc.pid
            _wait_ready(addresses[index], child, proc, startup_timeout)

    def leader(self, topic: str, partition: int = 0) -> int:
        """The node id of the broker leading ``topic``'s ``partition`` now."""
        md = self.broker.admin().list_topics(topic, timeout=10).topics[topic]
        return md.partitions[partition].leader


def start_kafka(
    workdir: Path | None = None,
    *,
    tie_to_parent: bool = True,
    startup_timeout: float = 90.0,
    address: str = "127.0.0.1",
    settings: Mapping[str, str] | None = None,
    brokers: int = 1,
) -> KafkaProcess:
    """Format and start a KRaft broker in workdir (a new temp dir by default); wait until ready.

    address: where clients connect (listener and advertised listener): loopback, or the node
    tier's bridge address, which its pods reach. The controller stays on loopback.
    settings: broker settings over TEST_SETTINGS (a test of a broker configured otherwise).
    brokers: more than one makes a cluster: that many brokers (node ids 1..n, the first in
    workdir, the others in workdir/broker-<id>) and a KRaft controller in a process of its
    own (workdir/controller), which crash() leaves running, as a production cluster's
    controllers outlive a broker. Topics are then as replicated as ``settings`` say
    (``default.replication.factor``; create_topic takes the broker's default). One broker is
    one process, broker and controller at once.
    """
    java = _java()
    libs = run_hack_script("fetch-kafka.sh")
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="streamherd-kafka-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cluster_mode = brokers > 1
    ports, cport = [free_port() for _ in range(brokers)], free_port()
    controller_id = str(brokers + 1) if cluster_mode else "1"
    common = {
        "controller.quorum.voters": f"{controller_id}@127.0.0.1:{cport}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
    }
    roles: list[tuple[str, Path, dict[str, str]]] = []
    for index, port in enumerate(ports):
        where = workdir if index == 0 else workdir / f"broker-{index + 1}"
        roles.append((
            "broker",
            where,
            {
                "process.roles": "broker" if cluster_mode else "broker,controller",
                "node.id": str(index + 1),
                "listeners": f"PLAINTEXT://{address}:{port}"
                + ("" if cluster_mode else f",CONTROLLER://127.0.0.1:{cport}"),
                "advertised.listeners": f"PLAINTEXT://{address}:{port}",
                "inter.broker.listener.name": "PLAINTEXT",
                **common,
                "log.dirs": str(where / "data"),
                **TEST_SETTINGS,
                **(settings or {}),
            },
        ))  # fmt: skip
    if cluster_mode:
        roles.insert(0, (
            "controller",
            workdir / "controller",
            {
                "process.roles": "controller",
                "node.id": controller_id,
                "listeners": f"CONTROLLER://127.0.0.1:{cport}",
                **common,
                "log.dirs": str(workdir / "controller" / "data"),
            },
        ))  # fmt: skip
    jvm = [java, "-cp", f"{libs}/*"]
    env = {**os.environ, "KAFKA_HEAP_OPTS": ""}
    cluster = _cluster_id()
    launches: list[Callable[[], tuple[Child, subprocess.Popen[bytes]]]] = []
    logs: list[tuple[Path, Path]] = []
    for role, where, props in roles:
        where.mkdir(parents=True, exist_ok=True)
        launch, server_log, stdout_log = _prepared(role, where, props, jvm, env, cluster,
                                                   tie_to_parent)  # fmt: skip
        launches.append(launch)
        logs.append((server_log, stdout_log))
    controller_pids: list[int] = []
    if cluster_mode:
        child, proc = launches.pop(0)()
        logs.pop(0)
        controller_pids.append(proc.pid)
        try:
            wait_for(f"Kafka controller at 127.0.0.1:{cport} (logs in {workdir / 'controller'})",
                     lambda: port_open("127.0.0.1", cport),
                     startup_timeout, children=[(child, proc)], interval=0.5)  # fmt: skip
        except BaseException:
            stop_group(proc.pid)
            raise
    addresses = [f"{address}:{port}" for port in ports]
    started: list[tuple[Child, subprocess.Popen[bytes]]] = [launch() for launch in launches]
    broker = KafkaBroker(bootstrap=",".join(addresses), log_dir=workdir, log_files=logs[0])
    try:
        for at, (child, proc) in zip(addresses, started, strict=True):
            _wait_ready(at, child, proc, startup_timeout)
    except BaseException:
        for pid in [proc.pid for _, proc in started] + controller_pids:
            stop_group(pid)
        raise
    return KafkaProcess(broker=broker, workdir=workdir, pids=[proc.pid for _, proc in started],
                        launch=launches[0], launches=launches, addresses=addresses,
                        controller_pids=controller_pids)  # fmt: skip


def _prepared(
    role: str,
    where: Path,
    props: Mapping[str, str],
    jvm: list[str],
    env: Mapping[str, str],
    cluster: str,
    tie_to_parent: bool,
) -> tuple[Callable[[], tuple[Child, subprocess.Popen[bytes]]], Path, Path]:
    """One KRaft node's properties written and storage formatted: (its launcher, its server
    log, its stdout log)."""
    server_props = where / "server.properties"
    server_props.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    server_log = where / "server.log"
    log4j = where / "log4j2.properties"
    _log4j2_config(log4j, server_log)
    jvm = [jvm[0], f"-Dlog4j2.configurationFile={log4j}", *jvm[1:]]
    fmt_log = where / "format.log"
    _child, proc = spawn(
        f"kafka-storage-format-{role}",
        [*jvm, "-Xmx256m", "kafka.tools.StorageTool", "format", "-t", cluster,
         "-c", str(server_props)],
        fmt_log,
        env=dict(env),
    )  # fmt: skip
    if proc.wait(timeout=120) != 0:
        raise InfraError(f"kafka storage format failed; log {fmt_log}:\n{tail(fmt_log)}")
    stdout_log = where / "stdout.log"

    def launch() -> tuple[Child, subprocess.Popen[bytes]]:
        return spawn(
            "kafka" if role == "broker" else "kafka-controller",
            [
                *jvm,
                f"-Xms{HEAP}",
                f"-Xmx{HEAP}",
                "-XX:+UseG1GC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
                "kafka.Kafka",
                str(server_props),
            ],
            stdout_log,
            env=dict(env),
            tie_to_parent=tie_to_parent,
        )

    return launch, server_log, stdout_log


def _wait_ready(
    bootstrap: str, child: Child, proc: subprocess.Popen[bytes], timeout: float
) -> None:
    """Wait until the broker just launched answers; stop it if it does not."""
    try:
        wait_for(
            f"Kafka broker at {bootstrap} (logs in {child.log.parent})",
            lambda: answers(bootstrap, timeout=1.0),
            timeout,
            children=[(child, proc)],
            interval=0.5,
        )
    except BaseException:
        stop_group(proc.pid)
        raise


def reuse_from_env() -> KafkaBroker | None:
    """The broker named by STREAMHERD_TEST_KAFKA, if set; fails when it does not answer."""
    bootstrap = os.environ.get(ENV_REUSE)
    if not bootstrap:
        return None
    if not answers(bootstrap, timeout=10.0):
        raise InfraError(f"{ENV_REUSE}={bootstrap} is set but no Kafka broker answers there")
    return KafkaBroker(bootstrap=bootstrap)


@contextlib.contextmanager
def kafka_broker() -> Iterator[KafkaBroker]:
    """A broker for the duration of the block: reused from the env, or started and stopped."""
    reused = reuse_from_env()
    if reused is not None:
        yield reused
        return
    proc = start_kafka()
    try:
        yield proc.broker
    finally:
        proc.stop()


# --- developer CLI (`make kafka-up` / `make kafka-down`) -----------------------------------


def _dev_start(workdir: Path) -> tuple[Launched, str]:
    proc = start_kafka(workdir, tie_to_parent=False)
    return proc, proc.broker.bootstrap


DEV_SERVICE = DevService(
    what="Kafka broker",
    make="kafka",
    state_dir="kafka",
    env_var=ENV_REUSE,
    key="bootstrap",
    logs="server.log",
    start=_dev_start,
    answers=answers,
)


def main(argv: list[str] | None = None) -> int:
    return run_dev_cli(DEV_SERVICE, "python -m tests.infra.kafka", __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
