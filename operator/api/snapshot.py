"""The StreamPipelineSnapshot API (streamherd.io/v1alpha1): a snapshot taken on request.

A user creates one naming a StreamPipeline of the namespace; the operator
(``streamherd.operator.snapshots``) has the pipeline's workers take it into a Kafka topic of
its own (``streamherd.workers.snapshotting``) and writes what it holds into its status: the
state fingerprint, each partition's next offset and size, when it was taken. A pipeline
restores one with ``spec.state.restoreFrom: <snapshot name>``, the one it was taken from or
another. Deleting the resource deletes the topic. ``streamherd crd snapshots`` generates the
CRD from these models (decision 0070 says why a resource and not an annotation).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from streamherd.operator.api.v1alpha1 import GROUP, MAX_NAME_LENGTH, VERSION
from streamherd.workers.config import Model

SNAPSHOT_KIND = "StreamPipelineSnapshot"
SNAPSHOT_PLURAL = "streampipelinesnapshots"
SNAPSHOT_SINGULAR = "streampipelinesnapshot"
SNAPSHOT_SHORT_NAMES = ["sps"]
SNAPSHOT_API_VERSION = f"{GROUP}/{VERSION}"
#: A snapshot's name is part of its topic's: 249 characters at most in Kafka.
MAX_SNAPSHOT_NAME_LENGTH = 63

SnapshotPhase = Literal["Pending", "Taking", "Ready", "Failed"]


class StreamPipelineSnapshotSpec(Model):
    """What to snapshot."""

    pipeline: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=MAX_NAME_LENGTH,
        description=(
            "The StreamPipeline of this namespace whose state and offsets to copy. Its "
            "workers take the snapshot at their next checkpoint."
        ),
    )


class SnapshotPartition(Model):
    """One source partition in a snapshot."""

    topic: str = Field(description="The source topic.")
    partition: int = Field(ge=0, description="The partition.")
    next_offset: int = Field(ge=0, description="The offset the state is consistent with.")
    size_bytes: int = Field(ge=0, description="The size of its checkpoint document.")


class StreamPipelineSnapshotStatus(Model):
    """What the snapshot holds, written by the operator."""

    phase: SnapshotPhase | None = Field(
        default=None,
        description=(
            "Pending (waiting for the pipeline), Taking (the workers are writing it), Ready "
            "(every partition is in it: restorable), Failed (see message)."
        ),
    )
    message: str | None = Field(default=None, description="What is happening, or what failed.")
    pipeline_uid: str | None = Field(default=None, description="The pipeline it was taken from.")
    topic: str | None = Field(default=None, description="The Kafka topic that holds it.")
    bootstrap_servers: str | None = Field(
        default=None, description="The Kafka cluster of that topic (the pipeline's source)."
    )
    fingerprint: str | None = Field(default=None, description="The state fingerprint it holds.")
    partitions: list[SnapshotPartition] | None = Field(
        default=None, max_length=10000, description="Each source partition and its offset."
    )
    partition_count: int | None = Field(default=None, description="How many partitions.")
    size_bytes: int | None = Field(default=None, description="Total size of the state kept.")
    taken_at: str | None = Field(
        default=None, description="When its last partition was checkpointed (RFC 3339)."
    )


class StreamPipelineSnapshot(Model):
    """A consistent copy of a StreamPipeline's state and offsets, taken on request, kept in
    Kafka, restorable into the same or another pipeline of the namespace."""

    model_config = ConfigDict(**{**Model.model_config, "extra": "ignore"})

    api_version: Literal["streamherd.io/v1alpha1"] = Field(
        default="streamherd.io/v1alpha1", description="API version."
    )
    kind: Literal["StreamPipelineSnapshot"] = Field(
        default="StreamPipelineSnapshot", description="Kind."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Object metadata.")
    spec: StreamPipelineSnapshotSpec = Field(description="What to snapshot.")
    status: StreamPipelineSnapshotStatus | None = Field(default=None, description="What it holds.")
