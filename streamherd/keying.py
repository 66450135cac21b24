"""Keying warnings of `streamherd validate`: windows that will not see all of a key.

A window's result is global for its key only when every record of that key reaches one
window state. A Kafka source repartitions by the window's key unless the manifest shows
the input is already keyed by it (streamherd/operator/builders/keying.py decides), so the
warnings left are the cases where results stay per source partition:

- the generator source (it cannot repartition: no Kafka) when the window is not keyed by
  its `user` and it has several partitions;
- a Kafka source whose window says `repartition: never` while the manifest does not show
  the input keyed by `keyBy` (source.kafka.keyedBy, or `key` for a raw source, on one
  topic: with several, the warning says why the declared keying does not count).

Warnings never change validate's exit status. Used by streamherd/cli.py (`validate`), on
the documents `streamherd.operator.validation` has already checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from streamherd.operator.api.v1alpha1 import KIND, StreamPipeline
from streamherd.operator.builders.keying import (
    GENERATOR_KEY,
    field_reference,
    keyed_by_window,
    trace_field,
    untrusted_keying,
    window_key_field,
)
from streamherd.operator.validation import load_documents, parse_pipeline, shown_name

__all__ = ["field_reference", "keying_warnings", "write_keying_warnings"]

DOC_LINK = "docs/engine.md, 'Keys and partitions'"


def keying_warnings(pipeline: StreamPipeline) -> list[str]:
    """At most one warning, on the window step's keyBy, in `field.path: message` form."""
    found = window_key_field(pipeline)
    if found is None or keyed_by_window(pipeline):
        return []
    index, _field = found
    window = pipeline.spec.processor.steps[index].window
    assert window is not None
    path = f"spec.processor.steps[{index}].window.keyBy"
    source = pipeline.spec.source
    if source.generator is not None:
        steps = pipeline.spec.processor.steps
        _, broken = trace_field(steps[:index], field_reference(window.key_by))
        if pipeline.spec.processor.function is not None:
            differs = "which the user function before the window may change"
        elif broken is not None:
            differs = f"which spec.processor.steps[{broken}].map changes"
        else:
            differs = f"not by `{window.key_by.strip()}`"
        return [
            f"{path}: window state is per source partition, and the generator source puts "
            f"records in its {source.generator.partitions} partitions by `{GENERATOR_KEY}`, "
            f"{differs}, and cannot repartition (no Kafka): each partition emits its own "
            f"result for a key. Key the window by `{GENERATOR_KEY}` or use one partition "
            f"({DOC_LINK})."
        ]
    if window.repartition != "never":
        return []
    why = untrusted_keying(pipeline)
    if why is not None:  # keyedBy (or a raw key) on several topics
        return [
            f"{path}: repartition is never, and {why}; leave repartition auto to re-key "
            f"by it ({DOC_LINK})."
        ]
    return [
        f"{path}: repartition is never, and the manifest does not say the input is keyed by "
        f"`{window.key_by.strip()}` (source.kafka.keyedBy): unless it is, each source "
        f"partition emits its own result for a key ({DOC_LINK})."
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
            err.write(f"{where}: {KIND} {shown_name(doc)}: warning: {line}\n")
            count += 1
    return count
