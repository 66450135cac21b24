"""The engine against the real Kafka broker: correctness at volume, poison records, SIGTERM,
and the exported lag (workers run as `streamherd-worker --config` subprocesses)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from streamherd.workers.checkpointing import CheckpointStore
from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    BASE_TS,
    Worker,
    assert_matches,
    clicks,
    flush_markers,
    iso,
    latest_by_key,
    pipeline_config,
    reference,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def topics(broker: KafkaBroker, partitions: int = 4) -> tuple[str, str, str]:
    src = broker.create_topic(broker.unique_topic("in"), partitions)
    sink = broker.create_topic(broker.unique_topic("out"), partitions)
    dlq = broker.create_topic(broker.unique_topic("dlq"), 1)
    return src, sink, dlq


def test_100k_records_over_4_partitions_equal_reference(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    records = list(clicks(0, 100_000))
    kafka_broker.produce(src, records)
    flush_markers(kafka_broker, src, 4, records[-1][1]["ts"])
    expected = reference(records)
    group = f"g-{src}"
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=dlq, group=group, checkpoints=tmp_path / "ck"
    )
    worker = Worker.create(tmp_path, "w1", config).start()
    try:
        out = kafka_broker.consume_all(sink, min_records=len(expected), timeout=180)
        got = latest_by_key(out)
        assert_matches(got, expected)
        # a clean run emits every window exactly once
        windows = [r for r in out if r.key is None or not r.key.startswith(b"zz-flush")]
        assert len(windows) == len(expected)
        first = out[0]
        assert first.json().keys() == {"key", "window_start", "window_end", "clicks", "bytes"}
        wait_until(
            "offsets committed to the end",
            lambda: kafka_broker.committed(group, src) == kafka_broker.end_offsets(src),
            60,
            [worker],
        )
        assert kafka_broker.consume_all(dlq) == []
        metrics = worker.metrics()
        assert (
            sum(v for k, v in metrics.items() if k.startswith("streamherd_records_in_total"))
            == 100_004
        )
        assert metrics['streamherd_records_out_total{pipeline="clicks"}'] >= len(expected)
    finally:
        worker.stop()


def test_poison_records_go_to_the_dead_letter_topic(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker, partitions=1)
    good = list(clicks(0, 10_000))  # event times up to BASE_TS + 20 s
    late_ts = BASE_TS + 1  # its window [0, 10 s) has closed by then
    kafka_broker.produce(src, good[:5000])
    kafka_broker.produce(
        src,
        [
            ("user-1", b"{not json"),
            ("user-1", {"id": -2, "user": "user-1", "bytes": "lots", "ts": BASE_TS + 10_001}),
            ("user-1", {"id": -3, "user": "user-1", "bytes": 5, "ts": BASE_TS + 10_002, "boom": 1}),
        ],
    )
    kafka_broker.produce(src, good[5000:])
    kafka_broker.produce(src, [("user-1", {"id": -4, "user": "user-1", "bytes": 1, "ts": late_ts})])
    flush_markers(kafka_broker, src, 1, good[-1][1]["ts"])
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        lateness="0s",
        function={"callable": "tests.unit.workers.userfuncs:tag", "mode": "record"},
    )
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        expected = reference(good)
        got = latest_by_key(kafka_broker.consume_all(sink, min_records=len(expected), timeout=90))
        assert_matches(got, expected)
        dead = kafka_broker.consume_all(dlq, min_records=4, timeout=30)
    finally:
        worker.stop()
    assert len(dead) == 4
    by_reason = {dict(d.headers)["streamherd.error.reason"]: d for d in dead}
    assert set(by_reason) == {b"decode", b"expression", b"function", b"late"}
    decode = dict(by_reason[b"decode"].headers)
    assert by_reason[b"decode"].value == b"{not json"  # the original bytes, untouched
    assert decode["streamherd.error"] == b"JSONDecodeError"
    assert decode["streamherd.source.topic"] == src.encode()
    assert decode["streamherd.source.partition"] == b"0"
    assert decode["streamherd.source.offset"] == b"5000"
    assert decode["streamherd.pipeline"] == b"test/clicks"
    assert decode["streamherd.error.message"]
    assert dict(by_reason[b"expression"].headers)["streamherd.error"] == b"TypeError"
    function = dict(by_reason[b"function"].headers)
    assert function["streamherd.error"] == b"RuntimeError"
    message = function["streamherd.error.message"]
    assert message is not None and b"boom" in message
    assert dict(by_reason[b"late"].headers)["streamherd.error"] == b"LateRecordError"
    assert dict(by_reason[b"late"].headers)["streamherd.source.offset"] == b"10003"


def test_fused_path_dead_letters_poison_with_the_same_headers(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """No user function: the engine runs the pipeline's fused batch function
    (workers/fusing.py); bad records still land in the dead-letter topic with the headers
    of the generic path and the good ones around them are counted exactly once. A string
    page where the window's min/max hold a number is no poison: numbers order below strings
    (one total order), so the min keeps the number and the max takes the string."""
    src, sink, dlq = topics(kafka_broker, partitions=1)
    good = list(clicks(0, 10_000))
    page_3 = {"id": -5, "user": "user-1", "bytes": 7, "ts": BASE_TS + 10_004, "page": 3}
    numbered = ("user-1", page_3)
    home = (
        "user-1",
        {"id": -6, "user": "user-1", "bytes": 50, "ts": BASE_TS + 10_005, "page": "home"},
    )
    kafka_broker.produce(src, good[:5000])
    kafka_broker.produce(
        src,
        [
            ("user-1", b"{not json"),  # offset 5000
            ("user-1", b"[1, 2]"),  # 5001: JSON, not an object
            ("user-1", {"id": -2, "user": "user-1", "bytes": "lots", "ts": BASE_TS + 10_001}),
            # An object cannot be a key (an array can: a composite key, decision 0040).
            ("user-1", {"id": -3, "user": {"x": 1}, "bytes": 1, "ts": BASE_TS + 10_002}),
            numbered,  # 5004: a good record, the first page of its window: a number
            home,  # 5005: a string page in the same window: counted, its bytes too
        ],
    )
    kafka_broker.produce(src, good[5000:])
    kafka_broker.produce(src, [("user-1", {"id": -4, "user": "user-1", "bytes": 1, "ts": BASE_TS})])
    flush_markers(kafka_broker, src, 1, good[-1][1]["ts"])
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        lateness="0s",
        steps=[{"filter": "bytes != null or user != null"}],
        extra_aggregates=[
            {"name": "first_page", "function": "min", "expression": "page"},
            {"name": "last_page", "function": "max", "expression": "page"},
        ],
    )
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        expected = reference([*good, numbered, home])
        got = latest_by_key(kafka_broker.consume_all(sink, min_records=len(expected), timeout=90))
        assert_matches(got, expected)
        dead = kafka_broker.consume_all(dlq, min_records=5, timeout=30)
        assert "batch=fused" in worker.log_tail(400)
    finally:
        worker.stop()
    headers = [dict(d.headers) for d in dead]
    assert [
        (
            h["streamherd.source.offset"],
            h["streamherd.error.reason"],
            h["streamherd.error"],
        )
        for h in headers
    ] == [
        (b"5000", b"decode", b"JSONDecodeError"),
        (b"5001", b"decode", b"ValueError"),
        (b"5002", b"expression", b"TypeError"),
        (b"5003", b"expression", b"WindowKeyError"),
        (b"10006", b"late", b"LateRecordError"),
    ]
    assert [d.value for d in dead[:2]] == [b"{not json", b"[1, 2]"]  # original bytes
    for h in headers:
        assert h["streamherd.source.topic"] == src.encode()
        assert h["streamherd.source.partition"] == b"0"
        assert h["streamherd.pipeline"] == b"test/clicks"
        assert h["streamherd.error.message"]
    assert headers[1]["streamherd.error.message"] == b"not a JSON object: list"
    message = headers[2]["streamherd.error.message"]
    assert message is not None and b"needs a number, got str" in message
    assert headers[3]["streamherd.error.message"] == (
        b"a key must be a string, number, boolean, null or an array of those, got object"
    )
    paged = f"user-1|{iso(BASE_TS + 10_000)}"
    assert (got[paged]["first_page"], got[paged]["last_page"]) == (3, "home")
    others = [r for k, r in got.items() if k != paged]
    assert others
    assert all(r["first_page"] is None and r["last_page"] is None for r in others)


def test_sigterm_checkpoints_commits_and_exits_within_grace(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    kafka_broker.produce(src, clicks(0, 60_000))
    group = f"g-{src}"
    grace = 10
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=group,
        checkpoints=tmp_path / "ck",
        shutdownGraceSeconds=grace,
        batchSize=500,
    )
    # A long interval: only the shutdown itself can have written the final checkpoint.
    config["checkpoint"]["intervalSeconds"] = 3600
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until(
            "the worker to be consuming",
            lambda: (
                sum(
                    v
                    for k, v in worker.metrics().items()
                    if k.startswith("streamherd_records_in_total")
                )
                > 0
            ),
            60,
            [worker],
        )
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(grace + 5)
        took = time.monotonic() - started
    finally:
        worker.stop()
    assert code == 0, worker.log_tail()
    assert took < grace, f"took {took:.1f}s"
    store = CheckpointStore(tmp_path / "ck")
    committed = kafka_broker.committed(group, src)
    checkpointed = {}
    for p in range(4):
        cp = store.load(src, p)
        if cp is not None:
            checkpointed[p] = cp.next_offset
    assert checkpointed, "no checkpoint written on SIGTERM"
    for p, offset in checkpointed.items():
        assert committed[p] == offset  # the commit matches the durable checkpoint
    assert "event=stopped" in worker.log_path.read_text()


def test_exported_lag_matches_the_brokers_view(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    src, sink, dlq = topics(kafka_broker)
    kafka_broker.produce(src, clicks(0, 40_000))
    group = f"g-{src}"
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=group,
        checkpoints=tmp_path / "ck",
        batchSize=200,
    )
    worker = Worker.create(tmp_path, "w", config).start()

    def broker_lag() -> dict[int, int]:
        end = kafka_broker.end_offsets(src)
        committed = kafka_broker.committed(group, src)
        return {p: end[p] - (committed[p] if committed[p] >= 0 else 0) for p in end}

    try:
        wait_until("partitions assigned", lambda: worker.get("/readyz")[0] == 200, 60, [worker])
        wait_until(
            "caught up and committed",
            lambda: all(v == 0 for v in broker_lag().values()),
            120,
            [worker],
        )
        # Produce more while it runs; once it settles both views agree exactly.
        kafka_broker.produce(src, clicks(40_000, 1_000))

        seen: dict[str, dict[str, float]] = {}

        def settled() -> bool:
            # Every scrape shows the partitions and their total from one refresh (a CI run
            # under load once scraped 0s and a total of 200: EngineMetrics.set_lag).
            metrics = worker.metrics()
            lags = {p: metrics[f'streamherd_consumer_lag{{partition="{p}",pipeline="clicks",'
                                f'topic="{src}"}}'] for p in range(4)}  # fmt: skip
            total = metrics['streamherd_worker_consumer_lag{pipeline="clicks"}']
            assert total == sum(lags.values()), (lags, total)
            broker = broker_lag()
            # Every record read too: a refresh from before the worker saw the new ones also
            # says 0 (its log ends not moved yet), and the next one 1000 (a CI run).
            read = sum(v for k, v in metrics.items() if k.startswith("streamherd_records_in_total"))
            seen["metrics"] = metrics
            return read == 41_000 and lags == broker and sum(broker.values()) == 0

        wait_until("engine lag equals broker lag, total included", settled, 60, [worker])
        metrics = seen["metrics"]
        assert metrics['streamherd_worker_consumer_lag{pipeline="clicks"}'] == 0
        assert worker.get("/healthz")[0] == 200
        assert metrics['streamherd_checkpoint_age_seconds{pipeline="clicks"}'] < 30
    finally:
        worker.stop()
