"""The rule set (operator/api/rules.py): each rule reaches validate, the operator's semantic
check and the CRD from its one declaration; quantities follow the API server's grammar."""

from __future__ import annotations

import types
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Union, get_args, get_origin

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from streamherd.operator.api import rules
from streamherd.operator.api.crd import build_crd, schema_node
from streamherd.operator.api.v1alpha1 import StreamPipeline, StreamPipelineSpec
from streamherd.operator.builders.workload import build_deployment
from streamherd.operator.reconciler import _parse_spec
from streamherd.operator.settings import OperatorSettings
from streamherd.operator.validation import parse_pipeline
from streamherd.workers.config import DURATION_PATTERN
from tests.infra.invalid_manifests import (
    ACCEPTED,
    BOTH,
    KAFKA,
    LOCAL,
    OFFLINE_ONLY,
    PG_EOS,
    PG_EOS_TWO_PHASE,
    Case,
    load_example,
    set_path,
)


def crd_schema() -> dict[str, Any]:
    s: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return s


# --------------------------------------------------------------------------- the cases


def test_there_are_at_least_40_cases_both_sides_refuse() -> None:
    assert len(BOTH) >= 40
    assert len({c.id for c in BOTH + OFFLINE_ONLY}) == len(BOTH + OFFLINE_ONLY)


@pytest.mark.parametrize("case", BOTH + OFFLINE_ONLY, ids=lambda c: c.id)
def test_validate_refuses_naming_the_field(case: Case) -> None:
    _pipeline, problems = parse_pipeline(case.doc)
    assert problems, f"{case.id}: validate accepted it"
    assert any(case.field in p for p in problems), problems


@pytest.mark.parametrize(
    "case", [c for c in BOTH + OFFLINE_ONLY if not c.field.startswith("status")], ids=lambda c: c.id
)
def test_the_operator_refuses_with_the_same_words(case: Case) -> None:
    """(Not the status cases: the API server refuses them on create and stores no status
    from a create or an update, so the operator never reads a manifest's status.)"""
    body = {**case.doc, "metadata": {**case.doc["metadata"], "namespace": "ns"}}
    pipeline, invalid = _parse_spec(body)
    assert pipeline is None and invalid is not None
    assert case.field in invalid
    _, problems = parse_pipeline(case.doc)
    assert invalid == "; ".join(problems)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.id)
def test_validate_and_the_operator_accept_what_the_api_server_accepts(case: Case) -> None:
    """Valid edits the API server takes (test_rules_agree.py checks that it does)."""
    pipeline, problems = parse_pipeline(case.doc)
    assert problems == [] and pipeline is not None, problems
    body = {**case.doc, "metadata": {**case.doc["metadata"], "namespace": "ns"}}
    assert _parse_spec(body)[1] is None


def test_a_whole_float_is_read_as_the_integer_the_api_server_stores() -> None:
    doc = set_path(KAFKA, "spec.autoscaling.maxReplicas", 8.0)
    pipeline, _ = parse_pipeline(doc)
    assert pipeline is not None
    value = pipeline.spec.autoscaling.max_replicas
    assert (value, type(value)) == (8, int)


def test_the_base_manifests_are_valid() -> None:
    for doc in (KAFKA, LOCAL, PG_EOS, PG_EOS_TWO_PHASE):
        assert parse_pipeline(doc)[1] == []


# --------------------------------------------------------------------------- the CRD


def _entries(node: dict[str, Any]) -> list[dict[str, str]]:
    found: list[dict[str, str]] = node.get("x-kubernetes-validations", [])
    return found


@pytest.mark.parametrize("rule", [r for r in rules.RULES if r.cel], ids=lambda r: r.name)
def test_every_cel_rule_sits_in_the_crd_where_it_is_declared(rule: rules.Rule) -> None:
    node = schema_node(crd_schema(), rule.at)
    assert rule.cel_entry() in _entries(node)


def test_rules_without_cel_report_their_own_problem() -> None:
    for rule in rules.RULES:
        assert (rule.cel is None) == (rule.problem is not None) or rule.holds is not None


def test_every_rule_path_exists_in_the_schema() -> None:
    for rule in rules.RULES:
        schema_node(crd_schema(), rule.at)  # KeyError when a path is misspelt


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        out += _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


def test_every_duration_field_has_the_strict_pattern() -> None:
    durations = [p for p, n in _walk(crd_schema()) if n.get("pattern") == DURATION_PATTERN]
    assert len(durations) >= 9, durations
    for path, node in _walk(crd_schema()):
        timed = path.lower().endswith(("interval", "timeout", "size", "slide", "lateness"))
        if timed and node.get("type") == "string" and "volume" not in path:
            assert node.get("pattern") == DURATION_PATTERN, path


@pytest.mark.parametrize("stem", ["01-clicks-local", "02-clicks-per-minute", "03-orders-secure"])
def test_the_reserved_paths_and_names_are_what_the_operator_uses(stem: str) -> None:
    doc = load_example(stem)
    pipeline = StreamPipeline.model_validate({**doc, "metadata": {"name": "p", "uid": "u"}})
    deployment = build_deployment(pipeline, OperatorSettings(), secrets_hash="h")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    users = {e.name for s in pipeline.spec.secrets for e in s.env or []}
    user_paths = {s.mount_path for s in pipeline.spec.secrets}
    for mount in container["volumeMounts"]:
        assert mount["mountPath"] in rules.RESERVED_MOUNT_PATHS or mount["mountPath"] in user_paths
    own = [e["name"] for e in container["env"] if e["name"] not in users]
    assert own and all(name.startswith(rules.RESERVED_ENV_PREFIX) for name in own)


# --------------------------------------------------------------------------- quantities

# From k8s.io/apimachinery's own quantity tests (v0.36): what ParseQuantity accepts...
VALID = ["0", "1", "+1", "-1", "1.", ".5", "1.5", "0.1", "100m", "1Ki", "1.5Gi", "1Ei",
         "5e3", "1E3", "1e-3", "1E+3", "1n", "1u", "1k", "1M", "1G", "1T", "1P", "1E", ".",
         "+", "-", "0.0", "1.G", "000100", "1.000", "12e1000", ".5e1", "Mi", "9223372036854775807",
         "100000000000000000000000000000Gi", ".Ki"]  # fmt: skip
# ... and refuses.
INVALID = ["", "lots", "1.5.5Gi", "1.2.3GiGi", "1e", "1Gi5", "1i", "1K", "1 Gi", " 1",
           "1,5", "1ki", "1mi", "1e1.5", "1ee3", "1.5e", "--1", "+-1", "1Gi ", "0x10",
           "1Zi", "٣"]  # fmt: skip


@pytest.mark.parametrize("text", VALID)
def test_quantities_the_api_server_accepts(text: str) -> None:
    assert rules.is_quantity(text)


@pytest.mark.parametrize("text", INVALID)
def test_quantities_the_api_server_refuses(text: str) -> None:
    assert not rules.is_quantity(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Ki", 1024), ("1.5Gi", 1.5 * 2**30), ("100m", Decimal("0.1")), ("5e3", 5000),
     ("1k", 1000), ("-1", -1), ("1n", Decimal("1e-9")), ("1e-10", Decimal("1e-9"))],
)  # fmt: skip
def test_quantity_values(text: str, value: Decimal | float) -> None:
    assert rules.parse_quantity(text) == Decimal(value)


@given(st.text(alphabet="0123456789.+-eEinumkKMGTP ", max_size=12))
def test_quantity_parser_never_raises(text: str) -> None:
    result = rules.parse_quantity(text)
    assert result is None or isinstance(result, Decimal)


# --------------------------------------------------------------------------- mechanism


def test_nodes_at_reaches_lists_and_maps() -> None:
    pipeline = StreamPipeline.model_validate(LOCAL)
    steps = list(rules.nodes_at(pipeline, "spec.processor.steps[]"))
    assert [p for p, _ in steps] == [f"spec.processor.steps[{i}]" for i in range(3)]
    sets = list(rules.nodes_at(pipeline, "spec.processor.steps[].map.set{}"))
    assert sets == [("spec.processor.steps[1].map.set[kb]", "bytes / 1024")]
    assert list(rules.nodes_at(pipeline, "spec.deadLetter")) == []


def test_a_new_rule_is_one_declaration() -> None:
    rule = rules.Rule(
        name="example",
        at="spec.autoscaling",
        field=".maxReplicas",
        message="maxReplicas must be even",
        cel="self.maxReplicas % 2 == 0",
        holds=lambda a: a.max_replicas % 2 == 0,
    )
    pipeline = StreamPipeline.model_validate(
        {**KAFKA, "spec": {**KAFKA["spec"], "autoscaling": {"maxReplicas": 3}}}
    )
    assert rule.violations(pipeline) is not None
    assert list(rule.violations(pipeline)) == [
        "spec.autoscaling.maxReplicas: maxReplicas must be even"
    ]
    assert rule.cel_entry() == {
        "rule": "self.maxReplicas % 2 == 0",
        "message": "maxReplicas must be even",
        "fieldPath": ".maxReplicas",
    }


def test_a_rule_needs_one_predicate() -> None:
    with pytest.raises(ValueError, match="exactly one of holds or problem"):
        rules.Rule(name="x", at="spec", message="m")


def test_a_predicate_that_raises_is_a_refusal_naming_the_field() -> None:
    def broken(_: object) -> bool:
        raise TypeError("unexpected shape")

    rule = rules.Rule(
        name="x", at="spec.checkpoint", field=".interval", message="bad", holds=broken
    )
    pipeline = StreamPipeline.model_validate(KAFKA)
    assert list(rule.violations(pipeline)) == [
        "spec.checkpoint.interval: bad (TypeError: unexpected shape)"
    ]


def _renamed_fields(model: type[BaseModel], at: str) -> Iterator[tuple[str, str]]:
    """(path, Python name) of every field of `model` and the models below it (through
    optional fields, not lists or maps) whose wire name differs from its Python name."""
    for name, info in model.model_fields.items():
        wire = info.alias or name
        if wire != name:
            yield at, name
        kind = info.annotation
        options = get_args(kind) if get_origin(kind) in (Union, types.UnionType) else (kind,)
        for inner in options:
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                yield from _renamed_fields(inner, f"{at}.{wire}")


def test_no_field_is_read_by_its_python_name() -> None:
    """The API server knows the camelCase names only, and refuses another as an unknown
    field; validate reads the wire's names only too, for every field of the spec reached
    through objects."""
    renamed = list(_renamed_fields(StreamPipelineSpec, "spec"))
    assert len(renamed) > 20
    for at, name in renamed:
        _, problems = parse_pipeline(set_path(KAFKA, f"{at}.{name}", 1))
        assert any(f"{at}.{name}" in p for p in problems), (at, name, problems)
