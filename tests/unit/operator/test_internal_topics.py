"""The internal topics and the Kafka state backend, the pure parts.

Builders (the kafka backend has no claim and no mount and rolls; its WorkerConfig names the
changelog; the volume backend renders what it always did), the topic specs, render's comment
block, the admin module's pure checks (partitions of the source, what is wrong with an
existing topic, the backoff), the backend switch as an upgrade decision, and the reconciler
with a stand-in for the broker side (status, TopicsReady, events, a held edit). The broker
side runs against the real broker in tests/integration/test_topicadmin.py and
tests/integration/operator/test_operator_internal_topics.py.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from streamherd.operator import kafkaadmin
from streamherd.operator.api.v1alpha1 import StreamPipeline, Upgrade
from streamherd.operator.builders import Capabilities, build_all
from streamherd.operator.builders.meta import CHECKPOINT_DIR, CONFIG_KEY
from streamherd.operator.builders.topics import (
    REPARTITION_RETENTION_MS,
    TopicSpec,
    internal_topics,
    render_comment,
)
from streamherd.operator.lagprobe import ClusterConfig
from streamherd.operator.reconciler import (
    TOPICS,
    WORKERS_STOP_MARGIN_SECONDS,
    ReconcileMemo,
    reconcile,
    stop_workers,
)
from streamherd.operator.rendering import render_files
from streamherd.operator.topicadmin import (
    BACKOFF_MAX,
    BACKOFF_START,
    InternalTopics,
    TopicsReport,
    TopicState,
    backoff,
    source_partitions,
    topic_problems,
)
from streamherd.operator.upgrades import (
    STATE_COMPATIBLE,
    config_backend,
    config_group,
    decide,
    state_epoch,
)
from streamherd.operator.validation import semantic_errors
from streamherd.workers import changelog as changelog_backend
from streamherd.workers.config import ProcessorConfig, WorkerConfig
from streamherd.workers.fingerprint import describe, fingerprint, snapshot_name
from tests.unit.operator.operator_testkit import (
    SETTINGS,
    FakeKube,
    body_of,
    example_doc,
    pipeline_from,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NAME = "clicks-per-minute"
REPARTITION = f"streamherd.default.{NAME}.repartition"
CHANGELOG = f"streamherd.default.{NAME}.changelog"


def kafka_backend(doc: dict[str, Any], access: list[str] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"].setdefault("checkpoint", {})["backend"] = "kafka"
    if access is not None:
        doc["spec"]["checkpoint"].setdefault("volume", {})["accessModes"] = access
    return doc


def children_of(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pipeline = pipeline_from(doc, namespace="default", uid="u-1")
    built = build_all(pipeline, SETTINGS, secrets_hash="h", capabilities=Capabilities())
    return {c["kind"]: c for c in built}


def worker_config(children: dict[str, dict[str, Any]]) -> WorkerConfig:
    return WorkerConfig.model_validate_json(children["ConfigMap"]["data"][CONFIG_KEY])


# --------------------------------------------------------------------------- builders


def test_the_kafka_backend_has_no_claim_no_mount_and_names_its_changelog() -> None:
    # ReadWriteOnce with eight workers: refused for a volume, fine without one.
    doc = kafka_backend(example_doc("02-clicks-per-minute"), access=["ReadWriteOnce"])
    pipeline = pipeline_from(doc, namespace="default")
    assert semantic_errors(pipeline) == []
    kids = children_of(doc)
    assert "PersistentVolumeClaim" not in kids
    pod = kids["Deployment"]["spec"]["template"]["spec"]
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])
    assert all(m["mountPath"] != CHECKPOINT_DIR for m in pod["containers"][0]["volumeMounts"])
    # No volume to attach to one node: a new worker may start before an old one stops.
    assert kids["Deployment"]["spec"]["strategy"]["type"] == "RollingUpdate"
    changelog = worker_config(kids).checkpoint.changelog
    assert changelog is not None and changelog.topic == CHANGELOG
    assert changelog.partitions is None  # the operator creates it; the worker reads it


def test_the_volume_backend_renders_what_it_always_did() -> None:
    base = example_doc("02-clicks-per-minute")
    explicit = copy.deepcopy(base)
    explicit["spec"].setdefault("checkpoint", {})["backend"] = "volume"
    assert children_of(explicit) == children_of(base)
    kids = children_of(base)
    assert "PersistentVolumeClaim" in kids
    assert "changelog" not in kids["ConfigMap"]["data"][CONFIG_KEY]


def test_the_kafka_backend_needs_a_kafka_source() -> None:
    doc = kafka_backend(example_doc("01-clicks-local"))
    problems = semantic_errors(pipeline_from(doc, namespace="default"))
    assert problems == [
        "spec.checkpoint.backend: checkpoint.backend kafka needs a Kafka source (the changelog "
        "topic lives on the source's cluster); use backend volume with a generator"
    ]


def test_the_topics_a_pipeline_uses() -> None:
    repartitioned = pipeline_from(example_doc("02-clicks-per-minute"), namespace="default")
    assert internal_topics(repartitioned) == [
        TopicSpec(
            REPARTITION,
            "repartition",
            {"cleanup.policy": "delete", "retention.ms": str(REPARTITION_RETENTION_MS)},
        )
    ]
    both = pipeline_from(kafka_backend(example_doc("02-clicks-per-minute")), namespace="default")
    assert [(t.name, t.purpose, t.config) for t in internal_topics(both)] == [
        (REPARTITION, "repartition", {"cleanup.policy": "delete", "retention.ms": "604800000"}),
        (CHANGELOG, "changelog", {"cleanup.policy": "compact"}),
    ]
    # The changelog is created with the worker's own settings (hourly segments, which bound
    # a restore); only its cleanup.policy is judged afterwards. Before, the operator made it
    # with cleanup.policy alone: Kafka's 7-day segments, a week of deltas for a restore.
    changelog = internal_topics(both)[1]
    assert changelog.created_with == dict(changelog_backend.TOPIC_CONFIG)
    assert changelog.created_with["segment.ms"] == "3600000"
    assert set(changelog.tuning).isdisjoint(changelog.config)
    # The worker makes the same topic when it runs without an operator (streamherd run).
    rendered = worker_config(children_of(example_doc("02-clicks-per-minute"))).repartition
    assert rendered is not None and rendered.topic == REPARTITION
    assert rendered.retention_ms == REPARTITION_RETENTION_MS
    local = pipeline_from(example_doc("01-clicks-local"), namespace="default")
    assert internal_topics(local) == []


# --------------------------------------------------------------------------- render


def test_render_lists_the_topics_in_a_comment_and_stays_valid_yaml(tmp_path: Any) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(kafka_backend(example_doc("02-clicks-per-minute"))))
    out, err = io.StringIO(), io.StringIO()
    assert render_files([str(path)], "default", None, out, err) == 0, err.getvalue()
    text = out.getvalue()
    head = text.split("\n---", 1)[0].splitlines()
    comments = [line for line in head if line.startswith("#")]
    assert any(REPARTITION in line for line in comments)
    assert any(CHANGELOG in line for line in comments)
    assert any("cleanup.policy=compact" in line for line in comments)
    assert any("retention.ms=604800000" in line for line in comments)
    assert any("created with:" in line and "segment.ms=3600000" in line for line in comments)
    # What kubectl reads: the same objects as without the comment.
    docs = [d for d in yaml.safe_load_all(text) if d]
    pipeline = pipeline_from(kafka_backend(example_doc("02-clicks-per-minute")),
                             namespace="default")  # fmt: skip
    built = build_all(pipeline, SETTINGS, secrets_hash="offline-render",
                      capabilities=Capabilities())  # fmt: skip
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        (d["kind"], d["metadata"]["name"]) for d in built
    ]


def test_render_has_no_comment_without_internal_topics() -> None:
    local = pipeline_from(example_doc("01-clicks-local"), namespace="default")
    assert render_comment(local) == ""
    kept = copy.deepcopy(example_doc("02-clicks-per-minute"))
    kept["spec"]["state"] = {"retainOnDelete": True}
    assert "kept when the pipeline is deleted" in render_comment(
        pipeline_from(kept, namespace="default")
    )


# --------------------------------------------------------------------------- admin checks


def test_partitions_are_the_source_topics_most() -> None:
    metadata = {"clicks": 3, "clicks-eu": 6, "views": 12, "other": 24}
    assert source_partitions(["clicks"], metadata) == 3
    assert source_partitions(["clicks", "views"], metadata) == 12
    assert source_partitions(["^clicks.*"], metadata) == 6
    assert source_partitions(["missing"], metadata) is None
    assert source_partitions(["missing", "clicks"], metadata) == 3


@given(
    partitions=st.integers(1, 64),
    wanted=st.integers(1, 64),
    policy=st.sampled_from(["delete", "compact", "compact,delete", None]),
)
def test_an_existing_topic_is_reported_exactly_when_it_differs(
    partitions: int, wanted: int, policy: str | None
) -> None:
    spec = TopicSpec("t", "changelog", {"cleanup.policy": "compact"})
    config = {} if policy is None else {"cleanup.policy": policy}
    problems = topic_problems(spec, partitions, wanted, config)
    assert bool(problems) == (partitions < wanted or policy != "compact")
    assert all(p.startswith("t ") for p in problems)


class ExistingTopics:
    """The broker's answers to InternalTopics._ensure: every topic exists already."""

    def __init__(self, partitions: dict[str, int], configs: dict[str, dict[str, str]]) -> None:
        self.partitions, self.configs = partitions, configs

    def topics(self, names: Any = None) -> dict[str, int]:
        return {n: c for n, c in self.partitions.items() if names is None or n in names}

    def create_topics(self, topics: Any) -> set[str]:
        raise AssertionError("an existing topic is never created again")

    def topic_configs(self, names: Any) -> dict[str, dict[str, str]]:
        return {n: self.configs.get(n, {}) for n in names}


@given(
    source=st.integers(2, 64),
    fewer=st.sets(st.sampled_from(["repartition", "changelog"])),
    misconfigured=st.booleans(),
)
def test_a_mismatch_never_advises_a_partition_count_change_under_state(
    source: int, fewer: set[str], misconfigured: bool
) -> None:
    """A source that grew leaves the internal topics with fewer partitions than its most.
    Adding partitions to them would move keys to other window state (a key's repartition
    partition, a source partition's changelog partition: CRC-32 or number modulo the count):
    the advice is to leave them (the workers use the count a topic has) or start over
    under a new name, never `kafka-topics --alter`; a configuration is set with
    kafka-configs."""
    specs = [
        TopicSpec(REPARTITION, "repartition", {"cleanup.policy": "delete", "retention.ms": "1"}),
        TopicSpec(CHANGELOG, "changelog", {"cleanup.policy": "compact"}),
    ]
    counts = {s.name: source - 1 if s.purpose in fewer else source for s in specs}
    configs = {s.name: dict(s.config) for s in specs}
    if misconfigured:
        configs[REPARTITION]["retention.ms"] = "2"
    if not fewer and not misconfigured:
        return
    admin = ExistingTopics({"clicks": source, **counts}, configs)
    report = InternalTopics(resolve_cluster=lambda _p: ClusterConfig.of("k:9092"))._ensure(
        admin,  # type: ignore[arg-type]
        ["clicks"],
        specs,
    )
    # Fewer partitions alone are left as they are, so they are no trouble: the workers run.
    assert report.status == ("mismatch" if misconfigured else "fewer")
    message = report.message
    assert "fix it with Kafka's tools" not in message
    assert ("set the configuration with kafka-configs" in message) == misconfigured
    if not fewer:
        assert "--alter" not in message and "partitions" not in message
        return
    assert "do not add partitions to " in message
    assert "the workers use the count a topic has, whatever the source's" in message
    assert ("open windows split in two results" in message) == ("repartition" in fewer)
    assert (f"the windows run on at most {source - 1} workers" in message) == (
        "repartition" in fewer
    )
    assert ("its state restores empty" in message) == ("changelog" in fewer)
    assert f"it is created again with {source}" in message


def test_backoff_doubles_and_is_bounded() -> None:
    waits = [backoff(n) for n in range(1, 20)]
    assert waits[0] == BACKOFF_START
    assert all(a <= b for a, b in itertools.pairwise(waits))
    assert max(waits) == BACKOFF_MAX


# --------------------------------------------------------------------------- backend switch


STATEFUL = describe(
    ProcessorConfig.model_validate(
        {"steps": [{"window": {"keyBy": "page", "size": "60s",
                               "aggregates": [{"name": "n", "function": "count"}]}}]}
    )
)  # fmt: skip
STATELESS = describe(ProcessorConfig.model_validate({"steps": [{"filter": "x > 1"}]}))


@pytest.mark.parametrize(
    ("policy", "action", "reason"),
    [("refuse", "hold", "StateChangeRefused"), ("reset", "reset", "StateReset"),
     ("replay", "hold", "StateChangeRefused")],
)  # fmt: skip
@pytest.mark.parametrize("move", [("volume", "kafka"), ("kafka", "volume")])
def test_a_backend_switch_of_a_stateful_pipeline(
    policy: str, action: str, reason: str, move: tuple[str, str]
) -> None:
    upgrade = Upgrade.model_validate(
        {"onStateChange": policy, "replayFrom": "2026-01-01T00:00:00Z"}
    )
    d = decide(STATEFUL, STATEFUL, upgrade, generation=3, backends=move)
    assert (d.action, d.condition.reason) == (action, reason)
    assert d.changes[0] == f"checkpoint.backend: {move[0]} -> {move[1]}"
    assert d.snapshot is None  # the new backend never sees the old state: nothing kept
    assert "checkpoint.backend" in d.condition.message
    assert d.event is not None and d.event[1] == reason


def test_a_backend_switch_without_state_or_without_a_move_rolls() -> None:
    refuse = Upgrade()
    assert decide(STATELESS, STATELESS, refuse, backends=("volume", "kafka")).action == "roll"
    assert decide(None, STATEFUL, refuse, backends=(None, "kafka")).action == "roll"
    assert decide(STATEFUL, STATEFUL, refuse, backends=("kafka", "kafka")).action == "roll"


# --------------------------------------------------------------------------- group switch


@pytest.mark.parametrize(
    ("policy", "action", "reason"),
    [("refuse", "hold", "StateChangeRefused"), ("reset", "reset", "StateReset"),
     ("replay", "replay", "StateReplay")],
)  # fmt: skip
def test_another_consumer_group_of_a_stateful_pipeline(
    policy: str, action: str, reason: str
) -> None:
    """Another group's offsets do not continue the checkpointed state (decision 0205): a
    state change of the same fingerprint. Reset and replay keep the old state as the
    snapshot the workers name with the roll's generation (their new state epoch)."""
    upgrade = Upgrade.model_validate(
        {"onStateChange": policy, "replayFrom": "2026-01-01T00:00:00Z"}
    )
    d = decide(STATEFUL, STATEFUL, upgrade, generation=3, groups=("g1", "g2"))
    assert (d.action, d.condition.reason) == (action, reason)
    assert d.changes == ("source.kafka.consumerGroup: g1 -> g2",)
    assert "source.kafka.consumerGroup: g1 -> g2" in d.condition.message
    have = fingerprint(STATEFUL)
    rolls = action != "hold"
    assert d.snapshot == (snapshot_name(have, have, 3) if rolls else None)
    assert state_epoch(STATEFUL, d, 3, None, switched=True) == (3 if rolls else None)
    if policy == "reset":
        assert "consumer group g2's committed offsets" in d.condition.message


def test_a_group_switch_is_judged_with_a_restore_kept_in_the_spec() -> None:
    """A restoreFrom the workers were given already (kept in the spec after its restore)
    is no restore any more: a regroup kept with it rolled as StateRestored, and the
    workers dropped every window (a review's finding); with a topic removed too it rolled
    where the removed topic alone held."""
    refuse = Upgrade()
    kept = decide(STATEFUL, STATEFUL, refuse, groups=("g1", "g2"), restore_from="s",
                  restored="s")  # fmt: skip
    assert (kept.action, kept.changes) == ("hold", ("source.kafka.consumerGroup: g1 -> g2",))
    assert "consumer group g2's committed offsets" in kept.condition.message  # the hint
    windowed = describe(
        ProcessorConfig.model_validate(
            {"steps": [{"window": {"keyBy": "page", "size": "60s",
                                   "aggregates": [{"name": "n", "function": "count"}]}}]}
        ),
        repartition=None,
    )  # fmt: skip
    removed = decide(windowed, windowed, refuse, groups=("g1", "g2"), restore_from="s",
                     restored="s", sources=(("a", "b"), ("a",)))  # fmt: skip
    assert removed.action == "hold"
    assert set(removed.changes) == {
        "source.kafka.consumerGroup: g1 -> g2",
        "source.kafka.topics: removed b",
    }
    # Restored already, nothing else changed: a plain roll, the restore said as done.
    done = decide(STATEFUL, STATEFUL, refuse, restore_from="s", restored="s")
    assert (done.action, done.condition.reason) == ("roll", "StateRestored")
    # A backend switch lists the regroup too.
    both = decide(STATEFUL, STATEFUL, Upgrade.model_validate({"onStateChange": "reset"}),
                  backends=("volume", "kafka"), groups=("g1", "g2"))  # fmt: skip
    assert both.changes[:2] == ("checkpoint.backend: volume -> kafka",
                                "source.kafka.consumerGroup: g1 -> g2")  # fmt: skip


def test_a_group_switch_without_state_or_without_a_switch_rolls() -> None:
    refuse = Upgrade()
    assert decide(STATELESS, STATELESS, refuse, groups=("g1", "g2")).action == "roll"
    assert decide(None, STATEFUL, refuse, groups=(None, "g2")).action == "roll"
    assert decide(STATEFUL, STATEFUL, refuse, groups=("g1", "g1")).action == "roll"
    assert decide(STATEFUL, STATEFUL, refuse, groups=(None, "g1")).action == "roll"


def test_the_group_of_a_config_map() -> None:
    doc = example_doc("02-clicks-per-minute")
    name = doc["metadata"]["name"]
    assert config_group(children_of(doc)["ConfigMap"]) == f"default.{name}"
    doc["spec"]["source"]["kafka"]["consumerGroup"] = "clicks-v2"
    assert config_group(children_of(doc)["ConfigMap"]) == "clicks-v2"
    assert config_group(None) is None
    assert config_group({"data": {CONFIG_KEY: "{nope"}}) is None
    assert (
        config_group({"data": {CONFIG_KEY: '{"source": {"kafka": {"consumerGroup": 7}}}'}}) is None
    )


def test_the_backend_of_a_config_map() -> None:
    kids = children_of(kafka_backend(example_doc("02-clicks-per-minute")))
    assert config_backend(kids["ConfigMap"]) == "kafka"
    assert config_backend(children_of(example_doc("02-clicks-per-minute"))["ConfigMap"]) == (
        "volume"
    )
    assert config_backend(None) is None
    assert config_backend({"data": {CONFIG_KEY: "{nope"}}) is None


# --------------------------------------------------------------------------- reconciler


class FakeTopics:
    """The broker side as the reconciler sees it: a report per call (no broker here)."""

    def __init__(self, report: TopicsReport) -> None:
        self.report = report
        self.calls: list[str] = []

    def ensure(self, pipeline: StreamPipeline) -> TopicsReport | None:
        self.calls.append(pipeline.name)
        if not internal_topics(pipeline):
            return None
        return self.report


def _ready(created: bool) -> TopicsReport:
    spec = TopicSpec(REPARTITION, "repartition", {"cleanup.policy": "delete",
                                                  "retention.ms": "604800000"})  # fmt: skip
    return TopicsReport(
        "ready", (TopicState(spec, 4, created),), f"repartition topic {REPARTITION}"
    )


def _condition(kube: FakeKube, type_: str) -> dict[str, Any] | None:
    conds = body_of(kube, NAME)["status"].get("conditions") or []
    return next((c for c in conds if c["type"] == type_), None)


def test_the_status_lists_the_topics_and_the_creation_is_announced_once() -> None:
    kube = FakeKube()
    kube.put(example_doc("02-clicks-per-minute"))
    topics = FakeTopics(_ready(created=True))
    memo = ReconcileMemo()
    first = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo, topics=topics)
    assert [e.reason for e in first.events].count("TopicCreated") == 1
    created = next(e for e in first.events if e.reason == "TopicCreated")
    assert REPARTITION in created.message and "4 partitions" in created.message
    status = body_of(kube, NAME)["status"]
    assert status["internalTopics"] == [
        {"name": REPARTITION, "purpose": "repartition", "partitions": 4,
         "config": {"cleanup.policy": "delete", "retention.ms": "604800000"}}
    ]  # fmt: skip
    cond = _condition(kube, TOPICS)
    assert cond is not None and (cond["status"], cond["reason"]) == ("True", "TopicsReady")
    assert first.retry_after is None
    # The next reconcile, with the same answer from memory, writes and posts nothing new.
    topics.report = _ready(created=False)
    kube.roll_out(NAME)
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo, topics=topics)
    again = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo, topics=topics)
    assert again.status is None and again.events == ()


@pytest.mark.parametrize(
    ("status", "reason", "degraded"),
    [("unreachable", "BrokerUnreachable", False), ("mismatch", "TopicMismatch", True),
     ("no-source", "SourceTopicsMissing", False), ("checking", "Checking", False),
     ("fewer", "FewerPartitions", False)],
)  # fmt: skip
def test_topics_not_ready_give_a_condition_and_a_retry(
    status: Any, reason: str, degraded: bool
) -> None:
    kube = FakeKube()
    kube.put(example_doc("02-clicks-per-minute"))
    report = TopicsReport(status, message="what went wrong", retry_after=7.0)
    result = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, topics=FakeTopics(report))
    cond = _condition(kube, TOPICS)
    assert cond is not None and cond["reason"] == reason and cond["message"] == "what went wrong"
    assert cond["status"] == {"checking": "Unknown", "fewer": "True"}.get(status, "False")
    assert result.retry_after == 7.0
    # The workers are applied all the same (they create what they need themselves).
    assert kube.find("Deployment", NAME) is not None
    listed = body_of(kube, NAME)["status"]["internalTopics"]
    assert [t["name"] for t in listed] == [REPARTITION] and "partitions" not in listed[0]
    deg = _condition(kube, "Degraded")
    assert deg is not None and (deg["status"] == "True") == degraded
    if degraded:
        assert deg["reason"] == reason and "what went wrong" in deg["message"]


def test_a_pipeline_without_topics_has_neither_condition_nor_list() -> None:
    kube = FakeKube()
    name = kube.put(example_doc("01-clicks-local"))["metadata"]["name"]
    doc = body_of(kube, name)
    reconcile(doc, kube, SETTINGS, now=T0, topics=FakeTopics(_ready(False)))
    status = body_of(kube, name)["status"]
    assert "internalTopics" not in status or status["internalTopics"] is None
    assert all(c["type"] != TOPICS for c in status["conditions"])


def test_a_refused_backend_switch_keeps_the_claim_and_makes_no_topics() -> None:
    kube = FakeKube()
    kube.put(example_doc("02-clicks-per-minute"))
    memo = ReconcileMemo()
    topics = FakeTopics(_ready(False))
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo, topics=topics)
    kube.roll_out(NAME)
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo, topics=topics)
    listed = body_of(kube, NAME)["status"]["internalTopics"]
    config_before = copy.deepcopy(kube.find("ConfigMap", f"{NAME}-config"))
    body = body_of(kube, NAME)
    body["spec"].setdefault("checkpoint", {})["backend"] = "kafka"
    body["metadata"]["generation"] += 1
    calls = len(topics.calls)
    result = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo, topics=topics)
    cond = _condition(kube, STATE_COMPATIBLE)
    assert cond is not None and cond["reason"] == "StateChangeRefused"
    assert "checkpoint.backend: volume -> kafka" in cond["message"]
    assert kube.find("PersistentVolumeClaim", f"{NAME}-checkpoints") is not None
    assert "PersistentVolumeClaim/clicks-per-minute-checkpoints" not in result.deleted
    assert kube.find("ConfigMap", f"{NAME}-config") == config_before
    assert len(topics.calls) == calls  # a held edit makes no topics
    assert body_of(kube, NAME)["status"]["internalTopics"] == listed


def test_a_reset_backend_switch_rolls_to_the_changelog() -> None:
    kube = FakeKube()
    doc = example_doc("02-clicks-per-minute")
    doc["spec"]["upgrade"] = {"onStateChange": "reset"}
    kube.put(doc)
    memo = ReconcileMemo()
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo)
    kube.roll_out(NAME)
    reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo)
    body = body_of(kube, NAME)
    body["spec"].setdefault("checkpoint", {})["backend"] = "kafka"
    body["metadata"]["generation"] += 1
    result = reconcile(body_of(kube, NAME), kube, SETTINGS, now=T0, memo=memo)
    cond = _condition(kube, STATE_COMPATIBLE)
    assert cond is not None and cond["reason"] == "StateReset"
    assert "StateReset" in [e.reason for e in result.events]
    config = json.loads(kube.find("ConfigMap", f"{NAME}-config")["data"][CONFIG_KEY])  # type: ignore[index]
    assert config["checkpoint"]["changelog"]["topic"] == CHANGELOG
    assert kube.find("PersistentVolumeClaim", f"{NAME}-checkpoints") is None
    assert body_of(kube, NAME)["status"].get("snapshots") in (None, [])


# --------------------------------------------------------------------------- admin manager


class DeadAdmin:
    """An admin client whose broker never answers (the real one raises the same)."""

    @staticmethod
    def _no_answer() -> KafkaException:
        return KafkaException(KafkaError(KafkaError._TRANSPORT, "Broker transport failure"))

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        raise self._no_answer()

    def describe_topics(self, topics: Any, **kwargs: Any) -> dict[str, Any]:
        raise self._no_answer()

    def create_topics(self, new_topics: list[Any], **kwargs: Any) -> dict[str, Any]:
        raise self._no_answer()

    def delete_topics(self, topics: list[str], **kwargs: Any) -> dict[str, Any]:
        raise self._no_answer()

    def describe_configs(self, resources: list[Any], **kwargs: Any) -> dict[Any, Any]:
        raise self._no_answer()

    def delete_consumer_groups(self, group_ids: list[str], **kwargs: Any) -> dict[str, Any]:
        raise self._no_answer()

    def poll(self, timeout: float) -> int:
        return 0


def test_a_running_attempt_never_flips_the_status_and_a_failure_waits_its_backoff() -> None:
    gate = threading.Event()
    clock = [0.0]
    tries: list[str] = []

    def resolve(p: StreamPipeline) -> ClusterConfig:
        tries.append(p.name)
        gate.wait(30)
        return ClusterConfig.of("nowhere:9092")

    manager = InternalTopics(
        resolve_cluster=resolve,
        admin_factory=lambda _c: DeadAdmin(),
        wait=0.05,
        timeout=1.0,
        clock=lambda: clock[0],
    )
    pipeline = pipeline_from(example_doc("02-clicks-per-minute"), namespace="default", uid="u")
    try:
        first = manager.ensure(pipeline)
        assert first is not None and first.status == "checking"  # nothing known yet
        gate.set()
        pause = threading.Event()
        for _ in range(600):  # the attempt ends as soon as the gate opens
            found = manager.ensure(pipeline)
            if found is None or found.status != "checking":
                break
            pause.wait(0.05)
        assert found is not None and found.status == "unreachable"
        assert found.retry_after is not None and found.retry_after <= BACKOFF_START
        assert len(tries) == 1  # within the backoff: from memory, no new attempt
        gate.clear()
        clock[0] = BACKOFF_START + 1  # the backoff is over: a new attempt, which hangs
        during = manager.ensure(pipeline)
        assert during is not None and (during.status, during.message) == (
            "unreachable",
            found.message,
        )  # what the last attempt found, not "checking"
        for _ in range(600):  # the new attempt has started (in the manager's pool)
            if len(tries) == 2:
                break
            pause.wait(0.05)
        assert len(tries) == 2
    finally:
        gate.set()
        manager.close()


def test_every_way_of_no_broker_answering_reads_the_same_in_status() -> None:
    """Refused and timed out alternate with the machine's load: the status must not (each
    change of the message would be a status write at every attempt, on an idle pipeline)."""
    said = {
        kafkaadmin.reason(KafkaException(KafkaError(code, "detail")))
        for code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN)
    }
    assert len(said) == 1 and "no broker answered" in said.pop()
    denied = kafkaadmin.reason(
        KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    )
    assert denied.startswith("TOPIC_AUTHORIZATION_FAILED")  # a person's problem: named


def test_a_deletion_stops_the_workers_before_the_topics_go() -> None:
    """The Deployment is deleted in the foreground (it stays, deleting, until its pods are
    gone), once; the wait is its pods' grace period and a margin; gone, nothing to wait for."""
    kube = FakeKube()
    kube.foreground_lingers = True
    assert stop_workers(kube, "default", "clicks", "uid-1") is None  # never had workers
    owner = {"kind": "StreamPipeline", "name": "clicks", "uid": "uid-1", "controller": True}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "clicks", "namespace": "default", "ownerReferences": [owner]},
        "spec": {"template": {"spec": {"terminationGracePeriodSeconds": 45}}},
    }
    kube.put(deployment)
    # Another pipeline's Deployment of that name is not its to stop (decision 0176).
    assert stop_workers(kube, "default", "clicks", "uid-of-another") is None
    assert kube.deletes == []
    assert stop_workers(kube, "default", "clicks", "uid-1") == 45 + WORKERS_STOP_MARGIN_SECONDS
    assert stop_workers(kube, "default", "clicks", "uid-1") == 45 + WORKERS_STOP_MARGIN_SECONDS
    assert kube.deletes == ["Deployment/clicks"]  # deleting already: not deleted again
    kube.objects.pop(("apps/v1", "Deployment", "default", "clicks"))  # its pods went
    assert stop_workers(kube, "default", "clicks", "uid-1") is None
