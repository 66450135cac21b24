"""`streamherd validate`: check StreamPipeline manifests offline, with readable messages.

The same checks the operator makes before it builds anything: the pydantic models (which
mirror the CRD schema and its CEL rules), the naming limits of the children, and every
expression compiled by the engine's own compiler. Messages name the field path the way a
manifest spells it (``spec.autoscaling.minReplicas: ...``). ``readable_errors`` and
``semantic_errors`` are shared with the reconciler (an InvalidSpec condition reads the same).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from streamherd.operator.api.v1alpha1 import KIND, StreamPipeline
from streamherd.operator.builders.meta import MAX_NAME_LENGTH
from streamherd.workers.config import ProcessorConfig
from streamherd.workers.expressions import ExpressionError, compile_expression


def _path(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def readable_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `field.path: message` (pydantic's noise trimmed)."""
    lines = []
    for item in error.errors(include_url=False):
        msg = str(item.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        path = _path([*([prefix] if prefix else []), *item.get("loc", ())])
        if item.get("type") == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path}: {msg}" if path else msg)
    return lines


def _expressions(processor: ProcessorConfig) -> Iterator[tuple[str, str]]:
    """(field path, expression) for every expression in the processor."""
    for i, step in enumerate(processor.steps):
        base = f"spec.processor.steps[{i}]"
        if step.filter is not None:
            yield f"{base}.filter", step.filter
        if step.map is not None:
            for field, expr in step.map.set.items():
                yield f"{base}.map.set.{field}", expr
        if step.window is not None:
            yield f"{base}.window.keyBy", step.window.key_by
            for j, agg in enumerate(step.window.aggregates):
                if agg.expression:
                    yield f"{base}.window.aggregates[{j}].expression", agg.expression


def semantic_errors(pipeline: StreamPipeline) -> list[str]:
    """What the schema cannot check: name length (children's names) and expressions."""
    errors = []
    if len(pipeline.name) > MAX_NAME_LENGTH:
        errors.append(
            f"metadata.name: at most {MAX_NAME_LENGTH} characters (the metrics Service is "
            f"named NAME-metrics and must fit in 63)"
        )
    for path, expr in _expressions(pipeline.spec.processor):
        try:
            compile_expression(expr)
        except ExpressionError as e:
            errors.append(f"{path}: {e}")
    sink = pipeline.spec.sink.kafka
    if sink is not None and sink.key:
        try:
            compile_expression(sink.key)
        except ExpressionError as e:
            errors.append(f"spec.sink.kafka.key: {e}")
    return errors


def parse_pipeline(doc: Mapping[str, Any]) -> tuple[StreamPipeline | None, list[str]]:
    """The pipeline and the list of problems (empty when valid). Never raises."""
    try:
        pipeline = StreamPipeline.model_validate(dict(doc))
    except ValidationError as e:
        return None, readable_errors(e)
    return pipeline, semantic_errors(pipeline)


def load_documents(files: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
    """(file, index, document) for each YAML document; '-' reads stdin."""
    for file in files:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc is not None:
                yield file, i, doc


def validate_files(files: Sequence[str], out: TextIO, err: TextIO) -> int:
    """Exit status 0 when every StreamPipeline in `files` is valid, 1 otherwise."""
    failed = False
    seen = 0
    try:
        docs = list(load_documents(files))
    except (OSError, yaml.YAMLError) as e:
        err.write(f"error: {e}\n")
        return 1
    for file, index, doc in docs:
        where = f"{file}" + (f" (document {index + 1})" if index else "")
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            err.write(f"{where}: skipped: not a {KIND} (kind {kind})\n")
            continue
        seen += 1
        name = (doc.get("metadata") or {}).get("name", "?")
        _, problems = parse_pipeline(doc)
        if problems:
            failed = True
            err.write(f"{where}: {KIND} {name}: invalid\n")
            for line in problems:
                err.write(f"  {line}\n")
        else:
            out.write(f"{where}: {KIND} {name}: valid\n")
    if seen == 0:
        err.write(f"error: no {KIND} found\n")
        return 1
    return 1 if failed else 0
