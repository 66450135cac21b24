"""The generated CRD refuses what the models refuse, field by field.

`streamherd validate`, the API server and the operator must refuse an invalid manifest alike.
Where a JSON-schema keyword can say it, the API server's half is the CRD's schema, generated
from the models (operator/api/crd.py); these are properties over every field of the models,
walked side by side with the generated schema (no list of fields to keep up to date):

- every string's bounds in the schema (minLength, maxLength) are the model's, and for a
  field the engine compiles (rules.EXPRESSION_FIELDS) the compiler's: so nothing pydantic or
  the compiler refuses for its length is stored by the API server and refused by the
  operator later (InvalidSpec);
- an empty string is refused by the schema's own keywords exactly where validate refuses it
  (a min_length, a pattern, a validator testing truthiness, the compiler), at every string
  of manifests that set nearly every field;
- null: the API server drops a null field or map entry before it defaults and validates,
  unless the CRD says `nullable: true`; validate reads it the same way (prune_nulls), and a
  field whose null means something of its own is nullable in the CRD.

tests/integration/operator/test_rules_agree.py checks concrete cases of each
(tests/infra/invalid_manifests.py) against a real API server.
"""

from __future__ import annotations

import copy
import re
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from annotated_types import MaxLen, MinLen
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from streamherd.operator.api import rules, snapshot
from streamherd.operator.api.crd import build_crd, build_snapshot_crd
from streamherd.operator.api.v1alpha1 import (
    StreamPipeline,
    StreamPipelineSpec,
    StreamPipelineStatus,
    nullable,
)
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.expressions import ExpressionError, compile_expression
from streamherd.workers.limits import MAX_EXPRESSION_LENGTH
from tests.infra.invalid_manifests import (
    KAFKA,
    LOCAL,
    PG_EOS,
    RICH,
    RICH_POSTGRES,
    load_example,
)

JSON = dict[str, Any]

# --------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class Position:
    """A place of the API that holds a value: a model's field, a list's items, a map's
    values; with its type (Annotated and `| None` taken off), its constraints and its node
    in the generated schema."""

    path: str  # the manifest's spelling: spec.processor.steps[].map.set{}
    kind: Any
    metadata: tuple[Any, ...]
    field: FieldInfo | None  # None for list items and map values
    node: JSON


def _strip(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *extra = get_args(annotation)
            for item in extra:
                metadata = [*metadata, *(item.metadata if isinstance(item, FieldInfo) else [item])]
        elif origin is Union or origin is types.UnionType:
            kinds = [a for a in get_args(annotation) if a is not type(None)]
            assert len(kinds) == 1, f"a union the CRD cannot say: {annotation}"
            annotation = kinds[0]
        else:
            return annotation, metadata


def _positions(
    annotation: Any, metadata: list[Any], field: FieldInfo | None, node: JSON, path: str
) -> Iterator[Position]:
    kind, metadata = _strip(annotation, metadata)
    yield Position(path, kind, tuple(metadata), field, node)
    if isinstance(kind, type) and issubclass(kind, BaseModel):
        yield from positions(kind, node, path)
    elif get_origin(kind) is list:
        yield from _positions(get_args(kind)[0], [], None, node["items"], f"{path}[]")
    elif get_origin(kind) is dict:
        yield from _positions(
            get_args(kind)[1], [], None, node["additionalProperties"], f"{path}{{}}"
        )


def positions(model: type[BaseModel], node: JSON, path: str) -> Iterator[Position]:
    """Every position below `model`, whose schema is `node`."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        assert alias in node.get("properties", {}), f"{path}.{alias} is not in the schema"
        sub = node["properties"][alias]
        yield from _positions(field.annotation, list(field.metadata), field, sub, f"{path}.{alias}")


def _root(crd: JSON) -> JSON:
    schema: JSON = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def all_positions() -> list[Position]:
    """Every position of both CRDs: StreamPipeline and StreamPipelineSnapshot, spec and
    status."""
    pipeline, snapshots = _root(build_crd()), _root(build_snapshot_crd())
    found: list[Position] = []
    for model, root, at in (
        (StreamPipelineSpec, pipeline, "spec"),
        (StreamPipelineStatus, pipeline, "status"),
        (snapshot.StreamPipelineSnapshotSpec, snapshots, "spec"),
        (snapshot.StreamPipelineSnapshotStatus, snapshots, "status"),
    ):
        found += positions(model, root["properties"][at], at)
    return found


POSITIONS = all_positions()
STRINGS = [p for p in POSITIONS if p.kind is str]
EXPRESSIONS = set(rules.expression_paths())


def _lengths(metadata: tuple[Any, ...]) -> tuple[int | None, int | None]:
    low = [m.min_length for m in metadata if isinstance(m, MinLen)]
    high = [m.max_length for m in metadata if isinstance(m, MaxLen)]
    return (max(low) if low else None), (min(high) if high else None)


def model_lengths(position: Position) -> tuple[int | None, int | None]:
    """The lengths validate takes at `position`: the model's bounds, and for an expression
    the compiler's as well."""
    low, high = _lengths(position.metadata)
    if position.path in EXPRESSIONS:
        least, most = rules.EXPRESSION_LENGTH
        low = max(low or 0, least)
        high = most if high is None else min(high, most)
    return low, high


# --------------------------------------------------------------------------- lengths


def _schema_strings(node: JSON, path: str) -> Iterator[str]:
    """The path of every free-text string of a schema (enums are the models' Literals)."""
    if node.get("type") == "string" and "enum" not in node:
        yield path
    for name, sub in node.get("properties", {}).items():
        yield from _schema_strings(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schema_strings(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_strings(node["additionalProperties"], f"{path}{{}}")


def test_the_walk_reaches_every_string_of_the_crds_and_every_expression() -> None:
    in_schemas = [
        path
        for crd in (build_crd(), build_snapshot_crd())
        for at in ("spec", "status")
        for path in _schema_strings(_root(crd)["properties"][at], at)
    ]
    walked = [p.path for p in STRINGS]
    assert sorted(walked) == sorted(in_schemas)
    assert len(walked) > 100
    assert set(walked) >= EXPRESSIONS, EXPRESSIONS - set(walked)


def test_every_string_has_the_models_length_bounds_in_the_crd() -> None:
    """The schema's minLength/maxLength at every string are what validate takes there."""
    wrong = [
        f"{p.path}: model {model_lengths(p)}, CRD {crd}"
        for p in STRINGS
        if (crd := (p.node.get("minLength"), p.node.get("maxLength"))) != model_lengths(p)
    ]
    assert wrong == []


def test_every_expression_field_has_the_compilers_bounds() -> None:
    for p in STRINGS:
        if p.path in EXPRESSIONS:
            assert (p.node["minLength"], p.node["maxLength"]) == (1, MAX_EXPRESSION_LENGTH), p.path


def test_the_expression_bounds_are_the_compilers() -> None:
    """EXPRESSION_LENGTH is what compile_expression takes (its limit is counted in
    characters, as the API server counts maxLength)."""
    least, most = rules.EXPRESSION_LENGTH
    assert most == MAX_EXPRESSION_LENGTH
    compile_expression("x" * least)
    compile_expression("é" * most)
    for text in ("x" * (least - 1), "x" * (most + 1)):
        with pytest.raises(ExpressionError):
            compile_expression(text)


# --------------------------------------------------------------------------- empty strings


def _paths(node: Any, at: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    yield at
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*at, index))


def _get(doc: Any, at: tuple[str | int, ...]) -> Any:
    for part in at:
        doc = doc[part]
    return doc


def _set(doc: JSON, at: tuple[str | int, ...], value: Any) -> JSON:
    doc = copy.deepcopy(doc)
    _get(doc, at[:-1])[at[-1]] = value
    return doc


def _without(doc: JSON, at: tuple[str | int, ...]) -> JSON:
    doc = copy.deepcopy(doc)
    del _get(doc, at[:-1])[at[-1]]
    return doc


def _schema_at(root: JSON, at: tuple[str | int, ...]) -> JSON:
    node = root
    for part in at:
        if isinstance(part, int):
            node = node["items"]
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            node = node["additionalProperties"]
    return node


def _spelt(at: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in at).removeprefix(".")


BASES = {
    "KAFKA": KAFKA,
    "LOCAL": LOCAL,
    "PG_EOS": PG_EOS,
    "RICH": RICH,
    "RICH_POSTGRES": RICH_POSTGRES,
    "03-orders-secure": load_example("03-orders-secure"),
}
PIPELINE_SCHEMA = _root(build_crd())


def _spec_paths(doc: JSON) -> list[tuple[str | int, ...]]:
    return [at for at in _paths(doc) if len(at) >= 2 and at[0] == "spec"]


def schema_refuses_empty(node: JSON) -> bool:
    """Whether the schema's keywords (not its CEL rules) refuse "" at `node`."""
    return (
        node.get("minLength", 0) > 0
        or ("pattern" in node and re.search(node["pattern"], "") is None)
        or ("enum" in node and "" not in node["enum"])
    )


def _cel_messages(at: tuple[str | int, ...]) -> set[str]:
    node = _schema_at(PIPELINE_SCHEMA, at)
    return {str(v["message"]) for v in node.get("x-kubernetes-validations", [])}


def refusals_beyond_cel(doc: JSON) -> list[str]:
    """What validate refuses `doc` for that no CEL rule of the CRD says: a type, a bound or
    a validator of the models without a CEL twin (a twin has the same message at the same
    node; tests/integration/operator/test_rules_agree.py checks that the two agree), or a
    rule the API server has no CEL for (the expression compiler)."""
    try:
        pipeline = StreamPipeline.model_validate(doc)
    except ValidationError as e:
        return [
            f"{item['loc']}: {message}"
            for item in e.errors(include_url=False)
            if (message := item["msg"].removeprefix("Value error, "))
            not in _cel_messages(tuple(item["loc"]))
        ]
    return rules.violations(pipeline, [r for r in rules.RULES if r.cel is None])


@pytest.mark.parametrize("base", BASES, ids=str)
def test_an_empty_string_is_refused_by_the_schema_exactly_where_validate_refuses_it(
    base: str,
) -> None:
    """At every string of the base: "" refused by the schema's keywords is refused by
    validate, and what validate refuses "" for beyond a CEL rule, the keywords refuse."""
    doc = BASES[base]
    assert parse_pipeline(doc)[1] == []
    strings = [at for at in _spec_paths(doc) if isinstance(_get(doc, at), str)]
    assert strings
    disagree = []
    for at in strings:
        empty = _set(doc, at, "")
        by_schema = schema_refuses_empty(_schema_at(PIPELINE_SCHEMA, at))
        if by_schema and not parse_pipeline(empty)[1]:
            disagree.append(f"{_spelt(at)}: the schema refuses '', validate accepts it")
        if not by_schema and (beyond := refusals_beyond_cel(empty)):
            disagree.append(f"{_spelt(at)}: the schema accepts '', validate says {beyond}")
    assert disagree == []


def _position(root: JSON, at: tuple[str | int, ...]) -> str:
    """The position a manifest path is at (`spec.sink.kafka.headers.a` ->
    `spec.sink.kafka.headers{}`)."""
    node, path = root, ""
    for part in at:
        if isinstance(part, int):
            node, path = node["items"], f"{path}[]"
        elif part in node.get("properties", {}):
            node, path = node["properties"][part], f"{path}.{part}"
        else:
            node, path = node["additionalProperties"], f"{path}{{}}"
    return path.removeprefix(".")


def test_the_bases_set_every_string_of_the_spec() -> None:
    """The empty-string and null properties are only as good as the fields the bases set:
    a new string field of the spec needs a value in RICH (or another base)."""
    reached = {
        _position(PIPELINE_SCHEMA, at)
        for doc in BASES.values()
        for at in _spec_paths(doc)
        if isinstance(_get(doc, at), str)
    }
    spec = positions(StreamPipelineSpec, PIPELINE_SCHEMA["properties"]["spec"], "spec")
    assert {p.path for p in spec if p.kind is str} - reached == set()


# --------------------------------------------------------------------------- nulls


def test_a_field_is_nullable_in_the_crd_exactly_when_its_model_says_so() -> None:
    wrong = [
        p.path
        for p in POSITIONS
        if p.field is not None and bool(p.node.get("nullable")) != nullable(p.field)
    ]
    assert wrong == []


def _null_differs_from_default(field: FieldInfo) -> bool:
    """A field that may be None and defaults to something else: its null means something
    of its own."""
    may_be_none = type(None) in get_args(field.annotation)
    return may_be_none and not field.is_required() and field.get_default() is not None


def test_a_field_whose_null_is_not_its_default_is_nullable() -> None:
    """Else the API server would store the default in place of a null (it prunes a null of
    a field the CRD does not mark nullable, then defaults it), and the operator would run
    something else than the manifest and validate say."""
    wrong = [
        p.path
        for p in POSITIONS
        if p.field is not None and _null_differs_from_default(p.field) and not nullable(p.field)
    ]
    assert wrong == []


def _read(doc: JSON) -> tuple[Any, list[str]]:
    pipeline, problems = parse_pipeline(doc)
    return (pipeline.spec if pipeline is not None else None), problems


@pytest.mark.parametrize("base", BASES, ids=str)
def test_a_null_is_read_as_the_api_server_stores_it(base: str) -> None:
    """At every field and map entry of the spec (not list items, which the API server
    keeps null and refuses): null is the field omitted, unless the CRD says nullable,
    where validate keeps it."""
    doc = BASES[base]
    disagree = []
    for at in _spec_paths(doc):
        if isinstance(at[-1], int):
            continue
        node = _schema_at(PIPELINE_SCHEMA, at)
        spec, problems = _read(_set(doc, at, None))
        if node.get("nullable"):
            kept = problems == [] and spec is not None
            if not kept:
                disagree.append(f"{_spelt(at)}: a nullable null is refused: {problems}")
            continue
        if (spec, problems) != _read(_without(doc, at)):
            disagree.append(f"{_spelt(at)}: null is not read as omitted: {problems}")
    assert disagree == []


def test_a_nullable_null_is_kept() -> None:
    """spec.source.kafka.idleTimeout: null turns idleness off (the default is 30s)."""
    doc = _set(KAFKA, ("spec", "source", "kafka", "idleTimeout"), None)
    spec, problems = _read(doc)
    assert problems == [] and spec is not None
    assert spec.source.kafka is not None and spec.source.kafka.idle_timeout is None
    default, _ = _read(KAFKA)
    assert default is not None and default.source.kafka is not None
    assert default.source.kafka.idle_timeout == "30s"


def test_a_null_list_item_is_refused_not_dropped() -> None:
    doc = _set(KAFKA, ("spec", "source", "kafka", "topics"), [None])
    assert _read(doc)[1] != []
