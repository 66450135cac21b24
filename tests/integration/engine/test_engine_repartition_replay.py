"""A replay of a repartitioned pipeline computes the new spec, on the real broker.

The edit changes the window's size (the state fingerprint: the replay empties every
partition) and the filter before the window (what the upstream lets through to the
repartition topic). The replay seeks the downstream partitions back in the repartition topic,
where the previous spec's entries for the same source records still are; the result must be
the new spec's reference over the records from the replay time, never the old filter's
(a review's finding: the old entries folded first and the new ones were dropped as
duplicates). After it the policy goes back to refuse, whose config names no generation: what
is written then folds as ever. Records carry their event time as their Kafka timestamp, so
"from a time" has one meaning; the reference is computed without the engine.
"""

from __future__ import annotations

import copy
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import BASE_TS, Worker, iso, pipeline_config, wait_until
from tests.integration.engine.test_engine_repartition import by_key, check

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

PARTITIONS = 4
PAGES = 13
STEP_MS = 10  # event time between records: 3000 records span 30 s
KEEP = {"retention.ms": "-1"}  # the records' timestamps are in 2026-01: kept, not expired


def produce(broker: KafkaBroker, topic: str, start: int, count: int) -> list[dict[str, Any]]:
    """Clicks keyed by user, windowed by page; each one's Kafka timestamp is its event time."""
    producer = Producer(broker.client_config(**{"enable.idempotence": True, "linger.ms": 5}))
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    sent = []
    for i in range(start, start + count):
        user, ts = f"user-{(i * 7919) % 97}", BASE_TS + i * STEP_MS
        rec = {"id": i, "user": user, "page": f"/p{(i * 104729) % PAGES}",
               "bytes": (i * 31) % 997, "ts": ts}  # fmt: skip
        producer.produce(topic, key=user.encode(), value=orjson.dumps(rec), timestamp=ts,
                         on_delivery=delivered)  # fmt: skip
        producer.poll(0)
        sent.append(rec)
    assert producer.flush(60) == 0 and not errors, errors
    return sent


def reference(records: list[dict[str, Any]], window_ms: int) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"clicks": 0, "bytes": 0})
    for rec in records:
        row = out[f"{rec['page']}|{iso(rec['ts'] - rec['ts'] % window_ms)}"]
        row["clicks"] += 1
        row["bytes"] += rec["bytes"]
    return dict(out)


def caught_up(broker: KafkaBroker, group: str, topic: str) -> bool:
    try:
        return broker.committed(group, topic) == broker.end_offsets(topic)
    except KafkaException:  # the group's coordinator still moving
        return False


def records_in(worker: Worker) -> float:
    return sum(
        v for k, v in worker.metrics().items() if k.startswith("streamherd_records_in_total")
    )


def spec(cfg: dict[str, Any], sink: str, keep: str, size: str, **state: Any) -> dict[str, Any]:
    """``cfg`` writing to ``sink``, its filter keeping bytes of parity ``keep``, windows of
    ``size``, under the state policy ``state`` (what the operator renders)."""
    new = copy.deepcopy(cfg)
    new["processor"]["steps"][0] = {"filter": f"bytes % 2 == {keep}"}
    new["processor"]["steps"][-1]["window"]["size"] = size
    new["sink"]["kafka"]["topic"] = sink
    new["state"] = state
    return new


def test_a_replay_after_an_edit_of_the_filter_and_the_size_computes_the_new_spec(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    broker = kafka_broker
    src = broker.create_topic(broker.unique_topic("replay-src"), PARTITIONS, config=KEEP)
    hop = broker.create_topic(f"{src}.repartition", 3, config=KEEP)
    old_sink = broker.create_topic(broker.unique_topic("replay-old"), 3)
    new_sink = broker.create_topic(broker.unique_topic("replay-new"), 3)
    group = f"g-{src}"
    base = pipeline_config(
        broker,
        source=src,
        sink=old_sink,
        dlq=None,
        group=group,
        checkpoints=tmp_path / "checkpoints",
        lateness="0s",
        steps=[{"filter": "true"}],
        batchSize=500,
    )
    base["processor"]["steps"][-1]["window"]["keyBy"] = "page"
    base["repartition"] = {"topic": hop}
    sent = produce(broker, src, 0, 3000)

    old = spec(base, old_sink, "0", "10s", onFingerprintMismatch="reset", specGeneration=1)
    first = Worker.create(tmp_path, "old", old).start()
    try:
        wait_until("the old spec read every record and every entry",
                   lambda: caught_up(broker, group, src) and caught_up(broker, group, hop),
                   120, [first])  # fmt: skip
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0, first.log_tail()
    finally:
        first.stop()

    replay_from = BASE_TS + 1500 * STEP_MS + 3  # not on a record, not on a window boundary
    new = spec(base, new_sink, "1", "5s", onFingerprintMismatch="replay",
               replayFromMs=replay_from, specGeneration=2)  # fmt: skip
    replayed = Worker.create(tmp_path, "replay", new).start()
    aligned = replay_from - replay_from % 5_000  # from the start of the window holding it
    again = sum(1 for r in sent if r["ts"] >= aligned)
    try:
        # The group's offsets were at the ends already: the replay's own reading first.
        wait_until("the replay read every record and every entry",
                   lambda: records_in(replayed) >= again and caught_up(broker, group, src)
                   and caught_up(broker, group, hop), 120, [replayed])  # fmt: skip
        replayed.signal(signal.SIGTERM)
        assert replayed.wait(30) == 0, replayed.log_tail()
    finally:
        replayed.stop()

    # Then the policy goes back to refuse (its config names no generation), the spec is
    # otherwise the same: what its upstreams write after the replay folds.
    more = produce(broker, src, 3000, 1000)
    later = [r for r in sent + more if r["ts"] >= aligned and r["bytes"] % 2 == 1]
    expected = reference(later, 5_000)
    refusing = {**new, "state": {}}
    last = Worker.create(tmp_path, "refuse", refusing).start()
    try:
        wait_until("the last spec read every record",
                   lambda: records_in(last) >= len(more) and caught_up(broker, group, src),
                   120, [last])  # fmt: skip
        for p in range(PARTITIONS):  # a far-future record per partition closes every window
            broker.produce(src, [("zz", {"id": -1, "user": "zz", "page": "zz-flush", "bytes": 1,
                                         "ts": BASE_TS + 86_400_000})], partition=p)  # fmt: skip
        got: dict[str, dict[str, Any]] = {}

        def complete() -> bool:
            got.clear()
            got.update(by_key(broker.consume_all(new_sink, timeout=60))[0])
            return set(expected) <= set(got)

        wait_until("every window emitted", complete, 120, [last])
        last.signal(signal.SIGTERM)
        assert last.wait(30) == 0, last.log_tail()
    finally:
        last.stop()
    check(got, expected)
