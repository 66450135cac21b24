"""No loss, no double count: workers killed with SIGKILL at random moments and restarted,
and a second worker joining and leaving mid-stream, while records keep arriving.

Afterwards the sink, deduplicated by its deterministic key (last wins), must hold every
window of the input with exactly the reference aggregates: each input record reflected
once, none lost, none twice, and no window missing."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    Worker,
    assert_matches,
    clicks,
    flush_markers,
    latest_by_key,
    pipeline_config,
    reference,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka, pytest.mark.slow]


class SteadyProducer(threading.Thread):
    """Produces `total` click records in chunks at about `rate` records/s."""

    def __init__(self, broker: KafkaBroker, topic: str, total: int, rate: int) -> None:
        super().__init__(daemon=True)
        self.broker, self.topic, self.total, self.rate = broker, topic, total, rate
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            chunk = max(self.rate // 4, 1)
            started = time.monotonic()
            for start in range(0, self.total, chunk):
                self.broker.produce(self.topic, clicks(start, min(chunk, self.total - start)))
                due = started + (start + chunk) / self.rate
                time.sleep(max(due - time.monotonic(), 0))
        except BaseException as error:  # reported by the test thread
            self.error = error


def finish_and_verify(
    broker: KafkaBroker, src: str, sink: str, dlq: str, total: int, workers: list[Worker]
) -> None:
    records = list(clicks(0, total))
    flush_markers(broker, src, 4, records[-1][1]["ts"])
    expected = reference(records)
    seen: dict[str, dict[str, object]] = {}

    def complete() -> bool:
        seen.clear()
        seen.update(latest_by_key(broker.consume_all(sink, timeout=60)))
        return set(expected) <= set(seen)

    wait_until("every window in the sink", complete, 120, workers)
    assert_matches(seen, expected)  # type: ignore[arg-type]
    late = broker.consume_all(dlq)
    assert late == [], f"{len(late)} records dead-lettered, e.g. {late[0].headers}"


def make_topics(broker: KafkaBroker) -> tuple[str, str, str]:
    src = broker.create_topic(broker.unique_topic("in"), 4)
    sink = broker.create_topic(broker.unique_topic("out"), 4)
    dlq = broker.create_topic(broker.unique_topic("dlq"), 1)
    return src, sink, dlq


def test_sigkill_at_random_moments_loses_nothing_counts_nothing_twice(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = make_topics(kafka_broker)
    total, rate = 45_000, 1_000
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        batchSize=500,
    )
    config["checkpoint"]["intervalSeconds"] = 0.5  # more checkpoints: more kills inside one
    producer = SteadyProducer(kafka_broker, src, total, rate)
    producer.start()
    worker = Worker.create(tmp_path, "w", config).start()
    rng = random.Random(20260101)
    kills = 0
    try:
        while kills < 5:
            wait_until(
                "the worker to own partitions",
                lambda: worker.get("/readyz")[0] == 200,
                60,
                [worker],
            )
            time.sleep(rng.uniform(0.2, 2.5))
            worker.kill()
            kills += 1
            worker.start()
        producer.join(120)
        assert producer.error is None, producer.error
        assert not producer.is_alive()
        finish_and_verify(kafka_broker, src, sink, dlq, total, [worker])
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert log.count("event=partition-restored") >= 4  # restarts did restore checkpoints


def test_second_worker_joins_and_leaves_mid_stream(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = make_topics(kafka_broker)
    total, rate = 30_000, 1_500
    config = pipeline_config(
        kafka_broker,
        source=src,
        sink=sink,
        dlq=dlq,
        group=f"g-{src}",
        checkpoints=tmp_path / "ck",
        batchSize=500,
    )
    producer = SteadyProducer(kafka_broker, src, total, rate)
    producer.start()
    first = Worker.create(tmp_path, "a", config).start()
    second = Worker.create(
        tmp_path, "b", {**config, "runtime": {**config["runtime"], "metricsPort": 0}}
    )
    try:
        wait_until("worker a owns partitions", lambda: first.get("/readyz")[0] == 200, 60, [first])
        time.sleep(2)
        second.start()
        wait_until(
            "worker b owns partitions", lambda: second.get("/readyz")[0] == 200, 60, [first, second]
        )

        def b_consumed() -> bool:
            return any(
                k.startswith("streamherd_records_in_total") and v > 0
                for k, v in second.metrics().items()
            )

        wait_until("worker b to process records", b_consumed, 60, [first, second])
        time.sleep(3)
        second.signal(signal.SIGTERM)  # leaves the group: its partitions go back to a
        assert second.wait(20) == 0, second.log_tail()
        producer.join(120)
        assert producer.error is None, producer.error
        finish_and_verify(kafka_broker, src, sink, dlq, total, [first])
        rebalances = {
            k: v for k, v in first.metrics().items() if k.startswith("streamherd_rebalances")
        }
        assert (
            rebalances.get('streamherd_rebalances_total{kind="revoke",pipeline="clicks"}', 0) >= 1
        )
        assert (
            rebalances.get('streamherd_rebalances_total{kind="assign",pipeline="clicks"}', 0) >= 2
        )
    finally:
        first.stop()
        second.stop()
