"""The operator's log under an unreachable broker is valid JSON, line by line, and bounded in
rate: librdkafka's lines come through the operator's logger (operator/kafkalogging.py).

Its own operator (`--log-format=json`, the chart's setting), watching one namespace, with a
builtin-scaled pipeline whose broker does not answer and a one-second poll interval: the
lag probe tries every second. The operator's whole output (stdout and stderr) is read.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from tests.infra.controlplane import KubeCluster
from tests.infra.operator_process import OperatorProcess
from tests.integration.operator.operator_harness import load_example, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.slow]

POLLS = 4  # lag measurements to watch (each fails after the probe's timeout)
BURST = 3  # operator/kafkalogging.py: lines per cause and cluster per minute


def test_an_unreachable_broker_gives_json_lines_at_a_bounded_rate(
    kube_cluster: KubeCluster, crd: str, tmp_path: Path
) -> None:
    ns = f"jsonlog-{uuid.uuid4().hex[:6]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # Debug level: the autoscaler warns about unmeasured lag once per reason (then every
    # 10 minutes) and logs the polls in between at debug, which the wait below counts.
    operator = OperatorProcess(kube_cluster, tmp_path / "operator.log", namespace=ns,
                               log_level="debug", extra_args=["--log-format=json"])  # fmt: skip
    operator.start()
    name = "clicks-per-minute"
    failed_poll = f"lag of {ns}/{name} not measured"
    try:
        doc = copy.deepcopy(load_example("02-clicks-per-minute"))
        doc["metadata"]["namespace"] = ns
        doc["spec"]["source"]["kafka"]["bootstrapServers"] = "127.0.0.1:1"
        doc["spec"]["autoscaling"]["pollInterval"] = "1s"
        kube_cluster.apply(doc)
        wait_until(f"{POLLS} failed lag measurements",
                   lambda: operator.log_text().count(failed_poll) >= POLLS or None,
                   timeout=180)  # fmt: skip
    finally:
        operator.stop()
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    lines = [line for line in operator.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    kafka = [r for r in records if r.get("logger") == "streamherd.kafka"]
    assert kafka, "no librdkafka line came through the operator's logger"
    assert all(r["kafka_cluster"].startswith("127.0.0.1:1") for r in kafka)
    times = [datetime.fromisoformat(r["time"]) for r in kafka]
    minutes = int((max(times) - min(times)).total_seconds() // 60) + 1
    per_cause = Counter(r["kafka_facility"] for r in kafka)
    # Per cause: BURST lines a minute, plus one "held back" note when a minute is over.
    assert all(n <= (BURST + 1) * minutes for n in per_cause.values()), (minutes, per_cause)
