"""Is a window keyed by what its source is partitioned by? The repartition decision.

A window's state lives with a partition, so its result is global for a key only when every
record of that key reaches one window state. ``repartition_topic`` decides, from the
manifest alone (never from a guess about the data), whether the engine re-keys records
through an internal topic first (workers/repartitioning.py): ``window.repartition`` says
always, never, or auto, and auto repartitions unless the manifest shows that the input is
partitioned by the window's key:

- the generator source puts a user's records in partition ``user index mod partitions``;
- a Kafka source with ``format: raw`` gives each record its Kafka key as the field ``key``;
- a Kafka source that declares ``keyedBy: FIELD`` is partitioned by that field.

A map step before the window that sets the key's field breaks the link to the source.
Used by the WorkerConfig builder and by ``streamherd validate``'s warnings.
"""

from __future__ import annotations

import ast

from streamherd.operator.api.v1alpha1 import StreamPipeline

GENERATOR_KEY = "user"  # workers/generating.py: partition = user index mod partitions
RAW_KEY = "key"  # workers/processing.py decode_raw: {"value": ..., "key": <Kafka key>}


def field_reference(expression: str) -> str | None:
    """The record field an expression is nothing but a read of (`user`, `r['user']`)."""
    try:
        body = ast.parse(expression.strip(), mode="eval").body
    except SyntaxError:
        return None
    if isinstance(body, ast.Name):
        return body.id
    if (
        isinstance(body, ast.Subscript)
        and isinstance(body.value, ast.Name)
        and body.value.id == "r"
        and isinstance(body.slice, ast.Constant)
        and isinstance(body.slice.value, str)
    ):
        return body.slice.value
    return None


def window_key_field(pipeline: StreamPipeline) -> tuple[int, str | None] | None:
    """(index of the window step, the source field its keyBy reads or None); None without
    a window. A field that an earlier map step sets anew is no longer the source's."""
    steps = pipeline.spec.processor.steps
    found = next(((i, s.window) for i, s in enumerate(steps) if s.window is not None), None)
    if found is None:
        return None
    index, window = found
    field = field_reference(window.key_by)
    if any(s.map and field in s.map.set for s in steps[:index]):
        field = None
    return index, field


def keyed_by_window(pipeline: StreamPipeline) -> bool:
    """Whether the manifest shows the input partitioned by the window's key."""
    found = window_key_field(pipeline)
    if found is None:
        return True
    _, field = found
    source = pipeline.spec.source
    if source.generator is not None:
        return source.generator.partitions == 1 or field == GENERATOR_KEY
    kafka = source.kafka
    assert kafka is not None  # the model requires exactly one source
    if kafka.format == "raw":
        return field == RAW_KEY
    return kafka.keyed_by is not None and field == kafka.keyed_by


def repartition_topic(pipeline: StreamPipeline) -> str | None:
    """The internal repartition topic this pipeline's workers use, or None for none.

    Only a Kafka source can repartition (the topic lives on its cluster); a generator
    source keeps per-partition windows, and `validate` warns when they differ."""
    steps = pipeline.spec.processor.steps
    window = next((s.window for s in steps if s.window is not None), None)
    if window is None or pipeline.spec.source.kafka is None or window.repartition == "never":
        return None
    if window.repartition == "auto" and keyed_by_window(pipeline):
        return None
    return internal_topic(pipeline, "repartition")


def internal_topic(pipeline: StreamPipeline, purpose: str) -> str:
    """The name of one of a pipeline's internal topics (`repartition`, `changelog`), on its
    source's cluster: unique per namespace and name, and recognisable by its prefix."""
    return f"streamherd.{pipeline.namespace}.{pipeline.name}.{purpose}"
