"""Right results whatever the input keying: a repartitioned pipeline on the real broker.

The input topic is keyed (and so partitioned) by user; the window counts per page. Without
a repartition each source partition would hold a part of every page and emit one partial
row per partition. With it, every (page, window) must come out with the reference value,
computed here without the engine, with workers joining, leaving and SIGKILLed on the way,
and a partition that goes quiet must still have its windows emitted.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamherd.workers.rekeying import HOP_FORMAT, decode_message
from streamherd.workers.repartitioning import read_mark
from tests.infra.kafka import KafkaBroker, Record
from tests.infra.userfunctions import fan_clicks
from tests.integration.engine.enginekit import (
    BASE_TS,
    WINDOW_MS,
    Worker,
    iso,
    pipeline_config,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]

PAGES = 13
PARTITIONS = 4


def page_clicks(start: int, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Clicks keyed by user (the topic's key), each on a page unrelated to the user."""
    for i in range(start, start + count):
        user = f"user-{(i * 7919) % 97}"
        page = f"/p{(i * 104729) % PAGES}"
        yield (
            user,
            {"id": i, "user": user, "page": page, "bytes": (i * 31) % 997, "ts": BASE_TS + i * 3},
        )


def page_reference(records: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"clicks": 0, "bytes": 0})
    for _user, rec in records:
        start = rec["ts"] - rec["ts"] % WINDOW_MS
        row = out[f"{rec['page']}|{iso(start)}"]
        row["clicks"] += 1
        row["bytes"] += rec["bytes"]
    return dict(out)


def repartitioned_config(
    broker: KafkaBroker, src: str, sink: str, dlq: str, checkpoints: Path, **extra: Any
) -> dict[str, Any]:
    config = pipeline_config(
        broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=checkpoints,
        batchSize=500,
    )
    config["processor"]["steps"][-1]["window"]["keyBy"] = "page"
    config["repartition"] = {"topic": f"{src}.repartition"}
    config["source"]["kafka"].update(extra)
    return config


def by_key(records: list[Record]) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    latest: dict[str, dict[str, Any]] = {}
    seen: Counter[str] = Counter()
    for rec in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert rec.key is not None
        key = rec.key.decode()
        if key.startswith("zz-flush|"):
            continue
        latest[key] = rec.json()
        seen[key] += 1
    return latest, seen


def sink_windows(
    broker: KafkaBroker,
    sink: str,
    expected: dict[str, dict[str, int]],
    what: str,
    timeout: float,
    workers: list[Worker],
) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    """Wait until the sink (read_committed) holds every expected window; the latest row per
    output key and how often each key was written."""
    got: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()

    def complete() -> bool:
        latest, seen = by_key(broker.consume_all(sink, timeout=60))
        got.clear()
        got.update(latest)
        counts.clear()
        counts.update(seen)
        return set(expected) <= set(got)

    wait_until(what, complete, timeout, workers)
    return got, counts


def check(got: dict[str, dict[str, Any]], expected: dict[str, dict[str, int]]) -> None:
    assert set(got) == set(expected), (
        f"missing {sorted(set(expected) - set(got))[:3]}, "
        f"extra {sorted(set(got) - set(expected))[:3]}"
    )
    wrong = [
        (k, got[k]["clicks"], v["clicks"], got[k]["bytes"], v["bytes"])
        for k, v in expected.items()
        if (got[k]["clicks"], got[k]["bytes"]) != (v["clicks"], v["bytes"])
    ]
    assert not wrong, f"{len(wrong)} of {len(expected)} windows wrong, e.g. {wrong[:3]}"


def topics(broker: KafkaBroker) -> tuple[str, str, str]:
    src = broker.create_topic(broker.unique_topic("clicks"), PARTITIONS)
    sink = broker.create_topic(broker.unique_topic("pages"), 3)
    dlq = broker.create_topic(broker.unique_topic("dlq"), 1)
    return src, sink, dlq


def flush(broker: KafkaBroker, src: str, last_ts: int) -> None:
    """A far-future record on every source partition: every earlier window can close.
    One producer for all of them (a producer's set-up costs about half a second)."""
    producer = broker.producer()
    for p in range(PARTITIONS):
        broker.produce(
            src,
            [
                (
                    "zz",
                    {
                        "id": -1,
                        "user": "zz",
                        "page": "zz-flush",
                        "bytes": 0,
                        "ts": last_ts + 86_400_000,
                    },
                )
            ],
            partition=p,
            producer=producer,
        )


def test_windows_by_another_key_than_the_topic_have_one_exact_result(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    records = list(page_clicks(0, 24_000))
    kafka_broker.produce(src, records[:12_000])  # keyed by user: every page on every partition
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    a = Worker.create(tmp_path, "a", config).start()
    b = Worker.create(tmp_path, "b", {**config, "runtime": {**config["runtime"], "metricsPort": 0}})
    try:
        wait_until("worker a ready", lambda: a.get("/readyz")[0] == 200, 60, [a])
        b.start()
        kafka_broker.produce(src, records[12_000:])
        flush(kafka_broker, src, records[-1][1]["ts"])
        expected = page_reference(records)
        got, counts = sink_windows(
            kafka_broker, sink, expected, "every (page, window) in the sink", 120, [a, b]
        )
        check(got, expected)
        twice = {k: n for k, n in counts.items() if n > 1}
        assert not twice, f"{len(twice)} windows emitted more than once, e.g. {list(twice)[:3]}"
        assert kafka_broker.consume_all(dlq) == []
    finally:
        a.stop()
        b.stop()


def test_every_record_a_user_function_fans_out_to_is_counted_once(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A user function turning each click into 0 to 3 on other pages: behind the hop every
    one is counted once (each carries its place among its source record's), with a worker
    SIGKILLed and restarted on the way (its upstream replays from its last checkpoint)."""
    src, sink, dlq = topics(kafka_broker)
    records = list(page_clicks(0, 12_000))
    kafka_broker.produce(src, records[:6_000])
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    config["processor"]["function"] = {
        "callable": "tests.infra.userfunctions:fan_clicks",
        "mode": "record",
    }
    a = Worker.create(tmp_path, "a", config).start()
    try:
        wait_until("worker a ready", lambda: a.get("/readyz")[0] == 200, 60, [a])
        wait_until(
            "worker a consuming",
            lambda: kafka_broker.consume_all(f"{src}.repartition", timeout=5) != [],
            60,
            [a],
        )
        a.kill()
        a.start()
        kafka_broker.produce(src, records[6_000:])
        flush(kafka_broker, src, records[-1][1]["ts"])
        fanned = [(user, out) for user, rec in records for out in fan_clicks(rec)]
        assert len(fanned) > len(records)  # fan-outs of 2 and 3 records, not only drops
        expected = page_reference(fanned)
        got, counts = sink_windows(
            kafka_broker, sink, expected, "every (page, window) in the sink", 120, [a]
        )
        check(got, expected)
        twice = {k: n for k, n in counts.items() if n > 1}
        assert not twice, f"{len(twice)} windows emitted more than once, e.g. {list(twice)[:3]}"
        assert kafka_broker.consume_all(dlq) == []
    finally:
        a.stop()


def test_sigkills_and_rebalances_change_no_result(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    records = list(page_clicks(0, 30_000))
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    config["checkpoint"]["intervalSeconds"] = 0.5
    workers = [
        Worker.create(
            tmp_path, name, {**config, "runtime": {**config["runtime"], "metricsPort": 0}}
        )
        for name in ("a", "b")
    ]
    rng = random.Random(14)
    try:
        for w in workers:
            w.start()
        chunks = [records[i : i + 2_000] for i in range(0, len(records), 2_000)]
        kills = 0
        for i, chunk in enumerate(chunks):
            kafka_broker.produce(src, chunk)
            if i % 2 == 1 and kills < 6:
                victim = rng.choice(workers)
                time.sleep(rng.uniform(0.1, 1.5))  # a random moment: the test
                victim.kill()
                kills += 1
                victim.start()
        flush(kafka_broker, src, records[-1][1]["ts"])
        expected = page_reference(records)
        got, _counts = sink_windows(
            kafka_broker, sink, expected, "every (page, window) in the sink", 180, workers
        )
        dead = kafka_broker.consume_all(dlq)
        assert dead == [], f"{len(dead)} dead letters, e.g. {dead[0].headers}"
        check(got, expected)
        assert kafka_broker.consume_all(dlq) == []
    finally:
        for w in workers:
            w.stop()


def test_a_quiet_unpartitioned_window_closes_after_idle_timeout(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    records = list(page_clicks(0, 300))
    config = repartitioned_config(
        kafka_broker, src, sink, dlq, tmp_path / "ck", idleTimeoutSeconds=2.0
    )
    del config["repartition"]  # one partition holds every record: no re-keying needed
    w = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until("worker ready", lambda: w.get("/readyz")[0] == 200, 60, [w])
        kafka_broker.produce(src, records, partition=2)
        expected = page_reference(records)
        got, _counts = sink_windows(
            kafka_broker, sink, expected, "the quiet partition's windows", 30, [w]
        )
        check(got, expected)
        # A record for a window that idleness closed is late, never a second result.
        kafka_broker.produce(src, records[:1], partition=2)
        wait_until(
            "the late record dead-lettered",
            lambda: len(kafka_broker.consume_all(dlq)) == 1,
            30,
            [w],
        )
        _, seen = by_key(kafka_broker.consume_all(sink, timeout=30))
        assert max(seen.values()) == 1
    finally:
        w.stop()


def test_a_quiet_partition_closes_its_windows_after_idle_timeout(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    # Only partition 0 gets records, and far fewer than a window: nothing would ever close
    # them without idleness (the other partitions never say anything at all).
    records = list(page_clicks(0, 300))
    config = repartitioned_config(
        kafka_broker, src, sink, dlq, tmp_path / "ck", idleTimeoutSeconds=2.0
    )
    w = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until("worker ready", lambda: w.get("/readyz")[0] == 200, 60, [w])
        kafka_broker.produce(src, records, partition=0)
        sent = time.monotonic()
        expected = page_reference(records)
        got, _counts = sink_windows(
            kafka_broker, sink, expected, "the quiet partition's windows", 30, [w]
        )
        print(f"windows of the quiet partition out {time.monotonic() - sent:.1f}s after")
        check(got, expected)
        assert "partition-idle" in w.log_path.read_text()
    finally:
        w.stop()


#: The idle timeout of the test below: long beside the moment between two batches it sends.
IDLE_SECONDS = 6.0


def test_records_arriving_after_every_partition_went_quiet_are_not_late(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Every source partition has gone quiet; then one window's records arrive on source
    partition 0 in two batches, then on partition 1. Partition 0 is not quiet once its
    records come, so the window closes only when all are quiet again: once, with every
    record, none late. Before, the progress marker sent with the first batch still said
    "idle": every downstream saw all upstreams quiet and closed everything, the window came
    out with the first 50 records and the 100 after it were dead-lettered as late (a probe
    on the broker: 3 runs in 3; a repartitioned pipeline after any quiet spell)."""
    src, sink, dlq = topics(kafka_broker)
    # Partition 0 must not go quiet between its batches, nor before partition 1's is read:
    # with 2 s, a second of a loaded machine's produce and fetch on top of the pause between
    # batches was enough (the window came out with the first 50 records).
    config = repartitioned_config(
        kafka_broker, src, sink, dlq, tmp_path / "ck", idleTimeoutSeconds=IDLE_SECONDS
    )
    w = Worker.create(tmp_path, "w", config).start()

    def batch(first: int) -> list[tuple[str, dict[str, Any]]]:
        return [
            (f"u{i}", {"id": i, "user": f"u{i}", "page": "/p", "bytes": i, "ts": BASE_TS + i})
            for i in range(first, first + 50)
        ]

    try:
        wait_until("worker ready", lambda: w.get("/readyz")[0] == 200, 60, [w])
        wait_until(
            "every source partition quiet",
            lambda: w.log_path.read_text().count("event=partition-idle") >= PARTITIONS,
            60,
            [w],
        )
        sent: list[tuple[str, dict[str, Any]]] = []

        def all_read() -> bool:
            return w.value("streamherd_records_in_total") >= len(sent)

        for partition, first in ((0, 0), (0, 50), (1, 100)):
            records = batch(first)
            kafka_broker.produce(src, records, partition=partition)
            sent += records
            # Read before the next is sent (each batch its own marker), long within
            # idleTimeout: partition 0 has not gone quiet again.
            wait_until("the batch read", all_read, 60, [w])
        expected = page_reference(sent)
        assert len(expected) == 1
        got, _counts = sink_windows(kafka_broker, sink, expected, "the window", 60, [w])
        check(got, expected)
        assert kafka_broker.consume_all(dlq, timeout=5) == []
    finally:
        w.stop()


def rekeyed(broker: KafkaBroker, topic: str) -> set[tuple[int, int]]:
    """The (source partition, source offset) of every re-keyed record in the repartition
    topic (format 3: every entry of a message; progress markers left out)."""
    out: set[tuple[int, int]] = set()
    for rec in broker.consume_all(topic, timeout=60):
        if rec.value and rec.value[0] == HOP_FORMAT:
            _, _, partition, entries = decode_message(rec.value)
            out.update((partition, entry[0]) for entry in entries)
            continue
        mark = read_mark(rec.headers)
        if not mark.marker:
            out.add((mark.upstream[1], mark.offset))
    return out


def test_a_new_repartition_partition_is_read_from_its_beginning_with_start_from_latest(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """`startFrom: latest` places the source partitions; the repartition topic holds only
    what the pipeline's upstreams wrote, so a repartition partition with nothing committed
    starts at its beginning. Here the first worker re-keys every record and is SIGKILLed
    before its first checkpoint: the source partitions have only their start pinned
    (Engine._pin_latest: the log end at the assignment, committed), the repartition
    partitions nothing; the successor re-keys the source records again from the pins, and
    every re-keyed record must be counted, each once (at its log end they were all skipped;
    the second copies are dropped by their source offsets)."""
    src, sink, dlq = topics(kafka_broker)
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck", startFrom="latest")
    config["checkpoint"]["intervalSeconds"] = 3600  # no checkpoint before the kill
    group = config["source"]["kafka"]["consumerGroup"]
    topic = config["repartition"]["topic"]
    first = Worker.create(tmp_path, "first", config).start()
    second: Worker | None = None
    try:
        wait_until("the first worker ready", lambda: first.get("/readyz")[0] == 200, 90, [first])
        # `latest` is resolved after the assignment: a record produced before that is
        # skipped, as it should be. One record per source partition, again until each
        # comes out re-keyed, shows every source partition reading (and each counts).
        canaries = page_clicks(100_000, 10_000)
        last_canary = 0.0

        def every_partition_reading() -> bool:
            nonlocal last_canary
            reading = {p for p, _ in rekeyed(kafka_broker, topic)}
            if len(reading) == PARTITIONS:
                return True
            if time.monotonic() - last_canary > 5:
                for p in set(range(PARTITIONS)) - reading:
                    kafka_broker.produce(src, [next(canaries)], partition=p)
                last_canary = time.monotonic()
            return False

        wait_until("every source partition reading", every_partition_reading, 120, [first])
        records = list(page_clicks(0, 6_000))
        kafka_broker.produce(src, records)
        ends = kafka_broker.end_offsets(src)

        def all_rekeyed() -> bool:
            seen = rekeyed(kafka_broker, topic)
            return all((p, end - 1) in seen for p, end in ends.items())

        wait_until("every record re-keyed", all_rekeyed, 120, [first])
        first.kill()
        pins = kafka_broker.committed(group, src)  # the empty topic's log end: 0
        assert pins == dict.fromkeys(range(PARTITIONS), 0), f"{src} committed {pins}"
        offsets = kafka_broker.committed(group, topic)  # nothing (-1001): no checkpoint
        assert all(o < 0 for o in offsets.values()), f"{topic} committed {offsets}"
        taken = rekeyed(kafka_broker, topic)
        counted = [
            (r.key.decode() if r.key else "", r.json())
            for r in kafka_broker.consume_all(src, timeout=60)
            if (r.partition, r.offset) in taken
        ]
        assert len(counted) >= len(records)
        second = Worker.create(tmp_path, "second", {**config, "runtime": {
            **config["runtime"], "metricsPort": 0}}).start()  # fmt: skip
        wait_until("the second worker ready", lambda: second.get("/readyz")[0] == 200, 90,
                   [second])  # fmt: skip
        expected = page_reference(counted)
        flushed_at = 0.0

        def results() -> bool:
            nonlocal flushed_at
            latest, _ = by_key(kafka_broker.consume_all(sink, timeout=60))
            if set(expected) <= set(latest):
                return True
            if time.monotonic() - flushed_at > 10:  # a flush before `latest` resolved is
                flush(kafka_broker, src, BASE_TS + 100_000_000)  # skipped: send another
                flushed_at = time.monotonic()
            return False

        wait_until("every (page, window) in the sink", results, 180, [second])
        got, counts = by_key(kafka_broker.consume_all(sink, timeout=60))
        check(got, expected)
        twice = {k: n for k, n in counts.items() if n > 1}
        assert not twice, f"{len(twice)} windows emitted more than once, e.g. {list(twice)[:3]}"
        assert kafka_broker.consume_all(dlq) == []
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_values_json_cannot_hold_cross_the_repartition_topic_exactly(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """NaN, infinities and integers beyond 64 bits, computed by a map step upstream, reach the
    window downstream as they were (the streamherd.exact header): a window with a NaN has a
    NaN max, one with an infinity an infinite one (both written null, JSON has neither), and
    a sum of integers beyond 64 bits is that exact integer. The previous encoding turned NaN
    and infinities into null (skipped by max: a finite result) and those integers into
    floats."""
    src, sink, dlq = topics(kafka_broker)
    specials = {"/p0": ["1.5", "2.25"], "/p1": ["1.5", "inf"], "/p2": ["nan", "2.25"]}
    records: list[tuple[str, dict[str, Any]]] = []
    for i in range(60):
        page = f"/p{i % 3}"
        s = specials[page][(i // 3) % 2]
        user = f"user-{i % 7}"
        records.append((user, {"user": user, "page": page, "s": s, "x": i, "ts": BASE_TS + i}))
    kafka_broker.produce(src, records)
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    config["processor"]["steps"].insert(
        0, {"map": {"set": {"v": "float(s)", "big": "int(x) * int(1e30)"}}}
    )
    config["processor"]["steps"][-1]["window"]["aggregates"] += [
        {"name": "hi", "function": "max", "expression": "v"},
        {"name": "big", "function": "sum", "expression": "big"},
    ]
    worker = Worker.create(tmp_path, "a", config).start()
    try:
        flush(kafka_broker, src, records[-1][1]["ts"])
        window = iso(BASE_TS - BASE_TS % WINDOW_MS)
        expected: dict[str, dict[str, int]] = {f"/p{p}|{window}": {} for p in range(3)}
        got, counts = sink_windows(
            kafka_broker, sink, expected, "the three pages' windows", 120, [worker]
        )
        # The stdlib reads integers of any size exactly (orjson reads them as floats).
        exact = {
            r.key.decode(): json.loads(r.value)
            for r in kafka_broker.consume_all(sink)
            if r.key is not None and r.value is not None
        }
    finally:
        worker.stop()
    for p in range(3):
        row = exact[f"/p{p}|{window}"]
        xs = [r["x"] for _, r in records if r["page"] == f"/p{p}"]
        assert row["clicks"] == 20
        assert row["big"] == sum(xs) * int(1e30)  # exact, an integer beyond 64 bits
        assert type(row["big"]) is int
    assert got[f"/p0|{window}"]["hi"] == 2.25
    assert got[f"/p1|{window}"]["hi"] is None  # inf, written as null
    assert got[f"/p2|{window}"]["hi"] is None  # NaN, written as null
    assert counts[f"/p0|{window}"] == 1
    assert kafka_broker.consume_all(dlq) == []


def test_a_source_topic_removed_by_an_edit_holds_no_window_open(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Two source topics; an edit removes the one that went quiet first. Its partitions'
    last event time, kept in the downstream clock, used to hold every window of the
    pipeline open for good: nothing of that topic would ever come to move it."""
    src, sink, dlq = topics(kafka_broker)
    old = kafka_broker.create_topic(kafka_broker.unique_topic("clicks-old"), 2)
    records = list(page_clicks(0, 12_000))
    quiet = list(page_clicks(20_000, 1_000))  # event times of records 20000.. (ahead)
    quiet = [(u, {**r, "ts": BASE_TS + i * 3}) for i, (u, r) in enumerate(quiet)]
    kafka_broker.produce(src, records[:6_000])
    kafka_broker.produce(old, quiet)
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    config["source"]["kafka"]["topics"] = [src, old]
    group = config["source"]["kafka"]["consumerGroup"]
    first = Worker.create(tmp_path, "first", config).start()
    try:

        def consumed() -> bool:
            return all(
                kafka_broker.committed(group, t) == kafka_broker.end_offsets(t) for t in (src, old)
            )

        wait_until("both source topics consumed", consumed, 90, [first])
        time.sleep(3)  # the repartition topic's records reach the windows
    finally:
        first.stop()  # SIGTERM: a last checkpoint, the clock's upstreams in it
    config["source"]["kafka"]["topics"] = [src]  # the edit
    second = Worker.create(tmp_path, "second", config).start()
    try:
        kafka_broker.produce(src, records[6_000:])
        flush(kafka_broker, src, records[-1][1]["ts"])
        expected = page_reference(records + quiet)
        got, _ = sink_windows(
            kafka_broker, sink, expected, "every window closed without the old topic", 90,
            [second],
        )  # fmt: skip
        check(got, expected)
    finally:
        second.stop()
