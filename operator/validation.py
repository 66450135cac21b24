"""`streamherd validate`: check StreamPipeline manifests offline, with readable messages.

The same checks the operator makes before it builds anything: the pydantic models (which
mirror the CRD schema and its CEL rules), the naming limits of the children, and every
expression compiled by the engine's own compiler. Messages name the field path the way a
manifest spells it (``spec.autoscaling.minReplicas: ...``). ``readable_errors`` and
``semantic_errors`` are shared with the reconciler (an InvalidSpec condition reads the same).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from streamherd.operator.api.rules import violations
from streamherd.operator.api.v1alpha1 import KIND, StreamPipeline


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


def semantic_errors(pipeline: StreamPipeline) -> list[str]:
    """What the schema alone cannot say: every rule of operator/api/rules.py (the same rules
    the CRD's CEL enforces, plus the expressions compiled by the engine's compiler)."""
    return violations(pipeline)


def parse_pipeline(doc: Mapping[str, Any]) -> tuple[StreamPipeline | None, list[str]]:
    """The pipeline and the list of problems (empty when valid). Never raises."""
    try:
        pipeline = StreamPipeline.model_validate(dict(doc))
    except ValidationError as e:
        return None, readable_errors(e)
    return pipeline, semantic_errors(pipeline)


def unnamed_problem(pipeline: StreamPipeline) -> str | None:
    """Why a command that needs the pipeline's name offline (render, run) cannot take it:
    a manifest with metadata.generateName alone is valid (the API server picks the name
    when it creates the object), but has no name until then."""
    if pipeline.name:
        return None
    return (
        "metadata.name: needed here (the names of the pipeline's children, its consumer "
        "group and its transactions derive from it); metadata.generateName becomes a name "
        "only when the API server creates the object"
    )


def shown_name(doc: Mapping[str, Any]) -> str:
    """The name a message calls a manifest by: metadata.name, else `<generateName>*`."""
    meta = doc.get("metadata") or {}
    if meta.get("name"):
        return str(meta["name"])
    return f"{meta['generateName']}*" if meta.get("generateName") else "?"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping that names one key twice (YAML says keys are unique; PyYAML keeps the last,
    and so does the API server's decoder, silently dropping what the user wrote first)."""


class ManifestError(yaml.YAMLError):
    """A manifest file that cannot be read as written (the message names file and line);
    a YAMLError, so every reader of manifests reports it like a syntax error."""


class StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate mapping keys, naming the key and its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Hashable, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise DuplicateKeyError(
                    "while reading a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first at line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


# kubectl reads manifests with go-yaml, for which an exponent without a dot (`2e3`, `1e9`)
# is a float; for PyYAML it is a string. Read it as kubectl sends it, so that validate and
# the API server see the same value (a quantity written `2e3` unquoted is a number for both).
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_documents(files: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
    """(file, index, document) for each YAML document; '-' reads stdin. Duplicate keys are
    an error (yaml.YAMLError), not a silent last-one-wins."""
    for file in files:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        try:
            docs = list(yaml.load_all(text, Loader=StrictLoader))
        except DuplicateKeyError as e:
            line = e.problem_mark.line + 1 if e.problem_mark else "?"
            raise ManifestError(f"{file}: line {line}: {e.problem}") from None
        for i, doc in enumerate(docs):
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
        name = shown_name(doc)
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
