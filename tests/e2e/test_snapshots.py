"""Snapshots on request, end to end: the real API server, the operator, the broker and the
workers (local processes started from the pods' specs by the pod mirror).

A StreamPipelineSnapshot is created for a running pipeline: its workers write every
partition at their next checkpoint, the operator lists it Ready with the state fingerprint,
the offsets, the size and the time, in its own status and in the pipeline's. A NEW pipeline
(another name, consumer group, checkpoint volume and sink, `startFrom: latest`) restores it
with `spec.state.restoreFrom` and gives the old pipeline's results: the windows open at the
snapshot come out whole, equal to a reference computed here and to the old pipeline's own
rows. Deleting the snapshot deletes its Kafka topic and unlists it. (A reset listing the
snapshot it keeps is proved in test_lifecycle.py.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException

from streamherd.workers.snapshotting import snapshot_topic
from tests.e2e.test_lifecycle import (
    WINDOW,
    manifest,
    reference,
    rows_of_width,
)
from tests.infra.controlplane import KubeCluster
from tests.infra.e2e_harness import (
    BASE_TS,
    PARTITIONS,
    Namespace,
    PodMirror,
    clicks,
    operator_namespace,
    produce,
    wait_until,
)
from tests.infra.kafka import KafkaBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.kafka,
    pytest.mark.cluster,
    pytest.mark.e2e,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def ns(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Namespace]:
    with operator_namespace(kube_cluster, tmp_path_factory, "snap") as namespace:
        yield namespace


def keyed(doc: dict[str, Any], **kafka: Any) -> dict[str, Any]:
    """The input is partitioned by `user`, the window's key: no repartition topic, so the
    state is per source partition and can move to another pipeline. Idleness is an hour:
    the tests expect the windows open when a snapshot is taken, and at the default 30 s a
    slow run closed them first (a CI run: the reset's snapshot came 31 s after the last
    record, and held no open window)."""
    doc = copy.deepcopy(doc)
    doc["spec"]["source"]["kafka"].update({"keyedBy": "user", "idleTimeout": "1h", **kafka})
    return doc


def test_a_snapshot_on_request_is_listed_and_restores_into_a_new_pipeline(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    old, new, snap = "snap-src", "snap-new", "before-upgrade"
    source = kafka_broker.create_topic(kafka_broker.unique_topic("snap"), partitions=PARTITIONS)
    old_sink = kafka_broker.create_topic(kafka_broker.unique_topic("snap-old"), partitions=2)
    new_sink = kafka_broker.create_topic(kafka_broker.unique_topic("snap-new"), partitions=2)
    bootstrap = kafka_broker.bootstrap

    def caught_up(name: str) -> bool:
        # False while a fresh broker's group coordinator is still moving (NOT_COORDINATOR).
        try:
            committed = kafka_broker.committed(f"{ns.ns}.{name}", source)
        except KafkaException:
            return False
        return committed == kafka_broker.end_offsets(source)

    before = clicks(0, 3000)
    produce(kafka_broker, source, before)
    ns.apply(keyed(manifest(ns, old, source, old_sink, bootstrap, WINDOW)))
    ns.bind_checkpoint_volume(old)
    with PodMirror(ns, old, tmp_path / "old") as old_mirror:
        wait_until("the old pipeline caught up", lambda: caught_up(old), timeout=180)
        running_fp = wait_until(
            "the state fingerprint in status",
            lambda: ns.status(old).get("stateFingerprint"),
            timeout=60,
        )
        ns.apply(
            {
                "apiVersion": "streamherd.io/v1alpha1",
                "kind": "StreamPipelineSnapshot",
                "metadata": {"name": snap, "namespace": ns.ns},
                "spec": {"pipeline": old},
            }
        )
        status = wait_until(
            "the snapshot Ready",
            lambda: (s := (ns.get("streampipelinesnapshot", snap) or {}).get("status") or {})
            .get("phase") == "Ready" and s,
            timeout=120,
        )  # fmt: skip
        # Its own status: the fingerprint the workers run, every partition at the offset
        # of the records before it (the worker was caught up), a size, a time, its topic.
        assert status["fingerprint"] == running_fp
        ends = kafka_broker.end_offsets(source)
        assert {p["partition"]: p["nextOffset"] for p in status["partitions"]} == ends
        assert {p["topic"] for p in status["partitions"]} == {source}
        assert status["partitionCount"] == PARTITIONS and status["sizeBytes"] > 0
        assert status["takenAt"].endswith("Z")
        assert status["topic"] == snapshot_topic(ns.ns, old, snap)
        listing = ns.kubectl("get", "streampipelinesnapshots").stdout
        assert snap in listing and "Ready" in listing and running_fp in listing, listing
        # The pipeline's status lists it too.
        listed = wait_until(
            "the pipeline lists the snapshot",
            lambda: next((s for s in ns.status(old).get("snapshots") or []
                          if s["name"] == snap), None),
            timeout=60,
        )  # fmt: skip
        assert listed["fingerprint"] == running_fp and listed["partitions"] == PARTITIONS
        assert listed["sizeBytes"] == status["sizeBytes"] and listed["time"] == status["takenAt"]

        # The old pipeline goes on; a NEW pipeline restores the snapshot.
        after = clicks(3000, 1500)
        produce(kafka_broker, source, after)
        ns.apply(
            keyed(
                manifest(ns, new, source, new_sink, bootstrap, WINDOW,
                         state={"restoreFrom": snap}),
                startFrom="latest",
            )
        )  # fmt: skip
        ns.bind_checkpoint_volume(new)
        with PodMirror(ns, new, tmp_path / "new") as new_mirror:
            cond = wait_until(
                "the restore reported",
                lambda: (c := ns.condition(new, "StateCompatible")).get("reason")
                == "StateRestored" and c,
                timeout=60,
            )  # fmt: skip
            assert snap in cond["message"]
            wait_until("the new pipeline caught up", lambda: caught_up(new), timeout=180)
            far = [(p, ("zz", {"user": "zz", "bytes": 0, "ts": BASE_TS + 10**9}))
                   for p in range(PARTITIONS)]  # fmt: skip
            produce(kafka_broker, source, far)
            wait_until("both closed every window", lambda: caught_up(new) and caught_up(old),
                       timeout=180)  # fmt: skip
            assert not new_mirror.errors, new_mirror.errors
        assert not old_mirror.errors, old_mirror.errors

        # Deleting the snapshot deletes its topic and unlists it.
        ns.kubectl("delete", "streampipelinesnapshot", snap, "--wait=true", "--timeout=60s")
        wait_until(
            "the snapshot's topic deleted",
            lambda: status["topic"] not in kafka_broker.admin().list_topics(timeout=10).topics,
            timeout=60,
        )
        wait_until(
            "the pipeline no longer lists it",
            lambda: all(s["name"] != snap for s in ns.status(old).get("snapshots") or []),
            timeout=60,
        )

    # The new pipeline's results: per partition, the windows still open at the snapshot
    # (their earlier records from its state) and every later one, whole.
    expected: dict[str, dict[str, int]] = {}
    for p in range(PARTITIONS):
        mine = [r for r in before if r[0] == p]
        open_from = max(rec["ts"] for _, (_, rec) in mine) // 10_000 * 10_000
        expected |= reference(
            [r for r in mine + after if r[0] == p and r[1][1]["ts"] >= open_from], 10_000
        )
    got = rows_of_width(kafka_broker.consume_all(new_sink), 10)
    assert set(got) == set(expected)
    wrong = {k for k, e in expected.items() if (got[k]["clicks"], got[k]["bytes"]) !=
             (e["clicks"], e["bytes"])}  # fmt: skip
    assert not wrong, sorted(wrong)[:5]
    # The old results: the old pipeline computed the same rows for those windows.
    old_rows = rows_of_width(kafka_broker.consume_all(old_sink), 10)
    assert set(got) <= set(old_rows)
    assert all((old_rows[k]["clicks"], old_rows[k]["bytes"]) ==
               (got[k]["clicks"], got[k]["bytes"]) for k in got)  # fmt: skip


def test_a_reset_takes_a_snapshot_resource_first_which_restores_into_a_new_pipeline(
    ns: Namespace, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """A reset (onStateChange: reset) requests a StreamPipelineSnapshot of the running state
    and rolls only once it is Ready: the snapshot holds the old fingerprint and every
    partition at the offsets the old workers had reached. It is listed with `-l
    streamherd.io/pipeline`, in the pipeline's status, and a NEW pipeline restores it and
    gives the old spec's results (decision 0110)."""
    old, new = "reset-src", "reset-new"
    source = kafka_broker.create_topic(kafka_broker.unique_topic("rst"), partitions=PARTITIONS)
    old_sink = kafka_broker.create_topic(kafka_broker.unique_topic("rst-old"), partitions=2)
    new_sink = kafka_broker.create_topic(kafka_broker.unique_topic("rst-new"), partitions=2)
    bootstrap = kafka_broker.bootstrap

    def caught_up(name: str) -> bool:
        try:
            committed = kafka_broker.committed(f"{ns.ns}.{name}", source)
        except KafkaException:
            return False
        return committed == kafka_broker.end_offsets(source)

    before = clicks(0, 3000)
    produce(kafka_broker, source, before)
    ns.apply(keyed(manifest(ns, old, source, old_sink, bootstrap, WINDOW)))
    ns.bind_checkpoint_volume(old)
    with PodMirror(ns, old, tmp_path / "old") as old_mirror:
        wait_until("the old pipeline caught up", lambda: caught_up(old), timeout=180)
        running_fp = wait_until(
            "the state fingerprint in status",
            lambda: ns.status(old).get("stateFingerprint"),
            timeout=60,
        )
        ends = kafka_broker.end_offsets(source)
        # The reset: a new window size, from empty state.
        five = copy.deepcopy(WINDOW) | {"size": "5s"}
        ns.apply(
            keyed(manifest(ns, old, source, old_sink, bootstrap, five, {"onStateChange": "reset"}))
        )
        generation = (ns.get("streampipeline", old) or {})["metadata"]["generation"]
        snap = f"{old}-reset-g{generation}"
        wait_until(
            "the reset reported",
            lambda: ns.condition(old, "StateCompatible").get("reason") == "StateReset",
            timeout=180,
        )
        # By then the snapshot was Ready, of the old state, at the offsets the old workers
        # had reached (nothing was produced meanwhile): taken before the state was dropped.
        status = (ns.get("streampipelinesnapshot", snap) or {}).get("status") or {}
        assert status.get("phase") == "Ready", status
        assert status["fingerprint"] == running_fp
        assert {p["partition"]: p["nextOffset"] for p in status["partitions"]} == ends
        assert snap in ns.condition(old, "StateCompatible")["message"]
        assert "SnapshotRequested" in ns.event_reasons(old)
        assert not old_mirror.errors, old_mirror.errors
        listing = ns.kubectl(
            "get", "streampipelinesnapshots", "-l", f"streamherd.io/pipeline={old}", "-o", "name"
        ).stdout.split()
        assert listing == [f"streampipelinesnapshot.streamherd.io/{snap}"], listing
        owners = (ns.get("streampipelinesnapshot", snap) or {})["metadata"]["ownerReferences"]
        assert [o["name"] for o in owners] == [old]
        listed = [s["name"] for s in ns.status(old).get("snapshots") or []]
        assert snap in listed, listed
        new_fp = ns.status(old)["stateFingerprint"]
        assert new_fp != running_fp

        # A NEW pipeline, under the old spec, restores the reset's snapshot.
        after = clicks(3000, 1500)
        produce(kafka_broker, source, after)
        ns.apply(
            keyed(
                manifest(ns, new, source, new_sink, bootstrap, WINDOW,
                         state={"restoreFrom": snap}),
                startFrom="latest",
            )
        )  # fmt: skip
        ns.bind_checkpoint_volume(new)
        with PodMirror(ns, new, tmp_path / "new") as new_mirror:
            wait_until(
                "the restore reported",
                lambda: ns.condition(new, "StateCompatible").get("reason") == "StateRestored",
                timeout=60,
            )
            wait_until("the new pipeline caught up", lambda: caught_up(new), timeout=180)
            far = [(p, ("zz", {"user": "zz", "bytes": 0, "ts": BASE_TS + 10**9}))
                   for p in range(PARTITIONS)]  # fmt: skip
            produce(kafka_broker, source, far)
            wait_until("the new pipeline closed every window", lambda: caught_up(new),
                       timeout=180)  # fmt: skip
            assert not new_mirror.errors, new_mirror.errors

        # Deleting the pipeline deletes the snapshot it owns, and its topic.
        topic = status["topic"]
        ns.kubectl("delete", "streampipeline", old, "--wait=true", "--timeout=120s")
        wait_until(
            "the reset's snapshot and its topic deleted with the pipeline",
            lambda: (
                ns.get("streampipelinesnapshot", snap) is None
                and topic not in kafka_broker.admin().list_topics(timeout=10).topics
            ),
            timeout=120,
        )

    # The new pipeline's results: per partition, the windows open at the reset (their
    # earlier records from the snapshot) and every later one, whole: the old spec's results.
    expected: dict[str, dict[str, int]] = {}
    for p in range(PARTITIONS):
        mine = [r for r in before if r[0] == p]
        open_from = max(rec["ts"] for _, (_, rec) in mine) // 10_000 * 10_000
        expected |= reference(
            [r for r in mine + after if r[0] == p and r[1][1]["ts"] >= open_from], 10_000
        )
    got = rows_of_width(kafka_broker.consume_all(new_sink), 10)
    assert set(got) == set(expected)
    wrong = {k for k, e in expected.items() if (got[k]["clicks"], got[k]["bytes"]) !=
             (e["clicks"], e["bytes"])}  # fmt: skip
    assert not wrong, sorted(wrong)[:5]
