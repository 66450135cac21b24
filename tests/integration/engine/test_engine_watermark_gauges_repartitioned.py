"""Helper-115: `streamherd_watermark_seconds` and `streamherd_event_time_lag_seconds` are
documented for windowed pipelines ("per partition (windowed pipelines)"); a repartitioned
pipeline is a windowed one, its windows on the repartition topic's partitions. Real broker,
real worker subprocess: once it has folded records, the gauges exist for the partitions
that hold windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra.kafka import KafkaBroker
from tests.integration.engine.enginekit import Worker, wait_until
from tests.integration.engine.test_engine_repartition import (
    page_clicks,
    repartitioned_config,
    topics,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


def test_a_repartitioned_pipeline_exports_its_watermarks(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    src, sink, dlq = topics(kafka_broker)
    config = repartitioned_config(kafka_broker, src, sink, dlq, tmp_path / "ck")
    kafka_broker.produce(src, page_clicks(0, 2000))
    worker = Worker.create(tmp_path, "w", config).start()
    try:
        wait_until(
            "every record folded",
            lambda: worker.value("streamherd_repartition_records_in_total") == 2000,
            120,
            [worker],
        )
        names = {k.split("{", 1)[0] for k in worker.metrics()}
        assert "streamherd_watermark_seconds" in names
        assert "streamherd_event_time_lag_seconds" in names
    finally:
        worker.stop()
