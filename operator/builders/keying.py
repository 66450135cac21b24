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

The last two hold for a source of **one** topic only: the engine keeps window state per
(topic, partition), so a key in two topics would meet two window states and get two
results for one window, however the topics are partitioned (even co-partitioned, the same
key in partition 0 of each). A Kafka source of several topics repartitions (auto), and
:func:`untrusted_keying` says why for ``streamherd validate``.

The key's field is what the expression compiler (workers/expressions.py) reads: ``user``
and ``r['user']`` read field user, while ``true``, ``false``, ``null`` (and ``True``,
``False``, ``None``) are constants there, every record the same key, not a read of a field
of that name (:func:`field_reference` asks the compiler).

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
from streamherd.workers.expressions import RECORD_NAME, ExpressionError, parse_expression

GENERATOR_KEY = "user"  # workers/generating.py: partition = user index mod partitions
RAW_KEY = "key"  # workers/processing.py decode_raw: {"value": ..., "key": <Kafka key>}


def field_reference(expression: str) -> str | None:
    """The record field an expression is nothing but a read of (`user`, `r['user']`), as the
    expression compiler reads it; None for anything else: a computation, a nested field
    (`geo.country`), a name the compiler makes a constant (`true`, `null`, `None`, ...) and
    an expression it refuses."""
    try:
        body = parse_expression(expression).body
    except ExpressionError:
        return None
    # The compiler rewrites a read of top-level field NAME, and only that, to this call
    # (workers/expressions.py `_Checker._read`; workers/fusing.py relies on the same shape).
    if (
        isinstance(body, ast.Call)
        and isinstance(body.func, ast.Attribute)
        and isinstance(body.func.value, ast.Name)
        and body.func.value.id == RECORD_NAME
        and body.func.attr == "get"
        and len(body.args) == 1
        and not body.keywords
        and isinstance(body.args[0], ast.Constant)
        and isinstance(body.args[0].value, str)
    ):
        return body.args[0].value
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
    """Whether the manifest shows the input partitioned by the window's key: the source's
    keying names the field the key reads and, for a Kafka source, it reads one topic."""
    found = window_key_field(pipeline)
    if found is None:
        return True
    _, field = found
    source = pipeline.spec.source
    if source.generator is not None:
        return source.generator.partitions == 1 or field == GENERATOR_KEY
    kafka = source.kafka
    assert kafka is not None  # the model requires exactly one source
    return field is not None and field == declared_key(pipeline) and len(set(kafka.topics)) == 1


def declared_key(pipeline: StreamPipeline) -> str | None:
    """The field the manifest says a Kafka source's partitions are made from: ``keyedBy``,
    or ``key`` for a raw source (its records' Kafka key); None for none, or no Kafka."""
    kafka = pipeline.spec.source.kafka
    if kafka is None:
        return None
    return RAW_KEY if kafka.format == "raw" else kafka.keyed_by


def untrusted_keying(pipeline: StreamPipeline) -> str | None:
    """Why the Kafka source's declared keying, though it names the field the window's key
    reads, does not key the window: it reads several topics, and window state is per
    (topic, partition). None when that is not the case (no window, no declared keying, a
    key it does not name, one topic). For ``streamherd validate``'s keying warnings, as
    ``... , and <this> (docs ...)``."""
    kafka = pipeline.spec.source.kafka
    found = window_key_field(pipeline)
    declared = declared_key(pipeline)
    if kafka is None or found is None or declared is None or found[1] != declared:
        return None
    topics = sorted(set(kafka.topics))
    if len(topics) == 1:
        return None
    named = (
        f"source.kafka.keyedBy names `{declared}`"
        if kafka.format != "raw"
        else f"the raw source's records are keyed by their Kafka `{RAW_KEY}`"
    )
    return (
        f"{named}, but the source reads {len(topics)} topics ({', '.join(topics)}): window "
        "state is per topic and partition, so a key found in several topics gets a result "
        "from each, even from co-partitioned topics; the source's keying keys the window "
        "only with one source topic"
    )


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
