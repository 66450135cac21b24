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

The key's field is traced back through the map steps before the window
(:func:`source_field`): a ``set`` that only reads another field (``page: user``) follows
it; a ``set`` that computes, a ``rename`` to or from the field, a ``select`` without it,
and a user function (which runs between the steps and the window and may change any field)
all break the link to the source, and auto then repartitions. The trace only claims a link
that holds for every record (a property test checks this against the steps themselves).
Used by the WorkerConfig builder and by ``streamherd validate``'s warnings.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from streamherd.operator.api.v1alpha1 import INTERNAL_TOPIC_PREFIX, StreamPipeline
from streamherd.workers.config import Step

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


def trace_field(steps: Sequence[Step], field: str | None) -> tuple[str | None, int | None]:
    """(the source record's field whose value ``field`` holds after ``steps`` (filters and
    maps), the index of the last step that changes ``field``, or None); the field is None
    when the steps may have given it any other value. Conservative: None whenever the link
    depends on the data (a rename applies only when its field exists)."""
    changed: int | None = None
    for index in reversed(range(len(steps))):
        if field is None:
            break
        m = steps[index].map
        if m is None:
            continue  # a filter keeps or drops records, never changes a field
        # A map step is set, then select, then rename (workers/processing.map_transform),
        # so it is undone in the reverse order.
        if (
            field in m.rename
            or field in m.rename.values()
            or (m.select is not None and field not in m.select)
        ):
            return None, index if changed is None else changed
        if field in m.set:
            changed = index if changed is None else changed
            field = field_reference(m.set[field])
    return field, changed


def source_field(steps: Sequence[Step], field: str | None) -> str | None:
    """The source record's field whose value ``field`` holds after ``steps``, or None
    (:func:`trace_field`)."""
    return trace_field(steps, field)[0]


def window_key_field(pipeline: StreamPipeline) -> tuple[int, str | None] | None:
    """(index of the window step, the source field its keyBy reads or None); None without
    a window. None for the field when the steps or the user function before the window may
    have changed it (:func:`source_field`)."""
    processor = pipeline.spec.processor
    steps = processor.steps
    found = next(((i, s.window) for i, s in enumerate(steps) if s.window is not None), None)
    if found is None:
        return None
    index, window = found
    if processor.function is not None:
        return index, None  # it may return any record: the source's keying says nothing
    return index, source_field(steps[:index], field_reference(window.key_by))


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
    return f"{INTERNAL_TOPIC_PREFIX}{pipeline.namespace}.{pipeline.name}.{purpose}"
