"""librdkafka's lines go through the operator's logger as JSON, rate-limited per cluster and
cause (operator/kafkalogging.py); the real librdkafka against a closed loopback port."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from streamherd.operator.kafkalogging import KafkaLog, shared_kafka_log


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_per_cause_are_bounded_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = KafkaLog("kafka:9092", burst=2, interval=60, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="streamherd.kafka"):
        for i in range(100):
            clock.now = i * 0.5  # 50 s: one window
            log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#1", f"connect failed {i}")
            log.log(logging.WARNING, "%s [%s] %s", "CONNECT", "rdkafka#1", "refused")
        shown = [r for r in caplog.records if r.name == "streamherd.kafka"]
        assert len(shown) == 4  # two per cause
        assert {r.kafka_facility for r in shown} == {"FAIL", "CONNECT"}  # type: ignore[attr-defined]
        assert all(r.kafka_cluster == "kafka:9092" for r in shown)  # type: ignore[attr-defined]
        caplog.clear()
        clock.now = 61
        log.log(logging.ERROR, "%s [%s] %s", "FAIL", "rdkafka#1", "connect failed again")
        messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "librdkafka FAIL: 98 more librdkafka FAIL lines held back in the last 60 s",
        "librdkafka FAIL: connect failed again",
    ]


def test_syslog_levels_are_mapped(caplog: pytest.LogCaptureFixture) -> None:
    log = KafkaLog("c")
    with caplog.at_level(logging.DEBUG, logger="streamherd.kafka"):
        log.log(3, "%s [%s] %s", "ERROR", "rdkafka#1", "x")
    assert caplog.records[0].levelno == logging.ERROR


SCRIPT = textwrap.dedent(
    """
    import socket, sys, time
    from streamherd.operator.main import configure_logging
    from streamherd.operator.autoscaling.handlers import logged_probe
    from streamherd.operator.lagprobe import ClusterConfig, GroupSpec, LagProbeError

    configure_logging("debug", "json")
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    probe = logged_probe(ClusterConfig.of(f"127.0.0.1:{port}"))
    probe.request_timeout = 1.5
    end = time.monotonic() + 8
    while time.monotonic() < end:
        try:
            probe.measure(GroupSpec("g", ("t",), "earliest"))
        except LagProbeError:
            pass
    probe.close()
    """
)


def test_an_unreachable_broker_logs_json_lines_at_a_bounded_rate() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    kafka = [r for r in records if r["logger"] == "streamherd.kafka"]
    assert kafka, "no librdkafka line came through the logger"
    per_cause: dict[str, int] = {}
    for r in kafka:
        per_cause[r["kafka_facility"]] = per_cause.get(r["kafka_facility"], 0) + 1
    # 8 s inside one 60 s window: at most the burst (3) per cause.
    assert max(per_cause.values()) <= 3, per_cause


def test_every_client_of_a_cluster_shares_one_limiter() -> None:
    assert shared_kafka_log("one:9092") is shared_kafka_log("one:9092")
    assert shared_kafka_log("one:9092") is not shared_kafka_log("two:9092")
