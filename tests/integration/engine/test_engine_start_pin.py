"""`startFrom: latest` is resolved once: a worker killed before its first checkpoint loses
nothing it had read.

Left to the consumer, `latest` was resolved again after a restart: the restarted worker
began at the log's new end, and every record its predecessor had read (folded into windows
it never emitted) was skipped for good, in either delivery mode (a kill-schedule probe).
Now a partition with nothing to resume from starts at the log end as the broker says at the
assignment, and a checkpoint of its empty state there, with its offsets committed, is
written before its first record is folded (Engine._pin_latest). Real broker, real worker
processes, SIGKILL; each delivery mode, and the changelog state backend.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import (
    Worker,
    latest_by_key,
    pipeline_config,
    reference,
    wait_until,
)
from tests.integration.engine.test_engine_fencing import PARTITIONS, flush, records

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


@pytest.mark.parametrize(
    ("delivery", "backend"),
    [("atLeastOnce", "volume"), ("exactlyOnce", "volume"), ("exactlyOnce", "changelog")],
)
def test_start_from_latest_keeps_what_a_worker_killed_before_its_first_checkpoint_read(
    kafka_broker: KafkaBroker, tmp_path: Path, delivery: str, backend: str
) -> None:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("pin"), PARTITIONS)
    sink = kafka_broker.create_topic(kafka_broker.unique_topic("pin-out"), 1)
    group = f"g-{src}"
    kafka_broker.produce(src, records(-500, 500))  # before the start: never read
    config = pipeline_config(
        kafka_broker, source=src, sink=sink, dlq=None, group=group,
        checkpoints=tmp_path / "ck", lateness="0s",
    )  # fmt: skip
    config["delivery"] = delivery
    config["source"]["kafka"]["startFrom"] = "latest"
    config["checkpoint"]["intervalSeconds"] = 120  # the kill comes before the first one
    if backend == "changelog":
        config["checkpoint"]["changelog"] = {"topic": f"{src}.changelog"}
    before = kafka_broker.end_offsets(src)
    worker = Worker.create(tmp_path, "w", config)
    worker.env = {"STREAMHERD_WORKER_ID": "w"}
    first, second = records(0, 2000), records(2000, 2000)
    try:
        worker.start()
        # The start is pinned at the log end of the assignment, and committed: the group's
        # offsets say where the pipeline began (and its lag counts from there).
        wait_until(
            "the start pinned",
            lambda: kafka_broker.committed(group, src) == before,
            60,
            [worker],
        )
        kafka_broker.produce(src, first)
        wait_until(
            "the first records read",
            lambda: worker.value("streamherd_records_in_total") >= len(first),
            60,
            [worker],
        )
        worker.kill()
        assert kafka_broker.committed(group, src) == before, "a checkpoint came before the kill"
        # The next incarnation checkpoints every second: exactly-once's results are visible
        # at its checkpoints only, and 120 s of waiting for the first one shows nothing more.
        restarted = orjson.loads(worker.config_path.read_bytes())
        restarted["checkpoint"]["intervalSeconds"] = 1
        worker.config_path.write_bytes(orjson.dumps(restarted))
        worker.start()
        wait_until("ready again", lambda: worker.get("/readyz")[0] == 200, 60, [worker])
        kafka_broker.produce(src, second)
        flush(kafka_broker, src)
        expected = reference(first + second)

        def complete() -> bool:
            got = latest_by_key(kafka_broker.consume_all(sink))
            return all(
                {"clicks": got[k]["clicks"], "bytes": got[k]["bytes"]} == v if k in got else False
                for k, v in expected.items()
            )

        wait_until("every window with both halves", complete, 120, [worker])
        got = latest_by_key(kafka_broker.consume_all(sink))
        assert {k: {"clicks": v["clicks"], "bytes": v["bytes"]} for k, v in got.items()} == {
            k: {"clicks": v["clicks"], "bytes": v["bytes"]} for k, v in expected.items()
        }, "a window holds records from before the start, or misses some"
    finally:
        worker.stop()
