"""A real Prometheus scrapes a running worker and the running operator.

Worker: Kafka in (clicks plus a few records that are not JSON), a window, Kafka out, a
dead-letter topic. Prometheus (tests/infra/promserver.py) scrapes it every
second with the target labels the Prometheus Operator would add (namespace, pod) and loads
the PrometheusRule the operator generates for the pipeline. The documented series must be
there with their labels, the dashboard's kinds of queries must answer, and the generated
alert for dead-lettering must see the real series (pending), also for a worker that
dead-lettered its records before Prometheus first scraped it.

Operator: `streamherd operator --metrics-port` against the real control plane, watching a
pipeline whose source is the real broker; Prometheus scrapes it like the chart's
ServiceMonitor does (honorLabels, so the pipeline's namespace label survives the target's).
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.monitoring import METRIC_DEAD_LETTERED, build_prometheus_rule
from streamherd.workers.metrics import METRICS
from tests.infra.controlplane import KubeCluster
from tests.infra.kafka import KafkaBroker
from tests.infra.paths import REPO_ROOT
from tests.infra.processes import free_port, port_open, spawn, stop_group, wait_for
from tests.infra.promkit import SETTINGS
from tests.infra.promserver import (
    PrometheusServer,
    ScrapeJob,
    start_prometheus,
    wait_for_query,
)
from tests.integration.engine.enginekit import (
    Worker,
    clicks,
    flush_markers,
    pipeline_config,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.kafka]

NS, NAME = "test", "clicks"  # enginekit's pipeline
SEL = f'namespace="{NS}", pipeline="{NAME}"'
POISON = 7


def worker_rules(tmp_path: Path) -> Path:
    doc = yaml.safe_load((REPO_ROOT / "examples" / "02-clicks-per-minute.yaml").read_text())
    doc["metadata"] = {"name": NAME, "namespace": NS}
    rule = build_prometheus_rule(StreamPipeline.model_validate(doc), SETTINGS)
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def scrape(worker: Worker, tmp_path: Path) -> PrometheusServer:
    """Prometheus scraping the worker as pod w-0 of namespace NS, with the pipeline's rules."""
    return start_prometheus(
        [
            ScrapeJob(
                "streamherd-worker",
                (f"127.0.0.1:{worker.metrics_port}",),
                {"namespace": NS, "pod": "w-0"},
            )
        ],
        [worker_rules(tmp_path)],
    )


@pytest.fixture
def scraped_worker(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> Iterator[tuple[Worker, PrometheusServer, KafkaBroker, str]]:
    src = kafka_broker.create_topic(kafka_broker.unique_topic("mon-in"), 4)
    out = kafka_broker.create_topic(kafka_broker.unique_topic("mon-out"), 4)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("mon-dlq"), 1)
    kafka_broker.produce(src, clicks(0, 10_000))
    config = pipeline_config(
        kafka_broker, source=src, sink=out, dlq=dlq, group=f"g-{src}", checkpoints=tmp_path
    )
    worker = Worker.create(tmp_path, "w", config).start()
    server = scrape(worker, tmp_path)
    try:
        yield worker, server, kafka_broker, src
    finally:
        server.stop()
        worker.stop()


def test_prometheus_scrapes_the_documented_worker_series(
    scraped_worker: tuple[Worker, PrometheusServer, KafkaBroker, str],
) -> None:
    worker, prom, broker, src = scraped_worker

    def read() -> float:
        return sum(
            float(s["value"][1]) for s in prom.query(f"streamherd_records_in_total{{{SEL}}}")
        )

    # A first half, scraped; then the poison and the rest, so rates see the counters move
    # (the dead-letter counter is scraped at 0 before it grows: rate() needs two samples).
    wait_until("the first half scraped", lambda: read() == 10_000, 120, [worker])
    broker.produce(src, [(f"bad-{i}", b"{not json") for i in range(POISON)])
    records = list(clicks(10_000, 10_000))
    broker.produce(src, records)
    flush_markers(broker, src, 4, records[-1][1]["ts"])
    total = 20_000 + POISON + 4
    wait_until(
        "the worker to read everything",
        lambda: (
            sum(float(s["value"][1]) for s in prom.query(f"streamherd_records_in_total{{{SEL}}}"))
            == total
        ),
        120,
        [worker],
    )
    # Every metric of the registry is scraped, except those that only exist after an
    # engine error, with a PostgreSQL sink, once state of another fingerprint was held or
    # discarded, while a partition is held, in a repartitioned pipeline (this worker's
    # config has no repartition topic), or once the broker deleted records before they were
    # read (per partition and per reason: no series before the first one).
    optional = {
        "streamherd_errors",
        "streamherd_records_lost",
        "streamherd_state_restore_refused",
        "streamherd_partition_held",
        "streamherd_state_discarded",
        "streamherd_repartition_records_in",
    } | {s.name for s in METRICS if "_sink_" in s.name}
    for spec in METRICS:
        if spec.name in optional:
            continue
        name = spec.name + ("_total" if spec.kind == "counter" else "")
        name += "_count" if spec.kind == "histogram" else ""
        found = wait_for_query(prom, f"{name}{{{SEL}}}", 30)
        labels = set(found[0]["metric"])
        assert {"namespace", "pod", "job", "instance", *spec.labels} <= labels, (name, labels)

    # Lag per partition, with topic and partition labels: four partitions, drained.
    lag = wait_for_query(prom, f"streamherd_consumer_lag{{{SEL}}}")
    assert sorted(s["metric"]["partition"] for s in lag) == ["0", "1", "2", "3"]
    wait_until(
        "lag to reach 0",
        lambda: all(
            float(s["value"][1]) == 0 for s in prom.query(f"streamherd_consumer_lag{{{SEL}}}")
        ),
        60,
    )
    # Throughput, DLQ, latency quantiles and checkpoint age, as the dashboard asks them.
    rate_in = wait_for_query(prom, f"sum(rate(streamherd_records_in_total{{{SEL}}}[1m])) > 0")
    assert float(rate_in[0]["value"][1]) > 0
    dlq = prom.query(f"streamherd_records_dead_lettered_total{{{SEL}}} > 0")
    assert [(s["metric"]["reason"], float(s["value"][1])) for s in dlq] == [("decode", POISON)]
    p99 = wait_for_query(
        prom,
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(streamherd_batch_duration_seconds_bucket{{{SEL}}}[1m])))",
    )
    assert 0 < float(p99[0]["value"][1]) <= 10
    age = prom.query(f"streamherd_checkpoint_age_seconds{{{SEL}}}")
    assert 0 <= float(age[0]["value"][1]) < 30
    # The generated alert rules evaluate against these very series (labels included).
    pending = wait_for_query(
        prom, 'ALERTS{alertname="StreamherdDeadLettering", alertstate="pending"}', 30
    )
    assert pending[0]["metric"]["pipeline"] == NAME
    assert prom.query('ALERTS{alertname="StreamherdNoProgress"}') == []


def worker_series(worker: Worker, name: str) -> dict[str, float]:
    """The worker's own /metrics: {label text: value} of one metric."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        line[len(name) : line.rindex(" ")]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{")
    }


def test_dead_letters_before_the_first_scrape_still_alert(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A new worker dead-letters its whole burst before Prometheus first scrapes it: the
    counter is never seen to move (no rate, no increase), yet the alert goes pending."""
    src = kafka_broker.create_topic(kafka_broker.unique_topic("mon-early-in"), 1)
    out = kafka_broker.create_topic(kafka_broker.unique_topic("mon-early-out"), 1)
    dlq = kafka_broker.create_topic(kafka_broker.unique_topic("mon-early-dlq"), 1)
    kafka_broker.produce(src, [(f"bad-{i}", b"{not json") for i in range(POISON)])
    kafka_broker.produce(src, clicks(0, 100))
    config = pipeline_config(
        kafka_broker, source=src, sink=out, dlq=dlq, group=f"g-{src}", checkpoints=tmp_path
    )
    worker = Worker.create(tmp_path, "w", config).start()
    prom: PrometheusServer | None = None
    try:
        wait_until(
            "the worker to dead-letter the burst",
            lambda: sum(worker_series(worker, METRIC_DEAD_LETTERED).values()) == POISON,
            120,
            [worker],
        )
        prom = scrape(worker, tmp_path)
        pending = wait_for_query(
            prom, 'ALERTS{alertname="StreamherdDeadLettering", alertstate="pending"}', 60
        )
        assert pending[0]["metric"]["pipeline"] == NAME
        # Prometheus never saw the counter below the burst: the alert came from the
        # counter's creation time, not from a rate.
        low = prom.query(f'min_over_time({METRIC_DEAD_LETTERED}{{{SEL}, reason="decode"}}[1h])')
        assert [float(s["value"][1]) for s in low] == [POISON]
        assert prom.query(f"sum(increase({METRIC_DEAD_LETTERED}{{{SEL}}}[10m])) > 0") == []
    finally:
        if prom is not None:
            prom.stop()
        worker.stop()


# --------------------------------------------------------------------------- operator


def test_prometheus_scrapes_the_operator(
    kube_cluster: KubeCluster, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    kube_cluster.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    ns = kube_cluster.create_namespace("mon")
    topic = kafka_broker.create_topic(kafka_broker.unique_topic("op-in"), 2)
    kafka_broker.produce(topic, clicks(0, 500))
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "streamherd",
        "operator",
        "--kubeconfig",
        str(kube_cluster.kubeconfig),
        "--namespace",
        ns,
        "--metrics-port",
        str(port),
        "--health-port",
        "0",
        "--log-format",
        "plain",
    ]
    child, proc = spawn("operator", argv, tmp_path / "operator.log", env=kube_cluster.env)
    prom: PrometheusServer | None = None
    try:
        wait_for(
            "operator metrics", lambda: port_open("127.0.0.1", port), 60, children=[(child, proc)]
        )
        # As the chart's ServiceMonitor scrapes it: the target's namespace is the
        # operator's own, and honorLabels keeps the pipeline namespace the metrics carry.
        prom = start_prometheus(
            [
                ScrapeJob(
                    "streamherd-operator",
                    (f"127.0.0.1:{port}",),
                    {"namespace": "streamherd-system"},
                    honor_labels=True,
                )
            ]
        )
        doc = yaml.safe_load((REPO_ROOT / "examples" / "02-clicks-per-minute.yaml").read_text())
        doc["metadata"] = {"name": "clicks", "namespace": ns}
        doc["spec"]["source"]["kafka"].update(
            bootstrapServers=kafka_broker.bootstrap, topics=[topic]
        )
        doc["spec"]["sink"]["kafka"]["topic"] = "clicks-out"
        doc["spec"]["autoscaling"]["pollInterval"] = "2s"
        kube_cluster.apply(doc)
        sel = f'namespace="{ns}", pipeline="clicks"'
        lag = wait_for_query(prom, f"streamherd_operator_pipeline_lag{{{sel}}}", 120)
        assert float(lag[0]["value"][1]) == 500  # nothing consumed: no worker runs here
        desired = wait_for_query(prom, f"streamherd_operator_desired_replicas{{{sel}}}", 60)
        assert float(desired[0]["value"][1]) >= 1
        decisions = wait_for_query(prom, "streamherd_operator_scaling_decisions_total", 60)
        assert {"reason", "job", "instance"} <= set(decisions[0]["metric"])
        assert prom.query('up{job="streamherd-operator"}')[0]["value"][1] == "1"
    finally:
        if prom is not None:
            prom.stop()
        stop_group(child.pid)
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    assert proc.poll() is not None
