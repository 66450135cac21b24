"""The exported lag is one snapshot: a scrape never shows one refresh's partitions beside
another refresh's total, a revoked partition leaves the total with its series, and a
partition not measured this time keeps its last value in both."""

from __future__ import annotations

import io
import threading

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from streamherd.workers.engine import Engine, PartitionState
from streamherd.workers.lag import StartFrom, partition_lag
from streamherd.workers.metrics import DEPRECATED_LAG_TOTAL, EngineMetrics
from tests.unit.workers.test_worker_input_lost import (
    TOPIC,
    DeletingSource,
    KeptBackend,
    Log,
    worker_config,
)


def scrape(metrics: EngineMetrics) -> tuple[dict[tuple[str, str], float], float]:
    partitions: dict[tuple[str, str], float] = {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == "streamherd_consumer_lag":
                partitions[(sample.labels["topic"], sample.labels["partition"])] = sample.value
            elif sample.name in ("streamherd_worker_consumer_lag", DEPRECATED_LAG_TOTAL):
                totals[sample.name] = sample.value
    # The deprecated name is the same figure from the same snapshot.
    total = totals.get("streamherd_worker_consumer_lag", float("nan"))
    assert totals.get(DEPRECATED_LAG_TOTAL) == total, totals
    return partitions, total


REFRESH = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3)),
    st.none() | st.integers(0, 10**9),
    max_size=8,
)


@given(st.lists(st.one_of(REFRESH, st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3))),
                max_size=12))  # fmt: skip
def test_every_scrape_totals_the_partitions_it_shows(
    steps: list[dict[tuple[str, int], int | None] | tuple[str, int]],
) -> None:
    metrics = EngineMetrics("p")
    last: dict[tuple[str, int], int] = {}
    for step in steps:
        if isinstance(step, dict):
            metrics.set_lag(step)
            last.update({k: v for k, v in step.items() if v is not None})
        else:
            metrics.forget_partition(*step)
            last.pop(step, None)
        partitions, total = scrape(metrics)
        assert partitions == {(t, str(p)): float(v) for (t, p), v in last.items()}
        assert total == sum(last.values())


def test_a_scrape_during_refreshes_sees_one_refresh() -> None:
    """Refreshes whose partitions always add up to a different total than the one before,
    against scrapes in another thread: every scrape must add up."""
    metrics = EngineMetrics("p")
    stop = threading.Event()

    def refresh() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            metrics.set_lag({("t", p): n * (p + 1) for p in range(8)})
            if n % 7 == 0:
                metrics.forget_partition("t", n % 8)

    writer = threading.Thread(target=refresh)
    writer.start()
    try:
        for _ in range(300):
            partitions, total = scrape(metrics)
            assert sum(partitions.values()) == total
    finally:
        stop.set()
        writer.join()


@given(
    st.integers(0, 100),
    st.integers(0, 100),
    st.none() | st.integers(0, 250),
    st.sampled_from(["direct", "upstream", "downstream"]),
    st.sampled_from(["earliest", "latest"]),
)
def test_a_workers_lag_is_the_probes_a_repartition_partition_counted_from_its_beginning(
    low: int, more: int, committed: int | None, role: str, start_from: StartFrom
) -> None:
    """The exported figure follows the operator's probe (workers/lag.py): a repartition
    partition starts at its beginning whatever startFrom says, so under `latest` its records
    with nothing committed yet are lag (they were exported as 0)."""
    log = Log({0: list(range(low + more))}, {0: low})
    source = DeletingSource(threading.Event(), log, chunk=1)
    engine = Engine(
        worker_config(start_from), stop=source.stop, out=io.StringIO(),
        metrics=EngineMetrics("lag"), source=source, state=KeptBackend(),
    )  # fmt: skip
    engine.source = source
    state = PartitionState(TOPIC, 0, committed=committed, role=role)
    probe_from: StartFrom = "earliest" if role == "downstream" else start_from
    assert engine._partition_lag(state) == partition_lag(low, low + more, committed, probe_from)
