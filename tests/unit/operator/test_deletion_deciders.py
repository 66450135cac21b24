"""Every decision of a pipeline's deletion reads spec.state.retainOnDelete alike, whatever
shape the stored spec has (a spec.state of another type, a retainOnDelete that is no
boolean: stored before a CRD change; the API server does not check stored objects again).
Before, the delete-topics handler parsed the whole spec and, when it did not parse, kept the
internal topics, while the delete-snapshots handler read the raw object and deleted the
snapshots: the state half kept and half deleted. Now each reads
``builders.snapshot.retains_on_delete`` (a value that cannot be read keeps the state:
deleted state cannot be brought back), and what a deletion deletes on Kafka is reached
through the spec's source alone (``validation.deletion_pipeline``)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from streamherd.operator.api.snapshot import SNAPSHOT_API_VERSION, SNAPSHOT_KIND
from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.meta import FINALIZER, RETAINED_LABEL
from streamherd.operator.builders.snapshot import build_state_snapshot, retains_on_delete
from streamherd.operator.builders.topics import all_internal_names
from streamherd.operator.handlers import needs_topic_cleanup
from streamherd.operator.kafkaadmin import KafkaAdmin
from streamherd.operator.kafkaclusters import cluster_from_secrets
from streamherd.operator.reconciler import release_state_snapshots
from streamherd.operator.snapshots import delete_topic
from streamherd.operator.validation import deletion_pipeline
from streamherd.workers.snapshotting import snapshot_topic
from tests.infra.manifest_strategies import HOSTILE_VALUES, mutated_manifests
from tests.unit.operator.kopfhandlers import REGISTRY, run_deletion_handler
from tests.unit.operator.operator_testkit import FakeKube, body_of, example_doc, pipeline_from
from tests.unit.operator.test_restore_snapshots import RecordingAdmin

NAME = "clicks-per-minute"
TOPIC = f"streamherd.default.{NAME}.repartition"
MISSING = object()

#: spec.state as stored: of any type, or a mapping whose retainOnDelete is of any type.
STATES = st.one_of(
    st.just(MISSING),
    st.sampled_from(HOSTILE_VALUES),
    st.sampled_from([*HOSTILE_VALUES, True, MISSING]).map(
        lambda v: {} if v is MISSING else {"retainOnDelete": v}
    ),
)


class RecordingTopics:
    """The operator's InternalTopics as the delete-topics handler calls it."""

    def __init__(self) -> None:
        self.deleted: list[str] = []

    def delete(self, pipeline: StreamPipeline) -> list[str]:
        self.deleted.append(f"{pipeline.namespace}/{pipeline.name}")
        return [TOPIC]


def stored_pipeline(state: Any) -> tuple[FakeKube, str]:
    """The pipeline with `state`, holding the finalizer, its status listing an internal
    topic and a Ready snapshot of a reset that it owns; (the fake server, the snapshot)."""
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    uid = str(kube.put(doc)["metadata"]["uid"])
    snap = build_state_snapshot(pipeline_from(doc, uid=uid), "reset", 2)
    kube.put({**snap, "status": {"phase": "Ready", "fingerprint": "f"}})
    body = body_of(kube, NAME)
    if state is MISSING:
        body["spec"].pop("state", None)
    else:
        body["spec"]["state"] = copy.deepcopy(state)
    body["metadata"]["finalizers"] = [FINALIZER]
    kube.patch_status("default", NAME, {
        "snapshots": [{"name": snap["metadata"]["name"], "fingerprint": "f", "partitions": 1}],
        "internalTopics": [{"name": TOPIC, "purpose": "repartition", "partitions": 3}],
    })  # fmt: skip
    return kube, str(snap["metadata"]["name"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(state=STATES)
@example(state="retain")
@example(state={"retainOnDelete": "true"})
@example(state={"retainOnDelete": True})
def test_every_decider_of_a_deletion_keeps_or_deletes_alike(state: Any) -> None:
    kube, snap = stored_pipeline(state)
    body = body_of(kube, NAME)
    retains = retains_on_delete(body)
    # Only an explicit false (or nothing) deletes: a value that cannot be read keeps.
    deletes = (
        state is MISSING
        or state is None
        or (
            isinstance(state, dict)
            and any(state.get("retainOnDelete") is v for v in (False, None))  # 0 keeps
        )
    )
    assert retains is not deletes
    # What reaches Kafka for the deletion (the topics, each snapshot's topic) whatever the
    # state's shape: the source alone.
    assert deletion_pipeline(body) is not None
    # The reconcile's release of the snapshots (decision 0177 §4).
    released, _ = release_state_snapshots(copy.deepcopy(body), copy.deepcopy(kube))
    assert bool(released) is retains
    # delete-topics: its filter (the finalizer) and the handler itself.
    assert needs_topic_cleanup(body) is not retains
    topics = RecordingTopics()
    (handler,) = [h for h in REGISTRY._changing.get_all_handlers() if h.id == "delete-topics"]
    if handler.when is not None and handler.when(body=body):
        run_deletion_handler(kube, "delete-topics", NAME, topics=topics)
    assert bool(topics.deleted) is not retains, (state, topics.deleted)
    # delete-snapshots: the snapshot deleted, or kept (no owner, labelled retained).
    run_deletion_handler(kube, "delete-snapshots", NAME, filtered=True)
    found = kube.get(SNAPSHOT_API_VERSION, SNAPSHOT_KIND, "default", snap)
    if retains:
        assert found is not None and found["metadata"]["labels"].get(RETAINED_LABEL) == "true"
        assert not found["metadata"].get("ownerReferences")
    else:
        assert f"{SNAPSHOT_KIND}/{snap}" in kube.deletes, (state, kube.deletes)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


#: The examples with a Kafka source (one with SASL and TLS through Secrets), valid.
KAFKA_BASES = {
    doc["metadata"]["name"]: doc
    for doc in map(example_doc, ("02-clicks-per-minute", "03-orders-secure"))
}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated_manifests(list(KAFKA_BASES.values()), under=("spec",)))
@example(doc={**KAFKA_BASES[NAME], "spec": {**KAFKA_BASES[NAME]["spec"], "state": "retain"}})
def test_a_deletion_reaches_only_what_the_valid_pipeline_made(doc: dict[str, Any]) -> None:
    """A stored spec edited anywhere but its source (so it may no longer parse): what a
    deletion reaches on Kafka through ``deletion_pipeline`` is what the pipeline made while
    its spec was valid, never a guess: the same namespace and name (which name the internal
    topics, the shadows' topics and each snapshot's topic), the same consumer group (the
    shadows' groups), the same source and the same cluster with the same credentials. And
    a snapshot's topic is deleted through it (before decision 0189 the snapshot's finalizer
    read the whole spec and left the topic of a spec that did not parse)."""
    base = KAFKA_BASES[doc["metadata"]["name"]]
    spec = doc.get("spec")
    assume(isinstance(spec, dict) and spec.get("source") == base["spec"]["source"])
    kube = FakeKube()
    kube.secrets[("default", "kafka-orders-user")] = {"username": b64("u"), "password": b64("p")}
    kube.secrets[("default", "kafka-cluster-ca")] = {"ca.crt": b64("CA")}
    stored = kube.put(doc)
    valid = pipeline_from(base, namespace="default", uid=stored["metadata"]["uid"])
    got = deletion_pipeline(stored)
    assert got is not None
    assert (got.namespace, got.name, got.consumer_group, got.spec.source) == (
        valid.namespace, valid.name, valid.consumer_group, valid.spec.source,
    )  # fmt: skip
    assert all_internal_names(got) == all_internal_names(valid)
    assert cluster_from_secrets(kube, got) == cluster_from_secrets(kube, valid)
    admin = RecordingAdmin()
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(KafkaAdmin, "connect", admin.connect)
        assert delete_topic(kube, "default", "snap", {"pipeline": valid.name}, {}) is None
    assert admin.deleted == [snapshot_topic("default", valid.name, "snap")]


def test_topics_not_deleted_names_the_topics_and_nothing_of_the_spec() -> None:
    """A stored spec whose source no longer parses (a bootstrapServers of another type,
    next to SASL settings): the delete-topics handler cannot reach the broker and says so
    in a TopicsNotDeleted warning naming the topics status lists, and no value of the spec
    (a spec may hold what must never reach an event)."""
    kube, _snap = stored_pipeline(MISSING)
    body = body_of(kube, NAME)
    source = body["spec"]["source"]["kafka"]
    source["bootstrapServers"] = {"secret": "hunter2-in-a-dsn"}
    source["auth"] = {"sasl": {"mechanism": "PLAIN", "password": "hunter2"}}
    assert deletion_pipeline(body) is None
    topics = RecordingTopics()
    run_deletion_handler(kube, "delete-topics", NAME, filtered=True, topics=topics)
    assert topics.deleted == []
    (event,) = [e for e in kube.events if e.get("reason") == "TopicsNotDeleted"]
    assert event["type"] == "Warning" and TOPIC in event["message"]
    assert "hunter2" not in json.dumps(event)
