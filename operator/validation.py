"""`streamherd validate`: check StreamPipeline manifests offline, with readable messages.

The same checks the operator makes before it builds anything: the pydantic models (which
mirror the CRD schema and its CEL rules), the naming limits of the children, and every
expression compiled by the engine's own compiler. Messages name the field path the way a
manifest spells it (``spec.autoscaling.minReplicas: ...``). ``readable_errors`` and
``semantic_errors`` are shared with the reconciler (an InvalidSpec condition reads the same).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from typing import Any, Final, TextIO

import yaml
from pydantic import ValidationError

from streamherd.operator.api.crd import build_crd
from streamherd.operator.api.objectmeta import metadata_problems
from streamherd.operator.api.pruning import unknown_fields
from streamherd.operator.api.rules import violations
from streamherd.operator.api.v1alpha1 import KIND, StreamPipeline, StreamPipelineStatus
from streamherd.workers.yamlfiles import load_yaml_documents, read_utf8

#: The fields of a StreamPipeline object, by their wire names.
_ROOT_FIELDS: Final = frozenset(
    info.alias or name for name, info in StreamPipeline.model_fields.items()
)


@cache
def _status_schema() -> Mapping[str, Any]:
    """The status schema of the CRD the API server serves (operator/api/crd.py)."""
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema: Mapping[str, Any] = root["properties"]["status"]
    return schema


def status_problems(status: Any) -> list[str]:
    """What the API server refuses in a manifest's `status` on a create or an update of the
    StreamPipeline (not of its status subresource): a field its schema does not declare,
    under strict field validation, as kubectl sends. Nothing else: it then drops `status`
    (the subresource's alone) before it judges any value, so a status of any type, or with
    values its schema refuses, is accepted and never stored (decision 0189)."""
    return [f"{path}: unknown field" for path in unknown_fields(status, _status_schema(), "status")]


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
    """The pipeline and the list of problems (empty when valid). Never raises.

    metadata is judged as the API server judges ObjectMeta (operator/api/objectmeta.py):
    the CRD cannot speak for it, and the server refuses before any rule of ours runs."""
    # The model ignores a key that is not its own at the root; the API server's strict
    # decoding refuses an unknown field at the root, so validate does too.
    meta = [f"{key}: unknown field" for key in doc if key not in _ROOT_FIELDS]
    # The model defaults them (for code); kubectl and the API server need both.
    meta += [f"{key}: required" for key in ("apiVersion", "kind") if key not in doc]
    meta += metadata_problems(doc.get("metadata"))
    meta += status_problems(doc.get("status"))
    # The status is judged as the API server judges it on a create (above) and never read:
    # the pipeline parsed has none (the operator reads the stored one leniently).
    spec_doc = {k: v for k, v in doc.items() if k != "status"}
    try:
        # By the wire's (camelCase) names only: the API server refuses `log_level` as an
        # unknown field, so validate does too (the models also accept Python names, for code).
        pipeline = StreamPipeline.model_validate(spec_doc, by_alias=True, by_name=False)
    except ValidationError as e:
        return None, meta + readable_errors(e)
    return pipeline, meta + semantic_errors(pipeline)


def stored_status(body: Mapping[str, Any]) -> Mapping[str, Any]:
    """A stored pipeline's status as the operator reads it: a mapping, empty when it has none
    or one of another type (the API server's schema wants an object, but a stored object is
    not checked again when the CRD changes). Its values are read each with its own guard."""
    status = body.get("status")
    return status if isinstance(status, Mapping) else {}


def stored_list(status: Mapping[str, Any], key: str) -> list[Any]:
    """A list field of a stored status (`snapshots`, `internalTopics`, `conditions`) as read
    for its items: empty when absent or of another type; each item is checked by its
    reader."""
    value = status.get(key)
    return value if isinstance(value, list) else []


def stored_count(status: Mapping[str, Any], key: str) -> int:
    """An integer field of a stored status (`replicas`, `readyReplicas`) as read for a
    count: 0 when absent or of another type (a string, a list: stored before a CRD
    change), which ``int()`` raised on in every reconcile that read it."""
    value = status.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def lenient_status(raw: Mapping[str, Any]) -> StreamPipelineStatus:
    """The stored status fields the model reads, each on its own: a field whose value the
    model refuses (stored before a CRD change) or does not know is left out, the others
    kept. Before, one such field dropped the whole status: the reconcile decided as if the
    pipeline had no internal topics, snapshots or state epoch, and again differently once its
    own status write had replaced the odd field (a second roll of the workers)."""
    kept: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            StreamPipelineStatus.model_validate({key: value})
        except ValidationError:
            continue
        kept[key] = value
    return StreamPipelineStatus.model_validate(kept)


def deletion_pipeline(body: Mapping[str, Any]) -> StreamPipeline | None:
    """The pipeline as deleting what it made on Kafka needs it: its namespace and name
    (which name its internal topics, shadows and snapshot topics) and its source (the
    cluster and the credentials). As parsed; or, when the stored object no longer parses (a
    spec or status of a shape today's schema refuses: stored before a CRD change, and the
    API server does not check stored objects again), one with its spec's source alone, so
    that a deletion never leaks on a field it does not read. Its status is never read. None
    when even the source or the metadata does not parse.

    Whether the state is kept is not read from it (a fallback has the default):
    ``builders.snapshot.retains_on_delete`` reads that, from the raw object, for every
    decision of a deletion."""
    stored = {k: v for k, v in body.items() if k != "status"}
    pipeline, _problems = parse_pipeline(stored)
    if pipeline is not None:
        return pipeline
    spec = stored.get("spec")
    source = spec.get("source") if isinstance(spec, Mapping) else None
    alone = {**stored, "spec": {"source": source, "sink": {"stdout": {}}}}
    pipeline, _problems = parse_pipeline(alone)
    return pipeline if pipeline is not None and pipeline.spec.source.kafka is not None else None


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
    """The name a message calls a manifest by: metadata.name, else `<generateName>*`; `?`
    when it has neither (or its metadata is no mapping, which parse_pipeline refuses)."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        return "?"
    if meta.get("name"):
        return str(meta["name"])
    return f"{meta['generateName']}*" if meta.get("generateName") else "?"


def load_documents(files: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
    """(file, index, document) for each YAML document; '-' reads stdin. Read by the one
    hardened reader (streamherd.workers.yamlfiles): refused as a YAMLFileError (a
    yaml.YAMLError, naming file and line): a file that is not UTF-8, duplicate keys (not a
    silent last-one-wins), cyclic aliases, alias bombs, too deep nesting, unreadable
    scalars. Nothing else escapes but OSError (a file that cannot be read) and the
    yaml.YAMLError of a syntax error."""
    for file in files:
        docs = load_yaml_documents(file, read_utf8(file, what="manifests"))
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
