"""The internal topics a pipeline needs on its source's cluster, as pure data.

A pipeline may need two Kafka topics of its own, named by ``keying.internal_topic``:

- ``repartition`` (``keying.repartition_topic`` decides): records re-keyed by the window's
  key. ``cleanup.policy=delete`` with ``retention.ms`` = the worker's own default
  (``RepartitionConfig.retention_ms``, 7 days): a record there is needed only until the
  downstream partition has checkpointed past it, but a suspended or broken pipeline must
  find its repartitioned records again when it comes back, and a week is Kafka's own
  default for data nobody compacts (docs/operator.md, "Internal topics");
- ``changelog`` (``spec.checkpoint.backend: kafka``): each partition's latest checkpoint,
  ``cleanup.policy=compact`` (only the last value per key is kept; never deleted by age),
  created with the worker's own compaction settings (``CHANGELOG_TOPIC_CONFIG``: hourly
  segments, which bound a restore), so that a topic the operator made and one a worker
  made (``streamherd run``) are the same.

Their partitions are the source topics' most, which only the broker knows: the operator
reads it when it creates them (operator/topicadmin.py); ``streamherd render`` says so in a
comment block above the manifests (``render_comment``). Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from streamherd.operator.api.v1alpha1 import StreamPipeline
from streamherd.operator.builders.keying import internal_topic, repartition_topic
from streamherd.workers.config import (
    CHANGELOG_TOPIC_CONFIG,
    CHANGELOG_TOPIC_REQUIRED,
    RepartitionConfig,
)

Purpose = Literal["repartition", "changelog"]
PURPOSES: Final[tuple[Purpose, ...]] = ("repartition", "changelog")
#: What ensuring the internal topics found (operator/topicadmin.py: TopicsReport).
#: "fewer": every topic is right but for fewer partitions than the source's most, which is
#: to be left as it is (topicadmin.mismatch_message): ready, at that many partitions.
TopicsStatus = Literal["ready", "fewer", "unreachable", "mismatch", "no-source", "checking"]
#: The statuses the workers can run on as they are: checked again after ``recheck``, not
#: retried with a backoff.
TOPICS_USABLE: Final[frozenset[str]] = frozenset({"ready", "fewer"})

#: retention.ms of the repartition topic: the worker's own default, so that a topic the
#: operator made and one a worker made (``streamherd run``) are the same.
REPARTITION_RETENTION_MS: Final = int(RepartitionConfig.model_fields["retention_ms"].default)


@dataclass(frozen=True)
class TopicSpec:
    """One internal topic: its name, what it is for, and the configuration it must have.

    ``config`` holds the entries the operator sets and checks (a topic found with another
    value is a mismatch); ``tuning`` the entries it sets only when it creates the topic and
    never judges afterwards (a cluster admin may tune them; a topic made before they were
    set lacks them). Anything else on the broker (min.insync.replicas) is the cluster's
    business."""

    name: str
    purpose: Purpose
    config: dict[str, str] = field(default_factory=dict)
    tuning: dict[str, str] = field(default_factory=dict)

    @property
    def created_with(self) -> dict[str, str]:
        """The configuration the topic is created with."""
        return {**self.tuning, **self.config}


def topic_config(purpose: Purpose) -> dict[str, str]:
    """The configuration a topic of ``purpose`` must have (checked on every ensure)."""
    if purpose == "repartition":
        return {"cleanup.policy": "delete", "retention.ms": str(REPARTITION_RETENTION_MS)}
    return {k: CHANGELOG_TOPIC_CONFIG[k] for k in sorted(CHANGELOG_TOPIC_REQUIRED)}


def topic_tuning(purpose: Purpose) -> dict[str, str]:
    """What a topic of ``purpose`` is created with beyond :func:`topic_config`."""
    if purpose == "repartition":
        return {}
    checked = topic_config(purpose)
    return {k: v for k, v in CHANGELOG_TOPIC_CONFIG.items() if k not in checked}


def uses_changelog(pipeline: StreamPipeline) -> bool:
    """Whether the pipeline keeps its state in the Kafka changelog (not on a volume)."""
    return pipeline.spec.checkpoint.backend == "kafka" and pipeline.spec.source.kafka is not None


def internal_topics(pipeline: StreamPipeline) -> list[TopicSpec]:
    """The internal topics this pipeline's workers use, repartition first; [] for none."""
    out: list[TopicSpec] = []
    topic = repartition_topic(pipeline)
    if topic is not None:
        out.append(TopicSpec(topic, "repartition", topic_config("repartition")))
    if uses_changelog(pipeline):
        name = internal_topic(pipeline, "changelog")
        out.append(
            TopicSpec(name, "changelog", topic_config("changelog"), topic_tuning("changelog"))
        )
    return out


def all_internal_names(pipeline: StreamPipeline) -> list[str]:
    """Every internal topic name the pipeline may have had under any spec (what deleting it
    removes: a topic from an earlier spec, e.g. before the window's key changed, too)."""
    return [internal_topic(pipeline, purpose) for purpose in PURPOSES]


def render_comment(pipeline: StreamPipeline) -> str:
    """A YAML comment block listing the internal topics (for ``streamherd render``): the
    output stays valid input for ``kubectl apply``. Empty when there are none."""
    topics = internal_topics(pipeline)
    if not topics:
        return ""
    kafka = pipeline.spec.source.kafka
    assert kafka is not None  # only a Kafka source has internal topics
    lines = [
        f"# Kafka topics the operator creates for {pipeline.namespace}/{pipeline.name} on "
        f"{kafka.bootstrap_servers} (not Kubernetes objects):",
    ]
    for t in topics:
        config = ", ".join(f"{k}={v}" for k, v in sorted(t.config.items()))
        lines.append(f"#   {t.name}")
        lines.append(
            f"#     purpose: {t.purpose}; partitions: the most of {', '.join(kafka.topics)} "
            "(read from the broker)"
        )
        lines.append(f"#     config: {config}")
        if t.tuning:
            tuning = ", ".join(f"{k}={v}" for k, v in sorted(t.tuning.items()))
            lines.append(f"#     created with: {tuning} (not checked afterwards)")
    if pipeline.spec.state.retain_on_delete:
        lines.append("#   kept when the pipeline is deleted (spec.state.retainOnDelete)")
    else:
        lines.append("#   deleted with the pipeline (spec.state.retainOnDelete keeps them)")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TopicState:
    """One internal topic as found (or made) on the broker."""

    spec: TopicSpec
    partitions: int | None
    created: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopicsReport:
    """What ensuring a pipeline's internal topics found and did.

    status: ready (every topic exists as it should), unreachable (the broker or the
    credentials failed: nothing known), mismatch (a topic exists but differs: named in
    ``problems``), no-source (no source topic exists yet, so the partitions are unknown),
    checking (an attempt is still running, or the broker does not list or describe a
    topic made or deleted a moment ago: the outcome comes with a later reconcile).
    retry_after: seconds until the next attempt is worth making (None when ready)."""

    status: TopicsStatus
    topics: tuple[TopicState, ...] = ()
    message: str = ""
    retry_after: float | None = None

    @property
    def created(self) -> list[TopicState]:
        return [t for t in self.topics if t.created]

    @property
    def problems(self) -> list[str]:
        return [p for t in self.topics for p in t.problems]
