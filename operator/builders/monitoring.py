"""Prometheus Operator objects for a pipeline: a ServiceMonitor and a PrometheusRule.

They are only built when the cluster serves monitoring.coreos.com/v1 (the reconciler asks
operator/kube.py and sets the MonitoringAvailable condition either way). Metric names are
the engine's (workers/metrics.py, documented in docs/monitoring.md); the `pipeline` label
is set by the workers and `namespace` by Prometheus from the scrape target.
"""

from __future__ import annotations

from typing import Final

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.meta import Manifest, object_meta, selector_labels
from streamherd.operator.settings import OperatorSettings
from streamherd.workers.config import parse_duration

MONITORING_API: Final = "monitoring.coreos.com/v1"

# The engine's metric names (streamherd.workers.metrics.METRICS; counters get `_total`);
# tests/unit/operator/test_builders.py checks each one is declared there. Lag is the
# per-worker sum, so summing over pods gives the pipeline's total (its first name,
# streamherd_consumer_lag_total, is deprecated: a gauge named like a counter).
METRIC_LAG: Final = "streamherd_worker_consumer_lag"
# Workers of an earlier release (an image pinned by spec.image, or a roll under way) export
# the deprecated name only: the rules take a worker's new series where it has one, else its
# old one (`or` matches label sets without the metric name: a worker that exports both
# counts once). Dropped with the deprecated name.
METRIC_LAG_DEPRECATED: Final = "streamherd_consumer_lag_total"
METRIC_RECORDS_IN: Final = "streamherd_records_in_total"
METRIC_DEAD_LETTERED: Final = "streamherd_records_dead_lettered_total"
METRIC_ERRORS: Final = "streamherd_errors_total"
METRIC_CHECKPOINT_AGE: Final = "streamherd_checkpoint_age_seconds"
METRIC_SINK_UP: Final = "streamherd_sink_up"
# When each dead-letter counter was created (prometheus_client exports `_created` with every
# counter; the engine creates one per reason at start): the DLQ alert's view of a worker
# whose dead letters all came before Prometheus first scraped it.
METRIC_DEAD_LETTERED_CREATED: Final = "streamherd_records_dead_lettered_created"
DEAD_LETTER_WINDOW: Final = "10m"
# Source records the broker deleted before they were read (decision 0201): its counters
# are made at the first loss, above 0 from the start, hence `_created` as for dead letters.
METRIC_RECORDS_LOST: Final = "streamherd_records_lost_total"
METRIC_RECORDS_LOST_CREATED: Final = "streamherd_records_lost_created"
RECORDS_LOST_WINDOW: Final = "1h"
# 1 per assigned partition a worker holds (not consumed), by reason; no series otherwise.
METRIC_PARTITION_HELD: Final = "streamherd_partition_held"
ALERT_METRICS: Final = (
    METRIC_LAG,
    METRIC_LAG_DEPRECATED,
    METRIC_RECORDS_IN,
    METRIC_DEAD_LETTERED,
    METRIC_ERRORS,
    METRIC_CHECKPOINT_AGE,
    METRIC_SINK_UP,
    METRIC_RECORDS_LOST,
    METRIC_PARTITION_HELD,
)


def build_service_monitor(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """ServiceMonitor `NAME`: scrape the metrics Service of this pipeline's workers."""
    return {
        "apiVersion": MONITORING_API,
        "kind": "ServiceMonitor",
        "metadata": object_meta(pipeline, pipeline.name),
        "spec": {
            "selector": {"matchLabels": selector_labels(pipeline)},
            "namespaceSelector": {"matchNames": [pipeline.namespace]},
            "endpoints": [
                {
                    "port": "metrics",
                    "path": "/metrics",
                    "interval": pipeline.spec.monitoring.scrape_interval,
                }
            ],
        },
    }


def _seconds(text: str) -> str:
    """A duration as a PromQL number of seconds, exact to the millisecond (`500ms` is 0.5:
    truncating it to 0 made `age > 0`, an alert that always fires)."""
    whole, ms = divmod(round(parse_duration(text) * 1000), 1000)
    return f"{whole}.{ms:03d}".rstrip("0") if ms else f"{whole}"


def build_prometheus_rule(pipeline: StreamPipeline, settings: OperatorSettings) -> Manifest:
    """PrometheusRule `NAME`: alerts on lag, stalled progress, errors/DLQ, checkpoints and
    the sink. Each alert is unit-tested with promtool (tests/unit/monitoring/), and
    docs/monitoring.md says what to do when it fires."""
    mon = pipeline.spec.monitoring
    sel = f'namespace="{pipeline.namespace}", pipeline="{pipeline.name}"'
    lag = f"sum({METRIC_LAG}{{{sel}}} or {METRIC_LAG_DEPRECATED}{{{sel}}})"
    alert_labels = {"namespace": pipeline.namespace, "pipeline": pipeline.name}
    dlq_window, dlq_seconds = DEAD_LETTER_WINDOW, _seconds(DEAD_LETTER_WINDOW)

    def alert(name: str, expr: str, duration: str, severity: str, summary: str) -> Manifest:
        return {
            "alert": name,
            "expr": expr,
            "for": duration,
            "labels": {"severity": severity, **alert_labels},
            "annotations": {
                "summary": summary,
                "description": (
                    f"StreamPipeline {pipeline.namespace}/{pipeline.name}: {summary}. "
                    f"See `kubectl describe streampipeline -n {pipeline.namespace} "
                    f"{pipeline.name}`."
                ),
            },
        }

    rules = [
        alert(
            "StreamherdLagAboveThreshold",
            f"{lag} > {mon.lag_alert_threshold}",
            "10m",
            "warning",
            f"consumer lag has stayed above {mon.lag_alert_threshold} records",
        ),
        alert(
            "StreamherdLagGrowing",
            f"{lag} > 0 and deriv({lag}[15m:1m]) > 0",
            "15m",
            "warning",
            "consumer lag has been growing for 15 minutes",
        ),
        alert(
            # `unless ... > 0`, not `and ... == 0`: a worker stuck before its first record
            # has no records_in series at all, and `and` with nothing is nothing.
            "StreamherdNoProgress",
            f"{lag} > 0 unless sum(rate({METRIC_RECORDS_IN}{{{sel}}}[10m])) > 0",
            "10m",
            "critical",
            "there is lag but no record has been consumed for 10 minutes",
        ),
        alert(
            "StreamherdErrors",
            f"sum(rate({METRIC_ERRORS}{{{sel}}}[5m])) > 0",
            "5m",
            "warning",
            "records are failing",
        ),
        alert(
            # Any dead letter within the window, held `for` 5m: it fires 5 minutes after a
            # burst and resolves 10 minutes after the last one. increase() only sees what
            # happened between two scrapes; a worker that dead-letters a burst before its
            # first scrape has a counter that is never seen to move. So, too: a counter
            # above 0 that was created (at the worker's start) within the window, whose
            # every dead letter is therefore that recent. (`x unless x offset 10m` would
            # see new series too, but also every old one after a gap in Prometheus' data.)
            "StreamherdDeadLettering",
            f"sum(increase({METRIC_DEAD_LETTERED}{{{sel}}}[{dlq_window}])) > 0"
            f" or sum({METRIC_DEAD_LETTERED}{{{sel}}} > 0"
            f" and (time() - {METRIC_DEAD_LETTERED_CREATED}{{{sel}}}) < {dlq_seconds})",
            "5m",
            "warning",
            "records were sent to the dead-letter topic in the last 10 minutes",
        ),
        alert(
            "StreamherdCheckpointTooOld",
            f"max({METRIC_CHECKPOINT_AGE}{{{sel}}}) > {_seconds(mon.checkpoint_age_alert)}",
            "5m",
            "critical",
            f"the newest checkpoint is older than {mon.checkpoint_age_alert}",
        ),
        alert(
            # Any loss within the hour, at once: a gap in the input is for good, and the
            # one to tell is that retention is shorter than the pipeline's downtime or lag.
            "StreamherdInputLost",
            f"sum(increase({METRIC_RECORDS_LOST}{{{sel}}}[{RECORDS_LOST_WINDOW}])) > 0"
            f" or sum({METRIC_RECORDS_LOST}{{{sel}}} > 0"
            f" and (time() - {METRIC_RECORDS_LOST_CREATED}{{{sel}}})"
            f" < {_seconds(RECORDS_LOST_WINDOW)})",
            "0m",
            "critical",
            "the broker deleted source records before the pipeline read them (retention "
            "shorter than its downtime or lag); it went on from the log start",
        ),
        alert(
            # Held partitions are read by nobody while the rest of the pipeline runs on:
            # NoProgress stays quiet (other partitions are consumed), and lag alone may be
            # under its threshold. A start offset the broker is slow to give is held for
            # seconds; ten minutes is a hold that needs someone.
            "StreamherdPartitionHeld",
            f"sum({METRIC_PARTITION_HELD}{{{sel}}}) > 0",
            "10m",
            "critical",
            "a partition has been held (not consumed) for 10 minutes: its checkpoint was not "
            "restored, or the broker gives no offset for its start",
        ),
        alert(
            "StreamherdSinkDown",
            f"min({METRIC_SINK_UP}{{{sel}}}) == 0",
            "2m",
            "critical",
            "the sink refuses writes (e.g. the database is down); results wait, consumption "
            "is paused",
        ),
    ]
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": object_meta(pipeline, pipeline.name),
        "spec": {"groups": [{"name": f"streamherd.{pipeline.name}", "rules": rules}]},
    }
