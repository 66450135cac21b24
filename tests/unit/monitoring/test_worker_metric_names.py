"""The worker's metric names follow Prometheus' conventions (`promtool check metrics`): the
per-worker lag was a gauge named like a counter, `streamherd_consumer_lag_total`. It is
exported as `streamherd_worker_consumer_lag`, and under its first name, deprecated, with
the same values for one release; nothing the project ships queries the old name."""

from __future__ import annotations

import json
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from streamherd.operator.builders.autoscaling import PROMETHEUS_ADAPTER_RULE
from streamherd.operator.builders.monitoring import METRIC_LAG
from streamherd.workers.metrics import METRICS, EngineMetrics
from tests.infra.paths import REPO_ROOT
from tests.infra.promkit import pipeline, promtool, rule_groups

OLD = "streamherd_consumer_lag_total"
NEW = "streamherd_worker_consumer_lag"
DASHBOARD = REPO_ROOT / "charts" / "streamherd" / "files" / "dashboards"


def every_series() -> EngineMetrics:
    """An engine's metrics with a sample in every family."""
    metrics = EngineMetrics("p")
    for spec in METRICS:
        labels = ["x"] * len(spec.labels)
        if spec.kind == "histogram":
            metrics.histogram(spec.name).labels(*labels).observe(1)
        elif spec.kind == "counter":
            metrics.counter(spec.name).labels(*labels).inc()
        else:
            metrics.gauge(spec.name).labels(*labels).set(1)
    metrics.set_lag({("t", 0): 3, ("t", 1): 4})
    return metrics


def test_promtool_objects_to_no_name_but_the_deprecated_one() -> None:
    proc = subprocess.run(
        [promtool(), "check", "metrics"],
        input=every_series().render().decode(),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    named = {line.split()[0] for line in problems}
    assert named <= {OLD}, problems
    # The one exception is said to be deprecated, in its help text, pointing at its heir.
    [old] = [spec for spec in METRICS if spec.name == OLD]
    assert old.help.startswith("Deprecated: use streamherd_worker_consumer_lag"), old.help


def test_the_worker_lag_and_its_deprecated_name_say_the_same() -> None:
    metrics = EngineMetrics("p")
    metrics.set_lag({("t", 0): 3, ("t", 1): 4})
    values = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name in (OLD, NEW)
    }
    assert values == {OLD: 7, NEW: 7}
    metrics.forget_partition("t", 1)
    after = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name in (OLD, NEW)
    }
    assert after == {OLD: 3, NEW: 3}


def test_the_alerts_the_dashboard_and_the_adapter_rule_query_the_new_name() -> None:
    """The alerts and the dashboard take the old name only where a worker has no series of
    the new one (a worker of an earlier release: promtool's cases in test_alert_rules.py).
    The adapter rule's seriesQuery names one metric: the new one."""
    assert METRIC_LAG == NEW
    rules = json.dumps(rule_groups(pipeline()))
    assert NEW in rules
    assert rules.count(OLD) == rules.count(f"{NEW}{{") == rules.count(f" or {OLD}{{")
    assert NEW in PROMETHEUS_ADAPTER_RULE["seriesQuery"]
    assert OLD not in json.dumps(PROMETHEUS_ADAPTER_RULE)
    for board in DASHBOARD.glob("*.json"):
        text = board.read_text()
        assert NEW in text, board
        assert text.count(OLD) == text.count(f"{NEW}{{") == text.count(f" or {OLD}{{"), board
