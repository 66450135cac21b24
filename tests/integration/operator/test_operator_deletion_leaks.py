"""What deleting a pipeline leaves on the broker, against the real control plane, the real
operator (the chart's RBAC) and the real broker (the workers and shadows are pods on the
fake nodes: nothing consumes).

A pipeline deleted while a shadow verification of an edit runs deletes the run's shadow
topics and consumer groups first (decision 0176), retainOnDelete or not: before, nothing
held its deletion, and they stayed on the broker for good.

A pipeline whose spec.state.retainOnDelete is set after a reset keeps the snapshot that
reset took, and its topic, when it is deleted (decision 0177): the deletion takes its owner
off and labels it retained. Before, setting the option took the pipeline's finalizer away,
the garbage collector deleted the snapshot after the pipeline, and its finalizer, without
the pipeline's credentials, left its topic on the broker with nothing that names it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from streamherd.operator.builders.shadow import ROLES
from streamherd.workers.snapshotting import snapshot_topic
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


def test_retain_on_delete_set_after_a_reset_keeps_its_snapshot_and_topic(
    env: Env, kafka_broker: KafkaBroker
) -> None:
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
    # the pipeline; its topic is made once deleting the pipeline would deal with it. (No
    # worker runs on these nodes, so it stays Taking.)
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
    assert topic in broker_topics(kafka_broker)

    # retainOnDelete set now, and seen by the operator, then the pipeline deleted.
    retained = copy.deepcopy(edited)
    retained["spec"]["state"] = {"retainOnDelete": True}
    env.apply(retained)
    wait_until(
        "the operator saw retainOnDelete",
        lambda: env.pipeline(name).get("status", {}).get("observedGeneration") == 3,
        60,
    )
    env.kubectl("delete", "streampipeline", name, "--wait=false")
    wait_until("the pipeline gone", lambda: env.get("streampipeline", name) is None, 120)

    # The state it kept: the snapshot, now with no owner and labelled retained (the garbage
    # collector leaves it), and its topic on the broker.
    kept = env.get("streampipelinesnapshot", snap)
    assert kept is not None, "the snapshot retainOnDelete keeps was deleted"
    assert not kept["metadata"].get("ownerReferences"), kept["metadata"]
    assert kept["metadata"]["labels"]["streamherd.io/retained"] == "true", kept["metadata"]
    assert topic in broker_topics(kafka_broker)
    said = events(env, name, "SnapshotsKept")
    assert said and snap in said[0]["message"], said
