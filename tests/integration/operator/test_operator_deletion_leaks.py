"""What deleting a pipeline leaves on the broker, against the real control plane, the real
operator (the chart's RBAC) and the real broker (the workers and shadows are pods on the
fake nodes: nothing consumes).

A pipeline deleted while a shadow verification of an edit runs deletes the run's shadow
topics and consumer groups first (decision 0176), retainOnDelete or not: before, nothing
held its deletion, and they stayed on the broker for good.

A pipeline whose spec.state.retainOnDelete is set after a reset keeps the Ready snapshot
that reset took, and its topic, when it is deleted, even in the foreground (decision 0177):
the reconcile takes its owner off and labels it retained once the option is on. Released
only by the deletion's handler, a foreground deletion's garbage collector deleted it first,
and its finalizer its topic: the state lost.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from confluent_kafka import Producer

from streamherd.operator.builders.meta import CONFIG_KEY
from streamherd.operator.builders.shadow import ROLES
from streamherd.workers.checkpointing import Checkpoint
from streamherd.workers.snapshotting import records, snapshot_topic
from tests.infra.kafka import KafkaBroker
from tests.integration.operator.operator_harness import Env, load_example, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.kafka, pytest.mark.slow]


def pipeline_doc(env: Env, broker: KafkaBroker, name: str, source: str) -> dict[str, Any]:
    doc = copy.deepcopy(load_example("02-clicks-per-minute"))
    doc["metadata"] = {"name": name, "namespace": env.ns}
    spec = doc["spec"]
    spec["source"]["kafka"] = {"bootstrapServers": broker.bootstrap, "topics": [source]}
    spec["sink"] = {"stdout": {}}
    spec.pop("deadLetter", None)
    spec["autoscaling"] = {"mode": "none"}
    spec["replicas"] = 1
    spec["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
    return doc


def broker_topics(broker: KafkaBroker) -> set[str]:
    return set(broker.admin().list_topics(timeout=10).topics)


def broker_groups(broker: KafkaBroker) -> set[str]:
    admin = broker.admin()  # kept until the answer: a dropped client fails it (_DESTROY)
    listed = admin.list_consumer_groups(request_timeout=10).result(15)
    return {g.group_id for g in listed.valid}


def events(env: Env, name: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in env.items("events")
        if e["involvedObject"]["name"] == name and e["reason"] == reason
    ]


def test_deleting_a_pipeline_during_its_verification_deletes_the_shadow_topics_and_groups(
    env: Env, kafka_broker: KafkaBroker
) -> None:
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=2)
    name = "verified"
    doc = pipeline_doc(env, kafka_broker, name, source)
    doc["spec"]["upgrade"] = {"verify": {"mode": "shadow", "duration": "1h"}}
    # retainOnDelete keeps the pipeline's state, not a verification's shadows (and without
    # internal topics to delete, nothing else holds the deletion).
    doc["spec"]["state"] = {"retainOnDelete": True}
    env.apply(doc)
    env.wait_condition(name, "Verified", "True", "NothingToVerify", timeout=120)
    wait_until("the workers", lambda: env.get("deployment", name), 60)

    edited = copy.deepcopy(doc)
    edited["spec"]["processor"]["steps"][0]["filter"] = "status < 400"
    env.apply(edited)

    def started() -> dict[str, Any] | None:
        found = env.pipeline(name).get("status", {}).get("verification") or {}
        return found if found.get("startedAt") else None

    run = str(wait_until("the shadows started", started, 120)["run"])
    group = f"{env.ns}.{name}"  # the pipeline's consumer group: <namespace>.<name>
    topics = {f"streamherd.{env.ns}.{name}.shadow.{run}.{role}" for role in ROLES}
    groups = {f"{group}.shadow.{run}.{role}" for role in ROLES}
    assert topics <= broker_topics(kafka_broker)
    assert groups <= broker_groups(kafka_broker)

    env.kubectl("delete", "streampipeline", name, "--wait=false")
    wait_until("the pipeline gone", lambda: env.get("streampipeline", name) is None, 120)
    assert not topics & broker_topics(kafka_broker)
    assert not groups & broker_groups(kafka_broker)
    for role in ROLES:
        assert env.get("deployment", f"{name}-shadow-{role}") is None
    deleted = events(env, name, "ShadowsDeleted")
    assert deleted and run in deleted[0]["message"], deleted


def write_snapshot_as_the_workers_do(env: Env, broker: KafkaBroker, name: str, topic: str) -> None:
    """What the running workers write to a requested snapshot's topic at their next
    checkpoint (no worker runs on these fake nodes): each partition they own."""
    config_map = env.get("configmap", f"{name}-config")
    assert config_map is not None
    config = json.loads(config_map["data"][CONFIG_KEY])
    topics = [*config["source"]["kafka"]["topics"]]
    if (config.get("repartition") or {}).get("topic"):
        topics.append(config["repartition"]["topic"])
    meta = broker.admin().list_topics(timeout=10).topics
    producer = Producer(broker.client_config(acks="all"))
    for source in topics:
        for partition in meta[source].partitions:
            for key, value, headers in records(Checkpoint(source, partition, 0, {})):
                producer.produce(topic, value=value, key=key, headers=list(headers.items()))
    assert producer.flush(30) == 0


def test_retain_on_delete_set_after_a_reset_keeps_its_snapshot_and_topic_under_a_foreground_delete(
    env: Env, kafka_broker: KafkaBroker
) -> None:
    """retainOnDelete set after a reset: the reconcile releases the Ready snapshot at once,
    so a foreground deletion (Argo CD's default), whose garbage collector deletes what the
    pipeline owns at once, finds nothing owned to delete. Before, the release waited for
    the deletion's handler, racing the garbage collector (which could delete the snapshot,
    and its finalizer its topic). The race is timing-dependent: on this control plane the
    handler won it on the code before too, so this checks the outcome on the real API
    server; test_restore_snapshots shows the release the fix makes before the deletion."""
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=2)
    name = "reset-then-kept"
    doc = pipeline_doc(env, kafka_broker, name, source)
    doc["spec"]["upgrade"] = {"onStateChange": "reset"}
    env.apply(doc)

    def workers() -> dict[str, Any] | None:
        dep = env.get("deployment", name)
        return dep if dep and (dep.get("status") or {}).get("replicas") else None

    wait_until("the workers", workers, 120)
    uid = env.pipeline(name)["metadata"]["uid"]

    # A reset (the aggregates reordered): first a snapshot of the running state, owned by
    # the pipeline; its topic is made once deleting the pipeline would deal with it.
    edited = copy.deepcopy(doc)
    edited["spec"]["processor"]["steps"][-1]["window"]["aggregates"].reverse()
    env.apply(edited)
    snap = f"{name}-reset-g2"
    topic = snapshot_topic(env.ns, name, snap)

    def taking() -> dict[str, Any] | None:
        found = env.get("streampipelinesnapshot", snap)
        return found if found and (found.get("status") or {}).get("topic") == topic else None

    owned = wait_until("the reset's snapshot being taken", taking, 120)
    assert [r["uid"] for r in owned["metadata"]["ownerReferences"]] == [uid]
    write_snapshot_as_the_workers_do(env, kafka_broker, name, topic)

    def ready() -> dict[str, Any] | None:
        found = env.get("streampipelinesnapshot", snap)
        return found if found and (found.get("status") or {}).get("phase") == "Ready" else None

    wait_until("the reset's snapshot Ready", ready, 120)

    # retainOnDelete set now, and seen by the operator, then the pipeline deleted in the
    # foreground at once.
    retained = copy.deepcopy(edited)
    retained["spec"]["state"] = {"retainOnDelete": True}
    env.apply(retained)
    wait_until(
        "the operator saw retainOnDelete",
        lambda: env.pipeline(name).get("status", {}).get("observedGeneration") == 3,
        60,
    )
    env.kubectl("delete", "streampipeline", name, "--cascade=foreground", "--wait=false")
    wait_until("the pipeline gone", lambda: env.get("streampipeline", name) is None, 120)

    # The state it kept: the snapshot, with no owner and labelled retained (the garbage
    # collector left it), and its topic on the broker.
    kept = env.get("streampipelinesnapshot", snap)
    assert kept is not None, "the snapshot retainOnDelete keeps was deleted"
    assert not kept["metadata"].get("deletionTimestamp"), kept["metadata"]
    assert not kept["metadata"].get("ownerReferences"), kept["metadata"]
    assert kept["metadata"]["labels"]["streamherd.io/retained"] == "true", kept["metadata"]
    assert topic in broker_topics(kafka_broker)
    said = events(env, name, "SnapshotsKept")
    assert said and snap in said[0]["message"], said
