"""Keying warnings of `streamherd validate`: is a window keyed by what the source is?

Window state is per source partition; the engine has no repartition step (docs/engine.md,
"Keys and partitions"). A window's result is global for its key only when every record of
that key is in one partition: when the input is partitioned by the window's `keyBy`.
What a manifest says about the source's partitioning decides what can be checked:

- the generator source puts a user's records in partition `user index mod partitions`:
  a window keyed by `user` (or a single partition) is fine, any other key is warned about;
- a Kafka source with `format: raw` gives each record its Kafka key as the field `key`:
  `keyBy: key` is the partition key by construction (the default partitioner);
- any other Kafka source: nothing in a StreamPipeline declares what its topics are keyed
  by, so the requirement is stated once per pipeline with a window, as a warning.

A map step before the window that sets the key's field breaks the link to the source.
Warnings never change validate's exit status. Used by streamherd/cli.py (`validate`), on
the documents `streamherd.operator.validation` has already checked.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from streamherd.operator.api.v1alpha1 import KIND, StreamPipeline
from streamherd.operator.validation import load_documents, parse_pipeline

GENERATOR_KEY = "user"  # workers/generating.py: partition = user index mod partitions
RAW_KEY = "key"  # workers/processing.py decode_raw: {"value": ..., "key": <Kafka key>}
DOC_LINK = "docs/engine.md, 'Keys and partitions'"


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


def keying_warnings(pipeline: StreamPipeline) -> list[str]:
    """At most one warning, on the window step's keyBy, in `field.path: message` form."""
    steps = pipeline.spec.processor.steps
    found = next(((i, s.window) for i, s in enumerate(steps) if s.window is not None), None)
    if found is None:
        return []
    index, window = found
    path = f"spec.processor.steps[{index}].window.keyBy"
    key_by = window.key_by.strip()
    field = field_reference(key_by)
    # An earlier map step that sets the field computes it anew: no longer the source's.
    rewritten = [i for i, s in enumerate(steps[:index]) if s.map and field in s.map.set]
    if rewritten:
        field = None
    source = pipeline.spec.source
    if source.generator is not None:
        partitions = source.generator.partitions
        if partitions == 1 or field == GENERATOR_KEY:
            return []
        differs = (
            f"which spec.processor.steps[{rewritten[-1]}].map sets anew"
            if rewritten
            else f"not by `{key_by}`"
        )
        return [
            f"{path}: window state is per source partition, and the generator source puts "
            f"records in its {partitions} partitions by `{GENERATOR_KEY}`, {differs}: each "
            f"partition emits its own result for a key, so results are not global per key. "
            f"Key the window by the source's `{GENERATOR_KEY}` or use one partition "
            f"({DOC_LINK})."
        ]
    kafka = source.kafka
    assert kafka is not None  # the model requires exactly one source
    if kafka.format == "raw" and field == RAW_KEY:
        return []
    topics = ("topic " if len(kafka.topics) == 1 else "topics ") + ", ".join(kafka.topics)
    return [
        f"{path}: not checkable: window state is per source partition, so results are "
        f"global per key only if the records of {topics} are keyed by `{key_by}` (every "
        f"record of a key in one partition), and a StreamPipeline does not declare what its "
        f"topics are keyed by. Produce them keyed by that value; otherwise each partition "
        f"emits its own result for a key ({DOC_LINK})."
    ]


def write_keying_warnings(files: Sequence[str], err: TextIO) -> int:
    """Write `FILE: StreamPipeline NAME: warning: ...` for each valid pipeline in `files`;
    returns how many. Unreadable files and invalid documents are skipped: `validate_files`
    has reported them."""
    try:
        docs: list[tuple[str, int, Any]] = list(load_documents(files))
    except (OSError, yaml.YAMLError):
        return 0
    count = 0
    for file, index, doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            continue
        pipeline, problems = parse_pipeline(doc)
        if pipeline is None or problems:
            continue
        where = f"{file}" + (f" (document {index + 1})" if index else "")
        for line in keying_warnings(pipeline):
            err.write(f"{where}: {KIND} {pipeline.name}: warning: {line}\n")
            count += 1
    return count
