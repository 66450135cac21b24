"""The operator's internal topics against the real control plane, the real operator (the
chart's RBAC) and the real broker.

A pipeline that re-keys (window keyed by page, source keyed by user) with the kafka state
backend has two internal topics; the operator creates them on the source's cluster with the
source topics' most partitions and the configuration each needs, lists them in status, and
deletes them with the pipeline unless spec.state.retainOnDelete keeps them. A topic that
exists but differs is reported and left alone; an unreachable broker is a condition, not a
crash, and never holds up a deletion. `streamherd render` output with the topics' comment
block is accepted by the API server (server-side dry run).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewPartitions

from tests.infra.kafka import KafkaBroker
from tests.infra.processes import free_port
from tests.integration.operator.operator_harness import Env, load_example, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.kafka, pytest.mark.slow]

WEEK_MS = str(7 * 24 * 3600 * 1000)


def topics_pipeline(
    env: Env, broker: KafkaBroker, sources: list[str], *, retain: bool = False
) -> dict[str, Any]:
    doc = copy.deepcopy(load_example("02-clicks-per-minute"))
    doc["metadata"] = {"name": "clicks-topics", "namespace": env.ns}
    spec = doc["spec"]
    spec["source"]["kafka"] = {"bootstrapServers": broker.bootstrap, "topics": sources}
    spec["sink"] = {"stdout": {}}
    spec.pop("deadLetter", None)
    spec["checkpoint"] = {"interval": "10s", "backend": "kafka",
                          # ReadWriteOnce with up to 8 workers: fine without a volume.
                          "volume": {"accessModes": ["ReadWriteOnce"]}}  # fmt: skip
    spec["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
    if retain:
        spec["state"] = {"retainOnDelete": True}
    return doc


def names(env: Env, name: str) -> tuple[str, str]:
    prefix = f"streamherd.{env.ns}.{name}"
    return f"{prefix}.repartition", f"{prefix}.changelog"


def broker_topics(broker: KafkaBroker) -> dict[str, int]:
    md = broker.admin().list_topics(timeout=10)
    return {n: len(t.partitions) for n, t in md.topics.items() if t.error is None}


def topic_config(broker: KafkaBroker, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = broker.admin()  # kept: a dropped client fails its futures (_DESTROY)
    entries = admin.describe_configs([resource])[resource].result(10)
    return {k: str(v.value) for k, v in entries.items()}


def events(env: Env, name: str) -> list[dict[str, Any]]:
    return [e for e in env.items("events") if e["involvedObject"]["name"] == name]


def test_topics_are_created_listed_and_deleted_with_the_pipeline(
    env: Env, kafka_broker: KafkaBroker
) -> None:
    small = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=3)
    big = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=5)
    doc = topics_pipeline(env, kafka_broker, [small, big])
    name = doc["metadata"]["name"]
    repartition, changelog = names(env, name)
    env.apply(doc)

    cond = env.wait_condition(name, "TopicsReady", "True", timeout=120)
    assert repartition in cond["message"] and changelog in cond["message"]
    found = broker_topics(kafka_broker)
    assert found[repartition] == 5 and found[changelog] == 5  # the source topics' most
    repartition_config = topic_config(kafka_broker, repartition)
    assert repartition_config["cleanup.policy"] == "delete"
    assert repartition_config["retention.ms"] == WEEK_MS
    assert topic_config(kafka_broker, changelog)["cleanup.policy"] == "compact"

    status = env.pipeline(name)["status"]
    assert status["internalTopics"] == [
        {"name": repartition, "purpose": "repartition", "partitions": 5,
         "config": {"cleanup.policy": "delete", "retention.ms": WEEK_MS}},
        {"name": changelog, "purpose": "changelog", "partitions": 5,
         "config": {"cleanup.policy": "compact"}},
    ]  # fmt: skip
    # The kafka backend: no claim, no checkpoint mount, rolling updates.
    assert env.get("persistentvolumeclaim", f"{name}-checkpoints") is None
    dep = wait_until("the Deployment", lambda: env.get("deployment", name))
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert all("persistentVolumeClaim" not in v for v in dep["spec"]["template"]["spec"]["volumes"])
    config = yaml.safe_load(env.get("configmap", f"{name}-config")["data"]["worker.json"])  # type: ignore[index]
    assert config["checkpoint"]["changelog"]["topic"] == changelog
    created = " ".join(e["message"] for e in events(env, name) if e["reason"] == "TopicCreated")
    assert repartition in created and changelog in created

    # Owned by the pipeline: the finalizer holds the deletion until the topics are gone, and
    # the topics go only once the workers have (one still writing would create them again on
    # a broker that auto-creates topics): whenever a topic is seen gone, so is the Deployment.
    wait_until("the finalizer", lambda: env.pipeline(name)["metadata"].get("finalizers"))
    env.kubectl("delete", "streampipeline", name, "--wait=false")
    workers_when_gone: list[object] = []

    def topics_gone() -> dict[str, int] | None:
        left = broker_topics(kafka_broker)
        if repartition in left and changelog in left:
            return None
        workers_when_gone.append(env.get("deployment", name))
        return left if repartition not in left and changelog not in left else None

    gone = wait_until("the internal topics gone from the metadata", topics_gone, 120)
    assert workers_when_gone and all(d is None for d in workers_when_gone), workers_when_gone
    wait_until("the pipeline gone", lambda: env.get("streampipeline", name) is None, 60)
    assert small in gone and big in gone  # the source topics are never the operator's
    deleted = [e for e in events(env, name) if e["reason"] == "TopicsDeleted"]
    assert deleted and repartition in deleted[0]["message"] and changelog in deleted[0]["message"]


def test_retain_on_delete_keeps_the_topics_for_a_pipeline_created_again(
    env: Env, kafka_broker: KafkaBroker
) -> None:
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=2)
    doc = topics_pipeline(env, kafka_broker, [source], retain=True)
    name = doc["metadata"]["name"]
    repartition, changelog = names(env, name)
    env.apply(doc)
    env.wait_condition(name, "TopicsReady", "True", timeout=120)
    kafka_broker.produce(changelog, [("k", "state")])  # something a re-created one resumes
    assert not env.pipeline(name)["metadata"].get("finalizers")
    env.kubectl("delete", "streampipeline", name, "--wait=true", "--timeout=60s")
    kept = broker_topics(kafka_broker)
    assert kept.get(repartition) == 2 and kept.get(changelog) == 2
    # Created again: the same topics are adopted as they are, not made anew.
    env.apply(doc)
    env.wait_condition(name, "TopicsReady", "True", timeout=120)
    assert [r.value for r in kafka_broker.consume_all(changelog)] == [b"state"]
    uid = env.pipeline(name)["metadata"]["uid"]
    assert not [
        e
        for e in events(env, name)
        if e["reason"] == "TopicCreated" and e["involvedObject"].get("uid") == uid
    ]
    assert env.pipeline(name)["status"]["internalTopics"][1]["partitions"] == 2


def test_a_topic_that_differs_is_reported_and_left_alone(
    env: Env, kafka_broker: KafkaBroker
) -> None:
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=4)
    doc = topics_pipeline(env, kafka_broker, [source])
    name = doc["metadata"]["name"]
    repartition, changelog = names(env, name)
    # Made by hand before: too few partitions, and a changelog that is not compacted.
    kafka_broker.create_topic(repartition, partitions=2)
    kafka_broker.create_topic(changelog, partitions=4, config={"cleanup.policy": "delete"})
    kafka_broker.produce(changelog, [("k", "v")])
    env.apply(doc)

    cond = env.wait_condition(name, "TopicsReady", "False", "TopicMismatch", timeout=120)
    assert f"{repartition} has 2 partitions, the source topics' most is 4" in cond["message"]
    assert f"{changelog} has cleanup.policy=delete, the operator sets compact" in cond["message"]
    degraded = env.wait_condition(name, "Degraded", "True", "TopicMismatch")
    assert repartition in degraded["message"]
    # Not recreated: same partitions, same data.
    assert broker_topics(kafka_broker)[repartition] == 2
    assert [r.value for r in kafka_broker.consume_all(changelog)] == [b"v"]
    assert env.operator.alive()
    # Fixed with Kafka's tools, which is safe here only because no worker has put state in
    # them yet (the advice never has a count changed under state): the operator's next try
    # (its backoff) finds it right, and creates the changelog deleted meanwhile as it should be.
    assert "do not add partitions to" in cond["message"]
    admin = kafka_broker.admin()
    admin.create_partitions([NewPartitions(repartition, 4)])[repartition].result(10)
    kafka_broker.delete_topic(changelog)
    env.wait_condition(name, "TopicsReady", "True", timeout=150)
    env.wait_condition(name, "Degraded", "False")
    assert topic_config(kafka_broker, changelog)["cleanup.policy"] == "compact"
    assert broker_topics(kafka_broker)[repartition] == 4


def test_fewer_partitions_alone_are_ready_with_advice_and_not_degraded(
    env: Env, kafka_broker: KafkaBroker
) -> None:
    """The advice for a repartition topic with fewer partitions than its source is to leave
    it (its count decides where the state lives), so following it must not leave the
    pipeline Degraded: TopicsReady stays True, reason FewerPartitions, with the advice."""
    source = kafka_broker.create_topic(kafka_broker.unique_topic("src"), partitions=4)
    doc = topics_pipeline(env, kafka_broker, [source])
    name = doc["metadata"]["name"]
    repartition, changelog = names(env, name)
    kafka_broker.create_topic(
        repartition,
        partitions=2,
        config={"cleanup.policy": "delete", "retention.ms": WEEK_MS},
    )
    env.apply(doc)
    cond = env.wait_condition(name, "TopicsReady", "True", "FewerPartitions", timeout=120)
    assert f"{repartition} has 2 partitions, the source topics' most is 4" in cond["message"]
    assert f"do not add partitions to {repartition}" in cond["message"]
    assert "the windows run on at most 2 workers" in cond["message"]
    assert wait_until("the Deployment", lambda: env.get("deployment", name))
    degraded = env.wait_condition(name, "Degraded", "False")
    assert repartition not in degraded.get("message", "")
    assert broker_topics(kafka_broker)[repartition] == 2  # left as it is
    assert broker_topics(kafka_broker)[changelog] == 4  # the other one made as usual
    assert env.operator.alive()


def test_an_unreachable_broker_is_a_condition_and_holds_up_nothing(env: Env) -> None:
    doc = copy.deepcopy(load_example("02-clicks-per-minute"))
    doc["metadata"] = {"name": "clicks-nowhere", "namespace": env.ns}
    doc["spec"]["source"]["kafka"]["bootstrapServers"] = f"127.0.0.1:{free_port()}"
    name = doc["metadata"]["name"]
    env.apply(doc)
    cond = env.wait_condition(name, "TopicsReady", "False", "BrokerUnreachable", timeout=120)
    assert "127.0.0.1" in cond["message"]
    # The workers are applied all the same, and the operator is alive and well.
    assert wait_until("the Deployment", lambda: env.get("deployment", name))
    assert env.operator.alive()
    listed = env.pipeline(name)["status"]["internalTopics"]
    assert [t["name"] for t in listed] == [names(env, name)[0]] and "partitions" not in listed[0]
    # Never seen on a broker: nothing to delete, so no finalizer holds the deletion up.
    assert not env.pipeline(name)["metadata"].get("finalizers")
    env.kubectl("delete", "streampipeline", name, "--wait=true", "--timeout=30s")
    assert env.operator.alive()
    assert "Traceback" not in env.operator.log_text()


def test_rendered_output_with_the_topics_is_valid_for_kubectl(env: Env, tmp_path: Any) -> None:
    doc = copy.deepcopy(load_example("02-clicks-per-minute"))
    doc["spec"]["checkpoint"]["backend"] = "kafka"
    # This cluster serves no monitoring.coreos.com: leave those two out of the render.
    doc["spec"]["monitoring"] = {"serviceMonitor": False, "prometheusRule": False}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "streamherd"), "render", str(path),
         "--namespace", env.ns],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.startswith("# Kafka topics the operator creates")
    assert f"streamherd.{env.ns}.clicks-per-minute.changelog" in out
    applied = env.kubectl("apply", "--dry-run=server", "-f", "-", input=out)
    assert "configmap/clicks-per-minute-config" in applied.stdout
