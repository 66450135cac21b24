"""Records the dead-letter topic cannot take whole, against the real broker.

1. The broker's default limits (``max.message.bytes`` 1048588) and the worker's producer
   default (``message.max.bytes`` 1000000): a failing record of about 1,040,000 bytes can
   sit in the source topic but cannot be dead-lettered as it is. It is dead-lettered
   truncated, with headers giving its original size, the reason and its source; the
   partition advances (the group's committed offset reaches the end) and the records after
   it are processed.
2. A dead-letter topic whose own ``max.message.bytes`` is small: the broker refuses the dead
   letter after the producer accepted it; it is sent again shorter. A sink topic with a
   small limit refuses a result: the result is dead-lettered with reason ``sink`` and the
   coordinates of its record.

Both: the worker never exits, and read = contributing + filtered + dead-lettered in its
metrics. Where the machine lets the test create a cgroup v1 memory cgroup, the first
worker runs in one limited to 512 MiB (a pod's limit) and its peak usage is checked.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tests.infra.kafka import KafkaBroker, Record
from tests.integration.engine.enginekit import (
    BASE_TS,
    Worker,
    clicks,
    flush_markers,
    latest_by_key,
    pipeline_config,
    reference,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

BIG = 1_040_000  # under the broker's default 1048588, over the producer's default 1000000


def produce_raw(broker: KafkaBroker, topic: str, values: list[bytes]) -> None:
    """Produce exact bytes with a producer allowed up to the broker's default limit."""
    producer = Producer(
        broker.client_config(**{"message.max.bytes": 1_048_576, "compression.type": "none"})
    )
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            errors.append(error)

    for value in values:
        producer.produce(topic, key=b"big", value=value, on_delivery=delivered)
        producer.flush(30)
    assert not errors, errors


def incompressible(n: int) -> bytes:
    rng = random.Random(n)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return bytes(rng.choice(alphabet) for _ in range(n))


MEMORY_LIMIT = 512 * 2**20
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


def memory_cgroup(name: str) -> Path | None:
    """A cgroup v1 memory cgroup limited to 512 MiB, or None where this machine has none
    we may create (then the worker runs without a limit; the peak is not checked)."""
    path = CGROUP_MEMORY / name
    try:
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(MEMORY_LIMIT))
    except OSError:
        return None
    return path


def committed_to(broker: KafkaBroker, group: str, topic: str, end: int) -> bool:
    """The group's committed offset of partition 0 is ``end`` (a busy coordinator: not yet)."""
    try:
        return broker.committed(group, topic) == {0: end}
    except KafkaException:
        return False


def headers_of(record: Record) -> dict[str, bytes | None]:
    return dict(record.headers)


def accounted(worker: Worker) -> tuple[float, float]:
    """(records read, contributing + filtered + dead-lettered) from the worker's metrics."""
    metrics = worker.metrics()
    read = sum(v for k, v in metrics.items() if k.startswith("streamherd_records_in_total"))
    rest = sum(
        v
        for k, v in metrics.items()
        if k.startswith(
            (
                "streamherd_records_contributing_total",
                "streamherd_records_filtered_total",
                "streamherd_records_dead_lettered_total",
            )
        )
    )
    return read, rest


def assert_every_good_window(
    broker: KafkaBroker, sink: str, good: list[Any], worker: Worker, timeout: float
) -> None:
    """Every window of the ``good`` records reaches the sink, each with its exact count and sum
    (the records around a refused one were processed)."""
    expected = reference(good)

    def complete() -> bool:
        return set(expected) <= set(latest_by_key(broker.consume_all(sink)))

    wait_until("every window in the sink", complete, timeout, [worker])
    got = latest_by_key(broker.consume_all(sink))
    assert {k: (v["clicks"], v["bytes"]) for k, v in got.items() if k in expected} == {
        k: (v["clicks"], v["bytes"]) for k, v in expected.items()
    }


def test_a_record_over_the_producer_limit_is_dead_lettered_truncated(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 1)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1)
    group = f"g-{src}"
    before = list(clicks(0, 300))
    after = list(clicks(300, 300))
    kafka_broker.produce(src, before)
    # A valid record whose sum fails (a string), and a value that is no JSON at all.
    failing = (
        b'{"user": "big", "ts": %d, "bytes": "' % (BASE_TS + 700) + incompressible(BIG) + b'"}'
    )
    malformed = b"{" + incompressible(BIG)
    produce_raw(kafka_broker, src, [failing, malformed])
    kafka_broker.produce(src, after)
    flush_markers(kafka_broker, src, 1, after[-1][1]["ts"])
    end = kafka_broker.end_offsets(src)[0]

    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=group,
        checkpoints=tmp_path / "ck",
    )
    worker = Worker.create(tmp_path, "w", config)
    group_dir = memory_cgroup(f"streamherd-oversize-{os.getpid()}")
    if group_dir is not None:  # a pod's limit: 512 MiB of memory, the kernel enforces it
        worker.prefix = ("sh", "-c", f'echo $$ > {group_dir}/cgroup.procs && exec "$@"', "sh")
    worker.start()
    try:
        wait_until(
            "the partition to advance past the oversized records",
            lambda: committed_to(kafka_broker, group, src, end),
            90,
            [worker],
        )
        letters = sorted(  # a batch's decode failures come before its expression failures
            kafka_broker.consume_all(dlq, min_records=2, timeout=60),
            key=lambda r: int(headers_of(r)["streamherd.source.offset"] or b"0"),
        )
        assert len(letters) == 2
        for letter, original, reason, offset in (
            (letters[0], failing, b"expression", 300),
            (letters[1], malformed, b"decode", 301),
        ):
            named = headers_of(letter)
            assert named["streamherd.truncated"] == b"true"
            assert named["streamherd.original.size"] == str(len(original)).encode()
            assert named["streamherd.original.key.size"] == b"3"
            assert b"message.max.bytes" in (named["streamherd.truncated.reason"] or b"")
            assert named["streamherd.error.reason"] == reason
            assert named["streamherd.source.topic"] == src.encode()
            assert named["streamherd.source.partition"] == b"0"
            assert named["streamherd.source.offset"] == str(offset).encode()
            assert letter.key == b"big"
            assert letter.value is not None and 900_000 < len(letter.value) < len(original)
            assert original.startswith(letter.value)
        # The records after them were processed: every window of the good records is there.
        assert_every_good_window(kafka_broker, sink, before + after, worker, 60)
        wait_until("the counters", lambda: accounted(worker)[0] == end, 30, [worker])
        read, rest = accounted(worker)
        assert read == rest == end
        metrics = worker.metrics()
        assert metrics['streamherd_dead_letters_truncated_total{pipeline="clicks"}'] == 2
        assert worker.alive()
    finally:
        worker.stop()
        if group_dir is not None:
            peak = int((group_dir / "memory.max_usage_in_bytes").read_text())
            oom = (group_dir / "memory.oom_control").read_text()
            group_dir.rmdir()
    if group_dir is not None:
        print(f"worker peak memory under the 512 MiB cgroup: {peak / 2**20:.1f} MiB")
        assert "oom_kill 0" in oom or "oom_kill" not in oom
        assert peak < MEMORY_LIMIT


def test_a_topic_that_refuses_gets_a_shorter_dead_letter_and_refused_results_are_dead_lettered(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    small = {"max.message.bytes": "4096"}
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 1, config=small)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1, config=small)
    group = f"g-{src}"
    # A stateless pipeline: records with ok=true are written to the sink as they are.
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=group,
        checkpoints=tmp_path / "ck",
    )
    config["processor"] = {"steps": [{"filter": "ok"}]}
    config["sink"]["kafka"]["key"] = "name"
    text = incompressible(50_000)
    kafka_broker.produce(
        src,
        [
            orjson.dumps({"name": "small", "ok": True}),  # 0: to the sink
            b'{"name": "large-result", "ok": true, "text": "' + text + b'"}',  # 1: refused
            b'{"name": "malformed", "text": "' + text + b'", "x": }',  # 2: decode failure
            orjson.dumps({"name": "dropped", "ok": False}),  # 3: filtered
            orjson.dumps({"name": "small-2", "ok": True}),  # 4: to the sink
        ],
    )
    end = kafka_broker.end_offsets(src)[0]
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until(
            "the partition to advance",
            lambda: committed_to(kafka_broker, group, src, end),
            90,
            [worker],
        )
        out = kafka_broker.consume_all(sink)
        assert sorted(r.key or b"" for r in out) == [b"small", b"small-2"]
        letters = sorted(
            kafka_broker.consume_all(dlq, min_records=2, timeout=60),
            key=lambda r: int(headers_of(r)["streamherd.source.offset"] or b"0"),
        )
        assert len(letters) == 2
        result, failure = (headers_of(letter) for letter in letters)
        assert result["streamherd.error.reason"] == b"sink"
        assert result["streamherd.source.offset"] == b"1"
        assert result["streamherd.truncated"] == b"true"
        assert b"too large" in (result["streamherd.truncated.reason"] or b"").lower()
        assert failure["streamherd.error.reason"] == b"decode"
        assert failure["streamherd.source.offset"] == b"2"
        assert failure["streamherd.truncated"] == b"true"
        for letter, named in zip(letters, (result, failure), strict=True):
            assert int(named["streamherd.original.size"] or b"0") > 50_000
            assert letter.value is not None and len(letter.value) <= 1024
        wait_until("the counters", lambda: accounted(worker)[0] == end, 30, [worker])
        read, rest = accounted(worker)
        assert read == rest == end
        metrics = worker.metrics()
        assert metrics['streamherd_results_dead_lettered_total{pipeline="clicks"}'] == 1
        assert worker.alive()
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("layout", "delivery"),
    [
        ("changelog", "atLeastOnce"),
        ("changelog", "exactlyOnce"),
        ("repartition", "atLeastOnce"),
    ],
)
def test_a_record_whose_state_no_kafka_record_can_hold_is_dead_lettered(
    kafka_broker: KafkaBroker, tmp_path: Path, layout: str, delivery: str
) -> None:
    """One record of about 1,040,000 bytes (the broker's default limit lets it in) on the
    paths that write a record's data to Kafka again: as a window key in the changelog
    state, or as the source value a repartition entry carries (its key small, the bulk in a
    field no step reads). Before, the state's producer refused it at every checkpoint (or
    hop), the worker exited, and every restart met the same record: the partition stopped
    for good (a probe of this session). Now the record is refused by its own values before
    it is folded (limits.MAX_KEY_BYTES, MAX_HOP_ENTRY_BYTES): dead-lettered with reason
    ``limit``, and the partition goes on."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("out"), 1)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1)
    group = f"g-{src}"
    before, after = list(clicks(0, 300)), list(clicks(300, 300))
    kafka_broker.produce(src, before)
    bulk = incompressible(BIG - 100)
    if layout == "changelog":  # the key is the bulk
        hostile = b'{"user": "%s", "ts": %d, "bytes": 1}' % (bulk, BASE_TS + 700)
    else:  # a small key, the bulk unread
        hostile = b'{"user": "u1", "ts": %d, "bytes": 1, "blob": "%s"}' % (BASE_TS + 700, bulk)
    produce_raw(kafka_broker, src, [hostile])
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=dlq, group=group, checkpoints=tmp_path / "ck"
    )
    config["delivery"] = delivery
    if layout == "changelog":
        config["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
    else:
        config["processor"]["steps"][-1]["window"]["repartition"] = "always"
        config["repartition"] = {"topic": f"{src}.repartition"}
    worker = Worker.create(tmp_path, "w", config)
    worker.env = {"STREAMHERD_WORKER_ID": "w"}
    worker.start()
    try:
        # Its window still open (the later records are not there yet): a checkpoint comes.
        wait_until(
            "the partition to advance past the record",
            lambda: committed_to(kafka_broker, group, src, 301),
            120,
            [worker],
        )
        kafka_broker.produce(src, after)
        flush_markers(kafka_broker, src, 1, after[-1][1]["ts"])
        end = kafka_broker.end_offsets(src)[0]
        wait_until(
            "the partition to advance to the end",
            lambda: committed_to(kafka_broker, group, src, end),
            120,
            [worker],
        )
        letters = kafka_broker.consume_all(dlq, min_records=1, timeout=60)
        assert len(letters) == 1
        named = headers_of(letters[0])
        assert named["streamherd.error.reason"] == b"limit"
        assert named["streamherd.error"] == b"LimitError"
        assert named["streamherd.source.offset"] == b"300"
        assert_every_good_window(kafka_broker, sink, before + after, worker, 90)
        assert worker.alive()
        assert "event=failed" not in worker.log_path.read_text()
    finally:
        worker.stop()


@pytest.mark.parametrize(
    "case",
    ["result-over-sink-limit", "letter-over-dlq-limit", "small-sink", "headers-over-dlq-limit"],
)
def test_exactly_once_never_produces_what_its_topics_refuse(
    kafka_broker: KafkaBroker, tmp_path: Path, case: str
) -> None:
    """Exactly-once: one record the broker refuses makes the whole transaction abortable;
    the abort replays the same record, so before, every run of the worker ended the same
    way (``_STATE``, exit 1) and the partition never moved (a probe of this session). The
    worker now learns the sink and dead-letter topics' ``max.message.bytes`` at start and
    produces nothing they would refuse: a result over the sink's limit is dead-lettered
    (reason ``sink``), a dead letter over its topic's limit is cut to fit, and batches stay
    under the smaller limit (``small-sink``: no bad record at all, a sink topic of 2000
    bytes, which crash-looped too)."""
    limits = {
        "result-over-sink-limit": ("50000", None),
        "letter-over-dlq-limit": (None, "2000"),
        "small-sink": ("2000", None),
        "headers-over-dlq-limit": (None, "2000"),
    }[case]
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    sink = kafka_broker.create_topic(
        kafka_broker.unique_topic("out"),
        1,
        config={"max.message.bytes": limits[0]} if limits[0] else None,
    )
    dlq = kafka_broker.create_topic(
        kafka_broker.unique_topic("dlq"),
        1,
        config={"max.message.bytes": limits[1]} if limits[1] else None,
    )
    group = f"g-{src}"
    before, after = list(clicks(0, 300)), list(clicks(300, 300))
    kafka_broker.produce(src, before)
    junk = incompressible(60_000)
    if case == "result-over-sink-limit":  # its result's key alone is over the sink's limit
        produce_raw(
            kafka_broker, src, [b'{"user": "%s", "ts": %d, "bytes": 1}' % (junk, BASE_TS + 700)]
        )
    elif case == "letter-over-dlq-limit":
        produce_raw(kafka_broker, src, [b"{" + junk[:5000]])
    elif case == "headers-over-dlq-limit":  # its error message (a header) alone is over it
        kafka_broker.produce(src, [("k", {"id": 300, "say": "\u00e9" * 1000})])
    kafka_broker.produce(src, after)
    flush_markers(kafka_broker, src, 1, after[-1][1]["ts"])
    end = kafka_broker.end_offsets(src)[0]
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=dlq, group=group, checkpoints=tmp_path / "ck"
    )
    config["delivery"] = "exactlyOnce"
    if case == "headers-over-dlq-limit":
        config["processor"]["function"] = {
            "callable": "tests.unit.workers.userfuncs:complain",
            "mode": "record",
        }
    worker = Worker.create(tmp_path, "w", config)
    worker.env = {"STREAMHERD_WORKER_ID": "w"}
    worker.start()
    try:
        wait_until(
            "the partition to advance to the end",
            lambda: committed_to(kafka_broker, group, src, end),
            120,
            [worker],
        )
        assert_every_good_window(kafka_broker, sink, before + after, worker, 90)
        quiet = case in ("small-sink", "headers-over-dlq-limit")
        letters = kafka_broker.consume_all(dlq, min_records=0 if quiet else 1)
        if quiet:
            assert letters == []
            if case == "headers-over-dlq-limit":  # counted and logged, never produced
                assert "event=dead-letter-refused" in worker.log_path.read_text()
        else:
            assert len(letters) == 1
            named = headers_of(letters[0])
            if case == "result-over-sink-limit":  # the window's result, named by the record
                assert named["streamherd.error.reason"] == b"sink"  # that closed the window
                assert (letters[0].key or b"").startswith(junk)  # the output key: key@start
            else:
                assert named["streamherd.source.offset"] == b"300"
                assert named["streamherd.error.reason"] == b"decode"
                assert named["streamherd.truncated"] == b"true"
                assert b"dead-letter topic" in (named["streamherd.truncated.reason"] or b"")
        assert worker.alive()
        assert "event=transaction-failed" not in worker.log_path.read_text()
    finally:
        worker.stop()


@pytest.mark.parametrize("delivery", ["atLeastOnce", "exactlyOnce"])
def test_a_result_without_a_key_for_a_compacted_sink_is_dead_lettered(
    kafka_broker: KafkaBroker, tmp_path: Path, delivery: str
) -> None:
    """A compacted topic refuses a record without a key (INVALID_RECORD). The sink's key
    expression gives null for a result without the field: the broker's refusal failed the
    worker, which met the same result after every restart (a helper's finding). Now such a
    result is dead-lettered (reason sink) and the others reach the sink: at-least-once from
    the broker's refusal of it alone, exactly-once before it is produced (the sink topic's
    cleanup.policy learnt at start), since a refused record would fail the transaction."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("in"), 1)
    sink = kafka_broker.create_topic(
        kafka_broker.unique_topic("out"), 1, config={"cleanup.policy": "compact"}
    )
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("dlq"), 1)
    group = f"g-{src}"
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=dlq, group=group, checkpoints=tmp_path / "ck"
    )
    config["processor"] = {"steps": [{"filter": "ok"}]}
    config["sink"]["kafka"]["key"] = "name"
    config["delivery"] = delivery
    kafka_broker.produce(
        src,
        [
            orjson.dumps({"name": "first", "ok": True}),  # 0: to the sink
            orjson.dumps({"ok": True}),  # 1: no name, no key: refused by a compacted topic
            orjson.dumps({"name": "second", "ok": True}),  # 2: to the sink
        ],
    )
    end = kafka_broker.end_offsets(src)[0]
    worker = Worker.create(tmp_path, "w", config)
    worker.env = {"STREAMHERD_WORKER_ID": "w"}
    worker.start()
    try:
        wait_until(
            "the partition to advance",
            lambda: committed_to(kafka_broker, group, src, end),
            90,
            [worker],
        )
        out = kafka_broker.consume_all(sink, min_records=2, timeout=60)
        assert sorted(r.key or b"" for r in out) == [b"first", b"second"]
        [letter] = kafka_broker.consume_all(dlq, min_records=1, timeout=60)
        named = headers_of(letter)
        assert named["streamherd.error.reason"] == b"sink"
        assert named["streamherd.source.offset"] == b"1"
        assert worker.alive()
    finally:
        worker.stop()
